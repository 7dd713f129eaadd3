"""Automatic rotation's plain decisions (cloudcred.rotation) and the key facts the check
writes (cloudcred.verification), without a cluster."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudcred import rotation
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.config import Settings
from cloudcred.providers.base import KeyFacts, Verification
from cloudcred.verification import _rotation, key_status

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
AWS = {
    "provider": "AWS",
    "aws": {
        "accessKeyId": "AKIAAAAAAAAAAAAAAAAA",
        "secretAccessKeyRef": {"name": "keys", "key": "secret"},
    },
}


@pytest.mark.parametrize(
    ("created", "max_age", "due"),
    [
        (NOW - timedelta(days=89, hours=23), "90d", False),
        (NOW - timedelta(days=90), "90d", True),
        (NOW - timedelta(days=400), "90d", True),
        (NOW - timedelta(hours=23), "1d", False),
        (NOW - timedelta(days=1), "1d", True),
        (None, "90d", True),  # an age nobody can read: rotating gives a key of known age
    ],
)
def test_when_a_rotation_is_due(created: datetime | None, max_age: str, due: bool) -> None:
    assert rotation.is_due(created, rotation.max_age(max_age), NOW) is due


def test_the_next_rotation_is_the_creation_time_plus_max_age() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    assert rotation.next_rotation(created, rotation.max_age("90d")) == datetime(
        2026, 4, 1, tzinfo=UTC)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("7d", 604800), ("1d12h", 129600), ("0s", 0), ("90m", 5400)],
)
def test_grace_periods(text: str, seconds: int) -> None:
    assert rotation.grace_period(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1w", "h", "-1h", "1h1d"])
def test_bad_grace_periods_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a grace period"):
        rotation.grace_period(text)


def rotated(**extra: Any) -> dict[str, Any]:
    return {"rotation": {"keyId": "AKIABBBBBBBBBBBBBBBB", "secretName": "prod-key-0123456789",
                         "replaces": "AKIAAAAAAAAAAAAAAAAA|keys", **extra}}  # fmt: skip


def test_the_effective_spec_names_the_rotated_key_and_its_secret() -> None:
    effective = rotation.effective_spec(AWS, rotated())
    assert effective["aws"] == {"accessKeyId": "AKIABBBBBBBBBBBBBBBB",
                                "secretAccessKeyRef": {"name": "prod-key-0123456789",
                                                       "key": "secret"}}  # fmt: skip
    assert AWS["aws"]["accessKeyId"] == "AKIAAAAAAAAAAAAAAAAA"  # the spec itself is unchanged


def test_a_key_rotated_by_hand_in_the_spec_wins_over_the_operators() -> None:
    by_hand = {**AWS, "aws": {**AWS["aws"], "accessKeyId": "AKIACCCCCCCCCCCCCCCC"}}
    assert rotation.effective_spec(by_hand, rotated()) == by_hand


def test_nothing_changes_before_a_switch() -> None:
    assert rotation.effective_spec(AWS, {}) == AWS
    pending = {"rotation": {"phase": "Creating", "pendingKeyId": "AKIABBBBBBBBBBBBBBBB"}}
    assert rotation.effective_spec(AWS, pending) == AWS


def test_providers_without_a_key_id_in_the_spec_switch_the_secret_only() -> None:
    gcp = {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "sa", "key": "k.json"}}}
    state = {"rotation": {"keyId": "abc123", "secretName": "gcp-key-1",
                          "replaces": rotation.spec_key(gcp)}}  # fmt: skip
    assert rotation.effective_spec(gcp, state)["gcp"] == {
        "serviceAccountKeyRef": {"name": "gcp-key-1", "key": "k.json"}}  # fmt: skip


def test_one_secret_per_key() -> None:
    first = rotation.rotated_secret_name("prod", "AKIABBBBBBBBBBBBBBBB")
    second = rotation.rotated_secret_name("prod", "AKIACCCCCCCCCCCCCCCC")
    assert first != second
    assert first.startswith("prod-key-")
    assert len(rotation.rotated_secret_name("x" * 253, "k")) <= 253


def test_only_keys_the_operator_made_are_cleaned_up_and_others_new_ones_are_reported() -> None:
    keys = ["old", "made-then-lost", "pending", "a-persons"]
    found = rotation.sweep(keys, ("made-then-lost", "pending"), ["old"], ("old", "pending"))
    assert (found.ours, found.unknown) == (["made-then-lost"], ["a-persons"])
    found = rotation.sweep(["old", "unrelated"], (), ["old", "unrelated"], ("old", None))
    assert (found.ours, found.unknown) == ([], [])


def test_the_key_ids_a_spec_names_come_from_the_spec_or_its_secret() -> None:
    def encoded(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    aws = {"provider": "AWS", "aws": {"secretAccessKeyRef": {"name": "k", "key": "s"}}}
    assert rotation.key_ids_named(aws, {"k": {"accessKeyId": encoded("AKIAX")}}) == {"AKIAX"}
    named = {**aws, "aws": {**aws["aws"], "accessKeyId": "AKIAY"}}
    assert rotation.key_ids_named(named, {}) == {"AKIAY"}
    gcp = {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "sa", "key": "f"}}}
    key_file = encoded('{"private_key_id": "abc"}')
    assert rotation.key_ids_named(gcp, {"sa": {"f": key_file}}) == {"abc"}
    assert rotation.key_ids_named(gcp, {"sa": {"f": encoded("not json")}}) == set()
    azure = {"provider": "AZURE", "azure": {"clientSecretRef": {"name": "a", "key": "c"}}}
    assert rotation.key_ids_named(azure, {"a": {"c": encoded("x")}}) == set()


def status(revision: str, verified: str = "True", complete: str = "True",
           rolled: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "revision": revision,
        "rollout": {"revision": rolled or revision},
        "conditions": [
            {"type": "Verified", "status": verified, "reason": "R", "message": "m"},
            {"type": "RolloutComplete", "status": complete, "message": "m"},
        ],
    }


@pytest.mark.parametrize(
    ("given", "done", "verified"),
    [
        (status("v2-old"), False, True),  # the new key's revision not computed yet
        (status("v2-new", verified="False"), False, False),
        (status("v2-new", complete="False"), False, True),
        (status("v2-new", rolled="v2-old"), False, True),  # complete, but of the old one
        (status("v2-new"), True, True),
    ],
)
def test_nothing_is_retired_before_the_new_revision_is_everywhere(
    given: dict[str, Any], done: bool, verified: bool
) -> None:
    state = rotation.rollout_state(given, "v2-old")
    assert (state.done, state.verified) == (done, verified)


def make(type_: str, status_: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": status_, "reason": reason, "message": message}


def test_expiring_soon_before_a_provider_side_expiry() -> None:
    spec = CloudCredentialSpec.model_validate({
        "provider": "SCALEWAY", "scaleway": {
            "accessKey": "SCWAAAAAAAAAAAAAAAAA", "secretKeyRef": {"name": "s", "key": "k"},
            "projectId": "11111111-1111-1111-1111-111111111111"}})  # fmt: skip
    verification = Verification("app", static_keys=True)
    soon = KeyFacts("SCWAAAAAAAAAAAAAAAAA", expires=datetime.now(UTC) + timedelta(days=10))
    found = _rotation(spec, verification, Settings(), make, soon)
    assert found is not None
    assert (found["status"], found["reason"]) == ("True", "ExpiringSoon")
    assert "in 9 days" in found["message"] or "in 10 days" in found["message"]
    later = KeyFacts("SCWAAAAAAAAAAAAAAAAA", expires=datetime.now(UTC) + timedelta(days=300))
    assert (_rotation(spec, verification, Settings(), make, later) or {}).get("reason") != (
        "ExpiringSoon")  # fmt: skip


def test_key_status_says_how_long_a_key_was_never_used() -> None:
    facts = KeyFacts("AKIA", created=NOW - timedelta(days=12))
    assert key_status(facts, NOW) == {"id": "AKIA", "createdTime": "2026-11-18T12:00:00Z",
                                      "neverUsedDays": 12}  # fmt: skip
    used = KeyFacts("AKIA", created=NOW - timedelta(days=12), last_used=NOW - timedelta(days=1),
                    expires=NOW + timedelta(days=30))  # fmt: skip
    assert key_status(used, NOW) == {
        "id": "AKIA", "createdTime": "2026-11-18T12:00:00Z",
        "lastUsedTime": "2026-11-29T12:00:00Z", "expiryTime": "2026-12-30T12:00:00Z",
    }  # fmt: skip


def test_cloudcred_list_shows_the_next_rotation() -> None:
    from cloudcred.cli.views import next_rotation_cell

    idle = {"rotation": {"phase": "Idle", "nextRotationTime": "2027-02-28T12:00:00Z"}}
    assert next_rotation_cell(idle, NOW) == "in 90d"
    assert next_rotation_cell({"rotation": {"nextRotationTime": "2026-11-01T00:00:00Z"}},
                              NOW) == "due"  # fmt: skip
    assert next_rotation_cell({"rotation": {"phase": "RollingOut"}}, NOW) == "RollingOut"
    assert next_rotation_cell({}, NOW) == "-"


def test_the_chart_grants_secret_create_and_delete_only_with_rotation_or_delivery() -> None:
    import subprocess
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    helm = root / ".local" / "bin" / "helm"
    if not helm.exists():
        pytest.skip("helm is not built: run `make helm`")

    def secret_verbs(*values: str) -> set[str]:
        args = [str(helm), "template", "x", str(root / "charts" / "cloudcred"), "--skip-tests"]
        for value in values:
            args += ["--set", value]
        rendered = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
        wanted = ("ClusterRole", "x-cloudcred")
        (role,) = [doc for doc in yaml.safe_load_all(rendered.stdout)
                   if doc and (doc["kind"], doc["metadata"]["name"]) == wanted]  # fmt: skip
        return {verb for rule in role["rules"] if "secrets" in rule.get("resources", [])
                for verb in rule["verbs"]}  # fmt: skip

    assert {"create", "delete"} & secret_verbs() == set()
    assert {"create", "delete"} <= secret_verbs("rotation.enabled=true")
    assert {"create", "delete"} <= secret_verbs("delivery.enabled=true")


def test_a_secret_nested_deep_on_purpose_names_no_key_and_stops_nothing() -> None:
    """Before retiring a key the operator reads every credential's Secrets; one tenant's
    key file of 100 000 nested arrays (a RecursionError in the JSON parser) names no key
    instead of failing every other tenant's rotation."""
    spec = {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "sa", "key": "key.json"}}}
    nested = base64.b64encode(("[" * 100_000 + "]" * 100_000).encode()).decode()
    assert rotation.key_ids_named(spec, {"sa": {"key.json": nested}}) == set()
