"""The operator's own LIST+WATCH (``cache/informers.py``) against the real API server:
how a watch the server ends is resumed, which only its resourceVersions can show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from cloudcred.cache.informers import Informer
from cloudcred.cache.store import Store
from cloudcred.constants import CLUSTER_PLURAL, GROUP, VERSION
from tests.conftest import Kube
from tests.resources import create_cluster

pytestmark = pytest.mark.integration


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for ``check`` on the event loop (the informer posts its changes to it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_a_watch_the_server_ends_resumes_from_the_last_change_it_delivered(
    kube: Kube, namespace: str
) -> None:
    """The server ends each watch after its timeout. Resumed from the LIST's version,
    the watch replays every change since, older states over newer ones (a fleet's
    fan-out replayed for minutes, or a 410 Gone and a full LIST with the workers
    stopped); resumed from the last version delivered, it replays nothing."""
    key = (namespace, "c")
    create_cluster(kube, namespace, "c", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "x"})  # fmt: skip

    def annotate(step: str) -> str:
        patched = kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, CLUSTER_PLURAL, "c",
            {"metadata": {"annotations": {"step": step}}},
        )  # fmt: skip
        return str(patched["metadata"]["resourceVersion"])

    annotate("0")
    asked: list[int] = []  # the resourceVersion each resumed WATCH asked for
    listing = partial(kube.custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                      CLUSTER_PLURAL)  # fmt: skip

    def list_function(**kwargs: Any) -> Any:
        # A plain function, as the operator's partials are: no return type in its
        # docstring for the client to follow versions by.
        if kwargs.get("watch"):
            asked.append(int(kwargs["resource_version"]))
        return listing(**kwargs)

    seen: list[tuple[str | None, str | None]] = []

    async def follow() -> str:
        store: Store[str | None] = Store("Cluster")
        informer = Informer(
            store, list_function,
            lambda item: (item["metadata"].get("annotations") or {}).get("step"),
            lambda changes: seen.extend((c.old, c.new) for c in changes),
            asyncio.get_running_loop(), watch_timeout=2, relist_interval=300,
        )  # fmt: skip
        informer.start()
        try:
            await until(lambda: store.synced and store.get(key) == "0", "the LIST")
            last = ""
            for step in "123":
                last = annotate(step)
                await until(lambda step=step: store.get(key) == step, f"step {step}")
            # The server ends the watch after 2 s; wait for two resumes.
            await until(lambda: len(asked) >= 3, "the watch resumed twice")
            await asyncio.sleep(0.2)  # what the resumed watches delivered reaches the loop
            return last
        finally:
            informer.stop()  # its thread ends with the watch under way: the loop waits
            await until(lambda: not informer._thread.is_alive(), "the informer's end")

    last = asyncio.run(follow())
    assert asked[0] < int(last)
    assert all(version >= int(last) for version in asked[1:]), (asked, last)
    assert seen == [(None, "0"), ("0", "1"), ("1", "2"), ("2", "3")], "nothing replayed"
