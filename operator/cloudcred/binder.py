"""The binder: one debounced writer that keeps bindings and rollouts true on both sides.

Watch events (from the kopf handlers in ``handlers/bindings.py``) update an in-memory
index of credentials and clusters and mark keys dirty. One background task wakes up,
waits a short batching window, and for every dirty cluster decides its binding and
its redeploy state (marking it with ``cloudcred.io/redeploy-revision`` when it is
behind its credential, and handing it to the deploy step unless an external system
deploys it), then writes its status; then for every dirty credential it *computes*
the list of bound clusters and the rollout from the index -- never by appending to
the stored values -- and writes them. Writes are server-side applies under the
``cloudcred-binder`` manager and are skipped when nothing would change, so an idle
operator writes nothing.

The index can miss a deletion that happened while a watch was down, so it is rebuilt
from a fresh LIST periodically, and deletion decisions always use a fresh LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any

from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from cloudcred import bindings, conditions, rollout
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.config import Settings
from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    IN_USE_LABEL,
    REDEPLOY_ANNOTATION,
    REFERENCED_LABEL,
)
from cloudcred.deployer import Deployer, DeployTarget
from cloudcred.kube import Kube, NotFound

MANAGER = "cloudcred-binder"
CLUSTER_CONDITIONS = {bindings.CREDENTIAL_BOUND, rollout.REDEPLOY_PENDING, "Ready"}
CREDENTIAL_CONDITIONS = {bindings.IN_USE, bindings.DELETION_BLOCKED, rollout.ROLLOUT_COMPLETE}
BATCH_WINDOW = 0.2
NAMESPACE_LABELS_TTL = 60.0  # a fallback: the namespace watch invalidates on change
RELIST_INTERVAL = 300.0
RELIST_DEBOUNCE = 2.0
PASS_CHUNK = 200  # clusters written before the credentials are written again
BINDINGS_FIRST = 30.0  # at most: a long burst of changes must not starve deploys

logger = logging.getLogger("cloudcred.binder")


class Binder:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        provider_slots: asyncio.Semaphore,
        write_concurrency: int = 16,
    ) -> None:
        self.kube = kube
        self.credentials: dict[Key, CredentialInfo] = {}
        self.credential_bodies: dict[Key, dict[str, Any]] = {}
        self.clusters: dict[Key, ClusterInfo] = {}
        self.clusters_by_credential: dict[Key, set[Key]] = defaultdict(set)
        self.dirty_clusters: set[Key] = set()
        self.dirty_credentials: set[Key] = set()
        # What each Secret's labels say, as last set: (referenced, in use).
        self.secret_labels: dict[Key, tuple[bool, bool]] = {}
        self.announced: dict[Key, str] = {}  # the revision of the last RolloutComplete event
        self.blocked_announced: dict[Key, str] = {}  # the last RolloutBlocked event's text
        self.plans: dict[Key, rollout.RolloutPlan] = {}
        self.released_secrets: set[Key] = set()  # Secrets of deleted credentials
        self.deployer = Deployer(kube, settings, provider_slots, self.deploy_target,
                                 self.cluster_changed, self.bound_target,
                                 self.bindings_first)  # fmt: skip
        self._namespace_labels: dict[str, tuple[float, dict[str, str] | None]] = {}
        self._seen_at: dict[Key, float] = {}  # when each cluster's last event was taken in
        self.paused = False  # by kopf's peering: another replica acts
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set when a pass left nothing to do
        self._relist_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writes = asyncio.Semaphore(write_concurrency)

    # -- index updates, from watch events ---------------------------------------------

    def credential_seen(self, body: dict[str, Any]) -> None:
        info = CredentialInfo.from_body(body)
        old = self.credentials.get(info.key)
        self.credentials[info.key] = info
        self.credential_bodies[info.key] = body
        if old != info:  # provider, deletion, admitted namespaces or revision changed
            self.dirty_clusters |= self.clusters_by_credential.get(info.key, set())
        self._mark_credential(info.key)

    def credential_gone(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        gone = self.credentials.pop(key, None)
        self.credential_bodies.pop(key, None)
        for state in (self.announced, self.blocked_announced, self.plans):
            state.pop(key, None)
        self.dirty_clusters |= self.clusters_by_credential.get(key, set())
        if gone:  # its Secrets' labels follow the credentials that remain
            self.released_secrets |= {(namespace, secret) for secret in gone.secret_names}
        self._wake.set()

    def cluster_seen(self, body: dict[str, Any]) -> None:
        info = ClusterInfo.from_body(body)
        self._seen_at[info.key] = time.monotonic()
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
        self._seen_at.pop((namespace, name), None)
        self.deployer.forget((namespace, name))
        if old:
            self._forget_reference(old)
            self._mark_credential(old.credential)

    def pause(self) -> None:
        """kopf's peering paused this replica (another one acts): write nothing and
        deploy nothing until kopf resumes it; kopf then lists every object again."""
        if not self.paused:
            logger.info("pausing: another replica acts (kopf peering)")
        self.paused = True
        self.deployer.pause()

    def resume(self) -> None:
        if self.paused:
            logger.info("resuming after the pause")
        self.paused = False
        self.deployer.resume()
        self._wake.set()

    def namespace_changed(self, namespace: str) -> None:
        """A namespace's labels changed: decide its clusters' bindings again."""
        self._namespace_labels.pop(namespace, None)
        affected = {key for key in self.clusters if key[0] == namespace}
        if affected:
            self.dirty_clusters |= affected
            self._wake.set()

    def cluster_changed(self, key: Key) -> None:
        """Look at this cluster again (the deploy step's news)."""
        if key in self.clusters:
            self.dirty_clusters.add(key)
            self._wake.set()

    def credentials_using_secret(self, namespace: str, secret: str) -> list[dict[str, Any]]:
        """The bodies of the credentials that reference this Secret."""
        return [
            self.credential_bodies[key] for key, info in self.credentials.items()
            if info.namespace == namespace and secret in info.secret_names
        ]  # fmt: skip

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
            if self.paused:  # what is dirty stays dirty; resume() wakes the loop
                self._wake.clear()
                continue
            if time.monotonic() >= next_relist:
                await self.relist()
                next_relist = time.monotonic() + RELIST_INTERVAL
            if not self._wake.is_set():
                continue
            self._idle.clear()
            await asyncio.sleep(BATCH_WINDOW)  # let a burst of events collapse into one pass
            self._wake.clear()
            try:
                await self.flush()
                if not self._wake.is_set():
                    self._idle.set()
            except (ApiException, HTTPError, RuntimeError) as error:  # the API is away
                logger.warning("binding pass failed (%s); retrying", _describe(error))
                await asyncio.sleep(1.0)
                self._wake.set()
            except Exception:
                logger.exception("binding pass failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def bindings_first(self) -> None:
        """Wait (up to BINDINGS_FIRST seconds) until a binding pass leaves nothing to do:
        the deploy step defers to bindings, which hold deletion safety, and a burst of
        changes is bound before the deployments it causes load the API server."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), BINDINGS_FIRST)

    async def flush(self) -> None:
        started = time.monotonic()
        clusters, self.dirty_clusters = self.dirty_clusters, set()
        involved = {self.clusters[k].credential for k in clusters if k in self.clusters}
        for credential in involved | self.dirty_credentials:
            plan = await self._plan(credential)
            previous = self.plans.pop(credential, None)
            if plan is None:
                continue
            self.plans[credential] = plan
            # Level-based: every cluster whose turn has come and is not marked yet is
            # looked at (a deploy finished, the rollout resumed); when the rollout's
            # state changes (blocked, paused, resumed), every cluster behind shows it.
            clusters |= {k for k in plan.allowed if self.clusters[k].marked != plan.revision}
            if previous is None or (previous.revision, previous.blocked, previous.paused) != (
                plan.revision, plan.blocked, plan.paused
            ):  # fmt: skip
                clusters |= plan.behind
        released: set[Key] = set()
        ordered = sorted(clusters)
        try:
            # One chunk at least: a pass without clusters still writes the credentials.
            for start in range(0, max(len(ordered), 1), PASS_CHUNK):
                chunk = ordered[start : start + PASS_CHUNK]
                await asyncio.gather(*(self._write_cluster(key) for key in chunk))
                # The credentials' lists and rollout progress follow each chunk: a pass
                # over a thousand clusters shows its progress as it goes.
                await self._write_credentials()
            released, self.released_secrets = self.released_secrets, set()
            await asyncio.gather(*(self._release_secret(key) for key in released))
        except BaseException:
            # Nothing of this pass is lost: it is all looked at again (writes are
            # idempotent and skipped when nothing would change).
            self.dirty_clusters |= clusters
            self.released_secrets |= released
            raise
        logger.debug("binding pass: %d cluster(s) in %.3fs", len(clusters),
                     time.monotonic() - started)  # fmt: skip

    async def _write_credentials(self) -> None:
        """Write every dirty credential's list, rollout and conditions."""
        credentials, self.dirty_credentials = self.dirty_credentials, set()
        try:
            await asyncio.gather(*(self._write_credential(key) for key in credentials))
        except BaseException:
            self.dirty_credentials |= credentials
            raise

    def _status(self, key: Key) -> dict[str, Any]:
        return dict(self.credential_bodies.get(key, {}).get("status") or {})

    async def _plan(self, key: Key) -> rollout.RolloutPlan | None:
        credential = self.credentials.get(key)
        if credential is None:
            return None
        bound = [self.clusters[k] for k in await self.bound_clusters(key)]
        return rollout.plan_rollout(credential, bound, self.deployer.failures)

    def bound_target(self, key: Key) -> DeployTarget | None:
        """A cluster deployed by the operator and bound, with its credential."""
        cluster = self.clusters.get(key)
        if cluster is None or cluster.external or not cluster.was_bound_to:
            return None
        credential = self.credentials.get(cluster.was_bound_to)
        if credential is None:
            return None
        spec = self.credential_bodies[credential.key].get("spec") or {}
        return DeployTarget(cluster, credential, spec)

    def deploy_target(self, key: Key) -> DeployTarget | None:
        """What the deploy step should do for this cluster now, if anything: only a
        bound cluster deployed by the operator, never deployed or marked with the
        revision of a credential that verified and is up to date with its spec."""
        cluster = self.clusters.get(key)
        if cluster is None or cluster.external or not cluster.was_bound_to:
            return None
        credential = self.credentials.get(cluster.credential)
        if credential is None or cluster.was_bound_to != credential.key:
            return None
        if not credential.revision or credential.spec_changed or credential.deleting:
            return None
        if credential.verification_problem:
            return None
        if cluster.deployed_revision == credential.revision:
            return None
        if cluster.deployed_revision and cluster.marked != credential.revision:
            return None  # its turn has not come
        spec = self.credential_bodies[credential.key].get("spec") or {}
        return DeployTarget(cluster, credential, spec)

    async def _write_cluster(self, key: Key) -> None:
        cluster = self.clusters.get(key)
        if cluster is None:
            return
        binding = await self.decide(cluster)
        credential = self.credentials.get(cluster.credential)
        redeploy = None
        plan = self.plans.get(cluster.credential)
        if binding.bound and credential is not None and plan and plan.revision:
            if plan.revision != credential.revision:  # the revision changed since the plan
                plan = await self._plan(credential.key)
                assert plan is not None
                self.plans[credential.key] = plan
            redeploy = rollout.redeploy_state(cluster, plan, self.deployer.failures.get(key))
        desired = bindings.cluster_status(cluster, binding, credential, redeploy)
        # The credential's list and rollout follow this cluster (they may have changed).
        self._mark_credential(cluster.credential)
        # One write slot for both writes: a cluster's mark and status go out back to
        # back, so their watch events arrive together and are handled as one.
        async with self._writes:
            try:
                if redeploy and redeploy.mark and cluster.marked != redeploy.mark:
                    await self.kube.annotate(CLUSTER_PLURAL, *key,
                                             {REDEPLOY_ANNOTATION: redeploy.mark})  # fmt: skip
                    # Counted as marked from now on, before the watch brings the change
                    # back: the concurrency limit must not let a second pass mark more.
                    # (On the index's latest entry: an event may have come meanwhile.)
                    cluster = dataclasses.replace(cluster, marked=redeploy.mark)
                    if key in self.clusters:
                        self.clusters[key] = dataclasses.replace(
                            self.clusters[key], marked=redeploy.mark
                        )
                if not _unchanged(cluster.status, desired, CLUSTER_CONDITIONS, ("credential",)):
                    await self.kube.apply_status(CLUSTER_PLURAL, "Cluster", *key, desired, MANAGER)
            except NotFound:  # deleted while a watch was down: no DELETED event came
                self.cluster_gone(*key)
                return
        if redeploy and redeploy.pending and not cluster.external:
            self.deployer.request(key)
        elif redeploy and not redeploy.pending and cluster.credentials_secret \
                and not cluster.external:  # fmt: skip
            self.deployer.keep_fresh(key)

    async def _write_credential(self, key: Key) -> None:
        credential = self.credentials.get(key)
        if credential is None:
            return
        current = self._status(key)
        bound = await self.bound_clusters(key)
        desired = bindings.credential_bindings_status(
            credential, bound, current,
            self.credential_bodies[key]["metadata"].get("creationTimestamp", ""),
        )  # fmt: skip
        plan = await self._plan(key)  # after the cluster pass: the marks just made count
        progress = rollout.rollout_status(
            credential, [self.clusters[k] for k in bound], current.get("conditions"), plan
        )
        if progress:
            desired["rollout"] = progress["rollout"]
            desired["conditions"] += progress["conditions"]
        await self._label_secrets(credential, desired["clusterCount"] > 0)
        fields = ("clusters", "clusterCount", "clustersTruncated", "unusedSince", "rollout")
        if _unchanged(current, desired, CREDENTIAL_CONDITIONS, fields):
            return
        async with self._writes:
            try:
                await self.kube.apply_status(
                    CREDENTIAL_PLURAL, "CloudCredential", *key, desired, MANAGER
                )
            except NotFound:
                return
        await self._announce_rollout(key, desired)
        await self._announce_blocked(key, desired)

    async def _announce_rollout(self, key: Key, desired: dict[str, Any]) -> None:
        """One Event per completed rollout over at least one cluster."""
        done = conditions.find(desired["conditions"], rollout.ROLLOUT_COMPLETE)
        if not done or done["status"] != conditions.TRUE or not desired["clusterCount"]:
            return
        revision = desired["rollout"]["revision"]
        if self.announced.get(key) == revision:
            return
        self.announced[key] = revision
        await self.kube.post_event(self._reference(key), "Normal", "RolloutComplete",
                                   done["message"])  # fmt: skip

    async def _announce_blocked(self, key: Key, desired: dict[str, Any]) -> None:
        """One Warning Event each time a rollout becomes blocked, and why."""
        blocked = conditions.find(desired["conditions"], rollout.ROLLOUT_COMPLETE)
        if not blocked or blocked["reason"] != rollout.BLOCKED:
            self.blocked_announced.pop(key, None)
            return
        why = blocked["message"].split("; ")[0]
        if self.blocked_announced.get(key) == why:
            return
        self.blocked_announced[key] = why
        await self.kube.post_event(self._reference(key), "Warning", rollout.BLOCKED, why)

    def _reference(self, key: Key) -> dict[str, Any]:
        uid = self.credential_bodies[key]["metadata"].get("uid")
        return bindings.object_reference("CloudCredential", key, uid)

    async def announce_force_delete(
        self, body: dict[str, Any], clusters: list[Key], reason: str
    ) -> None:
        """Break glass: a Warning Event with the user's reason on the credential and on
        every cluster that loses it."""
        metadata = body["metadata"]
        ref = f"{metadata['namespace']}/{metadata['name']}"
        names = bindings.describe_clusters(clusters, metadata["namespace"])
        await self.kube.post_event(body, "Warning", "ForceDeleted",
                                   f"deleted while {len(clusters)} cluster(s) use it ({names}), "
                                   f"by cloudcred.io/force-delete: {reason}")  # fmt: skip
        for key in clusters:
            uid = self.clusters[key].uid if key in self.clusters else None
            reference = bindings.object_reference("Cluster", key, uid)
            await self.kube.post_event(reference, "Warning", "CredentialForceDeleted",
                                       f"CloudCredential {ref} was force-deleted while this "
                                       f"cluster used it: {reason}")  # fmt: skip

    async def _release_secret(self, key: Key) -> None:
        """A deleted credential's Secret: relabel it for the credentials still using it,
        or remove both labels."""
        users = [c for c in self.credentials.values()
                 if c.namespace == key[0] and key[1] in c.secret_names]  # fmt: skip
        if users:
            for user in users:
                self._mark_credential(user.key)
            self.secret_labels.pop(key, None)
            return
        async with self._writes:
            await self.kube.set_secret_labels(*key, {REFERENCED_LABEL: None, IN_USE_LABEL: None})
        self.secret_labels.pop(key, None)

    async def _label_secrets(self, credential: CredentialInfo, in_use: bool) -> None:
        """Label the Secrets credentials reference: ``cloudcred.io/credential-secret``
        lets the operator watch exactly these Secrets for data changes, and
        ``cloudcred.io/in-use`` (while any in-use credential references one) lets the
        admission policy refuse its deletion."""
        for secret in credential.secret_names:
            key = (credential.namespace, secret)
            users = [other for other in self.credentials.values()
                     if other.namespace == credential.namespace
                     and secret in other.secret_names]  # fmt: skip
            wanted = (bool(users), in_use or any(
                self._status(other.key).get("clusterCount", 0) > 0
                for other in users if other.key != credential.key
            ))  # fmt: skip
            if self.secret_labels.get(key) == wanted:
                continue
            labels = {REFERENCED_LABEL: "true" if wanted[0] else None,
                      IN_USE_LABEL: "true" if wanted[1] else None}  # fmt: skip
            async with self._writes:
                if await self.kube.set_secret_labels(*key, labels):
                    self.secret_labels[key] = wanted

    def relist_soon(self) -> None:
        """kopf listed a kind again (start, or after a 410 Gone): objects deleted while
        the watch was down got no DELETED event, so check the index against a fresh
        LIST shortly (debounced: a listing delivers every object)."""
        if self._relist_handle is None:
            loop = asyncio.get_running_loop()
            self._relist_handle = loop.call_later(RELIST_DEBOUNCE, self._start_relist)

    def _start_relist(self) -> None:
        self._relist_handle = None
        if self.paused:
            return
        task = asyncio.create_task(self.relist(), name="cloudcred-relist")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def relist(self) -> None:
        """Drop index entries whose DELETED event was missed while a watch was down, and
        refresh the others, from a fresh LIST. Only clusters already in the index:
        the LIST covers every namespace, the operator may watch only some. A cluster
        whose event arrived while the LIST was under way is left to the watch: the
        LIST may be older than that event."""
        asked = time.monotonic()
        try:
            listed = await self.kube.list_all(CLUSTER_PLURAL)
        except (ApiException, HTTPError, RuntimeError) as error:
            logger.warning("re-listing clusters failed (%s)", _describe(error))
            return
        fresh = {ClusterInfo.from_body(body).key: body for body in listed}
        for key in [k for k in self.clusters if self._seen_at.get(k, 0.0) < asked]:
            if key not in fresh:
                self.cluster_gone(*key)
            else:
                self.cluster_seen(fresh[key])

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


def _describe(error: Exception) -> str:
    """An API failure in a few words, never a response body."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return str(error) if isinstance(error, RuntimeError) else type(error).__name__


def _unchanged(
    current: dict[str, Any], desired: dict[str, Any], owned: set[str], fields: tuple[str, ...]
) -> bool:
    return all(current.get(f) == desired.get(f) for f in fields) and bindings.same_conditions(
        current.get("conditions"), desired["conditions"], owned
    )
