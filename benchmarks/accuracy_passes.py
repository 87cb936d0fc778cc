"""Before/after tables of the accuracy passes: DFQ (CLE, high-bias absorption, bias correction) and AdaRound.

Three parts (``--part``):

* ``dfq`` — per-tensor W8A8 on the MobileNetV2 digits model (``benchmarks/models/digits_mobilenetv2.onnx``,
  ``train_digits_mobilenet.py``): plain per-channel and per-tensor, then the DFQ steps one by one.
  Calibration: the realmodels calibration split (256 training images, ``data/calib/digits.npz``);
  accuracy: top-1 on the 540 test images, the quantized model run by onnxruntime.
* ``adaround`` — W4A8 (4-bit per-channel weights in int8 storage, MSE-clipped; 8-bit activations) on
  ``digits_cnn`` and ``ocr_cls_ppocr_mobile_v2``, nearest rounding vs AdaRound; the candidates are scored
  by the realmodels ``evaluate.py`` (run with ``--evaluator-python``).
* ``timing`` — every pass of a pipeline holding all of them on ``ocr_rec_ppocrv4`` (``Timing`` instrument).

    python benchmarks/accuracy_passes.py /root/realmodels [--part dfq,adaround,timing] [--out DIR]
        [--evaluator-python /tmp/realmodels-venv/bin/python] [--evaluator /work/shared/realmodels/evaluate.py]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from qcompiler import PassManager, ir
from qcompiler import passes as lib
from qcompiler.instruments import Timing
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.pipelines import canonicalize, canonicalize_keeping_batchnorm_stats
from qcompiler.targets import get_target

HERE = Path(__file__).resolve().parent
MOBILENET = HERE / "models" / "digits_mobilenetv2.onnx"


def dfq(models_dir: Path) -> list[dict]:
    test = np.load(models_dir / "data" / "digits_test.npz")
    images = np.load(models_dir / "data" / "calib" / "digits.npz")["x"]
    calib = [{"input": images[i:i + 32]} for i in range(0, len(images), 32)]
    target = get_target("auto").name

    def top1(model: ir.Model) -> float:
        return float((run_onnxruntime(model, {"input": test["x"]})[0].argmax(1) == test["y"]).mean())

    dfq_steps = [lib.ReplaceReLU6(), lib.CrossLayerEqualization(), lib.HighBiasAbsorption()]
    rows = [("per-channel", False, [], None), ("per-tensor", True, [], None),
            ("per-tensor + bias correction (empirical)", True, [], "empirical"),
            ("per-tensor + bias correction (analytic)", True, [], "analytic"),
            ("per-tensor + ReLU6->ReLU", True, dfq_steps[:1], None),
            ("per-tensor + ReLU6->ReLU + CLE", True, dfq_steps[:2], None),
            ("per-tensor + ReLU6->ReLU + CLE + HBA", True, dfq_steps, None),
            ("per-tensor + ReLU6->ReLU + CLE + HBA + BC (empirical)", True, dfq_steps, "empirical"),
            ("per-tensor + ReLU6->ReLU + CLE + HBA + BC (analytic)", True, dfq_steps, "analytic"),
            ("per-channel + ReLU6->ReLU + CLE + HBA + BC (empirical)", False, dfq_steps, "empirical")]
    results = []
    for label, per_tensor, float_passes, correction in rows:
        float_model = ir.load(MOBILENET)
        PassManager(canonicalize_keeping_batchnorm_stats() + [type(p)() for p in float_passes])(float_model)
        quantized = float_model.clone()
        passes = [lib.AssignPrecision(target=target, per_channel=not per_tensor),
                  lib.Calibrate(data=calib, method="mse")]
        passes += [lib.BiasCorrection(data=calib, method=correction)] if correction else []
        start = time.perf_counter()
        PassManager(passes + [lib.InsertQDQ(), lib.FoldQuantizedWeights()])(quantized)
        results.append({"config": label, "fp32_top1": top1(float_model), "w8a8_top1": top1(quantized),
                        "quantize_seconds": round(time.perf_counter() - start, 2)})
        print(json.dumps(results[-1]), flush=True)
    return results


ADAROUND_MODELS = {"digits_cnn": "digits_cnn", "ocr_cls_ppocr_mobile_v2": "ocr_cls_ppocr_mobile_v2"}


def adaround(models_dir: Path, out: Path, evaluator_python: str, evaluator: str) -> list[dict]:
    target = get_target("auto").name
    seconds = {}
    for name in ADAROUND_MODELS:
        calib = str(models_dir / "data" / "calib_npz" / name)
        for rounding in ("nearest", "adaround"):
            model = ir.load(models_dir / f"{name}.onnx")
            passes = canonicalize() + [lib.AssignPrecision(target=target), lib.WeightBits(bits=4),
                                       lib.Calibrate(data=calib, method="mse")]
            passes += [lib.AdaRound(data=calib)] if rounding == "adaround" else []
            start = time.perf_counter()
            PassManager(passes + [lib.InsertQDQ(), lib.FoldQuantizedWeights()])(model)
            seconds[(name, rounding)] = round(time.perf_counter() - start, 1)
            (out / rounding).mkdir(parents=True, exist_ok=True)
            ir.save(model, out / rounding / f"{name}.onnx")
    results = []
    for rounding in ("nearest", "adaround"):
        report = out / f"evaluate_{rounding}.json"
        subprocess.run([evaluator_python, evaluator, str(models_dir), "--cand", str(out / rounding), "--only",
                        ",".join(ADAROUND_MODELS), "--json", str(report)], check=True, capture_output=True)
        for name, entry in json.loads(report.read_text())["models"].items():
            key = next(k for k in entry["fp32"] if k != "n")  # the score (top1, acc_0_180, ...)
            results.append({"model": name, "rounding": rounding, "metric": entry["metric"],
                            "fp32": entry["fp32"][key], "w4a8": entry["cand"][key], "sqnr_db": entry["cand"].get("sqnr_db"),
                            "compile_seconds": seconds[(name, rounding)]})
            print(json.dumps(results[-1]), flush=True)
    return results


def timing(models_dir: Path) -> list[dict]:
    name = "ocr_rec_ppocrv4"
    calib = str(models_dir / "data" / "calib_npz" / name)
    target = get_target("auto").name
    model = ir.load(models_dir / f"{name}.onnx")
    timer = Timing()
    passes = canonicalize_keeping_batchnorm_stats() + [
        lib.ReplaceReLU6(), lib.CrossLayerEqualization(), lib.HighBiasAbsorption(),
        lib.AssignPrecision(target=target), lib.WeightBits(bits=4),
        lib.Calibrate(data=calib, method="mse"), lib.AdaRound(data=calib),
        lib.BiasCorrection(data=calib), lib.BiasCorrection(method="analytic"),
        lib.InsertQDQ(), lib.FoldQuantizedWeights()]
    PassManager(passes, instruments=[timer])(model)
    results = [{"pass": r.name, "seconds": round(r.seconds, 2), "modified": r.modified} for r in timer.records]
    print(timer.table(), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--part", default="dfq,adaround,timing")
    parser.add_argument("--out", type=Path, default=Path("/tmp/qcompiler-accuracy-passes"))
    parser.add_argument("--evaluator-python", default="/tmp/realmodels-venv/bin/python")
    parser.add_argument("--evaluator", default="/work/shared/realmodels/evaluate.py")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    parts = args.part.split(",")
    if "dfq" in parts:
        results["dfq"] = dfq(args.models_dir)
    if "adaround" in parts:
        results["adaround"] = adaround(args.models_dir, args.out, args.evaluator_python, args.evaluator)
    if "timing" in parts:
        results["timing"] = timing(args.models_dir)
    (args.out / "accuracy_passes.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
