"""Plain functions of the operator: revision, durations, settings, conditions."""

from __future__ import annotations

import asyncio
import base64
import os
import re

import pytest
from pydantic import SecretStr

from cloudcred import conditions
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.config import Settings, SettingsError
from cloudcred.installation import (
    INSTALLATION_SECRET,
    Installation,
    InstallationError,
    load_installation,
)
from cloudcred.providers.aws import principal_of, session_name
from cloudcred.revision import compute_revision
from cloudcred.verification import parse_interval
from tests.fakekube import FakeKube

AWS_KEYS = {
    "provider": "AWS",
    "aws": {
        "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"},
    },
}
INSTALLATION = Installation(b"a fixed test key of 32 bytes....")
SECRET = {"secretAccessKey": SecretStr("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")}


def test_revision_is_pinned() -> None:
    """Golden value: if this changes, every cluster would be marked for redeploy on
    upgrade. Change the revision's prefix instead."""
    spec = CloudCredentialSpec.model_validate(AWS_KEYS)
    assert compute_revision(spec, SECRET, INSTALLATION) == "v2-10925a2a01eb"


def test_revision_is_no_oracle_without_the_installation_key() -> None:
    """Keyed: the same spec and secret give another revision under another key, and
    neither is the unkeyed SHA-256 anyone could compute from a guessed secret."""
    spec = CloudCredentialSpec.model_validate(AWS_KEYS)
    ours = compute_revision(spec, SECRET, INSTALLATION)
    assert ours != compute_revision(spec, SECRET, Installation(b"another key, 32 bytes long......"))
    assert ours[3:] != "943c1aa8cd74"  # the old, unkeyed revision of the same data


def test_revision_ignores_description_allowed_namespaces_and_verification() -> None:
    plain = CloudCredentialSpec.model_validate(AWS_KEYS)
    decorated = CloudCredentialSpec.model_validate({
        **AWS_KEYS,
        "description": "Staging",
        "allowedNamespaces": {"matchLabels": {"team": "platform"}},
        "verification": {"interval": "5m"},
    })  # fmt: skip
    revision = compute_revision(plain, SECRET, INSTALLATION)
    assert revision == compute_revision(decorated, SECRET, INSTALLATION)


def test_revision_changes_with_secret_and_provider_block_and_hides_the_value() -> None:
    spec = CloudCredentialSpec.model_validate(AWS_KEYS)
    other_secret = {"secretAccessKey": SecretStr("another-secret-value")}
    other_key = CloudCredentialSpec.model_validate(
        {**AWS_KEYS, "aws": {**AWS_KEYS["aws"], "accessKeyId": "AKIAIOSFODNN7EXAMPLF"}}
    )
    base = compute_revision(spec, SECRET, INSTALLATION)
    assert compute_revision(spec, other_secret, INSTALLATION) != base
    assert compute_revision(other_key, SECRET, INSTALLATION) != base
    assert SECRET["secretAccessKey"].get_secret_value() not in base


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5)],
)
def test_parse_interval(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "h", "1 h", "1h 30m"])
def test_parse_interval_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_interval(text)


def test_settings_from_env() -> None:
    settings = Settings.from_env({
        "CLOUDCRED_NAMESPACES": "acme, platform",
        "CLOUDCRED_VERIFICATION_TIMEOUT": "2.5",
        "CLOUDCRED_LOG_FORMAT": "json",
        "UNRELATED": "x",
    })  # fmt: skip
    assert settings.namespaces == ["acme", "platform"]
    assert settings.verification_timeout == 2.5
    assert settings.log_format == "json"


def test_delivery_is_off_unless_the_installation_turns_it_on() -> None:
    assert Settings.from_env({}).delivery_enabled is False
    assert Settings.from_env({"CLOUDCRED_DELIVERY_ENABLED": "false"}).delivery_enabled is False
    assert Settings.from_env({"CLOUDCRED_DELIVERY_ENABLED": "true"}).delivery_enabled is True


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CLOUDCRED_VERIFICATION_TIMEOUT"):
        Settings.from_env({"CLOUDCRED_VERIFICATION_TIMEOUT": "soon"})


def test_session_name_fits_sts_limits() -> None:
    assert session_name("acme", "aws-prod") == "cloudcred+acme+aws-prod"
    long = session_name("a" * 63, "b" * 200)
    assert len(long) == 64
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", long)
    assert long != session_name("a" * 63, "b" * 199)


def test_session_names_of_different_tenants_never_meet() -> None:
    """team/a-prod and team-a/prod joined with '-' were the same session name."""
    assert session_name("team", "a-prod") != session_name("team-a", "prod")
    # A cut name ends in '=' and a hash; no uncut name holds '=', so none meets it.
    cut = session_name("n" * 40, "x" * 40)
    assert "=" in cut
    assert cut != session_name("n" * 40, "x" * 39)
    assert session_name("acme", "prod", kind="cloudcred-cluster") != session_name("acme", "prod")


def test_operator_principal_of_an_assumed_role_is_the_role() -> None:
    assumed = "arn:aws:sts::123456789012:assumed-role/cloudcred-operator/botocore-session-1"
    assert principal_of(assumed) == "arn:aws:iam::123456789012:role/cloudcred-operator"
    user = "arn:aws:iam::123456789012:user/ci"
    assert principal_of(user) == user


def test_external_id_is_keyed_and_distinct_per_namespace_uid_and_name() -> None:
    one, other = Installation(b"k" * 32), Installation(b"l" * 32)
    uid = "0b8e3a52-6c0e-4f8e-9d61-3a8f0c1d2e4f"
    first = one.external_id(uid, "prod")
    assert re.fullmatch(r"cloudcred-[0-9a-f]{32}", first)
    assert first == one.external_id(uid, "prod")
    assert first != one.external_id(uid, "prod2")
    assert first != one.external_id("1" + uid[1:], "prod")
    assert first != other.external_id(uid, "prod")
    # Parts are delimited: (uid, name) pairs that join to the same text differ.
    assert one.digest("p", "ab", "c") != one.digest("p", "a", "bc")


def test_condition_keeps_transition_time_while_status_holds() -> None:
    first = conditions.condition(None, "Verified", "True", "Verified", "ok", 1)
    first["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = conditions.condition([first], "Verified", "True", "Verified", "ok again", 2)
    flipped = conditions.condition([first], "Verified", "False", "AccessDenied", "no", 2)
    assert same["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert flipped["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert not conditions.changed(first, same)
    assert conditions.changed(first, flipped)


# -- the installation key: never made anew while values derived from the old one live ----


def test_a_lost_installation_key_is_not_made_anew_while_credentials_carry_its_values() -> None:
    """The key Secret is gone (deleted, lost in a restore) while credentials show a
    revision or an ExternalId derived from it: a new key would change them all (every
    role AccessDenied, every cluster redeployed). The operator refuses, saying how to
    restore the key or make a new one on purpose; without such credentials it makes one."""
    kube = FakeKube()
    kube.put("CloudCredential", {"metadata": {"namespace": "acme", "name": "prod"},
                                 "spec": {"provider": "GCP"},
                                 "status": {"revision": "v2-0123456789ab"}})  # fmt: skip
    with pytest.raises(InstallationError) as refused:
        asyncio.run(load_installation(kube, "cloudcred-system"))  # type: ignore[arg-type]
    message = str(refused.value)
    assert "Secret cloudcred-system/cloudcred-installation is missing" in message
    assert "CloudCredential acme/prod" in message
    assert "restore it from your backup" in message
    assert "kubectl create secret generic cloudcred-installation -n cloudcred-system" in message
    assert not kube.secrets, "no key made"

    # The administrator makes a new key on purpose, as the message says.
    fresh = base64.b64encode(os.urandom(32)).decode()
    kube.put_secret("cloudcred-system", INSTALLATION_SECRET,
                    {"key": base64.b64encode(fresh.encode()).decode()})  # fmt: skip
    made = asyncio.run(load_installation(kube, "cloudcred-system"))  # type: ignore[arg-type]
    assert made.key == base64.b64decode(fresh)

    # Only the watched namespaces count: another installation's credentials do not.
    empty = FakeKube()
    empty.put("CloudCredential", {"metadata": {"namespace": "acme", "name": "new"},
                                  "spec": {"provider": "GCP"}})  # fmt: skip
    empty.put("CloudCredential", {"metadata": {"namespace": "other", "name": "theirs"},
                                  "spec": {"provider": "GCP"},
                                  "status": {"revision": "v2-0123456789ab"}})  # fmt: skip
    first = asyncio.run(load_installation(empty, "cloudcred-system", ["acme"]))  # type: ignore[arg-type]
    assert len(first.key) == 32
    assert ("cloudcred-system", INSTALLATION_SECRET) in empty.secrets
