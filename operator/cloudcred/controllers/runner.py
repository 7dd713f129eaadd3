"""Runs the controllers: caches in, keys through the queues, reconcilers out.

Following one change: watch -> store -> map -> queue -> reconciler -> write.

1. Every change a store takes in (a watch event, a LIST) goes through the wiring
   table (``Controllers.wiring``): each entry names a store, a controller and a map
   function from the change to the keys it concerns -- the cluster itself, its old
   and new credential, a credential's clusters through the store's index, a Secret,
   a namespace's clusters. Keys, never objects: a reconciler reads the caches when
   its turn comes. Map functions compare only what the controller reads, so a
   reconciler's own write, echoed by the watch, queues nothing.
2. Each controller (``controller.py``) owns its queue and workers; workers take keys
   only while every cache is synced and this replica is active (kopf's peering may
   pause it).
3. A reconcile that fails is queued again after a per-key backoff, counted in
   ``cloudcred_reconcile_errors_total``, logged and shown on its object as one
   Warning Event (``ReconcileFailed``) per distinct error. Other keys go on.
4. ``problems()`` says what ``/healthz`` should fail on: a watch or a queue that made
   no progress for too long.

The reconcilers never see a queue and never call one another: they talk through the
objects they write, which come back here as changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from cloudcred.bindings import ClusterInfo, CredentialInfo, Key, object_reference
from cloudcred.boundary import Boundary
from cloudcred.cache import Caches, Change, DeliveredInfo, SecretInfo
from cloudcred.cache.boundaries import boundary_info
from cloudcred.cache.informers import (
    LISTER_PAGE_SIZE,
    SECRET_PAGE_SIZE,
    CustomResourceLister,
    Informer,
    SyncScopes,
    delivered_info,
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
    MANAGED_BY_LABEL,
    PERMISSION_SET_PLURAL,
    REFERENCED_LABEL,
    VERSION,
)
from cloudcred.controllers.clusters import ClusterReconciler
from cloudcred.controllers.controller import Controller
from cloudcred.controllers.credentials import CredentialReconciler
from cloudcred.controllers.deploy import DEPLOY_CONCURRENCY, DeployReconciler
from cloudcred.controllers.installation import InstallationKeyReconciler
from cloudcred.controllers.permissions import PermissionsReconciler
from cloudcred.controllers.rotation import ROTATION_WORKERS, RotationReconciler, clusters_behind
from cloudcred.controllers.secrets import SecretReconciler
from cloudcred.controllers.verification import VerificationReconciler
from cloudcred.installation import (
    INSTALLATION_SECRET,
    Installation,
    key_secret_info,
    operator_namespace,
)
from cloudcred.kube import Kube, describe_error
from cloudcred.permissions import PermissionSetInfo
from cloudcred.rotation_record import RecordStore
from cloudcred.rotator import Rotator
from cloudcred.tasks import spawn, where
from cloudcred.workqueue import WorkQueue

logger = logging.getLogger("cloudcred.controllers")

CLUSTER_WORKERS = 16
PERMISSION_WORKERS = 2  # each check is a few provider calls; they share provider_slots
CREDENTIAL_WORKERS = 2
SECRET_WORKERS = 2
# A credential's list and rollout follow its clusters' events at once, but at most once a
# second, and less often when there are many clusters (one second per 2000 clusters the
# operator follows, up to 5 s): a write of a credential listing a thousand clusters
# costs the API server as much as a dozen cluster writes (65 ms of its CPU, measured),
# and a fan-out's progress needs no finer steps.
CREDENTIAL_INTERVAL, CREDENTIAL_INTERVAL_MAX, CLUSTERS_PER_SECOND_OF_PACING = 1.0, 5.0, 2000
# A burst of new Clusters is over once none has arrived for this long and the cluster
# reconciler is idle: first deployments wait for it (controllers/deploy.py), and while
# it lasts credentials' lists are written at most every CREDENTIAL_BURST_INTERVAL, then
# at once when it is over (ten credentials listing a thousand clusters each, written
# every few seconds during a burst of ten thousand, cost the API server a sixth more).
BINDINGS_QUIET = 1.0
CREDENTIAL_BURST_INTERVAL = 15.0


@dataclass(frozen=True)
class Watch:
    """One line of the wiring: changes of ``source`` (a store's kind) concern the keys
    ``map`` gives, for ``controller``; ``paced``: at most once per pacing interval;
    ``arrivals``: an object new to the store counts as an arrival (a write's echo
    does not)."""

    source: str
    controller: Controller[Key]
    map: Callable[[Change[Any]], Iterable[Key]]
    paced: bool = False
    arrivals: bool = False  # a new object is an arrival for the queue (WorkQueue.settled)


# -- map functions: what a change concerns ------------------------------------------------


def cluster_inputs(cluster: ClusterInfo | None, marked: bool = True) -> tuple[Any, ...] | None:
    """What the cluster, credential and deploy reconcilers read of a Cluster (with its
    redeploy mark, or without). Not the conditions they write: their echo queues
    nothing."""
    if cluster is None:
        return None
    status = cluster.status
    return (cluster.uid, cluster.provider, cluster.credential, cluster.generation,
            cluster.region, cluster.external, cluster.marked if marked else None,
            cluster.credentials_secret, cluster.deployed_revision,
            status.get("deployFailure"), cluster.permission_sets)  # fmt: skip


def cluster_itself(change: Change[ClusterInfo]) -> Iterable[Key]:
    """The cluster, when what its reconcilers read changed (or it went away)."""
    if cluster_inputs(change.old) != cluster_inputs(change.new):
        yield change.key


def cluster_credentials(change: Change[ClusterInfo]) -> Iterable[Key]:
    """The old and the new credential of a cluster that changed what they read."""
    if cluster_inputs(change.old) != cluster_inputs(change.new):
        yield from {c.credential for c in (change.old, change.new) if c is not None}


def credential_itself(change: Change[CredentialInfo]) -> Iterable[Key]:
    if change.old != change.new:
        yield change.key


def credential_any(change: Change[CredentialInfo]) -> Iterable[Key]:
    yield change.key


def credential_status_moved(change: Change[CredentialInfo]) -> Iterable[Key]:
    """Only its status lists or totals moved (its own write, mostly): paced."""
    if change.new is not None and change.old == change.new:
        yield change.key


def credential_secrets(change: Change[CredentialInfo]) -> Iterable[Key]:
    for credential in (change.old, change.new):
        for secret in credential.secret_names if credential else ():
            yield (change.key[0], secret)


def secret_itself(change: Change[SecretInfo]) -> Iterable[Key]:
    yield change.key


def delivered_owner(caches: Caches, change: Change[DeliveredInfo]) -> Iterable[Key]:
    """The Cluster that owns a delivered Secret (its UID, looked up in the namespace):
    a Secret it no longer names is revoked at its next reconcile."""
    owners = {d.owner_uid for d in (change.old, change.new) if d is not None and d.owner_uid}
    for key in caches.clusters.by("namespace", change.key[0]):
        cluster = caches.clusters.get(key)
        if cluster is not None and cluster.uid in owners:
            yield key


class Controllers:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        provider_slots: asyncio.Semaphore,
        watched_namespaces: list[str],
        installation: Installation,
        peering: bool = False,
        bindings_quiet: float = BINDINGS_QUIET,
    ) -> None:
        """With ``peering``, the replica starts paused: see ``pause()``. First
        deployments wait until no new Cluster has arrived for ``bindings_quiet``
        seconds and the cluster reconciler is idle (0: they do not wait)."""
        self.kube = kube
        self.settings = settings
        self.caches = caches = Caches(settings.boundary_default == "Deny")
        controller = partial(Controller[Key], on_error=self._show_error,
                             on_success=self._cleared,
                             max_delay=settings.retry_max_delay)  # fmt: skip
        self.clusters = controller(
            "clusters", ClusterReconciler(kube, caches).reconcile, CLUSTER_WORKERS
        )
        self.credential_reconciler = CredentialReconciler(kube, caches)
        self.credentials = controller(
            "credentials", self.credential_reconciler.reconcile, CREDENTIAL_WORKERS
        )
        self.secrets = controller(
            "secrets", SecretReconciler(kube, caches).reconcile, SECRET_WORKERS
        )
        self.bindings_quiet = bindings_quiet
        self._held: dict[Key, float | None] = {}  # credentials paced at the burst's pace
        settled = partial(self.clusters.queue.settled, bindings_quiet) if bindings_quiet else None
        deploy = DeployReconciler(kube, settings, caches, provider_slots, installation, settled)
        self.deploy = controller("deploy", deploy.reconcile, DEPLOY_CONCURRENCY)
        verification = VerificationReconciler(
            kube, settings, caches, provider_slots, installation,
            verdict_changed=lambda key: self.rotation.queue.add(key),
        )  # fmt: skip
        self.verification = controller("verification", verification.reconcile,
                                       settings.verification_concurrency)  # fmt: skip
        records = RecordStore(kube, operator_namespace(settings.operator_namespace))
        self.rotator = rotator = Rotator(kube, settings, provider_slots, records,
                                         partial(clusters_behind, caches),
                                         caches.rotation_identity,
                                         verification.verified)  # fmt: skip
        self.rotation = controller("rotation", RotationReconciler(rotator, caches).reconcile,
                                   ROTATION_WORKERS)  # fmt: skip
        permissions = PermissionsReconciler(kube, settings, caches, provider_slots, installation)
        self.permissions = controller("permissions", permissions.reconcile, PERMISSION_WORKERS)
        # The installation Secret, followed while the operator runs (one LIST+WATCH of
        # that name); an installation made from a bare key has none to follow.
        self.installation = installation
        self.installation_key = controller(
            "installation", InstallationKeyReconciler(kube, caches, installation).reconcile, 1
        )
        if installation.namespace is None:
            caches.installation_key.synced = True
        self.wiring = self._wiring()
        self.watched = watched = namespace_matcher(watched_namespaces)
        self.secret_namespaces = plain = plain_namespaces(watched_namespaces)
        self.listers: list[CustomResourceLister[Any]] = [
            CustomResourceLister(caches.credentials, kube, CREDENTIAL_PLURAL,
                                 CredentialInfo.from_body,
                                 partial(self._changed, "CloudCredential"), watched, plain),
        ]  # fmt: skip
        self.informers: list[Informer[Any]] = []
        # kopf's peering: another replica acts. The caches fill from the operator's own
        # LISTs and watches even then, so a replica acts only once kopf shows that it is
        # active: its first watch event (of a credential, or of a Cluster, which kopf
        # follows with peering for this alone) or credential daemon, and then each
        # daemon start.
        self.paused = peering
        self._awaiting_first_sign = peering
        self._active = asyncio.Event()  # synced and not paused: workers may take keys
        self._errors: dict[tuple[str, Key], str] = {}  # the last error shown on each object
        self._unsynced_since: float | None = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def controllers(self) -> tuple[Controller[Key], ...]:
        return (self.clusters, self.credentials, self.secrets, self.deploy, self.verification,
                self.rotation, self.permissions, self.installation_key)  # fmt: skip

    @property
    def queues(self) -> tuple[WorkQueue[Key], ...]:
        return tuple(controller.queue for controller in self.controllers)

    def _wiring(self) -> list[Watch]:
        """What each change concerns: the whole of it, in one table."""
        caches = self.caches

        def cluster_for_binder(change: Change[ClusterInfo]) -> Iterable[Key]:
            """The cluster, when what its reconciler reads changed. A new redeploy mark
            only once its credential has published the plan of that revision: marks are
            written before the plan, whose publication concerns every cluster anyway,
            so a new revision reconciles each cluster once."""
            old, new = change.old, change.new
            if cluster_inputs(old, marked=False) != cluster_inputs(new, marked=False):
                yield change.key
            elif new is not None and old is not None and new.marked != old.marked:
                credential = caches.credentials.get(new.credential)
                if credential is None or credential.published[0] == new.marked:
                    yield change.key

        marks = self.credential_reconciler.marks

        def credential_clusters(change: Change[CredentialInfo]) -> Iterable[Key]:
            """Every cluster naming a credential whose binding or published plan moved;
            else those its status has just listed or unlisted. Not a cluster whose mark
            of the published revision is written and not yet seen: Clusters and
            CloudCredentials come by different watches, and the mark's echo, which
            queues it (``cluster_for_binder``), may come after the plan's."""
            old, new = change.old, change.new
            if old is None or new is None or (old.cluster_facing, old.listed_truncated) != (
                new.cluster_facing, new.listed_truncated
            ):  # fmt: skip
                published = new.published[0] if new is not None else None
                for key in caches.clusters.by("credential", change.key):
                    cluster = caches.clusters.get(key)
                    if cluster is None or not marks.in_flight(cluster, published):
                        yield key
            else:
                yield from old.listed ^ new.listed

        def credential_deploys(change: Change[CredentialInfo]) -> Iterable[Key]:
            """Clusters to deploy: all of them when what the deploy reads moved, else
            those the status has just listed (their first deployment may go)."""
            old, new = change.old, change.new
            if old is None or new is None or old != new:
                yield from caches.clusters.by("credential", change.key)
            else:
                yield from new.listed - old.listed

        def cluster_secrets(change: Change[ClusterInfo]) -> Iterable[Key]:
            """The Secrets of a credential that gained or lost a cluster: ``in-use``."""
            old, new = change.old, change.new
            if (old and (old.credential, old.provider, old.uid)) != \
                    (new and (new.credential, new.provider, new.uid)):  # fmt: skip
                for key in {c.credential for c in (old, new) if c is not None}:
                    credential = caches.credentials.get(key)
                    for secret in credential.secret_names if credential else ():
                        yield (key[0], secret)

        def secret_credentials(change: Change[SecretInfo]) -> Iterable[Key]:
            """Credentials whose Secret's data changed, or that left the selection (a
            full update dropped the labels: the data may have changed too)."""
            old, new = change.old, change.new
            if old is None or new is None or old.digest != new.digest:
                yield from (c.key for c in caches.credentials_using_secret(change.key))

        def namespace_credentials_checked(change: Change[dict[str, str]]) -> Iterable[Key]:
            """Credentials of a namespace whose labels changed (a boundary may select it)."""
            yield from (key for key in caches.credentials if key[0] == change.key[1])

        def boundary_credentials(change: Change[Boundary]) -> Iterable[Key]:
            """Credentials of the namespaces a boundary selects or selected."""
            selectors = [b.selects for b in (change.old, change.new) if b is not None]
            selected = caches.credentials_selected_by(
                lambda labels: any(selects(labels) for selects in selectors)
            )
            yield from (c.key for c in selected)

        def rotation_asked(change: Change[CredentialInfo]) -> Iterable[Key]:
            """A credential appeared, its policy or ``rotate-now`` changed, or the check
            or the rollout a rotation waits for moved. Not the rotation's own writes
            (``status.rotation``): a step says when to look again (``requeue_after``)."""

            def asked(c: CredentialInfo | None) -> tuple[Any, ...] | None:
                if c is None:
                    return None
                return (c.uid, c.raw_spec.get("rotation"), c.rotate_now, c.revision,
                        c.verification_problem, c.published, c.status.get("rollout"))  # fmt: skip

            if asked(change.old) != asked(change.new):
                yield change.key
            elif change.new is not None and self.rotator.view_moved(
                change.key, change.new.status.get("rotation")
            ):  # fmt: skip
                yield change.key  # status.rotation forged or lost: shown again from the record

        def cluster_permission_sets(change: Change[ClusterInfo]) -> Iterable[Key]:
            """The old and new credential of a cluster whose named sets or credential
            changed (its binding moving shows in the credential's list: credential_any)."""
            old, new = change.old, change.new
            if (old and (old.credential, old.permission_sets)) != \
                    (new and (new.credential, new.permission_sets)):  # fmt: skip
                yield from {c.credential for c in (old, new) if c is not None}

        def permission_set_users(change: Change[PermissionSetInfo]) -> Iterable[Key]:
            """Every credential checked against the set: named by it or by its clusters."""
            yield from caches.credentials_needing(change.key[1])

        def namespace_clusters(change: Change[dict[str, str]]) -> Iterable[Key]:
            return caches.clusters.by("namespace", change.key[1])

        def namespace_credentials(change: Change[dict[str, str]]) -> Iterable[Key]:
            """Credentials with clusters in a namespace whose labels changed: binding."""
            for key in caches.clusters.by("namespace", change.key[1]):
                cluster = caches.clusters.get(key)
                if cluster is not None:
                    yield cluster.credential

        return [
            Watch("Cluster", self.clusters, cluster_for_binder, arrivals=True),
            Watch("Cluster", self.credentials, cluster_credentials, paced=True),
            Watch("Cluster", self.deploy, cluster_itself),
            Watch("Cluster", self.secrets, cluster_secrets),
            Watch("CloudCredential", self.credentials, credential_itself),
            Watch("CloudCredential", self.credentials, credential_status_moved, paced=True),
            Watch("CloudCredential", self.clusters, credential_clusters),
            Watch("CloudCredential", self.deploy, credential_deploys),
            Watch("CloudCredential", self.secrets, credential_secrets),
            Watch("Secret", self.secrets, secret_itself),
            Watch("DeliveredSecret", self.deploy, partial(delivered_owner, self.caches)),
            Watch("DeliveredSecret", self.secrets, secret_itself),
            Watch("Namespace", self.clusters, namespace_clusters),
            Watch("Namespace", self.deploy, namespace_clusters),
            Watch("Namespace", self.credentials, namespace_credentials),
            # Verification: any change of the credential (the reconciler compares what a
            # check reads), its Secrets' data, its namespace's labels, boundaries.
            Watch("CloudCredential", self.verification, credential_any),
            Watch("Secret", self.verification, secret_credentials),
            Watch("Namespace", self.verification, namespace_credentials_checked),
            Watch("CredentialBoundary", self.verification, boundary_credentials),
            # Rotation: a boundary's rotation identity may come, go or change.
            Watch("CredentialBoundary", self.rotation, boundary_credentials),
            Watch("CloudCredential", self.rotation, rotation_asked),
            # Permissions: any change of the credential (the reconciler compares what a
            # check reads: revision, Verified, its list of clusters), its clusters' sets,
            # an edit of a set.
            Watch("CloudCredential", self.permissions, credential_any),
            Watch("Cluster", self.permissions, cluster_permission_sets),
            Watch("PermissionSet", self.permissions, permission_set_users),
            # The installation Secret: deleted, changed, or holding the key again.
            Watch("InstallationKey", self.installation_key, secret_itself),
        ]

    def _changed(self, kind: str, changes: list[Change[Any]]) -> None:
        """A store took in these changes of ``kind``: queue what they concern."""
        self._refresh()
        for watch in self.wiring:
            if watch.source != kind:
                continue
            for change in changes:
                if change.new is None and watch.map in (
                    cluster_itself,
                    credential_itself,
                    secret_itself,
                ):
                    watch.controller.queue.discard(change.key)  # its timer and backoff go
                if change.old == change.new and kind != "CloudCredential":
                    continue  # a listing repeated what is known (a credential's
                    # comparison leaves out its spec and status: its maps look at them)
                arrival = watch.arrivals and change.old is None
                for key in watch.map(change):
                    if watch.paced:
                        watch.controller.queue.add_after(key, self._pacing_wait(key))
                    else:
                        watch.controller.queue.add(key, arrival=arrival)

    def _pacing_wait(self, key: Key) -> float:
        """A credential waits its pacing interval after its last reconcile: longer with
        more clusters in all (every credential's list is written at this pace), and
        longer still while new clusters arrive (``_after_bursts`` ends the wait)."""
        last = self.credentials.last_run.get(key)
        clusters = len(self.caches.clusters)
        interval = min(max(CREDENTIAL_INTERVAL, clusters / CLUSTERS_PER_SECOND_OF_PACING),
                       CREDENTIAL_INTERVAL_MAX)  # fmt: skip
        if self.bindings_quiet and self.clusters.queue.arriving:
            interval = CREDENTIAL_BURST_INTERVAL
            self._held[key] = last
        return 0.0 if last is None else last + interval - time.monotonic()

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
                         partial(self._changed, "Secret"), loop, *timing, label_selector=selector,
                         page_size=page, watched=self.watched)
            ]  # fmt: skip
        else:
            scopes = SyncScopes(self.secret_namespaces)
            self.informers = [
                Informer(self.caches.secrets, core.list_namespaced_secret, secret_info,
                         partial(self._changed, "Secret"), loop, *timing, label_selector=selector,
                         page_size=page, namespace=namespace, scopes=scopes)
                for namespace in self.secret_namespaces
            ]  # fmt: skip
        # Delivered Secrets, by the label the operator puts on them: found by their
        # owner's UID, whatever name the Cluster's spec gives now.
        delivered = partial(self._changed, "DeliveredSecret")
        managed = f"{MANAGED_BY_LABEL}=cloudcred"
        if self.secret_namespaces is None:
            self.informers.append(
                Informer(self.caches.delivered, core.list_secret_for_all_namespaces,
                         delivered_info, delivered, loop, *timing, label_selector=managed,
                         page_size=page, watched=self.watched)
            )  # fmt: skip
        else:
            scopes = SyncScopes(self.secret_namespaces)
            self.informers += [
                Informer(self.caches.delivered, core.list_namespaced_secret, delivered_info,
                         delivered, loop, *timing, label_selector=managed, page_size=page,
                         namespace=namespace, scopes=scopes)
                for namespace in self.secret_namespaces
            ]  # fmt: skip
        self.informers.append(
            Informer(self.caches.namespaces, core.list_namespace, namespace_labels,
                     partial(self._changed, "Namespace"), loop, *timing)
        )  # fmt: skip
        # Clusters: as Secrets, one LIST+WATCH per plain namespace or one for all.
        custom = client.CustomObjectsApi(self.kube.api)
        clusters = partial(self._changed, "Cluster")
        if self.secret_namespaces is None:
            every = partial(custom.list_cluster_custom_object, GROUP, VERSION, CLUSTER_PLURAL)
            self.informers.append(
                Informer(self.caches.clusters, every, ClusterInfo.from_body, clusters, loop,
                         *timing, watched=self.watched, page_size=LISTER_PAGE_SIZE)
            )  # fmt: skip
        else:
            scopes = SyncScopes(self.secret_namespaces)
            one = partial(custom.list_namespaced_custom_object, GROUP, VERSION,
                          plural=CLUSTER_PLURAL)  # fmt: skip
            self.informers += [
                Informer(self.caches.clusters, one, ClusterInfo.from_body, clusters, loop,
                         *timing, page_size=LISTER_PAGE_SIZE, namespace=namespace, scopes=scopes)
                for namespace in self.secret_namespaces
            ]  # fmt: skip
        boundaries = partial(custom.list_cluster_custom_object, GROUP, VERSION, BOUNDARY_PLURAL)
        self.informers.append(
            Informer(self.caches.boundaries, boundaries, boundary_info,
                     partial(self._changed, "CredentialBoundary"), loop, *timing)
        )  # fmt: skip
        permission_sets = partial(custom.list_cluster_custom_object, GROUP, VERSION,
                                  PERMISSION_SET_PLURAL)  # fmt: skip
        self.informers.append(
            Informer(self.caches.permission_sets, permission_sets, PermissionSetInfo.from_body,
                     partial(self._changed, "PermissionSet"), loop, *timing)
        )  # fmt: skip
        if (namespace := self.installation.namespace) is not None:
            self.informers.append(
                Informer(self.caches.installation_key, core.list_namespaced_secret,
                         partial(key_secret_info, self.installation),
                         partial(self._changed, "InstallationKey"), loop, *timing,
                         namespace=namespace, field_selector=f"metadata.name={INSTALLATION_SECRET}")
            )  # fmt: skip
        for informer in self.informers:
            informer.start()
        interval = self.settings.relist_interval
        for lister in self.listers:
            self._tasks.append(spawn(lister.run(interval), f"list {lister.name}s"))
        for controller in self.controllers:
            controller.start(self._active, self._spawn)
        self._tasks.append(spawn(self._resync(interval), "resync"))
        self._spawn(self.queue_recorded(), "rotation records")
        if self.bindings_quiet:
            self._tasks.append(spawn(self._after_bursts(), "credentials after bursts"))

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[None]:
        task = spawn(coroutine, name)
        self._tasks.append(task)
        return task

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
        self._refresh()

    def resume(self) -> None:
        if self.paused:
            logger.info("resuming after the pause")
            self.paused = False
            self._queue_everything()  # a fresh look at all
            self._spawn(self.queue_recorded(), "rotation records")
        self._refresh()

    # -- kopf's watch events (handlers/events.py) ------------------------------------------

    def kopf_sign(self) -> None:
        """kopf delivered a watch event (with peering: of a Cluster, which it follows
        for this alone, see ``handlers/events.py``)."""
        self._kopf_is_active()

    def credential_event(self, kind: str | None, body: dict[str, Any]) -> None:
        self._kopf_is_active()
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if kind == "DELETED":
            change = self.caches.credentials.delete(key)
        else:
            change = self.caches.credentials.apply(key, CredentialInfo.from_body(body))
        self._changed("CloudCredential", [change])
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

    def _queue_everything(self) -> None:
        for key in self.caches.clusters:
            self.clusters.queue.add(key)
            self.deploy.queue.add(key)
        for key in self.caches.credentials:
            for controller in (self.credentials, self.verification, self.rotation,
                               self.permissions):  # fmt: skip
                controller.queue.add(key)
        self._queue_secrets()
        if (namespace := self.installation.namespace) is not None:
            self.installation_key.queue.add((namespace, INSTALLATION_SECRET))

    async def queue_recorded(self) -> None:
        """Once synced, look at each rotation record whose credential is gone (deleted
        while no operator ran, or while another waited out its grace period): the keys
        the operator made for it are retired and the record removed."""
        await self._active.wait()
        try:
            recorded = await self.rotator.records.credentials()
        except (ApiException, RuntimeError) as error:  # looked at again at the next start
            logger.warning("listing the rotation records failed: %s", error)
            return
        for key in recorded:
            if key not in self.caches.credentials:
                self.rotation.queue.add(key)

    def _queue_secrets(self) -> None:
        for key in self.caches.secrets:
            self.secrets.queue.add(key)
        for credential in self.caches.credentials.objects.values():
            for secret in credential.secret_names:
                self.secrets.queue.add((credential.namespace, secret))

    async def _after_bursts(self) -> None:
        """When a burst of new clusters is over, the credentials whose lists it held
        back are reconciled at their usual pace, not at the burst's."""
        while True:
            await self.clusters.queue.burst_settled(self.bindings_quiet)
            held, self._held = self._held, {}
            timed = set(self.credentials.queue.timed())
            for key, last in held.items():
                # Still waiting for the burst's pace (not reconciled since, which may
                # have failed and be waiting for its retry instead).
                if key in timed and self.credentials.last_run.get(key) == last:
                    self.credentials.queue.add_after(key, self._pacing_wait(key))

    async def _resync(self, interval: float) -> None:
        """Every ``interval``: look at every credential and every Secret label again
        (a label removed by hand is put back even if no event said so)."""
        while True:
            await asyncio.sleep(interval)
            for key in self.caches.credentials:
                self.credentials.queue.add(key)
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

    def _cleared(self, controller: str, key: Key) -> None:
        """A key succeeded: its next failure is shown again."""
        self._errors.pop((controller, key), None)

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
        if controller in ("credentials", "verification", "rotation", "permissions"):
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
