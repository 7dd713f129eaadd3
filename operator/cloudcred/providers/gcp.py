"""GCP: check a service-account JSON key by exchanging it for an access token.

A key is proved by the OAuth 2.0 JWT-bearer grant (RFC 7523): google-auth signs an
assertion with the key's private key and posts it to the token endpoint, which answers
with an access token only if the key is live and belongs to the service account.

The endpoint is the operator's ``ProviderSettings.gcp_token_uri``, never the key's own
``token_uri``: a key is user data, and following its URL would let anyone who can write
a Secret make the operator post signed assertions to any address (the metadata server,
an internal service). A key naming another endpoint is refused before anything is sent.

Workload identity federation needs the workload's own subject token, which only exists
where the workload runs, so here it is checked for shape only (the CRD already does).

google-auth and requests are an optional extra (``cloudcred[gcp]``) and are imported
inside ``verify``, so this module imports without them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from pydantic import SecretStr

from cloudcred import conditions
from cloudcred.api.common import SecretKeyRef
from cloudcred.api.credential import CloudCredentialSpec, GcpSpec
from cloudcred.api.permissions import GcpPermissions
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
    from google.auth.exceptions import RefreshError, TransportError

KEY_ROLE = "serviceAccountKey"
# The keys of a rotation identity's Secret (CredentialBoundary.spec.gcp), by role.
ROTATION_IDENTITY_KEYS = {KEY_ROLE: "key.json"}
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

# Token endpoints Google has written into key files over the years; all of them accept
# the same grant. A key naming one of them is not "pointing elsewhere" when the operator
# is configured with another one of them (the request still goes to the configured one).
GOOGLE_TOKEN_ENDPOINTS = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://accounts.google.com/o/oauth2/token",
        "https://www.googleapis.com/oauth2/v4/token",
    }
)

# Credential files that are not service-account keys, named when a user pastes one.
_OTHER_CREDENTIAL_TYPES = frozenset(
    {
        "authorized_user",
        "external_account",
        "external_account_authorized_user",
        "impersonated_service_account",
        "gdch_service_account",
    }
)

# What of a token endpoint's error answer may reach a message: the RFC 6749 error code,
# when it looks like one. error_description is free text and is never echoed.
_OAUTH_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")

# Known error_description texts of Google's token endpoint, turned into our own hints.
_DESCRIPTION_HINTS = (
    (
        "invalid jwt signature",
        "the key was deleted or disabled, or does not belong to this service account",
    ),
    ("account not found", "the service account does not exist"),
    ("reasonable timeframe", "the operator's clock may be wrong"),
)

_REQUIRED_FIELDS = ("client_email", "private_key", "token_uri")


class _RedactAssertions(logging.Filter):
    """google-auth logs each request's body at DEBUG once its "google" logger is set up;
    the token request's body is the signed JWT assertion, which buys access tokens
    until it expires. The record keeps everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "httpRequest", None)
        body = request.get("body") if isinstance(request, dict) else None
        if isinstance(request, dict) and isinstance(body, dict) and "assertion" in body:
            record.httpRequest = {**request, "body": {**body, "assertion": "***"}}
        return True


def _install_log_filter() -> None:
    # A filter applies to records of its own logger only: the transport's.
    logger = logging.getLogger("google.auth.transport.requests")
    if not any(isinstance(f, _RedactAssertions) for f in logger.filters):
        logger.addFilter(_RedactAssertions())


_install_log_filter()


def _gcp(spec: CloudCredentialSpec) -> GcpSpec:
    if spec.gcp is None:
        raise ValueError("not a GCP credential: spec.gcp is not set")
    return spec.gcp


def public_id(spec: CloudCredentialSpec) -> str:
    """The service account e-mail, when the spec names it (workload identity).

    A key reference has no public field: the operator takes the key's ``client_email``
    from ``Verification.identity`` instead.
    """
    return _gcp(spec).service_account_email or ""


def secret_refs(spec: CloudCredentialSpec) -> dict[str, SecretKeyRef]:
    """The JSON key's Secret key for the key form; nothing for workload identity."""
    ref = _gcp(spec).service_account_key_ref
    return {KEY_ROLE: ref} if ref is not None else {}


def verify(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> Verification:
    """Exchange the service-account key for an access token (blocking).

    Raises ``VerificationError`` when the key is malformed, refused, or the endpoint
    cannot be reached. Messages never contain any part of the key but its public fields.
    """
    info, credentials = _load_key(spec, secrets, context)
    import requests

    with requests.Session() as session:
        _refresh(credentials, session, context.settings, time.monotonic())

    return Verification(identity=info["client_email"], static_keys=True)


def _refresh(credentials: Any, session: Any, settings: ProviderSettings, started: float) -> None:
    """Exchange the key for an access token at the configured endpoint, within what is
    left of ``settings.timeout_seconds`` since ``started``."""
    from google.auth import exceptions as google_exceptions
    from google.auth.transport.requests import Request

    label = _endpoint_label(settings.gcp_token_uri)
    remaining = settings.timeout_seconds - (time.monotonic() - started)
    request = _DeadlineRequest(Request(session), remaining)
    try:
        credentials.refresh(request)
    except google_exceptions.RefreshError as exc:
        raise _refresh_failure(exc, request.last_status, label) from None
    except google_exceptions.TransportError as exc:
        raise _transport_failure(
            exc, request.last_status, label, settings.timeout_seconds
        ) from None
    except OSError:
        # requests lets some set-up errors through unwrapped (a missing CA bundle).
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE,
            f"could not set up a connection to the token endpoint {label}",
        ) from None
    except (KeyError, TypeError, ValueError):
        # A 200 answer that is not a token response (not JSON, a bad expires_in).
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE,
            f"the token endpoint {label} gave an answer that is not a token response",
        ) from None


def _load_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> tuple[dict[str, Any], Any]:
    """The key file's fields and google-auth credentials for it, bound to the configured
    token endpoint; ``VerificationError`` when there is no usable key."""
    gcp = _gcp(spec)
    if gcp.service_account_key_ref is None:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "workload identity federation is checked for shape only: the token exchange "
            "needs the workload's own token at deploy time",
        )
    if KEY_ROLE not in secrets:
        raise VerificationError(
            Reason.SECRET_KEY_MISSING, "the service-account key was not read from its Secret"
        )
    ref = gcp.service_account_key_ref
    source = f"key {ref.key!r} of Secret {context.namespace}/{ref.name}"
    info = _parse_key(secrets[KEY_ROLE].get_secret_value(), source)
    settings = context.settings
    if not _same_endpoint(info["token_uri"], settings.gcp_token_uri):
        host = _safe_host(info["token_uri"])
        named = f" (host {host})" if host else ""
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            f"the key's token_uri{named} is not the configured token endpoint "
            f"{_endpoint_label(settings.gcp_token_uri)}; keys are only sent to that endpoint",
        )

    try:
        import google.auth.transport.requests  # noqa: F401 - the transport (and requests)
        from google.oauth2 import service_account
    except ImportError:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "the GCP library is not installed: install cloudcred[gcp]",
        ) from None

    # Only the fields the grant needs, with the configured endpoint: universe_domain
    # (which would switch google-auth to self-signed JWTs that never reach a server)
    # and trust_boundary are dropped, so a successful refresh always means the token
    # endpoint accepted the key.
    grant_info = {
        "type": "service_account",
        "client_email": info["client_email"],
        "private_key": info["private_key"],
        "token_uri": settings.gcp_token_uri,
    }
    if isinstance(info.get("private_key_id"), str):
        grant_info["private_key_id"] = info["private_key_id"]
    try:
        # google-auth is not annotated.
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            grant_info, scopes=list(SCOPES)
        )
        # Signing once here turns a key google-auth loads but cannot sign with (an EC
        # key, say) into InvalidSecretData instead of a failure in the middle of refresh.
        credentials.sign_bytes(b"cloudcred")
    except Exception:  # any failure to load or use the key; its text may quote the key
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            "the service-account key's private_key is not a usable RSA private key in PEM format",
        ) from None

    return info, credentials


def _parse_key(text: str, source: str = "the key") -> dict[str, Any]:
    """The key file as a dict, after checking its shape. Messages name fields only;
    ``source`` says where the key came from (the Secret and its key)."""

    def not_a_key(why: str) -> VerificationError:
        return VerificationError(
            Reason.INVALID_SECRET_DATA, f"{source} is not a service-account JSON key ({why})"
        )

    try:
        info = json.loads(text)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise not_a_key("not valid JSON") from None
    except RecursionError:  # "[[[[...": a key file is two levels deep
        raise not_a_key("nested too deeply") from None
    if not isinstance(info, dict):
        raise not_a_key("not a JSON object")
    kind = info.get("type")
    if kind != "service_account":
        found = (
            f' (it is a "{kind}" credential)'
            if isinstance(kind, str) and kind in _OTHER_CREDENTIAL_TYPES
            else ""
        )
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            f'the service-account key does not have type "service_account"{found}',
        )
    for name in _REQUIRED_FIELDS:
        value = info.get(name)
        if not isinstance(value, str) or not value.strip():
            raise VerificationError(
                Reason.INVALID_SECRET_DATA, f"the service-account key has no {name}"
            )
    if len(info["client_email"]) > 254 or "@" not in info["client_email"]:
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            "the service-account key's client_email is not an e-mail address",
        )
    return info


def _same_endpoint(key_uri: str, configured: str) -> bool:
    if key_uri.rstrip("/") == configured.rstrip("/"):
        return True
    return key_uri in GOOGLE_TOKEN_ENDPOINTS and configured in GOOGLE_TOKEN_ENDPOINTS


def _safe_host(url: str) -> str:
    """The host of a URL taken from a key, or "" when it does not look like one."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host if _HOST.fullmatch(host) else ""


def _endpoint_label(url: str) -> str:
    """The configured endpoint without any user info, for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(misconfigured URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _refresh_failure(exc: RefreshError, status: int | None, label: str) -> VerificationError:
    """Turn the token endpoint's refusal into a reason, keeping only the error code."""
    data = exc.args[1] if len(exc.args) > 1 else None
    code: str | None = None
    description = ""
    if isinstance(data, dict):
        raw_code = data.get("error")
        if isinstance(raw_code, str) and _OAUTH_ERROR_CODE.fullmatch(raw_code):
            code = raw_code
        raw_description = data.get("error_description")
        if isinstance(raw_description, str):
            description = raw_description.lower()

    answer = ", ".join(part for part in (f"HTTP {status}" if status else "", code or "") if part)
    answer = f" ({answer})" if answer else ""
    hint = next((text for needle, text in _DESCRIPTION_HINTS if needle in description), "")
    hint = f": {hint}" if hint else ""

    if status == 403 or code in ("access_denied", "unauthorized_client"):
        return VerificationError(
            Reason.ACCESS_DENIED, f"the token endpoint refused the key{answer}{hint}"
        )
    if status in (400, 401) or code in ("invalid_grant", "invalid_client"):
        return VerificationError(
            Reason.INVALID_CREDENTIALS, f"the token endpoint rejected the key{answer}{hint}"
        )
    if status == 200:
        return VerificationError(
            Reason.PROVIDER_UNREACHABLE,
            f"the token endpoint {label} answered without an access token",
        )
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        # 404, 405, 413, ...: the endpoint refuses the request itself, and will again.
        return VerificationError(
            Reason.PROVIDER_REFUSED, f"the token endpoint {label} refused the request{answer}"
        )
    # 5xx, 408, 429, or anything a token endpoint should not answer: the endpoint's problem.
    return VerificationError(
        Reason.PROVIDER_UNREACHABLE, f"the token endpoint {label} failed{answer}"
    )


def _transport_failure(
    exc: TransportError, status: int | None, label: str, timeout_seconds: float
) -> VerificationError:
    """The endpoint could not be reached, did not answer in time, or failed."""
    import requests

    cause = exc.__cause__
    if status is not None:
        message = f"the token endpoint {label} failed (HTTP {status})"
    elif cause is None or isinstance(cause, requests.Timeout):
        message = f"no answer from the token endpoint {label} within {timeout_seconds:g}s"
    elif isinstance(cause, requests.ConnectionError):
        message = f"could not connect to the token endpoint {label}"
    else:
        message = f"could not talk to the token endpoint {label}"
    return VerificationError(Reason.PROVIDER_UNREACHABLE, message)


class _DeadlineRequest:
    """A google-auth transport that spends at most ``timeout_seconds`` in all.

    Every request gets only the time that is left. google-auth retries 5xx and 429
    answers with sleeps of seconds, which would overrun the limit: those answers end
    the check at once instead (the operator retries ProviderUnreachable with backoff).
    It also remembers the last HTTP status, which ``RefreshError`` does not carry, and
    does not follow redirects (the configured endpoint is the only destination).
    """

    def __init__(self, inner: Any, timeout_seconds: float) -> None:
        self._inner = inner
        self._deadline = time.monotonic() + timeout_seconds
        self.last_status: int | None = None

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        from google.auth.exceptions import TransportError

        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError("the time for the check ran out")  # type: ignore[no-untyped-call]
        kwargs["allow_redirects"] = False
        response = self._inner(
            url, method=method, body=body, headers=headers, timeout=remaining, **kwargs
        )
        self.last_status = int(response.status)
        if self.last_status >= 500 or self.last_status == 429:
            raise TransportError(f"HTTP {self.last_status}")  # type: ignore[no-untyped-call]
        return response


def check_region(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> str | None:
    """The deploy step's check. GCP credentials are not tied to a region, so it is the
    same check as verification, and returns the service account the token exchange
    authenticated; workload identity cannot be checked here (the workload's own token is
    needed), so it passes, as its Verified is Unknown."""
    if _gcp(spec).service_account_key_ref is None:
        return None
    return verify(spec, secrets, context).identity


def delivery(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> Delivery:
    """The key file, as ``credentials.json`` (point GOOGLE_APPLICATION_CREDENTIALS at
    it), and the region. Workload identity has no key to hand over."""
    if _gcp(spec).service_account_key_ref is None:
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            "workload identity federation has no key to deliver: remove "
            "spec.credentialsSecret from the cluster and let its workloads federate",
        )
    return Delivery({
        "credentials.json": secrets[KEY_ROLE],
        "CLOUDSDK_COMPUTE_REGION": SecretStr(region),
    })  # fmt: skip


# --- rotation: the service account's own keys, through the IAM API ----------------------
#
# Every call acts as the key in the Secret: it exchanges that key for an access token at
# the configured token endpoint (as ``verify`` does) and calls the IAM API v1 at
# ``ProviderSettings.gcp_iam_url`` through google-auth's AuthorizedSession, all within one
# ``timeout_seconds``. The service account needs the four iam.serviceAccountKeys
# permissions below on itself. With a boundary's rotation identity, the identity's token
# calls the IAM API instead, after the key in the Secret has proved itself the same way
# (one token request more a call; ``_IamSession``).

_PERMISSIONS = {
    "list": "iam.serviceAccountKeys.list",
    "create": "iam.serviceAccountKeys.create",
    "get": "iam.serviceAccountKeys.get",
    "delete": "iam.serviceAccountKeys.delete",
}
# GCP key ids are 40 hex digits; anything that could change the URL path is refused.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_RPC_STATUS = re.compile(r"[A-Z][A-Z_]{0,63}")
_CONSTRAINT = re.compile(r"constraints/[A-Za-z0-9_.]{1,128}")
# GCP's "no expiry" is validBeforeTime 9999-12-31T23:59:59Z.
_NO_EXPIRY_YEAR = 9999


def list_keys(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> list[KeyFacts]:
    """The service account's user-managed keys (Google's own system-managed keys, which
    nobody can hold or delete, are left out)."""
    with _IamSession(spec, secrets, context) as iam:
        body = iam.call("GET", "", "list", params={"keyTypes": "USER_MANAGED"})
    keys = body.get("keys", [])
    if not isinstance(keys, list):
        raise iam.malformed("list")
    return [facts for facts in map(_key_facts_of, keys) if facts is not None]


def create_key(spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext) -> NewKey:
    """A new JSON key for the service account; its file goes under ``serviceAccountKey``."""
    with _IamSession(spec, secrets, context) as iam:
        body = iam.call(
            "POST",
            "",
            "create",
            json_body={
                "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
                "keyAlgorithm": "KEY_ALG_RSA_2048",
            },
        )
        facts = _key_facts_of(body)
        if facts is None:
            raise iam.malformed("create")
        text = _key_file(body.get("privateKeyData"), facts.key_id, iam.email)
        if text is None:
            # A key nobody can use: remove it rather than leave it for the clean-up.
            with contextlib.suppress(RotationError):
                iam.call("DELETE", f"/{facts.key_id}", "delete", missing_ok=True)
            raise RotationError(
                RotationReason.PROVIDER_UNREACHABLE,
                f"the IAM API {iam.label} made key {facts.key_id} for {iam.email} but its "
                "answer did not hold a service-account key file for it",
            )
    return NewKey(facts=facts, secret_data={KEY_ROLE: SecretStr(text)})


def deactivate_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> bool:
    """GCP keys are deleted after the grace period, not disabled first: False."""
    return False


def delete_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> None:
    """Delete one of the service account's keys; a key already gone is fine."""
    path = _key_path(key_id)
    with _IamSession(spec, secrets, context) as iam:
        iam.call("DELETE", path, "delete", missing_ok=True)


def key_facts(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> KeyFacts | None:
    """The facts of the key in the Secret (its ``private_key_id``); None when the file
    names no key id or the IAM API does not know it. GCP keeps no last-use time."""
    with _IamSession(spec, secrets, context) as iam:
        key_id = iam.key_id
        if key_id is None or not _KEY_ID.fullmatch(key_id):
            return None
        body = iam.call("GET", f"/{key_id}", "get", missing_ok=True)
    if not body:
        return None
    facts = _key_facts_of(body)
    if facts is None:
        raise iam.malformed("get")
    return facts


class _IamSession:
    """One rotation call: the key's token, the IAM API's URL for the service account's
    keys, and a single deadline for both.

    With a rotation identity, the identity's token acts on the service account the
    key's ``client_email`` names, which Google never ties to the key's private key: the
    IAM API answers for any account the identity may manage. So the key first proves
    itself (decision 0216): its own JWT-bearer grant, with ``client_email`` as the
    assertion's issuer, gets a token only if the private key is one of that account's.
    A tenant who names another team's service account beside its own private key gets
    AccessDenied, and the identity lists, makes and deletes nothing for that account."""

    def __init__(
        self, spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
    ) -> None:
        if _gcp(spec).service_account_key_ref is None:
            raise RotationError(
                RotationReason.NOT_SUPPORTED,
                "workload identity federation uses no key: there is nothing to rotate",
            )
        self.started = time.monotonic()
        self.settings = context.settings
        try:
            info, self._credentials = _load_key(spec, secrets, context)
        except VerificationError as error:
            raise _as_rotation_error(error) from None
        # The account acted on is the one the proof's assertion names as its issuer.
        self.email: str = info["client_email"]
        key_id = info.get("private_key_id")
        self.key_id: str | None = key_id if isinstance(key_id, str) else None
        self._proof: Any = None
        if context.rotation_identity is not None:
            # An admin-owned service account manages this one's keys: its token, this
            # service account's keys, once the key in the Secret has proved itself.
            self._proof = self._credentials
            try:
                _, self._credentials = _load_key(spec, context.rotation_identity, context)
            except VerificationError as error:
                raise _as_rotation_error(error) from None
        self.label = _endpoint_label(self.settings.gcp_iam_url)
        base = self.settings.gcp_iam_url.rstrip("/")
        self.url = f"{base}/v1/projects/-/serviceAccounts/{quote(self.email, safe='@')}/keys"

    def __enter__(self) -> _IamSession:
        import requests
        from google.auth.transport.requests import AuthorizedSession, Request

        self._token_session = requests.Session()
        if self._proof is not None:
            try:
                _refresh(self._proof, self._token_session, self.settings, self.started)
            except VerificationError as error:
                self._token_session.close()
                raise _unproved(error, self.email) from None
        try:
            _refresh(self._credentials, self._token_session, self.settings, self.started)
        except VerificationError as error:
            self._token_session.close()
            raise _as_rotation_error(error) from None
        # The token is fresh: no refresh (and no retry on 401) inside the API call.
        self._session: Any = AuthorizedSession(  # type: ignore[no-untyped-call]
            self._credentials,
            refresh_status_codes=(),
            auth_request=Request(self._token_session),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._session.close()
        self._token_session.close()

    def call(
        self,
        method: str,
        path: str,
        action: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, str] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        """The JSON answer of one IAM API call; ``{}`` for a 404 when ``missing_ok``."""
        import requests

        remaining = self.settings.timeout_seconds - (time.monotonic() - self.started)
        key = path.lstrip("/")
        what = {
            "list": f"list the keys of {self.email}",
            "create": f"create a key for {self.email}",
        }.get(action, f"{'read' if action == 'get' else action} key {key} of {self.email}")
        if remaining <= 0:
            raise self._no_answer()
        try:
            response = self._session.request(
                method,
                self.url + path,
                params=params,
                json=json_body,
                timeout=remaining,
                allow_redirects=False,
            )
        except requests.Timeout:
            raise self._no_answer() from None
        except requests.ConnectionError:
            raise RotationError(
                RotationReason.PROVIDER_UNREACHABLE,
                f"could not connect to the IAM API {self.label}",
            ) from None
        except (requests.RequestException, OSError):
            raise RotationError(
                RotationReason.PROVIDER_UNREACHABLE,
                f"could not talk to the IAM API {self.label}",
            ) from None
        status = response.status_code
        if status == 404 and missing_ok:
            return {}
        if 200 <= status < 300:
            try:
                body = response.json() if response.content else {}
            except ValueError:
                raise self.malformed(action) from None
            if not isinstance(body, dict):
                raise self.malformed(action)
            return body
        raise _api_failure(response, action, what, self.label)

    def malformed(self, action: str) -> RotationError:
        return RotationError(
            RotationReason.PROVIDER_UNREACHABLE,
            f"the IAM API {self.label} gave an answer to {action} that is not a key resource",
        )

    def _no_answer(self) -> RotationError:
        return RotationError(
            RotationReason.PROVIDER_UNREACHABLE,
            f"no answer from the IAM API {self.label} within {self.settings.timeout_seconds:g}s",
        )


def _as_rotation_error(error: VerificationError) -> RotationError:
    """A failure to act as the key (read, parse, or exchange it for a token)."""
    reason = {
        Reason.PROVIDER_UNREACHABLE: RotationReason.PROVIDER_UNREACHABLE,
        Reason.PROVIDER_REFUSED: RotationReason.PROVIDER_REFUSED,
        Reason.VERIFICATION_UNAVAILABLE: RotationReason.NOT_SUPPORTED,
    }.get(error.reason, RotationReason.ACCESS_DENIED)
    # Without a working key the operator cannot act as the service account at all.
    return RotationError(reason, f"cannot act as the service account: {error.message}")


def _unproved(error: VerificationError, email: str) -> RotationError:
    """The key in the Secret could not prove, before a rotation identity acts, that it is
    a key of the service account it names; the reason as ``_as_rotation_error`` gives it
    (AccessDenied for a refused key, ProviderUnreachable while the endpoint is down)."""
    reason = _as_rotation_error(error).reason
    return RotationError(
        reason,
        f"the credential's own key did not prove that it is a key of {email} (client_email), "
        f"and the rotation identity acts only for that: {error.message}",
    )


def _api_failure(response: Any, action: str, what: str, label: str) -> RotationError:
    """The IAM API's refusal as a reason; only its HTTP status, its RPC status code and
    an organization-policy constraint's name are taken from the answer."""
    status = int(response.status_code)
    code, constraint = _error_details(response)
    answer = f"HTTP {status}" + (f", {code}" if code else "")
    text = f"the IAM API {label} refused to {what} ({answer})"
    if status in (408, 429) or status >= 500:
        return RotationError(
            RotationReason.PROVIDER_UNREACHABLE, f"the IAM API {label} failed ({answer})"
        )
    if status in (401, 403):
        return RotationError(
            RotationReason.ACCESS_DENIED,
            f"{text}: the service account needs {_PERMISSIONS[action]} on itself",
        )
    if constraint:
        return RotationError(
            RotationReason.PROVIDER_REFUSED,
            f"{text}: the organization policy {constraint} forbids it",
        )
    if action == "create" and code in ("FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"):
        # What GCP answers once a service account has its 10 user-managed keys.
        return RotationError(
            RotationReason.KEY_LIMIT_REACHED,
            f"{text}: a service account has at most 10 keys; delete unused ones",
        )
    if 400 <= status < 500:
        return RotationError(RotationReason.PROVIDER_REFUSED, text)
    return RotationError(
        RotationReason.PROVIDER_UNREACHABLE,
        f"the IAM API {label} gave an unexpected answer ({answer})",
    )


def _error_details(response: Any) -> tuple[str | None, str | None]:
    """The google.rpc status code ("PERMISSION_DENIED") and the name of a violated
    organization-policy constraint, when the error body carries them in their shape."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None, None
    if not isinstance(error, dict):
        return None, None
    raw = error.get("status")
    code = raw if isinstance(raw, str) and _RPC_STATUS.fullmatch(raw) else None
    constraint = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        violations = detail.get("violations") if isinstance(detail, dict) else None
        for violation in violations if isinstance(violations, list) else []:
            kind = violation.get("type") if isinstance(violation, dict) else None
            if isinstance(kind, str) and _CONSTRAINT.fullmatch(kind):
                constraint = kind
    return code, constraint


def _key_path(key_id: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise RotationError(RotationReason.PROVIDER_REFUSED, "not a GCP service-account key id")
    return f"/{key_id}"


def _key_facts_of(resource: object) -> KeyFacts | None:
    """A ServiceAccountKey resource as KeyFacts; None when it has no usable name."""
    if not isinstance(resource, dict) or not isinstance(resource.get("name"), str):
        return None
    key_id = resource["name"].rsplit("/", 1)[-1]
    if not _KEY_ID.fullmatch(key_id):
        return None
    expires = conditions.parse_time(resource.get("validBeforeTime"))
    if expires is not None and expires.year >= _NO_EXPIRY_YEAR:
        expires = None
    return KeyFacts(
        key_id=key_id,
        created=conditions.parse_time(resource.get("validAfterTime")),
        last_used=None,  # the IAM API keeps no per-key last use
        expires=expires,
        active=resource.get("disabled") is not True,
    )


def _key_file(data: object, key_id: str, email: str) -> str | None:
    """The JSON key file in ``privateKeyData``, if it is one for this key and account."""
    if not isinstance(data, str):
        return None
    try:
        text = base64.b64decode(data, validate=True).decode()
        info = _parse_key(text)
    except (ValueError, VerificationError):  # binascii.Error and UnicodeDecodeError too
        return None
    if info.get("private_key_id") != key_id or info["client_email"] != email:
        return None
    return text


# --- permission checks: projects.testIamPermissions --------------------------------------
#
# As the key in the Secret (its token, as ``verify`` gets it), the Cloud Resource Manager
# API v1 at ``ProviderSettings.gcp_resource_manager_url`` answers which of the asked
# permissions the caller holds on the key's project (``project_id``). At most 100
# permissions a request; no permission is needed to ask.

_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
PERMISSIONS_PER_REQUEST = 100


def check_permissions(
    spec: CloudCredentialSpec,
    secrets: SecretValues,
    context: VerifyContext,
    needs: GcpPermissions,
) -> PermissionAnswer:
    info, credentials = _load_key(spec, secrets, context)
    project = info.get("project_id")
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            "the service-account key names no project (project_id): nothing to check on",
        )
    import requests
    from google.auth.transport.requests import AuthorizedSession, Request

    settings = context.settings
    started = time.monotonic()
    label = _endpoint_label(settings.gcp_resource_manager_url)
    url = (
        f"{settings.gcp_resource_manager_url.rstrip('/')}/v1/projects/{project}:testIamPermissions"
    )
    asked = list(needs.permissions)
    held: set[str] = set()
    with requests.Session() as token_session:
        _refresh(credentials, token_session, settings, started)
        # The token is fresh: no refresh (and no retry on 401) inside the API calls.
        session: Any = AuthorizedSession(  # type: ignore[no-untyped-call]
            credentials, refresh_status_codes=(), auth_request=Request(token_session)
        )
        with session:
            for start in range(0, len(asked), PERMISSIONS_PER_REQUEST):
                chunk = asked[start : start + PERMISSIONS_PER_REQUEST]
                remaining = settings.timeout_seconds - (time.monotonic() - started)
                if remaining <= 0:
                    raise _no_answer(label, settings)
                try:
                    response = session.post(url, json={"permissions": chunk}, timeout=remaining,
                                            allow_redirects=False)  # fmt: skip
                except requests.Timeout:
                    raise _no_answer(label, settings) from None
                except (requests.RequestException, OSError):
                    raise VerificationError(
                        Reason.PROVIDER_UNREACHABLE,
                        f"could not talk to the Cloud Resource Manager API {label}",
                    ) from None
                held.update(_held(response, project, label))
    missing = tuple(sorted(p for p in asked if p not in held))
    return PermissionAnswer(len(asked), missing)


def _held(response: Any, project: str, label: str) -> list[str]:
    """The permissions testIamPermissions says the caller holds, or why it would not say
    (only the HTTP status and the RPC status code are taken from a refusal)."""
    status = int(response.status_code)
    if 200 <= status < 300:
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = None
        held = body.get("permissions", []) if isinstance(body, dict) else None
        if not isinstance(held, list):
            raise VerificationError(
                Reason.PROVIDER_UNREACHABLE,
                f"the Cloud Resource Manager API {label} gave an answer that is not a "
                "testIamPermissions response",
            )
        return [p for p in held if isinstance(p, str)]
    code, _ = _error_details(response)
    answer = f"HTTP {status}" + (f", {code}" if code else "")
    what = f"testIamPermissions on project {project}"
    if status in (408, 429) or status >= 500:
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"the Cloud Resource Manager API {label} failed ({answer})"
        )
    if status in (401, 403):
        raise VerificationError(
            Reason.ACCESS_DENIED,
            f"the Cloud Resource Manager API {label} refused {what} ({answer}): is the API "
            "enabled on the project, and the project the key's?",
        )
    raise VerificationError(
        Reason.PROVIDER_REFUSED, f"the Cloud Resource Manager API {label} refused {what} ({answer})"
    )


def _no_answer(label: str, settings: ProviderSettings) -> VerificationError:
    return VerificationError(
        Reason.PROVIDER_UNREACHABLE,
        f"no answer from the Cloud Resource Manager API {label} within "
        f"{settings.timeout_seconds:g}s",
    )
