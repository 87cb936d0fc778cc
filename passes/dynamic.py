"""The passes of dynamic int8 around the shared plan and lowering: ``gemm-to-matmul`` before it and
``lower-dynamic-matmul`` after ``insert-qdq`` and ``fold-quantized-weights``.

``gemm-to-matmul``: a Gemm with a constant weight as ``MatMul`` (+ ``Add`` of its bias).

``Y = alpha · A · B' + beta · C`` (``B' = B^T`` with ``transB``) becomes ``Y = A · W + c`` with the constant
``W = alpha · B'`` and ``c = beta · C`` (folded when ``C`` is constant; a ``C`` computed at run time is
added as it is, and only when ``beta = 1``). For dynamic quantization: onnxruntime fuses
``DynamicQuantizeLinear -> DequantizeLinear -> MatMul`` into its dynamic integer kernels
(``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``), but runs ``DequantizeLinear -> Gemm`` with a float
bias as a float ``FusedGemm`` on weights it dequantizes on every run (measured with onnxruntime 1.32's
optimized graph). ``transA = 1`` Gemms are left alone. The outputs change by float rounding only.

``lower-dynamic-matmul``: the dynamic QDQ units in onnxruntime's integer form
(:func:`qcompiler.lowering.lower_dynamic_matmuls`); ``benchmarks/dynamic_minilm.py`` measures both forms.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Model, Node, Value
from qcompiler.lowering import lower_dynamic_matmuls
from qcompiler.pass_manager import Pass, PassResult, register_pass


def _convertible(node: Node) -> bool:
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or node.attrs.get("transA", 0):
        return False
    weight = node.inputs[1]
    if weight.const is None or weight.const.dtype != np.float32 or weight.const.ndim != 2:
        return False
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return bias is None or bias.const is not None or node.attrs.get("beta", 1.0) == 1.0


@register_pass("gemm-to-matmul")
class GemmToMatMul(Pass):
    """Rewrite Gemm with a constant weight as MatMul + Add (what dynamic quantization fuses)."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        gemms = [node for node in graph if _convertible(node)]
        for gemm in gemms:
            alpha, beta = np.float32(gemm.attrs.get("alpha", 1.0)), np.float32(gemm.attrs.get("beta", 1.0))
            weight = gemm.inputs[1].const.T if gemm.attrs.get("transB", 0) else gemm.inputs[1].const
            name = gemm.name or graph.unique_name("gemm")
            w = graph.add_initializer(Value(graph.unique_name(f"{gemm.inputs[1].name}_matmul"),
                                            const=np.ascontiguousarray(alpha * weight, np.float32)))
            matmul = Node("MatMul", [gemm.inputs[0], w], 1, name=graph.unique_name(f"{name}_matmul"))
            product = matmul.outputs[0]
            product.name = graph.unique_name(f"{gemm.outputs[0].name}_product")
            product.dtype, product.shape = gemm.outputs[0].dtype, gemm.outputs[0].shape
            added = [matmul]
            bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
            if bias is not None:
                if bias.const is not None and beta != 1:
                    bias = graph.add_initializer(Value(graph.unique_name(f"{bias.name}_scaled"),
                                                       const=(beta * bias.const).astype(np.float32)))
                added.append(Node("Add", [product, bias], 1, name=graph.unique_name(f"{name}_bias")))
            graph.insert_before(gemm, *added)
            graph.substitute(gemm.outputs[0], added[-1].outputs[0])
            graph.remove(gemm)
        graph.remove_unused_initializers()
        return PassResult(model, bool(gemms))


@register_pass("lower-dynamic-matmul")
class LowerDynamicMatMul(Pass):
    """Write dynamic QDQ MatMuls as MatMulInteger -> Cast -> Mul (onnxruntime's dynamic integer form)."""

    needs = ("qdq",)

    def call(self, model: Model) -> PassResult:
        return PassResult(model, lower_dynamic_matmuls(model) > 0)
