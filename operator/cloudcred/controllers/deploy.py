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

A reconciler like the others: it reads what to do from the caches (the cluster, its
credential, the mark the credential reconciler wrote) and writes only its own fields
(``deployedRevision``, ``lastDeployedTime``, ``deployFailure``), each write pinned to
the cluster's UID. A first deployment waits until the credential's status lists the
cluster (then the admission policy holds the credential's deletion on its account),
and, during a burst of new Clusters, until the burst is over (``bindings_settled``: no
new Cluster for a second and the cluster reconciler idle, at most ``BINDINGS_FIRST``
seconds per attempt): bindings guard deletion and go first, and a burst of new
clusters costs the API server one write each before their deployments come. A
redeploy (the cluster is marked) never waits. Clusters in the same region with the
same credential revision share one provider check (single flight, remembered for
``CHECK_TTL``), so a fan-out to a thousand clusters costs a handful of provider
calls, not a thousand. A failed deploy is recorded in the cluster's
``status.deployFailure`` (revision, message, attempts, time), so the backoff and the
halted rollout survive a restart; the cluster reconciler shows it as
``RedeployPending=DeployFailed``, and the credential reconciler halts the rollout on
it. It is retried with the verification's backoff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from cloudcred import boundary, conditions, permissions
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key, selector_matches
from cloudcred.cache import Caches
from cloudcred.config import Settings
from cloudcred.constants import (
    API_VERSION,
    CLUSTER_PLURAL,
    DELIVERED_REVISION_ANNOTATION,
    EXPIRES_ANNOTATION,
    IN_USE_LABEL,
    MANAGED_BY_LABEL,
)
from cloudcred.controllers.controller import DONE, Result
from cloudcred.installation import Installation
from cloudcred.kube import Kube, NotFound, PreconditionFailed
from cloudcred.providers import provider_module
from cloudcred.providers.base import Reason, VerificationError, VerifyContext
from cloudcred.revision import compute_revision
from cloudcred.verification import ask_provider, read_secrets, retry_delay, with_external_id

MANAGER = "cloudcred-deployer"
DEPLOY_CONCURRENCY = 16  # deploy workers (the API calls queue in Kube anyway)
CHECK_TTL = 600.0  # how long a successful region check counts for the same revision
FAILED_CHECK_TTL = 5.0  # clusters asking at the same moment share one failed answer
SUPERSEDED_RECHECK = 5.0  # the Secret changed under a revision: look again after this
RENEWAL_RETRY = 60.0  # a failed renewal of delivered session credentials: again after this
BINDINGS_FIRST = 30.0  # at most: a long burst of new clusters must not starve first deploys

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


class DeployReconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        caches: Caches,
        provider_slots: asyncio.Semaphore,
        installation: Installation,
        bindings_settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``bindings_settled`` returns once a burst of new Clusters is over (None:
        first deployments do not wait for it)."""
        self.kube = kube
        self.settings = settings
        self.caches = caches
        self.provider_slots = provider_slots
        self.installation = installation
        self.bindings_settled = bindings_settled
        # The single-flight provider checks, shared by the clusters of one region.
        self._checks: dict[CheckKey, asyncio.Future[None]] = {}
        self._checked_until: dict[CheckKey, float] = {}
        # What the provider reported at each passed check (a static AWS key's ARN).
        self._identities: dict[CheckKey, str | None] = {}
        self._failed: dict[CheckKey, tuple[float, VerificationError]] = {}
        # Credential delivery, per cluster object (key -> (uid, ...)): the revision and
        # spec its Secret was last written from (to renew the session credentials of a
        # cluster that waits in a rollout), when they expire, and a revocation done.
        self._delivered: dict[Key, tuple[str | None, str, dict[str, Any]]] = {}
        self._expires: dict[Key, tuple[str | None, datetime | None]] = {}
        # Secrets deleted on revocation whose deletion the watch has not echoed yet.
        self._deleted: set[str] = set()

    def _forget(self, key: Key, uid: str | None = None) -> None:
        """Drop what is kept about the cluster under ``key`` unless it is object ``uid``."""
        for state in (self._delivered, self._expires):
            if key in state and state[key][0] != uid:
                del state[key]

    def target(self, cluster: ClusterInfo, credential: CredentialInfo) -> DeployTarget | None:
        """What to deploy for this bound cluster now, if anything: never deployed, or
        marked with the revision of a credential that verified and is up to date with
        its spec; a first deployment once the credential's status lists the cluster."""
        if not credential.revision or credential.spec_changed or credential.deleting:
            return None
        if credential.verification_problem:
            return None
        if cluster.deployed_revision == credential.revision:
            return None
        if cluster.deployed_revision and cluster.marked != credential.revision:
            return None  # its turn has not come
        if not cluster.deployed_revision and not credential.lists(cluster.key):
            return None  # the binding is not recorded yet: its write brings this back
        if permissions.cluster_hold(credential, cluster.permission_sets) is not None:
            return None  # its sets are not met, or not checked yet: the check brings it back
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
            automatic = (credential.raw_spec.get("rotation") or {}).get("policy") == "Automatic"
            if automatic and not delivery.get("shareRotatingKey"):
                return (f"{named} rotates its key automatically, so a copy of it can make "
                        f"new keys: delivery to namespace {cluster.namespace} needs "
                        "spec.delivery.shareRotatingKey: true")  # fmt: skip
        return self.boundary_violation(credential, self._reported_identity(credential))

    def boundary_violation(
        self, credential: CredentialInfo, reported: str | None = None
    ) -> str | None:
        """The credential is outside a CredentialBoundary of its namespace (checked before
        every use, on top of verification): what admission can see in the spec, and
        ``reported``, the identity the deploy step's own check got from the provider (the
        account of a static AWS key, the service account of a GCP key). Never
        ``status.identity``: tenants who may write status could name an allowed one."""
        spec = CloudCredentialSpec.model_validate(credential.spec)
        account = boundary.arn_account(reported) if spec.aws and reported else None
        email = reported if spec.gcp and reported else None
        return self.caches.boundary_violation(credential.namespace, spec, account, email)

    def _reported_identity(self, credential: CredentialInfo) -> str | None:
        """The identity the provider reported at this operator's last check of the
        credential's current revision, in any region (None before one)."""
        for (key, revision, _), identity in self._identities.items():
            if key == credential.key and revision == credential.revision and identity:
                return identity
        return None

    async def reconcile(self, key: Key) -> Result:
        return await self._reconcile(key, waited=self.bindings_settled is None)

    async def _reconcile(self, key: Key, waited: bool) -> Result:
        cluster = self.caches.clusters.get(key)
        if cluster is None:
            self._forget(key)
            return DONE
        self._forget(key, cluster.uid)
        stale = [k for k in self._owned(cluster) if k[1] != cluster.credentials_secret]
        if stale:  # renamed, or the field removed: found by owner, not by the spec's name
            await self._revoke_secrets(cluster, stale, "no longer named by "
                                       "spec.credentialsSecret")  # fmt: skip
        if cluster.external:
            return DONE
        binding = self.caches.decide(cluster)
        credential = self.caches.credentials.get(cluster.credential)
        if cluster.credentials_secret:
            if not binding.bound:
                await self._revoke(cluster, f"the cluster is not bound: {binding.message}")
            elif credential is not None:
                refusal = self.delivery_refusal(cluster, credential)
                if refusal:
                    await self._revoke(cluster, refusal)
        if not binding.bound or credential is None:
            return DONE
        target = self.target(cluster, credential)
        if target is None:
            if cluster.status.get("deployFailure"):
                # Nothing to deploy any more (deployed by an attempt whose answer was lost,
                # or no longer wanted): no failure either. A failure left behind would
                # halt its credential's rollout for good.
                await self._write(cluster, [{"op": "remove", "path": "/status/deployFailure"}])
                return DONE
            return await self._keep_fresh(cluster, credential)
        wait = self._retry_wait(cluster, credential.revision)
        if wait > 0:  # a failed deploy's retry is not due yet: new events do not hurry it
            return Result(requeue_after=wait)
        if not cluster.deployed_revision and not waited and self.bindings_settled is not None:
            # A first deployment waits for a burst of new clusters to be bound; then
            # everything is looked at again (the cluster or its credential may have moved).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bindings_settled(), BINDINGS_FIRST)
            return await self._reconcile(key, waited=True)
        try:
            await self._deploy_target(target)
        except Superseded:
            logger.debug("deploy of %s/%s waits: the credential changed under it", *key)
            return Result(requeue_after=SUPERSEDED_RECHECK)
        except VerificationError as error:
            logger.debug("deploy of %s/%s failed: %s", *key, error.message)
            return await self._failed_deploy(target, error.message)
        except DeployError as error:
            return await self._failed_deploy(target, str(error))
        except NotFound:
            return DONE  # the cluster is gone: the store hears of it
        except PreconditionFailed:
            return Result(requeue_after=1.0)  # re-created, or its status moved: look again
        except (ApiException, HTTPError, RuntimeError) as error:  # the API is away: retry
            if isinstance(error, ApiException):
                reason = f"Kubernetes API error (HTTP {error.status})"
            elif isinstance(error, RuntimeError):  # kube.py's messages hold no data
                reason = str(error)
            else:
                reason = f"Kubernetes API unreachable ({type(error).__name__})"
            return await self._failed_deploy(target, reason)
        except Exception as error:  # a bug: retry, keep the operator up
            logger.exception("deploying cluster %s/%s failed", *key)
            return await self._failed_deploy(target, f"internal error ({type(error).__name__})")
        return await self._keep_fresh(cluster, credential)

    def _retry_wait(self, cluster: ClusterInfo, revision: str | None) -> float:
        """Seconds until the next attempt at ``revision`` is due after failed ones."""
        failure = cluster.status.get("deployFailure") or {}
        if failure.get("revision") != revision or not failure.get("lastAttemptTime"):
            return 0.0
        last = conditions.parse_time(failure["lastAttemptTime"])
        if last is None:
            return 0.0
        delay = retry_delay(int(failure.get("attempts") or 1) - 1, self.settings)
        return delay - (conditions.now() - last).total_seconds()

    async def _write(self, cluster: ClusterInfo, operations: list[dict[str, Any]]) -> None:
        """A JSON patch of this cluster object's status (its UID tested)."""
        assert cluster.uid is not None
        await self.kube.patch_status_guarded(CLUSTER_PLURAL, *cluster.key, cluster.uid,
                                             operations, MANAGER)  # fmt: skip

    def _owned(self, cluster: ClusterInfo) -> list[Key]:
        """The Secrets whose controller owner is this cluster object (its UID), as the
        delivered-Secrets watch last saw them, less those being deleted. Only its own
        namespace's: an owner reference names an object of its dependent's namespace, so
        a Secret elsewhere that claims this UID (anyone may write one) is not its."""
        if not cluster.uid:
            return []
        found = self.caches.delivered.by("owner", cluster.uid)
        return sorted(k for k in found if k[0] == cluster.namespace
                      and (info := self.caches.delivered.get(k)) is not None
                      and info.uid not in self._deleted)  # fmt: skip

    async def _revoke_secrets(self, cluster: ClusterInfo, keys: list[Key], why: str) -> None:
        """Delete these Secrets the cluster owns (each with its UID as precondition). A
        ``cloudcred.io/in-use`` label on one (a tenant's, which would make the delete
        fail) is taken off first: the operator holds the verb that allows it."""
        self._delivered.pop(cluster.key, None)
        self._expires.pop(cluster.key, None)
        for key in keys:
            info = self.caches.delivered.get(key)
            if info is None:
                continue
            if info.in_use:
                await self.kube.set_secret_labels(*key, {IN_USE_LABEL: None})
            await self.kube.delete_secret(*key, info.uid)
            if len(self._deleted) > 1000:  # keep only what the watch has not echoed yet
                self._deleted = {i.uid for i in self.caches.delivered.objects.values()}
            self._deleted.add(info.uid)
            await self.kube.post_event(
                cluster.reference, "Warning", "CredentialsRevoked",
                f"deleted Secret {key[0]}/{key[1]}: {why}",
            )  # fmt: skip

    async def _revoke(self, cluster: ClusterInfo, why: str) -> None:
        """Delete every Secret the operator delivered to this cluster: it may not have
        its credential's values any more. Only Secrets this cluster object owns (its UID
        in the controller owner reference) are deleted, each with a precondition on its
        own UID."""
        await self._revoke_secrets(cluster, self._owned(cluster), why)

    async def _deploy_target(self, target: DeployTarget) -> None:
        cluster, credential = target.cluster, target.credential
        revision = credential.revision
        assert revision is not None  # target() hands over only credentials with one
        violation = self.boundary_violation(credential)  # what the spec shows
        if violation:
            raise DeployError(violation)
        reported = await self._check(credential, target.spec, revision, cluster.region)
        violation = self.boundary_violation(credential, reported)  # and what STS said
        if violation:
            raise DeployError(violation)
        if cluster.credentials_secret:
            refusal = self.delivery_refusal(cluster, credential)
            if refusal:
                raise DeployError(refusal)
            await self._deliver(target, revision, check_revision=True)
        await self._record_deployment(cluster, revision)
        await self.kube.post_event(
            cluster.reference, "Normal", "Deployed",
            f"deployed with revision {revision} of CloudCredential "
            f"{credential.namespace}/{credential.name}",
        )  # fmt: skip

    async def _record_deployment(self, cluster: ClusterInfo, revision: str) -> None:
        """Write ``deployedRevision`` on this cluster object and no other: a Cluster
        deleted and re-created under its name during the deploy is another cluster and
        gets its own deployment."""
        moment = conditions.timestamp(conditions.now())
        operations: list[dict[str, Any]] = [
            {"op": "add", "path": "/status/deployedRevision", "value": revision},
            {"op": "add", "path": "/status/lastDeployedTime", "value": moment},
        ]
        if cluster.status.get("deployFailure"):
            operations.append({"op": "remove", "path": "/status/deployFailure"})
        await self._write(cluster, operations)

    async def _failed_deploy(self, target: DeployTarget, message: str) -> Result:
        """Record the failure in the cluster's status and retry after the backoff."""
        cluster, revision = target.cluster, target.credential.revision
        assert revision is not None
        previous = cluster.status.get("deployFailure") or {}
        same = previous.get("revision") == revision
        attempts = int(previous.get("attempts") or 0) + 1 if same else 1
        delay = retry_delay(attempts - 1, self.settings)
        failure = {"revision": revision, "message": message[:2048], "attempts": attempts,
                   "lastAttemptTime": conditions.timestamp(conditions.now())}  # fmt: skip
        try:
            await self._write(cluster, [{"op": "add", "path": "/status/deployFailure",
                                         "value": failure}])  # fmt: skip
        except NotFound:
            return DONE
        if not same or previous.get("message") != message:
            await self.kube.post_event(cluster.reference, "Warning", "DeployFailed",
                                       f"{message}; retrying in {delay:g}s")  # fmt: skip
        return Result(requeue_after=delay)

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
        self._delivered[cluster.key] = (cluster.uid, revision, target.spec)
        self._expires[cluster.key] = (cluster.uid, delivery.expires)

    async def _keep_fresh(self, cluster: ClusterInfo, credential: CredentialInfo) -> Result:
        """For a deployed cluster with a credentials Secret: renew its session
        credentials ``refresh_before`` seconds before they expire (the expiry is read
        from the Secret once after a restart), and look again then."""
        if not cluster.credentials_secret or not cluster.deployed_revision:
            return DONE
        if self.delivery_refusal(cluster, credential):
            return DONE  # revoked above
        key = cluster.key
        if key not in self._delivered and not self._owned(cluster):
            # No Secret delivered to it, though it may have one: revoked and allowed
            # again (a namespace labelled back, an opt-in set), or deleted by someone.
            # The revision it is deployed with is delivered again.
            return await self._renew(cluster, credential)
        if key not in self._expires:
            metadata = await self.kube.secret_metadata(key[0], cluster.credentials_secret)
            stamp = ((metadata.annotations or {}) if metadata else {}).get(EXPIRES_ANNOTATION)
            self._expires[key] = (cluster.uid, conditions.parse_time(stamp) if stamp else None)
        expires = self._expires[key][1]
        if expires is None:
            return DONE  # static values: nothing expires
        due = (expires - conditions.now()).total_seconds() - self.settings.refresh_before
        if due > 0:
            return Result(requeue_after=max(due, 1.0))
        return await self._renew(cluster, credential)

    async def _renew(self, cluster: ClusterInfo, credential: CredentialInfo) -> Result:
        """Deliver again the revision the cluster is deployed with: the current spec when
        the cluster is up to date, else the spec it was delivered from (a cluster
        waiting in a paced or blocked rollout keeps working)."""
        deployed = cluster.deployed_revision
        assert deployed is not None
        target = DeployTarget(cluster, credential, credential.spec)
        if deployed != credential.revision:
            remembered = self._delivered.get(cluster.key)
            if remembered is None or remembered[1] != deployed:
                logger.warning("cannot renew the session credentials of cluster %s/%s: the "
                               "spec of revision %s is not known any more; they are renewed "
                               "at its next deployment", *cluster.key, deployed)  # fmt: skip
                return DONE
            target = DeployTarget(cluster, credential, remembered[2])
        try:
            await self._deliver(target, deployed, check_revision=False)
        except (VerificationError, DeployError, RuntimeError) as error:
            message = getattr(error, "message", None) or str(error)
            logger.warning("renewing the session credentials of cluster %s/%s failed: %s; "
                           "retrying in %gs", *cluster.key, message, RENEWAL_RETRY)  # fmt: skip
            return Result(requeue_after=RENEWAL_RETRY)
        expires = self._expires[cluster.key][1]
        if expires is None:
            return DONE
        due = (expires - conditions.now()).total_seconds() - self.settings.refresh_before
        return Result(requeue_after=max(due, 1.0))  # never a busy loop on short lifetimes

    async def _check(
        self, credential: CredentialInfo, spec: dict[str, Any], revision: str, region: str
    ) -> str | None:
        """The region check, shared by every cluster asking for the same thing; returns
        the identity the provider reported (``check_region``)."""
        key: CheckKey = (credential.key, revision, region)
        now = time.monotonic()
        if len(self._checked_until) + len(self._failed) > 1000:  # old revisions pile up
            self._checked_until = {k: t for k, t in self._checked_until.items() if t > now}
            self._identities = {k: v for k, v in self._identities.items()
                                if k in self._checked_until}  # fmt: skip
            self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
        if self._checked_until.get(key, 0.0) > now:
            return self._identities.get(key)
        failed = self._failed.get(key)
        if failed and failed[0] > now:
            raise failed[1]
        running = self._checks.get(key)
        if running is None:
            running = asyncio.ensure_future(self._run_check(key, credential, spec, revision))
            self._checks[key] = running
            running.add_done_callback(lambda _: self._checks.pop(key, None))
        await asyncio.shield(running)
        return self._identities.get(key)

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
            reported = await ask_provider(
                partial(module.check_region, spec, secrets, region, context),
                spec.provider, self.settings.verification_timeout, self.provider_slots,
            )  # fmt: skip
            del secrets
        except VerificationError as error:
            if error.reason != Reason.VERIFICATION_UNAVAILABLE:  # e.g. a library missing
                self._failed[key] = (time.monotonic() + FAILED_CHECK_TTL, error)
                raise
        self._identities[key] = reported
        self._checked_until[key] = time.monotonic() + CHECK_TTL
