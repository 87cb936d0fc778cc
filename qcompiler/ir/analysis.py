"""Analysis views of a graph built with networkx (views only: the IR is the storage)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

from ..errors import InternalError

if TYPE_CHECKING:
    from ._core import Graph, Node


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """A directed multigraph whose nodes are the IR's Node objects.

    Each edge ``producer -> consumer`` carries ``value`` and ``index`` (the consumer's input
    position, -1 for a capture by a subgraph).
    """
    view = nx.MultiDiGraph()
    for position, node in enumerate(graph):
        view.add_node(node, position=position)
    for node in graph:
        for value in node.outputs:
            if value is None:
                continue
            for use in value.uses():
                if use.node.graph is graph:
                    view.add_edge(node, use.node, value=value, index=use.index)
    return view


def topological_order(graph: Graph) -> list[Node]:
    """Nodes in a topological order that keeps the current order wherever it is valid.

    Raises InternalError naming the nodes of a cycle when there is one.
    """
    view = to_networkx(graph)
    position = nx.get_node_attributes(view, "position")
    try:
        return list(nx.lexicographical_topological_sort(view, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(view)
        names = " -> ".join(f"{edge[0].op_type}({edge[0].name})" for edge in cycle)
        raise InternalError(f"graph {graph.name!r} has a cycle: {names}") from None
