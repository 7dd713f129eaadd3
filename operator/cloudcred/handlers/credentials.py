"""CloudCredential handlers: check with the provider on change, on resume, when a
referenced Secret's data changes, and every ``spec.verification.interval`` (jittered)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import kopf

from cloudcred import metrics
from cloudcred.bindings import CredentialInfo
from cloudcred.cache import Caches
from cloudcred.constants import CREDENTIAL_PLURAL, CREDENTIAL_RESOURCE
from cloudcred.kube import NotFound
from cloudcred.verification import (
    CheckResult,
    check_credential,
    periodic_interval,
    retry_delay,
)

VERIFIER_MANAGER = "cloudcred-verifier"
_IDLE_RECHECK_SECONDS = 300.0  # how often a daemon with checks turned off looks again


async def verify_and_record(body: Mapping[str, Any], memo: kopf.Memo) -> CheckResult:
    """Check one credential and write what this check owns; one check at a time per
    credential so that Events are posted once per change."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    caches: Caches = memo.controllers.caches
    await boundaries_listed(caches)
    lock = memo.credential_locks.setdefault(key, asyncio.Lock())
    async with lock:
        previous = memo.verified_conditions.get(key) or (body.get("status") or {}).get("conditions")
        started = time.monotonic()
        result = await check_credential(
            dict(body), memo.kube, memo.settings, memo.verification_slots, previous,
            memo.installation, boundary=partial(caches.boundary_violation, key[0]),
        )  # fmt: skip
        metrics.observe_verification(
            body["spec"].get("provider"), time.monotonic() - started, result.verified
        )
        try:
            await memo.kube.apply_status(
                CREDENTIAL_PLURAL, "CloudCredential", key[0], key[1], result.status,
                VERIFIER_MANAGER,
            )  # fmt: skip
        except NotFound:
            return result  # deleted meanwhile
        memo.verified_conditions[key] = result.status["conditions"]
        memo.last_checks[key] = time.monotonic()
        for event in result.events:
            await memo.kube.post_event(dict(body), event.type, event.reason, event.message)
        return result


async def boundaries_listed(caches: Caches) -> None:
    """Wait until CredentialBoundaries and namespace labels are fully listed (at start,
    after a watch gap): a check on a partial list could assume a role that a boundary
    forbids. A LIST takes well under a second; /healthz reports one that never ends."""
    while not caches.boundaries_synced:
        await asyncio.sleep(0.1)


def secret_changed(credentials: list[CredentialInfo], memo: kopf.Memo) -> None:
    """A referenced Secret's data changed, or its labels were dropped by a full update;
    or a CredentialBoundary or a namespace's labels changed: check these credentials
    again now (which gives them a new revision, or says OutsideBoundary), without
    waiting for the periodic check."""
    for credential in credentials:
        task = asyncio.create_task(verify_and_record(credential.body, memo))
        memo.background_tasks.add(task)
        task.add_done_callback(memo.background_tasks.discard)


@kopf.on.resume(CREDENTIAL_RESOURCE)
@kopf.on.create(CREDENTIAL_RESOURCE)
@kopf.on.update(CREDENTIAL_RESOURCE, field="spec")
async def credential_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    result = await verify_and_record(body, memo)
    if result.transient:
        # A Secret created later, a provider back online: try again, with backoff.
        raise kopf.TemporaryError(
            f"{result.verified['reason']}: checking again", delay=retry_delay(retry, memo.settings)
        )


@kopf.daemon(CREDENTIAL_RESOURCE, cancellation_timeout=5.0)
async def periodic_verification(
    body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Re-check every spec.verification.interval, ±10 %, counted from the last check.
    ``spec`` is kopf's live view: an edited interval applies from the next wake-up."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    # kopf runs daemons only while this replica is the active one (peering): their
    # start and their stop with OPERATOR_PAUSING tell the controllers when to act.
    memo.controllers.resume()
    try:
        while not stopped:
            interval = periodic_interval(key[0], key[1], dict(spec))
            if interval <= 0:
                await stopped.wait(_IDLE_RECHECK_SECONDS)
                continue
            # After a restart the resume handler has just checked: count from now.
            last = memo.last_checks.get(key, time.monotonic())
            jittered = interval * random.uniform(0.9, 1.1)  # noqa: S311 - spreads load
            await stopped.wait(max(last + jittered - time.monotonic(), 0.0))
            if stopped:
                break
            if time.monotonic() - memo.last_checks.get(key, 0.0) >= interval * 0.9:
                await verify_and_record(body, memo)
    finally:
        if stopped.reason and kopf.DaemonStoppingReason.OPERATOR_PAUSING in stopped.reason:
            memo.controllers.pause()
        if not memo.credential_locks.get(key, asyncio.Lock()).locked():
            for state in (memo.credential_locks, memo.verified_conditions, memo.last_checks):
                state.pop(key, None)
