"""The verification reconciler: one CloudCredential's check with its provider.

Owns ``Verified``, ``RotationRecommended``, ``status.revision``, ``identity``,
``publicId``, ``key`` and the other fields ``verification.check_credential`` returns
(server-side apply, manager ``cloudcred-verifier``).

When it checks: at the first look after a start, whenever what the check reads
changed (the spec's generation, the key in effect after a rotation, the data of a
referenced Secret, the namespace's labels or the CredentialBoundaries that select
them), after a transient failure once its backoff is due, and every
``spec.verification.interval`` (jittered ±10 %). Otherwise it answers
``requeue_after`` the time left. One check of a credential at a time (the queue
holds a key for one worker), and the write cannot go back in time: it is applied only
to the object of the UID, generation and key in effect that were checked, and carries
that object's ``resourceVersion`` (a 409 means something moved meanwhile: read again
and retry, without asking the provider again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from cloudcred import conditions, metrics, rotation
from cloudcred.bindings import CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.config import Settings
from cloudcred.constants import CREDENTIAL_PLURAL
from cloudcred.controllers.controller import DONE, Result
from cloudcred.installation import Installation
from cloudcred.kube import Conflict, Kube, NotFound, PreconditionFailed
from cloudcred.providers.base import Reason
from cloudcred.rotation import effective_spec
from cloudcred.verification import (
    MIN_INTERVAL_SECONDS,
    ROTATION,
    VERIFIED,
    check_credential,
    check_retry_delay,
    periodic_interval,
    propagating_retry_delay,
)

MANAGER = "cloudcred-verifier"
IDLE_RECHECK = 300.0  # periodic checks off: look again this often (the interval may change)
# A key a rotation just put in effect can take a moment to work everywhere (Azure:
# seconds): while it has not verified, check it this often, not at the interval; never
# under the 1-minute floor (a tenant may keep a rotation's new key from working).
RECHECK_NEW_KEY = MIN_INTERVAL_SECONDS
WRITE_ATTEMPTS = 5

logger = logging.getLogger("cloudcred.verification")


# Every status field and condition the verifier applies (server-side apply removes
# those it owned and leaves out, so an unchanged answer must match them all, absent ones
# included).
VERIFIER_FIELDS = ("observedGeneration", "publicId", "identity", "revision", "externalId",
                   "operatorPrincipal", "lastVerifiedTime", "keyCreatedTime", "key")  # fmt: skip
VERIFIER_CONDITIONS = (VERIFIED, ROTATION)


def _holds(current: dict[str, Any], status: dict[str, Any]) -> bool:
    """Applying ``status`` would change nothing in ``current``."""
    if set(status) - {*VERIFIER_FIELDS, "conditions"}:
        return False  # a field this list does not know: write it
    if any(current.get(field) != status.get(field) for field in VERIFIER_FIELDS):
        return False
    ours = {c.get("type"): c for c in current.get("conditions") or []
            if c.get("type") in VERIFIER_CONDITIONS}  # fmt: skip
    return ours == {c["type"]: c for c in status.get("conditions") or []}


@dataclass(frozen=True)
class Checked:
    """The last check of a credential: what it read, and when the next one is due."""

    inputs: tuple[Any, ...]
    due: float  # on the event loop's clock (the clock the queues' timers run on)
    failures: int = 0  # transient failures in a row
    status: dict[str, Any] | None = None  # what it wrote: written back over a forged one
    verified: bool = False  # what it found: Verified=True (for a rotation to start)


class VerificationReconciler:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        caches: Caches,
        provider_slots: asyncio.Semaphore,
        installation: Installation,
        verdict_changed: Callable[[Key], None] = lambda key: None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.caches = caches
        self.provider_slots = provider_slots
        self.installation = installation
        self.verdict_changed = verdict_changed
        self.checked: dict[Key, Checked] = {}

    def verified(self, key: Key) -> bool:
        """This operator's own last check of ``key`` found it Verified, and the
        credential is still what was checked. The rotation starts from this, never from
        the ``Verified`` condition, which a tenant with the status subresource can write
        and which stands until the write-back wins."""
        last, credential = self.checked.get(key), self.caches.credentials.get(key)
        if last is None or credential is None:
            return False
        return last.verified and last.inputs == self.inputs(credential)

    def inputs(self, credential: CredentialInfo) -> tuple[Any, ...]:
        """Everything a check reads that may change: a different answer means check now."""
        secrets = tuple(
            (name, info.digest if (info := self.caches.secrets.get((credential.namespace, name)))
             else None)
            for name in credential.secret_names
        )  # fmt: skip
        labels = self.caches.namespace_labels(credential.namespace) or {}
        boundaries = tuple(sorted(repr(b) for b in self.caches.boundaries.objects.values()
                                  if b.selects(labels)))  # fmt: skip
        return (credential.uid, credential.generation, repr(credential.spec), secrets,
                tuple(sorted(labels.items())), boundaries)  # fmt: skip

    async def reconcile(self, key: Key) -> Result:
        credential = self.caches.credentials.get(key)
        if credential is None or credential.deleting:
            self.checked.pop(key, None)
            return DONE
        inputs = self.inputs(credential)
        last = self.checked.get(key)
        clock = asyncio.get_running_loop().time
        now = clock()
        if last is not None and last.inputs == inputs and last.due > now:
            # Someone else wrote the verifier's fields (a tenant with the status
            # subresource: a revision or Verified of their own): what the check found is
            # written back at once, without asking the provider again.
            if (last.status is not None and not _holds(credential.status, last.status)
                    and not await self._write_back(credential, last.status)):  # fmt: skip
                self.checked[key] = dataclasses.replace(last, status=None)
            return Result(requeue_after=last.due - now)
        failures = last.failures if last is not None and last.inputs == inputs else 0
        was_verified = self.verified(key)
        started = time.monotonic()
        result = await check_credential(
            credential.stored_body, self.kube, self.settings, self.provider_slots,
            credential.status.get("conditions"), self.installation,
            boundary=partial(self.caches.boundary_violation, key[0]),
            last_written=last.status if last is not None else None,
        )  # fmt: skip
        metrics.observe_verification(credential.provider, time.monotonic() - started,
                                     result.verified)  # fmt: skip
        if not await self._write(credential, result.status):
            self.checked.pop(key, None)
            return Result(requeue=True)  # the credential moved on: check what it is now
        verdict = result.verified
        verified = verdict["status"] == conditions.TRUE
        if verified != was_verified:
            self.verdict_changed(key)  # the rotation waits for it (its status may not move)
        logger.info("checked %s/%s: Verified %s (%s)", *key, verdict["status"], verdict["reason"])
        for event in result.events:
            await self.kube.post_event(credential.reference, event.type, event.reason,
                                       event.message)  # fmt: skip
        if result.transient:
            # A Secret created later, a provider back online, a new key propagating:
            # again, with a backoff.
            propagating = verdict["reason"] == Reason.PROPAGATING.value
            delay = (propagating_retry_delay(failures) if propagating
                     else check_retry_delay(failures, self.settings))  # fmt: skip
            self.checked[key] = Checked(inputs, clock() + delay, failures + 1, result.status,
                                        verified)  # fmt: skip
            return Result(requeue_after=delay)
        interval = periodic_interval(key[0], key[1], credential.raw_spec)
        delay = interval * random.uniform(0.9, 1.1) if interval > 0 else IDLE_RECHECK  # noqa: S311
        new_key = (credential.status.get("rotation") or {}).get("phase") == rotation.ROLLING_OUT
        if new_key and result.verified["status"] != conditions.TRUE:
            delay = min(delay, RECHECK_NEW_KEY)
        self.checked[key] = Checked(inputs, clock() + delay, status=result.status,
                                    verified=verified)  # fmt: skip
        return Result(requeue_after=delay)

    async def _write_back(self, credential: CredentialInfo, status: dict[str, Any]) -> bool:
        """Put the last check's ``status`` back over what someone else wrote: fields and
        conditions of the verifier's it did not write are removed (another manager's
        fields outlive an apply that leaves them out), the rest applied again. False
        when the status still differs after (it is not written back again until the
        next check: never a write loop)."""
        current = await self.kube.read_credential(*credential.key)
        if current is None or current["metadata"].get("uid") != credential.uid:
            return True
        shown = current.get("status") or {}
        if _holds(shown, status):
            return True
        logger.info("status of %s/%s differs from its last check: written again",
                    *credential.key)  # fmt: skip
        removals = [{"op": "remove", "path": f"/status/{field}"} for field in VERIFIER_FIELDS
                    if field in shown and field not in status]  # fmt: skip
        applied = {c["type"] for c in status.get("conditions") or []}
        found = shown.get("conditions") or []
        for index in reversed(range(len(found))):  # later items first: indexes hold
            type_ = found[index].get("type")
            if type_ in VERIFIER_CONDITIONS and type_ not in applied:
                removals += [
                    {"op": "test", "path": f"/status/conditions/{index}/type", "value": type_},
                    {"op": "remove", "path": f"/status/conditions/{index}"},
                ]  # fmt: skip
        try:
            if removals:
                await self.kube.patch_status_guarded(
                    CREDENTIAL_PLURAL, *credential.key, str(credential.uid), removals, MANAGER
                )
            if not await self._write(credential, status):
                return True  # the object moved on: its own reconcile follows
        except (NotFound, PreconditionFailed):
            return True  # gone, or moved under the patch: its own reconcile follows
        current = await self.kube.read_credential(*credential.key)
        if current is not None and not _holds(current.get("status") or {}, status):
            logger.warning("status of %s/%s still differs from its last check after it was "
                           "written again", *credential.key)  # fmt: skip
            return False
        return True

    async def _write(self, credential: CredentialInfo, status: dict[str, Any]) -> bool:
        """Apply the check's status to the object that was checked and no other: False
        when it is gone, re-created, edited or rotated to another key meanwhile."""
        checked_spec = credential.spec
        for _ in range(WRITE_ATTEMPTS):
            current = await self.kube.read_credential(*credential.key)
            if current is None:
                return False
            metadata = current["metadata"]
            spec = effective_spec(current.get("spec") or {}, current.get("status") or {})
            if (metadata.get("uid"), metadata.get("generation"), spec) != (
                credential.uid, credential.generation, checked_spec
            ):  # fmt: skip
                return False
            if _holds(current.get("status") or {}, status):
                return True  # the same answer again: nothing to write
            try:
                await self.kube.apply_status(
                    CREDENTIAL_PLURAL, "CloudCredential", *credential.key, status, MANAGER,
                    resource_version=metadata.get("resourceVersion"),
                )  # fmt: skip
            except NotFound:
                return False
            except Conflict:
                continue  # another writer moved it: read again
            return True
        logger.warning("could not record the check of %s/%s: the object kept changing",
                       *credential.key)  # fmt: skip
        return False
