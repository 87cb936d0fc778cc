"""qcompiler's IR: SSA values, nodes, graphs and models, with ONNX files at the boundary."""

from ._core import CAPTURE_INDEX, Graph, Model, Node, Usage, Value
from .printer import format_graph, format_model, format_node
from .quant import (QuantSpec, Scheme, channel_shape, dequantize, fake_quantize, integer_range, quantize,
                    storage_dtype)
from .serde import SavedModel, from_proto, load, onnxruntime_model, save, to_proto
from .verify import verify

__all__ = [
    "CAPTURE_INDEX",
    "Graph",
    "Model",
    "Node",
    "QuantSpec",
    "SavedModel",
    "Scheme",
    "Usage",
    "Value",
    "channel_shape",
    "dequantize",
    "fake_quantize",
    "format_graph",
    "format_model",
    "format_node",
    "from_proto",
    "integer_range",
    "load",
    "onnxruntime_model",
    "quantize",
    "save",
    "storage_dtype",
    "to_proto",
    "verify",
]
