"""The order of a graph's nodes: the ring they are linked in, and the graph edits built on it."""

from __future__ import annotations

import pytest
from onnx import TensorProto

from qcompiler.errors import InternalError
from qcompiler.ir import Graph, Node, Value


def _relu(name: str, source: Value) -> Node:
    return Node("Relu", [source], [Value(name, TensorProto.FLOAT, (2,))], name=name)


def test_graph_prepend_insert_and_remove():
    graph = Graph("g")
    x = Value("x", TensorProto.FLOAT, (2,))
    graph.inputs.append(x)
    b = _relu("b", x)
    graph.append(b)
    a = _relu("a", x)
    graph.prepend(a)
    c, d = _relu("c", b.outputs[0]), _relu("d", x)
    graph.insert_after(b, c)
    graph.insert_before(b, d)
    assert graph.nodes == (a, d, b, c) and [graph.index(n) for n in graph.nodes] == [0, 1, 2, 3]
    graph.remove([b, c])
    assert graph.nodes == (a, d) and b.graph is None
    assert [use.node for use in x.uses()] == [a, d]


def test_graph_insert_next_to_a_stranger_adopts_nothing():
    graph, other = Graph("g"), Graph("h")
    x = Value("x", TensorProto.FLOAT, (2,))
    stranger = _relu("s", x)
    other.append(stranger)
    new = _relu("n", x)
    with pytest.raises(InternalError, match="not a node of graph 'g'"):
        graph.insert_after(stranger, new)
    with pytest.raises(InternalError, match="not a node of graph 'g'"):
        graph.index(stranger)
    assert new.graph is None and len(graph) == 0


def test_graph_adding_a_node_twice_adopts_nothing():
    graph = Graph("g")
    x = Value("x", TensorProto.FLOAT, (2,))
    first, twice = _relu("a", x), _relu("b", x)
    with pytest.raises(InternalError, match="added twice"):
        graph.append(first, twice, twice)
    assert first.graph is None and twice.graph is None and len(graph) == 0


def test_graph_edits_keep_the_order_and_count():
    graph = Graph("g")
    x = Value("x", TensorProto.FLOAT, (2,))
    graph.inputs.append(x)
    b, d = _relu("b", x), _relu("d", x)
    graph.append(b, d)
    a, c, e, f = (_relu(name, x) for name in "acef")
    graph.prepend(a)
    graph.insert_before(d, c)
    graph.insert_after(d, e)
    graph.append(f)
    assert [n.name for n in graph] == list("abcdef") and len(graph) == 6
    graph.remove([a, f, c])
    assert [n.name for n in graph] == list("bde") and len(graph) == 3
    graph.insert_after(e, a)  # a removed node can come back elsewhere
    assert [n.name for n in graph] == list("bdea") and graph.index(a) == 3
    graph.remove([b, d, e, a])
    assert graph.nodes == () and len(graph) == 0
    graph.append(b)
    assert graph.nodes == (b,)


def test_reorder_takes_each_node_once():
    graph = Graph("g")
    x = Value("x", TensorProto.FLOAT, (2,))
    a, b = _relu("a", x), _relu("b", x)
    graph.append(a, b)
    for wrong in ([a], [a, a], [a, _relu("c", x)]):
        with pytest.raises(InternalError, match="each of its nodes once"):
            graph.reorder(wrong)
    assert graph.nodes == (a, b)
    graph.reorder([b, a])
    assert graph.nodes == (b, a) and len(graph) == 2
