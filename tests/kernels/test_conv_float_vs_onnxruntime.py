"""Float Conv and ConvTranspose against onnxruntime (to float32 rounding: BLAS and MLAS sum in
different orders): groups, strides, dilations, pads, output_padding, output_shape, auto_pad, 1-D/3-D."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.kernels import default_registry


def run_ort(op: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, attrs: dict) -> np.ndarray:
    graph = helper.make_graph([helper.make_node(op, ["x", "w", "b"], ["y"], **attrs)], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


CASES = {  # op, x shape, w shape, attributes
    "conv_group_dilation": ("Conv", (2, 4, 9, 8), (6, 2, 3, 3), dict(group=2, dilations=[2, 1], pads=[1, 0, 2, 1])),
    "conv_same_lower_stride": ("Conv", (1, 3, 7, 6), (4, 3, 2, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "conv_1d": ("Conv", (1, 5, 17), (3, 5, 4), dict(strides=[3])),
    "convt_stride_pads": ("ConvTranspose", (1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    "convt_output_padding_group": ("ConvTranspose", (2, 4, 4, 3), (4, 2, 2, 3),
                                   dict(group=2, strides=[3, 2], output_padding=[2, 1], dilations=[1, 2])),
    "convt_output_shape": ("ConvTranspose", (1, 2, 5, 5), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 9])),
    "convt_same_upper": ("ConvTranspose", (1, 2, 4, 5), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "convt_3d": ("ConvTranspose", (1, 2, 3, 4, 3), (2, 2, 2, 2, 2), dict(strides=[2, 1, 2])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_float_convolutions_match_onnxruntime(name):
    op, x_shape, w_shape, attrs = CASES[name]
    rng = np.random.default_rng(len(name))
    x = rng.normal(size=x_shape).astype(np.float32)
    w = rng.normal(size=w_shape).astype(np.float32)
    channels = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    b = rng.normal(size=channels).astype(np.float32)
    ours = default_registry.lookup("", op, 17)(x, w, b, **attrs)
    np.testing.assert_allclose(ours, run_ort(op, x, w, b, attrs), rtol=1e-5, atol=1e-5)
