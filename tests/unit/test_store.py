"""The store: indexes, synced, and a re-list that repairs without rolling back.

A LIST is answered while newer watch events arrive; ``replace`` must neither undo those
events nor bring back an object whose deletion came after the LIST was asked for, and
must drop what the watch missed (found in practice: a fan-out killed half-way stalled
at 195 of 200 when a re-list overwrote five fresh deployments)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from cloudcred.cache import Caches
from cloudcred.cache.informers import CustomResourceLister
from cloudcred.cache.store import Store

Key = tuple[str, str]


def store() -> Store[str]:
    return Store("Thing", {"value": lambda value: [value]})


def test_indexes_follow_apply_and_delete() -> None:
    things = store()
    things.apply(("ns", "a"), "x")
    things.apply(("ns", "b"), "x")
    assert things.by("value", "x") == {("ns", "a"), ("ns", "b")}
    assert things.count("value", "x") == 2
    change = things.apply(("ns", "a"), "y")
    assert (change.old, change.new) == ("x", "y")
    assert things.by("value", "x") == {("ns", "b")}
    things.delete(("ns", "b"))
    assert things.by("value", "x") == set()
    assert things.by("value", "y") == {("ns", "a")}


def test_synced_only_after_a_full_list_and_until_a_gap() -> None:
    things = store()
    things.apply(("ns", "a"), "x")
    assert not things.synced, "watch events alone never make a store synced"
    things.replace({("ns", "a"): "x"}, time.monotonic())
    assert things.synced
    things.unsync()
    assert not things.synced


def test_an_event_newer_than_the_list_is_kept() -> None:
    things = store()
    things.apply(("ns", "eu"), "old")
    asked = time.monotonic()
    things.apply(("ns", "eu"), "new")  # arrives while the LIST is answered
    things.replace({("ns", "eu"): "old"}, asked)
    assert things.get(("ns", "eu")) == "new"


def test_an_object_created_during_the_list_is_not_dropped() -> None:
    things = store()
    asked = time.monotonic()
    things.apply(("ns", "new"), "x")
    changes = things.replace({}, asked)
    assert things.get(("ns", "new")) == "x"
    assert changes == []


def test_a_deletion_seen_during_the_list_is_not_undone() -> None:
    things = store()
    things.apply(("ns", "gone"), "x")
    asked = time.monotonic()
    things.delete(("ns", "gone"))
    things.replace({("ns", "gone"): "x"}, asked)
    assert things.get(("ns", "gone")) is None


def test_what_the_watch_missed_is_repaired() -> None:
    things = store()
    things.apply(("ns", "eu"), "old")
    things.apply(("ns", "gone"), "x")
    time.sleep(0.001)
    changes = things.replace({("ns", "eu"): "new", ("ns", "added"): "z"}, time.monotonic())
    assert things.get(("ns", "gone")) is None, "a missed DELETED is a delete"
    assert things.get(("ns", "eu")) == "new", "a missed update is taken in"
    assert things.get(("ns", "added")) == "z"
    assert {(c.key, c.old, c.new) for c in changes} == {
        (("ns", "gone"), "x", None),
        (("ns", "eu"), "old", "new"),
        (("ns", "added"), None, "z"),
    }
    assert things.by("value", "x") == set()


def test_caches_are_synced_only_when_every_store_is() -> None:
    caches = Caches()
    for store_ in caches.stores:
        if store_ is not caches.namespaces:
            store_.replace({}, time.monotonic())
    assert not caches.synced
    assert caches.unsynced_kinds() == ["Namespace"]
    caches.namespaces.replace({}, time.monotonic())
    assert caches.synced


def test_namespace_patterns_follow_kopf() -> None:
    from cloudcred.cache.informers import namespace_matcher

    everything = namespace_matcher([])
    assert everything("acme")
    assert everything("")
    teams = namespace_matcher(["t-*", "acme,!t-secret*"])
    assert teams("t-1")
    assert teams("acme")
    assert not teams("other"), "a namespace no pattern names is not watched"
    assert not teams("t-secret-x"), "an exclusion wins"


def test_a_listing_in_pages_takes_effect_only_after_its_last_page() -> None:
    """The operator lists its kinds in pages (of 500): until the last page is in, the
    store neither drops what the pages so far did not name nor counts as synced, so a
    restarted operator never decides on part of a fleet."""
    things = store()
    things.apply(("ns", "c4"), "x")  # on the last page
    seen: list[tuple[bool, str | None]] = []

    class Pages:
        async def list_pages(self, plural: str) -> AsyncIterator[dict[str, Any]]:
            for page in (["c0", "c1"], ["c2", "c3"], ["c4"]):
                seen.append((things.synced, things.get(("ns", "c4"))))
                for name in page:
                    yield {"metadata": {"namespace": "ns", "name": name}}
                await asyncio.sleep(0)

    changes: list[Any] = []
    lister = CustomResourceLister(things, Pages(), "things",  # type: ignore[arg-type]
                                  lambda body: "x", changes.extend, lambda ns: True)  # fmt: skip
    things.unsync()
    asyncio.run(lister.relist())
    assert seen == [(False, "x")] * 3
    assert things.synced
    assert sorted(things.objects) == [("ns", f"c{i}") for i in range(5)]
