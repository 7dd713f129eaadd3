"""The small interface every provider module implements.

A provider module exposes five plain functions:

- ``public_id(spec) -> str``: the public part shown in ``status.publicId``;
- ``secret_refs(spec) -> dict[str, SecretKeyRef]``: the Secret keys it needs, by role
  (for example ``{"secretAccessKey": ref}``);
- ``verify(spec, secrets, context) -> Verification``: asks the provider, *blocking*
  (the operator runs it in a worker thread with a timeout), and raises
  ``VerificationError`` with a reason from ``Reason`` when the answer is no;
- ``check_region(spec, secrets, region, context) -> str | None``: the deploy step's check
  that the credential works for a cluster in ``region``; blocking, raises like
  ``verify``. Returns what the provider reported of the identity where a boundary needs
  it (the ARN of a static AWS key, from STS), so the deploy step decides on its own
  answer, never on ``status``.
- ``delivery(spec, secrets, region, context) -> Delivery``: the credential in the
  provider's standard form for a cluster's deployer (``spec.credentialsSecret``);
  blocking (an AWS role is assumed for short-lived session credentials).

Providers that can check permissions also expose
``check_permissions(spec, secrets, context, needs) -> PermissionAnswer``: blocking, acting
with the credential's own identity, ``needs`` the provider's block of a PermissionSet
(``api/permissions.py``); it raises ``VerificationError`` when the provider does not
answer (``ACCESS_DENIED``: the identity may not ask).

Providers whose static keys the operator can rotate (``spec.rotation``) also expose, all
blocking and all acting with the credential's own identity (``secrets``):

- ``list_keys(spec, secrets, context) -> list[KeyFacts]``: every key of that identity
  (the AWS IAM user, the GCP service account, the Azure application, the Scaleway
  API key's bearer), with what the provider says of each;
- ``create_key(spec, secrets, context) -> NewKey``: a new key for that identity;
- ``deactivate_key(spec, secrets, context, key_id) -> bool``: make a key unusable but
  keep it (AWS: Inactive); False where the provider has no such state;
- ``delete_key(spec, secrets, context, key_id) -> None``: delete a key; a key already
  gone is not an error;
- ``key_facts(spec, secrets, context) -> KeyFacts | None``: the facts of the key in use.

They raise ``RotationError`` with a reason from ``RotationReason``.

Secret values arrive as ``SecretStr`` and must never reach a log line, an exception
message or a return value. Endpoints come only from ``ProviderSettings`` (operator
configuration) or the library's own standard settings, never from a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import SecretStr


class Reason(StrEnum):
    """Reasons of the ``Verified`` condition (documented in the README)."""

    VERIFIED = "Verified"
    INVALID_CREDENTIALS = "InvalidCredentials"
    ACCESS_DENIED = "AccessDenied"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    INVALID_SECRET_DATA = "InvalidSecretData"
    PROVIDER_UNREACHABLE = "ProviderUnreachable"
    # A key a rotation made moments ago, refused as invalid within the provider's
    # propagation window (CLOUDCRED_PROPAGATION_*): retried with backoff, not a failure.
    PROPAGATING = "Propagating"
    # The provider answered and refused the request itself (a malformed parameter, a
    # policy it will not take): asking again gives the same answer until the spec or
    # the Secret changes, so it is not retried with backoff like ProviderUnreachable.
    PROVIDER_REFUSED = "ProviderRefused"
    # The check itself failed (an error the operator did not expect): Unknown, never a
    # stale True. Only the error's class name is shown; its text could quote a secret.
    VERIFICATION_FAILED = "VerificationFailed"
    VERIFICATION_UNAVAILABLE = "VerificationUnavailable"
    VERIFICATION_DISABLED = "VerificationDisabled"
    # A CredentialBoundary of the namespace does not allow the credential's account or
    # identity: the provider is not asked (a role outside is never assumed). Not
    # transient: it changes when the spec or a boundary changes, which re-checks it.
    OUTSIDE_BOUNDARY = "OutsideBoundary"


# Reasons that may clear up by themselves (network, a Secret created later): the
# operator retries them with backoff.
TRANSIENT_REASONS = {Reason.PROVIDER_UNREACHABLE, Reason.SECRET_NOT_FOUND, Reason.PROPAGATING}


class VerificationError(Exception):
    """The provider (or the Secret) said no. ``message`` is shown to users: it must be
    built from error codes and public fields only, never from secret values."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Verification:
    """What a successful check found."""

    identity: str
    key_created_time: datetime | None = None
    static_keys: bool = False  # a long-lived key where a role or federation would do


@dataclass(frozen=True)
class PermissionAnswer:
    """What the provider said of one PermissionSet's block (``check_permissions``): how
    many needs it checked, and which are missing, sorted."""

    checked: int
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """What a deployer gets: Secret keys and values (standard file names and environment
    variable names), and when they expire (session credentials only)."""

    data: dict[str, SecretStr]
    expires: datetime | None = None


@dataclass(frozen=True)
class ProviderSettings:
    """Endpoints and limits from the operator's configuration (never from a credential).

    ``None`` means the library's own default, which also honours the library's standard
    settings (``AWS_ENDPOINT_URL``, ``REQUESTS_CA_BUNDLE``, ...).
    """

    timeout_seconds: float = 10.0
    aws_region: str = "us-east-1"
    gcp_token_uri: str = "https://oauth2.googleapis.com/token"
    gcp_iam_url: str = "https://iam.googleapis.com"  # service-account keys (rotation)
    # projects.testIamPermissions (permission checks)
    gcp_resource_manager_url: str = "https://cloudresourcemanager.googleapis.com"
    # Microsoft.Authorization permissions (permission checks); its token scope is /.default
    azure_management_url: str = "https://management.azure.com"
    azure_authority_host: str | None = None
    azure_graph_url: str = "https://graph.microsoft.com"  # Azure secret rotation
    scaleway_api_url: str | None = None
    # Object Storage (S3-compatible), where a Scaleway key pair is proved to be one key
    # (a request signed with both); the region its signatures name.
    scaleway_s3_url: str = "https://s3.fr-par.scw.cloud"
    scaleway_s3_region: str = "fr-par"
    session_seconds: int = 3600  # lifetime of delivered AWS session credentials
    aws_principal_arn: str | None = None  # the operator's principal, when configured


@dataclass(frozen=True)
class VerifyContext:
    """Who is being checked (for session names, session tags and messages) and with
    what settings. ``namespace`` and ``name`` are the credential's; ``cluster`` is the
    (namespace, name) of the cluster a delivery is for; ``external_id`` the one the
    operator determined for an AWS role (``installation.py``), never the tenant's."""

    namespace: str
    name: str
    settings: ProviderSettings = field(default_factory=ProviderSettings)
    external_id: str | None = None
    cluster: tuple[str, str] | None = None
    # Automatic rotation: an admin-owned identity that manages the key's keys in its
    # place (a CredentialBoundary's rotation identity), by the provider's role names.
    rotation_identity: dict[str, SecretStr] | None = field(default=None, repr=False)


SecretValues = dict[str, SecretStr]


@dataclass(frozen=True)
class KeyFacts:
    """What the provider says about one key: its public id, when it was made, last used
    and expires (None where the provider does not say), and whether it still works."""

    key_id: str
    created: datetime | None = None
    last_used: datetime | None = None
    expires: datetime | None = None
    active: bool = True


@dataclass(frozen=True)
class NewKey:
    """A key the provider has just made. ``secret_data`` holds it under the same roles as
    ``secret_refs`` (e.g. ``{"secretAccessKey": ...}``): the operator writes each value
    under the Secret key the spec's reference names."""

    facts: KeyFacts
    secret_data: dict[str, SecretStr]


class RotationReason(StrEnum):
    """Why a rotation step failed (the ``RotationFailed`` Event and ``status.rotation``)."""

    KEY_LIMIT_REACHED = "KeyLimitReached"  # e.g. AWS's two access keys per user
    ACCESS_DENIED = "AccessDenied"  # the identity may not manage its own keys
    PROVIDER_REFUSED = "ProviderRefused"
    PROVIDER_UNREACHABLE = "ProviderUnreachable"
    NOT_SUPPORTED = "RotationNotSupported"


class RotationError(Exception):
    """A rotation step failed. ``message`` is shown to users: error codes and public
    fields only, never a secret value."""

    def __init__(self, reason: RotationReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
