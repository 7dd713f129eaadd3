"""Automatic rotation: one daemon per credential that rotates (or is rotating) its key.

The daemon runs only for credentials with ``spec.rotation.policy: Automatic`` or a
rotation under way (kopf starts and stops it as that changes), and only on the active
replica (peering). A change of the annotation ``cloudcred.io/rotate-now`` or of
``spec.rotation`` wakes it at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from cloudcred import rotation
from cloudcred.constants import CREDENTIAL_RESOURCE
from cloudcred.rotator import Rotator

Key = tuple[str, str]


def rotating(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Automatic, or a rotation not finished (a switch to Manual completes it)."""
    automatic = (spec.get("rotation") or {}).get("policy") == "Automatic"
    phase = (status.get("rotation") or {}).get("phase", rotation.IDLE)
    return automatic or phase != rotation.IDLE


def _wakeup(memo: kopf.Memo, key: Key) -> asyncio.Event:
    events: dict[Key, asyncio.Event] = memo.rotation_wakeups
    return events.setdefault(key, asyncio.Event())


@kopf.daemon(CREDENTIAL_RESOURCE, when=rotating, cancellation_timeout=5.0)
async def key_rotation(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    rotator: Rotator = memo.rotator
    wakeup = _wakeup(memo, key)
    try:
        while not stopped:
            wakeup.clear()
            delay = await rotator.step(*key)
            woken = asyncio.create_task(wakeup.wait())
            try:
                await asyncio.wait([woken], timeout=delay)
            finally:
                woken.cancel()
    finally:
        memo.rotation_wakeups.pop(key, None)


@kopf.on.update(CREDENTIAL_RESOURCE, field="metadata.annotations")
@kopf.on.update(CREDENTIAL_RESOURCE, field="spec.rotation")
def rotation_asked(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """``cloudcred rotate --now`` or a changed policy: the daemon looks again now."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if key in memo.rotation_wakeups:
        memo.rotation_wakeups[key].set()
