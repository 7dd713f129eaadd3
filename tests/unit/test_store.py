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
    """The operator lists its kinds in pages (of 100): until the last page is in, the
    store neither drops what the pages so far did not name nor counts as synced, so a
    restarted operator never decides on part of a fleet."""
    things = store()
    things.apply(("ns", "c4"), "x")  # on the last page
    seen: list[tuple[bool, str | None]] = []

    class Pages:
        async def list_pages(self, plural: str, **_: Any) -> AsyncIterator[dict[str, Any]]:
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


# -- what the caches keep of a Cluster ------------------------------------------------


def cluster_body(name: str, when: str = "2026-12-04T10:00:00Z") -> dict[str, object]:
    """A Cluster as the watch brings it: managedFields, fields no reconciler reads."""
    condition = {"type": "CredentialBound", "status": "True", "reason": "Bound",
                 "message": "bound to CloudCredential ns/prod", "lastTransitionTime": when,
                 "observedGeneration": 1}  # fmt: skip
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "generation": 1,
                     "annotations": {"cloudcred.io/redeploy-revision": "v1-new"},
                     "managedFields": [{"manager": "cloudcred-binder", "fieldsV1": {}}]},
        "spec": {"provider": "AWS", "region": "eu-west-3", "credentialRef": {"name": "prod"}},
        "status": {"conditions": [condition], "credential": {"namespace": "ns", "name": "prod"},
                   "deployedRevision": "v1-new", "lastDeployedTime": when,
                   "observedGeneration": 1},
    }  # fmt: skip


def test_a_cluster_keeps_what_the_reconcilers_read_and_shares_what_repeats() -> None:
    import json

    from cloudcred.bindings import ClusterInfo

    # Each body parsed on its own, as watch events are: equal strings, distinct objects.
    a, b = (ClusterInfo.from_body(json.loads(json.dumps(cluster_body(n)))) for n in "ab")
    assert set(a.status) == {"conditions", "credential", "deployedRevision"}
    assert a.deployed_revision == "v1-new"
    assert a.key == ("ns", "a")
    assert a.status["conditions"][0]["message"] == "bound to CloudCredential ns/prod"
    assert a.status["conditions"][0] is b.status["conditions"][0]
    assert a.status["credential"] is b.status["credential"]
    assert a.credential is b.credential
    assert a.marked is b.marked
    # Equal as before: a LIST that repeats what is known changes nothing.
    assert a == ClusterInfo.from_body(cluster_body("a"))
    later = ClusterInfo.from_body(cluster_body("a", when="2026-12-04T10:00:01Z"))
    assert later != a
    assert later.status["conditions"][0] is not a.status["conditions"][0]


def test_shared_values_are_copies_and_types_count() -> None:
    from cloudcred.interning import Interner

    shared = Interner(limit=4)
    mine = {"type": "Ready", "observedGeneration": 1}
    kept = shared.flat(mine)
    assert kept == mine
    assert kept is not mine
    mine["type"] = "Stalled"  # the caller's own body changes: the shared copy does not
    assert kept["type"] == "Ready"
    assert shared.flat({"type": "Ready", "observedGeneration": 1}) is kept
    assert shared.flat({"type": "Ready", "observedGeneration": True})["observedGeneration"] is True
    nested = {"type": "Ready", "extra": {"a": 1}}
    assert shared.flat(nested) == nested
    assert shared.flat(nested) is not shared.flat(nested)
    for number in range(10):  # bounded: the table starts again when full
        shared.text(f"value-{number}")
    assert len(shared) <= 4


def test_a_lister_of_plain_namespaces_lists_each_one_and_no_other() -> None:
    from cloudcred.cache.informers import namespace_matcher

    objects = {ns: [{"metadata": {"namespace": ns, "name": "c"}}] for ns in ("a", "b", "other")}
    asked: list[str | None] = []

    class Kube:
        async def list_pages(self, plural: str, namespace: str | None = None,
                             **_: Any) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
            asked.append(namespace)
            for ns, items in objects.items():
                if namespace in (None, ns):
                    for item in items:
                        yield item

    for namespaces, expected_asks in ((["a", "b"], ["a", "b"]), (None, [None])):
        asked.clear()
        things: Store[dict[str, str]] = Store("Thing")
        changes: list[object] = []
        lister = CustomResourceLister(things, Kube(), "things",  # type: ignore[arg-type]
                                      lambda body: {"ns": body["metadata"]["namespace"]},
                                      changes.extend, namespace_matcher(["a", "b"]),
                                      namespaces)  # fmt: skip
        asyncio.run(lister.relist())
        assert asked == expected_asks
        assert set(things) == {("a", "c"), ("b", "c")}
        assert things.synced
        kept = things.get(("a", "c"))
        asyncio.run(lister.relist())
        assert things.get(("a", "c")) is kept, "a LIST that repeats what is known changes nothing"


def test_indexed_says_whether_any_object_has_a_value_in_an_index() -> None:
    store: Store[tuple[str, ...]] = Store("Thing", {"tag": lambda tags: tags})
    assert not store.indexed("tag")
    store.apply(("ns", "a"), ())
    assert not store.indexed("tag")
    store.apply(("ns", "b"), ("x",))
    assert store.indexed("tag")
    store.delete(("ns", "b"))
    assert not store.indexed("tag")
