"""Generated graphs through canonicalize and every quantizing pipeline: a seeded subset of the campaign.

``tests/robustness/graphs.py`` draws the graphs and runs the checks (canonicalize within 1e-4, no
internal error, onnxruntime runs the output, the executor equals onnxruntime bit for bit on every
quantized activation); ``benchmarks/graph_campaign.py`` runs thousands. Deterministic: hypothesis
derandomized, no example database.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from .graphs import check_graph, graphs

REFUSALS: tuple[str, ...] = ()
"""The one-line user errors a valid generated graph may end in (none so far)."""


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs(max_ops=6))
def test_generated_graph_passes_every_pipeline(case):
    proto, feeds = case
    findings = check_graph(proto, feeds)
    assert not findings.problems, findings.problems
    assert all(any(r in message for r in REFUSALS) for _, message in findings.refusals), findings.refusals
