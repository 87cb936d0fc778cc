"""Pipelines as contracts: pass order, the options a pipeline honours, option values, the output path.

Every case is a user mistake: the CLI exits 2 with one line naming the problem and no traceback, and
the Python API raises a UserError before any work is done.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import onnx
import pytest

import qcompiler
from qcompiler import PassManager, ir
from qcompiler.cli import main
from qcompiler.errors import ModelSaveError, PipelineOrderError, UserError
from qcompiler.options import CompileOptions
from qcompiler.passes import AssignPrecision, Calibrate, InsertQDQ

from .test_compile import calib_dir, model_path  # noqa: F401, F811  (fixtures shared with test_compile)


def _one_line_error(capsys, argv: list[str], pattern: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("qcompiler: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    return lines[0]


def _toml(tmp_path, body: str):
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_calibrate_then_insert_qdq_without_assign_precision_is_refused(model_path, calib_dir, tmp_path, capsys):
    pipeline = _toml(tmp_path, """
        [pipeline]
        [[pipeline.passes]]
        include = "canonicalize"
        [[pipeline.passes]]
        name = "calibrate"
        data = "@calibration"
        [[pipeline.passes]]
        name = "insert-qdq"
    """)
    out = tmp_path / "out.onnx"
    _one_line_error(capsys, ["compile", str(model_path), "-o", str(out), "--calib", str(calib_dir),
                             "--pipeline", str(pipeline)],
                    r"pipeline order: calibrate needs a quantization plan .* run assign-precision( or [a-z-]+)* before it")
    assert not out.exists()


def test_a_pass_before_the_one_that_provides_its_need_is_refused_when_the_pipeline_is_built():
    with pytest.raises(PipelineOrderError, match="insert-qdq needs .* calibrate provides it only after it"):
        PassManager([AssignPrecision(), InsertQDQ(), Calibrate(data=[{}])])


def test_toml_pipeline_with_calibration_resource_compiles_from_the_cli(model_path, calib_dir, tmp_path, capsys):
    pipeline = _toml(tmp_path, """
        [pipeline]
        [[pipeline.passes]]
        include = "canonicalize"
        [[pipeline.passes]]
        name = "assign-precision"
        target = "x86-vnni"
        [[pipeline.passes]]
        name = "calibrate"
        data = "@calibration"
        method = "minmax"
        [[pipeline.passes]]
        name = "insert-qdq"
        [[pipeline.passes]]
        name = "fold-quantized-weights"
    """)
    out = tmp_path / "out.onnx"
    assert main(["compile", str(model_path), "-o", str(out), "--calib", str(calib_dir), "--pipeline", str(pipeline),
                 "-q"]) == 0
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node) > 0


@pytest.mark.parametrize("argv, pattern", [
    (["--pipeline", "w4a8", "--sensitivity-threshold", "0.01"],
     r"pipeline 'w4a8' does not take sensitivity_threshold \(--sensitivity-threshold\)"),
    (["--pipeline", "canonicalize"], r"pipeline 'canonicalize' does not take calib \(--calib\)"),
    (["--percentile", "150"], r"percentile must be in \(50, 100\], not 150"),
    (["--percentile", "30"], r"percentile must be in \(50, 100\], not 30"),
    (["--threads", "-3"], r"threads must be 0 .* not -3"),
    (["--sensitivity-threshold", "-1"], r"sensitivity threshold must be a number >= 0"),
])
def test_options_a_pipeline_cannot_honour_or_bad_values_exit_2(model_path, calib_dir, tmp_path, capsys, argv,
                                                               pattern):
    out = tmp_path / "out.onnx"
    _one_line_error(capsys, ["compile", str(model_path), "-o", str(out), "--calib", str(calib_dir), *argv], pattern)
    assert not out.exists()


def test_toml_option_not_read_by_the_pipeline_is_refused(model_path, calib_dir, tmp_path, capsys):
    pipeline = _toml(tmp_path, """
        [pipeline]
        [[pipeline.passes]]
        include = "canonicalize"
    """)
    _one_line_error(capsys, ["compile", str(model_path), "-o", str(tmp_path / "o.onnx"), "--calib", str(calib_dir),
                             "--pipeline", str(pipeline)], r"does not take calib \(--calib\); it takes no options")


def test_toml_list_field_with_a_number_is_a_config_error(model_path, calib_dir, tmp_path, capsys):
    pipeline = _toml(tmp_path, """
        [pipeline]
        [[pipeline.passes]]
        name = "assign-precision"
        exclude = 5
    """)
    _one_line_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pipeline", str(pipeline)],
                    r"pass 'assign-precision' field 'exclude' must be a list, got int 5")


def test_exclude_given_as_a_string_is_one_pattern_and_unmatched_patterns_are_reported(model_path, calib_dir, tmp_path,
                                                                                      capsys):
    options = CompileOptions(exclude="Conv")
    assert options.exclude == ("Conv",)
    with pytest.raises(UserError, match="exclude takes node names"):
        CompileOptions(exclude=[3])
    model = qcompiler.compile(model_path, calib=calib_dir, target="x86-vnni", objective="size", exclude="Conv")
    assert not any(n.op_type == "Conv" and model.plan.is_quantized(n) for n in model.graph)
    out = tmp_path / "out.onnx"
    assert main(["compile", str(model_path), "-o", str(out), "--calib", str(calib_dir), "--target", "x86-vnni",
                 "--objective", "size", "--exclude", "no_such_node", "-q"]) == 0
    assert "warning: --exclude 'no_such_node' matched no node" in capsys.readouterr().out


def test_compile_api_refuses_to_overwrite_its_input_before_any_work(model_path, tmp_path):
    before = model_path.read_bytes()
    with pytest.raises(ModelSaveError, match="is the input model"):
        qcompiler.compile(model_path, model_path, calib="no such calibration data")
    with pytest.raises(ModelSaveError, match="does not exist"):
        qcompiler.compile(model_path, tmp_path / "missing" / "out.onnx", calib="no such calibration data")
    assert model_path.read_bytes() == before


def test_compiled_model_keeps_no_unused_float_bias(model_path, calib_dir):
    model = qcompiler.compile(model_path, calib=calib_dir, target="x86-vnni", objective="size")
    proto = ir.to_proto(model)
    read = {name for node in proto.graph.node for name in node.input}
    assert all(t.name in read for t in proto.graph.initializer)
    float_vectors = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 1
                     and t.dims[0] > 1]
    assert not [n for n in float_vectors if n in ("b1", "b2", "b3")]  # the int32 biases replaced them


def test_the_plan_survives_clone(model_path, calib_dir):
    model = ir.load(model_path)
    PassManager([AssignPrecision(target="x86-vnni")])(model)
    copy = model.clone()
    assert copy.plan.target is model.plan.target
    assert [n.name for n in copy.plan.layers] == [n.name for n in model.plan.layers]
    assert all(n.graph is copy.graph for n in copy.plan.layers)
    assert {v.name for v in copy.plan.pending} == {v.name for v in model.plan.pending}
    assert np.array_equal(copy.find_value("w1").quant.scale, model.find_value("w1").quant.scale)


def test_a_pass_that_starts_a_new_plan_invalidates_the_ranges_before_it(model_path):
    passes = [AssignPrecision(), Calibrate(data=[{}]), AssignPrecision(), InsertQDQ()]
    with pytest.raises(PipelineOrderError, match="insert-qdq needs a range for every activation"):
        PassManager(passes)(ir.load(model_path))  # before any pass runs
