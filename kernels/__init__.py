"""Kernels for the executor: ONNX-signature functions in a registry, per backend.

``reference`` (numpy) is the truth; ``jit`` (numba) holds bit-exact versions of the hot integer ops.
Importing this package registers every built-in kernel in :data:`default_registry`::

    from qcompiler.kernels import default_registry
    kernel = default_registry.lookup("", "QLinearConv", opset=13)   # jit if there is one, else reference
"""

from .registry import DEFAULT_BACKENDS, RUNTIME, KernelNotFound, KernelRegistry, default_registry, register
from . import jit, reference  # noqa: E402,F401  (registration)


def available_backends() -> set[str]:
    """Backends with kernels in the default registry."""
    return default_registry.available_backends()


__all__ = ["DEFAULT_BACKENDS", "RUNTIME", "KernelNotFound", "KernelRegistry", "available_backends", "default_registry",
           "register"]
