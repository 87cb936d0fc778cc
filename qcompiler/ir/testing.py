"""Helpers for tests: models from ONNX text, onnxruntime runs, random feeds."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

from ._core import Model
from .serde import from_proto, to_proto


def parse(text: str) -> Model:
    """A model from ONNX text syntax (``onnx.parser``), checked by ``onnx.checker``."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return from_proto(proto, where="<text>")


def random_feeds(model: Model, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input; symbolic dims take ``dims[name]`` or 2."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = tuple(d if isinstance(d, int) else (dims or {}).get(d, 2) for d in value.shape or ())
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) > 0.5
        else:
            feeds[value.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def run_onnxruntime(model: Model | onnx.ModelProto, feeds: dict[str, np.ndarray],
                    optimize: bool = False) -> list[np.ndarray]:
    """Outputs of an onnxruntime CPU session (graph optimizations off unless ``optimize``)."""
    import onnxruntime as ort

    proto = to_proto(model) if isinstance(model, Model) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
