"""Bindings and deletion protection, against the real API server with the operator."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, IN_USE_LABEL, VERSION
from tests.conftest import Kube
from tests.operator import OperatorProcess, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    events_for,
    get_cluster,
    get_credential,
    patch_credential,
    refusal,
    secret,
)

pytestmark = pytest.mark.integration

ROLE = {"roleArn": "arn:aws:iam::123456789012:role/deployer"}
QUIET = {"enabled": False}  # bindings do not need the provider


def role_credential(kube: Kube, namespace: str, name: str, **extra: Any) -> None:
    create_credential(kube, namespace, name, provider="AWS", aws=ROLE, verification=QUIET,
                      **extra)  # fmt: skip


def aws_cluster(
    kube: Kube, namespace: str, name: str, credential: str, credential_namespace: str = ""
) -> None:
    ref = {"namespace": credential_namespace} if credential_namespace else {}
    create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3",
                   credentialRef={"name": credential, **ref})  # fmt: skip


def delete_cluster(kube: Kube, namespace: str, name: str) -> None:
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTER_PLURAL, name)


def delete_credential(kube: Kube, namespace: str, name: str) -> None:
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name)


def listed(kube: Kube, namespace: str, name: str) -> list[tuple[str, str]] | None:
    status = (get_credential(kube, namespace, name) or {}).get("status") or {}
    if "clusterCount" not in status:
        return None
    return [(c["namespace"], c["name"]) for c in status.get("clusters") or []]


def wait_listed(kube: Kube, namespace: str, name: str, expected: list[tuple[str, str]]) -> None:
    wait_for(lambda: listed(kube, namespace, name) == expected, timeout=30,
             what=f"{namespace}/{name} to list {expected}")  # fmt: skip


def bound_reason(kube: Kube, namespace: str, name: str) -> str | None:
    found = condition(get_cluster(kube, namespace, name), "CredentialBound")
    return found["reason"] if found else None


def wait_reason(kube: Kube, namespace: str, name: str, reason: str) -> None:
    wait_for(lambda: bound_reason(kube, namespace, name) == reason, timeout=30,
             what=f"cluster {namespace}/{name} CredentialBound reason {reason}")  # fmt: skip


def new_namespace(kube: Kube, labels: dict[str, str] | None = None) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(
        metadata=client.V1ObjectMeta(name=name, labels=labels)))  # fmt: skip
    return name


def test_clusters_are_listed_unlisted_and_repointed(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    role_credential(kube, namespace, "a")
    role_credential(kube, namespace, "b")
    wait_listed(kube, namespace, "a", [])
    first = get_credential(kube, namespace, "a")
    assert first["status"]["unusedSince"] == first["metadata"]["creationTimestamp"]

    aws_cluster(kube, namespace, "prod-eu", "a")
    aws_cluster(kube, namespace, "prod-us", "a")
    wait_listed(kube, namespace, "a", [(namespace, "prod-eu"), (namespace, "prod-us")])
    credential = get_credential(kube, namespace, "a")
    assert credential["status"]["clusterCount"] == 2
    assert "unusedSince" not in credential["status"]
    assert condition(credential, "InUse")["status"] == "True"
    # The Cluster's own status is a write of its own, after or before the credential's.
    cluster = wait_for(lambda: (found := get_cluster(kube, namespace, "prod-eu"))
                       .get("status", {}).get("credential") and found,
                       what="prod-eu's status.credential")  # fmt: skip
    assert cluster["status"]["credential"]["name"] == "a"
    assert condition(cluster, "CredentialBound")["reason"] == "Bound"

    delete_cluster(kube, namespace, "prod-eu")
    wait_listed(kube, namespace, "a", [(namespace, "prod-us")])

    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CLUSTER_PLURAL, "prod-us",
        {"spec": {"credentialRef": {"name": "b"}}},
    )  # fmt: skip
    wait_listed(kube, namespace, "b", [(namespace, "prod-us")])
    wait_listed(kube, namespace, "a", [])
    credential = get_credential(kube, namespace, "a")
    assert condition(credential, "InUse")["reason"] == "Unused"
    assert credential["status"]["unusedSince"] > credential["metadata"]["creationTimestamp"]


def test_cluster_binds_when_its_credential_appears_later(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    aws_cluster(kube, namespace, "early", "later")
    wait_reason(kube, namespace, "early", "CredentialNotFound")
    role_credential(kube, namespace, "later")
    wait_reason(kube, namespace, "early", "Bound")
    wait_listed(kube, namespace, "later", [(namespace, "early")])


def test_provider_mismatch_does_not_bind(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    role_credential(kube, namespace, "aws")
    create_cluster(kube, namespace, "gke", provider="GCP", region="europe-west1",
                   credentialRef={"name": "aws"})  # fmt: skip
    wait_reason(kube, namespace, "gke", "ProviderMismatch")
    wait_listed(kube, namespace, "aws", [])


def test_cross_namespace_needs_allowed_namespaces(kube: Kube, operator: OperatorProcess) -> None:
    home = new_namespace(kube)
    team = new_namespace(kube, {"team": "platform"})
    role_credential(kube, home, "shared")
    aws_cluster(kube, team, "remote", "shared", credential_namespace=home)
    wait_reason(kube, team, "remote", "NamespaceNotAllowed")
    wait_listed(kube, home, "shared", [])

    patch_credential(
        kube, home, "shared", {"spec": {"allowedNamespaces": {"matchLabels": {"team": "platform"}}}}
    )
    wait_reason(kube, team, "remote", "Bound")
    wait_listed(kube, home, "shared", [(team, "remote")])


def test_delete_of_in_use_credential_is_refused_with_the_cluster_names(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    role_credential(kube, namespace, "used")
    aws_cluster(kube, namespace, "prod-eu", "used")
    aws_cluster(kube, namespace, "prod-us", "used")
    wait_listed(kube, namespace, "used", [(namespace, "prod-eu"), (namespace, "prod-us")])

    message = refusal(lambda: delete_credential(kube, namespace, "used"))
    assert message is not None, "the delete went through"
    assert (f"cloudcredential {namespace}/used is used by clusters prod-eu, prod-us; "
            "remove the association first") in message  # fmt: skip
    assert get_credential(kube, namespace, "used") is not None

    delete_cluster(kube, namespace, "prod-eu")
    delete_cluster(kube, namespace, "prod-us")
    wait_listed(kube, namespace, "used", [])
    delete_credential(kube, namespace, "used")
    wait_for(lambda: get_credential(kube, namespace, "used") is None, timeout=30,
             what="the credential to be gone")  # fmt: skip


@pytest.fixture
def without_credential_policy(kube: Kube):  # type: ignore[no-untyped-def]
    """The admission policy's binding removed, so only the finalizer guards."""
    admission = client.AdmissionregistrationV1Api(kube.api)
    binding = admission.read_validating_admission_policy_binding("cloudcred-credential-in-use")
    admission.delete_validating_admission_policy_binding("cloudcred-credential-in-use")
    time.sleep(2)  # policies load asynchronously
    yield
    binding.metadata = client.V1ObjectMeta(name=binding.metadata.name)
    admission.create_validating_admission_policy_binding(binding)


def test_finalizer_holds_deletion_without_the_policy(
    kube: Kube, namespace: str, operator: OperatorProcess, without_credential_policy: None
) -> None:
    role_credential(kube, namespace, "guarded")
    aws_cluster(kube, namespace, "user", "guarded")
    wait_listed(kube, namespace, "guarded", [(namespace, "user")])

    delete_credential(kube, namespace, "guarded")  # accepted: no policy
    blocked = wait_for(
        lambda: condition(get_credential(kube, namespace, "guarded"), "DeletionBlocked"),
        timeout=30, what="DeletionBlocked",
    )  # fmt: skip
    assert blocked["status"] == "True"
    assert "user" in blocked["message"]
    wait_for(lambda: any(e.reason == "DeletionBlocked" and e.type == "Warning"
                         for e in events_for(kube, namespace, "guarded")),
             what="a DeletionBlocked event")  # fmt: skip

    aws_cluster(kube, namespace, "newcomer", "guarded")
    wait_reason(kube, namespace, "newcomer", "CredentialDeleting")
    time.sleep(3)
    assert get_credential(kube, namespace, "guarded") is not None
    assert bound_reason(kube, namespace, "user") == "Bound"

    delete_cluster(kube, namespace, "user")
    wait_for(lambda: get_credential(kube, namespace, "guarded") is None, timeout=40,
             what="the finalizer to be released")  # fmt: skip
    wait_reason(kube, namespace, "newcomer", "CredentialNotFound")


def test_secret_of_an_in_use_credential_cannot_be_deleted(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    secret(kube, namespace, "keys", {"secretAccessKey": "x" * 40})
    create_credential(
        kube,
        namespace,
        "static",
        provider="AWS",
        verification=QUIET,
        aws={
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "secretAccessKeyRef": {"name": "keys", "key": "secretAccessKey"},
        },
    )
    aws_cluster(kube, namespace, "user", "static")

    def labelled() -> bool:
        labels = kube.core.read_namespaced_secret("keys", namespace).metadata.labels or {}
        return labels.get(IN_USE_LABEL) == "true"

    wait_for(labelled, timeout=30, what="the Secret to be labelled in use")

    message = wait_for(
        lambda: refusal(lambda: kube.core.delete_namespaced_secret("keys", namespace)),
        timeout=20, what="the policy to refuse",
    )  # fmt: skip
    assert f"secret {namespace}/keys holds keys of a CloudCredential" in message

    delete_cluster(kube, namespace, "user")
    wait_for(lambda: not labelled(), timeout=30, what="the label to go")
    kube.core.delete_namespaced_secret("keys", namespace)
