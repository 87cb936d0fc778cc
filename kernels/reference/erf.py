"""Erf (numpy): onnxruntime 1.32's MLAS kernel on x86 (``MlasErfKernelFma3``), rounding step for step.

onnxruntime computes a float32 Erf with ``MlasComputeErf``; on x86-64 with AVX2+FMA3 (AVX-512 CPUs
included: there is no AVX-512 Erf kernel, and native and ``qemu -cpu Haswell-v4`` results agree)
that is ``MlasErfKernelFma3`` (onnxruntime/core/mlas/lib/x86_64/ErfKernelFma3.S, constants
``MlasErfConstants`` in erf.cpp), per element::

    a = min(|x|, 3.925)                (vminps; onnxruntime 1.32 clamps at 3.925, older erf.cpp at 3.725)
    small (a < 0.921875):  s = a * a; p = fma(p, s, c) from -5.99104969e-4 over 4.99339588e-3,
        -2.67667342e-2, 1.12818025e-1, -3.76124859e-1, 1.28379151e-1;  erf = fma(p, a, a)
    big (a >= 0.921875):   q = fma(q, a, c) from 1.72948930e-5 over -3.83208680e-4, 3.88393435e-3,
        -2.42545605e-2, 1.06777847e-1, 6.34846687e-1, 1.28717512e-1;  q = fma(q, a, a)
        t = max(-q, -88.3762626647949); v = fma(1/ln 2, t, 12582912) - 12582912
        f = fma(v, -6.93145752e-1, t); f = fma(v, -1.42860677e-6, f)
        y = fma(y, f, c) from 1.38319808e-3 over 8.37550033e-3, 4.16689515e-2, 1.66664466e-1,
            4.99999851e-1, 1, 1
        erf = 1 - y * 2^v
    the sign of x is or-ed back in.

Measured bit for bit against onnxruntime 1.32 natively (AVX-512) and under qemu (AVX2) on 16,384
values in [-6.6, 6.6], and on the 6,155 of ``tests/kernels/test_softmax_erf.py`` (with +-0, +-inf). The ``onnx.reference`` fallback
(``math.erf``, correctly rounded) differed on 10 % of them by an ulp; inside MiniLM's GELU, before
a QuantizeLinear, such an ulp now and then lands on the other side of a rounding boundary. The
executor uses this kernel where the profile names an x86 ``isa``; otherwise, and for other dtypes,
``math.erf`` as ``onnx.reference`` does.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import register
from .layer_norm import fma_f32
from .softmax import ISAS

_F32 = np.float32

_UPPER, _SPLIT = _F32(3.925), _F32(0.921875)
_SMALL = tuple(map(_F32, (-5.99104969e-4, 4.99339588e-3, -2.67667342e-2, 1.12818025e-1, -3.76124859e-1,
                          1.28379151e-1)))
_BIG = tuple(map(_F32, (1.72948930e-5, -3.83208680e-4, 3.88393435e-3, -2.42545605e-2, 1.06777847e-1,
                        6.34846687e-1, 1.28717512e-1)))
_EXP = tuple(map(_F32, (1.38319808e-3, 8.37550033e-3, 4.16689515e-2, 1.66664466e-1, 4.99999851e-1, 1.0, 1.0)))
_EXP_LOWER, _EXP_C = _F32(-88.3762626647949), _F32(12582912.0)
_LOG2_RECIPROCAL, _LOG2_HIGH, _LOG2_LOW = _F32(1.44269504088896341), _F32(-6.93145752e-1), _F32(-1.42860677e-6)


def erf_fma3(x: np.ndarray) -> np.ndarray:
    """MLAS's AVX2/FMA3 Erf of a float32 array."""
    x = np.asarray(x, _F32)
    sign = x.view(np.uint32) & np.uint32(0x80000000)
    magnitude = np.abs(x)
    a = np.where(magnitude < _UPPER, magnitude, _UPPER)  # vminps: the second operand when NaN
    s = a * a
    p = np.full_like(a, _SMALL[0])
    for c in _SMALL[1:]:
        p = fma_f32(p, s, c)
    small = fma_f32(p, a, a)
    big = a >= _SPLIT
    ab = np.where(big, a, _F32(0))
    q = np.full_like(a, _BIG[0])
    for c in _BIG[1:]:
        q = fma_f32(q, ab, c)
    q = fma_f32(q, ab, ab)
    t = np.maximum(-q, _EXP_LOWER)
    v = fma_f32(_LOG2_RECIPROCAL, t, _EXP_C) - _EXP_C
    f = fma_f32(v, _LOG2_HIGH, t)
    f = fma_f32(v, _LOG2_LOW, f)
    y = np.full_like(f, _EXP[0])
    for c in _EXP[1:]:
        y = fma_f32(y, f, c)
    scale = ((v.astype(np.int32) + 127) << 23).astype(np.int32).view(_F32)  # vcvttps2dq, vpaddd, vpslld
    result = np.where(big, _F32(1) - y * scale, small)
    return (result.view(np.uint32) | sign).view(_F32)


_math_erf = np.vectorize(math.erf, otypes=["d"])


@register("Erf", since=9)
def Erf(input, *, isa=None):
    """Erf: MLAS's x86 kernel for float32 where ``isa`` names an x86 profile, else ``math.erf``."""
    x = np.asarray(input)
    if isa is not None and x.dtype == _F32:
        if isa not in ISAS:
            raise ValueError(f"unknown isa {isa!r}; known: {', '.join(ISAS)}")
        return erf_fma3(x)
    if x.size == 0:
        return x.copy()
    return _math_erf(x).astype(x.dtype)
