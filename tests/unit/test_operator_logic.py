"""Plain functions of the operator: revision, durations, settings, conditions."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cloudcred import conditions
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.config import Settings, SettingsError
from cloudcred.providers.aws import session_name
from cloudcred.revision import compute_revision
from cloudcred.verification import parse_interval

AWS_KEYS = {
    "provider": "AWS",
    "aws": {
        "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
        "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"},
    },
}
SECRET = {"secretAccessKey": SecretStr("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")}


def test_revision_is_pinned() -> None:
    """Golden value: if this changes, every cluster would be marked for redeploy on
    upgrade. Change the revision's prefix instead."""
    spec = CloudCredentialSpec.model_validate(AWS_KEYS)
    assert compute_revision(spec, SECRET) == "v1-943c1aa8cd74"


def test_revision_ignores_description_allowed_namespaces_and_verification() -> None:
    plain = CloudCredentialSpec.model_validate(AWS_KEYS)
    decorated = CloudCredentialSpec.model_validate({
        **AWS_KEYS,
        "description": "Staging",
        "allowedNamespaces": {"matchLabels": {"team": "platform"}},
        "verification": {"interval": "5m"},
    })  # fmt: skip
    assert compute_revision(plain, SECRET) == compute_revision(decorated, SECRET)


def test_revision_changes_with_secret_and_provider_block_and_hides_the_value() -> None:
    spec = CloudCredentialSpec.model_validate(AWS_KEYS)
    other_secret = {"secretAccessKey": SecretStr("another-secret-value")}
    other_key = CloudCredentialSpec.model_validate(
        {**AWS_KEYS, "aws": {**AWS_KEYS["aws"], "accessKeyId": "AKIAIOSFODNN7EXAMPLF"}}
    )
    base = compute_revision(spec, SECRET)
    assert compute_revision(spec, other_secret) != base
    assert compute_revision(other_key, SECRET) != base
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


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CLOUDCRED_VERIFICATION_TIMEOUT"):
        Settings.from_env({"CLOUDCRED_VERIFICATION_TIMEOUT": "soon"})


def test_session_name_fits_sts_limits() -> None:
    assert session_name("acme", "aws-prod") == "cloudcred-acme-aws-prod"
    long = session_name("a" * 63, "b" * 200)
    assert len(long) == 64
    assert long != session_name("a" * 63, "b" * 199)


def test_condition_keeps_transition_time_while_status_holds() -> None:
    first = conditions.condition(None, "Verified", "True", "Verified", "ok", 1)
    first["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    same = conditions.condition([first], "Verified", "True", "Verified", "ok again", 2)
    flipped = conditions.condition([first], "Verified", "False", "AccessDenied", "no", 2)
    assert same["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert flipped["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert not conditions.changed(first, same)
    assert conditions.changed(first, flipped)
