"""The permissions reconciler: one CloudCredential's check against the PermissionSets
named for it (its own ``spec.permissionSets`` and its bound Clusters').

Owns ``PermissionsSufficient`` and ``status.permissions`` (server-side apply, manager
``cloudcred-permissions``). Asks the provider (``providers/*.check_permissions``,
with the credential's own identity) once the credential has verified, and again
whenever what a check reads changed (the revision, the key in effect, the sets named
and their specs), every ``spec.verification.interval``, and, while the answer is not
True, every ``CLOUDCRED_PERMISSIONS_RECHECK`` (a missing permission granted at the
provider is seen without anyone touching the cluster). The write lands only on the
object and revision that were checked (its ``resourceVersion``; a 409 reads again).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from functools import partial
from typing import Any

from cloudcred import conditions
from cloudcred import permissions as perms
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.bindings import CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.config import Settings
from cloudcred.constants import CREDENTIAL_PLURAL
from cloudcred.controllers.controller import DONE, Result
from cloudcred.installation import Installation
from cloudcred.kube import Conflict, Kube, NotFound
from cloudcred.providers import provider_module
from cloudcred.providers.base import PermissionAnswer, VerificationError, VerifyContext
from cloudcred.verification import (
    ask_provider,
    periodic_interval,
    read_secrets,
    retry_delay,
    with_external_id,
)

MANAGER = "cloudcred-permissions"
WRITE_ATTEMPTS = 5

logger = logging.getLogger("cloudcred.permissions")


@dataclass(frozen=True)
class Checked:
    inputs: tuple[Any, ...]
    due: float  # on the event loop's clock
    failures: int = 0


class PermissionsReconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        caches: Caches,
        provider_slots: asyncio.Semaphore,
        installation: Installation,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.caches = caches
        self.provider_slots = provider_slots
        self.installation = installation
        self.checked: dict[Key, Checked] = {}

    def needed(self, credential: CredentialInfo) -> list[str]:
        if not self.caches.clusters.indexed("permission_set"):
            # No Cluster names a set (the usual case): no need to decide every binding
            # of a credential with thousands of clusters at each of its events.
            return perms.needed_sets(credential.permission_sets, ())
        clusters = (c.permission_sets for c in self.caches.bound_clusters(credential.key))
        return perms.needed_sets(credential.permission_sets, clusters)

    def inputs(self, credential: CredentialInfo, names: list[str]) -> tuple[Any, ...]:
        """Everything a check reads that may change: a different answer means check now."""
        verified = conditions.find(credential.status.get("conditions"), "Verified") or {}
        sets = tuple((n, repr(self.caches.permission_sets.get(("", n)))) for n in names)
        return (credential.uid, credential.revision, repr(credential.spec.get(
            credential.provider.lower())), verified.get("status"), sets)  # fmt: skip

    async def reconcile(self, key: Key) -> Result:
        credential = self.caches.credentials.get(key)
        if credential is None or credential.deleting:
            self.checked.pop(key, None)
            return DONE
        names = self.needed(credential)
        if not names:
            self.checked.pop(key, None)
            if credential.status.get("permissions") or conditions.find(
                credential.status.get("conditions"), perms.PERMISSIONS_SUFFICIENT
            ):  # fmt: skip
                await self._write(credential, {})  # no set named any more: nothing to say
            return DONE
        inputs = self.inputs(credential, names)
        last = self.checked.get(key)
        clock = asyncio.get_running_loop().time
        if last is not None and last.inputs == inputs and last.due > clock():
            return Result(requeue_after=last.due - clock())
        failures = last.failures if last is not None and last.inputs == inputs else 0
        results, asked = await self._check(credential, names)
        status, reason, message = perms.verdict(results)
        condition = conditions.condition(
            credential.status.get("conditions"), perms.PERMISSIONS_SUFFICIENT, status, reason,
            message, credential.generation,
        )  # fmt: skip
        report: dict[str, Any] = {"sets": perms.bounded(results)}
        if credential.revision:
            report["revision"] = credential.revision
        if asked:
            report["checkedTime"] = conditions.timestamp(conditions.now())
        else:
            previous = (credential.status.get("permissions") or {}).get("checkedTime")
            if previous:
                report["checkedTime"] = previous
        if not await self._write(credential, {"permissions": report, "conditions": [condition]}):
            self.checked.pop(key, None)
            return Result(requeue=True)  # the credential moved on: check what it is now
        previous_condition = conditions.find(credential.status.get("conditions"),
                                             perms.PERMISSIONS_SUFFICIENT)  # fmt: skip
        if conditions.changed(previous_condition, condition):
            kind = "Normal" if status == conditions.TRUE else "Warning"
            await self.kube.post_event(credential.reference, kind, reason, message)
        logger.info("checked the permissions of %s/%s: %s (%s)", *key, status, reason)
        if any(r["reason"] in perms.TRANSIENT for r in results):
            delay = retry_delay(failures, self.settings)
            self.checked[key] = Checked(inputs, clock() + delay, failures + 1)
            return Result(requeue_after=delay)
        interval = periodic_interval(key[0], key[1], credential.raw_spec)
        if status != conditions.TRUE and asked:
            # Someone is likely fixing it at the provider right now: look again soon.
            interval = min(interval or self.settings.permissions_recheck,
                           self.settings.permissions_recheck)  # fmt: skip
        if interval <= 0:
            self.checked[key] = Checked(inputs, float("inf"))
            return DONE
        delay = interval * random.uniform(0.9, 1.1)  # noqa: S311
        self.checked[key] = Checked(inputs, clock() + delay)
        return Result(requeue_after=delay)

    async def _check(
        self, credential: CredentialInfo, names: list[str]
    ) -> tuple[list[dict[str, Any]], bool]:
        """Each set's result, and whether the provider was asked (once per set that has
        a block for it)."""
        verified = conditions.find(credential.status.get("conditions"), "Verified") or {}
        found = {n: self.caches.permission_sets.get(("", n)) for n in names}
        results: dict[str, dict[str, Any]] = {}
        asked: dict[str, Any] = {}
        for name, info in found.items():
            if info is None:
                results[name] = perms.unknown(name, perms.SET_NOT_FOUND,
                                              f"PermissionSet {name} does not exist")  # fmt: skip
            elif info.problem:
                results[name] = perms.unknown(name, perms.SET_INVALID, info.problem)
            elif info.needs(credential.provider) is None:
                # The set asks nothing of this provider (a set for other clouds).
                results[name] = perms.answered(name, PermissionAnswer(0))
            elif not credential.revision or (
                verified.get("status") != conditions.TRUE
                # Not checkable here (workload identity): the check says why, too.
                and verified.get("reason") != "VerificationUnavailable"
            ):
                results[name] = perms.unknown(
                    name, perms.NOT_VERIFIED, "checked once the credential has verified "
                    f"(Verified: {verified.get('reason', 'not yet checked')})",
                )  # fmt: skip
            else:
                asked[name] = info.needs(credential.provider)
        if asked:
            results.update(await self._ask(credential, asked))
        return [results[name] for name in names], bool(asked)

    async def _ask(self, credential: CredentialInfo, asked: dict[str, Any]) -> dict[str, Any]:
        spec = CloudCredentialSpec.model_validate(credential.spec)
        module = provider_module(spec.provider)
        check = getattr(module, "check_permissions", None)
        if check is None:
            why = f"this version cannot check {spec.provider} permissions"
            return {name: perms.unknown(name, perms.CHECK_UNAVAILABLE, why) for name in asked}
        context = VerifyContext(credential.namespace, credential.name,
                                self.settings.provider_settings())  # fmt: skip
        results = {}
        try:
            context = await with_external_id(self.kube, self.installation, context, spec)
            secrets = await read_secrets(self.kube, credential.namespace, module.secret_refs(spec))
        except VerificationError as error:
            return {name: perms.failed(name, error, spec.provider) for name in asked}
        for name, needs in asked.items():
            try:
                answer = await ask_provider(
                    partial(check, spec, secrets, context, needs), spec.provider,
                    self.settings.verification_timeout * 3, self.provider_slots,
                )  # fmt: skip
                results[name] = perms.answered(name, answer)
            except VerificationError as error:
                results[name] = perms.failed(name, error, spec.provider)
        del secrets
        return results

    async def _write(self, credential: CredentialInfo, status: dict[str, Any]) -> bool:
        """Apply to the object and revision that were checked, and no other."""
        for _ in range(WRITE_ATTEMPTS):
            current = await self.kube.read_credential(*credential.key)
            if current is None:
                return False
            metadata = current["metadata"]
            revision = (current.get("status") or {}).get("revision")
            if (metadata.get("uid"), revision) != (credential.uid, credential.revision):
                return False
            try:
                await self.kube.apply_status(
                    CREDENTIAL_PLURAL, "CloudCredential", *credential.key, status, MANAGER,
                    resource_version=metadata.get("resourceVersion"),
                )  # fmt: skip
            except NotFound:
                return False
            except Conflict:
                continue
            return True
        logger.warning("could not record the permission check of %s/%s: the object kept "
                       "changing", *credential.key)  # fmt: skip
        return False
