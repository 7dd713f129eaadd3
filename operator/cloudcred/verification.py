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
import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from pydantic import SecretStr

from cloudcred import boundary as boundaries
from cloudcred import conditions
from cloudcred.api.common import Provider, SecretKeyRef
from cloudcred.api.credential import CloudCredentialSpec, VerificationSpec
from cloudcred.config import Settings
from cloudcred.installation import Installation, record_principal
from cloudcred.kube import Kube, NotFound
from cloudcred.providers import aws, provider_module
from cloudcred.providers.base import (
    TRANSIENT_REASONS,
    KeyFacts,
    Reason,
    SecretValues,
    Verification,
    VerificationError,
    VerifyContext,
)
from cloudcred.revision import compute_revision
from cloudcred.rotation import effective_spec, rotated_key_age
from cloudcred.tasks import in_thread, where

_T = TypeVar("_T")

logger = logging.getLogger("cloudcred.verification")

# Condition types this check owns on a CloudCredential.
VERIFIED, ROTATION = "Verified", "RotationRecommended"

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


# The shortest periodic interval (the CRD refuses shorter ones; an object stored before
# that rule still gets no more than one check a minute).
MIN_INTERVAL_SECONDS = 60.0
_clamped_logged: set[tuple[str, str, str]] = set()


def periodic_interval(namespace: str, name: str, spec: dict[str, Any]) -> float:
    """Seconds between periodic checks of this credential: 0 for none, never less than
    ``MIN_INTERVAL_SECONDS`` (said once per credential and value in the log)."""
    text = verification_settings(spec).interval
    seconds = parse_interval(text)
    if 0 < seconds < MIN_INTERVAL_SECONDS:
        if (namespace, name, text) not in _clamped_logged:
            _clamped_logged.add((namespace, name, text))
            logger.warning("%s/%s: spec.verification.interval %s is under the 1m minimum: "
                           "checking every 1m", namespace, name, text)  # fmt: skip
        return MIN_INTERVAL_SECONDS
    return seconds


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
    The libraries have their own timeouts; this one catches whatever they miss. Any
    error the provider module did not turn into a VerificationError (a library's or our
    own surprise) becomes one, ``VerificationFailed``: never a stale ``True``, and only
    the class name (the text, and a traceback's locals, could quote secret data;
    ``where()`` logs the frames without a message)."""
    async with slots:
        try:
            return await in_thread(call, timeout * 2 + 5)
        except TimeoutError:
            raise VerificationError(
                Reason.PROVIDER_UNREACHABLE, f"{provider} did not answer within {timeout:g}s"
            ) from None
        except VerificationError:
            raise
        except Exception as error:
            kind = type(error).__name__
            logger.error("a %s call failed unexpectedly (%s)\n%s", provider, kind, where(error))
            raise VerificationError(
                Reason.VERIFICATION_FAILED,
                f"the check failed unexpectedly ({kind}): the operator's log says where",
            ) from None


async def with_external_id(
    kube: Kube, installation: Installation, context: VerifyContext, spec: CloudCredentialSpec
) -> VerifyContext:
    """The context with the ExternalId the operator determined for an AWS role (from
    the credential's namespace UID and name); other credentials need none."""
    if spec.aws is None or not spec.aws.role_arn:
        return context
    found = await kube.read_namespace(context.namespace)
    if found is None:
        raise VerificationError(
            Reason.SECRET_NOT_FOUND, f"namespace {context.namespace} does not exist"
        )
    return dataclasses.replace(
        context, external_id=installation.external_id(str(found.uid), context.name)
    )


async def trust_status(
    kube: Kube, installation: Installation, context: VerifyContext
) -> dict[str, str]:
    """What a role's trust policy must say, shown in ``status``: the ExternalId and the
    operator's own principal. Status is for reading only: ``cloudcred trust-policy``
    derives both from the installation (its key, and the principal recorded on its
    Secret here)."""
    if not context.external_id:
        return {}
    fields = {"externalId": context.external_id}
    principal = await asyncio.to_thread(aws.operator_principal, context)
    if principal:
        fields["operatorPrincipal"] = principal
        await record_principal(kube, installation, principal)
    return fields


# Caches.boundary_violation for the credential's namespace: (spec, the account STS
# reported for a static AWS key, the project_id of a GCP key) -> a message, or None.
BoundaryCheck = Callable[[CloudCredentialSpec, str | None, str | None], str | None]


def inside_boundary(
    boundary: BoundaryCheck | None,
    spec: CloudCredentialSpec,
    reported_account: str | None = None,
    gcp_email: str | None = None,
) -> None:
    """Raise ``OutsideBoundary`` when a CredentialBoundary of the namespace does not
    allow the credential."""
    message = boundary(spec, reported_account, gcp_email) if boundary else None
    if message:
        raise VerificationError(Reason.OUTSIDE_BOUNDARY, message)


def _gcp_key_email(spec: CloudCredentialSpec, secrets: SecretValues) -> str | None:
    if spec.gcp is None or spec.gcp.service_account_key_ref is None:
        return None
    return boundaries.gcp_key_email(next(iter(secrets.values()), None))


async def check_credential(
    body: dict[str, Any],
    kube: Kube,
    settings: Settings,
    slots: asyncio.Semaphore,
    previous_conditions: list[dict[str, Any]] | None,
    installation: Installation,
    boundary: BoundaryCheck | None = None,
    last_written: dict[str, Any] | None = None,
) -> CheckResult:
    metadata, old_status = body["metadata"], body.get("status") or {}
    namespace, name = metadata["namespace"], metadata["name"]
    generation = metadata.get("generation")
    # The key in effect: a key the operator rotated in (status.rotation) replaces the spec's.
    spec = CloudCredentialSpec.model_validate(effective_spec(body["spec"], old_status))
    module = provider_module(spec.provider)
    context = VerifyContext(namespace, name, settings.provider_settings())

    status: dict[str, Any] = {"observedGeneration": generation}
    # What a failed check keeps of the last good one: from the status this operator wrote
    # (``last_written``), not from the object, where a tenant with the status
    # subresource may have written an identity or a revision of their own. Only the
    # first check after a start, with nothing written yet, takes them from the object.
    earlier = old_status if last_written is None else last_written
    for kept in ("revision", "identity", "lastVerifiedTime", "keyCreatedTime", "key"):
        if earlier.get(kept):
            status[kept] = earlier[kept]
    public_id = module.public_id(spec)
    verification: Verification | None = None
    facts: KeyFacts | None = None
    try:
        context = await with_external_id(kube, installation, context, spec)
        status.update(await trust_status(kube, installation, context))
        secrets = await read_secrets(kube, namespace, module.secret_refs(spec))
        status["revision"] = compute_revision(spec, secrets, installation)
        # Before the provider is asked: a role outside is never assumed, a GCP key of
        # another project never sent.
        inside_boundary(boundary, spec, gcp_email=_gcp_key_email(spec, secrets))
        if spec.verification is not None and not spec.verification.enabled:
            raise VerificationError(
                Reason.VERIFICATION_DISABLED, "spec.verification.enabled is false"
            )
        verification = await ask_provider(
            partial(module.verify, spec, secrets, context), spec.provider,
            settings.verification_timeout, slots,
        )  # fmt: skip
        facts = await _key_facts(module, spec, secrets, context, settings, slots, verification)
        del secrets
        if verification is not None and spec.aws is not None and not spec.aws.role_arn:
            # A static key: its account as STS reported it. No success until allowed.
            answer, verification = verification, None
            inside_boundary(boundary, spec, reported_account=boundaries.arn_account(
                answer.identity) or "")  # fmt: skip
            verification = answer
        elif verification is not None and spec.gcp is not None:
            # A key: again on the service account the token exchange authenticated.
            answer, verification = verification, None
            inside_boundary(boundary, spec, gcp_email=answer.identity)
            verification = answer
        verified = (conditions.TRUE, Reason.VERIFIED.value,
                    f"{spec.provider} accepted the credential")  # fmt: skip
    except VerificationError as error:
        # Kubernetes API errors are not caught: kopf retries the check, the status stays.
        error = _propagating(error, body, settings)
        unknown = error.reason in (Reason.VERIFICATION_DISABLED, Reason.VERIFICATION_UNAVAILABLE,
                                   Reason.VERIFICATION_FAILED, Reason.PROPAGATING)  # fmt: skip
        verified = (conditions.UNKNOWN if unknown else conditions.FALSE, error.reason.value,
                    error.message)  # fmt: skip

    if facts is not None:
        status["key"] = key_status(facts, conditions.now())
    if verification is not None:
        status["identity"] = verification.identity
        status["lastVerifiedTime"] = conditions.timestamp(conditions.now())
        created = verification.key_created_time or (facts.created if facts else None)
        if created:
            status["keyCreatedTime"] = conditions.timestamp(created)
        public_id = public_id or (facts.key_id if facts else None) or verification.identity
    if public_id:
        status["publicId"] = public_id

    def make(type_: str, state: str, reason: str, message: str) -> dict[str, Any]:
        return conditions.condition(previous_conditions, type_, state, reason, message,
                                    generation)  # fmt: skip

    verified_condition = make(VERIFIED, *verified)
    owned = [verified_condition]
    rotation = _rotation(spec, verification, settings, make, facts)
    if rotation:
        owned.append(rotation)
    status["conditions"] = owned
    return CheckResult(
        status={k: v for k, v in status.items() if v is not None},
        verified=verified_condition,
        events=_events(previous_conditions, verified_condition, rotation),
    )


def _propagating(
    error: VerificationError, body: dict[str, Any], settings: Settings
) -> VerificationError:
    """A key a rotation made less than the provider's propagation window ago, refused as
    invalid: Propagating (retried with backoff) rather than InvalidCredentials."""
    if error.reason != Reason.INVALID_CREDENTIALS:
        return error
    spec = body.get("spec") or {}
    age = rotated_key_age(spec, body.get("status"), conditions.now())
    window = settings.propagation_window(str(spec.get("provider", "")))
    if age is None or age.total_seconds() >= window:
        return error
    return VerificationError(
        Reason.PROPAGATING,
        f"the provider does not accept the new key yet ({error.message}); made "
        f"{age.total_seconds():.0f}s ago, it may take up to {window:.0f}s to propagate",
    )


async def _key_facts(
    module: Any,
    spec: CloudCredentialSpec,
    secrets: SecretValues,
    context: VerifyContext,
    settings: Settings,
    slots: asyncio.Semaphore,
    verification: Verification | None,
) -> KeyFacts | None:
    """What the provider says about the static key in use; None for roles and workload
    identity, where the provider has no such facts, or may not be asked."""
    if verification is None or not verification.static_keys or not hasattr(module, "key_facts"):
        return None
    try:
        facts: KeyFacts | None = await ask_provider(
            partial(module.key_facts, spec, secrets, context), spec.provider,
            settings.verification_timeout, slots,
        )  # fmt: skip
    except VerificationError:
        return None  # the facts are extra: their absence is not a failed check
    return facts


def key_status(facts: KeyFacts, now: datetime) -> dict[str, Any]:
    """``status.key`` from the provider's facts."""
    status: dict[str, Any] = {"id": facts.key_id}
    for name, moment in (("createdTime", facts.created), ("lastUsedTime", facts.last_used),
                         ("expiryTime", facts.expires)):  # fmt: skip
        if moment is not None:
            status[name] = conditions.timestamp(moment)
    if facts.last_used is None and facts.created is not None:
        status["neverUsedDays"] = max((now - facts.created).days, 0)
    return status


def _rotation(
    spec: CloudCredentialSpec,
    verification: Verification | None,
    settings: Settings,
    make: Any,
    facts: KeyFacts | None = None,
) -> dict[str, Any] | None:
    if verification is None or not verification.static_keys:
        return None
    now = conditions.now()
    expires = facts.expires if facts else None
    if expires is not None and expires - now < timedelta(days=settings.key_expiry_warning_days):
        left = max((expires - now).days, 0)
        when = conditions.timestamp(expires)
        return dict(make(ROTATION, conditions.TRUE, "ExpiringSoon",
                         f"{spec.provider} stops accepting the key on {when} (in {left} "
                         "days): rotate it"))  # fmt: skip
    automatic = spec.rotation is not None and spec.rotation.policy == "Automatic"
    limit = timedelta(days=settings.key_age_limit_days)
    created: datetime | None = verification.key_created_time or (facts.created if facts else None)
    if not automatic and created is not None and now - created > limit:
        age = (now - created).days
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


def check_retry_delay(retry: int, settings: Settings) -> float:
    """Backoff for a check that failed transiently: once after 5 s (a Secret applied
    together with its credential, a blip), then never under the 1-minute floor of
    periodic checks: 60 s, 120 s, 240 s, ... up to retry_max_delay (default 300 s). What a tenant's
    broken credential costs the API server and the provider stays bounded."""
    if retry == 0:
        return min(5.0, settings.retry_max_delay)
    # A retry_max_delay under a minute is the administrator's choice (tests use one).
    return float(min(MIN_INTERVAL_SECONDS * 2 ** min(retry - 1, 10), settings.retry_max_delay))


def propagating_retry_delay(retry: int) -> float:
    """Backoff for a key a rotation has just made that the provider does not accept yet:
    5 s, 10 s, 20 s, 40 s, then every minute until its propagation window ends. Most keys
    work within seconds, and the rollout waits for the check. Below the 1-minute floor on
    purpose: only the operator's own new key is ever Propagating, and only for a bounded
    window, so a tenant cannot turn this into a stream of provider calls."""
    return float(min(5 * 2 ** min(retry, 10), MIN_INTERVAL_SECONDS))
