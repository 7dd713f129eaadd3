"""CredentialBoundaries on the real API server: the admission policy refuses what a
spec shows outside its namespace's boundaries, and the operator refuses what only the
provider tells (a static key's account), and never assumes a role once a boundary
excludes it."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from kubernetes.client.rest import ApiException

from cloudcred.constants import BOUNDARY_PLURAL, GROUP, VERSION
from tests.aws import Moto
from tests.conftest import Kube
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    credential_ready,
    events_for,
    get_cluster,
    get_credential,
    patch_credential,
    refusal,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

ACCOUNT, OTHER_ACCOUNT = "123456789012", "111111111111"  # moto's account, another one
TENANT, OTHER_TENANT = (
    "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "0a0a0a0a-0000-4000-8000-000000000001",
)
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
OTHER_SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-000000000002"
ORGANIZATION, OTHER_ORGANIZATION = (
    "6170692e-7363-616c-6577-61792e636f6e",
    "6170692e-7363-616c-6577-000000000003",
)
WIF_PROVIDER = "projects/123456789012/locations/global/workloadIdentityPools/pool1/providers/prov1"


def aws_role(arn: str) -> dict[str, Any]:
    return {"provider": "AWS", "aws": {"roleArn": arn}}


def gcp_wif(project: str) -> dict[str, Any]:
    return {"provider": "GCP", "gcp": {
        "serviceAccountEmail": f"deployer@{project}.iam.gserviceaccount.com",
        "workloadIdentityProvider": WIF_PROVIDER}}  # fmt: skip


def azure(tenant: str = TENANT, subscription: str = SUBSCRIPTION) -> dict[str, Any]:
    return {"provider": "AZURE", "azure": {
        "tenantId": tenant, "subscriptionId": subscription,
        "clientId": "4b8e2f1a-9c3d-4e5f-8a7b-6c5d4e3f2a1b",
        "clientSecretRef": {"name": "sp", "key": "clientSecret"}}}  # fmt: skip


def scaleway(organization: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {
        "accessKey": "SCWXXXXXXXXXXXXXXXXX", "secretKeyRef": {"name": "scw", "key": "secretKey"},
        "projectId": "6170692e-7363-616c-6577-61792e636f6d"}  # fmt: skip
    if organization:
        block["organizationId"] = organization
    return {"provider": "SCALEWAY", "scaleway": block}


Boundaries = Callable[..., str]


@pytest.fixture
def boundaries(kube: Kube) -> Iterator[Boundaries]:
    """``make(spec)`` creates a CredentialBoundary; all are deleted at the end (they are
    cluster-wide: one left behind would bind every later test)."""
    created: list[str] = []

    def make(spec: dict[str, Any]) -> str:
        name = f"b-{uuid.uuid4().hex[:8]}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CredentialBoundary",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
        kube.custom.create_cluster_custom_object(GROUP, VERSION, BOUNDARY_PLURAL, body)
        created.append(name)
        return name

    yield make
    for name in created:
        try:
            kube.custom.delete_cluster_custom_object(GROUP, VERSION, BOUNDARY_PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                raise


def delete_boundary(kube: Kube, name: str) -> None:
    kube.custom.delete_cluster_custom_object(GROUP, VERSION, BOUNDARY_PLURAL, name)


def label_namespace(kube: Kube, namespace: str) -> dict[str, str]:
    """Give the namespace a label of its own; return it as a matchLabels selector."""
    labels = {"cloudcred-test/tenant": namespace}
    kube.core.patch_namespace(namespace, {"metadata": {"labels": labels}})
    return labels


def refused(kube: Kube, namespace: str, spec: dict[str, Any]) -> str:
    """Create a credential until the policy (which loads asynchronously, and sees new
    boundaries a moment later) refuses it; return the message."""

    def attempt() -> str | None:
        name = f"c-{uuid.uuid4().hex[:8]}"
        return refusal(lambda: create_credential(kube, namespace, name, **spec))

    message: str = wait_for(attempt, timeout=30, what="the boundary policy to refuse")
    return message


def allowed(kube: Kube, namespace: str, spec: dict[str, Any]) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    assert refusal(lambda: create_credential(kube, namespace, name, **spec)) is None


def test_no_boundary_allows_every_identity(kube: Kube, namespace: str) -> None:
    for spec in (aws_role(f"arn:aws:iam::{OTHER_ACCOUNT}:role/x"), gcp_wif("any-project"),
                 azure(OTHER_TENANT), scaleway(None)):  # fmt: skip
        allowed(kube, namespace, spec)


def test_aws_account_and_role_pattern_are_checked_at_admission(
    kube: Kube, namespace: str, boundaries: Boundaries
) -> None:
    selector = label_namespace(kube, namespace)
    name = boundaries({
        "namespaceSelector": {"matchLabels": selector},
        "aws": {"accountIds": [ACCOUNT],
                "roleArns": [f"arn:aws:iam::{ACCOUNT}:role/team-a-*",
                             f"arn:aws:iam::{OTHER_ACCOUNT}:role/exact"]},
    })  # fmt: skip

    message = refused(kube, namespace, aws_role(f"arn:aws:iam::{OTHER_ACCOUNT}:role/exact"))
    assert "spec.aws.roleArn: account 111111111111 is not allowed" in message
    assert f"CredentialBoundary {name}" in message
    assert f"allowed accounts: {ACCOUNT}" in message

    message = refused(kube, namespace, aws_role(f"arn:aws:iam::{ACCOUNT}:role/team-b-deployer"))
    assert f"spec.aws.roleArn: arn:aws:iam::{ACCOUNT}:role/team-b-deployer is not allowed" in (
        message
    )
    assert f"arn:aws:iam::{ACCOUNT}:role/team-a-*" in message

    keys = {"provider": "AWS", "aws": {"accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "secretAccessKeyRef": {"name": "k", "key": "secretAccessKey"}}}  # fmt: skip
    assert "spec.aws.accessKeyId: static keys are not allowed" in refused(kube, namespace, keys)

    message = refused(kube, namespace, gcp_wif("some-project"))
    assert "spec.provider: GCP is not allowed" in message
    assert "allowed providers: AWS" in message

    allowed(kube, namespace, aws_role(f"arn:aws:iam::{ACCOUNT}:role/team-a-deployer"))


def test_gcp_azure_scaleway_fields_are_checked_at_admission(
    kube: Kube, namespace: str, boundaries: Boundaries
) -> None:
    selector = label_namespace(kube, namespace)
    name = boundaries({
        "namespaceSelector": {"matchExpressions": [
            {"key": "cloudcred-test/tenant", "operator": "In", "values": [namespace]}]},
        "gcp": {"projects": ["acme-prod"]},
        "azure": {"tenantIds": [TENANT], "subscriptionIds": [SUBSCRIPTION.upper()]},
        "scaleway": {"organizationIds": [ORGANIZATION]},
    })  # fmt: skip
    assert selector

    message = refused(kube, namespace, gcp_wif("acme-dev"))
    assert "spec.gcp.serviceAccountEmail: project acme-dev is not allowed" in message
    assert f"CredentialBoundary {name} (namespace {namespace})" in message
    assert "allowed projects: acme-prod" in message
    allowed(kube, namespace, gcp_wif("acme-prod"))

    message = refused(kube, namespace, azure(tenant=OTHER_TENANT))
    assert f"spec.azure.tenantId: {OTHER_TENANT} is not allowed" in message
    assert f"allowed tenants: {TENANT}" in message
    message = refused(kube, namespace, azure(subscription=OTHER_SUBSCRIPTION))
    assert f"spec.azure.subscriptionId: {OTHER_SUBSCRIPTION} is not allowed" in message
    allowed(kube, namespace, azure())  # UUIDs compare without case

    message = refused(kube, namespace, scaleway(None))
    assert "spec.scaleway.organizationId: is required" in message
    assert f"allowed organizations: {ORGANIZATION}" in message
    message = refused(kube, namespace, scaleway(OTHER_ORGANIZATION))
    assert f"spec.scaleway.organizationId: {OTHER_ORGANIZATION} is not allowed" in message
    allowed(kube, namespace, scaleway(ORGANIZATION))

    assert "spec.provider: AWS is not allowed" in refused(
        kube, namespace, aws_role(f"arn:aws:iam::{ACCOUNT}:role/x")
    )


def test_unselected_namespace_is_unaffected_and_every_boundary_must_pass(
    kube: Kube, namespace: str, boundaries: Boundaries
) -> None:
    selector = label_namespace(kube, namespace)
    first = boundaries({"namespaceSelector": {"matchLabels": selector},
                        "aws": {"accountIds": [ACCOUNT, OTHER_ACCOUNT]}})  # fmt: skip
    second = boundaries({"namespaceSelector": {"matchExpressions": [
                             {"key": "cloudcred-test/tenant", "operator": "Exists"}]},
                         "aws": {"roleArns": [f"arn:aws:iam::{ACCOUNT}:role/*"]}})  # fmt: skip

    # Allowed by the first, not by the second.
    message = refused(kube, namespace, aws_role(f"arn:aws:iam::{OTHER_ACCOUNT}:role/x"))
    assert f"CredentialBoundary {second}" in message
    # Allowed by the second, not by the first.
    patch = {"spec": {"aws": {"accountIds": [OTHER_ACCOUNT]}}}
    kube.custom.patch_cluster_custom_object(GROUP, VERSION, BOUNDARY_PLURAL, first, patch)
    message = refused(kube, namespace, aws_role(f"arn:aws:iam::{ACCOUNT}:role/x"))
    assert f"CredentialBoundary {first}" in message
    assert "account 123456789012 is not allowed" in message

    # A namespace neither selects (no label): unaffected.
    other = f"t-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace({"metadata": {"name": other}})
    allowed(kube, other, aws_role(f"arn:aws:iam::{ACCOUNT}:role/x"))
    allowed(kube, other, gcp_wif("any-project"))


def test_operator_writes_still_go_through_on_a_credential_outside(
    kube: Kube, namespace: str, boundaries: Boundaries
) -> None:
    """Only spec changes are checked: metadata writes (the operator's finalizer) on a
    credential created before its boundary are not refused."""
    create_credential(kube, namespace, "before", **aws_role(f"arn:aws:iam::{ACCOUNT}:role/x"))
    boundaries({"namespaceSelector": {"matchLabels": label_namespace(kube, namespace)}})
    refused(kube, namespace, aws_role(f"arn:aws:iam::{ACCOUNT}:role/x"))  # in effect
    patch_credential(kube, namespace, "before", {"metadata": {"labels": {"a": "b"}}})
    message = refusal(lambda: patch_credential(kube, namespace, "before",
                                               {"spec": {"description": "edited"}}))  # fmt: skip
    assert message is not None
    assert "spec.provider: AWS is not allowed" in message


# -- the operator -------------------------------------------------------------------------


@pytest.fixture
def recorder(moto: Moto) -> Iterator[Callable[[str], int]]:
    """moto's request recorder, on for one test: ``assume_role(role_name)`` counts the
    AssumeRole requests for that role that reached moto."""
    api = f"{moto.endpoint}/moto-api/recorder"
    requests.post(f"{api}/reset-recording", timeout=10).raise_for_status()
    requests.post(f"{api}/start-recording", timeout=10).raise_for_status()

    def assume_role(role_name: str) -> int:
        answer = requests.get(f"{api}/download-recording", timeout=10)
        answer.raise_for_status()
        lines = answer.text.splitlines()
        count = 0
        for line in lines:
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            form = urllib.parse.parse_qs(body)
            if form.get("Action") == ["AssumeRole"] and any(
                arn.endswith(f":role/{role_name}") for arn in form.get("RoleArn", [])
            ):
                count += 1
        return count

    yield assume_role
    requests.post(f"{api}/stop-recording", timeout=10).raise_for_status()


def verified(kube: Kube, namespace: str, name: str, reason: str, text: str = "") -> dict[str, Any]:
    """Wait until Verified has this reason (and its message this text); return it."""

    def check() -> dict[str, Any] | None:
        found = condition(get_credential(kube, namespace, name), "Verified")
        return found if found and found["reason"] == reason and text in found["message"] else None

    found: dict[str, Any] = wait_for(check, timeout=30, what=f"Verified={reason} {text!r}")
    return found


def test_role_outside_a_new_boundary_is_never_assumed(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess,
    boundaries: Boundaries, recorder: Callable[[str], int],
) -> None:  # fmt: skip
    role = f"inside-{uuid.uuid4().hex[:6]}"
    arn = moto.create_role(role)
    selector = label_namespace(kube, namespace)
    create_credential(kube, namespace, "role", **aws_role(arn))
    verified(kube, namespace, "role", "Verified")
    assert recorder(role) >= 1  # the recorder sees the operator's AssumeRole

    started = time.monotonic()
    name = boundaries({"namespaceSelector": {"matchLabels": selector},
                       "aws": {"roleArns": [f"arn:aws:iam::{ACCOUNT}:role/team-a-*"]}})  # fmt: skip
    found = verified(kube, namespace, "role", "OutsideBoundary", f"CredentialBoundary {name}")
    took = time.monotonic() - started
    assert took < 10, took
    assert found["status"] == "False"
    assert f"spec.aws.roleArn: {arn} is not allowed" in found["message"]
    assert "allowed roles: arn:aws:iam::123456789012:role/team-a-*" in found["message"]
    ready = credential_ready(kube, namespace, "role", "False")
    assert ready["reason"] == "OutsideBoundary"
    warnings = [e for e in events_for(kube, namespace, "role") if e.reason == "OutsideBoundary"]
    assert [e.type for e in warnings] == ["Warning"]
    assumed = recorder(role)

    # A changed boundary checks again, without asking AWS.
    patch = {"spec": {"aws": {"roleArns": [f"arn:aws:iam::{ACCOUNT}:role/team-b-*"]}}}
    kube.custom.patch_cluster_custom_object(GROUP, VERSION, BOUNDARY_PLURAL, name, patch)
    verified(kube, namespace, "role", "OutsideBoundary", "role/team-b-*")
    assert recorder(role) == assumed

    # The namespace leaves the boundary (its label goes): checked again, and verified.
    kube.core.patch_namespace(namespace, {"metadata": {"labels": {"cloudcred-test/tenant": None}}})
    verified(kube, namespace, "role", "Verified")
    assert recorder(role) > assumed
    print(f"OutsideBoundary {took:.1f}s after the boundary was created")


def test_static_key_of_another_account_is_refused_after_get_caller_identity(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess, boundaries: Boundaries,
    tenant: Callable[[str], Kube],
) -> None:  # fmt: skip
    """A static key of an account the boundary does not allow: OutsideBoundary, from the
    account STS names. A tenant who may write the status then claims an allowed account
    and Verified=True: the operator writes its check back, and deploys nothing."""
    selector = label_namespace(kube, namespace)
    name = boundaries({"namespaceSelector": {"matchLabels": selector},
                       "aws": {"accountIds": [OTHER_ACCOUNT]}})  # fmt: skip
    user = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
    secret(kube, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "keys", user.access_key_id, "keys")

    found = verified(kube, namespace, "keys", "OutsideBoundary")
    assert found["status"] == "False"
    assert found["message"] == (
        f"spec.aws.accessKeyId: the key belongs to account {ACCOUNT}, which is not allowed by "
        f"CredentialBoundary {name} (namespace {namespace}); allowed accounts: {OTHER_ACCOUNT}"
    )
    status = (get_credential(kube, namespace, "keys") or {})["status"]
    assert "lastVerifiedTime" not in status  # never reported as verified
    assert user.secret_access_key not in json.dumps(status)

    member = tenant(namespace)
    create_cluster(member, namespace, "eu", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "keys"})  # fmt: skip
    forged = {**status, "identity": f"arn:aws:iam::{OTHER_ACCOUNT}:user/deployer",
              "conditions": [{**c, "status": "True", "reason": "Verified", "message": "forged"}
                             if c["type"] == "Verified" else c
                             for c in status["conditions"]]}  # fmt: skip
    member.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "cloudcredentials", "keys", {"status": forged}
    )
    wait_for(lambda: get_credential(kube, namespace, "keys")["status"].get("identity")
             == status.get("identity"), timeout=10,
             what="the forged identity written back")  # fmt: skip
    verified(kube, namespace, "keys", "OutsideBoundary")
    time.sleep(3)  # what a deploy would take here
    assert "deployedRevision" not in (get_cluster(kube, namespace, "eu").get("status") or {})

    # The boundary goes away: checked again at once, and verified.
    delete_boundary(kube, name)
    verified(kube, namespace, "keys", "Verified")


def test_with_a_default_deny_a_namespace_that_escapes_its_boundary_uses_nothing(
    kube: Kube, own_namespace: str, moto: Moto, operators: Operators, boundaries: Boundaries,
    tenant: Callable[[str], Kube],
) -> None:  # fmt: skip
    """CLOUDCRED_BOUNDARY_DEFAULT=Deny: a namespace no boundary selects may use nothing.
    Selected, its key verifies and its cluster deploys; once the namespace loses the
    label its boundary selects it by (the door a label-right opens), the credential is
    OutsideBoundary again, and a new key deploys nowhere."""
    namespace = own_namespace
    operators.start(namespace, env={"CLOUDCRED_BOUNDARY_DEFAULT": "Deny"})
    member = tenant(namespace)
    user = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
    secret(member, namespace, "keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(member, namespace, "keys", user.access_key_id, "keys")
    found = verified(kube, namespace, "keys", "OutsideBoundary")
    assert found["message"].startswith(f"no CredentialBoundary selects namespace {namespace}")

    selector = label_namespace(kube, namespace)
    boundaries({"namespaceSelector": {"matchLabels": selector}, "aws": {}})
    verified(kube, namespace, "keys", "Verified")
    create_cluster(member, namespace, "eu", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "keys"})  # fmt: skip
    first = wait_for(lambda: (get_cluster(kube, namespace, "eu").get("status") or {})
                     .get("deployedRevision"), what="the cluster deployed")  # fmt: skip

    kube.core.patch_namespace(namespace, {"metadata": {"labels": {next(iter(selector)): None}}})
    verified(kube, namespace, "keys", "OutsideBoundary", "no CredentialBoundary selects")
    second = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
    secret(member, namespace, "keys2", {"secretAccessKey": second.secret_access_key})
    patch_credential(member, namespace, "keys", {"spec": {"aws": {
        "accessKeyId": second.access_key_id,
        "secretAccessKeyRef": {"name": "keys2", "key": "secretAccessKey"}}}})  # fmt: skip
    verified(kube, namespace, "keys", "OutsideBoundary", "no CredentialBoundary selects")
    time.sleep(3)  # what a deploy would take here
    assert get_cluster(kube, namespace, "eu")["status"]["deployedRevision"] == first
