"""Add, Sub, Mul, HardSigmoid and HardSwish (numpy): the float ops between quantized ones, without the
``onnx.reference`` call overhead they would otherwise pay on every node.

ONNX's multidirectional broadcasting is numpy's, both inputs have one type (integer results wrap, as
in onnxruntime), and the arithmetic is one IEEE operation per element: the results equal
``onnx.reference``'s and onnxruntime's bit for bit. HardSigmoid is ``max(0, min(1, alpha * x + beta))``
with the product and the sum rounded separately, as onnxruntime's Eigen expression computes it;
onnxruntime computes HardSwish as that HardSigmoid (alpha 1/6, beta 1/2) times ``x``.
"""

from __future__ import annotations

import numpy as np

from ..registry import register


@register("Add", since=7)
def Add(A, B):
    """``A + B``."""
    return np.asarray(np.add(A, B))


@register("Sub", since=7)
def Sub(A, B):
    """``A - B``."""
    return np.asarray(np.subtract(A, B))


@register("Mul", since=7)
def Mul(A, B):
    """``A * B``."""
    return np.asarray(np.multiply(A, B))


@register("HardSigmoid", since=6)
def HardSigmoid(X, *, alpha=0.2, beta=0.5):
    """``max(0, min(1, alpha * X + beta))`` in ``X``'s type."""
    y = np.multiply(X, X.dtype.type(alpha))
    np.add(y, X.dtype.type(beta), out=y)
    np.minimum(y, X.dtype.type(1), out=y)
    return np.maximum(y, X.dtype.type(0), out=y)


@register("HardSwish", since=14)
def HardSwish(X):
    """``X * HardSigmoid(X; alpha=1/6, beta=0.5)``."""
    return np.multiply(X, HardSigmoid(X, alpha=1.0 / 6.0, beta=0.5))
