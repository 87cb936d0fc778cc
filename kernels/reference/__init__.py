"""numpy reference kernels: always present, the source of truth. Importing registers them."""

from . import (  # noqa: F401  (registration)
    conv, conv_float, elementwise, erf, layer_norm, matmul, matmul_nbits, pool, qgemm, qlinear_add, qlinear_pool,
    qlinear_softmax, quantize, softmax)
from .gemm import ACCUMULATIONS, REFERENCE, Arithmetic, integer_matmul
from .quantize import requantize

__all__ = ["ACCUMULATIONS", "REFERENCE", "Arithmetic", "integer_matmul", "requantize"]
