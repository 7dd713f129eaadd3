"""The binder's re-list against the watch: a LIST answered while newer watch events
arrive must not roll the index back (found in a fan-out killed half-way: five
clusters deployed during the re-list stayed "not deployed" in the credential's
rollout, since no later event came to correct them).

The LIST is a stand-in here so that the interleaving is exact; the same path runs
against the real API server in the rollout and fault tests."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudcred.binder import Binder
from cloudcred.config import Settings

NAMESPACE = "acme"


def cluster(name: str, deployed: str | None, version: str) -> dict[str, Any]:
    status = {"deployedRevision": deployed} if deployed else {}
    return {
        "metadata": {"namespace": NAMESPACE, "name": name, "generation": 1,
                     "resourceVersion": version},
        "spec": {"provider": "AWS", "region": "eu-west-3", "credentialRef": {"name": "prod"}},
        "status": status,
    }  # fmt: skip


class ListWhileWatching:
    """A LIST whose answer was taken before ``during`` runs (the watch events that
    arrive while the answer travels)."""

    def __init__(self, answer: list[dict[str, Any]], during: Any) -> None:
        self.answer = answer
        self.during = during

    async def list_all(self, plural: str) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        self.during()
        return self.answer


def binder_with(answer: list[dict[str, Any]], during: Any = lambda: None) -> Binder:
    return Binder(ListWhileWatching(answer, during), Settings(), asyncio.Semaphore(1))  # type: ignore[arg-type]


def test_an_event_newer_than_the_list_is_kept() -> None:
    async def scenario() -> None:
        stale = [cluster("eu", deployed="v1-old", version="10")]
        binder = binder_with(stale)
        binder.cluster_seen(cluster("eu", deployed="v1-old", version="10"))
        # The deploy step's write comes back as an event while the LIST is answered.
        newer = cluster("eu", deployed="v1-new", version="11")
        binder.kube.during = lambda: binder.cluster_seen(newer)  # type: ignore[attr-defined]
        await binder.relist()
        assert binder.clusters[(NAMESPACE, "eu")].deployed_revision == "v1-new"

    asyncio.run(scenario())


def test_a_cluster_created_during_the_list_is_not_dropped() -> None:
    async def scenario() -> None:
        binder = binder_with([])
        binder.kube.during = lambda: binder.cluster_seen(cluster("new", None, "12"))  # type: ignore[attr-defined]
        await binder.relist()
        assert (NAMESPACE, "new") in binder.clusters

    asyncio.run(scenario())


def test_what_the_watch_missed_is_corrected() -> None:
    """Entries older than the LIST follow it: a missed deletion is dropped, a missed
    update taken in."""

    async def scenario() -> None:
        binder = binder_with([cluster("eu", deployed="v1-new", version="20")])
        binder.cluster_seen(cluster("eu", deployed="v1-old", version="10"))
        binder.cluster_seen(cluster("gone", deployed="v1-old", version="11"))
        await asyncio.sleep(0.01)  # the LIST is asked for after these events
        await binder.relist()
        assert (NAMESPACE, "gone") not in binder.clusters
        assert binder.clusters[(NAMESPACE, "eu")].deployed_revision == "v1-new"

    asyncio.run(scenario())
