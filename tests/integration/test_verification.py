"""The operator checks every CloudCredential with its provider (AWS through moto)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from tests.aws import Moto, blackhole
from tests.conftest import Kube
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_credential,
    credential_ready,
    events_for,
    get_credential,
    secret,
)

pytestmark = pytest.mark.integration


def verified(kube: Kube, namespace: str, name: str, reason: str, timeout: float = 30) -> dict:
    """Wait until the Verified condition has this reason; return the credential."""

    def check() -> dict[str, Any] | None:
        obj = get_credential(kube, namespace, name)
        found = condition(obj, "Verified")
        return obj if found and found["reason"] == reason else None

    return wait_for(check, timeout, what=f"{namespace}/{name} Verified reason {reason}")


def static_key_credential(kube: Kube, namespace: str, name: str, key_id: str) -> None:
    create_credential(
        kube, namespace, name, provider="AWS",
        aws={"accessKeyId": key_id,
             "secretAccessKeyRef": {"name": f"{name}-keys", "key": "secretAccessKey"}},
    )  # fmt: skip


def test_valid_static_keys_are_verified(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
    secret(kube, namespace, "good-keys", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "good", user.access_key_id)

    obj = verified(kube, namespace, "good", "Verified")
    status = obj["status"]
    assert condition(obj, "Verified")["status"] == "True"
    credential_ready(kube, namespace, "good", "True")
    assert status["publicId"] == user.access_key_id
    assert status["identity"] == f"arn:aws:iam::123456789012:user/{user.user}"
    assert re.fullmatch(r"v2-[0-9a-f]{12}", status["revision"])
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["lastVerifiedTime"]
    assert status["keyCreatedTime"]  # the user may list its own keys
    rotation = condition(obj, "RotationRecommended")
    assert rotation["status"] == "True"
    assert rotation["reason"] == "StaticKeys"
    reasons = [event.reason for event in events_for(kube, namespace, "good")]
    assert "Verified" in reasons
    assert "RotationRecommended" in reasons


def test_wrong_secret_is_invalid_credentials(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
    secret(kube, namespace, "wrong-keys", {"secretAccessKey": "not-the-secret-" + "x" * 25})
    static_key_credential(kube, namespace, "wrong", user.access_key_id)

    obj = verified(kube, namespace, "wrong", "InvalidCredentials")
    assert condition(obj, "Verified")["status"] == "False"
    ready = credential_ready(kube, namespace, "wrong", "False")
    assert ready["reason"] == "InvalidCredentials"
    stalled = condition(get_credential(kube, namespace, "wrong"), "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidCredentials")
    warnings = [e for e in events_for(kube, namespace, "wrong") if e.type == "Warning"]
    assert any(e.reason == "InvalidCredentials" for e in warnings)


def test_role_is_assumed_and_identity_shows_the_session(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    role_arn = moto.create_role(f"deployer-{uuid.uuid4().hex[:6]}")
    create_credential(kube, namespace, "role", provider="AWS",
                      aws={"roleArn": role_arn})  # fmt: skip

    obj = verified(kube, namespace, "role", "Verified")
    role_name = role_arn.rsplit("/", 1)[-1]
    assert obj["status"]["identity"] == (
        f"arn:aws:sts::123456789012:assumed-role/{role_name}/cloudcred+{namespace}+role"
    )
    assert obj["status"]["publicId"] == role_arn
    assert condition(obj, "RotationRecommended") is None  # a role is the recommended way


def test_missing_secret_then_created_recovers_without_restart(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    user = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
    static_key_credential(kube, namespace, "late", user.access_key_id)
    obj = verified(kube, namespace, "late", "SecretNotFound")
    assert f"Secret {namespace}/late-keys" in condition(obj, "Verified")["message"]

    secret(kube, namespace, "late-keys", {"secretAccessKey": user.secret_access_key})
    verified(kube, namespace, "late", "Verified", timeout=45)


def test_secret_without_the_key_is_secret_key_missing(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    secret(kube, namespace, "nokey-keys", {"somethingElse": "value"})
    static_key_credential(kube, namespace, "nokey", "AKIAIOSFODNN7EXAMPLE")
    obj = verified(kube, namespace, "nokey", "SecretKeyMissing")
    assert "'secretAccessKey'" in condition(obj, "Verified")["message"]


def test_verification_disabled_is_unknown(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    create_credential(kube, namespace, "off", provider="AWS",
                      aws={"roleArn": "arn:aws:iam::123456789012:role/x"},
                      verification={"enabled": False})  # fmt: skip
    obj = verified(kube, namespace, "off", "VerificationDisabled")
    assert condition(obj, "Verified")["status"] == "Unknown"
    credential_ready(kube, namespace, "off", "True")
    assert obj["status"]["revision"].startswith("v2-")


def test_unreachable_provider_within_the_timeout(kube: Kube, operators: Operators) -> None:
    """An AWS endpoint that accepts connections and never answers: ProviderUnreachable
    within the configured timeout, and the operator keeps running."""
    server, url = blackhole()
    namespace = f"u-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    process = operators.start(namespace, env={"AWS_ENDPOINT_URL": url,
                                              "CLOUDCRED_VERIFICATION_TIMEOUT": "2"})  # fmt: skip
    try:
        wait_for(lambda: "cloudcred settings" in process.log(), timeout=30, what="start")
        started = time.monotonic()
        create_credential(kube, namespace, "slow", provider="AWS",
                          aws={"roleArn": "arn:aws:iam::123456789012:role/slow"})  # fmt: skip
        obj = verified(kube, namespace, "slow", "ProviderUnreachable", timeout=30)
        elapsed = time.monotonic() - started
        assert "did not answer within 2s" in condition(obj, "Verified")["message"]
        assert elapsed < 2 * 2 + 8, f"took {elapsed:.1f}s"
        assert process.alive
    finally:
        server.close()
