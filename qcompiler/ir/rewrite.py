"""Graph rewrites that passes share: bypassing a node, inserting nodes right after a value's producer."""

from __future__ import annotations

from collections.abc import Iterable

from ._core import Graph, Node, Value


def bypass(graph: Graph, node: Node) -> bool:
    """Make the readers of ``node.outputs[0]`` read ``node.inputs[0]`` and remove the node.

    When the output is a graph output, the input takes over its name (so the model's interface is
    unchanged); that is impossible when the input is itself a graph input, initializer or output, and
    then the node is kept. A node whose other outputs are read or returned is kept too. Returns
    whether the node was removed. Each call looks at every graph input and output: to remove many
    nodes, use :func:`bypass_all`.
    """
    return bool(bypass_all(graph, [node]))


def bypass_all(graph: Graph, nodes: Iterable[Node]) -> list[Node]:
    """:func:`bypass` for each of ``nodes``, in time linear in the size of the graph; the nodes removed.

    ``nodes`` go in graph order and each sees the graph the ones before it left, as with one
    :func:`bypass` call after another; but the graph outputs are looked up in a set, and replaced and
    the nodes removed in one go at the end.
    """
    returned = set(graph.outputs)  # the graph outputs as they are after the replacements so far
    inputs = set(graph.inputs)
    replacements: dict[Value, Value] = {}
    removed = []
    for node in nodes:
        source, result = node.inputs[0], node.outputs[0]
        if any(out is not None and out is not result and (out.uses() or out in returned)
               for out in node.outputs):
            continue  # another output (e.g. a Dropout mask) is read or returned: the node stays
        if result in returned:
            if source in inputs or source in returned or source.const is not None:
                continue
            replacements[result] = source
            returned.remove(result)
            returned.add(source)
            if source.shape is None:
                source.shape = result.shape
            source.dtype = source.dtype or result.dtype
        result.replace_all_uses_with(source)
        removed.append(node)
    graph.replace_outputs(replacements)
    graph.remove(removed)
    return removed


def insert_after_producer(graph: Graph, value: Value, *nodes: Node) -> None:
    """Insert ``nodes`` right after ``value``'s producer (at the start of the graph for an input or
    initializer), so they may read ``value`` and precede all of its readers."""
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, *nodes)
    else:
        graph.prepend(*nodes)
