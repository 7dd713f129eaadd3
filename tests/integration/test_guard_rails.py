"""Guard rails: verify before marking, paced rollouts, pause, live namespace labels and
break glass, against the real API server with the operator running (AWS is moto)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from cloudcred.constants import (
    CREDENTIAL_PLURAL,
    FORCE_DELETE_ANNOTATION,
    FORCE_DELETE_BY_ANNOTATION,
    GROUP,
    IN_USE_LABEL,
    ROLLOUT_PAUSED_ANNOTATION,
    VERSION,
)
from tests.aws import Moto
from tests.conftest import Kube
from tests.operator import OperatorProcess, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    deployed,
    events_for,
    get_cluster,
    get_credential,
    list_clusters,
    marked,
    new_revision,
    patch_cluster_status,
    patch_credential,
    refusal,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

READ_ONLY_STS = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": ["sts:GetCallerIdentity", "iam:ListAccessKeys"],
    "Resource": "*"}]})  # fmt: skip


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict((get_credential(kube, namespace, name) or {}).get("status") or {})


def rollout_reason(kube: Kube, namespace: str, name: str) -> str | None:
    found = condition(get_credential(kube, namespace, name), "RolloutComplete")
    return found["reason"] if found else None


def wait_rollout(kube: Kube, namespace: str, name: str, revision: str, total: int) -> None:
    wait_for(lambda: status(kube, namespace, name).get("rollout")
             == {"revision": revision, "updated": total, "total": total}
             and rollout_reason(kube, namespace, name) == "RolloutComplete",
             timeout=40, what=f"{name} rolled out {revision} to {total}")  # fmt: skip


def switch_key(kube: Kube, namespace: str, name: str, key_id: str, secret_name: str) -> None:
    patch_credential(kube, namespace, name, {"spec": {"aws": {
        "accessKeyId": key_id,
        "secretAccessKeyRef": {"name": secret_name, "key": "secretAccessKey"}}}})  # fmt: skip


def clusters(kube: Kube, namespace: str, names: list[str], **spec: Any) -> None:
    for name in names:
        create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3", **spec)


def test_a_revision_that_fails_verification_marks_no_cluster(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"guard-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "good", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "prod", user.access_key_id, "good")
    clusters(kube, namespace, ["a", "b"], credentialRef={"name": "prod"})
    first = new_revision(kube, namespace, "prod", None)
    wait_rollout(kube, namespace, "prod", first, 2)

    wrong = "WRONG" + user.secret_access_key[5:]
    secret(kube, namespace, "wrong", {"secretAccessKey": wrong})
    switch_key(kube, namespace, "prod", user.access_key_id, "wrong")
    second = new_revision(kube, namespace, "prod", first)
    wait_for(lambda: rollout_reason(kube, namespace, "prod") == "RolloutBlocked",
             what="RolloutBlocked")  # fmt: skip
    credential = get_credential(kube, namespace, "prod")
    blocked = condition(credential, "RolloutComplete")
    assert "InvalidCredentials" in blocked["message"]
    assert condition(credential, "Verified")["status"] == "False"
    time.sleep(2)  # give a wrong marking every chance to happen
    for cluster in list_clusters(kube, namespace):
        assert marked(cluster) is None
        assert deployed(cluster) == first
        kept = condition(cluster, "RedeployPending")
        assert (kept["status"], kept["reason"]) == ("False", "RolloutBlocked")
        assert condition(cluster, "Ready")["status"] == "True"
    warnings = [e for e in events_for(kube, namespace, "prod") if e.reason == "RolloutBlocked"]
    assert len(warnings) == 1
    assert warnings[0].type == "Warning"
    assert second in warnings[0].message
    for text in [blocked["message"], *(e.message for e in events_for(kube, namespace, "prod"))]:
        assert wrong not in text

    # Fixing the key rolls out the fixed revision.
    switch_key(kube, namespace, "prod", user.access_key_id, "good")
    wait_for(lambda: rollout_reason(kube, namespace, "prod") == "RolloutComplete",
             what="the rollout to resume")  # fmt: skip


def test_max_concurrent_paces_the_marking(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    """Six clusters with an external deployer (this test) and maxConcurrent 2: never
    more than two are marked and not yet redeployed."""
    role = moto.create_role(f"paced-{uuid.uuid4().hex[:6]}")
    create_credential(kube, namespace, "paced", provider="AWS",
                      aws={"roleArn": role},
                      rollout={"maxConcurrent": 2})  # fmt: skip
    names = [f"c{i}" for i in range(6)]
    clusters(kube, namespace, names, credentialRef={"name": "paced"}, deploy="External")
    first = new_revision(kube, namespace, "paced", None)
    for name in names:
        patch_cluster_status(kube, namespace, name, {"deployedRevision": first})
    wait_rollout(kube, namespace, "paced", first, 6)

    patch_credential(
        kube,
        namespace,
        "paced",
        {"spec": {"aws": {"roleArn": moto.create_role(f"two-{uuid.uuid4().hex[:6]}")}}},
    )
    second = new_revision(kube, namespace, "paced", first)
    most = 0
    while True:
        now = list_clusters(kube, namespace)
        pending = [c for c in now if marked(c) == second and deployed(c) != second]
        most = max(most, len(pending))
        assert len(pending) <= 2, [c["metadata"]["name"] for c in pending]
        if all(deployed(c) == second for c in now):
            break
        if pending:  # the external deployer finishes one at a time
            patch_cluster_status(kube, namespace, pending[0]["metadata"]["name"],
                                 {"deployedRevision": second})  # fmt: skip
        time.sleep(0.3)
    assert most == 2
    wait_rollout(kube, namespace, "paced", second, 6)


def test_a_failed_deploy_halts_the_rollout(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    """The new key verifies but may not read Auto Scaling: the first marked clusters fail to
    deploy, and no further cluster is marked."""
    full = moto.create_user(f"full-{uuid.uuid4().hex[:8]}")
    limited = moto.create_user(f"limited-{uuid.uuid4().hex[:8]}", policy=READ_ONLY_STS)
    secret(kube, namespace, "full", {"secretAccessKey": full.secret_access_key})
    secret(kube, namespace, "limited", {"secretAccessKey": limited.secret_access_key})
    static_key_credential(kube, namespace, "halting", full.access_key_id, "full",
                   rollout={"maxConcurrent": 2})  # fmt: skip
    names = [f"c{i}" for i in range(6)]
    clusters(kube, namespace, names, credentialRef={"name": "halting"})
    first = new_revision(kube, namespace, "halting", None)
    wait_rollout(kube, namespace, "halting", first, 6)

    switch_key(kube, namespace, "halting", limited.access_key_id, "limited")
    second = new_revision(kube, namespace, "halting", first)
    wait_for(lambda: rollout_reason(kube, namespace, "halting") == "RolloutBlocked",
             what="RolloutBlocked")  # fmt: skip

    def message() -> str:
        return str(condition(get_credential(kube, namespace, "halting"),
                             "RolloutComplete")["message"])  # fmt: skip

    # Both marked clusters fail (their deploys run at once); the message names both.
    wait_for(lambda: "failed on c0, c1" in message(), timeout=15, what="both failures named")
    time.sleep(3)
    now = {c["metadata"]["name"]: c for c in list_clusters(kube, namespace)}
    assert sorted(n for n, c in now.items() if marked(c) == second) == ["c0", "c1"]
    assert all(deployed(c) == first for c in now.values())
    assert condition(now["c0"], "RedeployPending")["reason"] == "DeployFailed"
    assert condition(now["c5"], "RedeployPending")["reason"] == "RolloutBlocked"


def test_pause_and_resume(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    role = moto.create_role(f"pause-{uuid.uuid4().hex[:6]}")
    create_credential(kube, namespace, "paused", provider="AWS",
                      aws={"roleArn": role},
                      rollout={"maxConcurrent": "100%"})  # fmt: skip
    names = ["a", "b", "c"]
    clusters(kube, namespace, names, credentialRef={"name": "paused"}, deploy="External")
    first = new_revision(kube, namespace, "paused", None)
    for name in names:
        patch_cluster_status(kube, namespace, name, {"deployedRevision": first})
    wait_rollout(kube, namespace, "paused", first, 3)

    pause = {"metadata": {"annotations": {ROLLOUT_PAUSED_ANNOTATION: "true"}}}
    patch_credential(kube, namespace, "paused", pause)
    patch_credential(
        kube,
        namespace,
        "paused",
        {"spec": {"aws": {"roleArn": moto.create_role(f"two-{uuid.uuid4().hex[:6]}")}}},
    )
    second = new_revision(kube, namespace, "paused", first)
    wait_for(lambda: "paused" in (condition(get_credential(kube, namespace, "paused"),
                                            "RolloutComplete") or {}).get("message", ""),
             what="the rollout to say it is paused")  # fmt: skip
    time.sleep(2)
    assert all(marked(c) is None for c in list_clusters(kube, namespace))
    assert "paused" in condition(get_cluster(kube, namespace, "a"), "RedeployPending")["message"]

    patch_credential(kube, namespace, "paused",
                     {"metadata": {"annotations": {ROLLOUT_PAUSED_ANNOTATION: None}}})  # fmt: skip
    wait_for(lambda: all(marked(c) == second for c in list_clusters(kube, namespace)),
             what="every cluster marked after resuming")  # fmt: skip


def test_relabelling_a_namespace_unbinds_and_rebinds(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    team = f"t-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(
        metadata=client.V1ObjectMeta(name=team, labels={"team": "blue"})))  # fmt: skip
    create_credential(kube, namespace, "shared", provider="AWS",
                      aws={"roleArn": "arn:aws:iam::123456789012:role/deployer"},
                      verification={"enabled": False},
                      allowedNamespaces={"matchLabels": {"team": "blue"}})  # fmt: skip
    create_cluster(kube, team, "remote", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "shared", "namespace": namespace})  # fmt: skip

    def reason() -> str | None:
        found = condition(get_cluster(kube, team, "remote"), "CredentialBound")
        return found["reason"] if found else None

    wait_for(lambda: reason() == "Bound", what="bound")
    kube.core.patch_namespace(team, {"metadata": {"labels": {"team": "red"}}})
    started = time.monotonic()
    wait_for(lambda: reason() == "NamespaceNotAllowed", timeout=15, what="unbound")
    print(f"unbound {time.monotonic() - started:.1f}s after relabelling")
    wait_for(lambda: status(kube, namespace, "shared").get("clusterCount") == 0, what="unlisted")
    kube.core.patch_namespace(team, {"metadata": {"labels": {"team": "blue"}}})
    wait_for(lambda: reason() == "Bound", timeout=15, what="bound again")
    wait_for(lambda: status(kube, namespace, "shared").get("clusterCount") == 1, what="listed")


def test_force_delete_with_bound_clusters(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"leaked-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "leaked", user.access_key_id, "keys")
    clusters(kube, namespace, ["a", "b"], credentialRef={"name": "leaked"})
    wait_for(lambda: status(kube, namespace, "leaked").get("clusterCount") == 2, what="bound")
    for read in (lambda: get_credential(kube, namespace, "leaked"),
                 lambda: get_cluster(kube, namespace, "a")):  # fmt: skip
        ready = wait_for(lambda r=read: (c := condition(r(), "Ready")) and c["status"] == "True"
                         and c, what="Ready")  # fmt: skip
        assert ready["observedGeneration"] == read()["metadata"]["generation"]

    def delete() -> None:
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace,
                                                    CREDENTIAL_PLURAL, "leaked")  # fmt: skip

    assert "force-delete" in (refusal(delete) or "")
    reason = "the key was published in a public repository"
    # The admission policy cloudcred-force-delete wants the requester's own user name.
    review = client.AuthenticationV1Api(kube.api).create_self_subject_review({})
    by = review.status.user_info.username
    patch_credential(kube, namespace, "leaked", {"metadata": {"annotations": {
        FORCE_DELETE_ANNOTATION: reason, FORCE_DELETE_BY_ANNOTATION: by}}})  # fmt: skip
    wait_for(lambda: refusal(delete) is None, timeout=20, what="the delete to be admitted")
    wait_for(lambda: get_credential(kube, namespace, "leaked") is None, timeout=30,
             what="the credential to be gone")  # fmt: skip
    for name in ("a", "b"):
        wait_for(lambda n=name: (condition(get_cluster(kube, namespace, n), "CredentialBound")
                                 or {}).get("reason") == "CredentialNotFound",
                 what=f"{name} to show CredentialNotFound")  # fmt: skip
        warned = [e for e in events_for(kube, namespace, name)
                  if e.reason == "CredentialForceDeleted"]  # fmt: skip
        assert warned
        assert reason in warned[0].message
        assert warned[0].type == "Warning"
    forced = [e for e in events_for(kube, namespace, "leaked") if e.reason == "ForceDeleted"]
    assert forced
    assert reason in forced[0].message
    # Its Secret is released: no longer protected, so it can be cleaned up.
    wait_for(lambda: IN_USE_LABEL not in (kube.core.read_namespaced_secret(
        "keys", namespace).metadata.labels or {}), what="the Secret released")  # fmt: skip
    kube.core.delete_namespaced_secret("keys", namespace)
