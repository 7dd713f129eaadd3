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
from cloudcred.api.permissions import AzurePermissions, GcpPermissions, ScalewayPermissions
from cloudcred.providers import azure, gcp, scaleway
from cloudcred.providers.base import (
    PermissionAnswer,
    ProviderSettings,
    Reason,
    VerificationError,
    VerifyContext,
)
from tests import scaleway as sc
from tests.azure import CLIENT, SUBSCRIPTION, TENANT, Arm, start_arm
from tests.azure import SECRET as AZURE_SECRET
from tests.echo import Pki, make_pki
from tests.gcp import (
    SERVER_KEY,
    ResourceManager,
    key_json,
    start_resource_manager,
    start_token_endpoint,
)
from tests.scaleway import ScalewayIam, start_scaleway_iam

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


# -- Azure: Microsoft.Authorization permissions ----------------------------------------


AKS = "Microsoft.ContainerService/managedClusters/write"
CONTRIBUTOR = {"actions": ["*"], "notActions": ["Microsoft.Authorization/*/Write",
                                                "Microsoft.Authorization/*/Delete"]}  # fmt: skip
NETWORK = {"actions": ["Microsoft.Network/*"], "notActions": []}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("azure-permissions-pki"))


@pytest.fixture
def arm(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[Arm]:
    """The local Entra ID and Resource Manager, trusted the standard way."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("AZURE_REGIONAL_AUTHORITY_NAME", raising=False)
    state, server = start_arm(pki, {"": [NETWORK], "rg-prod": [CONTRIBUTOR]})
    yield state
    server.shutdown()
    server.server_close()


def azure_check(arm: Arm, actions: list[str], resource_group: str | None = None,
                secret: str = AZURE_SECRET) -> PermissionAnswer:  # fmt: skip
    spec = CloudCredentialSpec.model_validate({"provider": "AZURE", "azure": {
        "tenantId": TENANT, "subscriptionId": SUBSCRIPTION, "clientId": CLIENT,
        "clientSecretRef": {"name": "sp", "key": "secret"}}})  # fmt: skip
    settings = ProviderSettings(azure_authority_host=arm.base, azure_management_url=arm.base,
                                timeout_seconds=5)  # fmt: skip
    needs = AzurePermissions(actions=actions, resource_group=resource_group)
    return azure.check_permissions(spec, {"clientSecret": SecretStr(secret)},
                                   VerifyContext("ns", "cred", settings), needs)  # fmt: skip


def test_azure_all_allowed_in_a_resource_group_every_page_read(arm: Arm) -> None:
    """The group inherits the subscription's role: two roles, two pages."""
    answer = azure_check(arm, [AKS, "microsoft.network/virtualNetworks/write"], "rg-prod")
    assert answer == PermissionAnswer(2, ())
    assert len(arm.calls) == 2


def test_azure_some_missing_at_the_subscription(arm: Arm) -> None:
    answer = azure_check(arm, [AKS, "Microsoft.Network/loadBalancers/write"])
    assert answer == PermissionAnswer(2, (AKS,))


def test_azure_not_actions_beat_a_wildcard_action(arm: Arm) -> None:
    """Contributor (* minus Microsoft.Authorization writes) does not grant a role
    assignment, nor a wildcard need that overlaps what it excludes."""
    answer = azure_check(arm, ["Microsoft.Authorization/roleAssignments/write",
                               "Microsoft.Authorization/*", "Microsoft.Compute/*", AKS],
                         "rg-prod")  # fmt: skip
    assert answer.missing == ("Microsoft.Authorization/*",
                              "Microsoft.Authorization/roleAssignments/write")  # fmt: skip


def test_azure_a_refused_list_is_not_an_answer(arm: Arm) -> None:
    arm.forced = (403, "AuthorizationFailed")
    with pytest.raises(VerificationError) as refused:
        azure_check(arm, [AKS])
    assert refused.value.reason == Reason.ACCESS_DENIED
    assert "(HTTP 403, AuthorizationFailed)" in refused.value.message
    assert AZURE_SECRET not in refused.value.message


@pytest.mark.parametrize(
    ("forced", "group", "reason"),
    [(None, "rg-missing", Reason.PROVIDER_REFUSED), ((503, "ServerBusy"), None,
                                                     Reason.PROVIDER_UNREACHABLE)],
)  # fmt: skip
def test_azure_failures_are_reasons(
    arm: Arm, forced: tuple[int, str] | None, group: str | None, reason: Reason
) -> None:
    arm.forced = forced
    with pytest.raises(VerificationError) as failed:
        azure_check(arm, [AKS], group)
    assert failed.value.reason == reason


def test_azure_a_wrong_secret_gets_no_token(arm: Arm) -> None:
    with pytest.raises(VerificationError) as refused:
        azure_check(arm, [AKS], secret="wrong8Q~secret")
    assert refused.value.reason == Reason.INVALID_CREDENTIALS
    assert arm.calls == []


# -- Scaleway: the bearer's policies and their permission sets -------------------------


@pytest.fixture
def scw() -> Iterator[ScalewayIam]:
    """The application's own policy grants Kubernetes on the project; a group's policy
    grants Instances on the organization; another policy names only another project."""
    state = ScalewayIam(
        groups=[{"id": "g-deployers", "application_ids": [sc.APPLICATION_ID]}],
        policies=[
            {"id": "p-own", "application_id": sc.APPLICATION_ID, "rules": [
                {"permission_set_names": ["KubernetesFullAccess"], "project_ids": [sc.PROJECT_ID]},
                {"permission_set_names": ["ObjectStorageFullAccess"],
                 "project_ids": [sc.OTHER_PROJECT_ID]}]},
            {"id": "p-group", "group_id": "g-deployers", "rules": [
                {"permission_set_names": ["InstancesFullAccess", "VPCFullAccess"],
                 "organization_id": sc.ORGANIZATION_ID}]},
        ] + [{"id": f"p-extra-{i}", "application_id": sc.APPLICATION_ID, "rules": []}
             for i in range(25)],  # more than a page of policies
    )  # fmt: skip
    server = start_scaleway_iam(state)
    yield state
    server.shutdown()


def scaleway_check(state: ScalewayIam, names: list[str]) -> PermissionAnswer:
    spec = CloudCredentialSpec.model_validate({"provider": "SCALEWAY", "scaleway": {
        "accessKey": sc.ACCESS_KEY, "projectId": sc.PROJECT_ID,
        "secretKeyRef": {"name": "scw", "key": "secret"}}})  # fmt: skip
    settings = ProviderSettings(scaleway_api_url=state.url, timeout_seconds=5)
    return scaleway.check_permissions(
        spec, {"secretKey": SecretStr(sc.SECRET_KEY)}, VerifyContext("ns", "cred", settings),
        ScalewayPermissions(permission_sets=names),
    )  # fmt: skip


def test_scaleway_all_held_through_its_own_and_its_groups_policies(scw: ScalewayIam) -> None:
    answer = scaleway_check(scw, ["KubernetesFullAccess", "InstancesFullAccess", "VPCFullAccess"])
    assert answer == PermissionAnswer(3, ())


def test_scaleway_a_set_granted_on_another_project_is_missing(scw: ScalewayIam) -> None:
    answer = scaleway_check(scw, ["KubernetesFullAccess", "ObjectStorageFullAccess",
                                  "DomainsDNSFullAccess"])  # fmt: skip
    assert answer == PermissionAnswer(3, ("DomainsDNSFullAccess", "ObjectStorageFullAccess"))


def test_scaleway_a_bearer_that_may_not_read_policies_gets_access_denied(scw: ScalewayIam) -> None:
    scw.forbidden.add("/iam/v1alpha1/policies")
    with pytest.raises(VerificationError) as refused:
        scaleway_check(scw, ["KubernetesFullAccess"])
    assert refused.value.reason == Reason.ACCESS_DENIED
    assert "IAMReadOnly" in refused.value.message
    assert sc.SECRET_KEY not in refused.value.message
