"""RTN, HQQ, AWQ and GPTQ on single layers: each result lies on its spec's grid, and each algorithm beats
round to nearest on the error it optimizes."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir import fake_quantize, quantize
from qcompiler.ir.quant import pack_bits, unpack_bits
from qcompiler.ir.quant import tensor_range
from qcompiler.weight_only.awq import CLIP_RATIOS, block_grams, clip_search, clipped, input_scale
from qcompiler.weight_only.gptq import gptq, hessian
from qcompiler.weight_only.hqq import hqq
from qcompiler.weight_only.layers import rtn, weight_scheme

SCHEMES = [(4, 32, True), (4, 128, False), (4, 0, True), (2, 16, False), (8, 64, True)]


def heavy_tailed_weight(seed=0, k=256, n=48):
    return (np.random.default_rng(seed).standard_t(3, (k, n)) * 0.02).astype(np.float32)


def correlated_inputs(seed=0, tokens=1024, k=256, outliers=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, k)) @ (np.eye(k) + 0.3 * rng.standard_normal((k, k)))
    x[:, :outliers] *= 25
    return x.astype(np.float32)


@pytest.mark.parametrize("bits, block_size, symmetric", SCHEMES)
def test_rtn_is_min_max_per_block(bits, block_size, symmetric):
    w = heavy_tailed_weight()
    scheme = weight_scheme(bits, block_size, symmetric)
    quantized, spec = rtn(w, scheme)
    assert spec.dtype == scheme.dtype and spec.block_size == (block_size or None)
    assert spec.scale.shape == ((-(-256 // block_size), 48) if block_size else (48,))
    np.testing.assert_array_equal(fake_quantize(quantized, spec), quantized)
    error = np.abs(w - quantized).max(axis=0)
    step = np.abs(spec.scale).max(axis=0)
    if symmetric:  # full range: the extreme exact, the other side saturating at most one step short
        assert np.all(error <= step + 1e-7)
        np.testing.assert_allclose(np.abs(quantized).max(axis=0), np.abs(w).max(axis=0), rtol=1e-6)
    else:
        assert np.all(error <= step * 0.5 + 1e-7)  # nothing clipped: half a step at most


def test_symmetric_int4_grid_is_onnxruntimes():
    """The symmetric 4-bit blocks get onnxruntime's MatMulNBits scales bit for bit (its ``quantize_matmul_4bits``:
    the signed value of largest magnitude over -8) and the same integers."""
    quantize_matmul_4bits = pytest.importorskip("onnxruntime.capi._pybind_state").__dict__.get("quantize_matmul_4bits")
    if quantize_matmul_4bits is None:
        pytest.skip("this onnxruntime has no quantize_matmul_4bits")
    w = heavy_tailed_weight(2)
    (k, n), block = w.shape, 32
    quantized, spec = rtn(w, weight_scheme(4, block, True))
    packed = np.zeros((n, k // block, block // 2), np.uint8)
    scales = np.zeros(n * (k // block), np.float32)
    quantize_matmul_4bits(packed, w, scales, np.zeros(n * k // block, np.uint8), block, n, k, True)
    np.testing.assert_array_equal(scales.reshape(n, -1).T, spec.scale)
    theirs = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, k).T.astype(np.int64) - 8
    np.testing.assert_array_equal(theirs, np.asarray(quantize(w, spec), np.int64))


@pytest.mark.parametrize("bits, block_size, symmetric", SCHEMES)
def test_hqq_reconstructs_better_than_rtn(bits, block_size, symmetric):
    w = heavy_tailed_weight(1)
    scheme = weight_scheme(bits, block_size, symmetric)
    baseline, _ = rtn(w, scheme)
    refined, spec = hqq(w, scheme)
    np.testing.assert_array_equal(fake_quantize(refined, spec), refined)
    gain = 0.97 if bits <= 4 else 1.0  # at 8 bits the min/max grid is already fine: HQQ still never loses
    assert ((w - refined) ** 2).sum() < gain * ((w - baseline) ** 2).sum()


@pytest.mark.parametrize("bits, block_size, symmetric", SCHEMES[:4])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_output_error_below_rtn_on_correlated_inputs(bits, block_size, symmetric, act_order):
    w, x = heavy_tailed_weight(2), correlated_inputs(2)
    scheme = weight_scheme(bits, block_size, symmetric)
    baseline, _ = rtn(w, scheme)
    result, spec = gptq(w, hessian(x), scheme, act_order=act_order)
    np.testing.assert_array_equal(fake_quantize(result, spec), result)
    reference = x @ w
    assert ((x @ result - reference) ** 2).mean() < 0.7 * ((x @ baseline - reference) ** 2).mean()


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_in_column_chunks_is_gptq_at_once(act_order):
    """Columns are independent given H: a wide output projection done a few columns at a time (what bounds
    its float64 copy) gives the same weights and spec, bit for bit."""
    w, x = heavy_tailed_weight(4), correlated_inputs(4)
    for scheme in (weight_scheme(4, 32, False), weight_scheme(4, 0, True), weight_scheme(4, 32, False, True)):
        whole, whole_spec = gptq(w, hessian(x), scheme, act_order=act_order)
        chunked, chunked_spec = gptq(w, hessian(x), scheme, act_order=act_order, columns=5)
        np.testing.assert_array_equal(chunked, whole)
        np.testing.assert_array_equal(chunked_spec.scale, whole_spec.scale)
        np.testing.assert_array_equal(chunked_spec.zero_point, whole_spec.zero_point)


@pytest.mark.parametrize("bits, block_size, symmetric", SCHEMES[:4])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_with_clipped_grids_on_its_grid_and_no_worse(bits, block_size, symmetric, act_order):
    """``clip`` (the default): each block's grid takes the clipping ratio its Hessian block prefers; at 2 bits
    the output error drops below the min/max grid's, at 4 bits it is no worse (within 2 %)."""
    w, x = heavy_tailed_weight(5), correlated_inputs(5)
    scheme = weight_scheme(bits, block_size, symmetric)
    plain, _ = gptq(w, hessian(x), scheme, act_order=act_order, clip=False)
    result, spec = gptq(w, hessian(x), scheme, act_order=act_order)
    np.testing.assert_array_equal(fake_quantize(result, spec), result)
    reference = x @ w
    gain = 1.0 if bits == 2 else 1.02
    assert ((x @ result - reference) ** 2).mean() < gain * ((x @ plain - reference) ** 2).mean()


def test_clip_search_takes_the_ratio_with_the_least_weighted_error():
    w, x = heavy_tailed_weight(6, k=64, n=5), correlated_inputs(6, k=64)
    scheme = weight_scheme(2, 32, False)
    grams = block_grams(x, 64, 32)
    spec = clip_search(w, grams, scheme)
    lo, hi = tensor_range(w, 0, 32)
    for block in range(2):
        rows = slice(32 * block, 32 * block + 32)
        for column in range(5):
            errors = {}
            for ratio in CLIP_RATIOS:
                candidate = scheme.spec_from_range(lo * ratio, hi * ratio, 0)
                delta = (w - fake_quantize(w, candidate)).astype(np.float64)[rows, column]
                errors[ratio] = delta @ grams[block] @ delta
            best = min(errors, key=errors.get)
            chosen = scheme.spec_from_range(lo * best, hi * best, 0)
            assert spec.scale[block, column] == pytest.approx(chosen.scale[block, column])
    diagonal = clip_search(w, np.stack([np.diag(g) for g in grams]), scheme)  # the diagonal alone: a cheaper weight
    assert diagonal.scale.shape == spec.scale.shape


def test_gptq_zeroes_dead_input_channels():
    w, x = heavy_tailed_weight(3), correlated_inputs(3)
    x[:, 5] = 0
    result, _ = gptq(w, hessian(x), weight_scheme(4, 32, True))
    assert np.all(result[5] == 0)


@pytest.mark.parametrize("bits, block_size, symmetric", SCHEMES[:4])
def test_awq_beats_rtn_on_outlier_input_channels(bits, block_size, symmetric):
    w, x = heavy_tailed_weight(4), correlated_inputs(4, outliers=4)
    scheme = weight_scheme(bits, block_size, symmetric)
    s = input_scale(x, [w], scheme)
    assert s[:4].mean() > s[4:].mean()  # the outlier channels' weights are scaled up
    result, spec = clipped(w * s[:, None], x / s, scheme)
    np.testing.assert_array_equal(fake_quantize(result, spec), result)
    reference = x @ w
    rtn_error = ((x @ rtn(w, scheme)[0] - reference) ** 2).mean()
    assert (((x / s) @ result - reference) ** 2).mean() < 0.8 * rtn_error


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_bits_round_trip_and_layout(bits):
    values = np.random.default_rng(bits).integers(0, 1 << bits, (3, 37))
    packed = pack_bits(values, bits)
    assert packed.shape == (3, -(-37 * bits // 8)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_bits(packed, bits, 37), values)
    assert pack_bits(np.array([1, 2, 3, 0][: 8 // bits] if bits < 8 else [7]), bits)[0] == (
        {2: 1 | 2 << 2 | 3 << 4, 4: 1 | 2 << 4, 8: 7}[bits])  # first value in the lowest bits


def test_awq_searches_wide_layers_on_a_column_sample():
    """An output projection onto a vocabulary: the alpha search reads a sample of its columns."""
    from qcompiler.weight_only.awq import SEARCH_COLUMNS

    rng = np.random.default_rng(5)
    x = correlated_inputs(5, tokens=256, k=64, outliers=2)
    w = (rng.standard_normal((64, SEARCH_COLUMNS + 904)) * 0.05).astype(np.float32)
    scheme = weight_scheme(4, 32, True)
    s = input_scale(x, [w], scheme)
    assert s.shape == (64,) and s[:2].mean() > s[2:].mean()
    reference = x @ w
    assert ((x / s) @ rtn(w * s[:, None], scheme)[0] - reference).var() < (x @ rtn(w, scheme)[0] - reference).var()


@pytest.mark.parametrize("bits, block_size", [(4, 32), (4, 0), (2, 16)])
def test_float_zero_point_puts_min_and_max_on_the_grid(bits, block_size):
    """A float zero point is ``-min / scale`` unrounded: each block's min and max are levels of its grid
    ``(q - z) · s`` (an integer zero point shifts the grid by up to half a step), and RTN on it is within half
    a step everywhere."""
    w = heavy_tailed_weight(3)
    quantized, spec = rtn(w, weight_scheme(bits, block_size, False, float_zero_point=True))
    assert spec.float_zero_point and spec.zero_point.dtype == np.float32 and not spec.symmetric
    np.testing.assert_array_equal(fake_quantize(quantized, spec), quantized)
    integer = rtn(w, weight_scheme(bits, block_size, False))[0]
    size = block_size or w.shape[0]
    for name, grid in (("float", quantized), ("integer", integer)):
        ends = np.abs(grid - w).reshape(-1, size, w.shape[1])
        lo = np.take_along_axis(ends, w.reshape(-1, size, w.shape[1]).argmin(axis=1)[:, None], axis=1)
        assert (lo.max() < 1e-6) == (name == "float")
    assert np.all(np.abs(w - quantized) <= 0.5 * np.abs(spec.scale).max(axis=0) + 1e-6)


@pytest.mark.parametrize("bits, block_size", [(4, 32), (4, 128), (2, 16)])
def test_hqq_with_float_zero_points_lowers_its_lp_error(bits, block_size):
    """With float zero points HQQ is the paper's: the zero point alone moves, continuously, to lower the
    ``l_p`` error (``p = 0.7``) it minimizes, below the min/max grid's; the scale stays min/max."""
    w = heavy_tailed_weight(4)
    scheme = weight_scheme(bits, block_size, False, float_zero_point=True)
    baseline, start = rtn(w, scheme)
    refined, spec = hqq(w, scheme)
    assert spec.float_zero_point
    np.testing.assert_array_equal(spec.scale, start.scale)
    np.testing.assert_array_equal(fake_quantize(refined, spec), refined)
    lp = {name: (np.abs(w - grid) ** 0.7).sum() for name, grid in (("rtn", baseline), ("hqq", refined))}
    assert lp["hqq"] < lp["rtn"]
