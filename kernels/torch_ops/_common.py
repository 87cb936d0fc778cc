"""Shared helpers of the torch kernels: conversion and registration at every ONNX version of an op."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch

from ..registry import default_registry

BACKEND = "torch"
_REGISTERED: set[str] = set()


def tensor(x) -> torch.Tensor:
    """``x`` as a tensor (numpy arrays and scalars converted, without copying where possible)."""
    if isinstance(x, torch.Tensor):
        return x
    array = np.asarray(x)
    if array.dtype.kind in "iuV" and array.dtype not in (np.uint8, np.int8, np.int16, np.int32, np.int64):
        array = array.astype(np.int64)  # uint16/32/64 and ml_dtypes int4/int2: torch lacks them
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())  # torch wants writable memory


def ints(x) -> list[int]:
    """A shape-like input (numpy or tensor) as a list of Python ints."""
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.detach().reshape(-1).tolist()]
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _versions(op_type: str) -> list[int]:
    return sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                   if s.name == op_type and s.domain == ""})


def register_all(op_type: str, *, since: int = 1) -> Callable[[Callable], Callable]:
    """Register ``fn`` for ``op_type`` under the torch backend at every version ``>= since`` that the other
    backends registered it at, or, for an op they lack, at every ONNX version: the registry takes the
    highest registered version <= the model's opset, so a torch-only version above the reference's would
    hide the reference kernel from the default backends."""

    def decorator(fn: Callable) -> Callable:
        for version in default_registry.versions("", op_type) or _versions(op_type):
            if version >= since:
                default_registry.register(op_type, since=version, backend=BACKEND)(fn)
        _REGISTERED.add(op_type)
        return fn

    return decorator


def registered_ops() -> list[str]:
    """The op types the torch backend has kernels for."""
    return sorted(_REGISTERED)
