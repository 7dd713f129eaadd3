"""Redeploys and rollouts: plain, side-effect-free decisions.

Marking is *level-based*: a bound cluster whose ``status.deployedRevision`` is set and
differs from its credential's current revision is pending, whatever happened before.
So an operator killed half-way through a fan-out finishes the job after a restart
simply by looking again. A cluster that never deployed is not marked: its deployer
(the operator's own deploy step, or an external one) deploys it with the current
revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudcred import conditions
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key, describe_clusters

REDEPLOY_PENDING, ROLLOUT_COMPLETE = "RedeployPending", "RolloutComplete"
# RedeployPending reasons.
REVISION_CHANGED, NOT_DEPLOYED, UP_TO_DATE, DEPLOY_FAILED = (
    "RevisionChanged",
    "NotDeployed",
    "UpToDate",
    "DeployFailed",
)
# RolloutComplete reasons.
COMPLETE, IN_PROGRESS = "RolloutComplete", "RolloutInProgress"


@dataclass(frozen=True)
class RedeployState:
    """Where one bound cluster stands against its credential's current revision."""

    pending: bool
    reason: str
    message: str
    mark: str | None  # the revision the cluster must be marked with, if any

    def condition(
        self, previous: list[dict[str, Any]] | None, generation: int | None
    ) -> dict[str, Any]:
        state = conditions.TRUE if self.pending else conditions.FALSE
        return conditions.condition(
            previous, REDEPLOY_PENDING, state, self.reason, self.message, generation
        )


def redeploy_state(
    cluster: ClusterInfo, revision: str, deploy_failure: str | None = None
) -> RedeployState:
    """The state of a cluster bound to a credential whose current revision is
    ``revision``; ``deploy_failure`` is why the operator's last deploy attempt failed."""
    deployed = cluster.deployed_revision
    who = "the external deployer" if cluster.external else "the operator's deploy step"
    if deployed == revision:
        return RedeployState(False, UP_TO_DATE, f"deployed with credential revision {revision}",
                             None)  # fmt: skip
    if deploy_failure:
        failed = f"deploying credential revision {revision} failed: {deploy_failure}"
        return RedeployState(True, DEPLOY_FAILED, failed, revision if deployed else None)
    if not deployed:
        return RedeployState(True, NOT_DEPLOYED, f"waiting for {who} to deploy credential "
                             f"revision {revision} for the first time", None)  # fmt: skip
    return RedeployState(True, REVISION_CHANGED, f"the credential changed from revision "
                         f"{deployed} to {revision}: waiting for {who} to redeploy",
                         revision)  # fmt: skip


def rollout_status(
    credential: CredentialInfo,
    bound: list[ClusterInfo],
    previous: list[dict[str, Any]] | None,
    failures: dict[Key, str],
) -> dict[str, Any]:
    """``status.rollout`` and the ``RolloutComplete`` condition of a credential."""
    revision = credential.revision
    if not revision:
        return {}
    waiting = sorted(c.key for c in bound if c.deployed_revision != revision)
    total = len(bound)
    status: dict[str, Any] = {
        "rollout": {"revision": revision, "updated": total - len(waiting), "total": total}
    }
    if credential.spec_changed:
        state, reason = conditions.FALSE, IN_PROGRESS
        message = "the spec changed: waiting for the new revision to be computed"
    elif not waiting:
        state, reason = conditions.TRUE, COMPLETE
        message = (
            f"all {total} cluster(s) are deployed with revision {revision}: keys of earlier "
            "revisions are no longer used by any cluster and can be deleted at the provider"
            if total
            else "no cluster uses this credential"
        )
    else:
        state, reason = conditions.FALSE, IN_PROGRESS
        names = describe_clusters(waiting, credential.namespace)
        message = (f"{total - len(waiting)} of {total} cluster(s) deployed with revision "
                   f"{revision}; waiting for {names}")  # fmt: skip
        failed = [key for key in waiting if key in failures]
        if failed:
            message += f"; deploy failed on {describe_clusters(failed, credential.namespace)}"
    status["conditions"] = [
        conditions.condition(previous, ROLLOUT_COMPLETE, state, reason, message, None)
    ]
    return status
