"""Redeploy and rollout decisions, and the Secret digest, without a cluster."""

from __future__ import annotations

import dataclasses
from typing import Any

import boto3

from cloudcred.bindings import ClusterInfo, CredentialInfo
from cloudcred.cache.informers import data_digest
from cloudcred.rollout import (
    RolloutPlan,
    concurrency_limit,
    deploy_failures,
    plan_rollout,
    redeploy_state,
    rollout_status,
)


def cluster(name: str, deployed: str | None = None, *, external: bool = False,
            marked: str | None = None) -> ClusterInfo:  # fmt: skip
    status: dict[str, Any] = {"deployedRevision": deployed} if deployed else {}
    return ClusterInfo("acme", name, "AWS", ("acme", "prod"), 1, status, region="eu-west-3",
                       external=external, marked=marked)  # fmt: skip


def credential(
    revision: str | None, generation: int = 2, verified: int = 2, **guard_rails: Any
) -> CredentialInfo:
    return CredentialInfo("acme", "prod", "AWS", False, None, revision, (), generation, verified,
                          **guard_rails)  # fmt: skip


def plan(revision: str = "v1-new", *bound: ClusterInfo, **guard_rails: Any) -> RolloutPlan:
    found = plan_rollout(credential(revision, **guard_rails), list(bound), {})
    assert found is not None
    return found


def test_a_cluster_that_never_deployed_is_pending_but_not_marked() -> None:
    state = redeploy_state(cluster("a"), plan())
    assert (state.pending, state.reason, state.mark) == (True, "NotDeployed", None)
    assert "operator's deploy step" in state.message
    assert "external deployer" in redeploy_state(cluster("a", external=True), plan()).message


def test_a_cluster_behind_its_credential_is_marked_with_the_new_revision() -> None:
    behind = cluster("a", "v1-old")
    state = redeploy_state(behind, plan("v1-new", behind))
    assert (state.pending, state.reason, state.mark) == (True, "RevisionChanged", "v1-new")
    assert "v1-old" in state.message
    assert "v1-new" in state.message


def test_an_up_to_date_cluster_is_not_pending() -> None:
    state = redeploy_state(cluster("a", "v1-new", marked="v1-new"), plan())
    assert (state.pending, state.reason, state.mark) == (False, "UpToDate", None)


def test_a_failed_deploy_is_the_reason_and_keeps_the_mark() -> None:
    failing = cluster("a", "v1-old", marked="v1-new")
    state = redeploy_state(failing, plan("v1-new", failing), "AWS denied X")
    assert (state.pending, state.reason, state.mark) == (True, "DeployFailed", "v1-new")
    assert "AWS denied X" in state.message


def test_rollout_counts_clusters_on_the_current_revision() -> None:
    bound = [cluster("a", "v1-new"), cluster("b", "v1-old", marked="v1-new"), cluster("c")]
    status = rollout_status(credential("v1-new"), bound, None, plan("v1-new", *bound))
    assert status["rollout"] == {"revision": "v1-new", "updated": 1, "total": 3}
    (done,) = status["conditions"]
    assert (done["status"], done["reason"]) == ("False", "RolloutInProgress")
    assert "1 of 3" in done["message"]
    assert "waiting for b, c" in done["message"]


def test_a_failed_deploy_blocks_the_rollout_naming_the_cluster() -> None:
    bound = [cluster("b", "v1-old", marked="v1-new"), cluster("c", "v1-old")]
    blocked = plan_rollout(credential("v1-new"), bound, {("acme", "b"): "denied"})
    assert blocked is not None
    assert blocked.allowed == {("acme", "b")}  # c is not marked
    (done,) = rollout_status(credential("v1-new"), bound, None, blocked)["conditions"]
    assert (done["status"], done["reason"]) == ("False", "RolloutBlocked")
    assert "failed on b" in done["message"]


def test_a_deploy_failure_written_on_an_external_cluster_blocks_nothing() -> None:
    """The operator writes status.deployFailure only on clusters it deploys. A tenant of
    a namespace the credential is shared with writes one on its External cluster (with
    clusters/status): the owner's rollout goes on. One on an Operator cluster counts."""
    forged = {"deployedRevision": "v1-old",
              "deployFailure": {"revision": "v1-new", "message": "forged"}}  # fmt: skip
    external = ClusterInfo("team-b", "theirs", "AWS", ("acme", "prod"), 1, forged,
                           region="eu-west-3", external=True)  # fmt: skip
    bound = [external, cluster("b", "v1-old"), cluster("c", "v1-old")]
    failures = deploy_failures("v1-new", bound)
    assert failures == {}
    planned = plan_rollout(credential("v1-new"), bound, failures)
    assert planned is not None
    assert planned.allowed == {("acme", "b")}  # the rollout marks its next cluster
    operated = dataclasses.replace(external, external=False)
    assert deploy_failures("v1-new", [operated]) == {("team-b", "theirs"): "forged"}


def test_rollout_completes_when_every_cluster_is_on_the_revision() -> None:
    status = rollout_status(credential("v1-new"), [cluster("a", "v1-new")], None, plan())
    (done,) = status["conditions"]
    assert (done["status"], done["reason"]) == ("True", "RolloutComplete")
    assert "can be deleted at the provider" in done["message"]
    empty = rollout_status(credential("v1-new"), [], None, plan())
    assert empty["conditions"][0]["status"] == "True"
    assert empty["rollout"] == {"revision": "v1-new", "updated": 0, "total": 0}


def test_rollout_waits_while_the_spec_is_newer_than_its_revision() -> None:
    status = rollout_status(credential("v1-old", generation=3, verified=2),
                            [cluster("a", "v1-old")], None, plan("v1-old"))  # fmt: skip
    assert status["conditions"][0]["status"] == "False"
    assert "new revision" in status["conditions"][0]["message"]


def test_no_rollout_without_a_revision() -> None:
    assert plan_rollout(credential(None), [cluster("a")], {}) is None
    assert rollout_status(credential(None), [cluster("a")], None, None) == {}


def test_max_concurrent_as_a_number_or_a_percentage() -> None:
    assert concurrency_limit(2, 6) == 2
    assert concurrency_limit("25%", 6) == 1  # rounded down, at least 1
    assert concurrency_limit("50%", 6) == 3
    assert concurrency_limit("100%", 7) == 7
    assert concurrency_limit("25%", 0) == 1


def test_pacing_marks_the_next_clusters_as_earlier_ones_finish() -> None:
    behind = [cluster(f"c{i}", "v1-old") for i in range(6)]
    first = plan("v1-new", *behind, max_concurrent=2)
    assert first.allowed == {("acme", "c0"), ("acme", "c1")}
    queued = redeploy_state(behind[2], first)
    assert (queued.pending, queued.mark) == (True, None)
    assert "maxConcurrent" in queued.message
    # c0 finished, c1 still marked and pending: exactly one more is marked.
    progressed = [cluster("c0", "v1-new", marked="v1-new"),
                  cluster("c1", "v1-old", marked="v1-new"), *behind[2:]]  # fmt: skip
    assert plan("v1-new", *progressed, max_concurrent=2).allowed == {
        ("acme", "c1"), ("acme", "c2")}  # fmt: skip


def test_a_paused_rollout_marks_no_more() -> None:
    behind = [cluster("a", "v1-old", marked="v1-new"), cluster("b", "v1-old")]
    paused = plan("v1-new", *behind, paused=True, max_concurrent=5)
    assert paused.allowed == {("acme", "a")}
    assert "paused" in redeploy_state(behind[1], paused).message


def test_a_revision_that_did_not_verify_marks_nothing_and_keeps_deployments() -> None:
    behind = [cluster("a", "v1-old"), cluster("b")]
    blocked = plan("v1-new", *behind, verification_problem="it failed verification (X: y)")
    assert blocked.allowed == frozenset()
    kept = redeploy_state(behind[0], blocked)
    assert (kept.pending, kept.reason, kept.mark) == (False, "RolloutBlocked", None)
    assert "keeping the deployment of revision v1-old" in kept.message
    (done,) = rollout_status(credential("v1-new"), behind, None, blocked)["conditions"]
    assert done["reason"] == "RolloutBlocked"


def test_secret_digest_follows_the_data_and_hides_it() -> None:
    first = data_digest({"key": "c2VjcmV0"})
    assert first == data_digest({"key": "c2VjcmV0"})
    assert first != data_digest({"key": "b3RoZXI="})
    assert "c2VjcmV0" not in first
    assert data_digest(None) == data_digest({})


def test_the_deploy_step_reaches_the_regional_sts_endpoint(monkeypatch: Any) -> None:
    """The deploy step's STS call proves the cluster's region only if botocore sends it
    to the regional endpoint (the default since botocore 1.36)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_STS_REGIONAL_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    session = boto3.session.Session(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="x",
                                    region_name="eu-west-3")  # fmt: skip
    assert session.client("sts").meta.endpoint_url == "https://sts.eu-west-3.amazonaws.com"
