"""Constant nodes become initializers.

Paddle2ONNX exports (the PP-OCR models) keep every weight in a ``Constant`` node. Quantization passes
look for weights among initializers, so canonicalization turns each Constant of the main graph into
an initializer with the same name. Constants that are graph outputs, and sparse constants, stay.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from qcompiler.ir import Model, Node
from qcompiler.pass_manager import Pass, PassResult, register_pass

_SCALAR_ATTRS = {
    "value_float": np.float32,
    "value_int": np.int64,
    "value_floats": np.float32,
    "value_ints": np.int64,
}


def constant_value(node: Node) -> np.ndarray | None:
    """The array a Constant node produces, or None for forms we leave alone (sparse)."""
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], np.ndarray):
        return attrs["value"]
    for name, dtype in _SCALAR_ATTRS.items():
        if name in attrs:
            return np.array(attrs[name], dtype=dtype)
    if "value_string" in attrs:
        return np.array(attrs["value_string"].encode(), dtype=object)
    if "value_strings" in attrs:
        return np.array([s.encode() for s in attrs["value_strings"]], dtype=object)
    return None


@register_pass("constant-to-initializer")
class ConstantToInitializer(Pass):
    """Turn Constant nodes into initializers of the same name."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        returned = set(map(id, graph.outputs))
        changed = False
        for node in graph:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            value, array = node.outputs[0], constant_value(node)
            if array is None or id(value) in returned:
                continue
            graph.remove(node, safe=False)
            value.const = np.asarray(array)
            value.shape = value.const.shape
            if value.dtype is None:
                value.dtype = (TensorProto.STRING if value.const.dtype == object
                               else onnx.helper.np_dtype_to_tensor_dtype(value.const.dtype))
            graph.add_initializer(value)
            changed = True
        return PassResult(model, changed)
