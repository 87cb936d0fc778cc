"""Float ops in torch, with the ONNX signatures of the reference kernels (inputs positional, attributes
keyword-only with the spec defaults). Geometry (pads, pool windows) comes from the reference kernels'
helpers, so both backends read the attributes the same way."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx.helper import tensor_dtype_to_np_dtype

from ..jit import depthwise_float
from ..reference.conv import conv_pads
from ..reference.pool import _geometry
from ._common import ints, register_all, tensor


def _pad(x: torch.Tensor, begin, end, value: float = 0.0) -> torch.Tensor:
    if not any(begin) and not any(end):
        return x
    widths = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):  # F.pad: last dimension first
        widths += [b, e]
    return F.pad(x, widths, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@register_all("Conv")
def Conv(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    X, W = tensor(X), tensor(W)
    nd = X.ndim - 2
    strides = list(strides) if strides is not None else [1] * nd
    dilations = list(dilations) if dilations is not None else [1] * nd
    pads = conv_pads(tuple(X.shape[2:]), list(W.shape[2:]), strides, dilations, pads, auto_pad)
    x, W = _pad(X, pads[:nd], pads[nd:]), W.to(X.dtype)
    bias = None if B is None else tensor(B).to(X.dtype)
    depthwise = nd == 2 and group == X.shape[1] == W.shape[0] and W.shape[1] == 1
    if depthwise and X.dtype in (torch.float32, torch.float64):  # the loops' types
        y = _DepthwiseConv2d.apply(x, W, tuple(strides), tuple(dilations))
        return y if bias is None else y + bias.reshape(1, -1, 1, 1)
    return _CONV[nd](x, W, bias, strides, 0, dilations, group)


class _DepthwiseConv2d(torch.autograd.Function):
    """A depthwise 2-D convolution of an input already padded, forward and backward in numba loops
    (:mod:`qcompiler.kernels.jit.depthwise_float`: torch's own CPU kernels for it are slow)."""

    @staticmethod
    def forward(ctx, x, w, strides, dilations):
        (sh, sw), (dh, dw), (kh, kw) = strides, dilations, w.shape[2:]
        out_h, out_w = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
        ctx.save_for_backward(x, w)
        ctx.geometry = strides, dilations
        return torch.from_numpy(depthwise_float.forward(_array(x), _array(w[:, 0]), sh, sw, dh, dw, out_h, out_w))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        (sh, sw), (dh, dw) = ctx.geometry
        dy = _array(dy)
        dx = dw_ = None
        if ctx.needs_input_grad[0]:
            dx = torch.from_numpy(depthwise_float.grad_input(dy, _array(w[:, 0]), sh, sw, dh, dw, *x.shape[2:]))
        if ctx.needs_input_grad[1]:
            sums = depthwise_float.grad_weight(dy, _array(x), sh, sw, dh, dw, *w.shape[2:])
            dw_ = torch.from_numpy(sums).to(w.dtype).reshape(w.shape)
        return dx, dw_, None, None


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _pool_input(X, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, fill):
    begin, end, explicit_end, out, strides, dilations = _geometry(X, kernel_shape, strides, dilations, pads, auto_pad,
                                                                  ceil_mode)
    return _pad(X, begin, end, fill), begin, explicit_end, out, strides, dilations


_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@register_all("MaxPool")
def MaxPool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, storage_order=0,
            strides=None):
    X = tensor(X)
    x, _, _, out, strides, dilations = _pool_input(X, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode,
                                                   float("-inf"))
    y = _MAX[X.ndim - 2](x, list(kernel_shape), strides, 0, dilations)
    return y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]


MaxPool.outputs = 1  # Indices is not computed


def _window_sum(x: torch.Tensor, kernel, strides, dilations, out) -> torch.Tensor:
    channels, nd = x.shape[1], x.ndim - 2
    ones = torch.ones((channels, 1, *kernel), dtype=x.dtype)
    y = _CONV[nd](x, ones, None, strides, 0, dilations, channels)
    return y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]


@register_all("AveragePool")
def AveragePool(X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                pads=None, strides=None):
    """Window sum over the window's count: the input elements in it, or with ``count_include_pad`` also
    the explicit padding (never the ceil-mode overflow), as the reference kernel counts."""
    X = tensor(X)
    nd = X.ndim - 2
    x, begin, explicit_end, out, strides, dilations = _pool_input(X, kernel_shape, strides, dilations, pads, auto_pad,
                                                                  ceil_mode, 0.0)
    kernel = list(kernel_shape)
    total = _window_sum(x, kernel, strides, dilations, out)
    inside = torch.ones((1, 1, *X.shape[2:]), dtype=X.dtype)
    if count_include_pad:
        inside = _pad(inside, begin, explicit_end, 1.0)
        inside = _pad(inside, [0] * nd, [p - q for p, q in zip(x.shape[2:], inside.shape[2:], strict=True)])
    else:
        inside = _pad(inside, begin, [p - q - b for p, q, b in zip(x.shape[2:], X.shape[2:], begin, strict=True)])
    return total / _window_sum(inside, kernel, strides, dilations, out)


@register_all("GlobalAveragePool")
def GlobalAveragePool(X):
    X = tensor(X)
    return X.mean(dim=tuple(range(2, X.ndim)), keepdim=True)


@register_all("GlobalMaxPool")
def GlobalMaxPool(X):
    X = tensor(X)
    return X.amax(dim=tuple(range(2, X.ndim)), keepdim=True)


@register_all("Gemm")
def Gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    A, B = tensor(A), tensor(B)
    a = A.T if transA else A
    b = B.T if transB else B
    y = alpha * (a @ b.to(a.dtype)) if alpha != 1.0 else a @ b.to(a.dtype)
    if C is not None:
        y = y + (beta * tensor(C).to(y.dtype) if beta != 1.0 else tensor(C).to(y.dtype))
    return y


@register_all("MatMul")
def MatMul(A, B):
    A, B = tensor(A), tensor(B)
    return torch.matmul(A, B.to(A.dtype))


def _binary(op):
    def kernel(A, B):
        return op(tensor(A), tensor(B))
    return kernel


register_all("Add")(_binary(torch.add))
register_all("Sub")(_binary(torch.sub))
register_all("Mul")(_binary(torch.mul))
register_all("Pow")(_binary(lambda a, b: torch.pow(a, b.to(a.dtype)) if a.is_floating_point() else torch.pow(a, b)))


@register_all("Div")
def Div(A, B):
    A, B = tensor(A), tensor(B)
    return torch.div(A, B) if A.is_floating_point() else torch.div(A, B, rounding_mode="trunc")


def _unary(op):
    def kernel(X):
        return op(tensor(X))
    return kernel


for _name, _op in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
                   "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf,
                   "Reciprocal": torch.reciprocal}.items():
    register_all(_name)(_unary(_op))


@register_all("LeakyRelu")
def LeakyRelu(X, *, alpha=0.01):
    return F.leaky_relu(tensor(X), alpha)


@register_all("HardSigmoid")
def HardSigmoid(X, *, alpha=0.2, beta=0.5):
    return torch.clamp(tensor(X) * alpha + beta, 0.0, 1.0)


@register_all("HardSwish")
def HardSwish(X):
    """``X * HardSigmoid(X; 1/6, 1/2)``, as onnxruntime computes it (``F.hardswish`` rounds differently)."""
    X = tensor(X)
    return X * HardSigmoid(X, alpha=1.0 / 6.0, beta=0.5)


@register_all("Clip")
def Clip(X, lo=None, hi=None, *, min=None, max=None):  # noqa: A002 - the ONNX attribute names (opset < 11)
    X = tensor(X)
    lo = min if lo is None else lo
    hi = max if hi is None else hi
    if lo is not None:
        X = torch.maximum(X, tensor(lo).to(X.dtype))
    if hi is not None:
        X = torch.minimum(X, tensor(hi).to(X.dtype))
    return X


@register_all("Softmax", since=13)
def Softmax(X, *, axis=-1):
    return torch.softmax(tensor(X), dim=axis)


@register_all("BatchNormalization")
def BatchNormalization(X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0,
                       spatial=1, is_test=0, consumed_inputs=None):
    """Inference mode: ``scale * (X - mean) / sqrt(var + epsilon) + B`` per channel."""
    if training_mode:
        raise NotImplementedError("BatchNormalization training_mode=1")
    X = tensor(X)
    shape = (1, -1) + (1,) * (X.ndim - 2)
    mean, var = tensor(input_mean).to(X.dtype).reshape(shape), tensor(input_var).to(X.dtype).reshape(shape)
    gamma, beta = tensor(scale).to(X.dtype).reshape(shape), tensor(B).to(X.dtype).reshape(shape)
    return (X - mean) / torch.sqrt(var + epsilon) * gamma + beta


def _axes(axes_input, axes_attr) -> list[int] | None:
    if axes_input is not None:
        return ints(axes_input)
    return list(axes_attr) if axes_attr is not None else None


@register_all("ReduceMean")
def ReduceMean(X, axes=None, *, keepdims=1, noop_with_empty_axes=0, **attrs):
    X = tensor(X)
    dims = _axes(axes, attrs.get("axes"))
    if not dims:
        if noop_with_empty_axes:
            return X
        dims = list(range(X.ndim))
    return X.mean(dim=dims, keepdim=bool(keepdims))


@register_all("Reshape")
def Reshape(data, shape, *, allowzero=0):
    data = tensor(data)
    target = ints(shape)
    if not allowzero:
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


@register_all("Flatten")
def Flatten(X, *, axis=1):
    X = tensor(X)
    axis = axis + X.ndim if axis < 0 else axis
    return X.reshape(int(np.prod(X.shape[:axis], dtype=np.int64)), -1)


@register_all("Transpose")
def Transpose(data, *, perm=None):
    data = tensor(data)
    return data.permute(list(perm) if perm is not None else list(range(data.ndim))[::-1])


@register_all("Concat")
def Concat(*inputs, axis):
    tensors = [tensor(x) for x in inputs]
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), tensors[0].dtype)
    return torch.cat([t.to(dtype) for t in tensors], dim=axis)


@register_all("Squeeze")
def Squeeze(data, axes=None, **attrs):
    data = tensor(data)
    dims = _axes(axes, attrs.get("axes"))
    if dims is None:
        dims = [i for i, n in enumerate(data.shape) if n == 1]
    return data.squeeze(tuple(d % data.ndim for d in dims)) if dims else data


@register_all("Unsqueeze")
def Unsqueeze(data, axes=None, **attrs):
    data = tensor(data)
    dims = _axes(axes, attrs.get("axes"))
    rank = data.ndim + len(dims)
    for d in sorted(d % rank for d in dims):
        data = data.unsqueeze(d)
    return data


@register_all("Shape")
def Shape(data, *, start=0, end=None):
    return np.asarray(tuple(data.shape)[start:end], dtype=np.int64)


@register_all("Gather")
def Gather(data, indices, *, axis=0):
    data = tensor(data)
    index = tensor(indices).to(torch.int64)
    index = torch.where(index < 0, index + data.shape[axis], index)
    return data.index_select(axis, index.reshape(-1)).reshape(
        tuple(data.shape[:axis % data.ndim]) + tuple(index.shape) + tuple(data.shape[axis % data.ndim + 1:]))


@register_all("Slice", since=10)
def Slice(data, starts, ends, axes=None, steps=None):
    data = tensor(data)
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= data.ndim
        if step > 0:
            index[axis] = slice(*slice(start, end, step).indices(data.shape[axis]))
        else:  # torch has no negative steps: take the reversed range, then flip it
            first, stop, step = slice(start, end, step).indices(data.shape[axis])
            picked = list(range(first, stop, step))
            index[axis] = slice(picked[-1], picked[0] + 1, -step) if picked else slice(0, 0)
            flips.append(axis)
    result = data[tuple(index)]
    return result.flip(flips) if flips else result


@register_all("Cast")
def Cast(input, *, to, saturate=1, round_mode="up"):  # noqa: A002 - the ONNX input name
    dtype = tensor(np.zeros(0, tensor_dtype_to_np_dtype(to))).dtype
    return tensor(input).to(dtype)


@register_all("Identity")
def Identity(input):  # noqa: A002 - the ONNX input name
    return tensor(input)


@register_all("Dropout")
def Dropout(data, ratio=None, training_mode=None, *, seed=None, **attrs):
    """Inference: the identity (``training_mode`` must be off)."""
    if training_mode is not None and bool(np.asarray(training_mode if not isinstance(training_mode, torch.Tensor)
                                                     else training_mode.item())):
        raise NotImplementedError("Dropout training_mode=1")
    return tensor(data)


Dropout.outputs = 1  # the mask is not computed
