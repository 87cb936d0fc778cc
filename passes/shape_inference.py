"""Shape inference: fill in the dtype and shape of every value ONNX's inference can derive.

Runs ``onnx.shape_inference.infer_shapes`` with data propagation (so shapes computed through
Shape/Gather/Concat chains resolve) and non-strict mode (an op it does not know leaves its outputs
unknown rather than failing). Dynamic dimensions stay symbolic: a dimension named in the inputs
(``N``) is carried through; one it cannot relate to an input gets a fresh symbol or stays unknown.
Only missing information is added; nothing already known is overwritten.
"""

from __future__ import annotations

import onnx
import onnx.shape_inference

from qcompiler.ir import Model, to_proto
from qcompiler.ir.serde import apply_value_info, is_shape_data
from qcompiler.pass_manager import Pass, PassResult, register_pass


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Add dtypes and shapes (symbolic where dynamic) found by ONNX shape inference."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        proto = to_proto(model, include_data=is_shape_data)  # weights: type and dims only
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                         data_prop=True)
        except Exception:  # a model onnx cannot infer still runs; leave it as it is
            return PassResult(model, False)
        infos = {info.name: info for info in inferred.graph.value_info}
        infos.update({info.name: info for info in inferred.graph.output})
        changed = False
        for value in model.graph.values():
            info = infos.get(value.name)
            if info is None or value.const is not None:
                continue
            known = (value.dtype, value.shape, value.type_proto)
            if value.dtype is None or value.shape is None or None in value.shape:
                apply_value_info(value, _merged(value, info))
            changed |= (value.dtype, value.shape, value.type_proto) != known
        return PassResult(model, changed)


def _merged(value, info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``info``, but with dimensions the value already knew kept when inference lost them."""
    if value.shape is None or not info.type.HasField("tensor_type"):
        return info
    merged = onnx.ValueInfoProto()
    merged.CopyFrom(info)
    dims = merged.type.tensor_type.shape.dim
    if len(dims) == len(value.shape):
        for dim, known in zip(dims, value.shape):
            if known is not None and not dim.HasField("dim_value") and not dim.HasField("dim_param"):
                if isinstance(known, int):
                    dim.dim_value = known
                else:
                    dim.dim_param = known
    return merged
