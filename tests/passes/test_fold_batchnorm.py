"""FoldBatchNorm: BN folded into Conv, ConvTranspose and Gemm, and the cases where it must stay.

Every case runs through ``run_checked``: verify after the pass, honest ``modified``, idempotent,
onnxruntime outputs unchanged (random weights, random BN statistics, random inputs).
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir.testing import parse, tensor_text
from qcompiler.passes import FoldBatchNorm
from qcompiler.passes.fold_batchnorm import find_foldable_batchnorms


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bn_params(prefix: str, channels: int, rng: np.random.Generator) -> list[str]:
    """gamma, beta, mean, var initializers in text form (var > 0, gamma of both signs)."""
    return [
        tensor_text(f"{prefix}_g", rng.uniform(-2, 2, channels).astype(np.float32)),
        tensor_text(f"{prefix}_b", rng.standard_normal(channels).astype(np.float32)),
        tensor_text(f"{prefix}_m", rng.standard_normal(channels).astype(np.float32)),
        tensor_text(f"{prefix}_v", rng.uniform(0.1, 3, channels).astype(np.float32)),
    ]


def _model(signature: str, body: str, inits: list[str], opset: int = 13):
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g {signature} <{", ".join(inits)}> {{
      {body}
    }}""")


def _ops(model) -> list[str]:
    return [node.op_type for node in model.graph]


def conv_bn(*, group: int = 1, bias: bool = True, in_channels: int = 4, out_channels: int = 6,
            seed: int = 0):
    rng = _rng(seed)
    w = rng.standard_normal((out_channels, in_channels // group, 3, 3)).astype(np.float32)
    inits = [tensor_text("w", w)] + _bn_params("bn", out_channels, rng)
    conv_inputs = "x, w"
    if bias:
        inits.append(tensor_text("b", rng.standard_normal(out_channels).astype(np.float32)))
        conv_inputs += ", b"
    return _model(
        f"(float[N,{in_channels},5,5] x) => (float[N,{out_channels},5,5] y)",
        f"""c = Conv <kernel_shape = [3,3], pads = [1,1,1,1], group = {group}> ({conv_inputs})
            y = BatchNormalization <epsilon = 0.001> (c, bn_g, bn_b, bn_m, bn_v)""",
        inits)


@pytest.mark.parametrize("kwargs", [
    {"bias": True},
    {"bias": False},
    {"group": 2},
    {"group": 2, "bias": False},
    {"group": 4, "in_channels": 4, "out_channels": 4},  # depthwise
    {"group": 4, "in_channels": 4, "out_channels": 8},  # depthwise with multiplier 2
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_conv_batchnorm_folds(run_checked, kwargs):
    model = conv_bn(**kwargs)
    result = run_checked(model, FoldBatchNorm())
    assert result.modified
    assert _ops(model) == ["Conv"]
    conv = model.graph.nodes[0]
    assert len(conv.inputs) == 3 and conv.inputs[2].const is not None
    assert conv.outputs[0].name == "y" and model.graph.outputs == [conv.outputs[0]]
    # the old weight, bias and BN parameters are gone; only the folded weight and bias are left
    assert set(model.graph.initializers) == {conv.inputs[1].name, conv.inputs[2].name}


def test_folded_weights_are_the_textbook_formula(run_checked):
    model = conv_bn(bias=True)
    inits = {name: v.const.astype(np.float64) for name, v in model.graph.initializers.items()}
    run_checked(model, FoldBatchNorm())
    conv = model.graph.nodes[0]
    s = inits["bn_g"] / np.sqrt(inits["bn_v"] + 1e-3)
    np.testing.assert_allclose(conv.inputs[1].const, inits["w"] * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(conv.inputs[2].const, (inits["b"] - inits["bn_m"]) * s + inits["bn_b"],
                               rtol=1e-5, atol=1e-6)
    assert conv.inputs[1].const.dtype == np.float32


@pytest.mark.parametrize("group, bias", [(1, True), (2, True), (3, False)])
def test_conv_transpose_batchnorm_folds(run_checked, group, bias):
    rng = _rng(group)
    in_channels, out_channels = 6, 6 if group != 3 else 9
    w = rng.standard_normal((in_channels, out_channels // group, 3, 3)).astype(np.float32)
    inits = [tensor_text("w", w)] + _bn_params("bn", out_channels, rng)
    inputs = "x, w"
    if bias:
        inits.append(tensor_text("b", rng.standard_normal(out_channels).astype(np.float32)))
        inputs += ", b"
    model = _model(
        f"(float[N,{in_channels},4,4] x) => (float[N,{out_channels},9,9] y)",
        f"""c = ConvTranspose <kernel_shape = [3,3], strides = [2,2], group = {group}> ({inputs})
            y = BatchNormalization (c, bn_g, bn_b, bn_m, bn_v)""",
        inits)
    assert run_checked(model, FoldBatchNorm()).modified
    assert _ops(model) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha, beta, bias_shape", [
    (1.0, 1.0, (5,)),
    (0.5, 2.0, (5,)),
    (1.5, 0.25, (1, 5)),
    (2.0, 3.0, None),
])
def test_gemm_batchnorm_folds(run_checked, trans_b, alpha, beta, bias_shape):
    rng = _rng(trans_b)
    k, n = 7, 5
    weight = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [tensor_text("w", weight)] + _bn_params("bn", n, rng)
    inputs = "x, w"
    if bias_shape is not None:
        inits.append(tensor_text("c", rng.standard_normal(bias_shape).astype(np.float32)))
        inputs += ", c"
    model = _model(
        f"(float[N,{k}] x) => (float[N,{n}] y)",
        f"""h = Gemm <alpha = {alpha}, beta = {beta}, transB = {trans_b}> ({inputs})
            y = BatchNormalization (h, bn_g, bn_b, bn_m, bn_v)""",
        inits)
    assert run_checked(model, FoldBatchNorm()).modified
    assert _ops(model) == ["Gemm"]
    gemm = model.graph.nodes[0]
    assert gemm.attrs["beta"] == 1.0 and gemm.attrs["alpha"] == alpha


def test_batchnorm_after_relu_stays(run_checked):
    rng = _rng()
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y)",
        """c = Conv <kernel_shape = [1,1]> (x, w)
           r = Relu (c)
           y = BatchNormalization (r, bn_g, bn_b, bn_m, bn_v)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng))
    assert not run_checked(model, FoldBatchNorm()).modified
    assert _ops(model) == ["Conv", "Relu", "BatchNormalization"]


def test_batchnorm_whose_input_has_another_reader_stays(run_checked):
    rng = _rng()
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y, float[N,6,5,5] z)",
        """c = Conv <kernel_shape = [1,1]> (x, w)
           y = BatchNormalization (c, bn_g, bn_b, bn_m, bn_v)
           z = Relu (c)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng))
    assert not run_checked(model, FoldBatchNorm()).modified
    assert "BatchNormalization" in _ops(model)


def test_batchnorm_whose_input_is_a_graph_output_stays(run_checked):
    rng = _rng()
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y, float[N,6,5,5] c)",
        """c = Conv <kernel_shape = [1,1]> (x, w)
           y = BatchNormalization (c, bn_g, bn_b, bn_m, bn_v)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng))
    assert not run_checked(model, FoldBatchNorm()).modified


def test_batchnorm_with_runtime_statistics_stays(run_checked):
    rng = _rng()
    model = _model(
        "(float[N,4,5,5] x, float[6] mean) => (float[N,6,5,5] y)",
        """c = Conv <kernel_shape = [1,1]> (x, w)
           y = BatchNormalization (c, bn_g, bn_b, mean, bn_v)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng)[:2]
        + _bn_params("bn", 6, rng)[3:])
    assert not run_checked(model, FoldBatchNorm()).modified


def test_batchnorm_in_training_mode_is_not_a_candidate():
    rng = _rng()
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y)",
        """c = Conv <kernel_shape = [1,1]> (x, w)
           y = BatchNormalization <training_mode = 1> (c, bn_g, bn_b, bn_m, bn_v)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng),
        opset=15)
    assert find_foldable_batchnorms(model.graph) == []


def test_shared_weight_folds_into_two_independent_weights(run_checked):
    rng = _rng(3)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y1, float[N,6,5,5] y2)",
        """c1 = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
           y1 = BatchNormalization (c1, p_g, p_b, p_m, p_v)
           c2 = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
           y2 = BatchNormalization (c2, q_g, q_b, q_m, q_v)""",
        [tensor_text("w", w)] + _bn_params("p", 6, rng) + _bn_params("q", 6, rng))
    params = {name: v.const.astype(np.float64) for name, v in model.graph.initializers.items()}
    assert run_checked(model, FoldBatchNorm()).modified
    conv1, conv2 = model.graph.nodes
    assert _ops(model) == ["Conv", "Conv"]
    assert conv1.inputs[1] is not conv2.inputs[1]
    assert "w" not in model.graph.initializers  # no reader is left
    for conv, prefix in ((conv1, "p"), (conv2, "q")):
        s = params[f"{prefix}_g"] / np.sqrt(params[f"{prefix}_v"] + 1e-5)
        np.testing.assert_allclose(conv.inputs[1].const, w * s[:, None, None, None], rtol=1e-6)


def test_shared_weight_with_an_unfolded_reader_is_kept(run_checked):
    rng = _rng(4)
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y1, float[N,6,5,5] y2)",
        """c1 = Conv <kernel_shape = [1,1]> (x, w)
           y1 = BatchNormalization (c1, p_g, p_b, p_m, p_v)
           y2 = Conv <kernel_shape = [1,1]> (x, w)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("p", 6, rng))
    original = model.graph.initializers["w"].const.copy()
    assert run_checked(model, FoldBatchNorm()).modified
    assert model.graph.nodes[1].inputs[1].name == "w"
    np.testing.assert_array_equal(model.graph.initializers["w"].const, original)


def test_batchnorm_feeding_other_nodes_rewires_them(run_checked):
    rng = _rng(5)
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y)",
        """c = Conv <kernel_shape = [1,1]> (x, w, b)
           n = BatchNormalization (c, bn_g, bn_b, bn_m, bn_v)
           y = Relu (n)""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32)),
         tensor_text("b", rng.standard_normal(6).astype(np.float32))] + _bn_params("bn", 6, rng))
    assert run_checked(model, FoldBatchNorm()).modified
    conv, relu = model.graph.nodes
    assert (conv.op_type, relu.op_type) == ("Conv", "Relu") and relu.inputs[0] is conv.outputs[0]


def test_batchnorm_parameters_shared_by_two_batchnorms_stay_until_both_fold(run_checked):
    rng = _rng(6)
    model = _model(
        "(float[N,4,5,5] x) => (float[N,6,5,5] y1, float[N,6,5,5] y2)",
        """c1 = Conv <kernel_shape = [1,1]> (x, w1)
           y1 = BatchNormalization (c1, bn_g, bn_b, bn_m, bn_v)
           c2 = Conv <kernel_shape = [1,1]> (x, w2)
           r = Relu (c2)
           y2 = BatchNormalization (r, bn_g, bn_b, bn_m, bn_v)""",
        [tensor_text("w1", rng.standard_normal((6, 4, 1, 1)).astype(np.float32)),
         tensor_text("w2", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng))
    assert run_checked(model, FoldBatchNorm()).modified
    assert _ops(model) == ["Conv", "Conv", "Relu", "BatchNormalization"]
    assert {"bn_g", "bn_b", "bn_m", "bn_v", "w2"} <= set(model.graph.initializers)
    assert "w1" not in model.graph.initializers


def test_batchnorm_output_read_by_a_subgraph_and_returned(run_checked):
    rng = _rng(7)
    model = _model(
        "(float[N,4,5,5] x, bool c) => (float[N,6,5,5] y, float[N,6,5,5] z)",
        """h = Conv <kernel_shape = [1,1]> (x, w)
           y = BatchNormalization (h, bn_g, bn_b, bn_m, bn_v)
           z = If (c) <then_branch = th () => (float[N,6,5,5] o) { o = Neg(y) },
                       else_branch = el () => (float[N,6,5,5] o2) { o2 = Abs(y) }>""",
        [tensor_text("w", rng.standard_normal((6, 4, 1, 1)).astype(np.float32))] + _bn_params("bn", 6, rng))
    assert run_checked(model, FoldBatchNorm()).modified
    conv, if_node = model.graph.nodes
    assert conv.outputs[0].name == "y" and if_node.captures == (conv.outputs[0],)


# -- per-channel Mul/Div/Add/Sub by a constant --------------------------------


def conv_then(body: str, inits: list[str], *, channels: int = 6, seed: int = 0):
    """x -> Conv(w, b) -> c, then ``body`` computing y from c."""
    rng = _rng(seed)
    inits = [tensor_text("w", rng.standard_normal((channels, 4, 3, 3)).astype(np.float32)),
             tensor_text("b", rng.standard_normal(channels).astype(np.float32))] + inits
    return _model(f"(float[N,4,5,5] x) => (float[N,{channels},5,5] y)",
                  "c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w, b)\n" + body, inits)


def _const(name: str, shape: tuple[int, ...], seed: int = 1, low: float = 0.5, high: float = 2.0) -> str:
    return tensor_text(name, _rng(seed).uniform(low, high, shape).astype(np.float32))


def test_decomposed_batchnorm_mul_add_relu_folds_into_the_conv(run_checked):
    """Inception v2's pattern: Conv -> Mul(s) -> Add(t) -> Relu becomes Conv -> Relu."""
    model = conv_then("m = Mul (c, s)\n a = Add (t, m)\n y = Relu (a)",
                      [_const("s", (6, 1, 1), low=-2.0), _const("t", (1, 6, 1, 1), seed=2, low=-1.0)])
    result = run_checked(model, FoldBatchNorm())
    assert result.modified and _ops(model) == ["Conv", "Relu"]
    assert not model.graph.initializers.keys() & {"s", "t"}


@pytest.mark.parametrize("op", ["Div", "Sub"])
def test_div_and_sub_by_a_channel_constant_fold(run_checked, op):
    model = conv_then(f"y = {op} (c, k)", [_const("k", (6, 1, 1))])
    run_checked(model, FoldBatchNorm())
    assert _ops(model) == ["Conv"]


@pytest.mark.parametrize("body, inits, why", [
    ("y = Mul (c, k)", [_const("k", (6,))], "a [C] constant broadcasts along W, not channels"),
    ("y = Mul (c, k)", [_const("k", (1, 6, 5, 1))], "varies along H"),
    ("y = Sub (k, c)", [_const("k", (6, 1, 1))], "k - c negates the conv: not a shift of it"),
    ("y = Div (c, k)", [tensor_text("k", np.array([1, 0, 1, 1, 1, 1], np.float32).reshape(6, 1, 1))],
     "division by zero"),
    ("y = Mul (c, c)", [], "the other operand is not constant"),
])
def test_affines_that_must_stay(body, inits, why):
    from qcompiler.passes.fold_batchnorm import find_foldable_affines

    assert find_foldable_affines(conv_then(body, inits).graph) == [], why


def test_affine_is_not_folded_when_the_conv_output_has_another_use(run_checked):
    model = _model("(float[N,4,5,5] x) => (float[N,6,5,5] y, float[N,6,5,5] c)",
                   "c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)\n y = Mul (c, k)",
                   [tensor_text("w", _rng().standard_normal((6, 4, 3, 3)).astype(np.float32)), _const("k", (6, 1, 1))])
    result = run_checked(model, FoldBatchNorm())
    assert not result.modified and _ops(model) == ["Conv", "Mul"]


def test_gemm_column_scale_and_shift_fold(run_checked):
    rng = _rng(3)
    model = _model("(float[N,5] x) => (float[N,3] y)",
                   "g = Gemm <transB = 1, alpha = 0.5> (x, w, b)\n m = Mul (g, s)\n y = Add (m, t)",
                   [tensor_text("w", rng.standard_normal((3, 5)).astype(np.float32)),
                    tensor_text("b", rng.standard_normal(3).astype(np.float32)),
                    _const("s", (3,)), _const("t", (1, 3), seed=4)])
    run_checked(model, FoldBatchNorm())
    assert _ops(model) == ["Gemm"]


def test_paddle_conv_add_bias_then_batchnorm_folds_whole(run_checked):
    """Paddle exports the conv bias as a separate Add; the BN behind it folds once the Add has."""
    rng = _rng(5)
    model = conv_then("a = Add (c, k)\n y = BatchNormalization (a, bn_g, bn_b, bn_m, bn_v)",
                      [_const("k", (1, 6, 1, 1), low=-1.0)] + _bn_params("bn", 6, rng))
    run_checked(model, FoldBatchNorm())
    assert _ops(model) == ["Conv"]


def test_scalar_multiplier_folds_only_when_asked(run_checked):
    """A scalar Mul folds with ``scalars=True`` (PP-OCR's learnable affine blocks), not by default."""
    model = conv_then("m = Mul (c, k)\n y = Add (m, j)", [_const("k", (1,)), _const("j", (1, 1, 1, 1), seed=2)])
    assert not run_checked(model, FoldBatchNorm()).modified
    run_checked(model, FoldBatchNorm(scalars=True))
    assert _ops(model) == ["Conv"]


def _preactivation(*value_infos: str):
    """DenseNet's pre-activation unit from Caffe: Concat -> BN -> Scale (Mul, Add per channel) -> Relu."""
    rng = _rng(6)
    return _model("(float[N,3,5,5] x, float[N,3,5,5] z) => (float[N,6,5,5] y)",
                  """k = Concat <axis = 1> (x, z)
                     b = BatchNormalization (k, bn_g, bn_b, bn_m, bn_v)
                     m = Mul (b, s)
                     a = Add (m, t)
                     y = Relu (a)""",
                  _bn_params("bn", 6, rng) + [_const("s", (6, 1, 1), low=-2.0),
                                               _const("t", (6, 1, 1), seed=2, low=-1.0)] + list(value_infos))


def test_an_affine_after_a_batchnorm_that_stays_folds_into_its_parameters(run_checked):
    model = _preactivation("float[N,6,5,5] b")
    assert run_checked(model, FoldBatchNorm()).modified
    assert _ops(model) == ["Concat", "BatchNormalization", "Relu"]
    assert not model.graph.initializers.keys() & {"s", "t", "bn_g", "bn_b"}


def test_an_affine_after_a_batchnorm_of_unknown_rank_stays(run_checked):
    """A [6, 1, 1] constant is per channel only on a rank-4 tensor: without the BN output's rank it stays."""
    from qcompiler.passes import InferShapes

    model = _preactivation()
    assert not run_checked(model, FoldBatchNorm()).modified
    run_checked(model, InferShapes())
    assert run_checked(model, FoldBatchNorm()).modified and _ops(model) == ["Concat", "BatchNormalization", "Relu"]


def test_conv_batchnorm_mul_folds_whole_over_two_rounds(run_checked):
    """Round one folds the BN into the Conv and leaves the Mul (no node both folds and is folded into)."""
    rng = _rng(7)
    model = conv_then("n = BatchNormalization (c, bn_g, bn_b, bn_m, bn_v)\n y = Mul (n, s)",
                      _bn_params("bn", 6, rng) + [_const("s", (6, 1, 1), low=-2.0), "float[N,6,5,5] n"])
    run_checked(model, FoldBatchNorm())
    assert _ops(model) == ["Conv"]
