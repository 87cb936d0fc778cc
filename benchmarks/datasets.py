"""Calibration and evaluation data of the benchmark models, made offline and deterministically.

Sources: English text of the Python documentation (``pydoc_data.topics``, in the standard library),
DejaVu fonts where Pillow finds them (its built-in font otherwise: scores then differ), and synthesised
harmonic tones with an exact pitch. Calibration and evaluation sets use different seeds (different
sentences for MiniLM), so they never overlap.

========================  ===========================================  ==================================
model                     evaluation set                               calibration set
========================  ===========================================  ==================================
ocr_rec_ppocrv4           200 rendered text lines, [1,3,48,W]          64 lines
ocr_cls_ppocr_mobile_v2   the 200 lines upright and rotated 180 deg    the 64 lines, both ways
ocr_det_ppocrv4           24 pages 640x480 -> [1,3,736,992], boxes     8 pages
crepe_tiny                40 tones of 0.5 s (51 frames each), f0       16 tones
minilm_l6                 up to 30 sentences of each of 12 doc topics  up to 5 more per topic
all_mpnet_base_v2         160 stdlib docstrings and their first lines  64 texts of other docstrings
========================  ===========================================  ==================================

all_mpnet_base_v2's retrieval set: the docstrings of the public functions and classes of a fixed list of
standard-library modules; a query is a docstring's first line, its document the rest. Which docstrings
exist depends on the Python version that builds the data (written into ``labels.json``).

Layout: ``OUT/data/calib_npz/<name>/batch_NNN.npz`` and ``OUT/data/eval_npz/<name>/batch_NNN.npz`` (one
input batch per file, keys = the model's input names, arrays as the model takes them), and
``OUT/data/eval_npz/<name>/labels.json``: ``{"task": name, "labels": [labels of batch 0, ...]}``, read by
``tasks.py``. Preprocessing follows the models' own pipelines (RapidOCR, torchcrepe, sentence-transformers).
"""

from __future__ import annotations

import json
import math
import platform
import random
import re
from pathlib import Path

import numpy as np

EVAL_SEED, CALIB_SEED = 0, 1
OCR_HEIGHT, OCR_CLS_WIDTH, OCR_DET_SIDE = 48, 192, 736
CREPE_FRAME, CREPE_HOP, SAMPLE_RATE = 1024, 160, 16000


# -- text -----------------------------------------------------------------------------------------


def doc_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return topics


def text_spans(rng: random.Random, count: int) -> list[str]:
    """``count`` runs of 2-5 consecutive words (4-40 characters) of the Python documentation."""
    topics = doc_topics()
    words = [w for key in sorted(topics) for w in topics[key].split()
             if len(w) < 16 and re.fullmatch(r"[A-Za-z0-9.,;:'()!?-]+", w)]
    spans = []
    while len(spans) < count:
        start = rng.randrange(len(words) - 6)
        span = " ".join(words[start:start + rng.randint(2, 5)])
        if 4 <= len(span) <= 40:
            spans.append(span)
    return spans


def doc_sentences(per_topic: int, skip: int) -> list[tuple[str, str]]:
    """(sentence, topic) pairs: plain sentences of the 12 topics richest in them, ``skip`` first ones left out."""
    topics = doc_topics()
    found = {}
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        found[key] = [s for s in re.split(r"(?<=[.!?]) ", text)
                      if 30 <= len(s) <= 200 and s.isascii() and not re.search(r"[*`|=<>{}\[\]\\]", s)]
    chosen = sorted(sorted(found, key=lambda k: (-len(found[k]), k))[:12])
    pairs = []
    for key in chosen:
        sentences = found[key]
        random.Random(EVAL_SEED).shuffle(sentences)
        pairs += [(s, key) for s in sentences[skip:skip + per_topic]]
    return pairs


def tokenizer(path: Path, pad_id: int = 0, pad_token: str = "[PAD]"):
    """The model's tokenizer: truncation at 128 tokens, padding to the longest of a batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(128)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tok


def tokenize(tok, texts: list[str], token_types: bool = True) -> dict[str, np.ndarray]:
    encoded = tok.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in encoded], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], np.int64)}
    if token_types:
        feed["token_type_ids"] = np.array([e.type_ids for e in encoded], np.int64)
    return feed


STDLIB_MODULES = ("argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "datetime",
                  "difflib", "email.utils", "fnmatch", "fractions", "functools", "glob", "gzip", "heapq", "html",
                  "inspect", "ipaddress", "itertools", "json", "logging", "mimetypes", "os", "pathlib", "pickle",
                  "platform", "pprint", "queue", "random", "shlex", "shutil", "statistics", "string", "subprocess",
                  "tarfile", "tempfile", "textwrap", "threading", "typing", "urllib.parse", "uuid", "warnings",
                  "zipfile")


def docstring_pairs() -> list[tuple[str, str, str]]:
    """(qualified name, first line, rest) of the public functions and classes of :data:`STDLIB_MODULES` whose
    docstring has a one-line summary of 20-160 characters and at least 80 more characters, sorted by name."""
    import importlib
    import inspect

    pairs, seen = [], set()
    for module_name in STDLIB_MODULES:
        module = importlib.import_module(module_name)
        for name, member in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(member) or inspect.isclass(member)) \
                    or getattr(member, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(member) or ""
            first, _, rest = doc.partition("\n\n")
            first, rest = " ".join(first.split()), " ".join(rest.split())
            if 20 <= len(first) <= 160 and len(rest) >= 80 and first.isascii() and first not in seen:
                seen.add(first)
                pairs.append((f"{module_name}.{name}", first, rest))
    return pairs


# -- rendered text (PP-OCR) -----------------------------------------------------------------------


def font_files() -> list[str | None]:
    from PIL import ImageFont

    try:
        folder = Path(ImageFont.truetype("DejaVuSans.ttf", 12).path).parent
    except OSError:
        return [None]
    return sorted(str(p) for p in folder.glob("DejaVu*.ttf") if "ExtraLight" not in p.name) or [None]


def font(path: str | None, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def render_line(rng: random.Random, text: str, faces: list):
    """A text line: random face, size 22-40 px, colours and padding; blurred half of the time."""
    from PIL import Image, ImageDraw, ImageFilter

    face = font(rng.choice(faces), rng.randint(22, 40))
    left, top, right, bottom = face.getbbox(text)
    pad_x, pad_y = rng.randint(4, 14), rng.randint(3, 9)
    background = tuple(rng.randint(170, 255) for _ in range(3))
    image = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), background)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=face,
                               fill=tuple(rng.randint(0, 90) for _ in range(3)))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image


def render_page(rng: random.Random, spans: list[str], faces: list):
    """A 640x480 page with 3-6 lines of ``spans``; returns the image and the lines' boxes [x0, y0, x1, y1]."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.new("RGB", (640, 480), tuple(rng.randint(190, 255) for _ in range(3)))
    draw, boxes, y = ImageDraw.Draw(image), [], rng.randint(10, 40)
    for _ in range(rng.randint(3, 6)):
        text, face = spans.pop(), font(rng.choice(faces), rng.randint(18, 36))
        left, top, right, bottom = face.getbbox(text)
        width, height = right - left, bottom - top
        if y + height > 470:
            break
        x = rng.randint(10, 630 - width)
        draw.text((x - left, y - top), text, font=face, fill=tuple(rng.randint(0, 80) for _ in range(3)))
        boxes.append([x, y, x + width, y + height])
        y += height + rng.randint(12, 40)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image, boxes


def bgr_normalized(image) -> np.ndarray:
    """PIL image -> [3,H,W] float32, BGR channel order (PaddleOCR reads with OpenCV), (x / 255 - 0.5) / 0.5."""
    pixels = np.asarray(image.convert("RGB"), np.float32)[:, :, ::-1] / 255.0
    return np.ascontiguousarray(((pixels - 0.5) / 0.5).transpose(2, 0, 1))


def ocr_rec_input(image) -> np.ndarray:
    """Line -> [1,3,48,W]: height 48, the aspect ratio kept (width 16..1600)."""
    from PIL import Image

    width, height = image.size
    new_width = max(16, min(math.ceil(OCR_HEIGHT * width / height), 1600))
    return bgr_normalized(image.resize((new_width, OCR_HEIGHT), Image.BILINEAR))[None]


def ocr_cls_input(image) -> np.ndarray:
    """Line -> [3,48,192]: as ocr_rec_input with the width capped at 192, zero-padded on the right."""
    from PIL import Image

    width, height = image.size
    new_width = min(OCR_CLS_WIDTH, math.ceil(OCR_HEIGHT * width / height))
    x = np.zeros((3, OCR_HEIGHT, OCR_CLS_WIDTH), np.float32)
    x[:, :, :new_width] = bgr_normalized(image.resize((new_width, OCR_HEIGHT), Image.BILINEAR))
    return x


def ocr_det_input(image) -> tuple[np.ndarray, tuple[float, float]]:
    """Page -> [1,3,H,W] with the shorter side 736 and both sides multiples of 32, and the (x, y) factors
    from page to map coordinates."""
    from PIL import Image

    width, height = image.size
    scale = OCR_DET_SIDE / min(width, height)
    new_width, new_height = round(width * scale / 32) * 32, round(height * scale / 32) * 32
    x = bgr_normalized(image.resize((new_width, new_height), Image.BILINEAR))[None]
    return x, (new_width / width, new_height / height)


def text_lines(seed: int, count: int) -> list[tuple[object, str]]:
    rng, faces = random.Random(seed), font_files()
    return [(render_line(rng, text, faces), text) for text in text_spans(rng, count)]


# -- audio (CREPE) --------------------------------------------------------------------------------


def tone(rs: np.random.RandomState, seconds: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A harmonic tone, f0 55-1000 Hz (log-uniform) with 1 % vibrato, 1-8 harmonics, white noise at
    5-30 dB SNR; returns the audio and f0 per sample."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    f0 = float(np.exp(rs.uniform(np.log(55), np.log(1000))))
    f = f0 * (1 + 0.01 * np.sin(2 * np.pi * rs.uniform(3, 7) * t))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    count = rs.randint(1, 9)
    amplitudes = rs.uniform(0.2, 1, count) / np.arange(1, count + 1)
    x = sum(a * np.sin((k + 1) * phase + rs.uniform(0, 2 * np.pi)) for k, a in enumerate(amplitudes))
    x = 0.5 * x / np.abs(x).max()
    x = x + rs.randn(len(x)) * np.sqrt((x ** 2).mean() / 10 ** (rs.uniform(5, 30) / 10))
    return x.astype(np.float32), f.astype(np.float32)


def crepe_frames(audio: np.ndarray) -> np.ndarray:
    """Audio -> [n,1024] frames every 160 samples (frame i centred on sample 160 i, zero padding),
    each normalised to zero mean and unit standard deviation (as torchcrepe does)."""
    padded = np.pad(audio, CREPE_FRAME // 2)
    count = 1 + (len(padded) - CREPE_FRAME) // CREPE_HOP
    frames = np.stack([padded[i * CREPE_HOP:i * CREPE_HOP + CREPE_FRAME] for i in range(count)])
    frames = frames - frames.mean(1, keepdims=True)
    return (frames / np.maximum(frames.std(1, keepdims=True), 1e-10)).astype(np.float32)


# -- per model: (calibration feeds, evaluation feeds, evaluation labels per batch) ---------------------


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def ocr_rec(out: Path, name: str):
    calib = [{name: ocr_rec_input(image)} for image, _ in text_lines(CALIB_SEED, 64)]
    lines = text_lines(EVAL_SEED, 200)
    return calib, [{name: ocr_rec_input(image)} for image, _ in lines], [[text] for _, text in lines]


def ocr_cls(out: Path, name: str):
    def both_ways(lines):
        return [(ocr_cls_input(image.rotate(angle)), label) for image, _ in lines
                for angle, label in ((0, 0), (180, 1))]

    calib = [{name: np.stack([x for x, _ in b])} for b in batches(both_ways(text_lines(CALIB_SEED, 64)), 16)]
    evaluation = batches(both_ways(text_lines(EVAL_SEED, 200)), 32)
    return calib, [{name: np.stack([x for x, _ in b])} for b in evaluation], [[y for _, y in b] for b in evaluation]


def ocr_det(out: Path, name: str):
    def pages(seed, count):
        rng, faces = random.Random(seed), font_files()
        spans = text_spans(rng, count * 6)
        for _ in range(count):
            image, boxes = render_page(rng, spans, faces)
            x, (sx, sy) = ocr_det_input(image)
            yield x, [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]

    evaluation = list(pages(EVAL_SEED, 24))
    return ([{name: x} for x, _ in pages(CALIB_SEED, 8)], [{name: x} for x, _ in evaluation],
            [[boxes] for _, boxes in evaluation])


def crepe_tiny(out: Path, name: str):
    def tones(seed, count):
        rs = np.random.RandomState(seed)
        for _ in range(count):
            audio, f0 = tone(rs)
            frames = crepe_frames(audio)
            centres = np.minimum(np.arange(len(frames)) * CREPE_HOP, len(f0) - 1)
            yield frames, (1200 * np.log2(f0[centres] / 10.0)).round(3).tolist()

    evaluation = list(tones(EVAL_SEED, 40))
    return ([{name: x} for x, _ in tones(CALIB_SEED, 16)], [{name: x} for x, _ in evaluation],
            [[cents] for _, cents in evaluation])


def minilm_l6(out: Path, name: str):
    tok = tokenizer(out / "minilm_l6_tokenizer.json")
    calib = [tokenize(tok, [s for s, _ in b]) for b in batches(doc_sentences(5, skip=30), 8)]
    evaluation = batches(doc_sentences(30, skip=0), 16)
    return calib, [tokenize(tok, [s for s, _ in b]) for b in evaluation], [[t for _, t in b] for b in evaluation]


def all_mpnet_base_v2(out: Path, name: str):
    """Every 4th docstring (by name) for calibration, the others shuffled; 160 of them for the retrieval
    set, in batches of 8 queries and their 8 documents (labels ``["q"|"d", pair index]``)."""
    tok = tokenizer(out / "all_mpnet_base_v2_tokenizer.json", pad_id=1, pad_token="<pad>")
    pairs = docstring_pairs()
    calib = [text for i, (_, first, rest) in enumerate(pairs) if i % 4 == 3 for text in (first, rest)]
    evaluation = [p for i, p in enumerate(pairs) if i % 4 != 3]
    random.Random(EVAL_SEED).shuffle(evaluation)
    evaluation = evaluation[:160]
    feeds, labels = [], []
    for start, group in enumerate(batches(evaluation, 8)):
        texts = [first for _, first, _ in group] + [rest for _, _, rest in group]
        feeds.append(tokenize(tok, texts, token_types=False))
        index = range(8 * start, 8 * start + len(group))
        labels.append([["q", i] for i in index] + [["d", i] for i in index])
    return [tokenize(tok, b, token_types=False) for b in batches(calib[:64], 8)], feeds, labels


BUILDERS = {"ocr_rec_ppocrv4": ocr_rec, "ocr_cls_ppocr_mobile_v2": ocr_cls, "ocr_det_ppocrv4": ocr_det,
            "crepe_tiny": crepe_tiny, "minilm_l6": minilm_l6, "all_mpnet_base_v2": all_mpnet_base_v2}


def write_feeds(folder: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("batch_*.npz"):
        old.unlink()
    for index, feed in enumerate(feeds):
        np.savez_compressed(folder / f"batch_{index:03d}.npz", **feed)


def write(name: str, out: Path) -> None:
    """Write the calibration feeds, evaluation feeds and labels of model ``name`` (in ``out``)."""
    import onnx

    first_input = onnx.load(str(out / f"{name}.onnx"), load_external_data=False).graph.input[0].name
    calib, evaluation, labels = BUILDERS[name](out, first_input)
    write_feeds(out / "data" / "calib_npz" / name, calib)
    write_feeds(out / "data" / "eval_npz" / name, evaluation)
    spec = {"task": name, "labels": labels, "python": platform.python_version()}
    (out / "data" / "eval_npz" / name / "labels.json").write_text(json.dumps(spec))
