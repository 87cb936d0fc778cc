"""``insert-qdq``: materialize the plan's specs as QuantizeLinear / DequantizeLinear nodes.

The rewrite itself (one quantizer per tensor, int32 biases, absorbed activations, captured values of
subgraphs) is ``qcompiler.lowering.insert_qdq``, shared with the passes and analyses that build trial
models.
"""

from __future__ import annotations

from qcompiler.ir import Model
from qcompiler.lowering import insert_qdq
from qcompiler.pass_manager import Pass, PassResult, register_pass


@register_pass("insert-qdq")
class InsertQDQ(Pass):
    """Insert QuantizeLinear/DequantizeLinear for every value with a QuantSpec; int32 biases."""

    needs = ("plan", "ranges")
    provides = ("qdq",)

    def call(self, model: Model) -> PassResult:
        return PassResult(model, insert_qdq(model))
