"""The credential in each provider's standard form, as delivered to a cluster's deployer
(spec.credentialsSecret), without a cluster. AWS roles are tested end to end against
moto (tests/integration/test_delivery.py)."""

from __future__ import annotations

import configparser
import json
from typing import Any

import pytest
from pydantic import SecretStr

from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.providers import aws, azure, gcp, scaleway
from cloudcred.providers.base import VerificationError, VerifyContext

CONTEXT = VerifyContext("acme", "prod-eu")


def spec(**body: Any) -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(body)


def plain(data: dict[str, SecretStr]) -> dict[str, str]:
    return {key: value.get_secret_value() for key, value in data.items()}


def test_aws_static_keys_as_variables_and_shared_files() -> None:
    credential = spec(provider="AWS", aws={
        "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "secretAccessKeyRef": {"name": "keys", "key": "secretAccessKey"}})  # fmt: skip
    delivered = aws.delivery(credential, {"secretAccessKey": SecretStr("s3cr3t")}, "eu-west-3",
                             CONTEXT)  # fmt: skip
    data = plain(delivered.data)
    assert delivered.expires is None
    assert data["AWS_ACCESS_KEY_ID"] == "AKIAIOSFODNN7EXAMPLE"
    assert data["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert data["AWS_REGION"] == data["AWS_DEFAULT_REGION"] == "eu-west-3"
    assert "AWS_SESSION_TOKEN" not in data
    files = configparser.ConfigParser()
    files.read_string(data["credentials"])
    assert dict(files["default"]) == {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
                                      "aws_secret_access_key": "s3cr3t"}  # fmt: skip
    files = configparser.ConfigParser()
    files.read_string(data["config"])
    assert files["default"]["region"] == "eu-west-3"


def test_gcp_key_file_and_no_key_for_workload_identity() -> None:
    key = json.dumps({"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com"})
    credential = spec(provider="GCP",
                      gcp={"serviceAccountKeyRef": {"name": "k", "key": "key.json"}})  # fmt: skip
    data = plain(gcp.delivery(credential, {"serviceAccountKey": SecretStr(key)}, "europe-west1",
                              CONTEXT).data)  # fmt: skip
    assert data == {"credentials.json": key, "CLOUDSDK_COMPUTE_REGION": "europe-west1"}
    federated = spec(provider="GCP", gcp={
        "serviceAccountEmail": "a@b.iam.gserviceaccount.com",
        "workloadIdentityProvider":
            "projects/1/locations/global/workloadIdentityPools/pool1/providers/prov1"})  # fmt: skip
    with pytest.raises(VerificationError, match="no key to deliver"):
        gcp.delivery(federated, {}, "europe-west1", CONTEXT)


def test_azure_variables_for_the_sdks_and_terraform() -> None:
    credential = spec(provider="AZURE", azure={
        "tenantId": "11111111-1111-1111-1111-111111111111",
        "subscriptionId": "22222222-2222-2222-2222-222222222222",
        "clientId": "33333333-3333-3333-3333-333333333333",
        "clientSecretRef": {"name": "sp", "key": "clientSecret"}})  # fmt: skip
    data = plain(azure.delivery(credential, {"clientSecret": SecretStr("pa55")}, "westeurope",
                                CONTEXT).data)  # fmt: skip
    for prefix in ("AZURE", "ARM"):
        assert data[f"{prefix}_TENANT_ID"] == "11111111-1111-1111-1111-111111111111"
        assert data[f"{prefix}_SUBSCRIPTION_ID"] == "22222222-2222-2222-2222-222222222222"
        assert data[f"{prefix}_CLIENT_ID"] == "33333333-3333-3333-3333-333333333333"
        assert data[f"{prefix}_CLIENT_SECRET"] == "pa55"
    assert data["AZURE_LOCATION"] == "westeurope"


def test_scaleway_variables() -> None:
    credential = spec(provider="SCALEWAY", scaleway={
        "accessKey": "SCWXXXXXXXXXXXXXXXXX",
        "secretKeyRef": {"name": "scw", "key": "secretKey"},
        "projectId": "44444444-4444-4444-4444-444444444444"})  # fmt: skip
    secret = "55555555-5555-5555-5555-555555555555"
    data = plain(scaleway.delivery(credential, {"secretKey": SecretStr(secret)}, "fr-par",
                                   CONTEXT).data)  # fmt: skip
    assert data == {
        "SCW_ACCESS_KEY": "SCWXXXXXXXXXXXXXXXXX",
        "SCW_SECRET_KEY": secret,
        "SCW_DEFAULT_PROJECT_ID": "44444444-4444-4444-4444-444444444444",
        "SCW_DEFAULT_REGION": "fr-par",
    }
