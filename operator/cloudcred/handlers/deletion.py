"""The deletion guard: a CloudCredential's finalizer holds while bound clusters remain.

Decided from a fresh LIST, not the caches (they may lag, or miss a cluster created a
moment ago): only the Clusters whose ``spec.credentialRef.name`` is the credential's
name (a field selector the CRD declares), a page at a time. A Warning Event is posted
when the set of blocking clusters changes, not at every re-check, and re-checks back
off up to ``RECHECK_MAX`` seconds.

No retries/timeout limit and no PermanentError on purpose: kopf releases the
finalizer once a delete handler gives up, which would defeat the guard.
"""

from __future__ import annotations

from typing import Any

import kopf
from prometheus_client import Counter

from cloudcred import bindings, metrics
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_RESOURCE,
    FORCE_DELETE_ANNOTATION,
    FORCE_DELETE_BY_ANNOTATION,
)
from cloudcred.kube import Kube

RECHECK_FIRST, RECHECK_MAX = 5.0, 30.0

GUARD_CHECKS = Counter(
    "cloudcred_deletion_guard_checks",
    "Checks by the deletion guard of a credential being deleted.",
    registry=metrics.REGISTRY,
)
GUARD_OBJECTS = Counter(
    "cloudcred_deletion_guard_objects",
    "Clusters the deletion guard's LISTs returned (the credential's own, by field selector).",
    registry=metrics.REGISTRY,
)


async def blocking_clusters(kube: Kube, caches: Caches, credential: CredentialInfo) -> list[Key]:
    """Clusters that hold a credential's deletion: those that reference it, match its
    provider, are in an admitted namespace, and were not refused because of the
    deletion itself."""
    GUARD_CHECKS.inc()
    blocking = []
    selector = f"spec.credentialRef.name={credential.name}"
    async for body in kube.list_pages(CLUSTER_PLURAL, field_selector=selector):
        GUARD_OBJECTS.inc()
        cluster = ClusterInfo.from_body(body)
        if cluster.credential != credential.key or cluster.provider != credential.provider:
            continue
        labels = None
        if cluster.namespace != credential.namespace:
            labels = caches.namespace_labels(cluster.namespace)
            if labels is None:  # not in the cache (yet): ask
                found = await kube.read_namespace(cluster.namespace)
                labels = dict(found.labels or {}) if found else None
        if not bindings.namespace_admitted(credential, cluster.namespace, labels):
            continue
        bound = bindings.decide(cluster, credential, labels)
        refused = bindings.find_reason(cluster.status) == bindings.DELETING
        if bound.bound or not refused:
            blocking.append(cluster.key)
    return sorted(blocking)


@kopf.on.delete(CREDENTIAL_RESOURCE)
async def credential_deleting(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Hold the finalizer while bound clusters remain, unless the credential carries
    the break-glass annotation ``cloudcred.io/force-delete``."""
    credential = CredentialInfo.from_body(dict(body))
    controllers = memo.controllers
    blocking = await blocking_clusters(memo.kube, controllers.caches, credential)
    annotations = body["metadata"].get("annotations") or {}
    reason = annotations.get(FORCE_DELETE_ANNOTATION)
    if blocking and reason:
        # The admission policy cloudcred-force-delete makes it the requester's user name;
        # without the policy (or set before it was installed) it may be missing.
        by = annotations.get(FORCE_DELETE_BY_ANNOTATION) or "an unnamed user"
        await announce_force_delete(memo.kube, controllers.caches, credential, blocking,
                                    reason, by)  # fmt: skip
        return  # break glass: the finalizer goes, the clusters show CredentialNotFound
    if not blocking:
        return
    names = bindings.describe_clusters(blocking, credential.namespace)
    announced: dict[Key, tuple[Key, ...]] = memo.deletion_announced
    if announced.get(credential.key) != tuple(blocking):
        announced[credential.key] = tuple(blocking)
        await memo.kube.post_event(credential.reference, "Warning", "DeletionBlocked",
                                   f"deletion waits for {len(blocking)} cluster(s) still using "
                                   f"this credential: {names}")  # fmt: skip
    delay = min(RECHECK_FIRST * 2**retry, RECHECK_MAX)
    raise kopf.TemporaryError(f"still used by {names}", delay=delay)


async def announce_force_delete(
    kube: Kube,
    caches: Caches,
    credential: CredentialInfo,
    clusters: list[Key],
    reason: str,
    by: str,
) -> None:
    """Break glass: a Warning Event naming who did it and why on the credential and on
    every cluster that loses it."""
    ref = f"{credential.namespace}/{credential.name}"
    names = bindings.describe_clusters(clusters, credential.namespace)
    await kube.post_event(credential.reference, "Warning", "ForceDeleted",
                          f"force-deleted by {by}: {reason} (while {len(clusters)} "
                          f"cluster(s) used it: {names})")  # fmt: skip
    for key in clusters:
        cluster = caches.clusters.get(key)
        reference = bindings.object_reference("Cluster", key, cluster.uid if cluster else None)
        await kube.post_event(reference, "Warning", "CredentialForceDeleted",
                              f"CloudCredential {ref} used by this cluster was "
                              f"force-deleted by {by}: {reason}")  # fmt: skip
