"""onnxruntime's float kernels in the torch forward: a decomposed layer normalization (which onnxruntime fuses into
one kernel) and Sigmoid give onnxruntime's quantized outputs, element for element, with the torch ops' gradients."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from qcompiler import ir  # noqa: E402

from .conftest import float_model  # noqa: E402

WIDTH = 40


def _layer_norm_nodes(x: str, y: str, *, mean_also_read: bool = False) -> list[onnx.NodeProto]:
    make = onnx.helper.make_node
    nodes = [make("ReduceMean", [x], ["mu"], axes=[-1]), make("Sub", [x, "mu"], ["d"]),
             make("Pow", ["d", "two"], ["d2"]), make("ReduceMean", ["d2"], ["var"], axes=[-1]),
             make("Add", ["var", "eps"], ["ve"]), make("Sqrt", ["ve"], ["sd"]), make("Div", ["d", "sd"], ["nrm"]),
             make("Mul", ["nrm", "gamma"], ["sc"]), make("Add", ["sc", "beta"], [y])]
    if mean_also_read:  # onnxruntime fuses no chain whose intermediate something else reads
        nodes.append(make("Add", [y, "mu"], [y + "_plus_mean"]))
    return nodes


def _qdq_layer_norm(path, *, mean_also_read: bool = False) -> dict[str, np.ndarray]:
    """``Q/DQ -> Add (a residual, float) -> layer normalization (nine ops) -> Q/DQ``, as in a transformer's block
    (a chain read straight from DequantizeLinear, onnxruntime fuses otherwise), with a fine output step (many
    near-ties)."""
    rng = np.random.default_rng(7)
    init = onnx.numpy_helper.from_array
    inits = [init(np.array(0.04, np.float32), "x.s"), init(np.array(128, np.uint8), "x.z"),
             init(np.array(0.0107, np.float32), "y.s"), init(np.array(128, np.uint8), "y.z"),
             init(np.array(2.0, np.float32), "two"), init(np.array(1e-5, np.float32), "eps"),
             init(rng.normal(1, 0.3, WIDTH).astype(np.float32), "gamma"),
             init(rng.normal(0, 0.2, WIDTH).astype(np.float32), "beta"),
             init(rng.normal(0, 0.5, (6, WIDTH)).astype(np.float32), "residual")]
    tail = "ln_plus_mean" if mean_also_read else "ln"
    nodes = ([onnx.helper.make_node("QuantizeLinear", ["x", "x.s", "x.z"], ["xq"]),
              onnx.helper.make_node("DequantizeLinear", ["xq", "x.s", "x.z"], ["xd"]),
              onnx.helper.make_node("Add", ["xd", "residual"], ["xt"])]
             + _layer_norm_nodes("xt", "ln", mean_also_read=mean_also_read)
             + [onnx.helper.make_node("QuantizeLinear", [tail, "y.s", "y.z"], ["yq"]),
                onnx.helper.make_node("DequantizeLinear", ["yq", "y.s", "y.z"], ["y"])])
    onnx.save(float_model(nodes, "layer_norm", ["n", 6, WIDTH], ["n", 6, WIDTH], inits), path)
    return {"x": rng.normal(0.2, 1.5, (2048, 6, WIDTH)).astype(np.float32)}


def _onnxruntime_output_integers(path, feeds) -> np.ndarray:
    model = onnx.load(str(path))
    model.graph.output.extend([onnx.helper.make_empty_tensor_value_info("yq")])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["yq"], feeds)[0]


def test_the_fused_kernel_replaces_the_nine_ops_and_gives_onnxruntimes_integers(tmp_path, monkeypatch):
    from qcompiler.qat import float_kernels
    from qcompiler.qat.graph import QuantizedModel

    if not float_kernels.reproduces_onnxruntime("LayerNormalization", WIDTH):
        pytest.skip("this onnxruntime's LayerNormalization is not the kernel qcompiler.qat.float_kernels reproduces")
    path = tmp_path / "ln.onnx"
    feeds = _qdq_layer_norm(path)
    theirs = _onnxruntime_output_integers(path, feeds).astype(np.float32)
    module = QuantizedModel(ir.load(path))
    assert [step.op for step in module.interpreter.steps].count("LayerNormalization") == 1
    assert np.array_equal(module.recorded(feeds)["yq"], theirs)

    monkeypatch.setattr(float_kernels, "reproduces_onnxruntime", lambda op, length=0: False)
    nine_ops = QuantizedModel(ir.load(path))
    assert "LayerNormalization" not in [step.op for step in nine_ops.interpreter.steps]
    assert not np.array_equal(nine_ops.recorded(feeds)["yq"], theirs)  # what the unit is for


def test_the_unit_passes_the_nine_ops_gradient(tmp_path, monkeypatch):
    from qcompiler.qat import float_kernels
    from qcompiler.qat.graph import QuantizedModel

    path = tmp_path / "ln.onnx"
    feeds = _qdq_layer_norm(path)
    gradients = []
    for fused in (True, False):
        monkeypatch.setattr(float_kernels, "reproduces_onnxruntime", lambda op, length=0, fused=fused: fused)
        module = QuantizedModel(ir.load(path))
        (module(feeds)["y"] ** 2).sum().backward()
        gradients.append({name: p.grad.clone() for name, p in module.parameters_.items()})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, grad in gradients[0].items():
        torch.testing.assert_close(grad, gradients[1][name], rtol=1e-3, atol=1e-3, msg=name)


def test_a_chain_whose_intermediate_is_read_elsewhere_is_not_fused(tmp_path):
    from qcompiler.executor.propagation import propagate_qdq
    from qcompiler.qat.float_kernels import find_layer_norms

    path = tmp_path / "ln.onnx"
    _qdq_layer_norm(path)
    assert [c.nodes[-1].outputs[0].name for c in find_layer_norms(propagate_qdq(ir.load(path)))] == ["ln"]
    _qdq_layer_norm(path, mean_also_read=True)
    assert find_layer_norms(propagate_qdq(ir.load(path))) == []


def _qdq_sigmoid(path) -> dict[str, np.ndarray]:
    """``200 · Sigmoid(x) -> Q/DQ`` with a step of 1 (a float input: every element another argument; not
    ``x · Sigmoid(a x)``, which onnxruntime fuses into QuickGelu)."""
    init = onnx.numpy_helper.from_array
    inits = [init(np.array(1.0, np.float32), "y.s"), init(np.array(0, np.uint8), "y.z"),
             init(np.array(200.0, np.float32), "gain")]
    make = onnx.helper.make_node
    nodes = [make("Sigmoid", ["x"], ["s"], name="sigmoid"), make("Mul", ["s", "gain"], ["g"]),
             make("QuantizeLinear", ["g", "y.s", "y.z"], ["yq"]), make("DequantizeLinear", ["yq", "y.s", "y.z"], ["y"])]
    onnx.save(float_model(nodes, "sigmoid", ["n", WIDTH], ["n", WIDTH], inits), path)
    return {"x": np.random.default_rng(9).normal(0, 2, (65536, WIDTH)).astype(np.float32)}


def test_sigmoid_gives_onnxruntimes_integers(tmp_path, monkeypatch):
    from qcompiler.qat import float_kernels
    from qcompiler.qat.graph import QuantizedModel

    if not float_kernels.reproduces_onnxruntime("Sigmoid"):
        pytest.skip("this onnxruntime's Sigmoid is not the kernel qcompiler.qat.float_kernels reproduces")
    path = tmp_path / "sigmoid.onnx"
    feeds = _qdq_sigmoid(path)
    theirs = _onnxruntime_output_integers(path, feeds).astype(np.float32)
    module = QuantizedModel(ir.load(path))
    assert np.array_equal(module.recorded(feeds)["yq"], theirs)

    monkeypatch.setattr(float_kernels, "reproduces_onnxruntime", lambda op, length=0: False)
    assert not np.array_equal(QuantizedModel(ir.load(path)).recorded(feeds)["yq"], theirs)  # torch.sigmoid
