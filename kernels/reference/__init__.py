"""numpy reference kernels: always present, the source of truth. Importing registers them."""

from . import conv, matmul, quantize  # noqa: F401  (registration)
from .gemm import ACCUMULATIONS, REFERENCE, Arithmetic, integer_matmul
from .quantize import requantize

__all__ = ["ACCUMULATIONS", "REFERENCE", "Arithmetic", "integer_matmul", "requantize"]
