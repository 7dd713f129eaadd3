"""Azure: checks a service principal's client secret with Microsoft Entra ID.

The check asks Entra ID for an Azure Resource Manager token with azure-identity's
``ClientSecretCredential`` (client-credentials grant). A token means the tenant, the
application and the secret are all valid; whether the principal may read the
subscription is a role assignment in Azure RBAC, which this check does not look at.

Endpoints: ``ProviderSettings.azure_authority_host`` when the operator's configuration sets
one (sovereign clouds, Azure Stack, a test endpoint), otherwise the library's default,
which also honours its standard ``AZURE_AUTHORITY_HOST`` variable. TLS trust follows the
library's transport (requests): the system store, or ``REQUESTS_CA_BUNDLE``.

The client secret is POSTed to the token endpoint, and an error body could in principle
echo it, so messages are built from Entra's ``AADSTS`` error codes, OAuth error names and
public fields (client id, tenant id, authority host), never from an exception's text.

Rotation (``spec.rotation``) manages the application's client secrets through Microsoft
Graph (``addPassword``, ``removePassword``, the application's ``passwordCredentials``),
with a token the credential's own secret gets, sent through azure-core's pipeline. Graph
is at ``ProviderSettings.azure_graph_url``; its token scope is that URL's ``/.default``
(so sovereign clouds work). Messages carry Graph's error codes and public ids only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import ssl
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, quote_plus

from pydantic import SecretStr

from cloudcred import conditions
from cloudcred.api.common import SecretKeyRef
from cloudcred.api.credential import AzureSpec, CloudCredentialSpec
from cloudcred.api.permissions import AzurePermissions
from cloudcred.providers.base import (
    Delivery,
    KeyFacts,
    NewKey,
    PermissionAnswer,
    ProviderSettings,
    Reason,
    RotationError,
    RotationReason,
    SecretValues,
    Verification,
    VerificationError,
    VerifyContext,
)

if TYPE_CHECKING:
    from azure.core import PipelineClient
    from azure.core.rest import HttpRequest, HttpResponse

CLIENT_SECRET = "clientSecret"  # the role of the Secret key in secret_refs, not a value
IDENTITY_CLIENT_ID = "clientId"  # a rotation identity's application (client) id
# The keys of a rotation identity's Secret (CredentialBoundary.spec.azure), by role.
ROTATION_IDENTITY_KEYS = {IDENTITY_CLIENT_ID: "clientId", CLIENT_SECRET: "clientSecret"}
# The token asked for: Azure Resource Manager, the API the clusters are managed through.
ARM_SCOPE = "https://management.azure.com/.default"

# AADSTS codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes)
# and what they mean for the credential. Codes not listed here still appear in messages.
_AADSTS: dict[str, tuple[Reason, str]] = {
    "7000215": (Reason.INVALID_CREDENTIALS, "the client secret is not valid"),
    "7000222": (Reason.INVALID_CREDENTIALS, "the client secret has expired"),
    "700016": (Reason.INVALID_CREDENTIALS, "no application with this client id in the tenant"),
    "7000112": (Reason.INVALID_CREDENTIALS, "the application is disabled"),
    "7000229": (Reason.INVALID_CREDENTIALS, "the application has no service principal here"),
    "90002": (Reason.INVALID_CREDENTIALS, "the tenant does not exist"),
    "900023": (Reason.INVALID_CREDENTIALS, "the tenant id is not valid"),
    "50105": (Reason.ACCESS_DENIED, "the service principal is not assigned a required role"),
    "53003": (Reason.ACCESS_DENIED, "blocked by Conditional Access"),
    "65001": (Reason.ACCESS_DENIED, "consent to the application was not granted"),
    "500011": (Reason.ACCESS_DENIED, "Azure Resource Manager is not available in the tenant"),
    "90006": (Reason.PROVIDER_UNREACHABLE, "Entra ID is temporarily unavailable"),
    "90033": (Reason.PROVIDER_UNREACHABLE, "Entra ID is temporarily unavailable"),
}
# OAuth 2.0 error names (RFC 6749 5.2, plus Entra's), used when no AADSTS code is known.
_OAUTH_ERRORS: dict[str, Reason] = {
    "invalid_client": Reason.INVALID_CREDENTIALS,
    "unauthorized_client": Reason.INVALID_CREDENTIALS,
    "invalid_grant": Reason.INVALID_CREDENTIALS,
    "invalid_request": Reason.INVALID_CREDENTIALS,
    "invalid_tenant": Reason.INVALID_CREDENTIALS,
    "access_denied": Reason.ACCESS_DENIED,
    "invalid_scope": Reason.ACCESS_DENIED,
    "interaction_required": Reason.ACCESS_DENIED,
    "temporarily_unavailable": Reason.PROVIDER_UNREACHABLE,
    "server_error": Reason.PROVIDER_UNREACHABLE,
}
_AADSTS_CODE = re.compile(r"\bAADSTS(\d{4,9})\b")
_OAUTH_ERROR = re.compile(r"\b(" + "|".join(_OAUTH_ERRORS) + r")\b")
# MSAL's message for a 5xx from the token endpoint ("HTTP Error: 503").
_HTTP_ERROR = re.compile(r"\bHTTP Error: (\d{3})\b")
# Claims copied into status.identity must look like ids (the token is not verified here).
_SAFE_CLAIM = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


# The secret being verified in this thread (verify is blocking and runs in a worker
# thread, and log records are filtered in the thread that emits them).
_VERIFYING: ContextVar[str | None] = ContextVar("cloudcred_azure_verifying", default=None)


class _RedactErrorBodies(logging.Filter):
    """Two library log lines can carry an error body, which could echo the POSTed secret:
    azure-identity logs every failed ``get_token`` at WARNING with the exception's text
    (the token endpoint's ``error_description``), and MSAL logs a token response that is
    not JSON at ERROR, body included. Keep the lines but name exceptions by their type,
    withhold every text argument (a body can echo the secret in any encoding: form-,
    URL-, JSON-escaped), drop tracebacks (they hold the same text), and mask the secret
    and its encodings in the message itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        secret = _VERIFYING.get()
        if isinstance(record.args, tuple):
            record.args = tuple(_withhold(arg) for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = _mask(record.msg, secret)
        record.exc_info = None
        record.exc_text = None
        return True


def _withhold(value: object) -> object:
    if isinstance(value, BaseException):
        return type(value).__name__
    if isinstance(value, (str, bytes)):
        return f"<{len(value)} characters withheld>"
    return value


def _mask(text: str, secret: str | None) -> str:
    """``text`` without the secret, raw or encoded as a form or URL or JSON would."""
    if not secret:
        return text
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in set(forms)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def _install_log_filters() -> None:
    # A filter applies to records of its own logger only (not its children): name both.
    for name in ("azure.identity._internal.get_token_mixin", "msal.oauth2cli.oauth2"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactErrorBodies) for f in logger.filters):
            logger.addFilter(_RedactErrorBodies())


_install_log_filters()


def _azure(spec: CloudCredentialSpec) -> AzureSpec:
    if spec.azure is None:
        raise ValueError("not an Azure credential: spec.azure is missing")
    return spec.azure


def public_id(spec: CloudCredentialSpec) -> str:
    """The application (client) id."""
    return _azure(spec).client_id


def secret_refs(spec: CloudCredentialSpec) -> dict[str, SecretKeyRef]:
    """The one Secret key needed: the client secret."""
    return {CLIENT_SECRET: _azure(spec).client_secret_ref}


def verify(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> Verification:
    """Get an Azure Resource Manager token with the client secret (blocking).

    Raises ``VerificationError``; the original exception is never chained to it, because
    its text (kept in tracebacks) may carry the token endpoint's error body.
    """
    azure = _azure(spec)
    token = _arm_token(azure, secrets[CLIENT_SECRET].get_secret_value(), context.settings)
    return Verification(identity=_identity(token, azure), static_keys=True)


def _arm_token(azure: AzureSpec, secret: str, settings: ProviderSettings) -> str:
    """An Azure Resource Manager token for the application's client secret, from Entra
    ID (client-credentials grant); ``VerificationError`` when there is none."""
    try:
        # Lazy: azure-identity is an optional extra (cloudcred[azure]).
        from azure.identity import ClientSecretCredential
    except ImportError:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "the Azure library is not installed: install cloudcred[azure]",
        ) from None

    if not secret:  # the library would raise ValueError, taken below for a bad authority
        raise VerificationError(Reason.INVALID_SECRET_DATA, "the client secret is empty")
    options = _credential_options(settings)
    authority = settings.azure_authority_host or "the default Entra ID authority"

    try:
        credential = ClientSecretCredential(azure.tenant_id, azure.client_id, secret, **options)
    except ValueError:
        # Raised for an authority that is not an https URL (the ids match their patterns).
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            f"the operator's Azure authority host setting is not an https URL: {authority}",
        ) from None

    verifying = _VERIFYING.set(secret)
    try:
        with credential:
            return str(credential.get_token(ARM_SCOPE).token)
    except Exception as error:  # every failure becomes a reason
        raise _classify(error, azure, secret, authority, settings.timeout_seconds) from None
    finally:
        _VERIFYING.reset(verifying)


def _credential_options(settings: ProviderSettings) -> dict[str, Any]:
    """``ClientSecretCredential`` options from the operator's settings."""
    options: dict[str, Any] = {
        # azure-core transport settings, per HTTP request. Entra ID takes two requests
        # (tenant metadata, then the token), and the operator bounds the whole call too.
        "connection_timeout": settings.timeout_seconds,
        "read_timeout": settings.timeout_seconds,
        # No retries here: the operator retries ProviderUnreachable with its own backoff,
        # and azure-core's default (10 tries with backoff) would outlast the timeout.
        "retry_total": 0,
    }
    if settings.azure_authority_host:
        options["authority"] = settings.azure_authority_host
        # MSAL validates an authority host it does not know by asking the public cloud
        # (login.microsoftonline.com/common/discovery/instance) whether Microsoft knows it.
        # Azure Stack, private clouds and test endpoints are never known there, and
        # air-gapped sites cannot ask. The host comes only from the operator's own
        # configuration (never from a credential), so the admin who set it has already
        # made the trust decision. Well-known hosts (sovereign clouds) skip the lookup
        # anyway; without a custom host the library's default behaviour is kept.
        options["disable_instance_discovery"] = True
    return options


def _identity(token: str, azure: AzureSpec) -> str:
    """``appid@tenant (object id oid)`` from the access token's claims.

    Entra ID's tokens for Resource Manager are JWTs whose payload names the application
    (``appid``, or ``azp`` in v2 tokens), its tenant (``tid``) and the service principal's
    object id (``oid``), the id Azure RBAC role assignments use. The payload is read
    without checking the signature: it only labels the status; trust comes from Entra ID
    having issued a token over TLS. Tokens that are not JWTs fall back to the spec's ids.
    """
    claims = _unverified_claims(token)
    app = _claim(claims, "appid") or _claim(claims, "azp") or azure.client_id
    tenant = _claim(claims, "tid") or azure.tenant_id
    oid = _claim(claims, "oid")
    return f"{app}@{tenant} (object id {oid})" if oid else f"{app}@{tenant}"


def _unverified_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):  # also UnicodeDecodeError, JSONDecodeError
        return {}
    return claims if isinstance(claims, dict) else {}


def _claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and _SAFE_CLAIM.match(value) else None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: azure-identity wraps every failure in a
    ClientAuthenticationError ``from`` the original, azure-core keeps the transport's
    error in ``inner_exception``, and urllib3 keeps the socket error in ``reason``."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (
            current.__cause__,
            current.__context__,
            getattr(current, "inner_exception", None),
            getattr(current, "reason", None),
            *current.args,
        ):
            if isinstance(linked, BaseException):
                pending.append(linked)


def _classify(
    error: BaseException, azure: AzureSpec, secret: str, authority: str, timeout: float
) -> VerificationError:
    """Turn a failed ``get_token`` into a reason and a message without secret text.

    azure-identity raises ClientAuthenticationError for everything: straight from the
    token endpoint's OAuth error (message ``Authentication failed: <error_description or
    error>``), or wrapping what went wrong underneath (``__cause__``).
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceRequestTimeoutError,
        ServiceResponseError,
        ServiceResponseTimeoutError,
    )

    chain = list(_chain(error))
    texts = [arg for e in chain for arg in e.args if isinstance(arg, str)]
    who = f"client {azure.client_id} in tenant {azure.tenant_id}"

    def unreachable(problem: str) -> VerificationError:
        return VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"Microsoft Entra ID at {authority}: {problem}"
        )

    # No answer at all: the transport failed before Entra ID could say anything.
    if any(isinstance(e, ServiceRequestError | ServiceResponseError) for e in chain):
        if any(isinstance(e, ssl.SSLError) for e in chain):
            return unreachable("the TLS handshake failed (is its CA trusted?)")
        timeouts = ServiceRequestTimeoutError | ServiceResponseTimeoutError | TimeoutError
        if any(isinstance(e, timeouts) for e in chain):
            return unreachable(f"no answer within {timeout:g}s")
        return unreachable("the connection failed")

    # A server error. azure-identity attaches the response for the tenant metadata;
    # MSAL raises MsalServiceError("HTTP Error: 503") for the token endpoint.
    for e in chain:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, HttpResponseError) and isinstance(status, int) and status >= 500:
            return unreachable(f"answered HTTP {status}")
    for text in texts:
        match = _HTTP_ERROR.search(text)
        if match and int(match.group(1)) >= 500:
            return unreachable(f"answered HTTP {match.group(1)}")

    # Entra ID answered: read its codes from the texts, never copy the texts themselves.
    codes: list[str] = []
    for text in texts:
        for code in _AADSTS_CODE.findall(text):
            # An unknown code is reported as is, unless the secret happens to contain it.
            if code not in codes and f"AADSTS{code}" not in secret:
                codes.append(code)
    oauth_errors = list(dict.fromkeys(name for t in texts for name in _OAUTH_ERROR.findall(t)))
    detail = ", ".join([*(f"AADSTS{code}" for code in codes), *oauth_errors])
    suffix = f" ({detail})" if detail else ""

    known = [code for code in codes if code in _AADSTS]
    if known:
        reason, meaning = _AADSTS[known[0]]
        if reason is Reason.PROVIDER_UNREACHABLE:
            return unreachable(f"{meaning}{suffix}")
        return VerificationError(reason, f"Microsoft Entra ID refused {who}: {meaning}{suffix}")
    if oauth_errors:
        reason = _OAUTH_ERRORS[oauth_errors[0]]
        if reason is Reason.PROVIDER_UNREACHABLE:
            return unreachable(f"temporarily unavailable{suffix}")
        return VerificationError(reason, f"Microsoft Entra ID refused {who}{suffix}")

    cause = error.__cause__
    if isinstance(cause, json.JSONDecodeError) or (
        isinstance(cause, ValueError) and isinstance(cause.__context__, json.JSONDecodeError)
    ):
        # A proxy's or load balancer's page rather than Entra ID's JSON.
        return unreachable("the answer was not JSON (not an Entra ID endpoint?)")
    if isinstance(cause, ValueError):
        # MSAL raises ValueError when the tenant's OpenID configuration cannot be read:
        # Entra ID answers 400 (AADSTS90002) there for a tenant that does not exist.
        return VerificationError(
            Reason.INVALID_CREDENTIALS,
            f"Microsoft Entra ID at {authority} has no configuration for tenant "
            f"{azure.tenant_id}: check tenantId{suffix}",
        )
    if isinstance(error, ClientAuthenticationError) and cause is None:
        # An OAuth error from the token endpoint without a code we know: still a refusal.
        return VerificationError(
            Reason.INVALID_CREDENTIALS, f"Microsoft Entra ID refused {who}{suffix}"
        )
    for e in chain:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
            # A refusal without an OAuth error: the same request is refused again.
            return VerificationError(
                Reason.PROVIDER_REFUSED,
                f"Microsoft Entra ID at {authority} refused the request (HTTP {status})",
            )
    # Anything else is unexpected: name only its type, and let the operator retry.
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    return unreachable(f"unexpected {type(root).__name__}")


def check_region(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> None:
    """The deploy step's check. Azure credentials are not tied to a region, so it is the
    same check as verification."""
    verify(spec, secrets, context)


def delivery(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> Delivery:
    """The environment variables of the Azure SDKs (AZURE_*) and of Terraform's azurerm
    provider (ARM_*)."""
    azure = _azure(spec)
    values = {
        "TENANT_ID": SecretStr(azure.tenant_id),
        "CLIENT_ID": SecretStr(azure.client_id),
        "CLIENT_SECRET": secrets[CLIENT_SECRET],
        "SUBSCRIPTION_ID": SecretStr(azure.subscription_id),
    }
    data = {f"{prefix}_{name}": value for prefix in ("AZURE", "ARM")
            for name, value in values.items()}  # fmt: skip
    data["AZURE_LOCATION"] = SecretStr(region)
    return Delivery(data)


# --- rotation: the application's client secrets, through Microsoft Graph -----------------

# Graph's own default lifetime for a secret it adds ("startDateTime + 2 years"), written
# out so that the expiry is the operator's choice and shows in the request.
SECRET_VALIDITY = timedelta(days=730)
SECRET_DISPLAY_NAME = "cloudcred"
# Graph error codes (``{"error": {"code": ...}}``) are copied into messages only when they
# look like codes; the rest of an error body (``message``) could echo the request.
_GRAPH_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
# Codes that name a quota or a limit (Directory_QuotaExceeded, ...); not throttling (429).
_LIMIT_CODE = re.compile(r"quota|limit|toomany(?!requests)", re.IGNORECASE)
_KEY_ID = re.compile(
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
)
# Graph shows the first three characters of each secret as its hint.
_HINT_LENGTH = 3
_PERMISSION = (
    "the application needs the Microsoft Graph application permission "
    "Application.ReadWrite.OwnedBy and must be an owner of itself"
)


class _Graph:
    """Graph requests for one application, authenticated with a token that the
    credential's own secret gets from Entra ID (``BearerTokenCredentialPolicy``), with
    the operator's timeouts and no retries (the operator retries with its own backoff).

    With a rotation identity, the identity's token acts on the application the spec's
    ``clientId`` names, which Graph never ties to the credential's secret: the identity
    may manage any application it owns. So the credential's own secret first proves
    itself (``_prove_application``, decision 0216) and the identity acts only then."""

    def __init__(self, spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext):
        self.azure = _azure(spec)
        self.settings = context.settings
        try:
            # Lazy: azure-identity (with azure-core) is an optional extra (cloudcred[azure]).
            from azure.core import PipelineClient
            from azure.core.pipeline.policies import BearerTokenCredentialPolicy
            from azure.identity import ClientSecretCredential
        except ImportError:
            raise RotationError(
                RotationReason.NOT_SUPPORTED,
                "the Azure library is not installed: install cloudcred[azure]",
            ) from None
        # An admin-owned application (a boundary's rotation identity), in the same tenant,
        # may manage this application's secrets in its place, for a proved secret only.
        acting = context.rotation_identity or secrets
        self.secret = acting[CLIENT_SECRET].get_secret_value()
        if not self.secret:
            raise RotationError(RotationReason.ACCESS_DENIED, "the client secret is empty")
        acting_client = (acting[IDENTITY_CLIENT_ID].get_secret_value()
                         if context.rotation_identity else self.azure.client_id)  # fmt: skip
        self.base = self.settings.azure_graph_url.rstrip("/")
        if not self.base.lower().startswith("https://"):
            # Graph takes a bearer token, which azure-core sends over TLS only.
            raise RotationError(
                RotationReason.NOT_SUPPORTED,
                f"the operator's Microsoft Graph URL setting is not an https URL: {self.base}",
            )
        self.authority = self.settings.azure_authority_host or "the default Entra ID authority"
        self.app_url = f"{self.base}/v1.0/applications(appId='{quote(self.azure.client_id)}')"
        if context.rotation_identity is not None:
            # The application of app_url, the one the proof's token must name.
            _prove_application(self.azure, secrets[CLIENT_SECRET].get_secret_value(),
                               self.settings)  # fmt: skip
        try:
            self.credential = ClientSecretCredential(
                self.azure.tenant_id,
                acting_client,
                self.secret,
                **_credential_options(self.settings),
            )
        except ValueError:
            raise RotationError(
                RotationReason.NOT_SUPPORTED,
                "the operator's Azure authority host setting is not an https URL: "
                f"{self.authority}",
            ) from None
        # The token is for Graph at the configured URL (graph.microsoft.us, ... in
        # sovereign clouds): the scope is that URL's ``/.default``.
        policy = BearerTokenCredentialPolicy(self.credential, f"{self.base}/.default")
        self.client: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(
            self.base, policies=[policy]
        )

    def __enter__(self) -> _Graph:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()
        self.credential.close()

    def request(self, method: str, path: str, what: str, body: Any = None) -> HttpResponse:
        """Send one request; a 2xx answer is returned, anything else raises."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.core.rest import HttpRequest

        timeout = self.settings.timeout_seconds
        request = HttpRequest(method, self.app_url + path, json=body)
        verifying = _VERIFYING.set(self.secret)  # the token request's log lines are masked
        try:
            response = self.client.send_request(
                request, connection_timeout=timeout, read_timeout=timeout
            )
        except ClientAuthenticationError as error:
            # Only the credential raises this here: Entra ID refused the token.
            found = _classify(error, self.azure, self.secret, self.authority, timeout)
            raise RotationError(
                _ROTATION_REASONS.get(found.reason, _REFUSED), found.message
            ) from None
        except (ServiceRequestError, ServiceResponseError) as error:
            raise self._unreachable(_transport_problem(error, timeout)) from None
        except Exception as error:  # name only the type: the text could quote a body
            raise self._unreachable(f"unexpected {type(error).__name__}") from None
        finally:
            _VERIFYING.reset(verifying)
        if 200 <= response.status_code < 300:
            return response
        self._refused(response, what)

    def json(self, response: HttpResponse, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except Exception:  # not JSON, or not text
            body = None
        if not isinstance(body, dict):
            raise self._unreachable(f"asked to {what}, it answered no JSON (not Graph?)")
        return body

    def password_credentials(self) -> list[dict[str, Any]]:
        what = "read its client secrets"
        answer = self.json(self.request("GET", "?$select=passwordCredentials", what), what)
        items = answer.get("passwordCredentials")
        if not isinstance(items, list):
            raise self._unreachable(f"asked to {what}, it answered no passwordCredentials")
        return [item for item in items if isinstance(item, dict)]

    def _unreachable(self, problem: str) -> RotationError:
        return RotationError(
            RotationReason.PROVIDER_UNREACHABLE, f"Microsoft Graph at {self.base}: {problem}"
        )

    def _refused(self, response: HttpResponse, what: str) -> NoReturn:
        status = response.status_code
        code = self._error_code(response)
        detail = f"HTTP {status}, {code}" if code else f"HTTP {status}"
        app = f"application {self.azure.client_id}"
        if status == 429 or status >= 500:
            raise self._unreachable(f"answered {detail} to: {what}")
        if status in (401, 403):
            raise RotationError(
                RotationReason.ACCESS_DENIED,
                f"Microsoft Graph refused to let {app} {what} ({detail}): {_PERMISSION}",
            )
        if code and _LIMIT_CODE.search(code):
            raise RotationError(
                RotationReason.KEY_LIMIT_REACHED,
                f"Microsoft Graph refused to let {app} {what} ({detail}): a limit is "
                "reached; remove a client secret it no longer uses",
            )
        if status == 404:
            raise RotationError(
                RotationReason.PROVIDER_REFUSED,
                f"Microsoft Graph does not show {app} to itself ({detail}): {_PERMISSION}",
            )
        raise RotationError(
            RotationReason.PROVIDER_REFUSED,
            f"Microsoft Graph refused to let {app} {what} ({detail})",
        )

    def _error_code(self, response: HttpResponse) -> str | None:
        try:
            error = response.json().get("error")
            code = error.get("code") if isinstance(error, dict) else None
        except Exception:  # not JSON, or not an object
            return None
        if not isinstance(code, str) or not _GRAPH_CODE.match(code):
            return None
        # A body that echoes the request must not pass the secret off as a code.
        return code if code not in self.secret and self.secret not in code else None


_REFUSED = RotationReason.PROVIDER_REFUSED
# A refused token means the identity cannot act at all.
_ROTATION_REASONS = {
    Reason.INVALID_CREDENTIALS: RotationReason.ACCESS_DENIED,
    Reason.ACCESS_DENIED: RotationReason.ACCESS_DENIED,
    Reason.INVALID_SECRET_DATA: RotationReason.ACCESS_DENIED,
    Reason.PROVIDER_UNREACHABLE: RotationReason.PROVIDER_UNREACHABLE,
    Reason.VERIFICATION_UNAVAILABLE: RotationReason.NOT_SUPPORTED,
}


def _prove_application(azure: AzureSpec, secret: str, settings: ProviderSettings) -> None:
    """Before a rotation identity acts on application ``azure.client_id``: the
    credential's own secret gets a token for that application from Entra ID (as the
    check does), and the token names that application (``appid``, or ``azp``). Otherwise
    AccessDenied (ProviderUnreachable while Entra ID does not answer); the messages name
    the client id, never the secret."""
    what = f"application {azure.client_id} (spec.azure.clientId)"
    try:
        token = _arm_token(azure, secret, settings)
    except VerificationError as error:
        raise RotationError(
            _ROTATION_REASONS.get(error.reason, _REFUSED),
            f"the credential's own client secret did not prove that it is a secret of {what}, "
            f"and the rotation identity acts only for that: {error.message}",
        ) from None
    claims = _unverified_claims(token)
    named = _claim(claims, "appid") or _claim(claims, "azp")
    if named is None or named.lower() != azure.client_id.lower():
        raise RotationError(
            RotationReason.ACCESS_DENIED,
            f"Entra ID's token for the credential's own client secret names application "
            f"{named or '(none)'}, not {azure.client_id} (spec.azure.clientId): the "
            "rotation identity acts only for the application whose secret the credential holds",
        )


def _transport_problem(error: BaseException, timeout: float) -> str:
    from azure.core.exceptions import ServiceRequestTimeoutError, ServiceResponseTimeoutError

    chain = list(_chain(error))
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "the TLS handshake failed (is its CA trusted?)"
    timeouts = ServiceRequestTimeoutError | ServiceResponseTimeoutError | TimeoutError
    if any(isinstance(e, timeouts) for e in chain):
        return f"no answer within {timeout:g}s"
    return "the connection failed"


def _key_facts(item: dict[str, Any], now: datetime) -> KeyFacts | None:
    """A passwordCredential as KeyFacts (None without a key id). Graph keeps no last use
    of a client secret; a secret past its end date no longer works."""
    key_id = item.get("keyId")
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        return None
    expires = conditions.parse_time(item.get("endDateTime"))
    return KeyFacts(
        key_id=key_id,
        created=conditions.parse_time(item.get("startDateTime")),
        expires=expires,
        active=expires is None or expires > now,
    )


def list_keys(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> list[KeyFacts]:
    """Every client secret of the application (blocking)."""
    now = datetime.now(UTC)
    with _Graph(spec, secrets, context) as graph:
        items = graph.password_credentials()
    return [facts for item in items if (facts := _key_facts(item, now)) is not None]


def key_facts(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> KeyFacts | None:
    """The facts of the client secret in use (blocking).

    The spec names no key id, and Graph never returns a secret's value, only its first
    three characters (``hint``): the secret in use is the one whose hint matches. When
    several secrets share that hint (or none has it), which one is in use cannot be told,
    and None is returned rather than another secret's facts.
    """
    secret = secrets[CLIENT_SECRET].get_secret_value()
    with _Graph(spec, secrets, context) as graph:
        items = graph.password_credentials()
    if len(secret) < _HINT_LENGTH:
        return None
    matching = [item for item in items if item.get("hint") == secret[:_HINT_LENGTH]]
    return _key_facts(matching[0], datetime.now(UTC)) if len(matching) == 1 else None


def create_key(spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext) -> NewKey:
    """Add a client secret to the application, valid for ``SECRET_VALIDITY`` (blocking).

    A new secret can take a little while to be accepted by every Entra ID endpoint: the
    caller verifies it (with retries) before anything uses it.
    """
    now = datetime.now(UTC)
    end = (now + SECRET_VALIDITY).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"passwordCredential": {"displayName": SECRET_DISPLAY_NAME, "endDateTime": end}}
    what = "add a client secret"
    with _Graph(spec, secrets, context) as graph:
        answer = graph.json(graph.request("POST", "/addPassword", what, body), what)
    facts = _key_facts(answer, now)
    value = answer.get("secretText")
    if facts is None or not isinstance(value, str) or not value:
        raise RotationError(
            RotationReason.PROVIDER_REFUSED,
            f"Microsoft Graph answered the request to {what} to application "
            f"{_azure(spec).client_id} without a key id or a secret; a secret named "
            f"{SECRET_DISPLAY_NAME} may have been added",
        )
    return NewKey(facts=facts, secret_data={CLIENT_SECRET: SecretStr(value)})


def deactivate_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> bool:
    """Entra ID client secrets cannot be disabled, only removed: False, nothing asked."""
    return False


def delete_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> None:
    """Remove the application's client secret ``key_id`` (blocking); one already gone
    is fine (Graph refuses to remove it, and the list shows it is not there)."""
    if not _KEY_ID.match(key_id):
        raise RotationError(
            RotationReason.PROVIDER_REFUSED, "the key id is not a client secret's key id (a GUID)"
        )
    with _Graph(spec, secrets, context) as graph:
        try:
            graph.request("POST", "/removePassword", "remove a client secret", {"keyId": key_id})
            return
        except RotationError as error:
            if error.reason is not RotationReason.PROVIDER_REFUSED:
                raise
            refused = error
        # Graph answers 400 or 404 for a secret the application no longer has.
        try:
            items = graph.password_credentials()
        except RotationError:
            raise refused from None  # the refusal is the answer to what was asked
        if key_id.lower() in {str(item.get("keyId", "")).lower() for item in items}:
            raise refused


# --- permission checks: Microsoft.Authorization permissions ------------------------------
#
# As the credential's own service principal (a token its secret gets for Azure Resource
# Manager at ``ProviderSettings.azure_management_url``), the list of its permissions at
# the subscription or a resource group: one entry per role it holds there, each with
# ``actions`` and ``notActions`` (wildcards allowed). A need is allowed when one entry's
# actions cover it and none of that entry's notActions overlap it.

PERMISSIONS_API_VERSION = "2022-04-01"
_MAX_PAGES = 50
_ARM_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,127}$")


def check_permissions(
    spec: CloudCredentialSpec,
    secrets: SecretValues,
    context: VerifyContext,
    needs: AzurePermissions,
) -> PermissionAnswer:
    azure = _azure(spec)
    try:
        from azure.core import PipelineClient
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.core.pipeline.policies import BearerTokenCredentialPolicy
        from azure.core.rest import HttpRequest
        from azure.identity import ClientSecretCredential
    except ImportError:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "the Azure library is not installed: install cloudcred[azure]",
        ) from None
    settings = context.settings
    base = settings.azure_management_url.rstrip("/")
    if not base.lower().startswith("https://"):
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            f"the operator's Azure Resource Manager URL setting is not an https URL: {base}",
        )
    secret = secrets[CLIENT_SECRET].get_secret_value()
    authority = settings.azure_authority_host or "the default Entra ID authority"
    scope = f"/subscriptions/{azure.subscription_id}"
    if needs.resource_group:
        scope += f"/resourceGroups/{quote(needs.resource_group)}"
    where = f"resource group {needs.resource_group}" if needs.resource_group else (
        f"subscription {azure.subscription_id}")  # fmt: skip
    url = (f"{base}{scope}/providers/Microsoft.Authorization/permissions"
           f"?api-version={PERMISSIONS_API_VERSION}")  # fmt: skip
    timeout = settings.timeout_seconds
    try:
        credential = ClientSecretCredential(azure.tenant_id, azure.client_id, secret,
                                            **_credential_options(settings))  # fmt: skip
    except ValueError:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            f"the operator's Azure authority host setting is not an https URL: {authority}",
        ) from None
    policy = BearerTokenCredentialPolicy(credential, f"{base}/.default")
    client: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(base, policies=[policy])
    entries: list[tuple[list[str], list[str]]] = []
    verifying = _VERIFYING.set(secret)  # the token request's log lines are masked
    try:
        with credential, client:
            for _ in range(_MAX_PAGES):
                try:
                    response = client.send_request(HttpRequest("GET", url),
                                                   connection_timeout=timeout,
                                                   read_timeout=timeout)  # fmt: skip
                except ClientAuthenticationError as error:
                    raise _classify(error, azure, secret, authority, timeout) from None
                except (ServiceRequestError, ServiceResponseError) as error:
                    raise _arm_unreachable(base, _transport_problem(error, timeout)) from None
                page = _permissions_page(response, base, where, secret)
                entries += page[0]
                if not page[1]:
                    break
                url = page[1]
            else:
                raise _arm_unreachable(base, f"more than {_MAX_PAGES} pages of permissions")
    except VerificationError:
        raise
    except Exception as error:  # name only the type: the text could quote a body
        raise _arm_unreachable(base, f"unexpected {type(error).__name__}") from None
    finally:
        _VERIFYING.reset(verifying)
    missing = tuple(sorted(a for a in needs.actions if not _allowed(a, entries)))
    return PermissionAnswer(len(needs.actions), missing)


def _permissions_page(
    response: HttpResponse, base: str, where: str, secret: str
) -> tuple[list[tuple[list[str], list[str]]], str | None]:
    """One page's (actions, notActions) entries and the next page's URL (only on the
    configured host: a nextLink elsewhere is not followed)."""
    status = response.status_code
    if not 200 <= status < 300:
        code = None
        with contextlib.suppress(Exception):
            found = response.json().get("error", {}).get("code")
            if isinstance(found, str) and _ARM_CODE.match(found) and found not in secret:
                code = found
        detail = f"HTTP {status}, {code}" if code else f"HTTP {status}"
        if status == 429 or status >= 500:
            raise _arm_unreachable(base, f"answered {detail}")
        if status in (401, 403):
            raise VerificationError(
                Reason.ACCESS_DENIED,
                f"Azure Resource Manager refused to list the permissions at {where} "
                f"({detail}): the service principal needs a role there",
            )
        raise VerificationError(
            Reason.PROVIDER_REFUSED,
            f"Azure Resource Manager refused to list the permissions at {where} ({detail})",
        )
    try:
        body = response.json()
    except Exception:
        body = None
    items = body.get("value") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise _arm_unreachable(base, "the answer is not a permissions list")
    entries = [
        ([a for a in item.get("actions") or [] if isinstance(a, str)],
         [a for a in item.get("notActions") or [] if isinstance(a, str)])
        for item in items if isinstance(item, dict)
    ]  # fmt: skip
    following = body.get("nextLink") if isinstance(body, dict) else None
    if isinstance(following, str) and following.lower().startswith(base.lower() + "/"):
        return entries, following
    return entries, None


def _arm_unreachable(base: str, problem: str) -> VerificationError:
    return VerificationError(
        Reason.PROVIDER_UNREACHABLE, f"Azure Resource Manager at {base}: {problem}"
    )


def _covers(pattern: str, action: str) -> bool:
    """An Azure action pattern (``*`` anywhere, case-insensitive) covers an action name."""
    regex = "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
    return re.match(regex, action, re.IGNORECASE) is not None


def _allowed(action: str, entries: list[tuple[list[str], list[str]]]) -> bool:
    """One role's actions cover the need and none of its notActions overlap it (a
    wildcard need overlaps a notAction its pattern matches, too: a need for
    Microsoft.Compute/* is not met by a role that excludes Microsoft.Compute/disks/delete)."""
    for actions, not_actions in entries:
        if any(_covers(granted, action) for granted in actions) and not any(
            _covers(excluded, action) or _covers(action, excluded) for excluded in not_actions
        ):
            return True
    return False
