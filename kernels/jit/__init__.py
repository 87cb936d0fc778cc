"""numba versions of the hot integer ops, bit-exact with the reference. Importing registers them."""

from . import ops, transcendental  # noqa: F401  (registration)
from .loops import JIT

__all__ = ["JIT"]
