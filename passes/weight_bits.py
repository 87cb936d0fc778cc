"""4-bit weights stored in int8: narrow every weight spec to 15 levels, with MSE-optimal clipping.

``weight-bits`` (run after ``assign-precision``) gives every symmetric weight spec the scale of a signed
4-bit quantizer, ``s_c = r_c · max|W_c| / 7`` per channel, where the clipping ratio ``r_c`` minimizes the
channel's quantization MSE (``search-weight-ranges``' search, Banner et al. 2019, run on the 4-bit grid
with ``search = true``; ``r_c = 1``, min/max, otherwise), and stores the weight clipped to ``±7 s_c`` so
that ``QuantizeLinear`` never leaves ``[-7, 7]``.

The spec keeps the int8 storage type (4-bit values in int8 initializers, opset 13) rather than opset 21
``INT4`` tensors: onnxruntime's CPU kernels fuse ``DequantizeLinear(int8) -> Conv/MatMul`` into
QLinearConv / MatMulInteger, but run an int4 ``DequantizeLinear`` as a float dequantization followed by a
float convolution, so int4 storage would give up the int8 kernels' speed for a smaller file, and the
outputs are the same either way (every stored value is one of the 15 levels). The size saving belongs
to a weight-only int4 path. Reduced range is off for 4-bit weights: ``255 · 7 · 2`` cannot saturate the
int16 pair sums of x86 without VNNI.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from qcompiler.errors import UserError
from qcompiler.ir import Model, QuantSpec
from qcompiler.pass_manager import Pass, PassResult, register_pass

from .range_search import DEFAULT_RATIOS, clipped_weight_spec


@register_pass("weight-bits")
class WeightBits(Pass):
    """Quantize weights to 4 bits (values -7..7 in int8 storage), clipped at the MSE-optimal range."""

    bits: int = 4
    search: bool = True
    needs = ("plan",)

    def requires(self, model: Model) -> None:
        if self.bits != 4:
            raise UserError(f"weight-bits: only 4-bit weights are supported, not {self.bits}")

    def call(self, model: Model) -> PassResult:
        changed = False
        for value in model.graph.initializers.values():
            spec = value.quant
            if spec is None or not spec.symmetric or spec.block_size is not None or spec.dtype != TensorProto.INT8:
                continue
            narrow = QuantSpec(TensorProto.INT4, spec.scale, spec.zero_point, axis=spec.axis)
            ratios = DEFAULT_RATIOS if self.search else (1.0,)
            chosen, _, weight = clipped_weight_spec(value.const, narrow, False, ratios)
            stored = QuantSpec(TensorProto.INT8, chosen.scale, np.asarray(chosen.zero_point, np.int8), axis=chosen.axis)
            if stored != spec or not np.array_equal(weight, value.const):
                value.quant, value.const = stored, weight
                changed = True
        return PassResult(model, changed)
