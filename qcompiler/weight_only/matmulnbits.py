"""Lowering weight-only layers to onnxruntime's ``com.microsoft::MatMulNBits`` and ``GatherBlockQuantized``.

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
lowered.

A float zero point ``z`` (:class:`qcompiler.ir.QuantSpec`) is written as the integer ``z' = round(z)``
(clipped to the type) plus a correction: ``W = (q - z') · s - δ`` with ``δ = s · (z - z')`` per block and
column, so ``Y = MatMulNBits(A) - (A · E) · Δ``, where ``E`` ``[K, blocks]`` sums ``A`` over each block
(ones on the block's rows) and ``Δ`` ``[blocks, N]`` holds ``δ``. MatMulNBits also takes float
``zero_points`` directly, but onnxruntime 1.32's CPU kernel has no fast path for them (measured by
``benchmarks/llm_weight_only.py --latency``); the correction costs ``blocks · (K + N)`` per row
against the product's ``K · N``.

An embedding table ``[V, D]`` read by ``Gather`` (axis 0) becomes ``com.microsoft::GatherBlockQuantized``
(``gather_axis`` 0, ``quantize_axis`` 1, blocks along D): ``data`` uint8 ``[V, D · bits / 8]`` (each row
packed as ``B``'s, without padding to whole blocks; ``D · bits`` a multiple of 8), ``scales`` ``[V, blocks]``,
``zero_points`` uint8 ``[V, blocks · bits / 8]`` packed the same way (absent: ``2^(bits-1)``; onnxruntime 1.32
refuses float ones, so ``weight-rtn`` gives tables integer zero points), so a decoding
step dequantizes the rows it reads, not the whole table. A table that a tied output Gemm (``transB``) reads too gets both
forms. A weight with a block size the contrib ops cannot take keeps its spec for ``insert-qdq``'s blocked
DequantizeLinear.
"""

from __future__ import annotations

import numpy as np

from ..ir import Model, Node, QuantSpec, Value, quantize
from ..ir.external_data import release_pages
from ..ir.quant import bit_width, pack_bits, unsigned_offset
from .layers import WeightLayer, block_params, quantized_layers, with_block_params

DOMAIN = "com.microsoft"


def nbits_block_size(spec: QuantSpec, k: int) -> int | None:
    """The ``block_size`` attribute for ``spec`` of a ``[K, N]`` weight, or None when MatMulNBits cannot
    express it."""
    if not spec.block_size:
        return max(16, 1 << (k - 1).bit_length())
    size = spec.block_size
    return size if size >= 16 and size & (size - 1) == 0 else None


COLUMNS_AT_ONCE = 4096
"""Output columns quantized at once: the float temporaries of quantizing stay a few MB per 1k of K, whatever
the size of the matrix (a 150k-token embedding table would otherwise need several copies of itself)."""


def unsigned_rows(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(integers ``[N, K]`` uint8, scales ``[N, blocks]`` float32, zero points ``[N, blocks]`` or None) of a
    ``[K, N]`` weight on ``spec``'s grid, shifted to the unsigned type (None: symmetric, the implied
    ``2^(bits-1)``; float32 for a float zero point); quantized :data:`COLUMNS_AT_ONCE` columns at a time."""
    offset = unsigned_offset(spec.dtype)
    scale, zero_point = block_params(spec)  # [blocks, N]
    rows = np.empty((w.shape[1], w.shape[0]), np.uint8)
    for start in range(0, w.shape[1], COLUMNS_AT_ONCE):
        part = slice(start, start + COLUMNS_AT_ONCE)
        columns = quantize(w[:, part], with_block_params(spec, scale[:, part], zero_point[:, part]))
        rows[part] = (columns.astype(np.int16) + offset).T
    scales = np.ascontiguousarray(scale.T, np.float32)
    if spec.symmetric and offset:
        return rows, scales, None
    if spec.float_zero_point:
        return rows, scales, np.ascontiguousarray(zero_point.T + offset, np.float32)
    return rows, scales, zero_point.astype(np.int64).T + offset


def pack_weight(w: np.ndarray, spec: QuantSpec, block_size: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(B, scales, zero points or None, Δ ``[blocks, N]`` for a float zero point or None) of a ``[K, N]`` weight on
    ``spec``'s grid (see the module docstring)."""
    rows, scales, zero_points = unsigned_rows(w, spec)
    n, k = rows.shape
    bits, blocks = bit_width(spec.dtype), -(-k // block_size)
    packed = pack_bits(np.pad(rows, ((0, 0), (0, blocks * block_size - k))).reshape(n, blocks, block_size), bits)
    correction = None
    if spec.float_zero_point:
        nearest = np.clip(np.rint(zero_points), 0, (1 << bits) - 1)
        correction = np.ascontiguousarray((scales * (zero_points - nearest)).T, np.float32)
        zero_points = nearest.astype(np.int64)
    if zero_points is not None:
        zero_points = pack_bits(zero_points, bits).reshape(-1)
    return packed, scales.reshape(-1), zero_points, correction


def block_sums(k: int, block_size: int) -> np.ndarray:
    """``E`` ``[K, blocks]``: ``A · E`` sums each row of ``A`` over each block of ``block_size`` along K."""
    return (np.arange(k)[:, None] // block_size == np.arange(-(-k // block_size))[None, :]).astype(np.float32)


def pack_table(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(data ``[V, D · bits / 8]``, scales ``[V, blocks]``, zero points ``[V, blocks · bits / 8]`` or None) of an
    embedding table given as its ``[K, N] = [D, V]`` matrix: ``GatherBlockQuantized``'s layout (rows packed as
    :func:`qcompiler.ir.quant.pack_bits` does, without padding to whole blocks)."""
    rows, scales, zero_points = unsigned_rows(w, spec)
    bits = bit_width(spec.dtype)
    return pack_bits(rows, bits), scales, None if zero_points is None else pack_bits(zero_points, bits)


def _lowerable(node: Node) -> bool:
    if node.op_type in ("MatMul", "Gather"):  # a Gather of a weight layer reads rows of its table (axis 0)
        return True
    attrs = node.attrs
    return (node.op_type == "Gemm" and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0 and (len(node.inputs) < 3 or node.inputs[2] is None
                                                    or node.inputs[2].shape is None or len(node.inputs[2].shape) <= 1))


def lower_layer(model: Model, layer: WeightLayer, accuracy_level: int, sums: dict[tuple[int, int], Value]) -> bool:
    """Replace the readers of ``layer``'s weight: MatMul/Gemm by MatMulNBits, Gather by GatherBlockQuantized;
    False if one of them cannot be. ``sums`` keeps the block-sum matrices ``E`` made so far, by ``(K, block)``."""
    graph = model.graph
    w, spec = layer.matrix(), layer.spec()
    k, n = w.shape
    block_size = nbits_block_size(spec, k)
    bits, base = bit_width(spec.dtype), layer.weight.name
    if block_size is None or not layer.nodes or not all(_lowerable(node) for node in layer.nodes):
        return False
    gathers = [node for node in layer.nodes if node.op_type == "Gather"]
    if gathers and (k * bits % 8 or spec.float_zero_point):  # row length in whole bytes; integer zero points
        return False

    def initializers(arrays: dict[str, np.ndarray | None]) -> list[Value]:
        return [graph.add_initializer(Value(graph.unique_name(f"{base}_{suffix}"), const=array))
                for suffix, array in arrays.items() if array is not None]

    linear = [node for node in layer.nodes if node.op_type != "Gather"]
    if linear:
        b, scales, zero_points, delta = pack_weight(w, spec, block_size)
        params = initializers({"Q": b, "scales": scales, "zero_points": zero_points})
        correction = None
        if delta is not None:
            if (k, block_size) not in sums:
                sums[k, block_size] = initializers({f"block_sums_{k}_{block_size}": block_sums(k, block_size)})[0]
            correction = (sums[k, block_size], *initializers({"zero_point_correction": delta}))
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block_size, "accuracy_level": accuracy_level}
        for node in linear:
            _replace(model, node, "MatMulNBits", [node.inputs[0], *params], attrs,
                     node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None, correction)
    if gathers:
        data, scales, zero_points = pack_table(w, spec)
        params = initializers({"table": data, "table_scales": scales, "table_zero_points": zero_points})
        attrs = {"gather_axis": 0, "quantize_axis": 1, "block_size": block_size, "bits": bits}
        for node in gathers:
            _replace(model, node, "GatherBlockQuantized", [params[0], node.inputs[1], *params[1:]], attrs, None)
    layer.weight.quant = None
    graph.drop_initializer(layer.weight)
    release_pages(layer.weight.const)  # a weight spilled or mapped from a file: its pages, not all kept resident
    return True


def _replace(model: Model, node: Node, op_type: str, inputs: list[Value], attrs: dict, bias: Value | None,
             correction: tuple[Value, Value] | None = None) -> None:
    """Put a ``com.microsoft`` ``op_type`` node in the place of ``node``, then the subtraction of
    ``(A · E) · Δ`` for ``correction = (E, Δ)`` (a float zero point, see the module docstring) and an ``Add``
    of ``bias``."""
    graph, out = model.graph, node.outputs[0]
    product = Node(op_type, inputs, 1, attrs=dict(attrs), domain=DOMAIN,
                   name=graph.unique_name(f"{node.name or op_type}_{op_type}"))
    product.outputs[0].dtype = out.dtype
    replacement = [product]

    def then(op: str, operands: list[Value], suffix: str) -> None:
        label = "product" if replacement[-1] is product else replacement[-1].op_type.lower()
        replacement[-1].outputs[0].name = graph.unique_name(f"{out.name}_{label}")
        step = Node(op, operands, 1, name=graph.unique_name(f"{node.name}_{suffix}"))
        step.outputs[0].dtype = out.dtype
        replacement.append(step)

    if correction is not None:
        result, (sums, delta) = replacement[-1].outputs[0], correction
        then("MatMul", [inputs[0], sums], "block_sums")
        then("MatMul", [replacement[-1].outputs[0], delta], "zero_point_shift")
        then("Sub", [result, replacement[-1].outputs[0]], "zero_point_correction")
    if bias is not None:
        then("Add", [replacement[-1].outputs[0], bias], "bias")
    graph.insert_before(node, *replacement)
    graph.substitute(out, replacement[-1].outputs[0])
    graph.remove(node)
    model.plan.layers.pop(node, None)


def lower_to_matmulnbits(model: Model, accuracy_level: int = 0) -> int:
    """Lower every quantized weight layer the contrib ops can run (see the module docstring); the number lowered."""
    sums: dict[tuple[int, int], Value] = {}
    lowered = sum(lower_layer(model, layer, accuracy_level, sums) for layer in quantized_layers(model))
    if lowered:
        model.opset_imports.setdefault(DOMAIN, 1)
    return lowered
