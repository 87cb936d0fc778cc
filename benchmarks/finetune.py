"""Quantization-aware fine-tuning (``qcompiler finetune``) on the digits models: accuracy, deployed =
trained, and speed against the PTQ model the run started from.

For each case: compile the FP32 model with qcompiler (``int8`` or ``w4a8``, ``--objective size``), lower
its weights where the case says (int4 / ternary / binary, first and last layer kept 8-bit:
:mod:`qcompiler.qat.lowbit`), fine-tune label-free on the realmodels calibration data only (256 images,
no labels; the teacher is the FP32 model), then measure on the kit's held-out test split
(``digits_test.npz``, 540 images with labels, never trained on):

* top-1 of FP32, of the start (the rounded / lowered PTQ model) and of the fine-tuned model, all run by
  onnxruntime;
* deployed = trained: every QuantizeLinear output of the torch forward (the fake-quantized model as trained)
  against onnxruntime running the written model (its Q outputs exposed), over the test set: share
  identical, largest difference in steps;
* latency: onnxruntime, 2 threads, the start and the fine-tuned model alternated, median of repetitions
  (the machine is shared: only the ratio means something). The start is the PTQ model of the same plan
  (same graph, rounded integers), so the ratio says whether fine-tuning cost speed; it does not say how
  a 4-bit activation model compares with the int8 one (it runs its clipped layers in float).

    python benchmarks/finetune.py [--out benchmarks/results/finetune] [--steps 1000] [--only NAME] [--labelled]

``--labelled`` (issue 14 line 3's run with a labelled loss; results in ``results/finetune_labelled``) trains
on the same 256 calibration images with their labels (the kit's ``calib/digits.npz``, the same images in the
same order), adding the cross-entropy of the fine-tuned model's logits against the labels to the distillation
through ``qcompiler.finetune(task_loss=...)``.

Needs torch (``pip install 'onnx-qcompiler[finetune]'``) and the realmodels kit's /root/realmodels.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import qcompiler
from qcompiler import ir

REALMODELS = Path("/root/realmodels")
HERE = Path(__file__).resolve().parent
MOBILENET = HERE / "models" / "digits_mobilenetv2.onnx"
CASES = {  # name: (fp32 model, start pipeline, weights lowered to, activation bits, steps factor, lr)
    "digits_cnn_ternary": (REALMODELS / "digits_cnn.onnx", "int8", "ternary", None, 1.0, 1e-3),
    "digits_cnn_binary": (REALMODELS / "digits_cnn.onnx", "int8", "binary", None, 1.0, 1e-3),
    "mobilenetv2_w4a4": (MOBILENET, "int8", "int4", 4, 0.6, 1e-3),
    "mobilenetv2_w4a8": (MOBILENET, "w4a8", None, None, 0.5, 1e-4),
}
CALIB = REALMODELS / "data" / "calib_npz" / "digits_cnn"
LABELLED = REALMODELS / "data" / "calib" / "digits.npz"  # the same 256 images as CALIB, with labels y
TEST = REALMODELS / "data" / "digits_test.npz"


def _session(path, threads=1, exposed=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if exposed:
        model = onnx.load(str(path))
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in exposed)
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def top1(path, x, y) -> float:
    session = _session(path)
    return float((session.run(None, {session.get_inputs()[0].name: x})[0].argmax(-1) == y).mean())


def deployed_vs_trained(path, inputs) -> dict:
    """Every QuantizeLinear output of the torch forward that was trained against onnxruntime running the written
    model (its Q outputs exposed), over ``inputs`` (feed dicts): the share identical, the largest difference in
    steps, and the share of inputs on which every quantized activation is identical."""
    import torch

    from qcompiler.qat.graph import QuantizedModel

    torch.set_num_threads(1)
    module = QuantizedModel(ir.load(path))
    names = [n.outputs[0].name for n in module.model.graph if n.op_type == "QuantizeLinear"]
    session = _session(path, exposed=names)
    same = total = worst = exact = count = 0
    for feeds in inputs:
        ours = module.recorded(feeds)
        theirs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        differing = 0
        for key, q in ours.items():
            diff = np.abs(q.astype(np.int64) - theirs[key].astype(np.int64))
            differing += int((diff != 0).sum())
            total += diff.size
            worst = max(worst, int(diff.max()))
        same += sum(q.size for q in ours.values()) - differing
        exact += differing == 0
        count += 1
    return {"activations": total, "identical": same / total, "max_diff_steps": worst, "inputs": count,
            "inputs_identical": exact / count}


def latency_ratio(start, tuned, x, repeats=15, runs=20) -> dict:
    sessions = {"start": _session(start, threads=2), "tuned": _session(tuned, threads=2)}
    feeds = {sessions["start"].get_inputs()[0].name: x[:64]}
    times = {k: [] for k in sessions}
    for session in sessions.values():  # warm-up: the first runs allocate
        for _ in range(3):
            session.run(None, feeds)
    for _ in range(repeats):
        for key, session in sessions.items():  # alternated
            t = time.perf_counter()
            for _ in range(runs):
                session.run(None, feeds)
            times[key].append((time.perf_counter() - t) / runs)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"start_ms": medians["start"] * 1e3, "tuned_ms": medians["tuned"] * 1e3,
            "tuned_over_start": medians["tuned"] / medians["start"]}


def labelled_data(fp32: Path, work: Path) -> Path:
    """The calibration images under the model's input name, with their labels ``y``."""
    arrays = np.load(LABELLED)
    path = work / f"{fp32.stem}.labelled.npz"
    np.savez(path, **{onnx.load(str(fp32)).graph.input[0].name: arrays["x"], "y": arrays["y"]})
    return path


def cross_entropy(outputs, extras):
    """The labelled task loss: cross-entropy of the logits (the model's one output) against ``y``."""
    import torch

    (logits,) = outputs.values() if len(outputs) == 1 else (outputs["logits"],)
    return torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(extras["y"]))


def run_case(name, steps, work: Path, labelled: bool = False) -> dict:
    fp32, pipeline, weights, activation_bits, factor, lr = CASES[name]
    test = np.load(TEST)
    x, y = test["x"], test["y"]
    compiled = work / f"{fp32.stem}.{pipeline}.onnx"
    if not compiled.exists():
        qcompiler.compile(str(fp32), str(compiled), pipeline=pipeline, calib=str(CALIB), objective="size")
    start = compiled
    if weights is not None or activation_bits is not None:
        from qcompiler.qat.lowbit import lower_activations, lower_precision

        model = ir.load(compiled)
        if weights is not None:
            lower_precision(model, weights)
        if activation_bits is not None:
            lower_activations(model, activation_bits)
        start = work / f"{name}.start.onnx"
        ir.save(model, start)
    tuned = work / f"{name}.tuned.onnx"
    run_steps = max(1, int(steps * factor))
    data, task_loss = (labelled_data(fp32, work), cross_entropy) if labelled else (CALIB, None)
    result = qcompiler.finetune(start, tuned, teacher=fp32, data=data, steps=run_steps, lr=lr, batch=64, threads=1,
                                task_loss=task_loss)
    onnx.checker.check_model(onnx.load(str(tuned)), full_check=True)
    input_name = onnx.load(str(tuned)).graph.input[0].name
    batches = ({input_name: x[i:i + 64]} for i in range(0, len(x), 64))
    lowered = (f" + {weights} weights" if weights else "") + (f" + {activation_bits}-bit activations"
                                                             if activation_bits else "")
    row = {"case": name + (" + labels" if labelled else ""), "fp32_model": fp32.name, "start": pipeline + lowered,
           "steps": run_steps, "lr": lr, "batch": 64, "train_seconds": round(result.seconds, 1),
           "top1_fp32": top1(fp32, x, y), "top1_start": top1(start, x, y), "top1_tuned": top1(tuned, x, y),
           "teacher_agreement_start": result.outputs[0].agreement_before,
           "teacher_agreement_tuned": result.outputs[0].agreement_after,
           "deployed_vs_trained": deployed_vs_trained(tuned, batches), "latency": latency_ratio(start, tuned, x)}
    print(json.dumps(row), flush=True)
    return row


DATA = {False: """Label-free: every run trains on the 256 unlabelled calibration images of the realmodels kit
(`data/calib_npz/digits_cnn`) against the FP32 model's outputs.""",
        True: """With labels: every run trains on the 256 calibration images of the realmodels kit with their labels
(`data/calib/digits.npz`), the cross-entropy against the labels added to the distillation against the FP32
model's outputs."""}
NOTES = """Top-1 is measured on the kit's 540 held-out
test images (`digits_test.npz`). "start" is the PTQ model fine-tuning began from (the qcompiler compile output,
its weights lowered where the case says, rounded to nearest): the same graph as the fine-tuned model.
Ternary / binary / int4 cases keep the first and last layer's 8-bit weights; the 4-bit-activation case keeps
the first layer's input and the last layer's output at 8 bits and runs its clipped layers in float in
onnxruntime (no 4-bit activation kernels on CPU), so its latency ratio is against its own start, not int8.
"identical Q outputs": every QuantizeLinear output of the torch forward that was trained vs onnxruntime running
the written model (Q outputs exposed), over the test set. Latency: onnxruntime, 2 threads, batch 64, the two
models alternated, median of 15 x 20 runs, on a 2-core AMD EPYC shared with another fine-tuning run: only the
ratio means something. Every written model passes `onnx.checker` (full check) and runs in onnxruntime.
"""


def markdown(rows, labelled: bool) -> str:
    lines = ["# qcompiler finetune on the digits models (`python benchmarks/finetune.py`)", "", DATA[labelled], NOTES,
             "| case | start | steps | train s | top-1 FP32 | top-1 start | top-1 fine-tuned | identical Q outputs "
             "(max diff) | latency tuned/start |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["deployed_vs_trained"]
        lines.append(f"| {r['case']} | {r['start']} | {r['steps']} | {r['train_seconds']} | {r['top1_fp32']:.4f} | "
                     f"{r['top1_start']:.4f} | {r['top1_tuned']:.4f} | {100 * d['identical']:.3f} % "
                     f"({d['max_diff_steps']}) | {r['latency']['tuned_over_start']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "finetune"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", action="append", choices=sorted(CASES))
    parser.add_argument("--labelled", action="store_true", help="add the labelled cross-entropy (module docstring)")
    args = parser.parse_args(argv)
    if args.labelled and args.out == parser.get_default("out"):
        args.out += "_labelled"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            rows.append(run_case(name, args.steps, Path(tmp), args.labelled))
    meta = {"machine": f"{platform.processor() or platform.machine()}, shared with other jobs",
            "label_free": ("the 256 calibration images with their labels: cross-entropy added to the distillation"
                           if args.labelled else
                           "every run uses only the 256 unlabelled calibration images and the FP32 teacher"),
            "python": sys.version.split()[0], "onnxruntime": ort.__version__}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(rows, args.labelled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
