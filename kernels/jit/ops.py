"""The jit kernels: the reference kernels' ONNX signatures, on the numba loops of :mod:`.loops`.

Shapes, zero points and scales are handled by the same code as the reference (``matmul_integer``,
``qlinear_matmul``, ``conv_integer``, ``qlinear_conv``); only the arithmetic loops differ. QLinearConv,
QLinearMatMul, QuantizeLinear and DequantizeLinear also have a ``prepare`` (:mod:`.prepared`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from onnx import TensorProto
from onnx.helper import np_dtype_to_tensor_dtype

from qcompiler.ir.quant import dynamic_spec

from ..reference import conv, elementwise, matmul, qgemm, quantize
from ..registry import register
from . import fused, prepared
from .loops import JIT
from .loops import dequantize as dequantize_loop
from .loops import quantize as quantize_loop


@register("QuantizeLinear", since=10, backend="jit")
def QuantizeLinear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0,
                   precision=0, saturate=1):
    """The reference QuantizeLinear; a float32 ``x`` divided in float32 runs in a numba loop."""
    if x.dtype != np.float32 or (precision or np_dtype_to_tensor_dtype(np.asarray(y_scale).dtype)) != TensorProto.FLOAT:
        return quantize.QuantizeLinear(x, y_scale, y_zero_point, axis=axis, block_size=block_size,
                                       output_dtype=output_dtype, precision=precision, saturate=saturate)
    dtype = quantize.quantize_output_dtype(y_zero_point, output_dtype)
    scale = quantize.broadcast_param(y_scale, x.shape, axis, block_size)
    zero_point = 0 if y_zero_point is None else quantize.broadcast_param(y_zero_point, x.shape, axis, block_size)
    return quantize_loop(x, scale, zero_point, dtype)


QuantizeLinear.prepare = partial(prepared.quantize_linear, kernel=QuantizeLinear)


@register("DequantizeLinear", since=10, backend="jit")
def DequantizeLinear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """The reference DequantizeLinear; a float32 scale and output run in a numba loop."""
    out = output_dtype or np_dtype_to_tensor_dtype(np.asarray(x_scale).dtype)
    if out != TensorProto.FLOAT or np.asarray(x_scale).dtype != np.float32:
        return quantize.DequantizeLinear(x, x_scale, x_zero_point, axis=axis, block_size=block_size,
                                         output_dtype=output_dtype)
    if x.dtype != np.int32:
        quantize.integer_range(x.dtype)
    scale = quantize.broadcast_param(x_scale, x.shape, axis, block_size)
    zero_point = 0 if x_zero_point is None else quantize.broadcast_param(x_zero_point, x.shape, axis, block_size)
    return dequantize_loop(x, scale, zero_point)


DequantizeLinear.prepare = partial(prepared.dequantize_linear, kernel=DequantizeLinear)
register("QuantizeLinear", domain="com.microsoft", since=1, backend="jit")(QuantizeLinear)  # 16-bit, opset < 21
register("DequantizeLinear", domain="com.microsoft", since=1, backend="jit")(DequantizeLinear)


@register("DynamicQuantizeLinear", since=11, backend="jit")
def DynamicQuantizeLinear(x):
    """The reference DynamicQuantizeLinear's parameters, the integers in the numba quantize loop."""
    spec = dynamic_spec(x)
    return quantize_loop(np.asarray(x, np.float32), spec.scale, spec.zero_point, np.uint8), spec.scale, spec.zero_point


@register("MatMulInteger", since=10, backend="jit")
def MatMulInteger(A, B, a_zero_point=None, b_zero_point=None, *, accumulation="exact"):
    """See the reference MatMulInteger."""
    return matmul.matmul_integer(A, B, a_zero_point, b_zero_point, accumulation=accumulation, arith=JIT)


@register("QLinearMatMul", since=10, backend="jit")
def QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *,
                  accumulation="exact"):
    """See the reference QLinearMatMul."""
    return matmul.qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point,
                                 accumulation=accumulation, arith=JIT)


QLinearMatMul.prepare = prepared.qlinear_matmul


@register("ConvInteger", since=10, backend="jit")
def ConvInteger(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                kernel_shape=None, pads=None, strides=None, accumulation="exact"):
    """See the reference ConvInteger."""
    return conv.conv_integer(x, w, x_zero_point, w_zero_point, auto_pad=auto_pad, dilations=dilations,
                             group=group, kernel_shape=kernel_shape, pads=pads, strides=strides,
                             accumulation=accumulation, arith=JIT)


@register("QLinearConv", since=10, backend="jit")
def QLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
                accumulation="exact"):
    """See the reference QLinearConv."""
    return conv.qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B,
                             auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                             pads=pads, strides=strides, accumulation=accumulation, arith=JIT)


QLinearConv.prepare = prepared.qlinear_conv


@register("QGemm", domain="com.microsoft", since=1, backend="jit")
def QGemm(A, a_scale, a_zero_point, B, b_scale, b_zero_point, C=None, y_scale=None, y_zero_point=None, *,
          alpha=1.0, transA=0, transB=0, accumulation="exact"):
    """See the reference QGemm."""
    return qgemm.qgemm(A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point, alpha=alpha,
                       transA=transA, transB=transB, accumulation=accumulation, arith=JIT)


@register("MatMulIntegerToFloat", domain="com.microsoft", since=1, backend="jit")
def MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None, *,
                         accumulation="exact"):
    """See the reference MatMulIntegerToFloat."""
    return qgemm.matmul_integer_to_float(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias,
                                         accumulation=accumulation, arith=JIT)


@register("HardSigmoid", since=6, backend="jit")
def HardSigmoid(X, *, alpha=0.2, beta=0.5):
    """The reference HardSigmoid; float32 runs in one numba pass."""
    if X.dtype != np.float32:
        return elementwise.HardSigmoid(X, alpha=alpha, beta=beta)
    out = np.empty(X.shape, np.float32)
    fused.hard_sigmoid(np.ascontiguousarray(X).reshape(-1), np.float32(alpha), np.float32(beta), out.reshape(-1))
    return out
