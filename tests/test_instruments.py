"""The checking harness itself: ``run_checked`` catches each way a pass can break its contract.

The pass tests rely on it, so these tests make sure a broken pass would really fail them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.errors import InternalError, PassError
from qcompiler.ir.testing import parse
from qcompiler.pass_manager import Pass, PassResult

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4] x) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
  h = Mul(x, w)
  y = Relu(h)
}"""


@dataclass
class Lies(Pass):
    """Renames a node but reports no change."""

    preserves_semantics = True

    def call(self, model):
        model.graph.nodes[0].name = "renamed"
        return PassResult(model, False)


@dataclass
class ClaimsChange(Pass):
    """Changes nothing but reports a change."""

    preserves_semantics = True

    def call(self, model):
        return PassResult(model, True)


@dataclass
class AppendsRelu(Pass):
    """Adds one more Relu every time it runs: not idempotent."""

    preserves_semantics = True

    def call(self, model):
        graph = model.graph
        out = graph.outputs[0]
        relu = ir.Node("Relu", [out], [ir.Value(graph.unique_name("again"), out.dtype, out.shape)])
        graph.append(relu)
        graph.replace_output(out, relu.outputs[0])
        return PassResult(model, True)


@dataclass
class DoublesWeight(Pass):
    """Changes the outputs while claiming to preserve them."""

    preserves_semantics = True
    idempotent = False

    def call(self, model):
        w = model.graph.initializers["w"]
        w.const = w.const * 2
        return PassResult(model, True)


@dataclass
class BreaksIR(Pass):
    """Leaves a stale use behind."""

    def call(self, model):
        node = model.graph.nodes[1]
        node._inputs = (model.graph.inputs[0],)
        return PassResult(model, True)


def test_a_well_behaved_run_passes(run_checked):
    result = run_checked(parse(MODEL))
    assert not result.modified and result.records == []


# instrument failures are InternalErrors naming the pass; a verify failure is a PassError naming it
@pytest.mark.parametrize("bad_pass, error, message", [
    (Lies(), InternalError, "'Lies' reported modified=False but changed"),
    (ClaimsChange(), InternalError, "'ClaimsChange' reported modified=True but did not change"),
    (AppendsRelu(), InternalError, "'AppendsRelu' is not idempotent"),
    (DoublesWeight(), InternalError, "'DoublesWeight' claims to preserve semantics but changed outputs"),
    (BreaksIR(), PassError, "'BreaksIR' failed .*IR verification failed"),
], ids=lambda p: type(p).__name__ if isinstance(p, Pass) else None)
def test_run_checked_catches(run_checked, bad_pass, error, message):
    with pytest.raises(error, match=message):
        run_checked(parse(MODEL), bad_pass)


def test_run_checked_uses_given_feeds(run_checked):
    # with all-negative inputs Relu outputs zeros either way, so doubling w is not visible
    feeds = {"x": -np.ones((3, 4), np.float32)}
    assert run_checked(parse(MODEL), DoublesWeight(), feeds=feeds).modified
