"""Equal values kept once: what the caches keep of many objects repeats itself.

Every Cluster of a credential carries the same namespace, credential reference,
revision and, mostly, the same conditions (one message per credential and revision,
the same transition second for a burst). Parsed from JSON one watch event at a time,
each copy is a new object. ``Interner`` hands out one shared object per distinct
value instead.

Shared values must never be changed in place: the caches' values are read-only
(``cache/store.py``), and a dict handed out here is a copy of the one given, so a
caller that goes on to change its own body changes nothing shared.

The table is bounded: when it holds ``limit`` values it starts again (values handed
out stay valid; only later copies are not matched with earlier ones), so values that
come and go (transition times, revisions) never pile up.
"""

from __future__ import annotations

from typing import Any

SCALARS = (str, int, float, bool, type(None))


class Interner:
    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._strings: dict[str, str] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self._dicts: dict[tuple[object, ...], dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._strings) + len(self._pairs) + len(self._dicts)

    def _room(self) -> None:
        if len(self) >= self.limit:
            self._strings.clear()
            self._pairs.clear()
            self._dicts.clear()

    def text(self, value: str) -> str:
        """The shared copy of a string."""
        found = self._strings.get(value)
        if found is None:
            self._room()
            self._strings[value] = found = value
        return found

    def pair(self, first: str, second: str) -> tuple[str, str]:
        """The shared copy of a pair of strings (a key: namespace and name)."""
        found = self._pairs.get((first, second))
        if found is None:
            found = (self.text(first), self.text(second))
            self._room()
            self._pairs[found] = found
        return found

    def flat(self, mapping: dict[str, Any]) -> dict[str, Any]:
        """The shared copy of a dict of scalars (a condition, a reference); a dict
        holding anything else is copied, not shared. Types are part of the match
        (``1 == True`` in Python, not in JSON)."""
        if not all(isinstance(item, SCALARS) for item in mapping.values()):
            return dict(mapping)
        found = self._dicts.get(_flat_key(mapping))
        if found is None:
            found = {self.text(name): self.text(item) if isinstance(item, str) else item
                     for name, item in mapping.items()}  # fmt: skip
            self._room()
            self._dicts[_flat_key(found)] = found  # the shared strings, not the caller's
        return found


def _flat_key(mapping: dict[str, Any]) -> tuple[object, ...]:
    """Names and values in one tuple; a value that is not a string with its type."""
    key: list[object] = []
    for name, item in mapping.items():
        key += (name, item if isinstance(item, str) else (type(item), item))
    return tuple(key)


SHARED = Interner()  # what the caches keep (``bindings.ClusterInfo.from_body``)
