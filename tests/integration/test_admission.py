"""The API server itself refuses malformed objects, naming the field at fault.

Objects are created with strict field validation (kubectl's default), so an unknown
field -- a secret value pasted into spec, say -- is an error rather than silently
pruned.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    GROUP,
    PERMISSION_SET_PLURAL,
    VERSION,
)
from tests.conftest import Kube
from tests.kube import ROOT, load_yaml_documents

pytestmark = pytest.mark.integration

SAMPLES = sorted((ROOT / "deploy" / "samples").glob("*.yaml"))
PLURALS = {"CloudCredential": CREDENTIAL_PLURAL, "Cluster": CLUSTER_PLURAL}


def create(kube: Kube, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    if obj["kind"] == "Secret":
        return kube.core.create_namespaced_secret(namespace, obj, field_validation="Strict")
    if obj["kind"] == "PermissionSet":  # cluster-scoped: named after the test's namespace
        obj["metadata"]["name"] += f"-{namespace}"
        return kube.custom.create_cluster_custom_object(
            GROUP, VERSION, PERMISSION_SET_PLURAL, obj, field_validation="Strict"
        )
    return kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj, field_validation="Strict"
    )


def rejection(kube: Kube, namespace: str, obj: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as refused:
        create(kube, namespace, obj)
    assert refused.value.status in (400, 422), refused.value.body
    return str(json.loads(refused.value.body)["message"])


def names_field(message: str, field: str) -> bool:
    """The message names exactly this field (not merely a longer path under it)."""
    return re.search(re.escape(field) + r"(?![\w.\[])", message) is not None


@pytest.mark.parametrize("sample", SAMPLES, ids=[path.name for path in SAMPLES])
def test_every_sample_is_accepted(kube: Kube, namespace: str, sample: Path) -> None:
    for obj in load_yaml_documents(sample):
        created = create(kube, namespace, obj)
        assert created is not None


def credential(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CloudCredential",
        "metadata": {"name": "bad"},
        "spec": spec,
    }


def cluster(**spec: Any) -> dict[str, Any]:
    base = {"provider": "AWS", "region": "eu-west-3", "credentialRef": {"name": "aws-prod"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Cluster",
        "metadata": {"name": "bad"},
        "spec": {key: value for key, value in {**base, **spec}.items() if value is not None},
    }


ROLE = {"roleArn": "arn:aws:iam::123456789012:role/deployer"}
KEYS = {
    "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
    "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"},
}
GCP_KEY = {"serviceAccountKeyRef": {"name": "gcp-key", "key": "key.json"}}
AZURE = {
    "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "subscriptionId": "0b1f6471-1bf0-4dda-aec3-cb9272f09590",
    "clientId": "4b8e2f1a-9c3d-4e5f-8a7b-6c5d4e3f2a1b",
    "clientSecretRef": {"name": "azure-sp", "key": "clientSecret"},
}
SCALEWAY = {
    "accessKey": "SCWXXXXXXXXXXXXXXXXX",
    "secretKeyRef": {"name": "scw", "key": "secretKey"},
    "projectId": "6170692e-7363-616c-6577-61792e636f6d",
}

# (case id, object, the field the error must name)
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-provider", credential(provider="ORACLE", aws=ROLE), "spec.provider"),
    ("missing-provider", credential(aws=ROLE), "spec.provider"),
    ("block-of-another-provider", credential(provider="AWS", gcp=GCP_KEY), "spec.aws"),
    ("two-provider-blocks", credential(provider="AWS", aws=ROLE, gcp=GCP_KEY), "spec.gcp"),
    ("aws-role-and-keys", credential(provider="AWS", aws={**ROLE, **KEYS}), "spec.aws"),
    ("aws-empty", credential(provider="AWS", aws={}), "spec.aws"),
    (
        "aws-role-arn-11-digit-account",
        credential(provider="AWS", aws={"roleArn": "arn:aws:iam::12345678901:role/deployer"}),
        "spec.aws.roleArn",
    ),
    (
        "aws-access-key-id-lower-case",
        credential(provider="AWS", aws={**KEYS, "accessKeyId": "AKIAiosfodnn7example"}),
        "spec.aws.accessKeyId",
    ),
    (
        "aws-access-key-id-without-secret-ref",
        credential(provider="AWS", aws={"accessKeyId": "AKIAIOSFODNN7EXAMPLE"}),
        "spec.aws.secretAccessKeyRef",
    ),
    (
        "aws-external-id-is-chosen-by-the-operator",
        credential(
            provider="AWS",
            aws={"roleArn": "arn:aws:iam::123456789012:role/r", "externalId": "acme-7f3a"},
        ),
        "spec.aws.externalId",
    ),
    (
        "aws-secret-pasted-into-spec",
        credential(provider="AWS", aws={**KEYS, "secretAccessKey": "wJalrXUtnFEMI/K7MDENG"}),
        "spec.aws.secretAccessKey",
    ),
    (
        "secret-ref-name-not-a-dns-name",
        credential(
            provider="AWS",
            aws={**KEYS, "secretAccessKeyRef": {"name": "AWS_Keys", "key": "secretAccessKey"}},
        ),
        "spec.aws.secretAccessKeyRef.name",
    ),
    (
        "gcp-key-and-workload-identity",
        credential(
            provider="GCP",
            gcp={**GCP_KEY, "serviceAccountEmail": "d@p.iam.gserviceaccount.com"},
        ),
        "spec.gcp",
    ),
    (
        "gcp-email-without-provider",
        credential(provider="GCP", gcp={"serviceAccountEmail": "d@p.iam.gserviceaccount.com"}),
        "spec.gcp.workloadIdentityProvider",
    ),
    (
        "gcp-email-not-a-service-account",
        credential(
            provider="GCP",
            gcp={
                "serviceAccountEmail": "someone@gmail.com",
                "workloadIdentityProvider": "projects/1/locations/global/"
                "workloadIdentityPools/pool/providers/prov",
            },
        ),
        "spec.gcp.serviceAccountEmail",
    ),
    (
        "azure-tenant-not-a-uuid",
        credential(provider="AZURE", azure={**AZURE, "tenantId": "contoso.onmicrosoft.com"}),
        "spec.azure.tenantId",
    ),
    (
        "azure-without-client-secret-ref",
        credential(
            provider="AZURE", azure={k: v for k, v in AZURE.items() if k != "clientSecretRef"}
        ),
        "spec.azure.clientSecretRef",
    ),
    (
        "scaleway-access-key-too-short",
        credential(provider="SCALEWAY", scaleway={**SCALEWAY, "accessKey": "SCW123"}),
        "spec.scaleway.accessKey",
    ),
    (
        "scaleway-project-not-a-uuid",
        credential(provider="SCALEWAY", scaleway={**SCALEWAY, "projectId": "my-project"}),
        "spec.scaleway.projectId",
    ),
    (
        "verification-interval-not-a-duration",
        credential(provider="AWS", aws=ROLE, verification={"interval": "1 day"}),
        "spec.verification.interval",
    ),
    (
        "allowed-namespaces-bad-operator",
        credential(
            provider="AWS",
            aws=ROLE,
            allowedNamespaces={"matchExpressions": [{"key": "team", "operator": "Like"}]},
        ),
        "spec.allowedNamespaces.matchExpressions[0].operator",
    ),
    ("cluster-aws-region-malformed", cluster(region="eu-west"), "spec.region"),
    (
        "cluster-scaleway-region-of-aws",
        cluster(provider="SCALEWAY", region="us-east-1"),
        "spec.region",
    ),
    ("cluster-without-credential-ref", cluster(credentialRef=None), "spec.credentialRef"),
    ("cluster-unknown-deploy-mode", cluster(deploy="Manual"), "spec.deploy"),
    (
        "cluster-unknown-field-in-credential-ref",
        cluster(credentialRef={"name": "aws-prod", "kind": "Secret"}),
        "spec.credentialRef.kind",
    ),
    (
        "cluster-delivery-to-an-external-deployer",
        cluster(deploy="External", credentialsSecret={"name": "aws-creds"}),
        "spec.credentialsSecret",
    ),
    (
        "cluster-delivery-secret-name-malformed",
        cluster(credentialsSecret={"name": "Not_A_Name"}),
        "spec.credentialsSecret.name",
    ),
    (
        "rollout-max-concurrent-zero",
        credential(provider="AWS", aws=ROLE, rollout={"maxConcurrent": 0}),
        "spec.rollout.maxConcurrent",
    ),
    (
        "rollout-max-concurrent-bad-percentage",
        credential(provider="AWS", aws=ROLE, rollout={"maxConcurrent": "150%"}),
        "spec.rollout.maxConcurrent",
    ),
    (
        "aws-secret-without-key-id-under-manual-rotation",
        credential(provider="AWS", aws={"secretAccessKeyRef": KEYS["secretAccessKeyRef"]}),
        "spec.aws.accessKeyId",
    ),
    (
        "rotation-automatic-without-max-age",
        credential(provider="AWS", aws=KEYS, rotation={"policy": "Automatic"}),
        "spec.rotation.maxAge",
    ),
    (
        "rotation-automatic-for-a-role",
        credential(provider="AWS", aws=ROLE, rotation={"policy": "Automatic", "maxAge": "90d"}),
        "spec.rotation.policy",
    ),
    (
        "rotation-automatic-for-gcp-workload-identity",
        credential(
            provider="GCP",
            gcp={
                "serviceAccountEmail": "ci@proj.iam.gserviceaccount.com",
                "workloadIdentityProvider": "projects/123/locations/global/workloadIdentityPools/"
                "pool/providers/prov",
            },
            rotation={"policy": "Automatic", "maxAge": "90d"},
        ),
        "spec.rotation.policy",
    ),
    (
        "rotation-max-age-under-a-day",
        credential(provider="AWS", aws=KEYS, rotation={"policy": "Automatic", "maxAge": "12h"}),
        "spec.rotation.maxAge",
    ),
    (
        "rotation-max-age-zero",
        credential(provider="AWS", aws=KEYS, rotation={"policy": "Automatic", "maxAge": "0d"}),
        "spec.rotation.maxAge",
    ),
    (
        "rotation-unknown-policy",
        credential(provider="AWS", aws=KEYS, rotation={"policy": "Sometimes"}),
        "spec.rotation.policy",
    ),
    (
        "rotation-empty-grace-period",
        credential(
            provider="AWS",
            aws=KEYS,
            rotation={"policy": "Automatic", "maxAge": "90d", "gracePeriod": ""},
        ),
        "spec.rotation.gracePeriod",
    ),
]


@pytest.mark.parametrize(
    ("obj", "field"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
def test_malformed_object_is_rejected_naming_the_field(
    kube: Kube, namespace: str, obj: dict[str, Any], field: str
) -> None:
    message = rejection(kube, namespace, obj)
    assert names_field(message, field), message


def test_there_are_at_least_fifteen_distinct_malformed_cases() -> None:
    assert len({case[0] for case in MALFORMED}) >= 15


def test_provider_is_immutable(kube: Kube, namespace: str) -> None:
    created = create(kube, namespace, credential(provider="AWS", aws=ROLE))
    changed = copy.deepcopy(created)
    changed["spec"] = {"provider": "GCP", "gcp": GCP_KEY}
    with pytest.raises(ApiException) as refused:
        kube.custom.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIAL_PLURAL, "bad", changed
        )
    message = json.loads(refused.value.body)["message"]
    assert names_field(message, "spec.provider"), message
    assert "immutable" in message


def test_defaults_are_applied_by_the_api_server(kube: Kube, namespace: str) -> None:
    created = create(kube, namespace, credential(provider="AWS", aws=ROLE, verification={}))
    assert created["spec"]["verification"] == {"enabled": True, "interval": "1h"}
    bound = create(kube, namespace, cluster())
    assert bound["spec"]["deploy"] == "Operator"
