"""The operator's own deploy step, for clusters with ``spec.deploy: Operator``.

Deploying a cluster with a credential revision means: check that the credential
works for the cluster's region (AWS: the regional STS endpoint and Auto Scaling
DescribeAutoScalingGroups there; the other clouds: the provider's own check, their
credentials are not regional), then record ``status.deployedRevision`` and
``status.lastDeployedTime`` (server-side apply, manager ``cloudcred-deployer``) and
post a ``Deployed`` Event on the cluster.

With ``spec.credentialsSecret`` (opt-in), the deploy step also writes the credential,
in the provider's standard form, to a Secret in the cluster's namespace (owned by the
Cluster, annotated with the revision) before it records the deployment, so the Secret
changes exactly at the cluster's deployments. AWS role credentials are delivered as
session credentials, renewed ``refresh_before`` seconds before they expire.

The cluster reconciler queues a cluster here whenever it is behind its credential;
the deploy reads what to do from the caches, like the reconcilers.
Clusters in the same region with the same credential revision share one provider
check (single flight, remembered for ``CHECK_TTL``), so a fan-out to a thousand
clusters costs a handful of provider calls, not a thousand. A failed deploy is
retried with the same backoff as verification, and the failure is shown in the
cluster's ``RedeployPending`` condition (``DeployFailed``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from cloudcred import boundary, conditions
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.bindings import (
    BOUND,
    Binding,
    ClusterInfo,
    CredentialInfo,
    Key,
    selector_matches,
)
from cloudcred.cache import Caches
from cloudcred.config import Settings
from cloudcred.constants import (
    API_VERSION,
    CLUSTER_PLURAL,
    DELIVERED_REVISION_ANNOTATION,
    EXPIRES_ANNOTATION,
    MANAGED_BY_LABEL,
)
from cloudcred.installation import Installation
from cloudcred.kube import Kube, NotFound, PreconditionFailed, describe_error
from cloudcred.providers import provider_module
from cloudcred.providers.base import Reason, VerificationError, VerifyContext
from cloudcred.revision import compute_revision
from cloudcred.rollout import RolloutPlan, redeploy_conditions, redeploy_state
from cloudcred.verification import ask_provider, read_secrets, retry_delay, with_external_id
from cloudcred.workqueue import WorkQueue

MANAGER = "cloudcred-deployer"
DEPLOY_CONCURRENCY = 16  # deploy workers (the API calls queue in Kube anyway)
BINDINGS_FIRST = 30.0  # at most: a long burst of changes must not starve first deploys
BINDINGS_QUIET = 1.0  # no cluster change for this long: a burst of new clusters has ended
CHECK_TTL = 600.0  # how long a successful region check counts for the same revision
FAILED_CHECK_TTL = 5.0  # clusters asking at the same moment share one failed answer
SUPERSEDED_RECHECK = 5.0  # the Secret changed under a revision: look again after this

logger = logging.getLogger("cloudcred.deployer")


@dataclass(frozen=True)
class DeployTarget:
    """A cluster to deploy, with the credential revision to deploy it with."""

    cluster: ClusterInfo
    credential: CredentialInfo
    spec: dict[str, Any]


def owned_by(metadata: Any, cluster_uid: str | None) -> bool:
    """The Secret is the one the operator created for this cluster: the cluster's UID
    is its controller owner reference. A label says nothing (anyone may set one)."""
    return cluster_uid is not None and any(
        reference.uid == cluster_uid and reference.kind == "Cluster" and reference.controller
        for reference in metadata.owner_references or []
    )


class Superseded(Exception):
    """The credential's Secret changed since its revision was computed."""


class DeployError(Exception):
    """The deploy step cannot proceed for a reason the user must fix; the message is
    shown in the cluster's condition."""


CheckKey = tuple[Key, str, str]  # (credential, revision, region)


class DeployController:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        caches: Caches,
        provider_slots: asyncio.Semaphore,
        clusters: WorkQueue[Key],
        credentials: WorkQueue[Key],
        installation: Installation,
    ) -> None:
        """``clusters`` and ``credentials`` are the reconcilers' queues: the deploy
        step's news (a failure to show on the cluster, a rollout to halt) goes there."""
        self.kube = kube
        self.settings = settings
        self.caches = caches
        self.provider_slots = provider_slots
        self.clusters = clusters
        self.credentials = credentials
        self.installation = installation
        self.queue: WorkQueue[Key] = WorkQueue("deploy")
        self.failures: dict[Key, str] = {}  # why the last deploy of a cluster failed
        self._attempts: dict[Key, int] = {}
        self._retry_at: dict[Key, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._checks: dict[CheckKey, asyncio.Future[None]] = {}
        self._checked_until: dict[CheckKey, float] = {}
        self._failed: dict[CheckKey, tuple[float, VerificationError]] = {}
        # Credential delivery: the spec each cluster's Secret was last written from (to
        # renew session credentials of a cluster waiting in a rollout) and the timers.
        self._delivered: dict[Key, tuple[str, dict[str, Any]]] = {}
        self._renewals: dict[Key, asyncio.TimerHandle] = {}
        self._expiry_known: set[Key] = set()
        self._revoked: set[Key] = set()  # clusters whose delivered Secret is gone
        self.paused = False  # see pause()

    def pause(self) -> None:
        """Another replica acts: no renewals until ``resume()`` (the workers stop taking
        keys); renewals are scheduled anew when the clusters are reconciled again."""
        self.paused = True
        for handle in self._renewals.values():
            handle.cancel()
        self._renewals.clear()
        self._expiry_known.clear()

    def resume(self) -> None:
        self.paused = False

    def forget(self, key: Key) -> None:
        """The cluster is gone (or re-created: another object): drop what is kept."""
        self.succeeded(key)
        self.queue.discard(key)
        self._delivered.pop(key, None)
        self._expiry_known.discard(key)
        renewal = self._renewals.pop(key, None)
        if renewal:
            renewal.cancel()

    def succeeded(self, key: Key) -> None:
        for state in (self.failures, self._attempts, self._retry_at):
            state.pop(key, None)

    def target(self, key: Key) -> DeployTarget | None:
        """What to deploy for this cluster now, if anything: only a bound cluster deployed
        by the operator, never deployed or marked with the revision of a credential that
        verified and is up to date with its spec."""
        cluster = self.caches.clusters.get(key)
        if cluster is None or cluster.external or not self.caches.decide(cluster).bound:
            return None
        credential = self.caches.credentials.get(cluster.credential)
        if credential is None:
            return None
        if not credential.revision or credential.spec_changed or credential.deleting:
            return None
        if credential.verification_problem:
            return None
        if cluster.deployed_revision == credential.revision:
            return None
        if cluster.deployed_revision and cluster.marked != credential.revision:
            return None  # its turn has not come
        return DeployTarget(cluster, credential, credential.spec)

    def bound_target(self, key: Key) -> DeployTarget | None:
        """A cluster deployed by the operator and bound, with its credential. Bound as
        the operator decides it from its caches, never as the Cluster's status says
        (anyone who may patch clusters/status could write that)."""
        cluster = self.caches.clusters.get(key)
        if cluster is None or cluster.external or not self.caches.decide(cluster).bound:
            return None
        credential = self.caches.credentials.get(cluster.credential)
        if credential is None:
            return None
        return DeployTarget(cluster, credential, credential.spec)

    def delivery_refusal(self, cluster: ClusterInfo, credential: CredentialInfo) -> str | None:
        """Why this cluster may not receive its credential's values now (a message for
        its DeployFailed condition), or None. Both switches must allow it: the
        installation's and the credential's own, for the cluster's namespace."""
        if not self.settings.delivery_enabled:
            return ("credential delivery is off in this installation "
                    "(the operator's CLOUDCRED_DELIVERY_ENABLED)")  # fmt: skip
        named = f"CloudCredential {credential.namespace}/{credential.name}"
        delivery = credential.delivery or {}
        if not delivery.get("enabled"):
            return f"{named} does not allow delivery (spec.delivery.enabled)"
        if cluster.namespace != credential.namespace:
            selector = delivery.get("allowedNamespaces")
            labels = self.caches.namespace_labels(cluster.namespace)
            if selector is None or labels is None or not selector_matches(selector, labels):
                return (f"{named} does not allow delivery to namespace {cluster.namespace} "
                        "(spec.delivery.allowedNamespaces)")  # fmt: skip
        return self.boundary_violation(credential)

    def boundary_violation(self, credential: CredentialInfo) -> str | None:
        """The credential is outside a CredentialBoundary of its namespace (checked before
        every use, on top of verification): what admission can see in the spec, and the
        account STS reported for a static AWS key (``status.identity``)."""
        spec = CloudCredentialSpec.model_validate(credential.spec)
        identity = credential.status.get("identity")
        account = boundary.arn_account(identity) if spec.aws and identity else None
        return self.caches.boundary_violation(credential.namespace, spec, account)

    async def revoke(self, key: Key, why: str) -> None:
        """Delete the Secret the operator delivered to this cluster, if there is one:
        the cluster may not have its credential's values any more. Only a Secret this
        cluster owns (its UID in the controller owner reference) is deleted, and only
        that object (a precondition on its UID)."""
        cluster = self.caches.clusters.get(key)
        if cluster is None or not cluster.credentials_secret or key in self._revoked:
            return
        self.forget(key)
        existing = await self.kube.secret_metadata(cluster.namespace, cluster.credentials_secret)
        if existing is not None and owned_by(existing, cluster.uid):
            await self.kube.delete_secret(cluster.namespace, cluster.credentials_secret,
                                          existing.uid)  # fmt: skip
            await self.kube.post_event(
                cluster.reference, "Warning", "CredentialsRevoked",
                f"deleted Secret {cluster.namespace}/{cluster.credentials_secret}: {why}",
            )  # fmt: skip
        self._revoked.add(key)

    async def reconcile(self, key: Key) -> None:
        """Deploy this cluster if it needs it. Failures are the deploy step's own
        business: shown on the cluster (DeployFailed) and retried with a backoff."""
        wait = self._retry_at.get(key, 0.0) - time.monotonic()
        if wait > 0:  # a failed deploy's retry is not due yet: new events do not hurry it
            self.queue.add_after(key, wait)
            return
        known = self.bound_target(key)
        if known is None or not known.cluster.deployed_revision:
            # A first deployment waits for the bindings to settle (they hold deletion
            # safety); a redeploy (the cluster is marked, its binding settled) goes at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.clusters.settled(BINDINGS_QUIET), BINDINGS_FIRST)
        target = self.target(key)
        if target is None:
            if key in self.failures:
                # Nothing to deploy any more (deployed by an attempt whose answer was lost,
                # or no longer wanted): no failure either. A failure left behind would
                # halt its credential's rollout for good.
                self.succeeded(key)
                self.clusters.add(key)
                found = self.caches.clusters.get(key)
                if found is not None:
                    self.credentials.add(found.credential)
            return
        try:
            await self._deploy_target(target)
        except Superseded:
            logger.debug("deploy of %s/%s waits: the credential changed under it", *key)
            self.queue.add_after(key, SUPERSEDED_RECHECK)
        except VerificationError as error:
            logger.debug("deploy of %s/%s failed: %s", *key, error.message)
            await self._failed_deploy(target, error.message)
        except DeployError as error:
            await self._failed_deploy(target, str(error))
        except NotFound:
            self.forget(key)  # the cluster is gone
        except PreconditionFailed:
            now = self.caches.clusters.get(key)
            if now is not None and now.uid != target.cluster.uid:
                self.forget(key)  # re-created: another object, deployed on its own
                self.clusters.add(key)
            else:  # its conditions moved under the write: look again
                self.queue.add_after(key, 1.0)
        except (ApiException, HTTPError, RuntimeError) as error:  # the API is away: retry
            if isinstance(error, ApiException):
                reason = f"Kubernetes API error (HTTP {error.status})"
            elif isinstance(error, RuntimeError):  # kube.py's messages hold no data
                reason = str(error)
            else:
                reason = f"Kubernetes API unreachable ({type(error).__name__})"
            await self._failed_deploy(target, reason)
        except Exception as error:  # a bug: retry, keep the operator up
            logger.exception("deploying cluster %s/%s failed", *key)
            await self._failed_deploy(target, f"internal error ({type(error).__name__})")

    async def _deploy_target(self, target: DeployTarget) -> None:
        cluster, credential = target.cluster, target.credential
        revision = credential.revision
        assert revision is not None  # the binder hands over only credentials with one
        violation = self.boundary_violation(credential)
        if violation:
            raise DeployError(violation)
        await self._check(credential, target.spec, revision, cluster.region)
        if cluster.credentials_secret:
            refusal = self.delivery_refusal(cluster, credential)
            if refusal:
                raise DeployError(refusal)
            await self._deliver(target, revision, check_revision=True)
        await self._record_deployment(cluster, revision)
        self.succeeded(cluster.key)
        await self.kube.post_event(
            cluster.reference, "Normal", "Deployed",
            f"deployed with revision {revision} of CloudCredential "
            f"{credential.namespace}/{credential.name}",
        )  # fmt: skip

    async def _record_deployment(self, cluster: ClusterInfo, revision: str) -> None:
        """Write ``deployedRevision`` on this cluster object and no other: a Cluster
        deleted and re-created under its name during the deploy is another cluster and
        gets its own deployment. With it, the conditions the cluster reconciler would
        write next (it then finds nothing to change): one write per deployment."""
        assert cluster.uid is not None
        deployed = dataclasses.replace(cluster, status={**cluster.status,
                                                        "deployedRevision": revision})  # fmt: skip
        bound = Binding(True, BOUND, "")
        wanted = redeploy_conditions(
            deployed, bound, redeploy_state(deployed, RolloutPlan(revision))
        )
        moment = conditions.timestamp(conditions.now())
        operations: list[dict[str, Any]] = [
            {"op": "add", "path": "/status/deployedRevision", "value": revision},
            {"op": "add", "path": "/status/lastDeployedTime", "value": moment},
        ]
        current = [c.get("type") for c in cluster.status.get("conditions") or []]
        for condition in wanted:
            if condition["type"] not in current:
                operations.append({"op": "add", "path": "/status/conditions/-", "value": condition})
                continue
            at = f"/status/conditions/{current.index(condition['type'])}"
            operations += [{"op": "test", "path": f"{at}/type", "value": condition["type"]},
                           {"op": "replace", "path": at, "value": condition}]  # fmt: skip
        await self.kube.patch_status_guarded(CLUSTER_PLURAL, *cluster.key, cluster.uid,
                                             operations, MANAGER)  # fmt: skip

    async def _deliver(self, target: DeployTarget, revision: str, check_revision: bool) -> None:
        """Write the cluster's credentials Secret with the credential of ``revision``."""
        cluster, credential = target.cluster, target.credential
        name = cluster.credentials_secret
        assert name is not None
        existing = await self.kube.secret_metadata(cluster.namespace, name)
        if existing is not None and not owned_by(existing, cluster.uid):
            raise DeployError(f"Secret {cluster.namespace}/{name} exists and was not created by "
                              "cloudcred for this Cluster: choose another "
                              "spec.credentialsSecret.name")  # fmt: skip
        spec = CloudCredentialSpec.model_validate(target.spec)
        module = provider_module(spec.provider)
        secrets = await read_secrets(self.kube, credential.namespace, module.secret_refs(spec))
        if check_revision and compute_revision(spec, secrets, self.installation) != revision:
            raise Superseded
        # The cluster's name in STS session names, tags and CloudTrail.
        context = await with_external_id(
            self.kube, self.installation,
            VerifyContext(credential.namespace, credential.name,
                          self.settings.provider_settings(), cluster=cluster.key),
            spec,
        )  # fmt: skip
        delivery = await ask_provider(
            partial(module.delivery, spec, secrets, cluster.region, context),
            spec.provider, self.settings.verification_timeout, self.provider_slots,
        )  # fmt: skip
        del secrets
        annotations = {DELIVERED_REVISION_ANNOTATION: revision}
        if delivery.expires:
            annotations[EXPIRES_ANNOTATION] = conditions.timestamp(delivery.expires)
        data = {key: base64.b64encode(value.get_secret_value().encode()).decode()
                for key, value in delivery.data.items()}  # fmt: skip
        if existing is None:  # created here, so it is the operator's: never a take-over
            metadata = {
                "labels": {MANAGED_BY_LABEL: "cloudcred"},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": "Cluster",
                                     "name": cluster.name, "uid": cluster.uid,
                                     "controller": True}],
            }  # fmt: skip
            await self.kube.create_secret(cluster.namespace, name, data, metadata)
        else:  # the same object, unchanged since it was read as ours
            await self.kube.replace_secret_data(
                cluster.namespace, name, existing.uid, existing.resource_version, data,
                annotations,
            )  # fmt: skip
        self._revoked.discard(cluster.key)
        self._delivered[cluster.key] = (revision, target.spec)
        self._expiry_known.add(cluster.key)
        if delivery.expires:
            self._renew_at(cluster.key, delivery.expires)

    def _renew_at(self, key: Key, expires: datetime) -> None:
        """Renew delivered session credentials ``refresh_before`` seconds before expiry."""
        old = self._renewals.pop(key, None)
        if old:
            old.cancel()
        remaining = (expires - conditions.now()).total_seconds()
        delay = max(remaining - self.settings.refresh_before, 1.0)
        loop = asyncio.get_running_loop()
        self._renewals[key] = loop.call_later(delay, self._start_renewal, key)

    def _start_renewal(self, key: Key) -> None:
        self._renewals.pop(key, None)
        if not self.paused:
            self._start(self._renew(key), f"renew {key[0]}/{key[1]}")

    def _start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """A short task of its own (a renewal, an expiry read); failures are logged."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.warning("%s failed: %s", task.get_name(), describe_error(error))

    async def _renew(self, key: Key) -> None:
        """Deliver again the revision the cluster is deployed with: the current spec when
        the cluster is up to date, else the spec it was delivered from (a cluster
        waiting in a paced or blocked rollout keeps working)."""
        target = self.bound_target(key)
        if target is None or not target.cluster.credentials_secret:
            return
        refusal = self.delivery_refusal(target.cluster, target.credential)
        if refusal:
            await self.revoke(key, refusal)
            return
        deployed = target.cluster.deployed_revision
        if deployed is None:
            return
        if deployed != target.credential.revision:
            remembered = self._delivered.get(key)
            if remembered is None or remembered[0] != deployed:
                logger.warning("cannot renew the session credentials of cluster %s/%s: the "
                               "spec of revision %s is not known any more; they are renewed "
                               "at its next deployment", *key, deployed)  # fmt: skip
                return
            target = DeployTarget(target.cluster, target.credential, remembered[1])
        try:
            await self._deliver(target, deployed, check_revision=False)
        except (VerificationError, DeployError, RuntimeError) as error:
            message = getattr(error, "message", None) or str(error)
            logger.warning("renewing the session credentials of cluster %s/%s failed: %s; "
                           "retrying in 60s", *key, message)  # fmt: skip
            self._renewals[key] = asyncio.get_running_loop().call_later(
                60.0, self._start_renewal, key
            )

    def keep_fresh(self, key: Key) -> None:
        """For a deployed cluster with a credentials Secret: after a restart, learn when
        its session credentials expire (from the Secret) and schedule their renewal."""
        if self.paused or key in self._expiry_known or key in self._renewals:
            return
        self._expiry_known.add(key)
        self._start(self._read_expiry(key), f"expiry {key[0]}/{key[1]}")

    async def _read_expiry(self, key: Key) -> None:
        target = self.bound_target(key)
        if target is None or not target.cluster.credentials_secret:
            return
        metadata = await self.kube.secret_metadata(key[0], target.cluster.credentials_secret)
        expires = ((metadata.annotations or {}) if metadata else {}).get(EXPIRES_ANNOTATION)
        if expires:
            self._renew_at(key, datetime.fromisoformat(expires.replace("Z", "+00:00")))

    async def _failed_deploy(self, target: DeployTarget, message: str) -> None:
        key = target.cluster.key
        new = self.failures.get(key) != message
        self.failures[key] = message
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        delay = retry_delay(attempt, self.settings)
        self._retry_at[key] = time.monotonic() + delay
        self.queue.add_after(key, delay)
        self.clusters.add(key)  # shows DeployFailed in the cluster's status
        self.credentials.add(target.credential.key)  # a failure halts the rollout
        if new:
            await self.kube.post_event(target.cluster.reference, "Warning", "DeployFailed",
                                       f"{message}; retrying in {delay:g}s")  # fmt: skip

    async def _check(
        self, credential: CredentialInfo, spec: dict[str, Any], revision: str, region: str
    ) -> None:
        """The region check, shared by every cluster asking for the same thing."""
        key: CheckKey = (credential.key, revision, region)
        now = time.monotonic()
        if len(self._checked_until) + len(self._failed) > 1000:  # old revisions pile up
            self._checked_until = {k: t for k, t in self._checked_until.items() if t > now}
            self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
        if self._checked_until.get(key, 0.0) > now:
            return
        failed = self._failed.get(key)
        if failed and failed[0] > now:
            raise failed[1]
        running = self._checks.get(key)
        if running is None:
            running = asyncio.ensure_future(self._run_check(key, credential, spec, revision))
            self._checks[key] = running
            running.add_done_callback(lambda _: self._checks.pop(key, None))
        await asyncio.shield(running)

    async def _run_check(
        self, key: CheckKey, credential: CredentialInfo, spec_body: dict[str, Any],
        revision: str,
    ) -> None:  # fmt: skip
        spec = CloudCredentialSpec.model_validate(spec_body)
        module = provider_module(spec.provider)
        try:
            secrets = await read_secrets(self.kube, credential.namespace, module.secret_refs(spec))
            if compute_revision(spec, secrets, self.installation) != revision:
                raise Superseded
            context = await with_external_id(
                self.kube, self.installation,
                VerifyContext(credential.namespace, credential.name,
                              self.settings.provider_settings()),
                spec,
            )  # fmt: skip
            region = key[2]
            await ask_provider(
                partial(module.check_region, spec, secrets, region, context),
                spec.provider, self.settings.verification_timeout, self.provider_slots,
            )  # fmt: skip
            del secrets
        except VerificationError as error:
            if error.reason != Reason.VERIFICATION_UNAVAILABLE:  # e.g. a library missing
                self._failed[key] = (time.monotonic() + FAILED_CHECK_TTL, error)
                raise
        self._checked_until[key] = time.monotonic() + CHECK_TTL
