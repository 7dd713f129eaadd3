"""Change propagation: new revisions, redeploy marking, the deploy step and rollouts,
against the real API server with the operator running and AWS as moto's server."""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.aws import Moto
from tests.conftest import Kube
from tests.gcp import EMAIL, key_json, pem, start_token_endpoint
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    credential_revision,
    deployed,
    events_for,
    get_cluster,
    get_credential,
    list_clusters,
    marked,
    new_revision,
    patch_cluster_status,
    patch_credential,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

# The fan-out killed midway: at the fault suite's size (60 in `make test`, 200 in
# `make test-long`), idle for IDLE seconds after it converged (15; 60 in test-long).
FAN_OUT = int(os.environ.get("CLOUDCRED_FAULT_CLUSTERS", "60"))
IDLE = float(os.environ.get("CLOUDCRED_FAULT_IDLE", "15"))


def rollout_done(kube: Kube, namespace: str, name: str, revision: str, total: int) -> bool:
    credential = get_credential(kube, namespace, name) or {}
    done = condition(credential, "RolloutComplete") or {}
    rollout = (credential.get("status") or {}).get("rollout")
    return done.get("status") == "True" and rollout == {
        "revision": revision, "updated": total, "total": total,
    }  # fmt: skip


def aws_cluster(kube: Kube, namespace: str, name: str, credential: str, **spec: Any) -> None:
    spec.setdefault("region", "eu-west-3")
    create_cluster(kube, namespace, name, provider="AWS", credentialRef={"name": credential},
                   **spec)  # fmt: skip


def test_a_spec_edit_redeploys_every_bound_cluster(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"rollout-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys-1", {"secretAccessKey": user.secret_access_key})
    # Every cluster at once (pacing is tested in test_guard_rails.py).
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys-1",
                          rollout={"maxConcurrent": "100%"})  # fmt: skip
    aws_cluster(kube, namespace, "eu", "prod")
    aws_cluster(kube, namespace, "us", "prod", region="us-east-1")
    aws_cluster(kube, namespace, "ext", "prod", deploy="External")

    # First bind: the deploy step deploys the operator's clusters, nothing is marked,
    # and the External cluster waits for its deployer.
    first = new_revision(kube, namespace, "prod", None)
    wait_for(lambda: [deployed(get_cluster(kube, namespace, n)) for n in ("eu", "us")]
             == [first, first], what="first deployment")  # fmt: skip
    ext = get_cluster(kube, namespace, "ext")
    assert deployed(ext) is None
    wait_for(lambda: (condition(get_cluster(kube, namespace, "ext"), "RedeployPending") or {})
             .get("reason") == "NotDeployed", what="ext waits for a first deployment")  # fmt: skip
    assert all(marked(c) is None for c in list_clusters(kube, namespace))
    wait_for(lambda: (get_credential(kube, namespace, "prod") or {}).get("status", {})
             .get("rollout") == {"revision": first, "updated": 2, "total": 3})  # fmt: skip
    assert condition(get_credential(kube, namespace, "prod"), "RolloutComplete")["status"] == (
        "False"
    )
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": first})
    wait_for(lambda: rollout_done(kube, namespace, "prod", first, 3), what="first rollout")

    # The rotation: a new key for the same user, the spec switches to it in one edit.
    new_key = moto.client("iam").create_access_key(UserName=user.user)["AccessKey"]
    secret(kube, namespace, "keys-2", {"secretAccessKey": new_key["SecretAccessKey"]})
    patch_credential(kube, namespace, "prod", {"spec": {"aws": {
        "accessKeyId": new_key["AccessKeyId"],
        "secretAccessKeyRef": {"name": "keys-2", "key": "secretAccessKey"},
    }}})  # fmt: skip
    second = new_revision(kube, namespace, "prod", first)

    def operator_clusters_redeployed() -> bool:
        clusters = {c["metadata"]["name"]: c for c in list_clusters(kube, namespace)}
        return all(marked(c) == second for c in clusters.values()) and all(
            deployed(clusters[n]) == second for n in ("eu", "us")
        )

    wait_for(operator_clusters_redeployed, what="clusters marked and redeployed")
    eu = get_cluster(kube, namespace, "eu")
    assert eu["status"]["lastDeployedTime"]
    wait_for(lambda: (condition(get_cluster(kube, namespace, "eu"), "RedeployPending") or {})
             .get("reason") == "UpToDate", what="eu up to date")  # fmt: skip
    ext = get_cluster(kube, namespace, "ext")
    pending = condition(ext, "RedeployPending")
    assert (pending["status"], pending["reason"]) == ("True", "RevisionChanged")
    # Its deployer's turn: the operator's part is done (see docs/health.md).
    assert (condition(ext, "Ready")["status"], condition(ext, "Ready")["reason"]) == (
        "True", "ExternalDeployPending")  # fmt: skip
    in_progress = condition(get_credential(kube, namespace, "prod"), "RolloutComplete")
    assert (in_progress["status"], in_progress["reason"]) == ("False", "RolloutInProgress")
    assert "ext" in in_progress["message"]
    assert not rollout_done(kube, namespace, "prod", second, 3)

    # The external deployer reports back: the rollout completes, with an Event.
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": second})
    wait_for(lambda: rollout_done(kube, namespace, "prod", second, 3), what="rollout complete")
    wait_for(lambda: any(e.reason == "RolloutComplete" and second in e.message
                         for e in events_for(kube, namespace, "prod")), what="event")  # fmt: skip
    assert any(e.reason == "Deployed" and second in e.message
               for e in events_for(kube, namespace, "eu"))  # fmt: skip

    # A description edit is not an access change: same revision, nothing redeployed.
    deployed_at = get_cluster(kube, namespace, "eu")["status"]["lastDeployedTime"]
    patch_credential(kube, namespace, "prod", {"spec": {"description": "rotated"}})
    generation = get_credential(kube, namespace, "prod")["metadata"]["generation"]
    wait_for(lambda: get_credential(kube, namespace, "prod")["status"]["observedGeneration"]
             == generation, what="the edit to be checked")  # fmt: skip
    time.sleep(1)
    assert credential_revision(kube, namespace, "prod") == second
    assert get_cluster(kube, namespace, "eu")["status"]["lastDeployedTime"] == deployed_at
    assert rollout_done(kube, namespace, "prod", second, 3)


def test_a_failing_deploy_is_shown(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    """A key that may not read Auto Scaling in the region: the deploy step fails, says why in
    the cluster's condition, an Event and the rollout. The retries with a growing delay,
    and the retry that goes through once the permission is granted, are
    tests/unit/test_reconcilers.py's, on a fake clock."""
    policy = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["sts:GetCallerIdentity", "iam:ListAccessKeys"],
        "Resource": "*"}]})  # fmt: skip
    user = moto.create_user(f"no-autoscaling-{uuid.uuid4().hex[:8]}", policy=policy)
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "limited", user.access_key_id, "keys")
    aws_cluster(kube, namespace, "eu", "limited")

    def failed() -> dict[str, Any] | None:
        pending = condition(get_cluster(kube, namespace, "eu"), "RedeployPending")
        return pending if pending and pending["reason"] == "DeployFailed" else None

    pending = wait_for(failed, what="DeployFailed")
    assert "DescribeAutoScalingGroups" in pending["message"]
    assert user.secret_access_key not in pending["message"]
    assert deployed(get_cluster(kube, namespace, "eu")) is None
    wait_for(lambda: any(e.reason == "DeployFailed" for e in events_for(kube, namespace, "eu")),
             what="DeployFailed event")  # fmt: skip
    # The credential follows its cluster's status within its pacing interval.
    wait_for(lambda: "failed on eu" in condition(get_credential(kube, namespace, "limited"),
                                                 "RolloutComplete")["message"],
             timeout=10, what="the rollout halted on eu")  # fmt: skip


@pytest.fixture
def start_operator(own_namespace: str, operators: Operators) -> Any:
    """Start an operator of this test's own, watching only ``own_namespace``; a restart
    appends to the same log."""

    def start(**env: str) -> OperatorProcess:
        return operators.start(own_namespace, env=env, name="operator")

    return start


def test_a_secret_data_edit_redeploys_within_30_seconds(
    kube: Kube, own_namespace: str, start_operator: Any
) -> None:
    """A GCP key rotation is a change of the Secret alone (a new key file); the local
    token endpoint accepts both keys, as Google does during a rotation."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    old_key, new_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                        for _ in range(2))  # fmt: skip
    endpoint, server = start_token_endpoint([old_key.public_key(), new_key.public_key()])
    try:
        operator = start_operator(CLOUDCRED_GCP_TOKEN_URI=endpoint.url)
        ns = own_namespace
        old_file = key_json(endpoint.url, private_key=pem(old_key))
        secret(kube, ns, "gcp-key", {"key.json": old_file})
        ref = {"name": "gcp-key", "key": "key.json"}
        create_credential(kube, ns, "gcp", provider="GCP", gcp={"serviceAccountKeyRef": ref})
        for name in ("a", "b"):
            create_cluster(kube, ns, name, provider="GCP", region="europe-west1",
                           credentialRef={"name": "gcp"})  # fmt: skip
        first = new_revision(kube, ns, "gcp", None)
        assert get_credential(kube, ns, "gcp")["status"]["identity"] == EMAIL
        wait_for(lambda: rollout_done(kube, ns, "gcp", first, 2), what="first rollout")

        started = time.monotonic()
        kube.core.patch_namespaced_secret("gcp-key", ns, {"stringData": {
            "key.json": key_json(endpoint.url, private_key=pem(new_key))}})  # fmt: skip
        second = new_revision(kube, ns, "gcp", first)
        wait_for(lambda: rollout_done(kube, ns, "gcp", second, 2), what="second rollout")
        elapsed = time.monotonic() - started
        print(f"Secret edit to rollout complete: {elapsed:.1f}s")
        assert elapsed < 30, f"the Secret edit took {elapsed:.1f}s to roll out"
        assert all(marked(c) == second and deployed(c) == second
                   for c in list_clusters(kube, ns))  # fmt: skip
        assert "Traceback" not in operator.log()
    finally:
        server.shutdown()
        server.server_close()


def _create_clusters(kube: Kube, namespace: str, count: int) -> None:
    def one(index: int) -> None:
        create_cluster(kube, namespace, f"c{index:03d}", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "fleet"})  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def _operator_writes(audit_log: Path, namespace: str, since: int) -> list[dict[str, Any]]:
    """Write requests by the operator (its user agents) on objects in ``namespace``,
    from byte offset ``since`` of the audit log."""
    writes = []
    with audit_log.open() as log:
        log.seek(since)
        for line in log:
            entry = json.loads(line)
            agent = entry.get("userAgent", "")
            if (agent.startswith(("cloudcred/", "kopf/"))
                    and (entry.get("objectRef") or {}).get("namespace") == namespace):  # fmt: skip
                writes.append(entry)
    return writes


@pytest.mark.faults
def test_a_fan_out_killed_midway_finishes_after_restart_then_stays_idle(
    kube: Kube, own_namespace: str, moto: Moto, start_operator: Any
) -> None:
    """SIGKILL the operator while it marks ``FAN_OUT`` clusters; after a restart all of
    them end on the new revision. Then, converged and its last writes in, it makes no
    write for ``IDLE`` seconds. (That a look at every object again writes nothing, as a
    periodic resync does, is tests/unit/test_reconcilers.py's.)"""
    ns = own_namespace
    quiet = {"CLOUDCRED_LOG_LEVEL": "INFO"}  # DEBUG logs every body: slow at this size
    operator = start_operator(**quiet)
    role_arn = moto.create_role(f"fleet-{uuid.uuid4().hex[:6]}")
    create_credential(kube, ns, "fleet", provider="AWS",
                      aws={"roleArn": role_arn})  # fmt: skip
    started = time.monotonic()
    _create_clusters(kube, ns, FAN_OUT)
    first = new_revision(kube, ns, "fleet", None)
    wait_for(lambda: rollout_done(kube, ns, "fleet", first, FAN_OUT), timeout=120,
             interval=0.5, what="first deployment of the fleet")  # fmt: skip
    print(f"{FAN_OUT} clusters created and deployed in {time.monotonic() - started:.1f}s")

    patch_credential(
        kube,
        ns,
        "fleet",
        {"spec": {"aws": {"roleArn": moto.create_role(f"two-{uuid.uuid4().hex[:6]}")}}},
    )
    second = wait_for(lambda: next((marked(c) for c in list_clusters(kube, ns)
                                    if marked(c)), None),
                      timeout=30, interval=0.02, what="the first cluster marked")  # fmt: skip
    operator.kill()
    at_kill = list_clusters(kube, ns)
    done_at_kill = sum(deployed(c) == second for c in at_kill)
    marked_at_kill = sum(marked(c) == second for c in at_kill)
    print(f"at SIGKILL: {marked_at_kill} marked, {done_at_kill} redeployed of {FAN_OUT}")
    assert done_at_kill < FAN_OUT, "the fan-out finished before the kill: nothing was tested"

    started = time.monotonic()
    operator = start_operator(**quiet)
    wait_for(lambda: rollout_done(kube, ns, "fleet", second, FAN_OUT), timeout=120,
             interval=0.5, what="the fan-out to finish after the restart")  # fmt: skip
    print(f"restarted and finished the fan-out in {time.monotonic() - started:.1f}s")
    clusters = list_clusters(kube, ns)
    assert all(marked(c) == second and deployed(c) == second for c in clusters)

    def settled() -> bool:
        return all((condition(c, "RedeployPending") or {}).get("reason") == "UpToDate"
                   for c in list_clusters(kube, ns))  # fmt: skip

    wait_for(settled, timeout=60, interval=0.5, what="every cluster UpToDate")
    if kube.plane is None:
        pytest.skip("no audit log on an external cluster: idle writes not counted")
    audit_log = kube.plane.audit_log

    def quiet_since() -> int | None:
        """The audit log's size once the operator wrote nothing here for 2 s (the last
        writes of the convergence: the credential's paced status, Events)."""
        offset = audit_log.stat().st_size
        time.sleep(2)
        return None if _operator_writes(audit_log, ns, offset) else offset

    offset = wait_for(quiet_since, timeout=30, interval=0, what="the last writes to land")
    time.sleep(IDLE)  # a window in which nothing may happen: nothing to wait for
    writes = _operator_writes(audit_log, ns, offset)
    assert writes == [], [
        (w["verb"], w["objectRef"].get("resource"), w["objectRef"].get("name")) for w in writes
    ]
    assert operator.alive
    assert "Traceback" not in operator.log()
