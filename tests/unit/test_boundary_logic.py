"""The boundary rules without a cluster: selectors, role patterns, each provider."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr

from cloudcred.api.boundary import CredentialBoundarySpec
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.boundary import (
    Boundary,
    arn_account,
    gcp_email_project,
    gcp_key_email,
    role_arn_allowed,
    violation,
)

ROLE = "arn:aws:iam::123456789012:role/team-a-deployer"
KEYS = {"accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "secretAccessKeyRef": {"name": "k", "key": "secretAccessKey"}}  # fmt: skip


def boundary(name: str = "b", **spec: Any) -> Boundary:
    spec.setdefault("namespaceSelector", {})
    return Boundary(name, CredentialBoundarySpec.model_validate(spec))


def credential(provider: str, **block: Any) -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate({"provider": provider, provider.lower(): block})


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
        ({"matchLabels": {"team": "a"}}, {}, False),
        (
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
            {"team": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]},
            {"team": "a"},
            False,
        ),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": ""}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {}, True),
        (
            {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]},
            {"team": "a"},
            False,
        ),
        (
            {
                "matchLabels": {"tier": "prod"},
                "matchExpressions": [{"key": "team", "operator": "Exists"}],
            },
            {"tier": "prod"},
            False,
        ),
    ],
)
def test_namespace_selector(
    selector: dict[str, Any], labels: dict[str, str], selected: bool
) -> None:
    assert boundary(namespaceSelector=selector).selects(labels) is selected


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        (ROLE, True),
        ("arn:aws:iam::123456789012:role/team-a-*", True),
        ("arn:aws:iam::123456789012:role/*", True),
        ("arn:aws:iam::123456789012:role/team-a", False),  # exact, not a prefix
        ("arn:aws:iam::123456789012:role/team-b-*", False),
        ("arn:aws:iam::999999999999:role/*", False),
    ],
)
def test_role_arn_patterns(pattern: str, allowed: bool) -> None:
    assert role_arn_allowed(ROLE, [pattern]) is allowed


def test_identifiers_from_arns_emails_and_keys() -> None:
    assert arn_account("arn:aws:iam::123456789012:user/x") == "123456789012"
    assert arn_account("arn:aws:sts::123456789012:assumed-role/r/s") == "123456789012"
    assert arn_account("not-an-arn") is None
    assert gcp_email_project("deployer@acme-prod.iam.gserviceaccount.com") == "acme-prod"
    assert gcp_email_project("acme@appspot.gserviceaccount.com") is None
    key = json.dumps({"type": "service_account", "project_id": "p1",
                      "client_email": "a@p2.iam.gserviceaccount.com"})  # fmt: skip
    assert gcp_key_email(SecretStr(key)) == "a@p2.iam.gserviceaccount.com"
    assert gcp_key_email(SecretStr('{"type": "service_account", "project_id": "p1"}')) == ""
    assert gcp_key_email(SecretStr("not json")) is None


def test_no_boundary_or_unselected_namespace_allows_everything() -> None:
    spec = credential("AWS", roleArn=ROLE)
    assert violation(spec, "ns", {}, []) is None
    elsewhere = boundary(namespaceSelector={"matchLabels": {"team": "b"}})
    assert violation(spec, "ns", {"team": "a"}, [elsewhere]) is None


def test_absent_block_forbids_the_provider_and_empty_block_allows_any() -> None:
    spec = credential("AWS", roleArn=ROLE)
    found = violation(spec, "ns", {}, [boundary("only-gcp", gcp={})])
    assert (
        found == "spec.provider: AWS is not allowed by CredentialBoundary only-gcp (namespace ns)"
    )
    assert violation(spec, "ns", {}, [boundary(aws={})]) is None


def test_aws_accounts_roles_and_static_keys() -> None:
    accounts = boundary("acct", aws={"accountIds": ["111111111111"]})
    found = violation(credential("AWS", roleArn=ROLE), "ns", {}, [accounts])
    assert found is not None
    assert found.startswith("spec.aws.roleArn: account 123456789012 is not allowed")
    assert found.endswith("allowed accounts: 111111111111")

    roles = boundary("roles", aws={"roleArns": ["arn:aws:iam::123456789012:role/team-b-*"]})
    found = violation(credential("AWS", roleArn=ROLE), "ns", {}, [roles])
    assert found is not None
    assert found.startswith(f"spec.aws.roleArn: {ROLE} is not allowed")
    found = violation(credential("AWS", **KEYS), "ns", {}, [roles])
    assert found is not None
    assert found.startswith("spec.aws.accessKeyId: static keys are not allowed")

    # A static key's account is known only from STS: unknown passes (as at admission).
    keys = credential("AWS", **KEYS)
    assert violation(keys, "ns", {}, [accounts]) is None
    assert violation(keys, "ns", {}, [accounts], reported_account="111111111111") is None
    found = violation(keys, "ns", {}, [accounts], reported_account="123456789012")
    assert found is not None
    assert "the key belongs to account 123456789012" in found


def test_gcp_projects() -> None:
    projects = boundary(gcp={"projects": ["acme-prod"]})
    wif = {"serviceAccountEmail": "d@acme-dev.iam.gserviceaccount.com",
           "workloadIdentityProvider":
               "projects/1/locations/global/workloadIdentityPools/pool/providers/prov"}  # fmt: skip
    found = violation(credential("GCP", **wif), "ns", {}, [projects])
    assert found is not None
    assert found.startswith("spec.gcp.serviceAccountEmail: project acme-dev is not allowed")
    key = credential("GCP", serviceAccountKeyRef={"name": "k", "key": "key.json"})
    email = "d@acme-prod.iam.gserviceaccount.com"
    assert violation(key, "ns", {}, [projects], gcp_email=email) is None
    found = violation(key, "ns", {}, [projects], gcp_email="")
    assert found is not None
    assert "the key's service account (none) is of project (none), which is not allowed" in found


def test_azure_and_scaleway_ids_without_case() -> None:
    tenant, subscription = (
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "0b1f6471-1bf0-4dda-aec3-cb9272f09590",
    )
    spec = credential("AZURE", tenantId=tenant, subscriptionId=subscription,
                      clientId=tenant, clientSecretRef={"name": "s", "key": "k"})  # fmt: skip
    assert violation(spec, "ns", {}, [boundary(azure={"tenantIds": [tenant.upper()]})]) is None
    found = violation(spec, "ns", {}, [boundary(azure={"subscriptionIds": [tenant]})])
    assert found is not None
    assert found.startswith(f"spec.azure.subscriptionId: {subscription} is not allowed")

    organizations = boundary(scaleway={"organizationIds": [tenant]})
    block = {"accessKey": "SCWXXXXXXXXXXXXXXXXX", "secretKeyRef": {"name": "s", "key": "k"},
             "projectId": subscription}  # fmt: skip
    found = violation(credential("SCALEWAY", **block), "ns", {}, [organizations])
    assert found is not None
    assert found.startswith("spec.scaleway.organizationId: is required")
    spec = credential("SCALEWAY", **block, organizationId=tenant.upper())
    assert violation(spec, "ns", {}, [organizations]) is None


def test_every_selecting_boundary_must_pass_in_name_order() -> None:
    spec = credential("AWS", roleArn=ROLE)
    a = boundary("a", aws={"accountIds": ["123456789012"]})
    z = boundary("z", aws={"roleArns": ["arn:aws:iam::123456789012:role/other"]})
    y = boundary("y", gcp={})
    found = violation(spec, "ns", {}, [z, a, y])
    assert found is not None
    assert "CredentialBoundary y " in found  # y before z; a passes
    assert violation(spec, "ns", {}, [a]) is None
