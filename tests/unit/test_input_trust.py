"""Least input trust: what a user can write into a spec or a Secret fails safely
(issue 14). The admission half of these checks is in tests/integration/test_input_trust.py."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr, ValidationError

from cloudcred import verification
from cloudcred.api.credential import AwsSpec, CloudCredentialSpec
from cloudcred.cache.informers import plain_namespaces
from cloudcred.cache.store import Store
from cloudcred.config import Settings
from cloudcred.installation import Installation
from cloudcred.providers import aws, gcp
from cloudcred.providers.base import (
    TRANSIENT_REASONS,
    ProviderSettings,
    Reason,
    VerificationError,
    VerifyContext,
)
from tests.sts import RefusingSts, start_refusing_sts

ACCOUNT = "arn:aws:iam::123456789012"

# --- 1. the periodic interval has a floor of one minute -----------------------------------


@pytest.mark.parametrize(
    ("interval", "seconds"),
    [("1ms", 60.0), ("59s", 60.0), ("0.5s", 60.0), ("1m", 60.0), ("90s", 90.0), ("0", 0.0)],
)
def test_periodic_interval_is_never_under_a_minute(interval: str, seconds: float) -> None:
    spec = {"verification": {"interval": interval}}
    assert verification.periodic_interval("t-ns", f"c-{interval}", spec) == seconds


def test_a_clamped_interval_is_said_once_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    spec = {"verification": {"interval": "1ms"}}
    with caplog.at_level(logging.WARNING, logger="cloudcred.verification"):
        for _ in range(3):
            verification.periodic_interval("t-ns", "said-once", spec)
    said = [r.getMessage() for r in caplog.records if "said-once" in r.getMessage()]
    assert said == ["t-ns/said-once: spec.verification.interval 1ms is under the 1m minimum: "
                    "checking every 1m"]  # fmt: skip


# --- 2. role ARNs follow AWS's rules for paths and names ----------------------------------


@pytest.mark.parametrize(
    "arn",
    [
        f"{ACCOUNT}:role/cloudcred",
        f"{ACCOUNT}:role/team/deployers/cloudcred",
        f"{ACCOUNT}:role/a+b=c,d.e@f_g-h",
        f"{ACCOUNT}:role/{'r' * 64}",
        "arn:aws-cn:iam::123456789012:role/x",
        "arn:aws-us-gov:iam::123456789012:role/path/x",
    ],
)
def test_good_role_arns_are_accepted(arn: str) -> None:
    assert AwsSpec(role_arn=arn).role_arn == arn


@pytest.mark.parametrize(
    "arn",
    [
        f"{ACCOUNT}:role//",
        f"{ACCOUNT}:role/",
        f"{ACCOUNT}:role/a//b",
        f"{ACCOUNT}:role//a",
        f"{ACCOUNT}:role/a/",
        f"{ACCOUNT}:role/{'r' * 65}",
        f"{ACCOUNT}:role/has space",
        f"{ACCOUNT}:role/star*",
        f"{ACCOUNT}:user/cloudcred",
        "arn:aws:iam::12345678901:role/x",
    ],
)
def test_malformed_role_arns_are_refused(arn: str) -> None:
    with pytest.raises(ValidationError, match=r"role_arn|roleArn"):
        AwsSpec(role_arn=arn)


# --- 3. a nested JSON key is InvalidSecretData; any surprise is Unknown, never True -------

GCP_SPEC = CloudCredentialSpec.model_validate(
    {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "gcp-key", "key": "sa.json"}}}
)
CONTEXT = VerifyContext("t-acme", "gcp", ProviderSettings(gcp_token_uri="http://127.0.0.1:9/t"))


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000])
def test_a_deeply_nested_key_is_invalid_secret_data_naming_the_secret(text: str) -> None:
    with pytest.raises(VerificationError) as refused:
        gcp.verify(GCP_SPEC, {gcp.KEY_ROLE: SecretStr(text)}, CONTEXT)
    assert refused.value.reason == Reason.INVALID_SECRET_DATA
    assert refused.value.message == (
        "key 'sa.json' of Secret t-acme/gcp-key is not a service-account JSON key "
        "(nested too deeply)"
    )


class SecretsOnly:
    """The one call check_credential makes to the API server for a key credential:
    reading the referenced Secret (no cluster in unit tests)."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return self.data


SECRET_TEXT = "private-key-material-0123456789"


def test_an_unexpected_error_in_a_provider_is_unknown_with_its_class_name_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def surprise(*_: Any) -> None:
        raise RuntimeError(f"the library quoted the key: {SECRET_TEXT}")

    monkeypatch.setattr(gcp, "verify", surprise)
    body = {
        "metadata": {"namespace": "t-acme", "name": "gcp", "generation": 2},
        "spec": GCP_SPEC.to_api(),
        "status": {"conditions": [{"type": "Verified", "status": "True", "reason": "Verified",
                                   "message": "GCP accepted the credential"}]},
    }  # fmt: skip
    kube = SecretsOnly({"sa.json": SECRET_TEXT})
    with caplog.at_level(logging.DEBUG):
        result = asyncio.run(
            verification.check_credential(
                body, kube, Settings(), asyncio.Semaphore(1),  # type: ignore[arg-type]
                body["status"]["conditions"], Installation(bytes(32)),
            )
        )  # fmt: skip

    verified = result.verified
    assert verified["status"] == "Unknown"
    assert verified["reason"] == "VerificationFailed"
    assert verified["message"] == (
        "the check failed unexpectedly (RuntimeError): the operator's log says where"
    )
    assert not result.transient
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "VerificationFailed")]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "failed unexpectedly (RuntimeError)" in logged
    assert "in surprise" in logged  # where() names the frame
    assert SECRET_TEXT not in logged
    assert SECRET_TEXT not in json.dumps(result.status)


# --- 4. a permanent refusal is not retried as if the network were down --------------------


def client_error(code: str, status: int, operation: str = "AssumeRole") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "quoted request"},
         "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )  # fmt: skip


ROLE = AwsSpec(role_arn=f"{ACCOUNT}:role/cloudcred")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ValidationError", 400),
        ("MalformedPolicyDocument", 400),
        ("InvalidParameterValue", 400),
        ("PackedPolicyTooLarge", 400),
        ("RegionDisabledException", 403),
        ("SomethingNew", 404),
    ],
)
def test_aws_refusals_are_provider_refused(code: str, status: int) -> None:
    error = aws._client_error(client_error(code, status), ROLE)
    assert error.reason == Reason.PROVIDER_REFUSED
    assert error.reason not in TRANSIENT_REASONS
    assert error.message == f"AWS refused AssumeRole ({code}, HTTP {status})"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("Throttling", 400),
        ("ThrottlingException", 400),
        ("RequestLimitExceeded", 503),
        ("TooManyRequestsException", 429),
        ("ServiceUnavailable", 503),
        ("InternalFailure", 500),
        ("SomethingNew", 502),
        ("IDPCommunicationError", 400),
    ],
)
def test_aws_throttling_and_server_errors_stay_transient(code: str, status: int) -> None:
    error = aws._client_error(client_error(code, status), ROLE)
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert error.reason in TRANSIENT_REASONS


def test_aws_credential_and_permission_refusals_keep_their_reasons() -> None:
    denied = aws._client_error(client_error("AccessDenied", 403), ROLE)
    invalid = aws._client_error(client_error("InvalidClientTokenId", 403), ROLE)
    assert denied.reason == Reason.ACCESS_DENIED
    assert invalid.reason == Reason.INVALID_CREDENTIALS


@pytest.fixture
def refusing_sts() -> Any:
    sts, server = start_refusing_sts()
    yield sts
    server.shutdown()
    server.server_close()


def test_a_real_sts_refusal_through_boto3_is_provider_refused(
    refusing_sts: RefusingSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore parses STS's own error document: the classification sees what a real
    refusal looks like on the wire."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", refusing_sts.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATOR00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    spec = CloudCredentialSpec.model_validate(
        {"provider": "AWS", "aws": {"roleArn": f"{ACCOUNT}:role/cloudcred"}}
    )
    with pytest.raises(VerificationError) as refused:
        aws.verify(spec, {}, VerifyContext("t-acme", "role", ProviderSettings(timeout_seconds=2)))
    assert refused.value.reason == Reason.PROVIDER_REFUSED
    assert refused.value.message == "AWS refused AssumeRole (ValidationError, HTTP 400)"
    assert refusing_sts.assume_role_calls == 1


# --- 5. Secrets are watched per namespace when the namespaces are plain names -------------


@pytest.mark.parametrize(
    ("patterns", "names"),
    [
        ([], None),
        (["t-*"], None),
        (["acme,!kube-system"], None),
        (["team-[ab]"], None),
        (["acme"], ["acme"]),
        (["platform, acme", "acme"], ["acme", "platform"]),
    ],
)
def test_plain_namespaces(patterns: list[str], names: list[str] | None) -> None:
    assert plain_namespaces(patterns) == names


def test_a_namespaced_list_replaces_only_its_own_namespace() -> None:
    store: Store[str] = Store("Secret")
    store.apply(("a", "one"), "1")
    store.apply(("b", "two"), "2")
    changes = store.replace({("a", "three"): "3"}, asked_at=float("inf"), namespace="a")
    assert sorted(store) == [("a", "three"), ("b", "two")]
    assert sorted(c.key for c in changes) == [("a", "one"), ("a", "three")]
