"""Redeploys and rollouts: plain, side-effect-free decisions.

Marking is *level-based*: a bound cluster whose ``status.deployedRevision`` is set and
differs from its credential's current revision is behind, whatever happened before.
So an operator killed half-way through a fan-out finishes the job after a restart
simply by looking again. A cluster that never deployed is not marked: its deployer
(the operator's own deploy step, or an external one) deploys it with the current
revision.

Guard rails decide *which* behind clusters are marked (``plan_rollout``): none while
the revision has not verified, none beyond ``spec.rollout.maxConcurrent`` marked and
not yet redeployed, none more after a deploy failed or while the rollout is paused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cloudcred import conditions, health, permissions
from cloudcred.bindings import (
    CREDENTIAL_BOUND,
    NO_REVISION,
    Binding,
    ClusterInfo,
    CredentialInfo,
    Key,
    describe_clusters,
)

REDEPLOY_PENDING, ROLLOUT_COMPLETE = "RedeployPending", "RolloutComplete"
# RedeployPending reasons.
REVISION_CHANGED, NOT_DEPLOYED, UP_TO_DATE, DEPLOY_FAILED = (
    "RevisionChanged",
    "NotDeployed",
    "UpToDate",
    "DeployFailed",
)
# RolloutComplete reasons (BLOCKED is also the RedeployPending reason of a cluster
# that keeps its last good deployment).
COMPLETE, IN_PROGRESS, BLOCKED = "RolloutComplete", "RolloutInProgress", "RolloutBlocked"
NO_REVISION_MESSAGE = "the credential has no revision yet: see its Verified condition"


@dataclass(frozen=True)
class RolloutPlan:
    """Which behind clusters of a credential may carry the redeploy mark now."""

    revision: str
    allowed: frozenset[Key] = frozenset()
    behind: frozenset[Key] = frozenset()  # deployed with an earlier revision
    limit: int = 1
    blocked: str | None = None  # why no more clusters are marked
    paused: bool = False
    failed: list[Key] = field(default_factory=list)


def concurrency_limit(max_concurrent: int | str, total: int) -> int:
    """spec.rollout.maxConcurrent as a number of clusters: a percentage of ``total``
    rounded down, at least 1."""
    if isinstance(max_concurrent, str) and max_concurrent.endswith("%"):
        return max(1, math.floor(total * int(max_concurrent[:-1]) / 100))
    return max(1, int(max_concurrent))


def deploy_failures(revision: str | None, bound: list[ClusterInfo]) -> dict[Key, str]:
    """The bound clusters the operator deploys whose deploy of ``revision`` failed (their
    own status says so). An External cluster's ``deployFailure`` is not the operator's
    (it never writes one there): ignored, so that a tenant sharing the credential cannot
    halt its owner's rollout with one."""
    found = {c.key: c.deploy_failure(revision) for c in bound if not c.external}
    return {key: message for key, message in found.items() if message}


def plan_rollout(
    credential: CredentialInfo, bound: list[ClusterInfo], failures: dict[Key, str]
) -> RolloutPlan | None:
    """Clusters already marked with the revision stay marked; more are marked, in name
    order, while fewer than the limit are marked and not yet redeployed -- unless the
    revision did not verify, a deploy failed, or the rollout is paused."""
    revision = credential.revision
    if not revision:
        return None
    behind = sorted((c for c in bound if c.deployed_revision and c.deployed_revision != revision),
                    key=lambda c: c.key)  # fmt: skip
    in_flight = [c.key for c in behind if c.marked == revision]
    limit = concurrency_limit(credential.max_concurrent, len(bound))
    failed = sorted(c.key for c in bound if c.key in failures)
    blocked = None
    if credential.verification_problem:
        blocked = f"revision {revision} is not rolled out: {credential.verification_problem}"
    elif failed:
        blocked = (f"deploying revision {revision} failed on "
                   f"{describe_clusters(failed, credential.namespace)}: no more clusters are "
                   "marked until it succeeds")  # fmt: skip
    allowed = list(in_flight)
    if blocked is None and not credential.paused:
        # Not a cluster held by its permission sets: no mark for a deployment that
        # would fail, or that no check has cleared yet.
        queue = [c.key for c in behind if c.marked != revision
                 and permissions.cluster_hold(credential, c.permission_sets) is None]  # fmt: skip
        allowed += queue[: max(0, limit - len(in_flight))]
    return RolloutPlan(revision, frozenset(allowed), frozenset(c.key for c in behind), limit,
                       blocked, credential.paused, failed)  # fmt: skip


def published_plan(credential: CredentialInfo, cluster: ClusterInfo) -> RolloutPlan | None:
    """One cluster's view of its credential's rollout, from what the credential
    reconciler published in ``status.rollout`` and the mark it wrote on the cluster;
    None until the plan of the current revision is published."""
    revision, blocked = credential.published
    if not revision or revision != credential.revision:
        return None
    total = int((credential.status.get("rollout") or {}).get("total") or 0)
    allowed = frozenset({cluster.key} if cluster.marked == revision else ())
    return RolloutPlan(revision, allowed, limit=concurrency_limit(credential.max_concurrent, total),
                       blocked=blocked, paused=credential.paused)  # fmt: skip


@dataclass(frozen=True)
class RedeployState:
    """Where one bound cluster stands against its credential's current revision."""

    pending: bool
    reason: str
    message: str
    mark: str | None  # the revision the cluster must be marked with, if any
    # Waits for a person: the credential's revision may not roll out (see its Verified).
    stalled: bool = False

    def condition(
        self, previous: list[dict[str, Any]] | None, generation: int | None
    ) -> dict[str, Any]:
        state = conditions.TRUE if self.pending else conditions.FALSE
        return conditions.condition(
            previous, REDEPLOY_PENDING, state, self.reason, self.message, generation
        )


def redeploy_state(
    cluster: ClusterInfo, plan: RolloutPlan, deploy_failure: str | None = None
) -> RedeployState:
    """The state of a bound cluster against its credential's rollout ``plan``;
    ``deploy_failure`` is why the operator's last deploy attempt failed."""
    revision, deployed = plan.revision, cluster.deployed_revision
    who = "the external deployer" if cluster.external else "the operator's deploy step"
    if deployed == revision:
        return RedeployState(False, UP_TO_DATE, f"deployed with credential revision {revision}",
                             None)  # fmt: skip
    if deploy_failure:
        failed = f"deploying credential revision {revision} failed: {deploy_failure}"
        return RedeployState(True, DEPLOY_FAILED, failed, revision if deployed else None)
    if not deployed:
        if plan.blocked and plan.blocked.startswith(f"revision {revision} "):
            return RedeployState(True, NOT_DEPLOYED, f"not deployed: {plan.blocked}", None,
                                 stalled=True)  # fmt: skip
        return RedeployState(True, NOT_DEPLOYED, f"waiting for {who} to deploy credential "
                             f"revision {revision} for the first time", None)  # fmt: skip
    if cluster.key in plan.allowed:
        return RedeployState(True, REVISION_CHANGED, f"the credential changed from revision "
                             f"{deployed} to {revision}: waiting for {who} to redeploy",
                             revision)  # fmt: skip
    if plan.blocked:
        return RedeployState(False, BLOCKED, f"{plan.blocked}; keeping the deployment of "
                             f"revision {deployed}", None)  # fmt: skip
    limit = f"at most {plan.limit} cluster(s) redeploy at a time (spec.rollout.maxConcurrent)"
    why = "the rollout is paused (cloudcred.io/rollout-paused)" if plan.paused else limit
    return RedeployState(True, REVISION_CHANGED, f"the credential changed from revision "
                         f"{deployed} to {revision}; queued: {why}", None)  # fmt: skip


def rollout_status(
    credential: CredentialInfo,
    bound: list[ClusterInfo],
    previous: list[dict[str, Any]] | None,
    plan: RolloutPlan | None,
) -> dict[str, Any]:
    """``status.rollout`` and the ``RolloutComplete`` condition of a credential."""
    if plan is None:
        return {}
    revision = plan.revision
    waiting = sorted(c.key for c in bound if c.deployed_revision != revision)
    total = len(bound)
    status: dict[str, Any] = {
        "rollout": {"revision": revision, "updated": total - len(waiting), "total": total}
    }
    if plan.blocked:  # the clusters read it (published_plan)
        status["rollout"]["blocked"] = plan.blocked
    progress = f"{total - len(waiting)} of {total} cluster(s) deployed with revision {revision}"
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
    elif plan.blocked:
        state, reason = conditions.FALSE, BLOCKED
        message = f"{plan.blocked}; {progress}"
    else:
        state, reason = conditions.FALSE, IN_PROGRESS
        names = describe_clusters(waiting, credential.namespace)
        message = f"{progress}; waiting for {names}"
        if plan.paused:
            message += "; paused by the cloudcred.io/rollout-paused annotation"
    status["conditions"] = [
        conditions.condition(previous, ROLLOUT_COMPLETE, state, reason, message, None)
    ]
    return status


def cluster_status(
    cluster: ClusterInfo,
    binding: Binding,
    credential: CredentialInfo | None,
    redeploy: RedeployState | None,
    hold: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The part of a Cluster's status the cluster reconciler owns: CredentialBound, RedeployPending
    and the Ready summary. ``hold``: why its permission sets hold it
    (``permissions.cluster_hold``)."""
    status: dict[str, Any] = {"observedGeneration": cluster.generation}
    if binding.bound and credential is not None:
        status["credential"] = {"namespace": credential.namespace, "name": credential.name}
        if credential.revision:
            status["credential"]["revision"] = credential.revision
    state = conditions.TRUE if binding.bound else conditions.FALSE
    status["conditions"] = [
        conditions.condition(cluster.status.get("conditions"), CREDENTIAL_BOUND, state,
                             binding.reason, binding.message, cluster.generation),
        *redeploy_conditions(cluster, binding, redeploy, hold),
    ]  # fmt: skip
    return {k: v for k, v in status.items() if v is not None}


def redeploy_conditions(
    cluster: ClusterInfo,
    binding: Binding,
    redeploy: RedeployState | None,
    hold: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """RedeployPending and the summary (Ready, Reconciling, Stalled)."""
    previous = cluster.status.get("conditions")
    if not binding.bound:
        pending = (conditions.FALSE, binding.reason, "not bound: nothing to redeploy")
    elif redeploy is None:
        pending = (conditions.UNKNOWN, NO_REVISION, NO_REVISION_MESSAGE)
    else:
        pending = (conditions.TRUE if redeploy.pending else conditions.FALSE, redeploy.reason,
                   redeploy.message)  # fmt: skip
    verdict = health.cluster_verdict(
        (binding.bound, binding.reason, binding.message),
        None if redeploy is None else (redeploy.pending, redeploy.reason, redeploy.message),
        external=cluster.external,
        no_revision=NO_REVISION_MESSAGE,
        stalled_by_credential=redeploy is not None and redeploy.stalled,
        permissions=hold,
    )
    return [
        conditions.condition(previous, REDEPLOY_PENDING, *pending, cluster.generation),
        *verdict.conditions(previous, cluster.generation),
    ]
