"""The binder: one debounced writer that keeps bindings true on both sides.

Watch events (from the kopf handlers in ``handlers/bindings.py``) update an in-memory
index of credentials and clusters and mark keys dirty. One background task wakes up,
waits a short batching window, and for every dirty cluster decides its binding and
writes its status; then for every dirty credential it *computes* the list of bound
clusters from the index -- never by appending to the stored list -- and writes it.
Writes are server-side applies under the ``cloudcred-binder`` manager and are skipped
when nothing would change, so an idle operator writes nothing.

The index can miss a deletion that happened while a watch was down, so it is rebuilt
from a fresh LIST periodically, and deletion decisions always use a fresh LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

from cloudcred import bindings
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, IN_USE_LABEL
from cloudcred.kube import Kube, NotFound

MANAGER = "cloudcred-binder"
CLUSTER_CONDITIONS = {bindings.CREDENTIAL_BOUND, "Ready"}
CREDENTIAL_CONDITIONS = {bindings.IN_USE, bindings.DELETION_BLOCKED}
BATCH_WINDOW = 0.2
NAMESPACE_LABELS_TTL = 10.0
RELIST_INTERVAL = 300.0

logger = logging.getLogger("cloudcred.binder")


class Binder:
    def __init__(self, kube: Kube, write_concurrency: int = 16) -> None:
        self.kube = kube
        self.credentials: dict[Key, CredentialInfo] = {}
        self.credential_status: dict[Key, dict[str, Any]] = {}
        self.credential_created: dict[Key, str] = {}
        self.clusters: dict[Key, ClusterInfo] = {}
        self.clusters_by_credential: dict[Key, set[Key]] = defaultdict(set)
        self.dirty_clusters: set[Key] = set()
        self.dirty_credentials: set[Key] = set()
        self.secret_in_use: dict[Key, bool] = {}  # what the Secret's label says, as last set
        self._namespace_labels: dict[str, tuple[float, dict[str, str] | None]] = {}
        self._wake = asyncio.Event()
        self._writes = asyncio.Semaphore(write_concurrency)

    # -- index updates, from watch events ---------------------------------------------

    def credential_seen(self, body: dict[str, Any]) -> None:
        info = CredentialInfo.from_body(body)
        old = self.credentials.get(info.key)
        self.credentials[info.key] = info
        self.credential_status[info.key] = dict(body.get("status") or {})
        self.credential_created[info.key] = body["metadata"].get("creationTimestamp", "")
        if old != info:  # provider, deletion, admitted namespaces or revision changed
            self.dirty_clusters |= self.clusters_by_credential.get(info.key, set())
        self._mark_credential(info.key)

    def credential_gone(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for state in (self.credentials, self.credential_status, self.credential_created):
            state.pop(key, None)
        self.dirty_clusters |= self.clusters_by_credential.get(key, set())
        self._wake.set()

    def cluster_seen(self, body: dict[str, Any]) -> None:
        info = ClusterInfo.from_body(body)
        old = self.clusters.get(info.key)
        if old and old.credential != info.credential:
            self._forget_reference(old)
            self._mark_credential(old.credential)
        self.clusters[info.key] = info
        self.clusters_by_credential[info.credential].add(info.key)
        self.dirty_clusters.add(info.key)
        self._wake.set()

    def cluster_gone(self, namespace: str, name: str) -> None:
        old = self.clusters.pop((namespace, name), None)
        if old:
            self._forget_reference(old)
            self._mark_credential(old.credential)

    def _forget_reference(self, cluster: ClusterInfo) -> None:
        referencing = self.clusters_by_credential.get(cluster.credential)
        if referencing is not None:
            referencing.discard(cluster.key)
            if not referencing:
                del self.clusters_by_credential[cluster.credential]

    def _mark_credential(self, key: Key) -> None:
        self.dirty_credentials.add(key)
        self._wake.set()

    # -- decisions ---------------------------------------------------------------------

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        cached = self._namespace_labels.get(namespace)
        if cached and time.monotonic() - cached[0] < NAMESPACE_LABELS_TTL:
            return cached[1]
        labels = await self.kube.namespace_labels(namespace)
        self._namespace_labels[namespace] = (time.monotonic(), labels)
        return labels

    async def decide(self, cluster: ClusterInfo) -> bindings.Binding:
        credential = self.credentials.get(cluster.credential)
        labels = None
        if credential and credential.namespace != cluster.namespace:
            labels = await self.namespace_labels(cluster.namespace)
        return bindings.decide(cluster, credential, labels)

    async def bound_clusters(self, credential: Key) -> list[Key]:
        bound = []
        for key in sorted(self.clusters_by_credential.get(credential, set())):
            cluster = self.clusters.get(key)
            if cluster and (await self.decide(cluster)).bound:
                bound.append(key)
        return bound

    # -- the writer --------------------------------------------------------------------

    async def run(self) -> None:
        next_relist = time.monotonic() + RELIST_INTERVAL
        while True:
            with contextlib.suppress(TimeoutError):  # wake up now and then to re-list
                await asyncio.wait_for(self._wake.wait(), timeout=RELIST_INTERVAL / 10)
            if time.monotonic() >= next_relist:
                await self.relist()
                next_relist = time.monotonic() + RELIST_INTERVAL
            if not self._wake.is_set():
                continue
            await asyncio.sleep(BATCH_WINDOW)  # let a burst of events collapse into one pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("binding pass failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush(self) -> None:
        clusters, self.dirty_clusters = self.dirty_clusters, set()
        await asyncio.gather(*(self._write_cluster(key) for key in clusters))
        credentials, self.dirty_credentials = self.dirty_credentials, set()
        await asyncio.gather(*(self._write_credential(key) for key in credentials))

    async def _write_cluster(self, key: Key) -> None:
        cluster = self.clusters.get(key)
        if cluster is None:
            return
        binding = await self.decide(cluster)
        credential = self.credentials.get(cluster.credential)
        desired = bindings.cluster_status(cluster, binding, credential)
        # The credential's list follows this cluster's binding (it may have changed).
        self._mark_credential(cluster.credential)
        if _unchanged(cluster.status, desired, CLUSTER_CONDITIONS, ("credential",)):
            return
        async with self._writes:
            try:
                await self.kube.apply_status(CLUSTER_PLURAL, "Cluster", *key, desired, MANAGER)
            except NotFound:
                return

    async def _write_credential(self, key: Key) -> None:
        credential = self.credentials.get(key)
        if credential is None:
            return
        current = self.credential_status.get(key, {})
        desired = bindings.credential_bindings_status(
            credential, await self.bound_clusters(key), current,
            self.credential_created.get(key, ""),
        )  # fmt: skip
        await self._label_secrets(credential, desired["clusterCount"] > 0)
        fields = ("clusters", "clusterCount", "clustersTruncated", "unusedSince")
        if _unchanged(current, desired, CREDENTIAL_CONDITIONS, fields):
            return
        async with self._writes:
            try:
                await self.kube.apply_status(
                    CREDENTIAL_PLURAL, "CloudCredential", *key, desired, MANAGER
                )
            except NotFound:
                return

    async def _label_secrets(self, credential: CredentialInfo, in_use: bool) -> None:
        """Label the Secrets of in-use credentials so the admission policy refuses their
        deletion; a Secret stays labelled while any in-use credential references it."""
        for secret in credential.secret_names:
            key = (credential.namespace, secret)
            wanted = in_use or any(
                other.key != credential.key and secret in other.secret_names
                and self.credential_status.get(other.key, {}).get("clusterCount", 0) > 0
                for other in self.credentials.values() if other.namespace == credential.namespace
            )  # fmt: skip
            if self.secret_in_use.get(key) == wanted:
                continue
            async with self._writes:
                if await self.kube.set_secret_label(*key, IN_USE_LABEL, "true" if wanted else None):
                    self.secret_in_use[key] = wanted

    async def relist(self) -> None:
        """Rebuild the cluster index from a fresh LIST (drops entries whose DELETED
        event was missed while a watch was down)."""
        fresh = {ClusterInfo.from_body(body).key: body
                 for body in await self.kube.list_all(CLUSTER_PLURAL)}  # fmt: skip
        for key in [k for k in self.clusters if k not in fresh]:
            self.cluster_gone(*key)
        for body in fresh.values():
            self.cluster_seen(body)

    async def blocking_clusters(self, credential_body: dict[str, Any]) -> list[Key]:
        """Clusters that hold a credential's deletion, from a fresh LIST of the API, not
        the index: those that reference it, match its provider, are in an admitted
        namespace, and were not refused because of the deletion itself."""
        credential = CredentialInfo.from_body(credential_body)
        blocking = []
        for body in await self.kube.list_all(CLUSTER_PLURAL):
            cluster = ClusterInfo.from_body(body)
            if cluster.credential != credential.key or cluster.provider != credential.provider:
                continue
            labels = None
            if cluster.namespace != credential.namespace:
                labels = await self.namespace_labels(cluster.namespace)
            if not bindings.namespace_admitted(credential, cluster.namespace, labels):
                continue
            bound = bindings.decide(cluster, credential, labels)
            refused = bindings.find_reason(cluster.status) == bindings.DELETING
            if bound.bound or not refused:
                blocking.append(cluster.key)
        return sorted(blocking)


def _unchanged(
    current: dict[str, Any], desired: dict[str, Any], owned: set[str], fields: tuple[str, ...]
) -> bool:
    return all(current.get(f) == desired.get(f) for f in fields) and bindings.same_conditions(
        current.get("conditions"), desired["conditions"], owned
    )
