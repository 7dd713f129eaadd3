"""Automatic rotation: the plain decisions (no I/O).

With ``spec.rotation.policy: Automatic`` the operator makes a new key with the
credential's own identity, keeps it in a Secret it owns (one per key:
``<name>-key-<hash of the key id>``) and records it in its rotation record
(``rotation_record.py``, in the operator's namespace), of which ``status.rotation`` is
a view; from then
on the credential's *effective* spec names that key and that Secret
(``effective_spec``), so its revision changes and the existing rollout takes the new
key to every cluster, while the spec itself, which a GitOps tool may own,
never changes. Once every cluster uses the new key, the old one is deactivated (where
the provider can) and, after ``gracePeriod``, deleted.

Phases (``status.rotation.phase``), each written *before* the provider call it guards:

    Idle -> Creating -> RollingOut -> Retiring -> Deleting -> Idle

The old key is deactivated ``gracePeriod`` after every cluster uses the new one, and
deleted a second period later (the installation's ``CLOUDCRED_ROTATION_DELETE_AFTER``).
A rotation that is abandoned (``stop_reason``: the policy is no longer Automatic, the
spec names another key, the new key is refused for good) goes back to the key in use
before it and retires, by the same rules, only the key it made.

Only keys the operator's own create calls returned (the record's ``made``) are ever
cleaned up; a key made by anyone else is reported, never deleted. No key that any
CloudCredential resolves to now is deactivated or deleted (``key_ids_named``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

ROTATE_NOW_ANNOTATION = "cloudcred.io/rotate-now"
KEY_ID_ANNOTATION = "cloudcred.io/key-id"

IDLE, CREATING, ROLLING_OUT, RETIRING, DELETING = (
    "Idle", "Creating", "RollingOut", "Retiring", "Deleting",
)  # fmt: skip

# Per provider: (the spec field holding the key's public id, or None; the Secret reference).
KEY_FIELDS: dict[str, tuple[str | None, str]] = {
    "AWS": ("accessKeyId", "secretAccessKeyRef"),
    "GCP": (None, "serviceAccountKeyRef"),
    "AZURE": (None, "clientSecretRef"),
    "SCALEWAY": ("accessKey", "secretKeyRef"),
}

_GRACE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def request_mark(value: str | None) -> str | None:
    """What the record keeps of a ``cloudcred.io/rotate-now`` value to tell a new ask
    from one acted on: the value, or its digest when longer than status may show."""
    if not value or len(value) <= 64:
        return value or None
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:40]


def rotated_secret_name(credential: str, key_id: str) -> str:
    """The Secret the operator owns for one key it made: one per key, so that writing a
    new key never changes the Secret of the key in use."""
    digest = hashlib.sha256(key_id.encode()).hexdigest()[:10]
    return f"{credential[:200]}-key-{digest}"


def max_age(value: str) -> timedelta:
    """``spec.rotation.maxAge`` ("90d")."""
    return timedelta(days=int(value.rstrip("d")))


def grace_period(value: str) -> timedelta:
    """``spec.rotation.gracePeriod`` ("24h", "7d", "1d12h", "0s")."""
    found = _GRACE.match(value)
    if not found or not value:
        raise ValueError(f"not a grace period: {value!r}")
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def next_rotation(created: datetime, age: timedelta) -> datetime:
    """When a key made at ``created`` is due for rotation."""
    return created + age


def is_due(created: datetime | None, age: timedelta, now: datetime) -> bool:
    """Whether a key made at ``created`` is due at ``now``; a key of unknown age is due
    (the operator cannot tell how old it is: rotating it gives a key it knows)."""
    return created is None or now >= next_rotation(created, age)


def spec_key(spec: dict[str, Any]) -> str:
    """The key the spec itself names, as ``<public id>|<Secret name>``: a rotated key
    replaces exactly this one; when the spec names another (a person rotated by hand),
    the spec wins again."""
    provider = str(spec.get("provider", ""))
    if provider not in KEY_FIELDS:
        return ""
    id_field, ref_field = KEY_FIELDS[provider]
    block = spec.get(provider.lower()) or {}
    public = str(block.get(id_field) or "") if id_field else ""
    return f"{public}|{(block.get(ref_field) or {}).get('name', '')}"


def in_effect(spec: dict[str, Any], rotation: dict[str, Any] | None) -> bool:
    """Whether the operator's rotated key replaces the spec's key."""
    rotation = rotation or {}
    return bool(
        rotation.get("keyId")
        and rotation.get("secretName")
        and rotation.get("replaces") == spec_key(spec)
    )


def rotated_key_age(spec: dict[str, Any], status: dict[str, Any] | None,
                    now: datetime) -> timedelta | None:  # fmt: skip
    """How long ago the rotation made the key in effect (from its next rotation time less
    ``maxAge``); None when the spec's own key is in effect."""
    view = (status or {}).get("rotation") or {}
    max_age_text = (spec.get("rotation") or {}).get("maxAge")
    if not in_effect(spec, view) or not view.get("nextRotationTime") or not max_age_text:
        return None
    try:
        due = datetime.fromisoformat(str(view["nextRotationTime"]).replace("Z", "+00:00"))
    except ValueError:
        return None
    return now - (due - max_age(str(max_age_text)))


def effective_spec(spec: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """The spec the operator works with: ``spec``, with the rotated key (its public id and
    the Secret that holds it) in place of the spec's own once a rotation switched to it."""
    rotation = (status or {}).get("rotation")
    if not in_effect(spec, rotation):
        return spec
    assert rotation is not None
    provider = str(spec["provider"])
    id_field, ref_field = KEY_FIELDS[provider]
    block = dict(spec.get(provider.lower()) or {})
    if id_field:
        block[id_field] = rotation["keyId"]
    block[ref_field] = {**(block.get(ref_field) or {}), "name": rotation["secretName"]}
    return {**spec, provider.lower(): block}


@dataclass(frozen=True)
class Sweep:
    """The identity's keys besides the one in use and the one being made: ``ours`` were
    made by the operator's own create calls (cleaned up), ``unknown`` by someone else
    since the rotation began (reported, never touched)."""

    ours: list[str]
    unknown: list[str]


def sweep(keys: list[str], made: tuple[str, ...], known: list[str] | None,
          keep: tuple[str | None, ...]) -> Sweep:  # fmt: skip
    """Sort the identity's listed ``keys``: the keys in ``keep`` (in use, being made)
    and those there before the rotation began (``known``) are left out."""
    before, kept = set(known or []), set(keep)
    ours = [key for key in keys if key in made and key not in kept]
    unknown = [key for key in keys if key not in made and key not in kept and key not in before]
    return Sweep(ours, unknown)


def key_ids_named(spec: dict[str, Any], secret_data: dict[str, dict[str, str]]) -> set[str]:
    """The public ids of the keys a spec names, without asking the provider: AWS's access
    key id (the spec's, else its Secret's ``accessKeyId``), Scaleway's access key, the
    ``private_key_id`` of a GCP key file. ``secret_data`` holds the referenced Secrets'
    base64 data by name (a Secret not there names nothing). Azure's client secrets carry
    no id: none."""
    provider = str(spec.get("provider", ""))
    if provider not in KEY_FIELDS:
        return set()
    id_field, ref_field = KEY_FIELDS[provider]
    block = spec.get(provider.lower()) or {}
    ref = block.get(ref_field) or {}
    data = secret_data.get(str(ref.get("name", ""))) or {}
    found = {str(block[id_field])} if id_field and block.get(id_field) else set()
    if provider == "AWS" and not found:
        found.add(_decoded(data.get("accessKeyId")).strip())
    elif provider == "GCP":
        try:
            key_file = json.loads(_decoded(data.get(str(ref.get("key", "")))) or "{}")
        except (ValueError, RecursionError):  # any tenant's Secret: nested deep on purpose
            key_file = {}
        if isinstance(key_file, dict) and key_file.get("private_key_id"):
            found.add(str(key_file["private_key_id"]))
    return {key for key in found if key}


def secrets_named(spec: dict[str, Any]) -> set[str]:
    """The Secrets a spec's provider block references, by name."""
    block = spec.get(str(spec.get("provider", "")).lower()) or {}
    return {str(ref["name"]) for field, ref in block.items()
            if field.endswith("Ref") and isinstance(ref, dict) and ref.get("name")}  # fmt: skip


def _decoded(value: str | None) -> str:
    try:
        return base64.b64decode(value or "", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


# Verification reasons that say a key will not work (Propagating, unreachable: it may).
REFUSED_FOR_GOOD = ("InvalidCredentials", "AccessDenied")


def stop_reason(spec: dict[str, Any], state: dict[str, Any],
                status: dict[str, Any]) -> str | None:  # fmt: skip
    """Why a rotation under way stops now; None while it goes on. A rotation already
    going back (``abandoned``) is not stopped again."""
    if state.get("abandoned") or state.get("phase", IDLE) in (IDLE, DELETING):
        return None
    if (spec.get("rotation") or {}).get("policy") != "Automatic":
        return "spec.rotation.policy is no longer Automatic"
    if state.get("replaces") and state["replaces"] != spec_key(spec):
        return "the spec names another key"
    if state.get("phase") == ROLLING_OUT and status.get("revision") != state.get("fromRevision"):
        verified: dict[str, Any] = next((c for c in status.get("conditions") or []
                         if c.get("type") == "Verified"), {})  # fmt: skip
        if verified.get("status") == "False" and verified.get("reason") in REFUSED_FOR_GOOD:
            return f"the provider refuses key {state.get('keyId')} ({verified['reason']})"
    return None


@dataclass(frozen=True)
class RolloutState:
    """What RollingOut waits for: the new key verified and deployed everywhere."""

    done: bool
    why: str
    verified: bool = True  # False: the new key's revision exists and did not verify


def rollout_state(status: dict[str, Any], from_revision: str | None,
                  behind: list[str] | None = None,
                  generation: int | None = None) -> RolloutState:  # fmt: skip
    """Whether the revision computed with the new key is verified and on every cluster.
    ``behind``: the bound clusters that report another revision, as the operator's own
    caches have them (the credential's conditions alone are status a tenant can write).
    ``generation``: the credential's; a status that describes an older spec is not
    the new key's yet."""
    revision = status.get("revision")
    if generation is not None and status.get("observedGeneration") != generation:
        return RolloutState(False, "waiting for the check of the current spec")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    verified, complete = conditions.get("Verified") or {}, conditions.get("RolloutComplete") or {}
    if not revision or revision == from_revision:
        return RolloutState(False, "waiting for the new key's revision to be computed")
    if verified.get("status") != "True":
        return RolloutState(False, f"the new key is not verified yet ({verified.get('reason')}: "
                                   f"{verified.get('message')})", verified=False)  # fmt: skip
    rollout = status.get("rollout") or {}
    if complete.get("status") != "True" or rollout.get("revision") != revision:
        return RolloutState(False, f"waiting for the rollout of revision {revision}: "
                                   f"{complete.get('message', 'not computed yet')}")  # fmt: skip
    if behind:
        clusters = ", ".join(sorted(behind)[:5])
        return RolloutState(False, f"waiting for the rollout of revision {revision}: "
                                   f"{clusters} report another revision")  # fmt: skip
    return RolloutState(True, f"every cluster uses revision {revision}")
