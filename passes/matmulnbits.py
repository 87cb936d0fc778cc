"""``lower-matmulnbits``: write weight-only MatMul/Gemm layers as onnxruntime's ``com.microsoft::MatMulNBits``
and embedding Gathers as ``GatherBlockQuantized`` (layout and conditions: ``qcompiler.weight_only.matmulnbits``).
Weights they cannot take (a block size that is not a power of two >= 16) keep their spec for ``insert-qdq``."""

from __future__ import annotations

from qcompiler.errors import UserError
from qcompiler.ir import Model
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.weight_only.matmulnbits import lower_to_matmulnbits

ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@register_pass("lower-matmulnbits")
class LowerMatMulNBits(Pass):
    """Replace weight-only MatMul/Gemm layers by MatMulNBits (``accuracy_level`` 4: int8 activations in the CPU
    kernel) and embedding Gathers by GatherBlockQuantized."""

    accuracy_level: int = 0
    needs = ("plan",)

    def requires(self, model: Model) -> None:
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise UserError(f"lower-matmulnbits: accuracy_level must be one of {ACCURACY_LEVELS}, "
                            f"not {self.accuracy_level!r}")

    def call(self, model: Model) -> PassResult:
        lowered = lower_to_matmulnbits(model, self.accuracy_level)
        model.plan.reports.setdefault("weight_only", {})["matmulnbits"] = lowered
        return PassResult(model, lowered > 0)
