"""Every backend node-test model of the onnx wheel round-trips load -> IR -> save unchanged in behaviour.

For each model that onnxruntime can run, the outputs of the original and of the round-tripped model on
the shipped test inputs must be identical (bit for bit, NaNs in the same places).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompiler import ir



def node_cases():
    """The onnx wheel's backend node tests, generated from ``onnx.backend.test.case.node``.

    The wheel ships the generators rather than the ``data/node`` files; generating all ~1900 cases
    takes a few seconds.
    """
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [case for case in node.collect_testcases(None) if case.model is not None]


def _feeds(case, proto: onnx.ModelProto) -> dict | None:
    inputs = case.data_sets[0][0]
    feeds = {}
    for info, array in zip(proto.graph.input, inputs):
        if array is None or not (isinstance(array, np.ndarray) or
                                 (isinstance(array, list) and all(isinstance(a, np.ndarray) for a in array))):
            return None  # optional or nested inputs: onnxruntime's Python API cannot feed them
        feeds[info.name] = array
    return feeds


ort.set_default_logger_severity(4)


def _session(data: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def roundtrip_case(case) -> str:
    """'pass', or 'skip: <reason>' when onnxruntime cannot run the original; raises on a mismatch.

    Every case, skipped or not, must also round-trip structurally: the IR read back from the saved
    proto prints exactly as the IR that was saved.
    """
    proto = case.model
    model = ir.from_proto(proto, where=case.name)
    ir.verify(model)
    again = ir.to_proto(model)
    assert ir.format_model(ir.from_proto(again)) == ir.format_model(model), f"{case.name}: IR changed"
    feeds = _feeds(case, proto)
    if feeds is None:
        return "skip: an optional or nested input that onnxruntime's Python API cannot feed"
    try:
        expected = _session(proto.SerializeToString()).run(None, feeds)
    except Exception as exc:  # onnxruntime lacks the op/type, or rejects the model
        return f"skip: onnxruntime cannot run the original ({type(exc).__name__})"
    actual = _session(again.SerializeToString()).run(None, feeds)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert _same(got, want), f"{case.name}: outputs differ after the round trip"
    assert [n.name for n in again.graph.node] == [n.name for n in proto.graph.node]
    assert [o.name for o in again.graph.output] == [o.name for o in proto.graph.output]
    return "pass"


def test_every_node_model_round_trips():
    results = {case.name: roundtrip_case(case) for case in node_cases()}
    passed = sum(r == "pass" for r in results.values())
    skipped = {k: v for k, v in results.items() if v != "pass"}
    print(f"\nround trip: {passed} passed, {len(skipped)} skipped of {len(results)}")
    assert passed >= 1000, "far fewer node models ran than expected"
