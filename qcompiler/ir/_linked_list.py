"""An ordered set with constant-time insertion next to a member and constant-time removal.

It holds the node order of a :class:`~qcompiler.ir.Graph`. A Python list costs O(n) per edit in the
middle (``list.index`` to find the anchor, then the shift of everything after it), so a pass that puts
a QuantizeLinear after every producer was quadratic in the size of the graph. Here each member has a
link to its neighbours, found through a dict keyed by the member, and a sentinel link closes the ring,
so the two ends need no special case. Members are compared the way the dict compares them: nodes by
identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Link(Generic[T]):
    __slots__ = ("item", "prev", "next")

    def __init__(self, item: T | None, prev: _Link[T] | None = None, next: _Link[T] | None = None):
        self.item = item
        self.prev: _Link[T] = self if prev is None else prev
        self.next: _Link[T] = self if next is None else next


class LinkedSet(Generic[T]):
    """Members in order; ``insert_before``/``insert_after``/``remove`` cost O(1) per member moved.

    Adding a member that is already present raises ValueError (before anything changes); naming an
    anchor or removing a member that is absent raises KeyError.
    """

    def __init__(self, items: Iterable[T] = ()):
        self._root: _Link[T] = _Link(None)
        self._links: dict[T, _Link[T]] = {}
        self.append(items)

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, item: object) -> bool:
        return item in self._links

    def __iter__(self) -> Iterator[T]:
        """Members from first to last; the set must not be edited during the walk."""
        root = self._root
        link = root.next
        while link is not root:
            yield link.item
            link = link.next

    def index(self, item: T) -> int:
        """Position of ``item``: O(n), a walk from the front."""
        target, link, position = self._links[item], self._root.next, 0
        while link is not target:
            link, position = link.next, position + 1
        return position

    def append(self, items: Iterable[T]) -> None:
        """Add ``items`` at the end, in order."""
        self._splice(self._root.prev, items)

    def prepend(self, items: Iterable[T]) -> None:
        """Add ``items`` at the front, in order (the first of them becomes the first member)."""
        self._splice(self._root, items)

    def insert_before(self, anchor: T, items: Iterable[T]) -> None:
        self._splice(self._links[anchor].prev, items)

    def insert_after(self, anchor: T, items: Iterable[T]) -> None:
        self._splice(self._links[anchor], items)

    def remove(self, item: T) -> None:
        link = self._links.pop(item)
        link.prev.next, link.next.prev = link.next, link.prev

    def _splice(self, after: _Link[T], items: Iterable[T]) -> None:
        """Link ``items`` in order between ``after`` and its successor."""
        if not isinstance(items, (tuple, list)):
            items = list(items)
        links = self._links
        if not links.keys().isdisjoint(items):
            raise ValueError(f"{next(item for item in items if item in links)!r} is already a member")
        if len(items) > 1 and len(set(items)) != len(items):
            raise ValueError("an item is added twice")
        end = after.next
        for item in items:
            link = _Link(item, after, end)
            links[item] = after.next = end.prev = link
            after = link
