"""Graph rewrites that passes share: bypassing a node, inserting nodes right after a value's producer."""

from __future__ import annotations

from ._core import Graph, Node, Value


def bypass(graph: Graph, node: Node) -> bool:
    """Make the readers of ``node.outputs[0]`` read ``node.inputs[0]`` and remove the node.

    When the output is a graph output, the input takes over its name (so the model's interface is
    unchanged); that is impossible when the input is itself a graph input, initializer or output, and
    then the node is kept. A node whose other outputs are read or returned is kept too. Returns
    whether the node was removed.
    """
    source, result = node.inputs[0], node.outputs[0]
    returned = set(map(id, graph.outputs))
    if any(out is not None and out is not result and (out.uses() or id(out) in returned)
           for out in node.outputs):
        return False  # another output (e.g. a Dropout mask) is read or returned: the node stays
    if any(v is result for v in graph.outputs):
        boundary = any(v is source for v in graph.inputs + graph.outputs) or source.const is not None
        if boundary:
            return False
        graph.replace_output(result, source)
        if source.shape is None:
            source.shape = result.shape
        source.dtype = source.dtype or result.dtype
    result.replace_all_uses_with(source)
    graph.remove(node)
    return True


def insert_after_producer(graph: Graph, value: Value, *nodes: Node) -> None:
    """Insert ``nodes`` right after ``value``'s producer (at the start of the graph for an input or
    initializer), so they may read ``value`` and precede all of its readers."""
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, *nodes)
    elif len(graph):
        graph.insert_before(graph.nodes[0], *nodes)
    else:
        graph.append(*nodes)
