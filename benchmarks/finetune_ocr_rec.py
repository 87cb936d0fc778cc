"""Fine-tuning the PP-OCRv4 recognizer to W4A8 (issue 14, lines 1 and 6): AdaRound, then ``qcompiler
finetune`` on unlabelled text lines, scored with the realmodels kit's line accuracy.

Steps, all in ``--work``:

1. **Unlabelled lines.** The kit's own line generator (``make_eval_data.ocr_lines``: random spans of the
   Python docs rendered in DejaVu fonts, random sizes, colours, rotation, blur, noise) renders ``--lines``
   lines with ``--seed`` (the kit uses seed 0 for its evaluation set and 1 for its 64 calibration lines).
   Lines whose text also occurs in the evaluation set are dropped; the kit's ``ocr_rec_input`` preprocesses
   each into one ``.npz`` (``x``: ``[1, 3, 48, W]``). The texts are never read again: training is label-free.
2. **The start**: ``qcompiler compile --pipeline w4a8 --objective size`` on the kit's 64 calibration lines
   (4-bit per-channel weights on every Conv/MatMul, AdaRound; int8 activations everywhere).
3. **Fine-tuning**: ``qcompiler finetune START --teacher FP32 --data LINES --blocks B --temperature T
   --steps N --threads THREADS``, timed (wall clock, peak resident memory of the process).
4. **Scores**: the kit's ``evaluate.py`` on its 300 labelled evaluation lines, FP32 against each model; and
   the same evaluator on ``--heldout`` more lines the generator renders with ``--heldout-seed``
   (``evaluate.py --data``): on 300 lines one line is a third of a point, and runs that the 300 lines
   rank alike differ on more.
5. **Deployed = trained** (line 4): every quantized activation of the torch forward of the fine-tuned model
   against onnxruntime running the written model, on the first ``--check-lines`` rendered lines.
6. **The written model** (line 5): ``onnx.checker`` (full check), and its latency against the start's, side
   by side on the first rendered line, 2 threads.

    python benchmarks/finetune_ocr_rec.py /root/realmodels [--lines 4096] [--steps 2200] [--threads 2]
        [--labelled | --ctc] [--freeze-oscillations F] [--ema DECAY] [--train-seed S] [--heldout 1024]
        [--heldout-seed 1002]
        [--work /tmp/qcompiler-finetune-ocr]
        [--json benchmarks/results/finetune_ocr_rec.json]

``--labelled`` (issue 14 line 3's run with a labelled loss) adds the CTC loss of the recognizer's output
against each line's text (the generator's, never the evaluation set's) to the distillation, through
``qcompiler.finetune(task_loss=...)`` in a child process. ``--ctc`` runs ``qcompiler finetune --ctc OUTPUT``
instead, which adds the CTC loss against the text the FP32 teacher reads (sequence-level distillation, Kim and
Rush 2016): label-free.

Needs torch (``pip install 'onnx-qcompiler[finetune]'``) in this interpreter and the kit's venv for the
generator and the evaluator (``--evaluator-python``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynamic_minilm import add_evaluator_arguments, evaluate as score  # noqa: E402  (the kit's evaluator)
from finetune import deployed_vs_trained, latency_ratio  # noqa: E402  (torch vs onnxruntime; tuned vs start)
from large_model_memory import run_measured  # noqa: E402  (a child's wall time and peak RSS)

MODEL = "ocr_rec_ppocrv4"
OUTPUT = "softmax_11.tmp_0"  # [N, T, 6625]: per position, the probabilities of blank and the characters
GENERATE = """
import os, random, sys
import numpy as np
from PIL import Image
kit, data, out, count, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, kit)
import make_eval_data, preprocess
rendered = os.path.join(out, 'rendered')
make_eval_data.ocr_lines(rendered, random.Random(seed), count)
held_out = {text for _, text in preprocess.read_tsv(os.path.join(data, 'ocr_lines', 'labels.tsv'))}
lines = os.path.join(out, 'lines')
os.makedirs(lines, exist_ok=True)
labelled = os.path.join(out, 'labelled')
os.makedirs(labelled, exist_ok=True)
with open(sys.argv[6], encoding='utf-8') as f:
    classes = {c: i + 1 for i, c in enumerate(f.read().splitlines() + [' '])}  # PaddleOCR: blank 0, space last
kept = 0
for name, text in preprocess.read_tsv(os.path.join(rendered, 'ocr_lines', 'labels.tsv')):
    if text not in held_out:
        image = Image.open(os.path.join(rendered, 'ocr_lines', name)).convert('RGB')
        x = preprocess.ocr_rec_input(image)
        np.savez(os.path.join(lines, name.replace('.png', '.npz')), x=x)
        label = np.array([[classes[c] for c in text]], np.int64)
        np.savez(os.path.join(labelled, name.replace('.png', '.npz')), x=x, label=label,
                 label_length=np.array([label.shape[1]], np.int64))
        kept += 1
print(kept)
"""


def render(args: argparse.Namespace, count: int, seed: int) -> Path:
    """The directory the kit's generator rendered ``count`` lines into with ``seed`` (made once): the images
    and texts in ``rendered/ocr_lines`` (the layout of the kit's evaluation data), the lines whose text does not
    occur in the evaluation set as unlabelled ``.npz`` in ``lines`` and, with their texts as CTC targets
    (``label``, ``label_length``), in ``labelled``."""
    out = args.work / f"lines-{count}-seed{seed}"
    if not (out / "labelled").is_dir():
        kit = str(Path(args.evaluator).resolve().parent)
        done = subprocess.run([args.evaluator_python, "-c", GENERATE, kit, str(args.models_dir / "data"), str(out),
                               str(count), str(seed), str(args.models_dir / f"{MODEL}_dict.txt")],
                              check=True, capture_output=True, text=True)
        print(f"rendered lines (seed {seed}): {done.stdout.strip()} of {count} kept", flush=True)
    return out


def labelled_ctc(outputs, extras):
    """The labelled task loss: :func:`qcompiler.qat.sequence.ctc_loss` of the recognizer's per-position character
    probabilities against the line's text (``label``, ``label_length``), blank = class 0."""
    from qcompiler.qat.sequence import ctc_loss

    ends = np.cumsum(extras["label_length"])
    return ctc_loss(outputs[OUTPUT], np.split(extras["label"].reshape(-1), ends[:-1]))


def train_labelled(argv: list[str]) -> int:
    """Child process of a labelled run: ``START OUTPUT TEACHER DATA STEPS BLOCKS TEMPERATURE THREADS``."""
    import qcompiler

    start, output, teacher, data, steps, blocks, temperature, threads = argv
    result = qcompiler.finetune(start, output, teacher=teacher, data=data, steps=int(steps), blocks=int(blocks),
                                temperature=float(temperature), threads=int(threads), task_loss=labelled_ctc,
                                progress=False)
    print(result.table(), flush=True)
    return 0


def timed(command: list[str], work: Path) -> dict:
    """Run ``command`` in ``work`` (:func:`large_model_memory.run_measured`); its wall time, peak memory and
    summary lines (finetune's table and what it froze)."""
    result = run_measured(command, work, lines=6)
    if result["exit_status"] != 0:
        raise SystemExit(f"failed ({result['exit_status']}: {result.get('error', '')}): {result['command']}")
    return {"seconds": result["seconds"], "peak_gb": round(result["peak_rss_mb"] / 1024, 2),
            "summary": [line for line in result["output"] if not line.startswith("finetune: step")]}


def written_model(start: Path, tuned: Path, line: Path) -> dict:
    """Line 5: the fine-tuned model passes ``onnx.checker`` (full check), and its latency against the start's
    (the PTQ model of the same plan), side by side on one rendered line, 2 threads."""
    import onnx

    onnx.checker.check_model(onnx.load(str(tuned)), full_check=True)
    with np.load(line) as data:
        x = data["x"]
    return {"checker": "passed", "latency": latency_ratio(start, tuned, x)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    add_evaluator_arguments(parser)
    parser.add_argument("--work", type=Path, default=Path("/tmp/qcompiler-finetune-ocr"))
    parser.add_argument("--lines", type=int, default=4096, help="unlabelled lines to render")
    parser.add_argument("--seed", type=int, default=1001, help="of the line generator (the kit's sets use 0 and 1)")
    parser.add_argument("--steps", type=int, default=2200)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labelled", action="store_true",
                        help="add the CTC loss against the lines' texts to the distillation (line 3's labelled run)")
    parser.add_argument("--ctc", action="store_true",
                        help="finetune --ctc: add the CTC loss against the text the teacher reads (label-free)")
    parser.add_argument("--freeze-oscillations", type=float, default=0.0, metavar="F",
                        help="finetune --freeze-oscillations F (0: off)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY", help="finetune --ema DECAY (0: off)")
    parser.add_argument("--train-seed", type=int, default=0, help="finetune --seed (the order of the lines)")
    parser.add_argument("--heldout", type=int, default=1024, help="more labelled lines to score on (0: none)")
    parser.add_argument("--heldout-seed", type=int, default=1002, help="of the generator, for --heldout")
    parser.add_argument("--check-lines", type=int, default=32, help="lines to compare torch and onnxruntime on")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train-labelled"]:
        return train_labelled(argv[1:])
    args = parser.parse_args(argv)
    args.models_dir, args.work = args.models_dir.resolve(), args.work.resolve()  # the children run in --work

    fp32 = args.models_dir / f"{MODEL}.onnx"
    lines = render(args, args.lines, args.seed) / "lines"
    count = len(list(lines.glob("*.npz")))
    qc = [sys.executable, "-m", "qcompiler"]
    kind = "labelled" if args.labelled else "ctc" if args.ctc else "finetuned"
    kind += f"-freeze{args.freeze_oscillations:g}" if args.freeze_oscillations else ""
    kind += f"-ema{args.ema:g}" if args.ema else ""
    kind += f"-seed{args.train_seed}" if args.train_seed else ""
    start_dir, tuned_dir = args.work / "adaround", args.work / f"{kind}-{args.lines}-{args.steps}"
    start = start_dir / f"{MODEL}.onnx"
    for folder in (start_dir, tuned_dir):
        folder.mkdir(parents=True, exist_ok=True)
    result = {"lines": count, "seed": args.seed, "steps": args.steps, "blocks": args.blocks,
              "temperature": args.temperature, "threads": args.threads, "labelled": args.labelled, "ctc": args.ctc,
              "freeze_oscillations": args.freeze_oscillations, "ema": args.ema, "train_seed": args.train_seed}
    if not start.exists():
        result["compile"] = timed(qc + ["compile", str(fp32), "-o", str(start), "--calib",
                                        str(args.models_dir / "data" / "calib_npz" / MODEL), "--pipeline", "w4a8",
                                        "--objective", "size", "-q"], args.work)
    settings = [str(args.steps), str(args.blocks), str(args.temperature), str(args.threads)]
    if args.labelled:
        result["finetune"] = timed([sys.executable, str(Path(__file__).resolve()), "--train-labelled", str(start),
                                    str(tuned_dir / f"{MODEL}.onnx"), str(fp32), str(lines.parent / "labelled")]
                                   + settings, args.work)
    else:
        result["finetune"] = timed(qc + ["finetune", str(start), "-o", str(tuned_dir / f"{MODEL}.onnx"), "--teacher",
                                         str(fp32), "--data", str(lines), "--steps", settings[0], "--blocks",
                                         settings[1], "--temperature", settings[2], "--threads", settings[3]]
                                   + (["--ctc", OUTPUT] if args.ctc else [])
                                   + ["--freeze-oscillations", str(args.freeze_oscillations), "--ema", str(args.ema),
                                      "--seed", str(args.train_seed)], args.work)
    for label, folder in (("adaround", start_dir), ("finetuned", tuned_dir)):
        scores = score(args.evaluator_python, args.evaluator, args.models_dir, folder, MODEL)
        result["fp32"], result[label] = scores["fp32"], scores["cand"]
    if args.heldout:
        data = render(args, args.heldout, args.heldout_seed) / "rendered"
        result["heldout"] = {"lines": args.heldout, "seed": args.heldout_seed}
        for label, folder in (("adaround", start_dir), ("finetuned", tuned_dir)):
            scores = score(args.evaluator_python, args.evaluator, args.models_dir, folder, MODEL, data)
            result["heldout"]["fp32"], result["heldout"][label] = scores["fp32"], scores["cand"]
    checked = sorted(lines.glob("*.npz"))[:args.check_lines]
    result["deployed_vs_trained"] = deployed_vs_trained(tuned_dir / f"{MODEL}.onnx",
                                                        (dict(np.load(path)) for path in checked))
    result.update(written_model(start, tuned_dir / f"{MODEL}.onnx", checked[0]))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
