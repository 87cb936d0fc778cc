"""The suite's task metrics (benchmarks/tasks.py) on outputs whose right answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TASKS_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "tasks.py"


@pytest.fixture(scope="module")
def tasks():
    spec = importlib.util.spec_from_file_location("bench_tasks", TASKS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detector_boxes_find_each_text_region(tasks):
    probability = np.zeros((64, 96), np.float32)
    probability[10:20, 5:45] = 0.9   # a line
    probability[40:50, 30:90] = 0.8  # another
    probability[30:32, 0:2] = 0.9    # a speck: too small to be a box
    boxes = tasks.OcrDet.boxes(probability)
    # DB's map marks shrunk text: each region grows by area * 1.6 / perimeter on every side
    grow = [40 * 10 * 1.6 / (2 * 50), 60 * 10 * 1.6 / (2 * 70)]
    truth = [[5 - grow[0], 10 - grow[0], 45 + grow[0], 20 + grow[0]],
             [30 - grow[1], 40 - grow[1], 90 + grow[1], 50 + grow[1]]]
    assert np.allclose(boxes, truth)
    assert tasks.matches(boxes, truth) == 2
    assert tasks.matches(boxes, [[0, 0, 10, 10]]) == 0
    scored = tasks.OcrDet(None).score([boxes], [truth])
    assert scored["hmean"] == 1.0
    assert tasks.OcrDet(None).score([boxes[:1]], [truth])["recall"] == 0.5


def test_ctc_decoding_collapses_repeats_and_drops_blanks(tasks):
    rec = object.__new__(tasks.OcrRec)
    rec.chars = ["<blank>", "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 3, 3, 0, 2]  # a a _ a b b ' ' ' ' _ b  ->  "aab b"
    output = np.eye(4, dtype=np.float32)[steps][None]
    assert rec.decode(output, [None]) == ["aab b"]
    assert rec.score(["aab b"], ["aab c"]) == {"line_acc": 0.0, "char_acc": 0.8}


def test_pitch_and_nearest_neighbour_metrics(tasks):
    crepe = tasks.Crepe(None)
    bins = np.array([100] * 10)
    output = np.full((10, 360), 1e-6, np.float32)
    output[np.arange(10), bins] = 1.0
    cents = crepe.decode(output, [None])
    truth = tasks.Crepe.CENTS[bins] + np.array([0, 0, 0, 10, 60, 10, 0, 0, 0, 0])
    assert crepe.score(cents, [truth.tolist()])["rpa_50c"] == 0.75  # 4 middle frames scored, 1 off by 60 cents
    minilm = tasks.MiniLM(None)
    embeddings = minilm.decode(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32), None)
    assert minilm.score(embeddings, ["a", "a", "b", "b"])["topic_1nn_acc"] == 1.0
    assert minilm.score(embeddings, ["a", "b", "a", "b"])["topic_1nn_acc"] == 0.0
