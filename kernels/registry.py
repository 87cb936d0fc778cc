"""The kernel registry: ``(domain, op_type, since) -> {backend: kernel}``.

A kernel is a pure function that follows the ONNX operator signature literally: inputs positional in
spec order (``None`` for an omitted optional input), attributes keyword-only with the spec defaults.
It returns an ``np.ndarray`` or a tuple of them, and never sees the IR.

Lookup mirrors onnxscript's version ranges and tinygrad's "latest compatible version": take the
highest ``since`` that is ``<= opset``, then the first backend, in preference order, that has a
kernel registered at that ``since``. A backend is available exactly when it registered kernels.

A kernel may also carry a ``prepare(args, **attrs)`` attribute, which the executor calls once when it
plans a node: ``args`` holds, per input, its constant value, ``None`` for an omitted input, or
:data:`RUNTIME` for one computed when the graph runs. It returns a function of the inputs alone
(attributes bound) that computes exactly what the kernel computes, specialized for the constants,
or None to use the kernel itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Kernel = Callable[..., object]

DEFAULT_BACKENDS = ("jit", "reference")



class _Runtime:
    def __repr__(self) -> str:
        return "RUNTIME"


RUNTIME = _Runtime()
"""Marks, in the arguments of ``prepare``, an input whose value is known only when the graph runs."""


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


class KernelNotFound(KeyError):
    """No kernel for ``(domain, op_type)`` at this opset in any of the requested backends."""

    def __init__(self, domain: str, op_type: str, opset: int, backends: Iterable[str], why: str):
        self.domain, self.op_type, self.opset, self.backends = domain, op_type, opset, tuple(backends)
        super().__init__(
            f"no kernel for {domain or 'ai.onnx'}::{op_type} at opset {opset} "
            f"in backends {self.backends}: {why}"
        )

    def __str__(self) -> str:  # KeyError would print the message quoted
        return self.args[0]


class KernelRegistry:
    """Kernels keyed by ``(domain, op_type)``, then ``since`` version, then backend name."""

    def __init__(self) -> None:
        self._kernels: dict[tuple[str, str], dict[int, dict[str, Kernel]]] = {}

    def register(
        self, op_type: str, *, domain: str = "", since: int = 1, backend: str = "reference"
    ) -> Callable[[Kernel], Kernel]:
        """Decorator: register ``fn`` for ``op_type`` from opset ``since`` on, under ``backend``."""

        def decorator(fn: Kernel) -> Kernel:
            by_backend = self._kernels.setdefault((_domain(domain), op_type), {}).setdefault(since, {})
            if backend in by_backend:
                raise ValueError(
                    f"kernel {domain or 'ai.onnx'}::{op_type} since {since} already registered "
                    f"for backend {backend!r} ({by_backend[backend].__module__}."
                    f"{by_backend[backend].__qualname__})"
                )
            by_backend[backend] = fn
            return fn

        return decorator

    def lookup(
        self, domain: str, op_type: str, opset: int, backends: Iterable[str] = DEFAULT_BACKENDS
    ) -> Kernel:
        """The kernel for ``op_type`` at ``opset``: highest ``since <= opset``, then first backend."""
        backends = tuple(backends)
        versions = self._kernels.get((_domain(domain), op_type))
        if not versions:
            raise KernelNotFound(domain, op_type, opset, backends, "op not registered")
        eligible = [since for since in versions if since <= opset]
        if not eligible:
            raise KernelNotFound(
                domain, op_type, opset, backends, f"registered only since {min(versions)}"
            )
        since = max(eligible)
        for backend in backends:
            if backend in versions[since]:
                return versions[since][backend]
        raise KernelNotFound(
            domain, op_type, opset, backends,
            f"the version since {since} exists only in {sorted(versions[since])}",
        )

    def versions(self, domain: str, op_type: str) -> list[int]:
        """The ``since`` versions registered for ``(domain, op_type)`` in any backend, ascending."""
        return sorted(self._kernels.get((_domain(domain), op_type), {}))

    def available_backends(self) -> set[str]:
        """Backends with at least one registered kernel."""
        return {b for versions in self._kernels.values() for by in versions.values() for b in by}

    def ops(self) -> list[tuple[str, str]]:
        """The registered ``(domain, op_type)`` pairs, sorted."""
        return sorted(self._kernels)

    def __contains__(self, key: tuple[str, str]) -> bool:
        domain, op_type = key
        return (_domain(domain), op_type) in self._kernels


default_registry = KernelRegistry()
register = default_registry.register
