"""Runs the reconcilers: caches in, keys through the queues, workers out.

1. Every change a store takes in (a watch event, a LIST) is mapped to the keys it
   concerns -- the cluster, its old and new credential, a credential's clusters
   through the store's index, a Secret's credentials, a namespace's clusters -- and
   those keys are queued (``_cluster_changed`` and the others below). Keys, never
   objects: a reconciler reads the caches when its turn comes.
2. Workers take keys only while every cache is synced and this replica is active
   (kopf's peering may pause it). A key is held by one worker at a time.
3. A reconcile that fails is queued again after a per-key backoff, counted in
   ``cloudcred_reconcile_errors_total``, logged and shown on its object as one
   Warning Event (``ReconcileFailed``) per distinct error. Other keys go on.
4. ``problems()`` says what ``/healthz`` should fail on: a watch or a queue that made
   no progress for too long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Counter
from urllib3.exceptions import HTTPError

from cloudcred import metrics, rollout
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key, object_reference
from cloudcred.boundary import Boundary
from cloudcred.cache import Caches, Change, SecretInfo
from cloudcred.cache.boundaries import boundary_info
from cloudcred.cache.informers import (
    SECRET_PAGE_SIZE,
    CustomResourceLister,
    Informer,
    SyncScopes,
    namespace_labels,
    namespace_matcher,
    plain_namespaces,
    secret_info,
)
from cloudcred.config import Settings
from cloudcred.constants import (
    BOUNDARY_PLURAL,
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    GROUP,
    REFERENCED_LABEL,
    VERSION,
)
from cloudcred.controllers.clusters import ClusterReconciler
from cloudcred.controllers.credentials import CredentialReconciler
from cloudcred.controllers.deploy import DEPLOY_CONCURRENCY, DeployController
from cloudcred.controllers.expectations import MarkExpectations
from cloudcred.controllers.secrets import SecretReconciler
from cloudcred.installation import Installation
from cloudcred.kube import Kube, describe_error
from cloudcred.tasks import spawn, where
from cloudcred.workqueue import WorkQueue

logger = logging.getLogger("cloudcred.controllers")

CLUSTER_WORKERS = 16
CREDENTIAL_WORKERS = 2
SECRET_WORKERS = 2
# A credential's list and rollout follow its clusters' events at once, but at most once a
# second, and less often for a long list (one second per 500 clusters, up to 5 s): each
# write of a credential with thousands of clusters costs the API server as much as
# dozens of cluster writes, and a fan-out's progress needs no finer steps.
CREDENTIAL_INTERVAL, CREDENTIAL_INTERVAL_MAX, CLUSTERS_PER_SECOND_OF_PACING = 1.0, 5.0, 500

RECONCILE_ERRORS = Counter(
    "cloudcred_reconcile_errors",
    "Reconciles that failed (and were queued again after a backoff), by controller.",
    ["controller"],
    registry=metrics.REGISTRY,
)


class Controllers:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        provider_slots: asyncio.Semaphore,
        watched_namespaces: list[str],
        secret_changed: Callable[[list[CredentialInfo]], None],
        installation: Installation,
        peering: bool = False,
    ) -> None:
        """``secret_changed(credentials)``: a referenced Secret's data changed (or its
        labels were dropped): check these credentials again. With ``peering``, the
        replica starts paused: see ``pause()``."""
        self.kube = kube
        self.settings = settings
        self.caches = Caches()
        self.secret_changed = secret_changed
        base, cap = 0.25, settings.retry_max_delay
        self.clusters: WorkQueue[Key] = WorkQueue("clusters", base, cap)
        self.credentials: WorkQueue[Key] = WorkQueue("credentials", base, cap)
        self.secrets: WorkQueue[Key] = WorkQueue("secrets", base, cap)
        self.plans: dict[Key, rollout.RolloutPlan] = {}
        self.marks = MarkExpectations()
        self.deploy = DeployController(
            kube, settings, self.caches, provider_slots, self.clusters, self.credentials,
            installation,
        )  # fmt: skip
        self.cluster_reconciler = ClusterReconciler(
            kube, self.caches, self.plans, self.marks, self.credentials, self.deploy
        )
        self.credential_reconciler = CredentialReconciler(
            kube, self.caches, self.plans, self.marks, self.clusters, self.secrets, self.deploy
        )
        self.secret_reconciler = SecretReconciler(kube, self.caches)
        self.watched = watched = namespace_matcher(watched_namespaces)
        self.secret_namespaces = plain_namespaces(watched_namespaces)
        self.listers: list[CustomResourceLister[Any]] = [
            CustomResourceLister(self.caches.credentials, kube, CREDENTIAL_PLURAL,
                                 CredentialInfo.from_body, self._credentials_changed, watched),
            CustomResourceLister(self.caches.clusters, kube, CLUSTER_PLURAL,
                                 ClusterInfo.from_body, self._clusters_changed, watched),
        ]  # fmt: skip
        self.informers: list[Informer[Any]] = []
        self._boundaries_listed = False  # the first LIST of boundaries is in
        # kopf's peering: another replica acts. The caches fill from the operator's own
        # LISTs even then, so a replica acts only once kopf shows that it is active:
        # its first watch event or credential daemon, and then each daemon start.
        self.paused = peering
        self._awaiting_first_sign = peering
        self._active = asyncio.Event()  # synced and not paused: workers may take keys
        self._errors: dict[tuple[str, Key], str] = {}  # the last error shown on each object
        self._unsynced_since: float | None = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def queues(self) -> tuple[WorkQueue[Key], ...]:
        return (self.clusters, self.credentials, self.secrets, self.deploy.queue)

    # -- starting and stopping ------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        core = client.CoreV1Api(self.kube.api)
        timing = (self.settings.watch_timeout, self.settings.relist_interval)
        # Only the watched namespaces' Secrets: another operator may own the others, and
        # their data is not ours to read. Plain names: one namespaced LIST+WATCH each, so
        # other namespaces' Secrets never reach the operator; patterns or all namespaces:
        # one cluster-wide LIST+WATCH, filtered here.
        selector, page = REFERENCED_LABEL, SECRET_PAGE_SIZE
        if self.secret_namespaces is None:
            self.informers = [
                Informer(self.caches.secrets, core.list_secret_for_all_namespaces, secret_info,
                         self._secrets_changed, loop, *timing, label_selector=selector,
                         page_size=page, watched=self.watched)
            ]  # fmt: skip
        else:
            scopes = SyncScopes(self.secret_namespaces)
            self.informers = [
                Informer(self.caches.secrets, core.list_namespaced_secret, secret_info,
                         self._secrets_changed, loop, *timing, label_selector=selector,
                         page_size=page, namespace=namespace, scopes=scopes)
                for namespace in self.secret_namespaces
            ]  # fmt: skip
        self.informers.append(
            Informer(self.caches.namespaces, core.list_namespace, namespace_labels,
                     self._namespaces_changed, loop, *timing)
        )  # fmt: skip
        boundaries = partial(client.CustomObjectsApi(self.kube.api).list_cluster_custom_object,
                             GROUP, VERSION, BOUNDARY_PLURAL)  # fmt: skip
        self.informers.append(
            Informer(self.caches.boundaries, boundaries, boundary_info,
                     self._boundaries_changed, loop, *timing)
        )  # fmt: skip
        for informer in self.informers:
            informer.start()
        interval = self.settings.relist_interval
        for lister in self.listers:
            self._tasks.append(spawn(lister.run(interval), f"list {lister.name}s"))
        pools: list[tuple[WorkQueue[Key], Callable[[Key], Awaitable[None]], int]] = [
            (self.clusters, self.cluster_reconciler.reconcile, CLUSTER_WORKERS),
            (self.credentials, self.credential_reconciler.reconcile, CREDENTIAL_WORKERS),
            (self.secrets, self.secret_reconciler.reconcile, SECRET_WORKERS),
            (self.deploy.queue, self.deploy.reconcile, DEPLOY_CONCURRENCY),
        ]
        for queue, reconcile, workers in pools:
            for number in range(workers):
                name = f"{queue.name} worker {number}"
                self._tasks.append(spawn(self._work(queue, reconcile), name))
        self._tasks.append(spawn(self._resync(interval), "resync"))

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        for task in self._tasks:
            task.cancel()

    def pause(self) -> None:
        """kopf's peering paused this replica (another one acts): take no key, write
        nothing, deploy nothing until ``resume()``; the caches keep following."""
        self._awaiting_first_sign = False
        if not self.paused:
            logger.info("pausing: another replica acts (kopf peering)")
        self.paused = True
        self.deploy.pause()
        self._refresh()

    def resume(self) -> None:
        if self.paused:
            logger.info("resuming after the pause")
            self.paused = False
            self.deploy.resume()
            self._queue_everything()  # the renewals were dropped; a fresh look at all
        self._refresh()

    # -- kopf's watch events (handlers/events.py) ------------------------------------------

    def cluster_event(self, kind: str | None, body: dict[str, Any]) -> None:
        self._kopf_is_active()
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if kind == "DELETED":
            change = self.caches.clusters.delete(key)
        else:
            change = self.caches.clusters.apply(key, ClusterInfo.from_body(body))
        self._clusters_changed([change])
        if kind is None:  # kopf is listing: deletions in a gap are not sent
            self.listers[1].listing_seen()

    def credential_event(self, kind: str | None, body: dict[str, Any]) -> None:
        self._kopf_is_active()
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if kind == "DELETED":
            change = self.caches.credentials.delete(key)
        else:
            change = self.caches.credentials.apply(key, CredentialInfo.from_body(body))
        self._credentials_changed([change])
        if kind is None:
            self.listers[0].listing_seen()

    def _kopf_is_active(self) -> None:
        """kopf delivers watch events only while this replica is active: the first one
        ends the wait of a replica started with peering (later pauses and resumes come
        from the credential daemons' stops and starts)."""
        if self._awaiting_first_sign:
            self._awaiting_first_sign = False
            self.resume()

    # -- what each change concerns ------------------------------------------------------

    def _clusters_changed(self, changes: list[Change[ClusterInfo]]) -> None:
        self._refresh()
        for change in changes:
            old, new = change.old, change.new
            if new == old:  # a listing repeated what is known: nothing to do
                continue
            if new is None or (old is not None and new.uid != old.uid):
                self.marks.forget(change.key)  # gone, or another object under its name
                self.deploy.forget(change.key)
            if new is None:
                self.clusters.discard(change.key)
            else:
                self.clusters.add(change.key, arrival=old is None)
                self.marks.observe(new)
            for cluster in (old, new):
                if cluster is not None:
                    self._credential_soon(cluster.credential)

    def _credentials_changed(self, changes: list[Change[CredentialInfo]]) -> None:
        self._refresh()
        for change in changes:
            old, new = change.old, change.new
            if old == new:  # only its status lists or rollout moved: ours, paced
                self._credential_soon(change.key)
                continue
            self.credentials.add(change.key)
            # Provider, deletion, admitted namespaces or revision: every cluster that
            # names it decides again.
            for cluster in self.caches.clusters.by("credential", change.key):
                self.clusters.add(cluster)
            for credential in (old, new):
                for secret in credential.secret_names if credential else ():
                    self.secrets.add((change.key[0], secret))

    def _credential_soon(self, key: Key) -> None:
        """Queue a credential now, or its pacing interval after its last reconcile."""
        last = self.credential_reconciler.last_run.get(key)
        clusters = self.caches.clusters.count("credential", key)
        interval = min(max(CREDENTIAL_INTERVAL, clusters / CLUSTERS_PER_SECOND_OF_PACING),
                       CREDENTIAL_INTERVAL_MAX)  # fmt: skip
        wait = 0.0 if last is None else last + interval - time.monotonic()
        self.credentials.add_after(key, wait)

    def _secrets_changed(self, changes: list[Change[SecretInfo]]) -> None:
        self._refresh()
        for change in changes:
            self.secrets.add(change.key)
            old, new = change.old, change.new
            # The data changed, or the Secret left the label selection (a full update
            # dropped the labels: its data may have changed too). Not at the first LIST.
            if old is not None and (new is None or new.digest != old.digest):
                users = self.caches.credentials_using_secret(change.key)
                if users and not self.paused:
                    self.secret_changed(users)

    def _namespaces_changed(self, changes: list[Change[dict[str, str]]]) -> None:
        self._refresh()
        for change in changes:
            for cluster in self.caches.clusters.by("namespace", change.key[1]):
                self.clusters.add(cluster)
            old, new = change.old, change.new
            boundaries = self.caches.boundaries.objects.values()
            # New labels that a boundary selects differently: its credentials, again.
            if (
                old is not None
                and new is not None
                and not self.paused
                and any(boundary.selects(old) != boundary.selects(new) for boundary in boundaries)
            ):
                credentials = self.caches.credentials.objects.values()
                users = [c for c in credentials if c.namespace == change.key[1]]
                if users:
                    self.secret_changed(users)  # "check these credentials again"

    def _boundaries_changed(self, changes: list[Change[Boundary]]) -> None:
        """A CredentialBoundary appeared, changed or went away: check the credentials of
        the namespaces it selects or selected again. Not at the first LIST: at start,
        every credential is checked once that LIST is in."""
        self._refresh()
        if not self._boundaries_listed:
            self._boundaries_listed = self.caches.boundaries.synced
            return
        selectors = [b.selects for c in changes for b in (c.old, c.new) if b is not None]
        if not selectors or self.paused:
            return
        users = self.caches.credentials_selected_by(
            lambda labels: any(s(labels) for s in selectors)
        )
        if users:
            self.secret_changed(users)  # "check these credentials again"

    def _queue_everything(self) -> None:
        for key in self.caches.clusters:
            self.clusters.add(key)
        for key in self.caches.credentials:
            self.credentials.add(key)
        self._queue_secrets()

    def _queue_secrets(self) -> None:
        for key in self.caches.secrets:
            self.secrets.add(key)
        for credential in self.caches.credentials.objects.values():
            for secret in credential.secret_names:
                self.secrets.add((credential.namespace, secret))

    async def _resync(self, interval: float) -> None:
        """Every ``interval``: look at every credential and every Secret label again
        (a label removed by hand is put back even if no event said so)."""
        while True:
            await asyncio.sleep(interval)
            for key in self.caches.credentials:
                self.credentials.add(key)
            self._queue_secrets()

    # -- the workers -------------------------------------------------------------------

    def _refresh(self) -> None:
        """Open or close the workers' gate after a sync or pause change."""
        synced = self.caches.synced
        if synced:
            if self._unsynced_since is not None:
                logger.info("caches synced: %s", ", ".join(
                    f"{len(store)} {store.kind}(s)" for store in self.caches.stores))  # fmt: skip
            self._unsynced_since = None
        elif self._unsynced_since is None:
            self._unsynced_since = time.monotonic()
        if synced and not self.paused:
            self._active.set()
        else:
            self._active.clear()

    async def _work(
        self, queue: WorkQueue[Key], reconcile: Callable[[Key], Awaitable[None]]
    ) -> None:
        while True:
            key = await queue.get()
            try:
                # Held, not put back, while the caches sync or the replica is paused:
                # nothing is decided on the word of a cache that is not complete.
                await self._active.wait()
                await reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = queue.add_rate_limited(key)
                RECONCILE_ERRORS.labels(controller=queue.name).inc()
                await self._show_error(queue.name, key, error, delay)
            else:
                queue.forget(key)
                self._errors.pop((queue.name, key), None)
            finally:
                queue.done(key)

    async def _show_error(self, controller: str, key: Key, error: Exception, delay: float) -> None:
        """Log the failure; post it on the object as a Warning Event once per distinct
        error (never a response body: only the API server's own message)."""
        what = describe_error(error)
        if isinstance(error, ApiException):
            what += f": {_api_message(error)}"
        elif not isinstance(error, (RuntimeError, HTTPError)):  # a bug, not the API
            logger.error("reconciling %s %s/%s raised %s\n%s", controller, *key,
                         type(error).__name__, where(error))  # fmt: skip
        logger.warning("reconciling %s %s/%s failed (%s); retrying in %gs", controller, *key,
                       what, delay)  # fmt: skip
        if self._errors.get((controller, key)) == what:
            return
        self._errors[(controller, key)] = what
        reference = self._reference(controller, key)
        if reference is not None:
            await self.kube.post_event(reference, "Warning", "ReconcileFailed",
                                       f"cloudcred could not update this object: {what}; "
                                       "retrying with a growing delay")  # fmt: skip

    def _reference(self, controller: str, key: Key) -> dict[str, Any] | None:
        if controller in ("clusters", "deploy"):
            cluster = self.caches.clusters.get(key)
            return cluster.reference if cluster else None
        if controller == "credentials":
            credential = self.caches.credentials.get(key)
            return credential.reference if credential else None
        reference = object_reference("Secret", key, None)
        reference["apiVersion"] = "v1"
        return reference

    # -- health ------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why this replica is not making progress, if it is not: a watch silent for
        longer than its timeout allows, caches unsynced as long, or a queue whose
        workers finished nothing while keys waited."""
        limit = 2 * self.settings.watch_timeout + 30
        now = time.monotonic()
        found = [
            f"the {informer.name} watch has not answered for {now - informer.last_progress:.0f}s"
            for informer in self.informers
            if now - informer.last_progress > limit
        ]
        if self._unsynced_since is not None and now - self._unsynced_since > limit:
            found.append(f"caches not synced for {now - self._unsynced_since:.0f}s: "
                         f"{', '.join(self.caches.unsynced_kinds())}")  # fmt: skip
        if self._active.is_set():
            found += [
                f"the {queue.name} queue has made no progress for {now - queue.last_done:.0f}s"
                for queue in self.queues
                if queue.busy and now - queue.last_done > limit
            ]
        return found


def _api_message(error: ApiException) -> str:
    """The ``message`` of the API server's Status answer, shortened."""
    try:
        message = str(json.loads(error.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    return message[:300] or "no message"
