"""The credential reconciler: one CloudCredential's list of bound clusters, its
rollout (the plan, the redeploy marks, the progress), and the Events that go with them.

Reads the caches only. Computes the bound clusters from the cluster store's index of
the clusters that name this credential (never by adding to or removing from the
stored list, so a missed event cannot leave it wrong). Plans which clusters behind
the current revision may carry the redeploy mark (``rollout.plan_rollout``) and marks
them itself, as a Deployment scales its ReplicaSets: the marks and the published plan
(``status.rollout``) are what the clusters read. Writes its part of the status
(server-side apply, manager ``cloudcred-binder``) when something changed. It queues
nothing: what its writes concern is declared in the wiring (``runner.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cloudcred import bindings, conditions, health, permissions, rollout
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key, unchanged
from cloudcred.cache import Caches
from cloudcred.constants import (
    BINDER_MANAGER,
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    REDEPLOY_ANNOTATION,
)
from cloudcred.controllers.controller import DONE, Result
from cloudcred.controllers.expectations import MarkExpectations
from cloudcred.kube import Kube, NotFound

OWNED_CONDITIONS = {
    bindings.IN_USE,
    bindings.DELETION_BLOCKED,
    rollout.ROLLOUT_COMPLETE,
    *health.SUMMARY_CONDITIONS,
}
OWNED_FIELDS = ("clusters", "clusterCount", "clustersTruncated", "unusedSince", "rollout")
# Marks written at the same time: a rollout of thousands of clusters is not one write
# after another (the operator's own limit on API calls, Kube's, holds them anyway).
MARK_CONCURRENCY = 8


class CredentialReconciler:
    def __init__(self, kube: Kube, caches: Caches) -> None:
        self.kube = kube
        self.caches = caches
        self.marks = MarkExpectations()
        self.announced: dict[Key, str] = {}  # the revision of the last RolloutComplete Event
        self.blocked_announced: dict[Key, str] = {}  # the last RolloutBlocked Event's text

    async def reconcile(self, key: Key) -> Result:
        credential = self.caches.credentials.get(key)
        if credential is None:
            for state in (self.announced, self.blocked_announced):
                state.pop(key, None)
            return DONE
        bound = [self.marks.apply(cluster) for cluster in self.caches.bound_clusters(key)]
        plan = rollout.plan_rollout(
            credential, bound, rollout.deploy_failures(credential.revision, bound)
        )
        if plan is not None:
            await self._mark(plan, bound)
        desired = bindings.credential_bindings_status(
            credential, [cluster.key for cluster in bound], credential.status, credential.created
        )
        progress = rollout.rollout_status(
            credential, bound, credential.status.get("conditions"), plan
        )
        if progress:
            desired["rollout"] = progress["rollout"]
            desired["conditions"] += progress["conditions"]
        desired["conditions"] += self._verdict(credential, bound, plan, desired).conditions(
            credential.status.get("conditions"), credential.generation
        )
        if unchanged(credential.status, desired, OWNED_CONDITIONS, OWNED_FIELDS):
            return DONE
        try:
            await self.kube.apply_status(CREDENTIAL_PLURAL, "CloudCredential", *key, desired,
                                         BINDER_MANAGER)  # fmt: skip
        except NotFound:
            return DONE
        await self._announce_rollout(credential, desired)
        await self._announce_blocked(credential, desired)
        return DONE

    async def _mark(self, plan: rollout.RolloutPlan, bound: list[ClusterInfo]) -> None:
        """Mark the clusters whose turn has come, in name order, MARK_CONCURRENCY
        writes at a time (each pinned to its UID). A failure stops the marking and is
        raised once the writes under way are done (the reconcile is retried)."""
        due = iter([c for c in bound if c.key in plan.allowed and c.marked != plan.revision])
        failures: list[Exception] = []

        async def marker() -> None:
            for cluster in due:  # one iterator: each cluster is taken by one marker
                if failures:
                    return
                try:
                    await self.kube.annotate(CLUSTER_PLURAL, *cluster.key,
                                             {REDEPLOY_ANNOTATION: plan.revision},
                                             uid=cluster.uid)  # fmt: skip
                except NotFound:
                    continue  # deleted, or re-created: the store hears of it
                except Exception as error:
                    failures.append(error)
                    return
                self.marks.expect(cluster, plan.revision)

        await asyncio.gather(*(marker() for _ in range(MARK_CONCURRENCY)))
        if failures:
            raise failures[0]

    @staticmethod
    def _verdict(
        credential: CredentialInfo,
        bound: list[ClusterInfo],
        plan: rollout.RolloutPlan | None,
        desired: dict[str, Any],
    ) -> health.Verdict:
        """The summary from the Verified condition (the check's) and the rollout's."""
        deleting = None
        if credential.deleting:
            blocked = conditions.find(desired["conditions"], bindings.DELETION_BLOCKED)
            deleting = blocked["message"] if blocked else "the credential is being deleted"
        behind = [c for c in bound if plan is not None and c.deployed_revision != plan.revision]
        return health.credential_verdict(
            conditions.find(credential.status.get("conditions"), "Verified"),
            conditions.find(desired["conditions"], rollout.ROLLOUT_COMPLETE),
            deleting=deleting,
            paused=credential.paused,
            only_external_behind=bool(behind)
            and all(c.external for c in behind)
            and not (plan is not None and plan.failed),
            missing_permissions=permissions.own_shortfall(credential),
        )

    async def _announce_rollout(self, credential: CredentialInfo, desired: dict[str, Any]) -> None:
        """One Event per completed rollout over at least one cluster."""
        done = conditions.find(desired["conditions"], rollout.ROLLOUT_COMPLETE)
        if not done or done["status"] != conditions.TRUE or not desired["clusterCount"]:
            return
        revision = desired["rollout"]["revision"]
        if self.announced.get(credential.key) == revision:
            return
        self.announced[credential.key] = revision
        await self.kube.post_event(credential.reference, "Normal", "RolloutComplete",
                                   done["message"])  # fmt: skip

    async def _announce_blocked(self, credential: CredentialInfo, desired: dict[str, Any]) -> None:
        """One Warning Event each time a rollout becomes blocked, and why."""
        blocked = conditions.find(desired["conditions"], rollout.ROLLOUT_COMPLETE)
        if not blocked or blocked["reason"] != rollout.BLOCKED:
            self.blocked_announced.pop(credential.key, None)
            return
        why = blocked["message"].split("; ")[0]
        if self.blocked_announced.get(credential.key) == why:
            return
        self.blocked_announced[credential.key] = why
        await self.kube.post_event(credential.reference, "Warning", rollout.BLOCKED, why)
