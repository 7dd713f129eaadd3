"""What the console shows, kept up to date by LIST+WATCH with the user's own identity.

The operator's ``Informer`` (``cache/informers.py``) fills two stores, CloudCredentials
and Clusters, of the namespace given with ``-n`` or of every namespace with ``-A``: a page
is rendered from memory, never from a LIST per request. Each object is kept slim
(metadata without managedFields, spec, status): a CloudCredential names its Secret,
never holds its data, and the console never reads a Secret.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from cloudcred.cache.informers import Informer
from cloudcred.cache.store import Change, Key, Store
from cloudcred.cli import api
from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    FORCE_DELETE_ANNOTATION,
    GROUP,
    ROLLOUT_PAUSED_ANNOTATION,
    VERSION,
)

WATCH_TIMEOUT = 300  # the server ends each watch after this many seconds
RELIST_INTERVAL = 600.0
# The annotations a page shows; the others (kopf's bookkeeping, kubectl's
# last-applied-configuration) are not kept.
SHOWN_ANNOTATIONS = (ROLLOUT_PAUSED_ANNOTATION, FORCE_DELETE_ANNOTATION)

Obj = dict[str, Any]


def slim(item: dict[str, Any]) -> Obj:
    """An object as the console keeps it."""
    metadata = item.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    kept = {
        "namespace": metadata.get("namespace", ""),
        "name": metadata.get("name", ""),
        "uid": metadata.get("uid", ""),
        "generation": metadata.get("generation"),
        "creationTimestamp": metadata.get("creationTimestamp"),
        "deletionTimestamp": metadata.get("deletionTimestamp"),
        "annotations": {k: v for k, v in annotations.items() if k in SHOWN_ANNOTATIONS},
    }
    return {"metadata": kept, "spec": item.get("spec") or {}, "status": item.get("status") or {}}


def bound_credential(cluster: Obj) -> list[tuple[str, str]]:
    ref = (cluster.get("status") or {}).get("credential") or {}
    return [(str(ref["namespace"]), str(ref["name"]))] if ref.get("name") else []


class ConsoleCache:
    """Two stores and their informers. ``listeners`` are called on the event loop with
    each batch of changes (the live updates)."""

    def __init__(self, kube: api.Kube, namespace: str | None) -> None:
        """``namespace``: the one to follow; None follows every namespace."""
        self.kube = kube
        self.namespace = namespace
        self.credentials: Store[Obj] = Store("CloudCredential")
        self.clusters: Store[Obj] = Store("Cluster", {"credential": bound_credential})
        self.listeners: list[Callable[[str, list[Change[Obj]]], None]] = []
        self._informers: list[Informer[Obj]] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        custom = self.kube.custom
        for store, plural in ((self.credentials, CREDENTIAL_PLURAL),
                              (self.clusters, CLUSTER_PLURAL)):  # fmt: skip
            if self.namespace is None:
                listing = functools.partial(
                    custom.list_cluster_custom_object, GROUP, VERSION, plural
                )
            else:
                listing = functools.partial(
                    custom.list_namespaced_custom_object, GROUP, VERSION, plural=plural
                )
            informer = Informer(
                store,
                listing,
                slim,
                functools.partial(self._changed, store.kind),
                loop,
                watch_timeout=WATCH_TIMEOUT,
                relist_interval=RELIST_INTERVAL,
                namespace=self.namespace,
            )
            informer.start()
            self._informers.append(informer)

    def stop(self) -> None:
        for informer in self._informers:
            informer.stop()

    @property
    def synced(self) -> bool:
        return self.credentials.synced and self.clusters.synced

    async def wait_synced(self, timeout: float) -> bool:
        """True once both stores hold a full LIST; False after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.synced and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.synced

    def _changed(self, kind: str, changes: list[Change[Obj]]) -> None:
        for listener in list(self.listeners):
            listener(kind, changes)

    def credential(self, namespace: str, name: str) -> Obj | None:
        return self.credentials.get((namespace, name))

    def cluster_map(self, keys: list[Key]) -> dict[Key, Obj]:
        found = {}
        for key in keys:
            cluster = self.clusters.get(key)
            if cluster is not None:
                found[key] = cluster
        return found
