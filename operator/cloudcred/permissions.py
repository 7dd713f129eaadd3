"""Permission checks: which PermissionSets a credential is checked against, and what
the answers add up to. Plain functions, no I/O (the reconciler is
``controllers/permissions.py``, the provider calls ``providers/*.check_permissions``).

A credential is checked against the sets it names and those its bound Clusters name,
each through the block of its own provider. Per set the answer is True (every need
allowed), False (some missing: listed) or Unknown (the check could not say, and why:
never a guess). The condition ``PermissionsSufficient`` sums them up: False when any
set is short, else Unknown when any could not be checked, else True.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cloudcred import conditions
from cloudcred.api.permissions import (
    MAX_LISTED_MISSING,
    MAX_LISTED_MISSING_TOTAL,
    MAX_NEED_LENGTH,
    MAX_REPORTED_SETS,
    PermissionSetSpec,
)
from cloudcred.providers.base import PermissionAnswer, Reason, VerificationError

logger = logging.getLogger("cloudcred.permissions")

PERMISSIONS_SUFFICIENT = "PermissionsSufficient"
# Reasons of PermissionsSufficient and of each set's result (status.permissions.sets).
SUFFICIENT = "Sufficient"
MISSING = "MissingPermissions"
CHECK_NOT_ALLOWED = "CheckNotAllowed"  # the identity may not ask (AccessDenied on the check)
NOT_VERIFIED = "CredentialNotVerified"  # no check before the credential itself verified
SET_NOT_FOUND = "PermissionSetNotFound"
SET_INVALID = "PermissionSetInvalid"  # stored under a schema this version cannot read
UNREACHABLE = "ProviderUnreachable"
CHECK_FAILED = "CheckFailed"
CHECK_UNAVAILABLE = "CheckUnavailable"  # no permission check for this provider here
TRANSIENT = {UNREACHABLE}
NAMES_IN_MESSAGE = 10  # missing needs named in the condition's message


@dataclass(frozen=True)
class PermissionSetInfo:
    """A PermissionSet as the operator keeps it: the spec, or why it cannot be read."""

    name: str
    spec: PermissionSetSpec | None
    problem: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PermissionSetInfo:
        name = str(body["metadata"]["name"])
        try:
            return cls(name, PermissionSetSpec.model_validate(body.get("spec") or {}))
        except ValidationError as error:
            # Stored under another version's schema: said, never guessed around.
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in error.errors())
            logger.error("PermissionSet %s cannot be read by this operator version (%s)",
                         name, fields)  # fmt: skip
            return cls(name, None, f"this operator version cannot read it ({fields})")

    def needs(self, provider: str) -> Any:
        """The block of ``provider`` (an Aws/Gcp/Azure/ScalewayPermissions), or None."""
        return getattr(self.spec, provider.lower(), None) if self.spec else None


CHECKING = "CheckingPermissions"  # a cluster's hold while its sets are not checked yet


def cluster_hold(credential: Any, cluster_sets: Iterable[str]) -> tuple[str, str] | None:
    """Why a bound cluster may not deploy now, for its sets and its credential's own:
    (``MissingPermissions``, what is missing) when the provider said a need is not
    allowed, (``CheckingPermissions``, ...) while the credential's current revision has
    no answer for one of them yet; None otherwise (an Unknown answer does not hold a
    deployment: it says why it could not check). ``credential``: a ``CredentialInfo``."""
    names = set(cluster_sets) | set(credential.permission_sets)
    if not names:
        return None
    revision, verdicts = credential.permission_report
    answered = {name: (verdict, message) for name, verdict, message in verdicts}
    short = [f"{answered[n][1]} (PermissionSet {n})" for n in sorted(names)
             if n in answered and answered[n][0] == conditions.FALSE]  # fmt: skip
    if short and revision == credential.revision:
        return MISSING, "; ".join(short)
    waiting = sorted(n for n in names if n not in answered)
    if len(answered) >= MAX_REPORTED_SETS:
        waiting = []  # past the sets status has room for: not checked, and not waited for
    if revision != credential.revision or waiting:
        which = ", ".join(waiting or sorted(names))
        return CHECKING, (f"waiting for the permission check of revision {credential.revision} "
                          f"(PermissionSet {which})")  # fmt: skip
    return None


def own_shortfall(credential: Any) -> str | None:
    """What the credential's own sets (``spec.permissionSets``) miss at its current
    revision, or None: its summary is then Stalled (MissingPermissions)."""
    revision, verdicts = credential.permission_report
    if revision != credential.revision:
        return None
    short = [f"{message} (PermissionSet {name})" for name, verdict, message in verdicts
             if verdict == conditions.FALSE and name in credential.permission_sets]  # fmt: skip
    return "; ".join(short) or None


def needed_sets(own: Iterable[str], clusters: Iterable[Iterable[str]]) -> list[str]:
    """The sets a credential is checked against: its own and its bound clusters', sorted,
    at most ``MAX_REPORTED_SETS`` (status has room for that many)."""
    names = set(own)
    for sets in clusters:
        names.update(sets)
    return sorted(names)[:MAX_REPORTED_SETS]


def answered(name: str, answer: PermissionAnswer) -> dict[str, Any]:
    """A set's result (``status.permissions.sets[]``) from the provider's answer."""
    missing = list(answer.missing)
    result: dict[str, Any]
    if missing:
        result = {"name": name, "sufficient": conditions.FALSE, "reason": MISSING,
                  "message": summary(missing, answer.checked)}  # fmt: skip
    else:
        result = {"name": name, "sufficient": conditions.TRUE, "reason": SUFFICIENT,
                  "message": f"all {answer.checked} allowed"}  # fmt: skip
    result.update(checked=answer.checked, missingCount=len(missing))
    if missing:
        result["missing"] = [_cut(need) for need in missing[:MAX_LISTED_MISSING]]
    return result


def _cut(need: str) -> str:
    return need if len(need) <= MAX_NEED_LENGTH else need[: MAX_NEED_LENGTH - 3] + "..."


def bounded(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sets' results with at most ``MAX_LISTED_MISSING_TOTAL`` missing needs listed in
    all (in set order; each ``missingCount`` stays exact), so status stays small."""
    room = MAX_LISTED_MISSING_TOTAL
    kept = []
    for result in results:
        listed = result.get("missing") or []
        if len(listed) > room:
            result = {**result, "missing": listed[:room]}
            if not room:
                result.pop("missing")
        room -= len(result.get("missing") or [])
        kept.append(result)
    return kept


def unknown(name: str, reason: str, message: str) -> dict[str, Any]:
    return {"name": name, "sufficient": conditions.UNKNOWN, "reason": reason,
            "message": message[:1024], "checked": 0, "missingCount": 0}  # fmt: skip


def failed(name: str, error: VerificationError, provider: str) -> dict[str, Any]:
    """A set whose check did not answer: Unknown, with why (never True or False)."""
    if error.reason == Reason.ACCESS_DENIED:
        return unknown(name, CHECK_NOT_ALLOWED, f"the credential may not ask {provider} about "
                       f"its own permissions: {error.message}")  # fmt: skip
    if error.reason in (Reason.PROVIDER_UNREACHABLE, Reason.PROPAGATING):
        return unknown(name, UNREACHABLE, error.message)
    if error.reason == Reason.VERIFICATION_UNAVAILABLE:
        return unknown(name, CHECK_UNAVAILABLE, error.message)
    return unknown(name, CHECK_FAILED, error.message)


def summary(missing: list[str], checked: int) -> str:
    """'missing 3 of 41: eks:CreateCluster, iam:PassRole, ...' (at most
    ``NAMES_IN_MESSAGE`` names)."""
    names = ", ".join(missing[:NAMES_IN_MESSAGE])
    more = ", ..." if len(missing) > NAMES_IN_MESSAGE else ""
    return f"missing {len(missing)} of {checked}: {names}{more}"


def verdict(results: list[dict[str, Any]]) -> tuple[str, str, str]:
    """PermissionsSufficient's (status, reason, message) from the sets' results."""
    short = [r for r in results if r["sufficient"] == conditions.FALSE]
    if short:
        missing = sorted({need for r in short for need in r.get("missing") or ()})
        count = sum(r["missingCount"] for r in short)
        checked = sum(r["checked"] for r in results)
        names = ", ".join(missing[:NAMES_IN_MESSAGE])
        more = ", ..." if count > NAMES_IN_MESSAGE else ""
        sets = ", ".join(r["name"] for r in short)
        return (conditions.FALSE, MISSING,
                f"missing {count} of {checked}: {names}{more} (PermissionSet {sets})")  # fmt: skip
    unsure = [r for r in results if r["sufficient"] == conditions.UNKNOWN]
    if unsure:
        first = unsure[0]
        return (conditions.UNKNOWN, first["reason"],
                f"PermissionSet {first['name']}: {first['message']}")  # fmt: skip
    checked = sum(r["checked"] for r in results)
    sets = ", ".join(r["name"] for r in results)
    return conditions.TRUE, SUFFICIENT, f"all {checked} allowed (PermissionSet {sets})"
