"""The cluster reconciler: one Cluster's binding, redeploy state, mark and status.

Reads the caches only. Decides the cluster's binding (``bindings.decide``) and, when
bound, where it stands in its credential's rollout (``rollout.redeploy_state``
against the plan the credential reconciler made); marks it with
``cloudcred.io/redeploy-revision`` when its turn has come; writes its part of the
status (server-side apply, manager ``cloudcred-binder``) when something changed;
and hands it to the deploy step when it needs a deployment. Every write carries the
cluster's UID: a Cluster re-created under the same name is another cluster.
"""

from __future__ import annotations

from cloudcred import bindings, health, rollout
from cloudcred.bindings import Key
from cloudcred.cache import Caches
from cloudcred.constants import CLUSTER_PLURAL, REDEPLOY_ANNOTATION
from cloudcred.controllers.deploy import DeployController
from cloudcred.controllers.expectations import MarkExpectations
from cloudcred.kube import Kube, NotFound
from cloudcred.workqueue import WorkQueue

MANAGER = "cloudcred-binder"
OWNED_CONDITIONS = {bindings.CREDENTIAL_BOUND, rollout.REDEPLOY_PENDING, *health.SUMMARY_CONDITIONS}


class ClusterReconciler:
    def __init__(
        self,
        kube: Kube,
        caches: Caches,
        plans: dict[Key, rollout.RolloutPlan],
        marks: MarkExpectations,
        credentials: WorkQueue[Key],
        deploy: DeployController,
    ) -> None:
        self.kube = kube
        self.caches = caches
        self.plans = plans  # written by the credential reconciler
        self.marks = marks
        self.credentials = credentials
        self.deploy = deploy

    async def reconcile(self, key: Key) -> None:
        found = self.caches.clusters.get(key)
        if found is None:
            return
        cluster = self.marks.apply(found)
        binding = self.caches.decide(cluster)
        credential = self.caches.credentials.get(cluster.credential)
        if cluster.credentials_secret and not cluster.external:
            if not binding.bound:
                await self.deploy.revoke(key, f"the cluster is not bound: {binding.message}")
            elif credential is not None:
                refusal = self.deploy.delivery_refusal(cluster, credential)
                if refusal:
                    await self.deploy.revoke(key, refusal)
        redeploy = None
        if binding.bound and credential is not None and credential.revision:
            plan = self.plans.get(credential.key)
            if plan is None or plan.revision != credential.revision:
                # The credential's plan for this revision comes first; its reconciler
                # queues every bound cluster once it is made.
                self.credentials.add(credential.key)
                return
            redeploy = rollout.redeploy_state(cluster, plan, self.deploy.failures.get(key))
        desired = rollout.cluster_status(cluster, binding, credential, redeploy)
        try:
            if redeploy and redeploy.mark and cluster.marked != redeploy.mark:
                await self.kube.annotate(CLUSTER_PLURAL, *key, {REDEPLOY_ANNOTATION: redeploy.mark},
                                         uid=cluster.uid)  # fmt: skip
                self.marks.expect(key, redeploy.mark)
            if not unchanged(cluster.status, desired, OWNED_CONDITIONS, ("credential",)):
                await self.kube.apply_status(CLUSTER_PLURAL, "Cluster", *key, desired, MANAGER)
        except NotFound:
            return  # deleted, or re-created: the store hears of it and queues it again
        if redeploy is None or cluster.external:
            return
        if redeploy.pending:
            self.deploy.queue.add(key)
        elif cluster.credentials_secret:
            self.deploy.keep_fresh(key)


def unchanged(
    current: dict[str, object],
    desired: dict[str, object],
    owned: set[str],
    fields: tuple[str, ...],
) -> bool:
    """The status already says what ``desired`` says: no write is needed."""
    return all(current.get(f) == desired.get(f) for f in fields) and bindings.same_conditions(
        current.get("conditions"),  # type: ignore[arg-type]
        desired["conditions"],  # type: ignore[arg-type]
        owned,
    )
