"""The credential reconciler: one CloudCredential's list of bound clusters, its
rollout plan and progress, and the Events that go with them.

Reads the caches only. Computes the bound clusters from the cluster store's index of
the clusters that name this credential (never by adding to or removing from the
stored list, so a missed event cannot leave it wrong), plans which clusters behind
the current revision may carry the redeploy mark (``rollout.plan_rollout``), queues
the clusters whose state the plan changes, and writes its part of the status
(server-side apply, manager ``cloudcred-binder``) when something changed. The
Secrets the credential references are queued too: their labels follow whether the
credential is in use.
"""

from __future__ import annotations

import time
from typing import Any

from cloudcred import bindings, conditions, health, rollout
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.constants import CREDENTIAL_PLURAL
from cloudcred.controllers.clusters import MANAGER, unchanged
from cloudcred.controllers.deploy import DeployController
from cloudcred.controllers.expectations import MarkExpectations
from cloudcred.kube import Kube, NotFound
from cloudcred.workqueue import WorkQueue

OWNED_CONDITIONS = {
    bindings.IN_USE,
    bindings.DELETION_BLOCKED,
    rollout.ROLLOUT_COMPLETE,
    *health.SUMMARY_CONDITIONS,
}
OWNED_FIELDS = ("clusters", "clusterCount", "clustersTruncated", "unusedSince", "rollout")


class CredentialReconciler:
    def __init__(
        self,
        kube: Kube,
        caches: Caches,
        plans: dict[Key, rollout.RolloutPlan],
        marks: MarkExpectations,
        clusters: WorkQueue[Key],
        secrets: WorkQueue[Key],
        deploy: DeployController,
    ) -> None:
        self.kube = kube
        self.caches = caches
        self.plans = plans
        self.marks = marks
        self.clusters = clusters
        self.secrets = secrets
        self.deploy = deploy
        self.announced: dict[Key, str] = {}  # the revision of the last RolloutComplete Event
        self.blocked_announced: dict[Key, str] = {}  # the last RolloutBlocked Event's text
        self.last_run: dict[Key, float] = {}  # when each credential was last reconciled

    async def reconcile(self, key: Key) -> None:
        credential = self.caches.credentials.get(key)
        if credential is None:
            for state in (self.plans, self.announced, self.blocked_announced, self.last_run):
                state.pop(key, None)
            return
        self.last_run[key] = time.monotonic()
        for secret in credential.secret_names:
            self.secrets.add((credential.namespace, secret))
        bound = [self.marks.apply(cluster) for cluster in self.caches.bound_clusters(key)]
        plan = self._plan(credential, bound)
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
            return
        try:
            await self.kube.apply_status(CREDENTIAL_PLURAL, "CloudCredential", *key, desired,
                                         MANAGER)  # fmt: skip
        except NotFound:
            return
        await self._announce_rollout(credential, desired)
        await self._announce_blocked(credential, desired)

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
        )

    def _plan(
        self, credential: CredentialInfo, bound: list[ClusterInfo]
    ) -> rollout.RolloutPlan | None:
        """Make the rollout plan and queue the clusters whose state it changes: every
        bound cluster for a new revision (their status names it), every cluster behind
        when the rollout is blocked, paused or resumed, and those whose turn has come."""
        key = credential.key
        plan = rollout.plan_rollout(credential, bound, self.deploy.failures)
        previous = self.plans.pop(key, None)
        if plan is None:
            return None
        self.plans[key] = plan
        if previous is None or previous.revision != plan.revision:
            wake = {cluster.key for cluster in bound}
        elif (previous.blocked, previous.paused) != (plan.blocked, plan.paused):
            wake = set(plan.behind)
        else:
            marked = {cluster.key for cluster in bound if cluster.marked == plan.revision}
            wake = set(plan.allowed - marked)
        for cluster in sorted(wake):
            self.clusters.add(cluster)
        return plan

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
