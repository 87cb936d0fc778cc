"""Every interface variant of issue 17 through every quantizing pipeline, on a small CNN (seconds).

The same builders run on the realmodels set in ``benchmarks/interface_matrix.py``. Each case must
compile, run in onnxruntime, and keep the outputs it adds (shapes, masks, inputs, constants) bit for
bit; float ones must stay close (the model is small and calibrated on its own feeds).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from .variants import PIPELINES, VARIANTS, run_case


def small_cnn() -> tuple:
    """Conv -> Relu -> MaxPool -> Conv -> GlobalAveragePool -> Flatten -> Gemm, and 4 feeds of batch 2."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(0, 0.3, (6, 3, 3, 3)), "b1": rng.normal(0, 0.1, 6),
               "w2": rng.normal(0, 0.3, (8, 6, 1, 1)), "wf": rng.normal(0, 0.3, (5, 8)), "bf": rng.normal(0, 0.1, 5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = [{"x": rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    return proto, feeds


CNN_OPTIONS = {**PIPELINES, "dynamic": {**PIPELINES["dynamic"], "exclude": ("Conv",)}}
"""On the small CNN, dynamic quantization keeps the Conv layers float (it refuses them otherwise, below)."""


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_compiles_and_keeps_its_interface(variant, pipeline):
    proto, feeds = small_cnn()
    derived, derived_feeds, extra = VARIANTS[variant](proto, feeds)
    outcome = run_case(derived, derived_feeds, extra, CNN_OPTIONS[pipeline])
    assert outcome.status == "ok", outcome.message
    assert all(sqnr > 15 for sqnr in outcome.sqnr_db.values()), outcome.sqnr_db


def test_dynamic_quantization_of_a_conv_model_is_a_one_line_user_error():
    proto, feeds = small_cnn()
    derived, derived_feeds, extra = VARIANTS["shape-output"](proto, feeds)
    outcome = run_case(derived, derived_feeds, extra, PIPELINES["dynamic"])
    assert outcome.status == "user-error" and "static quantization" in outcome.message, outcome.message


def test_dynamic_batch_calibrates_with_batches_of_different_sizes():
    proto, feeds = small_cnn()
    derived, derived_feeds, _ = VARIANTS["dynamic-batch"](proto, feeds)
    assert len({feed["x"].shape[0] for feed in derived_feeds}) >= 2
    assert derived.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_dynamic_batch_keeps_each_batch_of_one_shape():
    """Samples of different widths (text lines, as PP-OCR's recognizer is calibrated on) never share a batch:
    the matrix's builder once died concatenating a 95- and a 430-pixel line."""
    proto, _ = small_cnn()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 8, width)).astype(np.float32)} for width in (8, 16, 8, 24, 16, 8)]
    _, derived_feeds, _ = VARIANTS["dynamic-batch"](proto, feeds)
    assert [feed["x"].shape[0] for feed in derived_feeds[:3]] == [1, 2, 3]
    assert derived_feeds[1]["x"].shape[3] == 16 and np.array_equal(derived_feeds[1]["x"][0], derived_feeds[1]["x"][1])


def test_a_changed_exact_output_is_an_internal_error():
    """The check itself: an added output that must be unchanged but is not is reported."""
    proto, feeds = small_cnn()
    derived, derived_feeds, _ = VARIANTS["intermediate-output"](proto, feeds)
    outcome = run_case(derived, derived_feeds, {derived.graph.output[-1].name: "exact"}, PIPELINES["int8"])
    assert outcome.status == "internal-error" and "changed" in outcome.message
