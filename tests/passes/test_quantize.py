"""Precision assignment, QDQ insertion and weight folding on small graphs written in ONNX text.

Calibration is replaced here by ranges set directly on the values, so these tests pin down placement,
per-channel axes, bias quantization and the integer weights, and check onnxruntime fuses the result.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from qcompiler import PassManager, ir
from qcompiler.ir import QuantSpec
from qcompiler.ir.testing import parse, random_feeds, run_onnxruntime
from qcompiler.passes import AssignPrecision, FoldQuantizedWeights, InferShapes, InsertQDQ
from qcompiler.targets import TARGETS

RNG = np.random.default_rng(0)


def conv_model(weight_shape=(8, 4, 3, 3), group=1, with_relu=True) -> ir.Model:
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,4,8,8] x) => (float[1,8,8,8] y) {{
      c = Conv <pads = [1,1,1,1], group = {group}> (x, w, b)
      y = {"Relu" if with_relu else "Identity"}(c)
    }}"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(RNG.standard_normal(weight_shape).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(RNG.standard_normal(weight_shape[0]).astype(np.float32), "b")])
    return ir.from_proto(proto)


def calibrate_by_hand(model: ir.Model, feeds) -> None:
    """Stand-in for the calibrate pass: exact min/max of every pending value on ``feeds``."""
    marked = list(model.plan.pending)
    proto = ir.to_proto(model)
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(v.name) for v in marked
                              if v.name not in {o.name for o in proto.graph.output})
    outputs = ort.InferenceSession(proto.SerializeToString()).run([v.name for v in marked], feeds)
    model.plan.set_ranges({value: (array.min(), array.max()) for value, array in zip(marked, outputs)})


def quantize(model: ir.Model, feeds, target="x86-vnni", **assign) -> ir.Model:
    PassManager([InferShapes(), AssignPrecision(target=target, **assign)])(model)
    calibrate_by_hand(model, feeds)
    PassManager([InsertQDQ(), FoldQuantizedWeights()])(model)
    return model


def fused_ops(model: ir.Model) -> list[str]:
    """Op types onnxruntime runs after its graph optimizations."""
    import tempfile, os

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_conv_relu_becomes_one_fused_qlinearconv(run_deployed):
    model = conv_model()
    feeds = random_feeds(model)
    expected = run_onnxruntime(model, feeds)[0]
    quantize(model, feeds)
    ir.verify(model, strict=True)
    ops = [n.op_type for n in model.graph]
    assert "Relu" not in ops  # absorbed into the output quantization (zero point 0)
    weight = next(v for v in model.graph.initializers.values() if v.const.dtype == np.int8 and v.const.ndim == 4)
    bias = next(v for v in model.graph.initializers.values() if v.const.dtype == np.int32)
    assert weight.const.shape == (8, 4, 3, 3) and bias.const.shape == (8,)
    fused = fused_ops(model)
    assert "QLinearConv" in fused and "Conv" not in fused
    actual = run_deployed(model, feeds, "x86-vnni")["y"]  # as quantized for: 8-bit weights, exact sums
    sqnr = 10 * np.log10(np.sum(expected**2) / np.sum((actual - expected) ** 2))
    assert sqnr > 30, sqnr
    assert actual.min() >= 0  # the ReLU's clipping survived


def test_per_channel_scales_follow_each_output_channel():
    model = conv_model(with_relu=False)
    weight = model.graph.initializers["w"]
    weight.const = weight.const.copy()
    weight.const[3] *= 100.0  # one channel with a much larger range
    quantize(model, random_feeds(model))
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const is not None
              and n.inputs[0].const.dtype == np.int8)
    scales = dq.inputs[1].const
    assert dq.attrs["axis"] == 0 and scales.shape == (8,)
    assert scales[3] > 50 * np.median(scales)
    assert np.abs(dq.inputs[0].const).max() == 127


def test_reduced_range_weights_stay_within_seven_bits():
    model = conv_model(with_relu=False)
    quantize(model, random_feeds(model), target="x86-avx2")
    weight = next(v for v in model.graph.initializers.values() if v.const.dtype == np.int8 and v.const.ndim == 4)
    assert np.abs(weight.const).max() <= 64


def test_per_tensor_option():
    model = conv_model(with_relu=False)
    quantize(model, random_feeds(model), per_channel=False)
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const is not None
              and n.inputs[0].const.dtype == np.int8)
    assert dq.inputs[1].const.ndim == 0 and "axis" not in dq.attrs


def test_bias_scale_is_input_scale_times_weight_scale():
    model = conv_model(with_relu=False)
    quantize(model, random_feeds(model))
    conv = next(n for n in model.graph if n.op_type == "Conv")
    x_scale = conv.inputs[0].producer().inputs[1].const
    w_scale = conv.inputs[1].producer().inputs[1].const
    b_scale = conv.inputs[2].producer().inputs[1].const
    np.testing.assert_allclose(b_scale, x_scale * w_scale, rtol=1e-6)


def test_float_island_is_not_created_for_ops_outside_the_region():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,4,8,8] x, float[1,4,8,8] z) => (float[1,4,8,8] y) {
      a = Add(x, z)
      y = Sigmoid(a)
    }"""
    model = parse(text)
    PassManager([AssignPrecision(target="x86-vnni")])(model)
    assert not any(model.plan.is_quantized(n) for n in model.graph)  # Add alone would only add Q/DQ cost


def test_pass_through_op_shares_its_input_quantization():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,4,8,8] x) => (float[1,8,4,4] y) {
      c = Conv <pads = [1,1,1,1]> (x, w)
      y = MaxPool <kernel_shape = [2,2], strides = [2,2]> (c)
    }"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"))
    model = ir.from_proto(proto)
    feeds = random_feeds(model)
    quantize(model, feeds)
    q_nodes = [n for n in model.graph if n.op_type == "QuantizeLinear"]
    scales = {float(n.inputs[1].const) for n in q_nodes if n.inputs[0].const is None}
    assert len(q_nodes) == 3 and len(scales) == 2  # input, conv output == maxpool output
    fused = fused_ops(model)
    assert "QLinearConv" in fused and "NhwcMaxPool" in fused  # max pooling runs on uint8
    assert fused.count("DequantizeLinear") == 1  # only at the graph output
    assert [o.name for o in model.graph.outputs] == ["y"]


def test_a_concat_output_spans_its_inputs_ranges_so_the_widest_input_is_copied():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,4,8,8] x) => (float[1,24,4,4] y) {
      a = Conv <pads = [1,1,1,1]> (x, w)
      b = Conv <pads = [1,1,1,1]> (x, w)
      c = Conv <pads = [1,1,1,1]> (x, w)
      ab = Concat <axis = 1> (a, b)
      p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (ab)
      q = MaxPool <kernel_shape = [2,2], strides = [2,2]> (c)
      y = Concat <axis = 1> (p, q)
    }"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"))
    model = ir.from_proto(proto)
    PassManager([InferShapes(), AssignPrecision(target="x86-vnni")])(model)
    model = model.clone()  # the spans are carried to a copy of the graph
    values = {v.name: v for v in model.graph.values()}
    calibrated = {"x": (-1.0, 1.0), "a": (-2.0, 1.0), "b": (-1.0, 3.0), "c": (-5.0, 0.5), "ab": (-1.0, 2.0), "y": (-1.0, 1.0)}
    model.plan.set_ranges({values[name]: calibrated[name] for name in calibrated})
    scheme = TARGETS["x86-vnni"].activation_scheme
    assert values["ab"].quant == scheme.spec_from_range(-2.0, 3.0)  # not its own (-1, 2): a and b's union
    assert values["p"].quant == values["ab"].quant
    assert values["y"].quant == scheme.spec_from_range(-5.0, 3.0)  # the earlier span's union and c's
    PassManager([InsertQDQ(), FoldQuantizedWeights()])(model)
    assert fused_ops(model).count("QLinearConcat") == 2


def test_excluded_nodes_stay_float():
    model = conv_model(with_relu=False)
    quantize(model, random_feeds(model), exclude=["Conv"])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, 300.0, -300.0], np.float32)
    q = ir.quantize(x, QuantSpec(TensorProto.INT8, np.array(1.0, np.float32), np.array(0, np.int8)))
    assert q.tolist() == [0, 2, 2, 0, 127, -128]


def test_quantized_model_keeps_interface_and_metadata():
    model = conv_model()
    model.metadata["character"] = "abc"
    quantize(model, random_feeds(model))
    proto = ir.to_proto(model)
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["y"]
    assert {p.key: p.value for p in proto.metadata_props} == {"character": "abc"}
    assert TARGETS["x86-avx2"].weight_reduce_range and not TARGETS["x86-vnni"].weight_reduce_range


def test_a_graph_input_returned_as_an_output_stays_the_input():
    """Issue 17: the quantized input took over the output's name and the input was renamed, so the
    model's input name changed; an input returned as an output is returned as it is."""
    model = conv_model()
    model.graph.outputs.append(model.graph.inputs[0])
    feeds = random_feeds(model)
    quantize(model, feeds)
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y", "x"]
    assert model.graph.outputs[1] is model.graph.inputs[0]
    ir.verify(model)
    np.testing.assert_array_equal(run_onnxruntime(model, feeds)[1], feeds["x"])


def test_a_weight_that_is_also_a_graph_input_keeps_its_default():
    """Issue 17: exports before IR version 4 list every initializer as an input (an input with a
    default). Folding the quantized weight and the int32 bias deleted the float initializers, so the
    inputs lost their defaults and became required; they keep them (unread: the quantized copy is used)."""
    model = conv_model()
    graph = model.graph
    graph.inputs.extend([graph.initializers["w"], graph.initializers["b"]])
    feeds = random_feeds(model)
    expected = run_onnxruntime(model, feeds)[0]
    quantize(model, feeds)
    assert [v.name for v in graph.inputs] == ["x", "w", "b"] and {"w", "b"} <= set(graph.initializers)
    ir.verify(model)
    assert "QLinearConv" in fused_ops(model)
    got = run_onnxruntime(model, feeds)[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
