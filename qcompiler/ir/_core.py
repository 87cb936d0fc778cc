"""The core IR types: Value, Node, Graph, Model.

The vocabulary and invariants follow onnx-ir (``onnx/ir-py``): values are SSA, compared by identity
and hashable; each value has at most one producer; use lists are kept in sync by the IR itself, so a
pass never edits a raw list of inputs. Subgraphs (``If``/``Loop``/``Scan`` bodies) are kept as opaque
``onnx.GraphProto`` attributes: they round-trip unchanged, and the outer values they read are
recorded as *captures* of the node (uses with index ``-1``) so that no pass removes or renames them
behind the subgraph's back.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import onnx

from ..errors import InternalError
from .plan import QuantPlan

CAPTURE_INDEX = -1
"""Use index of a value read implicitly by a subgraph of the using node."""


class Usage(NamedTuple):
    """One use of a value: ``node.inputs[index] is value`` (or a capture when index is -1)."""

    node: Node
    index: int


_usage = functools.partial(tuple.__new__, Usage)
"""``Usage(*pair)`` for a ``(node, index)`` pair, without the argument handling of a NamedTuple's ``__new__``."""


_TENSOR_DTYPES: dict[np.dtype, int] = {}


def _tensor_dtype(dtype: np.dtype) -> int:
    """``onnx.helper.np_dtype_to_tensor_dtype``, remembered per dtype: a rewrite makes initializers by the 10k."""
    found = _TENSOR_DTYPES.get(dtype)
    if found is None:
        found = _TENSOR_DTYPES[dtype] = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    return found


class Value:
    """An SSA value: a graph input, an initializer (``const`` set) or a node output.

    Attributes:
        name: unique name within the model.
        dtype: ``onnx.TensorProto`` element type (an int) or None when unknown.
        shape: tuple of ints (static), strings (symbolic) or None (unknown), or None for unknown rank.
        const: the constant data of an initializer, else None.
        quant: the quantization decision (:class:`qcompiler.ir.QuantSpec`) or None.
        type_proto: the full ``onnx.TypeProto`` for non-tensor values (sequences, optionals, maps).
        doc_string: kept from the file.

    Values and nodes have ``__slots__``: a quantized graph holds hundreds of thousands of them, and a
    rewrite such as insert-qdq spends most of its time creating them. For the same reason the uses are
    kept as ``{node: index}`` (a tuple of indices, in the order they were added, for a node that reads the
    value more than once), not as one :class:`Usage` object per edge, which is made when asked for
    (:meth:`uses`): the long-lived objects of a graph are what each collection of the cyclic garbage
    collector traverses.
    """

    __slots__ = ("_name", "const", "dtype", "shape", "type_proto", "doc_string", "quant", "_producer",
                 "_output_index", "_uses")

    def __init__(
        self,
        name: str,
        dtype: int | None = None,
        shape: Sequence[int | str | None] | None = None,
        const: np.ndarray | None = None,
        *,
        type_proto: onnx.TypeProto | None = None,
        doc_string: str = "",
    ):
        self._name = name
        self.const = const
        if const is not None:
            if dtype is None:
                dtype = _tensor_dtype(const.dtype)
            if shape is None:
                shape = const.shape
        self.dtype = dtype
        self.shape = None if shape is None else tuple(shape)
        self.type_proto = type_proto
        self.doc_string = doc_string
        self.quant = None
        self._producer: Node | None = None
        self._output_index: int | None = None
        self._uses: dict[Node, int | tuple[int, ...]] = {}

    def __repr__(self) -> str:
        return f"Value({self.name!r})"

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        """Rename the value, and the references to it inside the subgraphs that capture it.

        Subgraphs are kept as GraphProtos that refer to outer values by name, so a rename that did
        not follow into them would leave them reading a name that no longer exists, or another value.
        """
        old, self._name = self._name, name
        if old == name:
            return
        for node in [use.node for use in self.uses() if use.index == CAPTURE_INDEX]:
            for graph in subgraphs_of(node.attrs):
                _rename_in_graph(graph, old, name)

    def producer(self) -> Node | None:
        """The node that computes this value, or None for graph inputs and initializers."""
        return self._producer

    def output_index(self) -> int | None:
        """Position of this value in its producer's outputs."""
        return self._output_index

    def uses(self) -> tuple[Usage, ...]:
        """A snapshot of every (node, input index) reading this value, captures included: the nodes in
        first-use order, each node's indices in the order it came to read the value at them."""
        uses = self._uses
        if tuple in map(type, uses.values()):  # a node reads the value more than once
            return tuple(_usage((node, index)) for node, held in uses.items()
                         for index in (held if type(held) is tuple else (held,)))
        return tuple(map(_usage, uses.items()))

    def consumers(self) -> tuple[Node, ...]:
        """The distinct nodes reading this value, in first-use order."""
        return tuple(self._uses)

    def is_constant(self) -> bool:
        return self.const is not None

    def replace_all_uses_with(self, other: Value) -> None:
        """Make every node that reads this value read ``other`` instead.

        Graph outputs are not touched (use :meth:`Graph.replace_output`). A capture by a subgraph is
        rewritten by renaming the reference inside the subgraph.
        """
        if other is not self:
            self.redirect(self.uses(), other)

    def redirect(self, uses: Iterable[Usage], other: Value) -> None:
        """Make the given uses of this value read ``other`` instead: inputs through :meth:`Node.set_input`,
        captures by renaming the reference inside the capturing subgraph."""
        for node, index in uses:
            if index == CAPTURE_INDEX:
                node._replace_capture(self, other)
            else:
                node.set_input(index, other)

    def _add_use(self, node: Node, index: int) -> None:
        uses = self._uses
        held = uses.get(node)
        if held is None:
            uses[node] = index
        elif type(held) is int:
            if held != index:
                uses[node] = (held, index)
        elif index not in held:
            uses[node] = held + (index,)

    def _remove_use(self, node: Node, index: int) -> None:
        uses = self._uses
        held = uses.get(node)
        if held == index:
            del uses[node]
        elif type(held) is tuple and index in held:
            rest = tuple(i for i in held if i != index)
            uses[node] = rest[0] if len(rest) == 1 else rest

    def _has_use(self, node: Node, index: int) -> bool:
        """Whether ``node`` reads this value at ``index``: O(1), not a scan of :meth:`uses`."""
        held = self._uses.get(node)
        return held == index or (type(held) is tuple and index in held)


def _subgraph_references(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """Names a GraphProto reads and names it defines (recursively, through nested subgraphs)."""
    read: set[str] = set()
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        read.update(name for name in node.input if name)
        defined.update(name for name in node.output if name)
        for attr in node.attribute:
            for sub in _attr_graphs(attr):
                sub_read, sub_defined = _subgraph_references(sub)
                read |= sub_read - sub_defined
    read.update(v.name for v in graph.output)
    return read, defined


def _attr_graphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _rename_in_graph(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in _attr_graphs(attr):
                _rename_in_graph(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def subgraphs_of(attrs: dict[str, Any]) -> list[onnx.GraphProto]:
    """Every GraphProto held by a node's attributes."""
    graphs: list[onnx.GraphProto] = []
    for value in attrs.values():
        if isinstance(value, onnx.GraphProto):
            graphs.append(value)
        elif isinstance(value, list) and value and isinstance(value[0], onnx.GraphProto):
            graphs.extend(value)
    return graphs


def captured_names(attrs: dict[str, Any]) -> list[str]:
    """Outer-scope names read by the subgraphs in ``attrs``, sorted."""
    names: set[str] = set()
    for graph in subgraphs_of(attrs):
        read, defined = _subgraph_references(graph)
        names |= read - defined
    return sorted(names)


_NO_ATTR_TYPES: Mapping[str, int] = MappingProxyType({})
"""The ``attr_types`` of a node made by a pass, shared: nodes are made by the 10k, and only loading fills it."""


class Node:
    """One operator application.

    ``inputs`` and ``outputs`` are tuples; ``None`` stands for an omitted optional input or output.
    Rewire with :meth:`set_input`; the IR keeps use lists in sync. A node in a graph links to its neighbours
    in the graph's order (``_prev``/``_next``, see :class:`Graph`). ``attrs`` maps attribute names to
    Python values (ints, floats, strings as ``str``, lists, numpy arrays for tensors, ``onnx.GraphProto``
    for subgraphs). ``attr_types`` remembers the ONNX attribute type of loaded attributes so that, e.g.,
    an empty list round-trips with its type.
    """

    __slots__ = ("op_type", "domain", "name", "doc_string", "attrs", "attr_types", "graph", "_outputs",
                 "_inputs", "_captures", "_prev", "_next")

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value | None] | int = 1,
        *,
        attrs: dict[str, Any] | None = None,
        domain: str = "",
        name: str = "",
        doc_string: str = "",
        attr_types: dict[str, int] | None = None,
        captures: Sequence[Value] = (),
    ):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.doc_string = doc_string
        self.attrs: dict[str, Any] = dict(attrs) if attrs else {}
        self.attr_types: Mapping[str, int] = dict(attr_types) if attr_types else _NO_ATTR_TYPES
        self.graph: Graph | None = None
        self._prev = self._next = None
        if type(outputs) is int:
            outputs = [Value("") for _ in range(outputs)]
        self._outputs: tuple[Value | None, ...] = (outputs := tuple(outputs))
        for index, out in enumerate(outputs):
            if out is not None:
                if out._producer is not None:
                    raise InternalError(
                        f"value {out.name!r} already has a producer ({out._producer.op_type}); "
                        f"a value can be produced by one node only"
                    )
                out._producer = self
                out._output_index = index
        self._inputs: tuple[Value | None, ...] = (inputs := tuple(inputs))
        for index, value in enumerate(inputs):
            if value is not None:
                if self in value._uses:
                    value._add_use(self, index)
                else:  # _add_use, inlined for the first use: nodes are made by the 10k
                    value._uses[self] = index
        self._captures: tuple[Value, ...] = tuple(captures)
        for value in self._captures:
            value._add_use(self, CAPTURE_INDEX)

    def __repr__(self) -> str:
        return f"Node({self.op_type}, name={self.name!r})"

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        return self._outputs

    @property
    def captures(self) -> tuple[Value, ...]:
        """Outer values read by this node's subgraphs."""
        return self._captures

    def set_input(self, index: int, value: Value | None) -> None:
        """Make input ``index`` read ``value`` (None omits an optional input)."""
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old._remove_use(self, index)
        inputs = list(self._inputs)
        inputs[index] = value
        self._inputs = tuple(inputs)
        if value is not None:
            value._add_use(self, index)

    def append_input(self, value: Value | None) -> None:
        """Add an input at the end (e.g. a bias for a Conv that had none)."""
        self._inputs = self._inputs + (value,)
        if value is not None:
            value._add_use(self, len(self._inputs) - 1)

    def _replace_capture(self, old: Value, new: Value) -> None:
        for graph in subgraphs_of(self.attrs):
            _rename_in_graph(graph, old.name, new.name)
        old._remove_use(self, CAPTURE_INDEX)
        # dict.fromkeys: when ``new`` was captured already, it stays listed once
        self._captures = tuple(dict.fromkeys(new if v is old else v for v in self._captures))
        new._add_use(self, CAPTURE_INDEX)

    def _detach(self) -> None:
        """Drop this node's uses of its inputs and its claim on its outputs (on removal)."""
        for value in self._outputs:
            if value is not None and value._producer is self:
                value._producer, value._output_index = None, None
        for index, value in enumerate(self._inputs):
            if value is not None:
                value._remove_use(self, index)
        for value in self._captures:
            value._remove_use(self, CAPTURE_INDEX)

    def has_subgraphs(self) -> bool:
        return bool(subgraphs_of(self.attrs))


class _Ring:
    """The sentinel that closes a graph's ring of nodes: its ``_next`` is the first node, its ``_prev`` the
    last (itself when the graph has none), so neither end of the order needs a special case."""

    __slots__ = ("_prev", "_next")

    def __init__(self) -> None:
        self._prev = self._next = self


class Graph:
    """A computation graph: inputs, initializers, nodes in topological order, outputs.

    Iterating a graph yields a snapshot of its nodes, so passes may edit it while they iterate. The
    nodes form a doubly linked ring through their own ``_prev``/``_next`` slots, closed by a sentinel, and
    a node's ``graph`` says whose ring it is in: inserting next to a node and removing nodes cost O(1) per
    node whatever the size of the graph, with no link object or index to keep beside the nodes (a Python
    list costs O(n) per edit in the middle, which made a pass that puts a QuantizeLinear after every
    producer quadratic). Finding a node's position (:meth:`index`) is O(n).
    """

    def __init__(self, name: str = "graph", doc_string: str = ""):
        self.name = name
        self.doc_string = doc_string
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.value_info: dict[str, Value] = {}
        self.metadata: dict[str, str] = {}
        self._ring = _Ring()
        self._count = 0
        self._name_counter = itertools.count()
        self._taken_names: set[str] | None = None

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return self._count

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._walk())

    def _walk(self) -> Iterator[Node]:
        """The nodes in order, live: the graph must not be edited during the walk."""
        ring = self._ring
        node = ring._next
        while node is not ring:
            yield node
            node = node._next

    def index(self, node: Node) -> int:
        """Position of ``node`` in the graph's order: O(n)."""
        self._check_member(node)
        for position, member in enumerate(self._walk()):
            if member is node:
                return position
        raise InternalError(f"{node!r} is not in the order of graph {self.name!r}")

    def values(self) -> Iterator[Value]:
        """Every value once: inputs, initializers, then node outputs in order.

        Only inputs and initializers can repeat (an input with a default is also an initializer); a
        node output is no input or initializer and has one producer, so the outputs need no check."""
        leading = {id(value): value for value in itertools.chain(self.inputs, self.initializers.values())}
        yield from leading.values()
        for node in self._walk():
            for value in node._outputs:
                if value is not None:
                    yield value

    # -- naming --------------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """A name not used by any value or node of this graph, derived from ``base``.

        The set of taken names is built once and then kept as a superset: names handed out here and
        the names of nodes and initializers added later are added to it (removals leave it alone,
        which only costs a suffix), so a pass that creates many values stays linear.
        """
        taken = self._taken()
        candidate = base
        while not candidate or candidate in taken:
            candidate = f"{base or 'v'}__{next(self._name_counter)}"
        taken.add(candidate)
        return candidate

    def _taken(self) -> set[str]:
        if self._taken_names is None:
            taken = {value.name for value in self.inputs}
            taken.update(self.initializers)
            for node in self._walk():
                taken.add(node.name)
                taken.update([value._name for value in node._outputs if value is not None])
            self._taken_names = taken
        return self._taken_names

    def unique_names(self, bases: Sequence[str]) -> list[str]:
        """``[self.unique_name(base) for base in bases]``, in one set operation when no base is taken, empty
        or repeated (the usual case: names derived from distinct value names), which a pass that names
        thousands of new values at once then pays for at C speed."""
        taken = self._taken()
        fresh = set(bases)
        if len(fresh) == len(bases) and "" not in fresh and taken.isdisjoint(fresh):
            taken |= fresh
            return list(bases)
        return [self.unique_name(base) for base in bases]

    # -- editing -------------------------------------------------------------------------------
    def _check_member(self, node: Node) -> None:
        if node.graph is not self:
            raise InternalError(f"{node!r} is not a node of graph {self.name!r}")

    def _adopt(self, nodes: tuple[Node, ...]) -> tuple[Node, ...]:
        """Claim ``nodes`` for this graph, all or none (they must belong to no graph, each once)."""
        for node in nodes:
            if node.graph is not None:
                raise InternalError(f"{node!r} already belongs to a graph")
        if len(nodes) > 1 and len(set(nodes)) != len(nodes):
            raise InternalError("a node is added twice")
        taken = self._taken_names
        for node in nodes:
            node.graph = self
            if taken is not None:
                taken.add(node.name)
                for value in node._outputs:
                    if value is not None:
                        taken.add(value._name)
        return nodes

    def _link(self, after: Node | _Ring, nodes: tuple[Node, ...]) -> None:
        """Link ``nodes`` (adopted) in order between ``after`` and its successor."""
        end = after._next
        for node in nodes:
            node._prev = after
            after._next = after = node
        after._next = end
        end._prev = after
        self._count += len(nodes)

    def append(self, *nodes: Node) -> None:
        """Add nodes at the end, in order."""
        self._link(self._ring._prev, self._adopt(nodes))

    def prepend(self, *nodes: Node) -> None:
        """Add nodes at the start, in order: the place for nodes that read only graph inputs and
        initializers (e.g. the quantization of a weight)."""
        self._link(self._ring, self._adopt(nodes))

    def insert_before(self, anchor: Node, *nodes: Node) -> None:
        """Add nodes, in order, right before ``anchor`` (a node of this graph)."""
        self._check_member(anchor)
        self._link(anchor._prev, self._adopt(nodes))

    def insert_after(self, anchor: Node, *nodes: Node) -> None:
        """Add nodes, in order, right after ``anchor`` (a node of this graph)."""
        self._check_member(anchor)
        self._link(anchor, self._adopt(nodes))

    def insert_after_each(self, placements: Sequence[tuple[Node | None, tuple[Node, ...]]]) -> None:
        """For each ``(anchor, nodes)``, add ``nodes`` in order right after ``anchor`` (a node of this graph, or
        None for the start of the graph), as one :meth:`insert_after` or :meth:`prepend` call after another
        would; the nodes are checked and claimed in one go, for a pass that inserts thousands."""
        for anchor, _ in placements:
            if anchor is not None and anchor.graph is not self:
                self._check_member(anchor)
        self._adopt(tuple(node for _, nodes in placements for node in nodes))
        for anchor, nodes in placements:
            self._link(self._ring if anchor is None else anchor, nodes)

    def remove(self, nodes: Node | Iterable[Node], *, safe: bool = True) -> None:
        """Remove nodes, in time linear in their number (and, with ``safe``, in the graph outputs).
        With ``safe``, refuse when an output is still used outside the removed set or is a graph
        output."""
        nodes = [nodes] if isinstance(nodes, Node) else list(nodes)
        removing = set(nodes)
        strangers = [node for node in nodes if node.graph is not self]
        if strangers:  # checked first, so that a failed call leaves the graph as it was
            raise InternalError(f"cannot remove {strangers[0]!r}: it is not a node of graph {self.name!r}")
        if safe:
            outputs = set(map(id, self.outputs))
            for node in nodes:
                for value in node.outputs:
                    if value is None:
                        continue
                    if id(value) in outputs:
                        raise InternalError(f"cannot remove {node!r}: {value.name!r} is a graph output")
                    users = [use.node for use in value.uses() if use.node not in removing]
                    if users:
                        raise InternalError(
                            f"cannot remove {node!r}: {value.name!r} is still used by {users[0]!r}"
                        )
        for node in dict.fromkeys(nodes):
            node._prev._next, node._next._prev = node._next, node._prev
            node._prev = node._next = node.graph = None
            node._detach()
        self._count -= len(removing)

    def add_initializer(self, value: Value) -> Value:
        """Register a constant value as an initializer (its name must be unique)."""
        self._check_initializer(value, ())
        self.initializers[value.name] = value
        if self._taken_names is not None:
            self._taken_names.add(value.name)
        return value

    def add_initializers(self, values: Sequence[Value]) -> None:
        """:meth:`add_initializer` for each of ``values``, in order, the checks done in one go (none is added
        when one is refused): for a pass that adds thousands."""
        fresh = {value.name: value for value in values}
        if len(fresh) != len(values) or not self.initializers.keys().isdisjoint(fresh) \
                or any(value.const is None for value in values):
            for position, value in enumerate(values):
                self._check_initializer(value, [v.name for v in values[:position]])
        self.initializers.update(fresh)
        if self._taken_names is not None:
            self._taken_names.update(fresh)

    def _check_initializer(self, value: Value, also_taken: Collection[str]) -> None:
        if value.const is None:
            raise InternalError(f"initializer {value.name!r} has no data")
        if value.name in self.initializers or value.name in also_taken:
            raise InternalError(f"an initializer named {value.name!r} already exists")

    def drop_initializer(self, value: Value) -> bool:
        """Delete the initializer ``value`` if nothing reads it and it is not a graph output or input; an
        input with a default (an initializer of the same name, as exports before IR version 4 list every
        weight) keeps it, so the model's interface is unchanged. True when it was deleted."""
        if value.uses() or self.initializers.get(value.name) is not value \
                or any(v is value for v in self.inputs) or any(v is value for v in self.outputs):
            return False
        del self.initializers[value.name]
        return True

    def remove_unused_initializers(self) -> int:
        """Drop initializers nothing reads; returns how many were removed."""
        output_ids = set(map(id, self.outputs)) | set(map(id, self.inputs))
        unused = [n for n, v in self.initializers.items() if not v.uses() and id(v) not in output_ids]
        for name in unused:
            del self.initializers[name]
        return len(unused)

    def replace_output(self, old: Value, new: Value) -> None:
        """Make the graph output ``old`` be ``new``; ``new`` takes over ``old``'s name."""
        self.replace_outputs({old: new})

    def replace_outputs(self, replacements: dict[Value, Value]) -> None:
        """:meth:`replace_output` for every ``old: new`` pair, in one pass over the graph outputs (every
        slot of an output listed more than once).

        A pass that replaces many outputs one by one would search the outputs once per value.
        """
        pending = dict(replacements)
        for position, old in enumerate(self.outputs):
            new = replacements.get(old)
            if new is not None:
                if pending.pop(old, None) is not None:  # an output listed twice is renamed once
                    name = old.name
                    old.name = self.unique_name(name + "_replaced")
                    new.name = name
                self.outputs[position] = new
        if pending:
            raise InternalError(f"{next(iter(pending)).name!r} is not an output of graph {self.name!r}")

    def substitute(self, old: Value, new: Value) -> None:
        """Put ``new`` in ``old``'s place: every reader, the graph-output slot, the name, the type.

        ``old`` gets a fresh name and no readers, so its producer can then be removed.
        """
        name = old.name
        old.name = self.unique_name(name + "_replaced")
        new.name = name
        new.dtype = new.dtype or old.dtype
        new.shape = new.shape if new.shape is not None else old.shape
        self.outputs = [new if v is old else v for v in self.outputs]
        old.replace_all_uses_with(new)

    def sort(self) -> None:
        """Stable topological sort: keeps the current order wherever it is already valid."""
        from .analysis import topological_order

        self.reorder(topological_order(self))

    def reorder(self, nodes: Sequence[Node]) -> None:
        """Put the graph's nodes in the order of ``nodes``, which must be each of them once."""
        if len(nodes) != self._count or any(node.graph is not self for node in nodes) or len(set(nodes)) != len(nodes):
            raise InternalError(f"a new order of graph {self.name!r} must list each of its nodes once")
        ring = self._ring
        ring._prev = ring._next = ring
        self._count = 0
        self._link(ring, tuple(nodes))


class Model:
    """An ONNX model: a graph plus opset imports, metadata and model-local functions.

    ``functions`` are kept as ``onnx.FunctionProto`` objects and written back unchanged; ``plan`` holds
    the quantization decisions passes hand each other (:class:`~qcompiler.ir.plan.QuantPlan`).
    """

    def __init__(self, graph: Graph, opset_imports: dict[str, int] | None = None):
        self.graph = graph
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 13})
        self.ir_version: int = onnx.IR_VERSION
        self.producer_name = "qcompiler"
        self.producer_version = ""
        self.domain = ""
        self.model_version = 0
        self.doc_string = ""
        self.metadata: dict[str, str] = {}
        self.functions: list[onnx.FunctionProto] = []
        self.plan = QuantPlan()

    @property
    def opset(self) -> int:
        """The opset version of the default ONNX domain."""
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 1))

    def clone(self) -> Model:
        """A copy with its specs and plan: the graph, its attributes and small initializers are copied (through
        the serialized form); the weights (initializers past :data:`~.serde.SHAPE_DATA_ELEMENTS` elements)
        are shared as read-only views, so a clone costs no second copy of them. Change a weight of either
        model by giving its value a new array, never by writing into the array (the other would see it)."""
        from .serde import from_weightless, weightless_proto

        copy = from_weightless(weightless_proto(self), self, read_only=True)
        specs = {v.name: v.quant for v in self.graph.values() if v.quant is not None}
        for value in copy.graph.values():
            value.quant = specs.get(value.name)
        copy.plan = self.plan.remapped(copy)
        return copy

    def update_from(self, other: Model) -> None:
        """Take ``other``'s graph, opsets, IR version and functions (keeping metadata and the plan).

        Used by passes that rebuild the model through another tool (opset conversion, constant
        folding); quantization specs and the plan are carried over by value name, and the graph's doc string and
        ``metadata_props`` (which onnx-graphsurgeon and the version converter drop) are kept.
        """
        specs = {v.name: v.quant for v in self.graph.values() if v.quant is not None}
        other.graph.doc_string = other.graph.doc_string or self.graph.doc_string
        other.graph.metadata = {**self.graph.metadata, **other.graph.metadata}
        self.graph = other.graph
        self.opset_imports = dict(other.opset_imports)
        self.ir_version = other.ir_version
        self.functions = list(other.functions)
        for value in self.graph.values():
            value.quant = specs.get(value.name, value.quant)
        self.plan = self.plan.remapped(self)

    def find_value(self, name: str) -> Value | None:
        """The value of the main graph with this name, or None."""
        for value in self.graph.values():
            if value.name == name:
                return value
        return None
