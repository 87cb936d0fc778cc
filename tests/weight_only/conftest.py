"""A small transformer-like model for the weight-only tests: an embedding table read by a Gather and by
a tied output Gemm (``transB = 1``), LayerNorm, a shared-input pair of projections, an MLP with an outlier
input channel, and a separate untied head MatMul; with calibration feeds on disk."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

VOCAB, DIM, HIDDEN, SEQ = 512, 64, 256, 16


def build_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = {"table": weight(VOCAB, DIM, scale=0.5), "gamma": np.ones(DIM, np.float32) * 1.5,
             "beta": weight(DIM, scale=0.1), "wq": weight(DIM, DIM), "wk": weight(DIM, DIM),
             "w1": weight(DIM, HIDDEN), "b1": weight(HIDDEN), "w2": weight(HIDDEN, DIM), "head": weight(DIM, VOCAB),
             "outlier": np.where(np.arange(DIM) < 3, 20.0, 1.0).astype(np.float32)}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("LayerNormalization", ["emb", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="k_proj"),
        helper.make_node("Mul", ["q", "k"], ["qk"]),
        helper.make_node("Mul", ["qk", "outlier"], ["h0"]),
        helper.make_node("Add", ["h0", "emb"], ["h"]),
        helper.make_node("MatMul", ["h", "w1"], ["u"], name="up"),
        helper.make_node("Add", ["u", "b1"], ["ub"]),
        helper.make_node("Relu", ["ub"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["d"], name="down"),
        helper.make_node("Add", ["d", "h"], ["out"]),
        helper.make_node("Gemm", ["out_2d", "table"], ["tied_logits"], transB=1, name="tied_head"),
        helper.make_node("MatMul", ["out", "head"], ["logits"], name="head"),
        helper.make_node("Reshape", ["out", "shape2d"], ["out_2d"]),
    ]
    nodes = nodes[:12] + [nodes[14], nodes[12], nodes[13]]
    inits["shape2d"] = np.array([-1, DIM], np.int64)
    graph = helper.make_graph(
        nodes, "tiny_transformer", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", SEQ, VOCAB]),
         helper.make_tensor_value_info("tied_logits", TensorProto.FLOAT, ["tokens", VOCAB])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory):
    """(model path, calibration directory, evaluation feeds)."""
    root = tmp_path_factory.mktemp("tiny_transformer")
    path = root / "model.onnx"
    onnx.save(build_model(), path)
    rng = np.random.default_rng(1)
    calib = root / "calib"
    calib.mkdir()
    for i in range(8):  # 1024 tokens: enough for GPTQ's 256 x 256 Hessians not to fit the samples alone
        np.savez(calib / f"batch_{i}.npz", ids=rng.integers(0, VOCAB, (8, SEQ)).astype(np.int64))
    feeds = [{"ids": rng.integers(0, VOCAB, (3, SEQ)).astype(np.int64)} for _ in range(2)]
    return path, calib, feeds
