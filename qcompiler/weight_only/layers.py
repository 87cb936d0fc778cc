"""The weights a weight-only scheme quantizes, its schemes, RTN, and storing a quantized weight.

A *weight layer* is one constant 2-D float weight and the nodes that read it: MatMul (weight ``[K, N]``
as input B), Gemm (``[K, N]``, or ``[N, K]`` with ``transB``), and Gather along axis 0 of an embedding
table ``[V, D]``. Blocks run along the reduction axis ``K`` of a MatMul/Gemm and along ``D`` for a Gather,
so one spec serves a table that an embedding Gather and a tied output Gemm (``transB=1``) share. A weight
read by anything else, or by layers that disagree on that axis, stays float.

Conventions of the weight-only schemes (:func:`weight_scheme`): ``bits`` in {2, 4, 8}; symmetric uses the
signed type on its full range (zero point 0, the block's value of largest magnitude on ``-2^(b-1)``:
``scale = w_extreme / -2^(b-1)``, signed — onnxruntime's MatMulNBits grid), asymmetric the unsigned type
(``scale = (max - min) / (2^b - 1)``, integer zero point, or with ``float_zero_point`` the float
``-min / scale`` that MatMulNBits takes: min and max then lie exactly on the grid), so the symmetry of a spec
is read off its type (:func:`scheme_of`); blocks of ``block_size`` along ``K`` (ONNX opset 21's blocked layout, last block
partial), or per output channel (``block_size`` 0: one scale per column of ``[K, N]``).

RTN (round to nearest) is the min/max spec of every block and ``fake_quantize`` — the baseline the other
algorithms start from (ONNX ``QuantizeLinear``: round half to even, saturate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from ..assignment import excluded
from ..ir import Model, Node, QuantSpec, Scheme, Value, fake_quantize
from ..ir.external_data import mapped_source, release_pages, spill
from ..ir.quant import integer_range, integer_type

BITS = (2, 4, 8)
FLOAT = TensorProto.FLOAT


def weight_scheme(bits: int, block_size: int, symmetric: bool, float_zero_point: bool = False) -> Scheme:
    """The weight-only scheme: ``bits`` wide, blocks of ``block_size`` along K (0: per output channel)."""
    if bits not in BITS:
        raise ValueError(f"weight-only quantization takes {', '.join(map(str, BITS))} bits, not {bits}")
    dtype = integer_type(bits, signed=symmetric)
    if block_size:
        return Scheme(dtype, symmetric, "block", block_size, full_range=symmetric, float_zero_point=float_zero_point)
    return Scheme(dtype, symmetric, "axis", full_range=symmetric, float_zero_point=float_zero_point)


def scheme_of(spec: QuantSpec) -> Scheme:
    """The weight-only scheme a spec of a ``[K, N]`` matrix follows (symmetric exactly when signed)."""
    bits = (integer_range(spec.dtype)[1] - integer_range(spec.dtype)[0]).bit_length()
    return weight_scheme(bits, spec.block_size or 0, integer_range(spec.dtype)[0] < 0, spec.float_zero_point)


def matrix_axis(scheme: Scheme) -> int:
    """The axis of a ``[K, N]`` matrix a scheme's parameters run along: K for blocks, N per channel."""
    return 0 if scheme.granularity == "block" else 1


def rtn(w: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, QuantSpec]:
    """Round to nearest: (``w`` on the grid, the min/max spec of each block) for a ``[K, N]`` matrix."""
    spec = scheme.spec_for(w, matrix_axis(scheme))
    return fake_quantize(w, spec), spec


def min_max_spec(layer: WeightLayer, scheme: Scheme) -> QuantSpec:
    """RTN's spec of ``layer``'s weight, read off the weight as stored (no ``[K, N]`` copy, no grid: a table
    of 10^8 weights keeps one copy in memory)."""
    axis = matrix_axis(scheme) if layer.k_axis == 0 else 1 - matrix_axis(scheme)
    return scheme.spec_for(layer.weight.const, axis)


def block_params(spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of a ``[K, N]`` spec as ``[blocks, N]`` arrays (one block per channel)."""
    scale, zero_point = np.asarray(spec.scale), np.asarray(spec.zero_point)
    return (scale, zero_point) if spec.block_size else (scale.reshape(1, -1), zero_point.reshape(1, -1))


def with_block_params(spec: QuantSpec, scale: np.ndarray, zero_point: np.ndarray) -> QuantSpec:
    """``spec`` with new ``[blocks, N]`` parameters (see :func:`block_params`)."""
    if not spec.block_size:
        scale, zero_point = scale.reshape(-1), zero_point.reshape(-1)
    return QuantSpec(spec.dtype, np.asarray(scale, np.float32), np.asarray(zero_point).astype(spec.zero_point.dtype),
                     axis=spec.axis, block_size=spec.block_size)


def transposed(spec: QuantSpec) -> QuantSpec:
    """The spec of the transposed 2-D matrix."""
    scale, zero_point = (spec.scale.T, spec.zero_point.T) if spec.block_size else (spec.scale, spec.zero_point)
    return QuantSpec(spec.dtype, np.ascontiguousarray(scale), np.ascontiguousarray(zero_point),
                     axis=1 - spec.axis, block_size=spec.block_size)


@dataclass(eq=False)
class WeightLayer:
    """A constant 2-D weight and the nodes that read it; ``k_axis`` is the axis blocks run along."""

    weight: Value
    nodes: list[Node] = field(default_factory=list)
    k_axis: int = 0

    def matrix(self) -> np.ndarray:
        """The weight as a float32 ``[K, N]`` matrix."""
        w = np.asarray(self.weight.const, np.float32)
        return w if self.k_axis == 0 else np.ascontiguousarray(w.T)

    @property
    def linear_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op_type in ("MatMul", "Gemm")]

    @property
    def inputs(self) -> list[Value]:
        """The distinct activations the MatMul/Gemm readers multiply with the weight."""
        return list(dict.fromkeys(n.inputs[0] for n in self.linear_nodes))

    def spec(self) -> QuantSpec:
        """The weight's spec in ``[K, N]`` orientation."""
        return self.weight.quant if self.k_axis == 0 else transposed(self.weight.quant)

    def store(self, w: np.ndarray, spec: QuantSpec) -> None:
        """Give the weight the ``[K, N]`` matrix ``w`` (on ``spec``'s grid) and ``spec``. A weight that was
        read from a data file (a model past memory) is spilled to a scratch file, and the pages read of the
        float weight are released: the weights of an LLM are not all kept resident until it is written."""
        if self.k_axis == 1:
            w, spec = w.T, transposed(spec)
        w = np.ascontiguousarray(w, dtype=np.float32)
        old = self.weight.const
        if mapped_source(old) is not None:
            release_pages(old)  # what the algorithm read of the float weight (others may still hold the array)
            w = spill(w)
        self.weight.const, self.weight.quant = w, spec


def _reduction_axis(node: Node, weight: Value) -> int | None:
    """The axis of ``weight`` that ``node`` reduces over (blocks run along it), or None if not eligible."""
    if node.op_type == "MatMul" and node.inputs[1] is weight and node.inputs[0] is not weight:
        return 0
    if node.op_type == "Gemm" and node.inputs[1] is weight and node.inputs[0] is not weight \
            and not node.attrs.get("transA", 0):
        return 1 if node.attrs.get("transB", 0) else 0
    if node.op_type == "Gather" and node.inputs[0] is weight and node.attrs.get("axis", 0) == 0:
        return 1
    return None


def find_layers(model: Model, exclude: list[str] = (), embeddings: bool = True, linear: bool = True
                ) -> list[WeightLayer]:
    """The weight layers of the main graph (see the module docstring), in graph order; nodes matching
    ``exclude`` (names, shell patterns or op types) keep their weight float, and so does every table an
    embedding Gather reads unless ``embeddings``, and every weight only MatMul/Gemm read unless ``linear``."""
    graph = model.graph
    layers: dict[Value, WeightLayer] = {}
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm", "Gather"):
            continue
        weight = node.inputs[0] if node.op_type == "Gather" else node.inputs[1]
        if weight is None or weight in layers or weight.const is None or weight.const.ndim != 2 \
                or weight.dtype != FLOAT or graph.initializers.get(weight.name) is not weight or weight in graph.outputs:
            continue
        readers = weight.consumers()
        axes = {_reduction_axis(reader, weight) for reader in readers}
        if len(axes) != 1 or None in axes or any(excluded(r, list(exclude)) for r in readers):
            continue
        if not embeddings and any(r.op_type == "Gather" for r in readers):
            continue
        if not linear and all(r.op_type != "Gather" for r in readers):
            continue
        layers[weight] = WeightLayer(weight, list(dict.fromkeys(readers)), axes.pop())
    return list(layers.values())


def quantized_layers(model: Model) -> list[WeightLayer]:
    """The weight layers whose weight has a spec (what ``weight-rtn`` assigned)."""
    return [layer for layer in find_layers(model) if layer.weight.quant is not None]


def calibrated_groups(model: Model) -> dict[Value, list[WeightLayer]]:
    """The quantized weight layers read by MatMul/Gemm only, all of them reading one activation, by that
    activation (for the layer-output searches of AWQ and GPTQ)."""
    groups: dict[Value, list[WeightLayer]] = {}
    for layer in quantized_layers(model):
        if len(layer.inputs) == 1 and len(layer.linear_nodes) == len(layer.nodes):
            groups.setdefault(layer.inputs[0], []).append(layer)
    return groups


def to_blocks(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """A ``[K, N]`` matrix as ``[blocks, block, N]`` (zero-padded: the last block may be partial) and the
    mask of its real rows, for arithmetic per block of ``spec`` (one block per channel)."""
    size = spec.block_size or w.shape[0]
    blocks = -(-w.shape[0] // size)
    pad = blocks * size - w.shape[0]
    mask = np.concatenate([np.ones(w.shape[0], bool), np.zeros(pad, bool)]).reshape(blocks, size, 1)
    return np.pad(w, ((0, pad), (0, 0))).reshape(blocks, size, w.shape[1]), mask


def from_blocks(blocked: np.ndarray, rows: int) -> np.ndarray:
    """The ``[K, N]`` matrix of :func:`to_blocks`' layout."""
    return blocked.reshape(-1, blocked.shape[-1])[:rows]
