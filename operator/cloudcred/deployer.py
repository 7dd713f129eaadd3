"""The operator's own deploy step, for clusters with ``spec.deploy: Operator``.

Deploying a cluster with a credential revision means: check that the credential
works for the cluster's region (AWS: the regional STS endpoint and EC2
DescribeAvailabilityZones; the other clouds: the provider's own check, their
credentials are not regional), then record ``status.deployedRevision`` and
``status.lastDeployedTime`` (server-side apply, manager ``cloudcred-deployer``) and
post a ``Deployed`` Event on the cluster.

The binder asks for a deploy whenever a cluster it looks at is behind its credential.
Clusters in the same region with the same credential revision share one provider
check (single flight, remembered for ``CHECK_TTL``), so a fan-out to a thousand
clusters costs a handful of provider calls, not a thousand. A failed deploy is
retried with the same backoff as verification, and the failure is shown in the
cluster's ``RedeployPending`` condition (``DeployFailed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from cloudcred import conditions
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.config import Settings
from cloudcred.constants import CLUSTER_PLURAL
from cloudcred.kube import Kube, NotFound
from cloudcred.providers import provider_module
from cloudcred.providers.base import VerificationError, VerifyContext
from cloudcred.revision import compute_revision
from cloudcred.verification import ask_provider, read_secrets, retry_delay

MANAGER = "cloudcred-deployer"
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


class Superseded(Exception):
    """The credential's Secret changed since its revision was computed."""


CheckKey = tuple[Key, str, str]  # (credential, revision, region)


class Deployer:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        provider_slots: asyncio.Semaphore,
        target: Callable[[Key], DeployTarget | None],
        changed: Callable[[Key], None],
    ) -> None:
        """``target(key)`` says what a cluster needs now (None: nothing); ``changed(key)``
        asks the binder to look at a cluster again."""
        self.kube = kube
        self.settings = settings
        self.provider_slots = provider_slots
        self.target = target
        self.changed = changed
        self.failures: dict[Key, str] = {}  # why the last deploy of a cluster failed
        self._attempts: dict[Key, int] = {}
        self._retry_at: dict[Key, float] = {}
        self._in_flight: set[Key] = set()
        self._again: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._checks: dict[CheckKey, asyncio.Future[None]] = {}
        self._checked_until: dict[CheckKey, float] = {}
        self._failed: dict[CheckKey, tuple[float, VerificationError]] = {}

    def request(self, key: Key) -> None:
        """Deploy this cluster soon, unless a deploy runs already or a retry waits."""
        if key in self._in_flight:
            self._again.add(key)
            return
        if time.monotonic() < self._retry_at.get(key, 0.0):
            return
        self._in_flight.add(key)
        task = asyncio.create_task(self._deploy(key), name=f"deploy {key[0]}/{key[1]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, key: Key) -> None:
        for state in (self.failures, self._attempts, self._retry_at):
            state.pop(key, None)

    async def _deploy(self, key: Key) -> None:
        try:
            target = self.target(key)
            if target is not None:
                await self._deploy_target(target)
        except Superseded:
            logger.debug("deploy of %s/%s waits: the credential changed under it", *key)
            asyncio.get_running_loop().call_later(SUPERSEDED_RECHECK, self.changed, key)
        except VerificationError as error:
            logger.debug("deploy of %s/%s failed: %s", *key, error.message)
            await self._failed_deploy(key, error.message)
        except NotFound:
            pass  # the cluster is gone
        except Exception as error:  # a bug or an API outage: retry, keep the operator up
            logger.exception("deploying cluster %s/%s failed", *key)
            await self._failed_deploy(key, f"internal error ({type(error).__name__})")
        finally:
            self._in_flight.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.request(key)

    async def _deploy_target(self, target: DeployTarget) -> None:
        cluster, credential = target.cluster, target.credential
        revision = credential.revision
        assert revision is not None  # the binder hands over only credentials with one
        await self._check(credential, target.spec, revision, cluster.region)
        status = {
            "deployedRevision": revision,
            "lastDeployedTime": conditions.timestamp(conditions.now()),
        }
        await self.kube.apply_status(CLUSTER_PLURAL, "Cluster", *cluster.key, status, MANAGER)
        self.forget(cluster.key)
        await self.kube.post_event(
            cluster.reference, "Normal", "Deployed",
            f"deployed with revision {revision} of CloudCredential "
            f"{credential.namespace}/{credential.name}",
        )  # fmt: skip

    async def _failed_deploy(self, key: Key, message: str) -> None:
        new = self.failures.get(key) != message
        self.failures[key] = message
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        delay = retry_delay(attempt, self.settings)
        self._retry_at[key] = time.monotonic() + delay
        asyncio.get_running_loop().call_later(delay, self.changed, key)
        self.changed(key)  # shows DeployFailed in the cluster's status
        target = self.target(key)
        if new and target is not None:
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
            if compute_revision(spec, secrets) != revision:
                raise Superseded
            context = VerifyContext(credential.namespace, credential.name,
                                    self.settings.provider_settings())  # fmt: skip
            region = key[2]
            await ask_provider(
                partial(module.check_region, spec, secrets, region, context),
                spec.provider, self.settings.verification_timeout, self.provider_slots,
            )  # fmt: skip
            del secrets
        except VerificationError as error:
            self._failed[key] = (time.monotonic() + FAILED_CHECK_TTL, error)
            raise
        self._checked_until[key] = time.monotonic() + CHECK_TTL
