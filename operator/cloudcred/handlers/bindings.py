"""Cluster and CloudCredential watch handlers that feed the binder, and the
credential's deletion guard (the finalizer)."""

from __future__ import annotations

from typing import Any

import kopf

from cloudcred.binder import Binder
from cloudcred.bindings import describe_clusters
from cloudcred.constants import CLUSTER_RESOURCE, CREDENTIAL_RESOURCE, FORCE_DELETE_ANNOTATION

DELETION_RECHECK_SECONDS = 10.0


# async: they run on the event loop, where the binder's index lives (kopf runs plain
# functions in worker threads).
@kopf.on.event(CLUSTER_RESOURCE)
async def cluster_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.binder.cluster_gone(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    memo.binder.cluster_seen(dict(body))
    if type is None:  # kopf is listing (start, or a 410 Gone): deletions may be missed
        memo.binder.relist_soon()


@kopf.on.event(CREDENTIAL_RESOURCE)
async def credential_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.binder.credential_gone(body["metadata"]["namespace"], body["metadata"]["name"])
    else:
        memo.binder.credential_seen(dict(body))


@kopf.on.delete(CREDENTIAL_RESOURCE)
async def credential_deleting(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Hold the finalizer while bound clusters remain, judged by a fresh LIST, unless
    the credential carries the break-glass annotation ``cloudcred.io/force-delete``.

    No retries/timeout limit and no PermanentError on purpose: kopf releases the
    finalizer once a delete handler gives up, which would defeat the guard.
    """
    binder: Binder = memo.binder
    blocking = await binder.blocking_clusters(dict(body))
    reason = (body["metadata"].get("annotations") or {}).get(FORCE_DELETE_ANNOTATION)
    if blocking and reason:
        await binder.announce_force_delete(dict(body), blocking, reason)
        return  # break glass: the finalizer goes, the clusters show CredentialNotFound
    if blocking:
        names = describe_clusters(blocking, body["metadata"]["namespace"])
        await memo.kube.post_event(dict(body), "Warning", "DeletionBlocked",
                                   f"deletion waits for {len(blocking)} cluster(s) still using "
                                   f"this credential: {names}")  # fmt: skip
        binder.credential_seen(dict(body))  # shows DeletionBlocked in status
        raise kopf.TemporaryError(f"still used by {names}", delay=DELETION_RECHECK_SECONDS)
