"""The quantizers compared by the suite, each run in a child process (see ``compare_quantizers.py``).

* ``qcompiler``: ``qcompiler.compile`` with its defaults (target auto, MSE calibration unless told);
* ``ort_default``: onnxruntime ``quantize_static`` with its defaults (QDQ, S8S8, per tensor, MinMax);
* ``ort_u8s8_rr``: ``quantize_static`` with uint8 activations, int8 per-channel weights, reduce_range;

and, for transformers (named with ``--configs``; not in the default set):

* ``qcompiler_int8_transformer``: static int8 with ``pipeline="int8-transformer"`` and ``objective="size"`` (int8
  whatever the latency guard would measure: the default keeps a model float where int8 is not faster);
* ``qcompiler_dynamic`` / ``ort_dynamic``: ``qcompiler.compile(pipeline="dynamic")`` (no calibration data) and
  onnxruntime ``quantize_dynamic`` with its defaults;
* ``qcompiler_w8`` / ``ort_w8``: weight-only int8, blocks of 128, symmetric, as MatMulNBits (qcompiler's RTN,
  onnxruntime's ``MatMulNBitsQuantizer`` with ``bits=8``);
* ``qcompiler_w4`` / ``ort_w4``: weight-only int4, blocks of 32, asymmetric, as MatMulNBits (qcompiler's GPTQ on
  the calibration feeds, onnxruntime's default RTN); ``qcompiler_w4_int8act`` / ``ort_w4_int8act`` the same
  with ``accuracy_level`` 4 (activations quantized to int8 per block at run time).

This file is loaded by path in the child (``qcompiler.bench.run_child``): it imports only numpy at the
top, so an onnxruntime compile's memory does not include qcompiler's imports, nor the reverse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONFIGS = ("qcompiler", "ort_default", "ort_u8s8_rr")
WEIGHT_ONLY = {"w8": {"bits": 8, "block_size": 128, "symmetric": True, "method": "rtn"},
               "w4": {"bits": 4, "block_size": 32, "symmetric": False, "method": "gptq"}}
"""The weight-only settings of the ``*_w8`` and ``*_w4`` configs."""
TRANSFORMER_CONFIGS = ("qcompiler_int8_transformer", "qcompiler_dynamic", "ort_dynamic", "qcompiler_w8", "ort_w8",
                       "qcompiler_w4", "ort_w4", "qcompiler_w4_int8act", "ort_w4_int8act")
ALL_CONFIGS = CONFIGS + TRANSFORMER_CONFIGS


class NpzReader:
    """onnxruntime ``CalibrationDataReader`` over a directory of .npz feeds, one file read at a time."""

    def __init__(self, directory: Path):
        self.files = sorted(Path(directory).glob("*.npz"))
        self.position = 0

    def get_next(self):
        if self.position >= len(self.files):
            return None
        self.position += 1
        with np.load(self.files[self.position - 1]) as data:
            return {key: data[key] for key in data.files}

    def rewind(self):
        self.position = 0


def ort_preprocess(model: Path, prepared: Path) -> tuple[Path, str]:
    """What onnxruntime's documentation asks of a user of its quantizer: upgrade to opset 13 when below
    (its per-channel output is invalid before: DequantizeLinear's ``axis`` needs 13), then
    ``quant_pre_process``; without symbolic shape inference where that fails (PP-OCR, MiniLM), and the
    upgraded model unchanged where both fail. Returns the model to quantize and what was done."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(str(model))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        model = prepared.with_suffix(".opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(proto, 13), str(model))
    for options, done in (({}, "full"), ({"skip_symbolic_shape": True}, "skip_symbolic_shape")):
        try:
            quant_pre_process(str(model), str(prepared), **options)
            return prepared, done
        except Exception:
            continue
    return model, "none"


def compile_model(config: str, model: str, calib: str, output: str, calibration: str, threads: int) -> dict:
    """Compile ``model`` with ``config`` into ``output``; returns what the suite records besides time and
    memory (the onnxruntime preprocessing applied)."""
    model_path, output_path = Path(model), Path(output)
    if config == "qcompiler":
        import qcompiler

        qcompiler.compile(model_path, output_path, calib=calib, calibration=calibration, threads=threads)
        return {}
    if config in TRANSFORMER_CONFIGS:
        return compile_transformer(config, model_path, Path(calib), output_path, threads)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    prepared, done = ort_preprocess(model_path, output_path.with_suffix(".pre.onnx"))
    options = {} if config == "ort_default" else {
        "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "per_channel": True,
        "reduce_range": True}
    quantize_static(str(prepared), str(output_path), NpzReader(Path(calib)), quant_format=QuantFormat.QDQ,
                    **options)
    for leftover in output_path.parent.glob(output_path.stem + ".pre*.onnx"):
        leftover.unlink()
    return {"ort_preprocess": done}


def compile_transformer(config: str, model: Path, calib: Path, output: Path, threads: int) -> dict:
    """One of ``TRANSFORMER_CONFIGS``: static int8-transformer, dynamic int8, or weight-only int8/int4 as
    MatMulNBits."""
    quantizer, _, setting = config.partition("_")
    int8_activations = setting.endswith("_int8act")
    if setting == "int8_transformer":
        import qcompiler

        qcompiler.compile(model, output, pipeline="int8-transformer", calib=calib, objective="size", threads=threads)
        return {}
    if setting == "dynamic":
        if quantizer == "qcompiler":
            import qcompiler

            qcompiler.compile(model, output, pipeline="dynamic", threads=threads)
        else:
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(str(model), str(output))
        return {}
    weights = WEIGHT_ONLY[setting.removesuffix("_int8act")]
    if quantizer == "qcompiler":
        import qcompiler

        qcompiler.compile(model, output, pipeline="weight-only", weight_bits=weights["bits"],
                          block_size=weights["block_size"], symmetric=weights["symmetric"],
                          weight_method=weights["method"], weight_format="matmulnbits",
                          int8_activations=int8_activations, calib=calib if weights["method"] != "rtn" else None)
        return {"method": weights["method"]}
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    ort_quantizer = MatMulNBitsQuantizer(onnx.load(str(model)), bits=weights["bits"], block_size=weights["block_size"],
                                         is_symmetric=weights["symmetric"],
                                         accuracy_level=4 if int8_activations else None)
    ort_quantizer.process()
    ort_quantizer.model.save_model_to_file(str(output), use_external_data_format=False)
    return {"method": "rtn"}
