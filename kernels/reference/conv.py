"""ConvInteger and QLinearConv (numpy reference): im2col, then the integer GEMM core of :mod:`.gemm`.

For N-d inputs ``x (N, C, *S)`` and weights ``w (M, C/group, *k)``::

    acc[n, m, o] = sum_{c, i} (xpad[n, c, o*stride + i*dilation] - x_zero_point) * (w[m, c, i] - w_zero_point[m])

where ``xpad`` is ``x`` padded with ``x_zero_point`` (so padding contributes exactly 0) and ``c``
runs over the input channels of ``m``'s group. The groups are the batch axis of one GEMM call
``(group, N*P, K) @ (group, K, M/group)``, activations as its A operand and weights as B, with
``K = prod(k) * C/group`` in channels-last order ``(*k, c)``: onnxruntime's QLinearConv transposes
to NHWC and builds the same im2col. The order cannot change an exact sum; it decides which products
share an int16 pair under ``accumulation="avx2_pair_saturate"``.

``accumulation`` is not an ONNX attribute: it selects the target's accumulation profile (see
:mod:`.gemm`). Under ``"avx2_pair_saturate"`` two of onnxruntime's kernel choices are modelled, as
observed with onnxruntime 1.32 on an emulated AVX2-without-VNNI CPU:

- ConvInteger passes the *weights* as the GEMM's A operand, an int8 x uint8 product that MLAS
  computes exactly: ConvInteger is exact under both profiles.
- QLinearConv with one input and one output channel per group (depthwise) and a single weight zero
  point runs MLAS's depthwise kernel, which widens to int16 before multiplying: exact.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..registry import register
from .gemm import ACCUMULATIONS, REFERENCE, Arithmetic, integer_matmul


def conv_pads(in_shape, kernel, strides, dilations, pads, auto_pad) -> list[int]:
    """Explicit pads ``[begin..., end...]`` for the ONNX ``auto_pad`` modes.

    SAME_UPPER/SAME_LOWER: ``out = ceil(in / stride)``; the total padding
    ``max(0, (out - 1) * stride + (k - 1) * dilation + 1 - in)`` is split evenly, the odd one at the
    end (SAME_UPPER) or at the beginning (SAME_LOWER). VALID: no padding. NOTSET: ``pads``.
    """
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    nd = len(in_shape)
    if auto_pad == "NOTSET":
        return list(pads) if pads is not None else [0] * (2 * nd)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    begin, end = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations, strict=True):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def im2col(x: np.ndarray, kernel, strides, dilations, pads, group: int, pad_value):
    """``(group, N*P, prod(kernel) * C/group)`` patches of ``x`` (k order ``(*kernel, c)``), and the
    output spatial shape."""
    nd = len(kernel)
    n, c = x.shape[:2]
    if group == 1 and all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(pads):
        return np.moveaxis(x, 1, -1).reshape(1, -1, c), x.shape[2:]  # pointwise: the patches are the pixels
    width = [(0, 0), (0, 0)] + list(zip(pads[:nd], pads[nd:], strict=True))
    xp = np.pad(x, width, constant_values=pad_value)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if any(e > size for e, size in zip(extent, xp.shape[2:], strict=True)):
        raise ValueError(f"kernel extent {extent} larger than padded input {xp.shape[2:]}")
    windows = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))
    windows = windows[(slice(None),) * 2 + tuple(slice(None, None, s) for s in strides)
                      + tuple(slice(None, None, d) for d in dilations)]
    out = windows.shape[2:2 + nd]
    cols = windows.reshape((n, group, c // group) + out + tuple(kernel))
    order = (1, 0) + tuple(range(3, 3 + 2 * nd)) + (2,)
    return cols.transpose(order).reshape(group, n * int(np.prod(out)), -1), out


def conv_accumulate(x, w, x_zero_point, w_zero_point, *, auto_pad, dilations, group, kernel_shape, pads,
                    strides, accumulation: str, arith: Arithmetic) -> np.ndarray:
    """The int32 accumulator ``(N, M, *out)`` of the integer convolution, on ``arith``'s loops."""
    nd = x.ndim - 2
    kernel = list(w.shape[2:])
    if kernel_shape is not None and list(kernel_shape) != kernel:
        raise ValueError(f"kernel_shape {list(kernel_shape)} does not match weights {w.shape}")
    strides = list(strides) if strides is not None else [1] * nd
    dilations = list(dilations) if dilations is not None else [1] * nd
    m, cg = w.shape[:2]
    if x.shape[1] != cg * group or m % group:
        raise ValueError(f"channels do not fit group={group}: x {x.shape}, w {w.shape}")
    if x_zero_point is not None and np.size(x_zero_point) != 1:
        raise ValueError("x_zero_point must be a scalar (per-tensor)")
    za = 0 if x_zero_point is None else np.asarray(x_zero_point).reshape(())
    pads = conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    if arith.depthwise2d is not None and accumulation == "exact" and nd == 2 and cg == 1 and m == group:
        return _depthwise2d(x, w, za, w_zero_point, pads, strides, dilations, arith)
    cols, out = im2col(x, kernel, strides, dilations, pads, group, za)
    b = w.reshape(group, m // group, cg, -1).transpose(0, 3, 2, 1).reshape(group, -1, m // group)
    zb = 0
    if w_zero_point is not None:
        zb = np.asarray(w_zero_point)
        zb = zb.reshape(()) if zb.size == 1 else zb.reshape(group, 1, m // group)
    acc = integer_matmul(cols, b, za, zb, accumulation=accumulation, arith=arith)
    acc = acc.reshape((group, x.shape[0], -1, m // group)).transpose(1, 0, 3, 2)
    return acc.reshape((x.shape[0], m) + tuple(out))


def _depthwise2d(x, w, za, w_zero_point, pads, strides, dilations, arith: Arithmetic) -> np.ndarray:
    """The exact depthwise 2-D accumulator on ``arith.depthwise2d`` (zero points subtracted first,
    padding then contributes 0)."""
    zb = 0 if w_zero_point is None else np.asarray(w_zero_point, np.int16).reshape(-1, 1, 1)
    xp = np.pad(x.astype(np.int16) - np.int16(za), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    kernel = w.shape[2:]
    out = [(size - (k - 1) * d - 1) // s + 1 for size, k, d, s in zip(xp.shape[2:], kernel, dilations, strides,
                                                                       strict=True)]
    if min(out) < 1:
        raise ValueError(f"kernel extent larger than padded input {xp.shape[2:]}")
    return arith.depthwise2d(xp, w[:, 0].astype(np.int16) - zb, strides, dilations, out)


def conv_integer(x, w, x_zero_point, w_zero_point, *, accumulation: str, arith: Arithmetic, **attrs) -> np.ndarray:
    """ConvInteger on ``arith``'s loops (exact under both profiles, see the module docstring)."""
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}")
    return conv_accumulate(x, w, x_zero_point, w_zero_point, accumulation="exact", arith=arith, **attrs)


def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B, *,
                 accumulation: str, arith: Arithmetic, **attrs) -> np.ndarray:
    """QLinearConv on ``arith``'s loops."""
    zero_points = np.asarray(w_zero_point)
    depthwise = w.shape[1] == 1 and w.shape[0] == attrs["group"] and bool(np.all(zero_points == zero_points.flat[0]))
    if accumulation == "avx2_pair_saturate" and depthwise:
        accumulation = "exact"  # MLAS's depthwise kernel, see the module docstring
    acc = conv_accumulate(x, w, x_zero_point, w_zero_point, accumulation=accumulation, arith=arith, **attrs)
    channel = (1, -1) + (1,) * (x.ndim - 2)
    if B is not None:  # int32 addition wraps, as the reference's int64 sum wrapped to int32 would
        acc = np.add(acc, np.asarray(B, np.int32).reshape(channel), dtype=np.int32)
    w_scale = np.asarray(w_scale, np.float32)
    w_scale = w_scale.reshape(channel) if w_scale.size > 1 else w_scale.reshape(())
    multiplier = np.asarray(x_scale, np.float32).reshape(()) * w_scale / np.asarray(y_scale, np.float32).reshape(())
    y_zero_point = np.asarray(y_zero_point)
    return arith.requantize(acc, multiplier, y_zero_point.reshape(()), y_zero_point.dtype)


@register("ConvInteger", since=10)
def ConvInteger(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                kernel_shape=None, pads=None, strides=None, accumulation="exact"):
    """``y = conv(x - x_zero_point, w - w_zero_point)`` in int32 (``w_zero_point`` per tensor or
    per output channel)."""
    return conv_integer(x, w, x_zero_point, w_zero_point, auto_pad=auto_pad, dilations=dilations, group=group,
                        kernel_shape=kernel_shape, pads=pads, strides=strides, accumulation=accumulation,
                        arith=REFERENCE)


@register("QLinearConv", since=10)
def QLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
                accumulation="exact"):
    """``y = saturate(round_half_even((acc + B) * (x_scale * w_scale / y_scale)) + y_zero_point)``
    with ``acc`` the ConvInteger result (int32), ``B`` the int32 bias, the multiplier float32 and
    ``w_scale``/``w_zero_point`` per tensor or per output channel."""
    return qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B,
                        auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
                        pads=pads, strides=strides, accumulation=accumulation, arith=REFERENCE)
