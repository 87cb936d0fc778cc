"""Shrunk cases of the generated-graph campaign (``benchmarks/graph_campaign.py``), one test per bug.

(The executor fixes the campaign found have theirs in ``tests/executor/test_vs_onnxruntime.py``.)
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import ir
from qcompiler.ir.testing import run_onnxruntime

from .isolated import Crashed, IsolatedRunner


def _sliced_value_captured_by_if() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """Campaign seed 13, shrunk: ``MatMul -> Slice``, the Slice's output read by both branches of an If
    (captured) and by the ReduceMean that computes its condition."""
    rng = np.random.default_rng(0)
    then_branch = helper.make_graph([helper.make_node("Mul", ["sliced", "gain"], ["then_out"])], "then", [],
                                    [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 1, 4])])
    else_branch = helper.make_graph([helper.make_node("Relu", ["sliced"], ["else_out"])], "else", [],
                                    [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 1, 4])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Slice", ["mm", "starts", "ends", "axes", "steps"], ["sliced"]),
             helper.make_node("ReduceMean", ["sliced"], ["mean"], keepdims=0),
             helper.make_node("Greater", ["mean", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, (3, 4)).astype(np.float32), "w"),
                    *(numpy_helper.from_array(np.array([v], np.int64), n)
                      for n, v in (("starts", 3), ("ends", 4), ("axes", 1), ("steps", 2))),
                    numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(1.5), "gain")]
    graph = helper.make_graph(nodes, "captured_slice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 4])], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return proto, [{"x": rng.normal(0, 1, (2, 4, 3)).astype(np.float32)} for _ in range(4)]


def _compile_and_run(pipeline: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Compile the shrunk graph with ``pipeline`` and run it in onnxruntime with every graph optimization
    and with none: (producers of the If's captured activations, the two outputs). Runs in the isolated
    worker: the compile's own sessions (kernel check) and the optimized one abort when the bug is back."""
    proto, feeds = _sliced_value_captured_by_if()
    model = qcompiler.compile(ir.from_proto(proto), None, pipeline=pipeline, calib=feeds, objective="size")
    (if_node,) = [n for n in model.graph if n.op_type == "If"]
    captured = [v.producer().op_type for v in if_node.captures if v.const is None]
    return captured, run_onnxruntime(model, feeds[0], optimize=True)[0], run_onnxruntime(model, feeds[0])[0]


@pytest.fixture(scope="module")
def runner():
    with IsolatedRunner() as isolated:
        yield isolated


@pytest.mark.parametrize("pipeline", ["int8", "w4a8"])
def test_a_quantized_value_captured_through_slice_loads_in_onnxruntime(pipeline, runner):
    """onnxruntime 1.32's QDQ propagation aborts the process when it rewires a captured ``DQ -> Slice``
    output (``lowering.guard_captures``); the compiled model gives the captured value its own Q/DQ
    pair, so the If reads a DequantizeLinear output and the optimized session runs as the plain one."""
    result = runner(_compile_and_run, pipeline)
    assert not isinstance(result, Crashed), result
    captured, optimized, plain = result
    assert captured == ["DequantizeLinear"]
    np.testing.assert_array_equal(optimized, plain)


def test_calibration_of_a_gemm_read_by_a_transpose(monkeypatch):
    """Campaign seed 17, graph 113 (``data/``, with its feeds): calibration returns ``gemm_14`` (a Gemm read
    by a Transpose) as a graph output; onnxruntime's basic optimizations fuse the pair away and then refuse
    the session ("Failed to find node output ... producing output: gemm_14"); calibration now retries
    without optimizations (the same values, unfused)."""
    data = Path(__file__).parent / "data"
    proto = onnx.load(str(data / "seed17_graph113.onnx"))
    saved = np.load(data / "seed17_graph113.npz")
    feeds = [{"x": saved[f"{i}/x"]} for i in range(4)]
    collect = importlib.import_module("qcompiler.calibration.collect")  # the module (the package exports a function of that name)
    opened, original = [], collect.observing_session

    def observed(model, options, providers):
        session = original(model, options, providers)
        opened.append(options.graph_optimization_level)  # the level the session was made with
        return session

    monkeypatch.setattr(collect, "observing_session", observed)
    model = qcompiler.compile(ir.from_proto(proto), None, pipeline="int8", calib=feeds, objective="size")
    assert ort.GraphOptimizationLevel.ORT_DISABLE_ALL in opened  # onnxruntime refused the optimized session
    assert any(n.op_type == "QuantizeLinear" for n in model.graph)
    run_onnxruntime(model, feeds[0], optimize=True)


def test_a_float_graph_onnxruntime_refuses_optimized_is_a_user_error():
    """Campaign seed 18, graph 46 (``data/``): a Gemm read by a Transpose and returned as a graph output.
    onnxruntime 1.32's optimizer fuses the pair and then refuses the float model itself; the kernels check
    (which runs the model optimized) says so in a user error instead of failing with an internal one."""
    from qcompiler.errors import UnsupportedModelError
    from qcompiler.executor.agreement import run_onnxruntime as run_checked

    data = Path(__file__).parent / "data"
    proto = onnx.load(str(data / "seed18_graph46.onnx"))
    saved = np.load(data / "seed18_graph46.npz")
    feed = {name.split("/", 1)[1]: saved[name] for name in saved.files if name.startswith("0/")}
    with pytest.raises(UnsupportedModelError, match="refuses the model with its graph optimizations on"):
        run_checked(proto.SerializeToString(), feed, optimize=True)
    assert run_checked(proto.SerializeToString(), feed, optimize=False)  # unoptimized, it runs
