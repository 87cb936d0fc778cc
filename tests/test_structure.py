"""Structure recognition (qcompiler.structure) on ONNX-text graphs, and the ``auto`` pipeline that uses it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from qcompiler import ir
from qcompiler.compiler import compile as compile_model
from qcompiler.structure import CONVOLUTIONAL, TRANSFORMER, attention_softmaxes, gelus, layer_norms, recognize

D, FF = 8, 16


def _tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator, scale: float = 0.3) -> str:
    values = ", ".join(f"{v:.4f}" for v in (rng.standard_normal(shape) * scale).ravel())
    return f"float[{','.join(map(str, shape))}] {name} = {{{values}}}"


def encoder_block(x: str, y: str, rng: np.random.Generator, p: str = "") -> tuple[list[str], list[str]]:
    """(initializers, nodes) of a post-LN BERT block reading ``x`` [B, S, D] and writing ``y``: one-head
    attention, a decomposed LayerNorm, an exact-GELU MLP, a fused LayerNormalization."""
    inits = [_tensor(f"{p}{w}", (D, D), rng) for w in ("Wq", "Wk", "Wv", "Wo")] + [
        _tensor(f"{p}W1", (D, FF), rng), _tensor(f"{p}W2", (FF, D), rng), _tensor(f"{p}b1", (FF,), rng),
        _tensor(f"{p}b2", (D,), rng), _tensor(f"{p}bo", (D,), rng), _tensor(f"{p}gamma", (D,), rng),
        _tensor(f"{p}beta", (D,), rng), _tensor(f"{p}gamma2", (D,), rng), _tensor(f"{p}beta2", (D,), rng),
        f"float {p}sqrt_d = {{2.8284}}", f"float {p}two = {{2.0}}", f"float {p}eps = {{0.00001}}",
        f"float {p}sqrt2 = {{1.4142}}", f"float {p}one = {{1.0}}", f"float {p}half = {{0.5}}"]
    nodes = f"""
      {p}q = MatMul({x}, {p}Wq)
      {p}k = MatMul({x}, {p}Wk)
      {p}v = MatMul({x}, {p}Wv)
      {p}kt = Transpose<perm=[0,2,1]>({p}k)
      {p}scores = MatMul({p}q, {p}kt)
      {p}scaled = Div({p}scores, {p}sqrt_d)
      {p}probs = Softmax<axis=-1>({p}scaled)
      {p}ctx = MatMul({p}probs, {p}v)
      {p}attn = MatMul({p}ctx, {p}Wo)
      {p}attn_b = Add({p}attn, {p}bo)
      {p}res1 = Add({p}attn_b, {x})
      {p}mean = ReduceMean<axes=[-1]>({p}res1)
      {p}centred = Sub({p}res1, {p}mean)
      {p}square = Pow({p}centred, {p}two)
      {p}var = ReduceMean<axes=[-1]>({p}square)
      {p}var_eps = Add({p}var, {p}eps)
      {p}std = Sqrt({p}var_eps)
      {p}normed = Div({p}centred, {p}std)
      {p}scaled_ln = Mul({p}normed, {p}gamma)
      {p}ln1 = Add({p}scaled_ln, {p}beta)
      {p}h = MatMul({p}ln1, {p}W1)
      {p}hb = Add({p}h, {p}b1)
      {p}hs = Div({p}hb, {p}sqrt2)
      {p}erf = Erf({p}hs)
      {p}erf1 = Add({p}erf, {p}one)
      {p}gm = Mul({p}hb, {p}erf1)
      {p}gelu = Mul({p}gm, {p}half)
      {p}o = MatMul({p}gelu, {p}W2)
      {p}ob = Add({p}o, {p}b2)
      {p}res2 = Add({p}ob, {p}ln1)
      {y} = LayerNormalization<axis=-1>({p}res2, {p}gamma2, {p}beta2)
    """
    return inits, [line.strip() for line in nodes.strip().splitlines()]


def _model(signature: str, inits: list[str], nodes: list[str]) -> ir.Model:
    text = (f'<ir_version: 8, opset_import: ["" : 17]>\n{signature}\n<{", ".join(inits)}>\n{{\n'
            + "\n".join(nodes) + "\n}")
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def encoder_model(seed: int = 0) -> ir.Model:
    inits, nodes = encoder_block("x", "y", np.random.default_rng(seed))
    return _model(f"encoder (float[B, S, {D}] x) => (float[B, S, {D}] y)", inits, nodes)


def conv_model(seed: int = 0) -> ir.Model:
    """A residual conv block, pooled, then a classifier Gemm and a Softmax (not attention)."""
    rng = np.random.default_rng(seed)
    inits = [_tensor("W1", (4, 3, 3, 3), rng), _tensor("B1", (4,), rng), _tensor("W2", (4, 4, 3, 3), rng),
             _tensor("B2", (4,), rng), _tensor("Wf", (4, 5), rng), _tensor("Bf", (5,), rng)]
    nodes = ["c1 = Conv<pads=[1,1,1,1]>(x, W1, B1)", "r1 = Relu(c1)", "c2 = Conv<pads=[1,1,1,1]>(r1, W2, B2)",
             "a = Add(c2, r1)", "r2 = Relu(a)", "p = GlobalAveragePool(r2)", "f = Flatten(p)",
             "g = Gemm(f, Wf, Bf)", "y = Softmax(g)"]
    return _model("convnet (float[1, 3, 8, 8] x) => (float[1, 5] y)", inits, nodes)


def mixed_model(seed: int = 0) -> ir.Model:
    """A conv stem, its feature map as 16 tokens through an encoder block, back to a map, a conv head
    (an OCR recognizer's or a hybrid vision transformer's layout). The batch axis is dynamic, as
    transformers are exported: onnxruntime would fuse a MatMul + Add of static shape into a float Gemm."""
    rng = np.random.default_rng(seed)
    inits, block = encoder_block("tokens", "encoded", rng, p="enc_")
    inits += [_tensor("Wc", (D, 3, 3, 3), rng), _tensor("Bc", (D,), rng), _tensor("Wh", (4, D, 1, 1), rng),
              _tensor("Bh", (4,), rng), "int64[3] seq_shape = {0, 8, 16}", "int64[4] map_shape = {0, 8, 4, 4}"]
    nodes = ["stem = Conv<pads=[1,1,1,1]>(x, Wc, Bc)", "stem_r = Relu(stem)",
             "flat = Reshape(stem_r, seq_shape)", "tokens = Transpose<perm=[0,2,1]>(flat)", *block,
             "back = Transpose<perm=[0,2,1]>(encoded)", "fmap = Reshape(back, map_shape)",
             "y = Conv(fmap, Wh, Bh)"]
    return _model("hybrid (float[N, 3, 4, 4] x) => (float[N, 4, 4, 4] y)", inits, nodes)


def _names(nodes) -> set[str]:
    return {n.outputs[0].name for n in nodes}


def test_encoder_block_is_one_transformer_region_with_every_signature():
    model = encoder_model()
    graph = model.graph
    assert _names(attention_softmaxes(graph)) == {"probs"}
    norms = layer_norms(graph)
    assert sorted(len(p) for p in norms) == [1, 7]  # the fused one, and the 7 nodes of the decomposed one
    assert _names(gelus(graph)) == {"erf"}
    (region,) = recognize(graph)
    assert region.treatment == TRANSFORMER and len(region.nodes) == len(graph)
    assert region.reason == ("1 attention block (MatMul-Softmax-MatMul), 2 LayerNorms (1 decomposed), "
                                    "1 GELU, 2 residual Adds; 8 MatMul/Gemms")


def test_conv_block_is_convolutional_and_its_classifier_softmax_is_not_attention():
    graph = conv_model().graph
    assert attention_softmaxes(graph) == [] and layer_norms(graph) == [] and gelus(graph) == []
    (region,) = recognize(graph)
    assert region.treatment == CONVOLUTIONAL and len(region.nodes) == len(graph)
    assert region.reason == "no attention or LayerNorm; 2 convolutions, 1 MatMul/Gemm"


def test_mixed_model_gets_a_transformer_region_between_convolutional_parts():
    graph = mixed_model().graph
    transformer, rest = recognize(graph)
    assert transformer.treatment == TRANSFORMER and rest.treatment == CONVOLUTIONAL
    by_type = lambda region, op: {n.outputs[0].name for n in region.nodes if n.op_type == op}  # noqa: E731
    assert by_type(transformer, "MatMul") == {f"enc_{m}" for m in ("q", "k", "v", "scores", "ctx", "attn", "h", "o")}
    assert by_type(rest, "Conv") == {"stem", "y"} and not by_type(transformer, "Conv")
    # what lies between the convolutions and the block (the stem's Relu, the token reshapes) is linked to it
    assert {"stem_r", "tokens", "back", "fmap"} <= {n.outputs[0].name for n in transformer.nodes}
    assert set(transformer.nodes).isdisjoint(rest.nodes) and len(transformer.nodes) + len(rest.nodes) == len(graph)


def test_gelu_and_residual_adds_alone_do_not_make_a_transformer_region():
    rng = np.random.default_rng(1)
    inits = [_tensor("W", (D, D), rng), "float sqrt2 = {1.4142}", "float one = {1.0}", "float half = {0.5}"]
    nodes = ["h = MatMul(x, W)", "hs = Div(h, sqrt2)", "e = Erf(hs)", "e1 = Add(e, one)", "g = Mul(h, e1)",
             "gh = Mul(g, half)", "y = Add(gh, x)"]
    (region,) = recognize(_model(f"mlp (float[2, {D}] x) => (float[2, {D}] y)", inits, nodes).graph)
    assert region.treatment == CONVOLUTIONAL


def _feeds(model: ir.Model, count: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    x = model.graph.inputs[0]
    shape = [d if isinstance(d, int) else 4 for d in x.shape]
    return [{x.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _quantized_inputs(model: ir.Model) -> dict[str, bool]:
    """Node (by first output) -> whether its first input comes from a DequantizeLinear."""
    return {n.outputs[0].name: (n.inputs[0].producer() is not None
                                and n.inputs[0].producer().op_type == "DequantizeLinear") for n in model.graph}


def test_auto_gives_each_region_its_treatment():
    model = mixed_model()
    feeds = _feeds(model)
    reference = ort.InferenceSession(ir.to_proto(model).SerializeToString()).run(None, feeds[0])[0]
    compile_model(model, calib=feeds, objective="size")
    structure = model.plan.reports["structure"]
    assert [r["treatment"] for r in structure] == [TRANSFORMER, CONVOLUTIONAL]
    assert model.plan.reports["calibrate_search"]["searched"] > 0
    quantized = _quantized_inputs(model)
    assert quantized["stem"] and quantized["enc_q"] and quantized["enc_h"]
    assert all(quantized[n.outputs[0].name] for n in model.graph if n.op_type in ("Conv", "MatMul"))
    readers = {r.op_type for n in model.graph if n.outputs[0].name in ("enc_h", "enc_o")
               for r in n.outputs[0].consumers()}
    assert readers == {"Add"}  # transformer treatment: float linear outputs, the bias Adds read them directly
    stem_readers = {r.op_type for n in model.graph if n.outputs[0].name == "stem" for r in n.outputs[0].consumers()}
    assert stem_readers == {"QuantizeLinear"}  # convolutional treatment: the Relu is absorbed into the quantizer
    assert any(n.op_type == "Mul" and n.name.endswith("SmoothMul") for n in model.graph)  # SmoothQuant ran
    out = ort.InferenceSession(ir.to_proto(model).SerializeToString()).run(None, feeds[0])[0]
    cosine = float(np.dot(out.ravel(), reference.ravel()) / np.linalg.norm(out) / np.linalg.norm(reference))
    assert cosine > 0.98


def test_when_placement_keeps_no_region_int8_auto_gives_the_float_model_without_smoothquant_scales(tmp_path):
    """SmoothQuant's scales that fold into no LayerNorm stay as Muls: a model placement leaves all float
    would run them for nothing, so the result is the float model kept before them. The latency cache
    decides: every region it holds is marked slower in int8."""
    from .test_placement import mark_cached_decisions

    cache = tmp_path / "latency.json"
    model = mixed_model()
    first = compile_model(mixed_model(), calib=_feeds(model), threads=1, latency_cache=str(cache))
    assert first.plan.reports["latency_placement"]["regions_total"] >= 1
    mark_cached_decisions(cache, int8=False)
    placed = compile_model(mixed_model(), calib=_feeds(model), threads=1, latency_cache=str(cache))
    assert placed.plan.reports["latency_placement"]["int8_regions"] == 0
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.name.endswith("SmoothMul")
                   for n in placed.graph)
    canonical = compile_model(mixed_model(), pipeline="canonicalize")
    assert [n.op_type for n in placed.graph] == [n.op_type for n in canonical.graph]


def test_auto_compiles_a_model_without_transformer_structure_exactly_as_int8():
    feeds = _feeds(conv_model())
    auto = compile_model(conv_model(), calib=feeds, objective="size")
    int8 = compile_model(conv_model(), pipeline="int8", calib=feeds, objective="size")
    assert ir.to_proto(auto).SerializeToString() == ir.to_proto(int8).SerializeToString()


@pytest.mark.parametrize("name", ["smoothquant", "assign-precision"])
def test_a_region_restricted_pass_without_regions_is_a_pipeline_order_error(name):
    from qcompiler.errors import PipelineOrderError
    from qcompiler.pipelines import build_pass

    model = encoder_model()
    fields = {"region": TRANSFORMER, **({"data": _feeds(model)} if name == "smoothquant" else {})}
    with pytest.raises(PipelineOrderError, match="regions"):
        build_pass(name, fields, {})(model)


def _token_feeds(model: ir.Model, count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((2, 6, D)).astype(np.float32)} for _ in range(count)]


def test_auto_chooses_dynamic_int8_for_a_transformer_only_model_and_says_why():
    model = compile_model(encoder_model(), calib=_token_feeds(encoder_model()), objective="size")
    chosen = model.plan.reports["pipeline"]
    assert chosen["name"] == "auto" and chosen["chosen"] == "dynamic"
    assert "transformer blocks only (1 attention block" in chosen["reason"] and "no convolution" in chosen["reason"]
    ops = [n.op_type for n in model.graph]
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops and "QuantizeLinear" not in ops
    assert model.plan.reports["dynamic_screen"]["layers"] == 6  # q, k, v, output, FFN in and out


def test_auto_without_calibration_data_compiles_a_transformer_only_model():
    model = compile_model(encoder_model(), objective="size")
    assert model.plan.reports["pipeline"]["chosen"] == "dynamic" and "dynamic_screen" not in model.plan.reports


@pytest.mark.parametrize("option", [{"calibration": "percentile"}, {"sensitivity_threshold": 0.01}])
def test_auto_keeps_static_int8_when_an_option_only_static_int8_takes_is_given(option):
    model = encoder_model()
    compiled = compile_model(model, calib=_feeds(model), objective="size", **option)
    chosen = compiled.plan.reports["pipeline"]
    assert chosen["chosen"] == "auto" and "only static int8 takes" in chosen["reason"]
    assert [r["treatment"] for r in compiled.plan.reports["structure"]] == [TRANSFORMER]
    assert "DynamicQuantizeLinear" not in [n.op_type for n in compiled.graph]


def test_auto_on_a_model_with_convolutions_and_transformer_blocks_stays_static_and_says_why():
    model = mixed_model()
    compiled = compile_model(model, calib=_feeds(model), objective="size")
    assert compiled.plan.reports["pipeline"]["chosen"] == "auto"
    assert "2 convolution(s) beside the transformer blocks" in compiled.plan.reports["pipeline"]["reason"]
