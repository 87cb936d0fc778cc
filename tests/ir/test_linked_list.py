"""The linked ordered set that holds a graph's nodes, and the graph edits built on it."""

from __future__ import annotations

import pytest
from onnx import TensorProto

from qcompiler.errors import InternalError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir._linked_list import LinkedSet


def test_edits_keep_the_order():
    s = LinkedSet("bd")
    s.prepend("a")
    s.insert_before("d", "c")
    s.insert_after("d", "ef")
    s.append("g")
    assert list(s) == list("abcdefg") and len(s) == 7
    s.remove("a")
    s.remove("g")
    s.remove("d")
    assert list(s) == list("bcef") and len(s) == 4
    assert [s.index(x) for x in "bcef"] == [0, 1, 2, 3]
    assert "d" not in s and "e" in s


def test_a_failed_insert_changes_nothing():
    s = LinkedSet("abc")
    with pytest.raises(ValueError, match="already a member"):
        s.insert_after("a", ["x", "c"])
    with pytest.raises(ValueError, match="added twice"):
        s.append(["x", "y", "x"])
    with pytest.raises(KeyError):
        s.insert_before("z", ["x"])
    with pytest.raises(KeyError):
        s.remove("z")
    assert list(s) == list("abc")


def test_a_removed_item_can_come_back_elsewhere():
    s = LinkedSet("abc")
    s.remove("a")
    s.insert_after("c", "a")
    assert list(s) == list("bca")
    for item in "bca":
        s.remove(item)
    assert list(s) == [] and len(s) == 0
    s.prepend("z")
    assert list(s) == ["z"]


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
