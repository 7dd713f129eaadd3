"""What the operator knows about one kind of object: a store with indexes that knows
whether it has been fully listed.

Like client-go's informer store: watch events ``apply`` and ``delete`` objects, indexes
answer "which objects reference X" without a scan, and ``replace`` takes a full LIST
in, dropping every object the LIST no longer has (a DELETED event missed while a watch
was down) -- the repair happens here, in the cache. ``synced`` is True once a full
LIST has been taken in and no watch gap has happened since; nothing may decide,
write or unlabel on the word of a store that is not synced.

A LIST takes time to answer, and watch events keep coming meanwhile: ``replace``
leaves alone every object that a watch event touched after the LIST was asked for
(the LIST may be older than that event), and does not bring back an object whose
deletion was seen after it was asked for.

Stores are read and written on the event loop only: each call is synchronous, so the
loop is their lock. Values are immutable (frozen dataclasses): a reader keeps a
consistent snapshot of one object across its awaits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
T = TypeVar("T")

Indexer = Callable[[T], Iterable[Hashable]]


@dataclass(frozen=True)
class Change(Generic[T]):
    """One object's change as the store saw it: ``old`` None when it appeared, ``new``
    None when it went away."""

    key: Key
    old: T | None
    new: T | None


class Store(Generic[T]):
    def __init__(self, kind: str, indexers: dict[str, Indexer[T]] | None = None) -> None:
        self.kind = kind
        self.objects: dict[Key, T] = {}
        self.synced = False
        self._indexers = indexers or {}
        self._indexes: dict[str, dict[Hashable, set[Key]]] = {name: {} for name in self._indexers}
        self._touched: dict[Key, float] = {}  # when a watch event last applied each key
        self._deleted: dict[Key, float] = {}  # deletions seen, until the next replace

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.objects)

    def get(self, key: Key) -> T | None:
        return self.objects.get(key)

    def by(self, index: str, value: Hashable) -> set[Key]:
        """The keys whose ``index`` values include ``value`` (a copy)."""
        return set(self._indexes[index].get(value, ()))

    def indexed(self, index: str) -> bool:
        """Some object has a value in ``index``."""
        return bool(self._indexes[index])

    def count(self, index: str, value: Hashable) -> int:
        """How many keys ``by(index, value)`` would give, without copying them."""
        return len(self._indexes[index].get(value, ()))

    def apply(self, key: Key, value: T) -> Change[T]:
        """A watch event: the object as it is now."""
        now = time.monotonic()
        self._touched[key] = now
        self._deleted.pop(key, None)
        return self._set(key, value)

    def delete(self, key: Key) -> Change[T]:
        """A watch event: the object is gone."""
        self._touched.pop(key, None)
        self._deleted[key] = time.monotonic()
        return self._remove(key)

    def unsync(self) -> None:
        """A watch restarted after a gap: events may have been missed until the next
        full LIST is taken in."""
        self.synced = False

    def replace(
        self, listed: dict[Key, T], asked_at: float, namespace: str | None = None
    ) -> list[Change[T]]:
        """Take in a full LIST asked for at ``asked_at`` (``time.monotonic()``); return
        what changed. Marks the store synced. With ``namespace``, the LIST covers that
        namespace only (one informer per namespace): other objects are left alone."""
        changes = []
        for key in list(self.objects):
            if namespace is not None and key[0] != namespace:
                continue
            if key not in listed and self._touched.get(key, 0.0) < asked_at:
                changes.append(self._remove(key))
                self._touched.pop(key, None)
        for key, value in listed.items():
            if self._touched.get(key, 0.0) >= asked_at:
                continue  # a watch event newer than the LIST
            if self._deleted.get(key, 0.0) >= asked_at:
                continue  # deleted after the LIST was asked for
            if self.objects.get(key) != value:
                changes.append(self._set(key, value))
        self._deleted = {
            k: t
            for k, t in self._deleted.items()
            if t >= asked_at or (namespace is not None and k[0] != namespace)
        }
        self.synced = True
        return changes

    def _set(self, key: Key, value: T) -> Change[T]:
        old = self.objects.get(key)
        self.objects[key] = value
        if old is not None:
            self._unindex(key, old)
        self._index(key, value)
        return Change(key, old, value)

    def _remove(self, key: Key) -> Change[T]:
        old = self.objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return Change(key, old, None)

    def _index(self, key: Key, value: T) -> None:
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            for indexed in indexer(value):
                index.setdefault(indexed, set()).add(key)

    def _unindex(self, key: Key, value: T) -> None:
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            for indexed in indexer(value):
                keys = index.get(indexed)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[indexed]
