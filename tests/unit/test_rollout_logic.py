"""Redeploy and rollout decisions, and the Secret digest, without a cluster."""

from __future__ import annotations

from typing import Any

import boto3

from cloudcred.bindings import ClusterInfo, CredentialInfo
from cloudcred.rollout import redeploy_state, rollout_status
from cloudcred.secretwatch import data_digest


def cluster(name: str, deployed: str | None = None, *, external: bool = False,
            marked: str | None = None) -> ClusterInfo:  # fmt: skip
    status: dict[str, Any] = {"deployedRevision": deployed} if deployed else {}
    return ClusterInfo("acme", name, "AWS", ("acme", "prod"), 1, status, region="eu-west-3",
                       external=external, marked=marked)  # fmt: skip


def credential(revision: str | None, generation: int = 2, verified: int = 2) -> CredentialInfo:
    return CredentialInfo("acme", "prod", "AWS", False, None, revision, (), generation, verified)


def test_a_cluster_that_never_deployed_is_pending_but_not_marked() -> None:
    state = redeploy_state(cluster("a"), "v1-new")
    assert (state.pending, state.reason, state.mark) == (True, "NotDeployed", None)
    assert "operator's deploy step" in state.message
    assert "external deployer" in redeploy_state(cluster("a", external=True), "v1-new").message


def test_a_cluster_behind_its_credential_is_marked_with_the_new_revision() -> None:
    state = redeploy_state(cluster("a", "v1-old"), "v1-new")
    assert (state.pending, state.reason, state.mark) == (True, "RevisionChanged", "v1-new")
    assert "v1-old" in state.message
    assert "v1-new" in state.message


def test_an_up_to_date_cluster_is_not_pending() -> None:
    state = redeploy_state(cluster("a", "v1-new", marked="v1-new"), "v1-new")
    assert (state.pending, state.reason, state.mark) == (False, "UpToDate", None)


def test_a_failed_deploy_is_the_reason_and_keeps_the_mark() -> None:
    state = redeploy_state(cluster("a", "v1-old"), "v1-new", "AWS denied X")
    assert (state.pending, state.reason, state.mark) == (True, "DeployFailed", "v1-new")
    assert "AWS denied X" in state.message


def test_rollout_counts_clusters_on_the_current_revision() -> None:
    bound = [cluster("a", "v1-new"), cluster("b", "v1-old"), cluster("c")]
    status = rollout_status(credential("v1-new"), bound, None, {("acme", "b"): "denied"})
    assert status["rollout"] == {"revision": "v1-new", "updated": 1, "total": 3}
    (done,) = status["conditions"]
    assert (done["status"], done["reason"]) == ("False", "RolloutInProgress")
    assert "1 of 3" in done["message"]
    assert "waiting for b, c" in done["message"]
    assert "deploy failed on b" in done["message"]


def test_rollout_completes_when_every_cluster_is_on_the_revision() -> None:
    status = rollout_status(credential("v1-new"), [cluster("a", "v1-new")], None, {})
    (done,) = status["conditions"]
    assert (done["status"], done["reason"]) == ("True", "RolloutComplete")
    assert "can be deleted at the provider" in done["message"]
    empty = rollout_status(credential("v1-new"), [], None, {})
    assert empty["conditions"][0]["status"] == "True"
    assert empty["rollout"] == {"revision": "v1-new", "updated": 0, "total": 0}


def test_rollout_waits_while_the_spec_is_newer_than_its_revision() -> None:
    status = rollout_status(credential("v1-old", generation=3, verified=2),
                            [cluster("a", "v1-old")], None, {})  # fmt: skip
    assert status["conditions"][0]["status"] == "False"
    assert "new revision" in status["conditions"][0]["message"]


def test_no_rollout_without_a_revision() -> None:
    assert rollout_status(credential(None), [cluster("a")], None, {}) == {}


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
