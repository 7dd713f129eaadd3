"""The cluster reconciler: one Cluster's binding, redeploy state and summary.

Reads the caches only. Decides the cluster's binding (``bindings.decide``) and, when
bound, where it stands in its credential's rollout: the plan the credential
reconciler published in the credential's ``status.rollout`` and the redeploy mark it
wrote on this cluster (``rollout.published_plan``), and the deploy step's
``status.deployFailure``. A cluster says Bound only to a credential that carries the
operator's finalizer (its delete waits for the deletion guard). Writes ``CredentialBound``,
``RedeployPending`` and the summary (server-side apply, manager ``cloudcred-binder``)
when something changed. It marks nothing, deploys nothing and queues nothing: those
are the credential reconciler's and the deploy step's, and their writes come back
through the watches.
"""

from __future__ import annotations

import contextlib

from cloudcred import bindings, health, permissions, rollout
from cloudcred.bindings import Key, unchanged
from cloudcred.cache import Caches
from cloudcred.constants import BINDER_MANAGER, CLUSTER_PLURAL
from cloudcred.controllers.controller import DONE, Result
from cloudcred.kube import Kube, NotFound

MANAGER = BINDER_MANAGER
OWNED_CONDITIONS = {bindings.CREDENTIAL_BOUND, rollout.REDEPLOY_PENDING, *health.SUMMARY_CONDITIONS}


class ClusterReconciler:
    def __init__(self, kube: Kube, caches: Caches) -> None:
        self.kube = kube
        self.caches = caches

    async def reconcile(self, key: Key) -> Result:
        cluster = self.caches.clusters.get(key)
        if cluster is None:
            return DONE
        binding = self.caches.decide(cluster)
        credential = self.caches.credentials.get(cluster.credential)
        if binding.bound and credential is not None and not credential.guarded:
            # A credential kopf has not handled yet carries no finalizer, and its delete
            # would not wait for the deletion guard: no cluster says Bound to it before.
            # The finalizer's arrival brings this cluster back (the wiring).
            return DONE
        redeploy = None
        if binding.bound and credential is not None and credential.revision:
            plan = rollout.published_plan(credential, cluster)
            if plan is None:
                # The credential's plan for this revision comes first: publishing it
                # concerns every cluster that names the credential (the wiring).
                return DONE
            redeploy = rollout.redeploy_state(cluster, plan, cluster.deploy_failure(plan.revision))
        hold = None
        if binding.bound and credential is not None and credential.revision:
            hold = permissions.cluster_hold(credential, cluster.permission_sets)
        desired = rollout.cluster_status(cluster, binding, credential, redeploy, hold)
        if unchanged(cluster.status, desired, OWNED_CONDITIONS, ("credential",)):
            return DONE
        # NotFound: deleted, or re-created: the store hears of it and queues it again.
        with contextlib.suppress(NotFound):
            await self.kube.apply_status(CLUSTER_PLURAL, "Cluster", *key, desired, MANAGER)
        return DONE
