"""The LLM benchmark's perplexity (benchmarks/llm_weight_only.py) on bigram models whose answer is known."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_llm_weight_only", BENCHMARKS / "llm_weight_only.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclass looks its module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def bigram_model(path: Path, table: np.ndarray) -> Path:
    """``logits[0, t] = table[input_ids[0, t]]``: the next-token scores depend on the current token only."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)], "bigram",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", table.shape[1]])],
        [numpy_helper.from_array(table.astype(np.float32), "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_uniform_scores_give_the_vocabulary_size(bench, tmp_path):
    tokens = np.random.default_rng(0).integers(0, 11, 2 * bench.llm_export.CONTEXT)
    model = bigram_model(tmp_path / "uniform.onnx", np.full((11, 11), 3.0))
    assert bench.perplexity(model, tokens, threads=1) == pytest.approx(11.0, rel=1e-6)


def test_bigram_perplexity_counts_each_window_from_its_second_token(bench, tmp_path):
    rng = np.random.default_rng(1)
    table = rng.normal(0, 2, (7, 7))
    tokens = rng.integers(0, 7, 2 * bench.llm_export.CONTEXT)
    log_probs = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
    losses = [-log_probs[window[i], window[i + 1]]
              for window in tokens.reshape(2, -1) for i in range(len(window) - 1)]
    model = bigram_model(tmp_path / "bigram.onnx", table)
    assert bench.perplexity(model, tokens, threads=1) == pytest.approx(np.exp(np.mean(losses)), rel=1e-5)
