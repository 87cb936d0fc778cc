"""Task metrics of the benchmark models, on the evaluation sets ``datasets.py`` writes.

``evaluate(models, eval_dir, threads)`` runs the FP32 model and its candidates batch by batch on
``eval_dir/batch_NNN.npz``, decodes the output each task scores, and returns per model the task metric
and the agreement of that output with FP32's (``qcompiler.bench.agreement``: SQNR, cosine, top-1,
max abs). The task is named in ``eval_dir/labels.json``:

=======================  ===================================================================
task                     metric (``headline`` first)
=======================  ===================================================================
ocr_rec_ppocrv4          line accuracy (exact text) and character accuracy (1 - CER), CTC greedy
                         decoding with the dictionary of the FP32 model's metadata "character"
ocr_cls_ppocr_mobile_v2  0 / 180 degree accuracy
ocr_det_ppocrv4          hmean of boxes at IoU >= 0.5: probability map > 0.3, connected components
                         with mean score >= 0.5, grown by DB's unclip distance (ratio 1.6)
crepe_tiny               raw pitch accuracy: frames within 50 cents of the true f0 (weighted mean of
                         the 9 bins around the peak; 3 frames dropped at each end)
minilm_l6                topic 1-NN accuracy: the nearest other sentence (cosine) has the same topic
all_mpnet_base_v2        retrieval R@1: a docstring's first line finds the rest of it as the nearest
                         (cosine) of the documents; MRR as well
=======================  ===================================================================
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qcompiler.bench.agreement import Agreement
from qcompiler.bench.session import open_session


class OcrRec:
    headline = "line_acc"

    def __init__(self, fp32: Path):
        import onnx

        metadata = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
        self.chars = ["<blank>"] + metadata["character"].splitlines() + [" "]  # PaddleOCR's CTC layout

    def decode(self, output: np.ndarray, labels: list) -> list[str]:
        texts = []
        for steps in output.argmax(-1):
            kept = [i for j, i in enumerate(steps) if i and (j == 0 or i != steps[j - 1]) and i < len(self.chars)]
            texts.append(" ".join("".join(self.chars[i] for i in kept).split()))
        return texts

    def score(self, predictions: list[str], labels: list[str]) -> dict:
        errors = [edit_distance(p, t) / max(len(t), 1) for p, t in zip(predictions, labels)]
        return {"line_acc": float(np.mean([p == t for p, t in zip(predictions, labels)])),
                "char_acc": 1 - float(np.mean(errors))}


class OcrCls:
    headline = "acc_0_180"

    def __init__(self, fp32: Path):
        pass

    def decode(self, output: np.ndarray, labels: list) -> list[int]:
        return output.argmax(1).tolist()

    def score(self, predictions: list[int], labels: list[int]) -> dict:
        return {"acc_0_180": float(np.mean(np.array(predictions) == np.array(labels)))}


class OcrDet:
    headline = "hmean"

    def __init__(self, fp32: Path):
        pass

    @staticmethod
    def boxes(probability: np.ndarray) -> list[list[float]]:
        from scipy import ndimage

        labelled, _ = ndimage.label(probability > 0.3, structure=np.ones((3, 3)))
        found = []
        for index, region in enumerate(ndimage.find_objects(labelled), start=1):
            height, width = region[0].stop - region[0].start, region[1].stop - region[1].start
            if min(height, width) < 3 or probability[region][labelled[region] == index].mean() < 0.5:
                continue
            grow = width * height * 1.6 / (2 * (width + height))
            found.append([region[1].start - grow, region[0].start - grow, region[1].stop + grow,
                          region[0].stop + grow])
        return found

    def decode(self, output: np.ndarray, labels: list) -> list[list[list[float]]]:
        return [self.boxes(page[0]) for page in output]

    def score(self, predictions: list, labels: list) -> dict:
        hits = sum(matches(p, t) for p, t in zip(predictions, labels))
        found, truth = sum(map(len, predictions)), sum(map(len, labels))
        precision, recall = hits / max(found, 1), hits / max(truth, 1)
        hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"hmean": hmean, "precision": precision, "recall": recall}


class Crepe:
    headline = "rpa_50c"
    CENTS = 20 * np.arange(360) + 1997.3794084376191  # torchcrepe's bin centres, cents above 10 Hz
    EDGE = 3

    def __init__(self, fp32: Path):
        pass

    def decode(self, output: np.ndarray, labels: list) -> list[np.ndarray]:
        window = output.argmax(1)[:, None] + np.arange(-4, 5)
        inside = (window >= 0) & (window < 360)
        window = np.clip(window, 0, 359)
        weights = np.take_along_axis(output, window, 1) * inside
        return [(weights * self.CENTS[window]).sum(1) / np.maximum(weights.sum(1), 1e-12)]

    def score(self, predictions: list[np.ndarray], labels: list) -> dict:
        errors = np.concatenate([np.abs(p - np.asarray(t))[self.EDGE:-self.EDGE]
                                 for p, t in zip(predictions, labels)])
        return {"rpa_50c": float(np.mean(errors < 50))}


class MiniLM:
    headline = "topic_1nn_acc"
    output = "sentence_embedding"

    def __init__(self, fp32: Path):
        pass

    def decode(self, output: np.ndarray, labels: list) -> list[np.ndarray]:
        embeddings = output.astype(np.float64)
        return list(embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12))

    def score(self, predictions: list[np.ndarray], labels: list[str]) -> dict:
        similarity = np.stack(predictions) @ np.stack(predictions).T
        np.fill_diagonal(similarity, -np.inf)
        topics = np.array(labels)
        return {"topic_1nn_acc": float(np.mean(topics[similarity.argmax(1)] == topics))}


class Retrieval(MiniLM):
    headline = "retrieval_r1"

    def score(self, predictions: list[np.ndarray], labels: list) -> dict:
        queries = {i: e for (kind, i), e in zip(labels, predictions) if kind == "q"}
        documents = {i: e for (kind, i), e in zip(labels, predictions) if kind == "d"}
        order = sorted(queries)
        similarity = np.stack([queries[i] for i in order]) @ np.stack([documents[i] for i in order]).T
        ranks = (similarity > similarity.diagonal()[:, None]).sum(1)
        return {"retrieval_r1": float(np.mean(ranks == 0)), "mrr": float(np.mean(1.0 / (ranks + 1)))}


TASKS = {"ocr_rec_ppocrv4": OcrRec, "ocr_cls_ppocr_mobile_v2": OcrCls, "ocr_det_ppocrv4": OcrDet,
         "crepe_tiny": Crepe, "minilm_l6": MiniLM, "all_mpnet_base_v2": Retrieval}


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def matches(predicted: list, truth: list, threshold: float = 0.5) -> int:
    """Greedy one-to-one matches at IoU >= threshold."""
    used, count = set(), 0
    for box in predicted:
        scores = [(iou(box, t), j) for j, t in enumerate(truth) if j not in used]
        best = max(scores, default=(0.0, -1))
        if best[0] >= threshold:
            used.add(best[1])
            count += 1
    return count


def has_evaluator(eval_dir: Path) -> bool:
    labels = eval_dir / "labels.json"
    return labels.is_file() and json.loads(labels.read_text())["task"] in TASKS


def evaluate(models: dict[str, Path], eval_dir: Path, threads: int) -> dict[str, dict]:
    """Task metric of every model in ``models`` (``"fp32"`` first) and its agreement with FP32.

    A candidate that fails to load or run gets ``{"error": message}``; the others go on.
    """
    spec = json.loads((eval_dir / "labels.json").read_text())
    task = TASKS[spec["task"]](models["fp32"])
    sessions, errors = {}, {}
    for key, path in models.items():
        try:
            sessions[key] = open_session(str(path), threads)
        except Exception as exc:
            errors[key] = str(exc).strip().splitlines()[0][:300]
    if "fp32" in errors:
        raise RuntimeError(f"{models['fp32']}: {errors['fp32']}")
    output = getattr(task, "output", sessions["fp32"].get_outputs()[0].name)
    predictions = {key: [] for key in sessions}
    agreement = {key: Agreement() for key in sessions if key != "fp32"}
    labels = []
    for path, batch_labels in zip(sorted(eval_dir.glob("batch_*.npz")), spec["labels"]):
        with np.load(path) as data:
            feed = {key: data[key] for key in data.files}
        labels += batch_labels
        reference = None
        for key, session in sessions.items():
            if key in errors:
                continue
            try:
                result = session.run([output], feed)[0]
            except Exception as exc:
                errors[key] = str(exc).strip().splitlines()[0][:300]
                continue
            predictions[key] += task.decode(result, batch_labels)
            if reference is None:
                reference = result
            else:
                agreement[key].update(reference, result)
    results = {}
    for key in models:
        if key in errors:
            results[key] = {"error": errors[key]}
            continue
        results[key] = {"headline": task.headline, **task.score(predictions[key], labels)}
        if key != "fp32":
            results[key].update(agreement[key].result())
    return results
