"""Weight-only quantization of MiniLM-L6 (a BERT sentence encoder): qcompiler's RTN, HQQ, AWQ and GPTQ at
4 bits, blocks of 32 and 128, scored by the realmodels evaluator (cosine of the sentence embeddings to FP32,
SQNR, the retrieval metric), with onnxruntime's ``MatMulNBitsQuantizer`` (RTN, its default) beside them.

    python benchmarks/weight_only_minilm.py MODELS_DIR [--blocks 32,128] [--methods rtn,hqq,awq,gptq]
        [--symmetric|--asymmetric] [--evaluator-python PY] [--evaluator PATH] [--work DIR] [--json OUT]

``MODELS_DIR`` is laid out as the realmodels kit writes it (``minilm_l6.onnx``, calibration feeds in
``data/calib_npz/minilm_l6/``, which AWQ and GPTQ use). Every candidate is a MatMulNBits model (the
embedding tables as blocked DequantizeLinear + Gather; onnxruntime's quantizer leaves them float).
onnxruntime's quantizer imports ``onnx_ir`` (``pip install onnx-ir``). Results: ``results/weight_only_minilm.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx

import qcompiler
from minilm_accuracy import add_evaluator_arguments, evaluate

MODEL = "minilm_l6"


def onnxruntime_rtn(source: Path, output: Path, block_size: int, symmetric: bool) -> None:
    """onnxruntime's own 4-bit weight-only quantizer, default algorithm (RTN), on every MatMul."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric)
    quantizer = MatMulNBitsQuantizer(onnx.load(source), block_size=block_size, is_symmetric=symmetric,
                                     algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(output), use_external_data_format=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--blocks", default="32,128")
    parser.add_argument("--methods", default="rtn,hqq,awq,gptq,ort-rtn")
    parser.add_argument("--asymmetric", dest="symmetric", action="store_false")
    add_evaluator_arguments(parser, "qcompiler-weight-only-minilm")
    args = parser.parse_args(argv)

    source = args.models_dir / f"{MODEL}.onnx"
    calib = args.models_dir / "data" / "calib_npz" / MODEL
    rows = []
    print("| method | block | size vs FP32 | compile s | cosine mean | cosine min | SQNR dB | metric FP32 | metric |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for block in map(int, args.blocks.split(",")):
        for method in args.methods.split(","):
            folder = args.work / f"{method}-{block}"
            folder.mkdir(parents=True, exist_ok=True)
            output = folder / f"{MODEL}.onnx"
            start = time.perf_counter()
            if method == "ort-rtn":
                onnxruntime_rtn(source, output, block, args.symmetric)
            else:
                qcompiler.compile(source, output, pipeline="weight-only", weight_bits=4, block_size=block,
                                  symmetric=args.symmetric, weight_method=method,
                                  calib=calib if method in ("awq", "gptq") else None)
            row = {"method": method, "block_size": block, "symmetric": args.symmetric,
                   "compile_s": round(time.perf_counter() - start, 1),
                   "size_ratio": round(output.stat().st_size / source.stat().st_size, 4)}
            scores = evaluate(args.evaluator_python, args.evaluator, args.models_dir, folder, MODEL)["models"][MODEL]
            cand, fp32 = scores.get("cand", {}), scores.get("fp32", {})
            metric = next(k for k in fp32 if k != "n")
            row.update(cos_mean=cand.get("cos_mean"), cos_min=cand.get("cos_min"), sqnr_db=cand.get("sqnr_db"),
                       metric=metric, metric_fp32=fp32[metric], metric_cand=cand.get(metric))
            rows.append(row)
            print(f"| {method} | {block} | {row['size_ratio']:.3f} | {row['compile_s']} | {row['cos_mean']:.4f} | "
                  f"{row['cos_min']:.4f} | {row['sqnr_db']:.1f} | {row['metric_fp32']:.3f} | {row['metric_cand']:.3f} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
