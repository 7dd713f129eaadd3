"""Checking a CloudCredential with its provider and describing the result.

``check_credential`` is the whole job of the verification handlers, as a plain
function: read the referenced Secrets, compute the revision, ask the provider (in a
worker thread, bounded in time and in concurrency), and return the status fields and
conditions this check owns, plus the Events worth posting. Nothing here holds a
secret value longer than the check, and no message carries one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from pydantic import SecretStr

from cloudcred import conditions
from cloudcred.api.common import Provider, SecretKeyRef
from cloudcred.api.credential import CloudCredentialSpec, VerificationSpec
from cloudcred.config import Settings
from cloudcred.kube import Kube, NotFound
from cloudcred.providers import provider_module
from cloudcred.providers.base import (
    TRANSIENT_REASONS,
    Reason,
    SecretValues,
    Verification,
    VerificationError,
    VerifyContext,
)
from cloudcred.revision import compute_revision

_T = TypeVar("_T")

# Condition types this check owns on a CloudCredential.
VERIFIED, READY, ROTATION = "Verified", "Ready", "RotationRecommended"

# What a long-lived key should become instead, where the provider has a better way.
_BETTER_THAN_STATIC_KEYS = {
    Provider.AWS: "an IAM role (spec.aws.roleArn) needs no long-lived key",
    Provider.GCP: "workload identity federation needs no long-lived key",
    Provider.AZURE: "workload identity federation needs no long-lived secret",
}

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_interval(value: str) -> float:
    """Seconds in a Go-style duration ("90s", "1h30m"); "0" is 0 (no periodic check)."""
    if value == "0":
        return 0.0
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def verification_settings(spec: dict[str, Any]) -> VerificationSpec:
    return VerificationSpec.model_validate(spec.get("verification") or {})


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class CheckResult:
    """The status fields and conditions the verification owns, and what to announce."""

    status: dict[str, Any]
    verified: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    @property
    def transient(self) -> bool:
        return self.verified["reason"] in TRANSIENT_REASONS


async def read_secrets(kube: Kube, namespace: str, refs: dict[str, SecretKeyRef]) -> SecretValues:
    """The referenced values, each Secret read once. Raises VerificationError with
    SecretNotFound, SecretKeyMissing or InvalidSecretData."""
    values: SecretValues = {}
    data_by_secret: dict[str, dict[str, str]] = {}
    for role, ref in refs.items():
        if ref.name not in data_by_secret:
            try:
                data_by_secret[ref.name] = await kube.read_secret_data(namespace, ref.name)
            except NotFound:
                raise VerificationError(
                    Reason.SECRET_NOT_FOUND, f"Secret {namespace}/{ref.name} does not exist"
                ) from None
        encoded = data_by_secret[ref.name].get(ref.key)
        if encoded is None:
            raise VerificationError(
                Reason.SECRET_KEY_MISSING, f"Secret {namespace}/{ref.name} has no key {ref.key!r}"
            )
        try:
            values[role] = SecretStr(base64.b64decode(encoded, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            raise VerificationError(
                Reason.INVALID_SECRET_DATA,
                f"key {ref.key!r} of Secret {namespace}/{ref.name} is not UTF-8 text",
            ) from None
        if not values[role].get_secret_value().strip():
            raise VerificationError(
                Reason.INVALID_SECRET_DATA, f"key {ref.key!r} of Secret {namespace}/{ref.name} "
                "is empty",
            )  # fmt: skip
    return values


async def ask_provider(
    call: Callable[[], _T], provider: str, timeout: float, slots: asyncio.Semaphore
) -> _T:
    """Run a blocking provider call in a worker thread, at most ``len(slots)`` at a time.
    The libraries have their own timeouts; this one catches whatever they miss."""
    async with slots:
        try:
            return await asyncio.wait_for(asyncio.to_thread(call), timeout * 2 + 5)
        except TimeoutError:
            raise VerificationError(
                Reason.PROVIDER_UNREACHABLE, f"{provider} did not answer within {timeout:g}s"
            ) from None


async def check_credential(
    body: dict[str, Any],
    kube: Kube,
    settings: Settings,
    slots: asyncio.Semaphore,
    previous_conditions: list[dict[str, Any]] | None,
) -> CheckResult:
    metadata, old_status = body["metadata"], body.get("status") or {}
    namespace, name = metadata["namespace"], metadata["name"]
    generation = metadata.get("generation")
    spec = CloudCredentialSpec.model_validate(body["spec"])
    module = provider_module(spec.provider)
    context = VerifyContext(namespace, name, settings.provider_settings())

    status: dict[str, Any] = {"observedGeneration": generation}
    for kept in ("revision", "identity", "lastVerifiedTime", "keyCreatedTime"):
        if old_status.get(kept):
            status[kept] = old_status[kept]
    public_id = module.public_id(spec)
    verification: Verification | None = None
    try:
        secrets = await read_secrets(kube, namespace, module.secret_refs(spec))
        status["revision"] = compute_revision(spec, secrets)
        if spec.verification is not None and not spec.verification.enabled:
            raise VerificationError(
                Reason.VERIFICATION_DISABLED, "spec.verification.enabled is false"
            )
        verification = await ask_provider(
            partial(module.verify, spec, secrets, context), spec.provider,
            settings.verification_timeout, slots,
        )  # fmt: skip
        del secrets
        verified = (conditions.TRUE, Reason.VERIFIED.value,
                    f"{spec.provider} accepted the credential")  # fmt: skip
    except VerificationError as error:
        unknown = error.reason in (Reason.VERIFICATION_DISABLED, Reason.VERIFICATION_UNAVAILABLE)
        verified = (conditions.UNKNOWN if unknown else conditions.FALSE, error.reason.value,
                    error.message)  # fmt: skip

    if verification is not None:
        status["identity"] = verification.identity
        status["lastVerifiedTime"] = conditions.timestamp(conditions.now())
        if verification.key_created_time:
            status["keyCreatedTime"] = conditions.timestamp(verification.key_created_time)
        public_id = public_id or verification.identity
    if public_id:
        status["publicId"] = public_id

    def make(type_: str, state: str, reason: str, message: str) -> dict[str, Any]:
        return conditions.condition(previous_conditions, type_, state, reason, message,
                                    generation)  # fmt: skip

    verified_condition = make(VERIFIED, *verified)
    owned = [verified_condition, _ready(make, verified_condition)]
    rotation = _rotation(spec, verification, settings, make)
    if rotation:
        owned.append(rotation)
    status["conditions"] = owned
    return CheckResult(
        status={k: v for k, v in status.items() if v is not None},
        verified=verified_condition,
        events=_events(previous_conditions, verified_condition, rotation),
    )


def _ready(make: Any, verified: dict[str, Any]) -> dict[str, Any]:
    """The summary for kstatus, Flux and Argo CD: ready when verified, or when the user
    turned verification off; otherwise it carries the failing reason."""
    if verified["status"] == conditions.TRUE or verified["reason"] == Reason.VERIFICATION_DISABLED:
        return dict(make(READY, conditions.TRUE, "Ready", verified["message"]))
    state = conditions.UNKNOWN if verified["status"] == conditions.UNKNOWN else conditions.FALSE
    return dict(make(READY, state, verified["reason"], verified["message"]))


def _rotation(
    spec: CloudCredentialSpec,
    verification: Verification | None,
    settings: Settings,
    make: Any,
) -> dict[str, Any] | None:
    if verification is None or not verification.static_keys:
        return None
    limit = timedelta(days=settings.key_age_limit_days)
    created: datetime | None = verification.key_created_time
    if created is not None and conditions.now() - created > limit:
        age = (conditions.now() - created).days
        return dict(make(ROTATION, conditions.TRUE, "KeyAge",
                         f"the key is {age} days old, over the {limit.days}-day limit: create a "
                         "new key, update the Secret, then delete the old key"))  # fmt: skip
    better = _BETTER_THAN_STATIC_KEYS.get(Provider(spec.provider))
    if better is None:
        return None
    return dict(make(ROTATION, conditions.TRUE, "StaticKeys",
                     f"long-lived keys are less safe: {better}"))  # fmt: skip


def _events(
    previous: list[dict[str, Any]] | None,
    verified: dict[str, Any],
    rotation: dict[str, Any] | None,
) -> list[Event]:
    """Events only for changes, never for a periodic check that found the same."""
    events = []
    if conditions.changed(conditions.find(previous, VERIFIED), verified):
        kind = "Normal" if verified["status"] == conditions.TRUE else "Warning"
        if verified["reason"] == Reason.VERIFICATION_DISABLED:
            kind = "Normal"
        events.append(Event(kind, verified["reason"], verified["message"]))
    if rotation and conditions.changed(conditions.find(previous, ROTATION), rotation):
        events.append(Event("Warning", "RotationRecommended", rotation["message"]))
    return events


def retry_delay(retry: int, settings: Settings) -> float:
    """Backoff for transient failures: 5 s, 10 s, 20 s, ... up to retry_max_delay."""
    return float(min(5 * 2 ** min(retry, 10), settings.retry_max_delay))
