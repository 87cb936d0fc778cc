"""Weight-only quantization, RTN: start a weight-only plan with the min/max spec of every weight block.

``weight-rtn`` picks the weight layers (``qcompiler.weight_only.layers``: MatMul/Gemm with a constant 2-D
weight, unless ``linear = false``, and embedding Gathers unless ``embeddings = false``), gives each weight
the round-to-nearest spec of the scheme (``bits``, ``block_size`` along K — 0: per output channel —,
``symmetric``; asymmetric with ``float_zero_point``: a float zero point per block, for MatMulNBits, except on
a table an embedding Gather reads, which onnxruntime's GatherBlockQuantized takes with integer zero points
only) and leaves every activation float. ``weight-hqq``, ``weight-awq`` and ``weight-gptq`` refine those specs; ``lower-matmulnbits``
or ``insert-qdq`` + ``fold-quantized-weights`` write them.
"""

from __future__ import annotations

from dataclasses import field, replace

from qcompiler.errors import UserError
from qcompiler.ir import Model
from qcompiler.ir.external_data import release_pages
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import get_target
from qcompiler.weight_only.layers import BITS, find_layers, min_max_spec, weight_scheme


def check_scheme(name: str, bits: int, block_size: int) -> None:
    """The user error for a weight-only scheme this compiler cannot write."""
    if bits not in BITS:
        raise UserError(f"{name}: weight-only quantization takes {', '.join(map(str, BITS))} bits, not {bits!r} "
                        "(onnxruntime's MatMulNBits runs 2, 4 and 8 bits; ONNX has no 3-bit type)")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0 or block_size == 1:
        raise UserError(f"{name}: block_size must be 0 (per output channel) or at least 2, not {block_size!r}")


@register_pass("weight-rtn")
class WeightRTN(Pass):
    """Weight-only quantization by round to nearest (min/max per block); starts the plan."""

    bits: int = 4
    block_size: int = 128
    symmetric: bool = True
    float_zero_point: bool = False
    exclude: list[str] = field(default_factory=list)
    embeddings: bool = True
    linear: bool = True
    provides = ("plan", "ranges")  # weight-only: no activation waits for a range

    def requires(self, model: Model) -> None:
        check_scheme("weight-rtn", self.bits, self.block_size)
        if self.float_zero_point and self.symmetric:
            raise UserError("weight-rtn: a float zero point is asymmetric (symmetric = false)")

    def call(self, model: Model) -> PassResult:
        scheme = weight_scheme(self.bits, self.block_size, self.symmetric, self.float_zero_point)
        table_scheme = replace(scheme, float_zero_point=False)
        plan = model.plan
        plan.start(get_target("auto"))
        layers = find_layers(model, self.exclude, self.embeddings, self.linear)
        for layer in layers:
            gathered = any(node.op_type == "Gather" for node in layer.nodes)
            layer.weight.quant = min_max_spec(layer, table_scheme if gathered else scheme)
            release_pages(layer.weight.const)  # a model past memory: its weights are not all kept resident
            for node in layer.nodes:
                plan.quantize_node(node)
        plan.reports["weight_only"] = {"bits": self.bits, "block_size": self.block_size, "symmetric": self.symmetric,
                                       "float_zero_point": self.float_zero_point,
                                       "method": "rtn", "weights": len(layers),
                                       "parameters": sum(layer.weight.const.size for layer in layers)}
        return PassResult(model, bool(plan.layers))
