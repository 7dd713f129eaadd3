"""Credential delivery (spec.credentialsSecret): the Secret a cluster's deployer reads,
against the real API server with the operator running and AWS as moto's server."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from cloudcred.constants import (
    CLUSTER_PLURAL,
    GROUP,
    IN_USE_LABEL,
    ROLLOUT_PAUSED_ANNOTATION,
    VERSION,
)
from tests.aws import Moto
from tests.conftest import Kube
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    credential_revision,
    events_for,
    get_cluster,
    patch_credential,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration
DELIVER = {"enabled": True}


def delivered(kube: Kube, namespace: str, name: str) -> client.V1Secret | None:
    try:
        found: client.V1Secret = kube.core.read_namespaced_secret(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def values(found: client.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}


def deployed_revision(kube: Kube, namespace: str, name: str) -> str | None:
    return (get_cluster(kube, namespace, name).get("status") or {}).get("deployedRevision")


def delivering_cluster(kube: Kube, namespace: str, credential: str, secret_name: str) -> None:
    create_cluster(kube, namespace, "eu", provider="AWS", region="eu-west-3",
                   credentialRef={"name": credential},
                   credentialsSecret={"name": secret_name})  # fmt: skip


def test_the_delivered_secret_changes_only_at_deployment(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"deliver-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys-1", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys-1", delivery=DELIVER)
    delivering_cluster(kube, namespace, "prod", "aws-creds")
    first = wait_for(lambda: credential_revision(kube, namespace, "prod"), what="a revision")
    wait_for(lambda: deployed_revision(kube, namespace, "eu") == first, what="the first deployment")

    found = delivered(kube, namespace, "aws-creds")
    assert found is not None
    data = values(found)
    assert data["AWS_ACCESS_KEY_ID"] == user.access_key_id
    assert data["AWS_SECRET_ACCESS_KEY"] == user.secret_access_key
    assert data["AWS_REGION"] == "eu-west-3"
    assert f"aws_access_key_id = {user.access_key_id}" in data["credentials"]
    assert "AWS_SESSION_TOKEN" not in data
    assert found.metadata.annotations["cloudcred.io/revision"] == first
    assert found.metadata.labels["app.kubernetes.io/managed-by"] == "cloudcred"
    (owner,) = found.metadata.owner_references
    assert (owner.kind, owner.name) == ("Cluster", "eu")
    assert owner.uid == get_cluster(kube, namespace, "eu")["metadata"]["uid"]

    # A new key while the rollout is paused: the credential changes, the cluster's
    # Secret does not, until the cluster is redeployed.
    new_key = moto.client("iam").create_access_key(UserName=user.user)["AccessKey"]
    secret(kube, namespace, "keys-2", {"secretAccessKey": new_key["SecretAccessKey"]})
    pause = {"metadata": {"annotations": {ROLLOUT_PAUSED_ANNOTATION: "true"}}}
    patch_credential(kube, namespace, "prod", pause)
    patch_credential(kube, namespace, "prod", {"spec": {"aws": {
        "accessKeyId": new_key["AccessKeyId"],
        "secretAccessKeyRef": {"name": "keys-2", "key": "secretAccessKey"}}}})  # fmt: skip
    second = wait_for(lambda: (r := credential_revision(kube, namespace, "prod")) != first and r,
                      what="the new revision")  # fmt: skip
    time.sleep(2)
    unchanged = delivered(kube, namespace, "aws-creds")
    assert unchanged is not None
    assert values(unchanged)["AWS_ACCESS_KEY_ID"] == user.access_key_id
    assert deployed_revision(kube, namespace, "eu") == first

    patch_credential(kube, namespace, "prod",
                     {"metadata": {"annotations": {ROLLOUT_PAUSED_ANNOTATION: None}}})  # fmt: skip
    wait_for(lambda: deployed_revision(kube, namespace, "eu") == second, what="the redeployment")
    found = delivered(kube, namespace, "aws-creds")
    assert found is not None
    assert values(found)["AWS_ACCESS_KEY_ID"] == new_key["AccessKeyId"]
    assert values(found)["AWS_SECRET_ACCESS_KEY"] == new_key["SecretAccessKey"]
    assert found.metadata.annotations["cloudcred.io/revision"] == second

    texts = [e.message for name in ("prod", "eu") for e in events_for(kube, namespace, name)]
    texts += [c["message"] for c in get_cluster(kube, namespace, "eu")["status"]["conditions"]]
    for value in (user.secret_access_key, new_key["SecretAccessKey"]):
        assert all(value not in text for text in texts)
        assert value not in operator.log()


def test_a_delivered_secret_refuses_the_in_use_label_and_is_revoked_by_its_owner(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess,
    tenant: Callable[[str], Kube],
) -> None:  # fmt: skip
    """The label cloudcred.io/in-use=true, which would make the operator's own delete
    fail, is refused on a Secret delivered to a Cluster; removing the Cluster's
    spec.credentialsSecret revokes the Secret, found by its owner's UID. Both tried by
    a tenant with the documented rights (and the status subresources)."""
    user = moto.create_user(f"owned-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys", delivery=DELIVER)
    delivering_cluster(kube, namespace, "prod", "aws-creds")
    wait_for(lambda: delivered(kube, namespace, "aws-creds"), what="the delivery")
    member = tenant(namespace)

    def refused() -> str | None:
        label = {"metadata": {"labels": {IN_USE_LABEL: "true"}}}
        try:
            member.core.patch_namespaced_secret("aws-creds", namespace, label)
        except client.ApiException as error:
            return str(json.loads(error.body)["message"]) if error.status == 403 else None
        # The policy is not loaded yet: take the label off and try again.
        unlabel = {"metadata": {"labels": {IN_USE_LABEL: None}}}
        member.core.patch_namespaced_secret("aws-creds", namespace, unlabel)
        return None

    message = wait_for(refused, what="the in-use label refused on a delivered Secret")
    assert f"secret {namespace}/aws-creds was delivered by cloudcred to a Cluster" in message

    member.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CLUSTER_PLURAL, "eu",
        {"spec": {"credentialsSecret": None}},
    )  # fmt: skip
    wait_for(lambda: delivered(kube, namespace, "aws-creds") is None, timeout=30,
             what="the delivered Secret revoked once the Cluster stopped naming it")  # fmt: skip
    revoked = [e.message for e in events_for(kube, namespace, "eu")
               if e.reason == "CredentialsRevoked"]  # fmt: skip
    assert any("no longer named by spec.credentialsSecret" in text for text in revoked)


def deploy_failed(kube: Kube, namespace: str, cluster: str = "eu") -> str:
    """The message of the cluster's DeployFailed condition, once it shows one."""

    def failed() -> dict[str, Any] | None:
        found = condition(get_cluster(kube, namespace, cluster), "RedeployPending")
        return found if found and found["reason"] == "DeployFailed" else None

    return str(wait_for(failed, what=f"DeployFailed on {cluster}")["message"])


@pytest.mark.parametrize("labelled", [False, True], ids=["plain", "labelled-as-cloudcreds"])
def test_a_secret_the_operator_did_not_create_is_not_overwritten(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess, labelled: bool
) -> None:
    """A Secret of that name made by anyone else (even labelled managed-by cloudcred,
    which anyone may write) never receives the credential."""
    user = moto.create_user(f"taken-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    secret(kube, namespace, "hand-made", {"token": "kept as it is"})
    if labelled:
        kube.core.patch_namespaced_secret("hand-made", namespace, {"metadata": {"labels": {
            "app.kubernetes.io/managed-by": "cloudcred"}}})  # fmt: skip
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys", delivery=DELIVER)
    delivering_cluster(kube, namespace, "prod", "hand-made")

    assert "was not created by cloudcred" in deploy_failed(kube, namespace)
    kept = delivered(kube, namespace, "hand-made")
    assert kept is not None
    assert values(kept) == {"token": "kept as it is"}


def test_one_cluster_cannot_take_over_another_clusters_secret(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"twin-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys", delivery=DELIVER)
    delivering_cluster(kube, namespace, "prod", "shared-name")
    revision = wait_for(lambda: credential_revision(kube, namespace, "prod"), what="a revision")
    wait_for(lambda: deployed_revision(kube, namespace, "eu") == revision, what="a deployment")
    create_cluster(kube, namespace, "other", provider="AWS", region="us-east-1",
                   credentialRef={"name": "prod"},
                   credentialsSecret={"name": "shared-name"})  # fmt: skip
    assert "was not created by cloudcred for this Cluster" in deploy_failed(
        kube, namespace, "other"
    )
    found = delivered(kube, namespace, "shared-name")
    assert found is not None
    assert values(found)["AWS_REGION"] == "eu-west-3"  # still the first cluster's


def test_delivery_needs_the_credentials_own_opt_in(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"optin-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys")
    delivering_cluster(kube, namespace, "prod", "aws-creds")
    assert "does not allow delivery (spec.delivery.enabled)" in deploy_failed(kube, namespace)
    assert delivered(kube, namespace, "aws-creds") is None

    patch_credential(kube, namespace, "prod", {"spec": {"delivery": DELIVER}})
    revision = wait_for(lambda: credential_revision(kube, namespace, "prod"), what="a revision")
    wait_for(lambda: deployed_revision(kube, namespace, "eu") == revision, timeout=60,
             what="the deployment once the credential allows delivery")  # fmt: skip
    assert delivered(kube, namespace, "aws-creds") is not None


def labelled_namespace(kube: Kube, labels: dict[str, str]) -> str:
    name = f"tenant-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    return name


def test_another_namespace_receives_only_what_delivery_allows_and_loses_it_on_revocation(
    kube: Kube, moto: Moto, role_operator: tuple[str, OperatorProcess]
) -> None:
    """allowedNamespaces lets a namespace's clusters use a credential; only
    delivery.allowedNamespaces lets them hold its values. Taking the namespace's label
    away deletes the delivered Secret (timed)."""
    home, operator = role_operator
    tenant = labelled_namespace(kube, {"team": "blue"})
    operator.stop()  # watch the tenant's namespace too
    operator.args = ["--namespace", home, "--namespace", tenant]
    operator.start()
    role = moto.create_role(f"shared-{uuid.uuid4().hex[:6]}")
    create_credential(kube, home, "shared", provider="AWS", aws={"roleArn": role},
                      allowedNamespaces={"matchLabels": {"team": "blue"}},
                      delivery=DELIVER)  # fmt: skip
    create_cluster(kube, tenant, "eu", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "shared", "namespace": home},
                   credentialsSecret={"name": "aws-session"})  # fmt: skip
    assert "does not allow delivery to namespace" in deploy_failed(kube, tenant)
    assert delivered(kube, tenant, "aws-session") is None

    patch_credential(kube, home, "shared", {"spec": {"delivery": {
        "enabled": True, "allowedNamespaces": {"matchLabels": {"team": "blue"}}}}})  # fmt: skip
    revision = wait_for(lambda: credential_revision(kube, home, "shared"), what="a revision")
    wait_for(lambda: deployed_revision(kube, tenant, "eu") == revision, timeout=60,
             what="the tenant's deployment")  # fmt: skip
    assert delivered(kube, tenant, "aws-session") is not None

    started = time.monotonic()
    kube.core.patch_namespace(tenant, {"metadata": {"labels": {"team": None}}})
    wait_for(lambda: delivered(kube, tenant, "aws-session") is None, timeout=30, interval=0.2,
             what="the delivered Secret deleted after the namespace lost its label")  # fmt: skip
    print(f"delivered Secret deleted {time.monotonic() - started:.1f}s after revocation")
    reasons = [event.reason for event in events_for(kube, tenant, "eu")]
    assert "CredentialsRevoked" in reasons
    # That a forged Cluster status claiming the binding back gets no renewal is decided
    # from the operator's own view: tests/unit/test_reconcilers.py, on a fake clock.


@pytest.fixture
def role_operator(kube: Kube, operators: Operators) -> tuple[str, OperatorProcess]:
    """An operator of its own whose delivered session credentials are renewed ten
    seconds after they are written (15-minute sessions, renewed 890 s before expiry)."""
    namespace = f"own-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    renewed_soon = {"CLOUDCRED_DELIVERY_SESSION_SECONDS": "900",
                    "CLOUDCRED_DELIVERY_REFRESH_BEFORE": "890"}  # fmt: skip
    return namespace, operators.start(namespace, env=renewed_soon)


def test_a_role_is_delivered_as_session_credentials_renewed_before_expiry(
    kube: Kube, moto: Moto, role_operator: tuple[str, OperatorProcess]
) -> None:
    namespace, operator = role_operator
    role = moto.create_role(f"delivered-{uuid.uuid4().hex[:6]}")
    create_credential(kube, namespace, "role", provider="AWS", aws={"roleArn": role},
                      delivery=DELIVER)  # fmt: skip
    delivering_cluster(kube, namespace, "role", "aws-session")
    first = wait_for(lambda: credential_revision(kube, namespace, "role"), what="a revision")
    wait_for(lambda: deployed_revision(kube, namespace, "eu") == first, what="the deployment")

    found = delivered(kube, namespace, "aws-session")
    assert found is not None
    data = values(found)
    assert data["AWS_SESSION_TOKEN"]
    assert f"aws_session_token = {data['AWS_SESSION_TOKEN']}" in data["credentials"]
    assert data["AWS_ACCESS_KEY_ID"].startswith("ASIA")  # temporary, not a user's AKIA key
    expires = found.metadata.annotations["cloudcred.io/expires-at"]
    assert expires > found.metadata.creation_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")

    def renewed() -> dict[str, str] | None:
        now = delivered(kube, namespace, "aws-session")
        fresh = values(now) if now else {}
        return fresh if fresh.get("AWS_SESSION_TOKEN") not in (None, data["AWS_SESSION_TOKEN"]) \
            else None  # fmt: skip

    fresh = wait_for(renewed, timeout=40, interval=0.25, what="the session to be renewed")
    now = delivered(kube, namespace, "aws-session")
    assert now is not None
    assert now.metadata.annotations["cloudcred.io/revision"] == first
    assert now.metadata.annotations["cloudcred.io/expires-at"] >= expires
    assert deployed_revision(kube, namespace, "eu") == first
    log = operator.log()
    for value in (data["AWS_SECRET_ACCESS_KEY"], data["AWS_SESSION_TOKEN"],
                  fresh["AWS_SECRET_ACCESS_KEY"]):  # fmt: skip
        assert value not in log
    assert "Traceback" not in log
