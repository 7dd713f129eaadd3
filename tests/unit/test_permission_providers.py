"""Each provider's permission check against a local stand-in for its API, behind the
vendor's own library (google-auth and requests; azure-identity and azure-core; the
Scaleway SDK): all allowed, some missing, wildcards, a scope, what beats a grant, and
the check itself refused. AWS's cases run against moto and the local IAM endpoint
(``tests/integration/test_permissions.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.api.permissions import GcpPermissions
from cloudcred.providers import gcp
from cloudcred.providers.base import (
    PermissionAnswer,
    ProviderSettings,
    Reason,
    VerificationError,
    VerifyContext,
)
from tests.gcp import (
    SERVER_KEY,
    ResourceManager,
    key_json,
    start_resource_manager,
    start_token_endpoint,
)

# -- GCP: projects.testIamPermissions ------------------------------------------------------

GKE = ["container.clusters.create", "container.clusters.get", "container.clusters.update"]


@pytest.fixture
def google() -> Iterator[tuple[ResourceManager, str]]:
    """The local token endpoint and Cloud Resource Manager API: (api, token URI)."""
    tokens, token_server = start_token_endpoint([SERVER_KEY.public_key()])
    api, api_server = start_resource_manager({"my-project": set(GKE[:2])})
    yield api, tokens.url
    api_server.shutdown()
    token_server.shutdown()


def gcp_check(google: tuple[ResourceManager, str], permissions: list[str],
              **key: Any) -> PermissionAnswer:  # fmt: skip
    api, token_uri = google
    spec = CloudCredentialSpec.model_validate({"provider": "GCP", "gcp": {
        "serviceAccountKeyRef": {"name": "sa", "key": "key.json"}}})  # fmt: skip
    settings = ProviderSettings(gcp_token_uri=token_uri, gcp_resource_manager_url=api.url,
                                timeout_seconds=5)  # fmt: skip
    return gcp.check_permissions(
        spec, {"serviceAccountKey": SecretStr(key_json(token_uri, **key))},
        VerifyContext("ns", "cred", settings), GcpPermissions(permissions=permissions),
    )  # fmt: skip


def test_gcp_all_allowed_on_the_keys_project(google: tuple[ResourceManager, str]) -> None:
    assert gcp_check(google, GKE[:2]) == PermissionAnswer(2, ())
    assert google[0].requests == [{"project": "my-project", "permissions": GKE[:2]}]


def test_gcp_some_missing(google: tuple[ResourceManager, str]) -> None:
    assert gcp_check(google, [*GKE, "iam.serviceAccounts.actAs"]) == PermissionAnswer(
        4, ("container.clusters.update", "iam.serviceAccounts.actAs")
    )


def test_gcp_asks_at_most_100_permissions_a_request(google: tuple[ResourceManager, str]) -> None:
    many = [f"compute.things{i:03}.get" for i in range(150)]
    answer = gcp_check(google, [*many, GKE[0]])
    assert answer.checked == 151
    assert answer.missing == tuple(sorted(many))
    assert [len(r["permissions"]) for r in google[0].requests] == [100, 51]


def test_gcp_another_project_is_not_the_keys(google: tuple[ResourceManager, str]) -> None:
    """Google answers 403 for a project the caller may not see: the check could not be
    made (Unknown to the operator), not a list of everything missing."""
    with pytest.raises(VerificationError) as refused:
        gcp_check(google, GKE, project_id="other-project")
    assert refused.value.reason == Reason.ACCESS_DENIED
    assert "testIamPermissions on project other-project (HTTP 403, PERMISSION_DENIED)" in (
        refused.value.message
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [(503, Reason.PROVIDER_UNREACHABLE), (429, Reason.PROVIDER_UNREACHABLE),
     (400, Reason.PROVIDER_REFUSED)],
)  # fmt: skip
def test_gcp_failures_are_reasons(
    google: tuple[ResourceManager, str], status: int, reason: Reason
) -> None:
    google[0].forced = (status, {"error": {"status": "X", "message": "private_key leaked?"}})
    with pytest.raises(VerificationError) as failed:
        gcp_check(google, GKE)
    assert failed.value.reason == reason
    assert "leaked" not in failed.value.message


def test_gcp_workload_identity_cannot_be_checked_here() -> None:
    spec = CloudCredentialSpec.model_validate({"provider": "GCP", "gcp": {
        "serviceAccountEmail": "d@my-project.iam.gserviceaccount.com",
        "workloadIdentityProvider": "//iam.googleapis.com/projects/1/locations/global/"
                                    "workloadIdentityPools/pool/providers/prov"}})  # fmt: skip
    with pytest.raises(VerificationError) as unavailable:
        gcp.check_permissions(spec, {}, VerifyContext("ns", "c"), GcpPermissions(permissions=GKE))
    assert unavailable.value.reason == Reason.VERIFICATION_UNAVAILABLE
