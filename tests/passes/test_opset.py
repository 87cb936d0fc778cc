"""UpgradeOpset (passes/opset.py, onnx.version_converter underneath)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.version_converter
import pytest

from qcompiler import ir
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir.testing import parse, tensor_text
from qcompiler.pass_manager import PassManager
from qcompiler.passes import UpgradeOpset

# ops whose signature changed between opset 11 and 13: Softmax (2-D coercion -> one axis),
# ReduceSum / Squeeze / Unsqueeze / Split (axes and split move from attributes to inputs)
OPSET_11 = """
<ir_version: 6, opset_import: ["" : 11]>
g (float[2,3,4] x) => (float[2,3,4] soft, float[2,3,4] clipped, float[2,1,4] summed,
                       float[1,2,3,4] unsq, float[2,4] squeezed, float[2,1,4] first, float[2,2,4] rest)
  <float lo = {-0.5}, float hi = {0.5}> {
  soft = Softmax <axis = 1> (x)
  clipped = Clip(x, lo, hi)
  summed = ReduceSum <axes = [1], keepdims = 1> (x)
  unsq = Unsqueeze <axes = [0]> (x)
  squeezed = Squeeze <axes = [1]> (summed)
  first, rest = Split <axis = 1, split = [1, 2]> (x)
}"""


def test_upgrade_11_to_13_keeps_outputs(run_checked):
    m = parse(OPSET_11)
    m.graph.nodes[0].name, m.graph.nodes[0].doc_string = "softmax", "the softmax"
    m.metadata, m.graph.metadata = {"character": "x\ny"}, {"k": "v"}
    result = run_checked(m, UpgradeOpset(target=13))
    assert result.modified
    assert m.opset == 13 and m.ir_version == 7
    ir.verify(m, strict=True)
    ops = {node.op_type: node for node in m.graph}
    assert len(ops["ReduceSum"].inputs) == 2 and "axes" not in ops["ReduceSum"].attrs
    assert len(ops["Unsqueeze"].inputs) == 2 and len(ops["Split"].inputs) == 2
    assert [v.name for v in m.graph.outputs] == ["soft", "clipped", "summed", "unsq", "squeezed", "first", "rest"]
    assert m.metadata == {"character": "x\ny"} and m.graph.metadata == {"k": "v"}
    softmax = next(n for n in m.graph if n.name == "softmax")
    assert softmax.doc_string == "the softmax"


@pytest.mark.parametrize("opset, target", [(13, 13), (17, 13), (13, 11)])
def test_upgrade_never_downgrades(run_checked, opset, target):
    m = parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,3] x) => (float[2,3] y) {{ y = Softmax <axis = 1> (x) }}""")
    assert not run_checked(m, UpgradeOpset(target=target)).modified
    assert m.opset == opset


def test_upgrade_raises_ir_version_and_drops_initializers_from_inputs(run_checked):
    proto = onnx.parser.parse_model("""
    <ir_version: 3, opset_import: ["" : 8]>
    g (float[2,3] x, float[3] w) => (float[2,3] y) <float[3] w = {1, 2, 3}> {
      y = Mul(x, w)
    }""")
    m = ir.from_proto(proto)
    assert run_checked(m, UpgradeOpset(), feeds={"x": np.ones((2, 3), np.float32)}).modified
    assert m.ir_version == 7 and m.opset == 13
    assert [v.name for v in m.graph.inputs] == ["x"] and "w" in m.graph.initializers


def test_removed_operator_is_a_clear_error():
    # ImageScaler was an experimental op; it is in no opset the converter knows
    m = ir.from_proto(onnx.parser.parse_model("""
    <ir_version: 4, opset_import: ["" : 9]>
    g (float[1,3,2,2] x) => (float[1,3,2,2] y) { y = ImageScaler <scale = 2.0> (x) }"""))
    m.graph.nodes[0].name = "scaler"
    before = ir.format_model(m)
    with pytest.raises(UnsupportedModelError, match=r"from opset 9 to 13: ImageScaler \(node 'scaler'\)"):
        PassManager([UpgradeOpset()])(m)  # a user error: not wrapped in PassError
    assert ir.format_model(m) == before  # the model is left as it was


def test_converter_failure_is_wrapped(monkeypatch):
    def fail(model, target):
        raise RuntimeError("No Adapter For Foo\nmore detail")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    m = parse(OPSET_11)
    with pytest.raises(UnsupportedModelError, match="cannot upgrade the model from opset 11 to 13: No Adapter For Foo$"):
        UpgradeOpset()(m)
    assert m.opset == 11


def test_target_beyond_onnx_is_a_clear_error():
    m = parse(OPSET_11)
    with pytest.raises(UnsupportedModelError, match="cannot upgrade the model from opset 11 to 999"):
        UpgradeOpset(target=999)(m)


@pytest.mark.parametrize("target", [-5, 0])
def test_target_that_is_no_opset_is_a_pipeline_error(tmp_path, target, capsys):
    from qcompiler.cli import main
    from qcompiler.errors import PipelineConfigError

    with pytest.raises(PipelineConfigError, match=rf"^pass 'upgrade-opset' field 'target' must be an ONNX opset "
                                                  rf"version \(an integer >= 1\), got {target}$"):
        UpgradeOpset(target=target)
    toml = tmp_path / "p.toml"
    toml.write_text(f'[[pipeline.passes]]\nname = "upgrade-opset"\ntarget = {target}\n')
    model = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(OPSET_11), str(model))
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--pipeline", str(toml), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qcompiler: error: ") and "Traceback" not in err
    assert err.endswith(f"pass 'upgrade-opset' field 'target' must be an ONNX opset version (an integer >= 1), got {target}")
    assert not out.exists()


def test_upgrade_converts_without_copying_the_weights(run_checked):
    """The version converter sees the weights as placeholders; the upgraded model holds the same arrays."""
    weight = np.random.default_rng(0).standard_normal((48, 48)).astype(np.float32)
    m = parse(f"""
    <ir_version: 7, opset_import: ["" : 11]>
    g (float[2,48] x) => (float[2,1,48] y) <{tensor_text("w", weight)}> {{
      h = MatMul(x, w)
      y = Unsqueeze <axes = [1]> (h)
    }}""")
    kept = m.graph.initializers["w"].const
    assert run_checked(m, UpgradeOpset(target=21)).modified
    assert m.opset == 21 and m.graph.initializers["w"].const is kept
