"""Lowering weight-only layers to onnxruntime's ``com.microsoft::MatMulNBits``.

``MatMulNBits(A, B, scales, zero_points?)`` computes ``A @ Wᵀ`` for a weight ``W`` of ``N`` rows of ``K``
values, stored (onnxruntime's contrib-op layout, checked against onnxruntime 1.32 in the tests):

* ``B``: uint8 ``[N, ceil(K / block_size), block_size · bits / 8]``: each row of ``W`` in blocks of
  ``block_size`` along K (the last one zero-padded), unsigned ``bits``-bit values packed
  ``8 / bits`` per byte, the first in the lowest bits (:func:`qcompiler.ir.quant.pack_bits`);
* ``scales``: float ``[N · blocks]``, row-major over ``[N, blocks]``;
* ``zero_points``: uint8 ``[N · ceil(blocks · bits / 8)]``, each row's unsigned zero points packed as ``B``;
  absent means ``2^(bits-1)`` (what a symmetric signed spec shifted to unsigned has);
* attributes ``K``, ``N``, ``bits`` (2, 4 or 8 on the CPU execution provider of onnxruntime 1.32, which
  refuses 3, 5, 6 and 7), ``block_size`` (a power of two, at least 16), ``accuracy_level`` (4: the CPU
  kernel quantizes ``A`` to int8 per block and multiplies in integers; 0: float).

A weight's spec decides everything: ``W = (q - z) · s`` with ``q, z`` shifted to unsigned
(:func:`qcompiler.ir.quant.unsigned_offset`). A per-channel spec becomes one block of the smallest power
of two ``>= K``. MatMul and Gemm (``transA = 0``, ``alpha = beta = 1``; a bias becomes an ``Add``) are
lowered; a weight also read by a Gather (a tied embedding) or with a block size MatMulNBits cannot take
keeps its spec for ``insert-qdq``'s blocked DequantizeLinear.
"""

from __future__ import annotations

import numpy as np

from ..ir import Model, Node, QuantSpec, Value, quantize
from ..ir.quant import bit_width, pack_bits, unsigned_offset
from .layers import WeightLayer, block_params, quantized_layers

DOMAIN = "com.microsoft"


def nbits_block_size(spec: QuantSpec, k: int) -> int | None:
    """The ``block_size`` attribute for ``spec`` of a ``[K, N]`` weight, or None when MatMulNBits cannot
    express it."""
    if not spec.block_size:
        return max(16, 1 << (k - 1).bit_length())
    size = spec.block_size
    return size if size >= 16 and size & (size - 1) == 0 else None


def pack_weight(w: np.ndarray, spec: QuantSpec, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(B, scales, zero points or None) of a ``[K, N]`` weight on ``spec``'s grid (see the module docstring)."""
    k, n = w.shape
    bits, offset = bit_width(spec.dtype), unsigned_offset(spec.dtype)
    blocks = -(-k // block_size)
    unsigned = (quantize(w, spec).astype(np.int64) + offset).T  # [N, K]
    unsigned = np.pad(unsigned, ((0, 0), (0, blocks * block_size - k))).reshape(n, blocks, block_size)
    scale, zero_point = block_params(spec)  # [blocks, N]
    packed = pack_bits(unsigned, bits)
    scales = np.ascontiguousarray(scale.T, np.float32).reshape(-1)
    if spec.symmetric and offset:
        return packed, scales, None
    zero_points = pack_bits(zero_point.astype(np.int64).T + offset, bits).reshape(-1)
    return packed, scales, zero_points


def _lowerable(node: Node) -> bool:
    if node.op_type == "MatMul":
        return True
    attrs = node.attrs
    return (node.op_type == "Gemm" and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0 and (len(node.inputs) < 3 or node.inputs[2] is None
                                                    or node.inputs[2].shape is None or len(node.inputs[2].shape) <= 1))


def lower_layer(model: Model, layer: WeightLayer, accuracy_level: int) -> bool:
    """Replace the MatMul/Gemm readers of ``layer``'s weight by MatMulNBits; False if it cannot be."""
    graph = model.graph
    w, spec = layer.matrix(), layer.spec()
    k, n = w.shape
    block_size = nbits_block_size(spec, k)
    if block_size is None or not layer.nodes or not all(_lowerable(node) for node in layer.nodes):
        return False
    b, scales, zero_points = pack_weight(w, spec, block_size)
    base = layer.weight.name
    params = [graph.add_initializer(Value(graph.unique_name(f"{base}_{suffix}"), const=array))
              for suffix, array in (("Q", b), ("scales", scales), ("zero_points", zero_points)) if array is not None]
    attrs = {"K": k, "N": n, "bits": bit_width(spec.dtype), "block_size": block_size, "accuracy_level": accuracy_level}
    for node in layer.nodes:
        out = node.outputs[0]
        product = Node("MatMulNBits", [node.inputs[0], *params], 1, attrs=dict(attrs), domain=DOMAIN,
                       name=graph.unique_name(f"{node.name or base}_MatMulNBits"))
        product.outputs[0].dtype = out.dtype
        replacement = [product]
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None:
            product.outputs[0].name = graph.unique_name(f"{out.name}_product")
            replacement.append(Node("Add", [product.outputs[0], bias], 1, name=graph.unique_name(f"{node.name}_bias")))
        graph.insert_before(node, *replacement)
        graph.substitute(out, replacement[-1].outputs[0])
        graph.remove(node)
        model.plan.layers.pop(node, None)
    layer.weight.quant = None
    graph.drop_initializer(layer.weight)
    return True


def lower_to_matmulnbits(model: Model, accuracy_level: int = 0) -> int:
    """Lower every quantized weight layer MatMulNBits can run (see the module docstring); the number lowered."""
    lowered = sum(lower_layer(model, layer, accuracy_level) for layer in quantized_layers(model))
    if lowered:
        model.opset_imports.setdefault(DOMAIN, 1)
    return lowered
