"""Scaleway: checks an API key (access key + secret key) with the Scaleway API.

``verify`` asks two questions with the Scaleway SDK (an optional dependency, imported
lazily so that the operator runs without it), and proves the key pair between them:

1. IAM ``GET /iam/v1alpha1/api-keys/{access_key}``: does the key exist, and who bears it
   (a user or an application)? Needs the ``IAMReadOnly`` permission set.
2. Account ``GET /account/v3/projects/{project_id}``: can the key see the project, and
   does the project belong to ``spec.scaleway.organizationId`` when that is set? Needs
   ``ProjectReadOnly`` (or more) on the organization.

Scaleway authenticates a request by its ``X-Auth-Token`` header, that is the secret key
alone: the access key is only the name that is looked up in step 1. So between the two
steps ``verify`` proves that the secret key belongs to the access key (``prove_pair``):
Object Storage, S3-compatible, authenticates a request signed with AWS Signature V4 by
the access key *and* the secret key together. A ``GET /`` (ListBuckets) signed with the
pair, at the operator's ``scaleway_s3_url``, answers 200, or ``AccessDenied`` when the
bearer may not use Object Storage: either way the signature was checked and matched.
A pair that does not match is refused with ``SignatureDoesNotMatch`` (the access key is
known, the secret key is not its own) or ``InvalidAccessKeyId``. Without this, a tenant
could name another bearer's access key with its own secret key and be told Verified
with the other bearer's identity. The signature never carries the secret key itself.

Time limit: the SDK calls ``requests.request`` without a timeout, and offers no setting
for one. The API classes used here therefore send their requests themselves (the
SDK's ``API._request`` hook, which every generated method goes through) with the same
URL, headers and body, plus a timeout: what is left of ``timeout_seconds`` for the whole
verification when the request starts. requests applies it to connecting and to each
wait for data, not to the request as a whole: a server slow to accept *and* slow to
answer, or one that keeps trickling bytes, can overrun the budget, and the caller's own
worker timeout covers that. A server that accepts and then says nothing is cut off
after ``timeout_seconds``.

Secrets: the secret key is checked to be a UUID *before* the SDK sees it (the SDK's own
check would put it in its error message), error messages are built from HTTP status
codes and public ids only (never from the response body, which a proxy or a test server
may echo the token into), and exceptions are re-raised ``from None`` so that no SDK
exception, whose text is the response body, is chained to a logged traceback.

Rotation (``list_keys``, ``create_key``, ``delete_key``, ``key_facts``; see the section
at the end) uses the same client, timeout and error handling with the IAM API-key
endpoints, acting with the key in use on the keys of its bearer. When a rotation
identity (an admins' key) signs those calls, every step first proves the credential's
own pair the same way: the identity acts on the bearer of the access key the tenant
named, so that access key must be the tenant's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr

from cloudcred.api.common import SecretKeyRef
from cloudcred.api.credential import SCALEWAY_ACCESS_KEY, CloudCredentialSpec, ScalewaySpec
from cloudcred.api.permissions import ScalewayPermissions
from cloudcred.providers.base import (
    Delivery,
    KeyFacts,
    NewKey,
    PermissionAnswer,
    Reason,
    RotationError,
    RotationReason,
    SecretValues,
    Verification,
    VerificationError,
    VerifyContext,
)

if TYPE_CHECKING:
    import requests
    from scaleway_core.api import Body, Params

SECRET_KEY_ROLE = "secretKey"
ACCESS_KEY_ROLE = "accessKey"  # a rotation identity's own access key
# The keys of a rotation identity's Secret (CredentialBoundary.spec.scaleway), by role.
ROTATION_IDENTITY_KEYS = {ACCESS_KEY_ROLE: "accessKey", SECRET_KEY_ROLE: "secretKey"}
# Managing API keys takes IAMManager, which cannot be narrowed: only an admin-owned
# rotation identity rotates Scaleway keys, never the key itself.
ROTATION_IDENTITY_REQUIRED = True

# Scaleway secret keys are UUIDs in their canonical 8-4-4-4-12 form. Stricter than the
# SDK (uuid.UUID also takes "{...}", "urn:uuid:..." and bare hex, which the API refuses).
_SECRET_KEY = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

_T = TypeVar("_T")


def _scaleway(spec: CloudCredentialSpec) -> ScalewaySpec:
    if spec.scaleway is None:
        raise ValueError("not a Scaleway credential: spec.scaleway is missing")
    return spec.scaleway


def public_id(spec: CloudCredentialSpec) -> str:
    """The access key (SCW...), the public half of the API key."""
    return _scaleway(spec).access_key


def secret_refs(spec: CloudCredentialSpec) -> dict[str, SecretKeyRef]:
    """The one Secret key needed: the API key's secret key."""
    return {SECRET_KEY_ROLE: _scaleway(spec).secret_key_ref}


def _secret_key(secrets: SecretValues) -> str:
    """The secret key, checked to be a UUID; the message never quotes it."""
    value = secrets.get(SECRET_KEY_ROLE)
    if value is None:
        raise VerificationError(Reason.SECRET_KEY_MISSING, "no secret key was provided")
    secret_key = value.get_secret_value()
    if _SECRET_KEY.fullmatch(secret_key):
        return secret_key
    message = "the secret key is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
    if _SECRET_KEY.fullmatch(secret_key.strip()):
        # The usual cause: `echo` without -n when the Secret was made from a file.
        message += "; it has leading or trailing whitespace such as a newline"
    raise VerificationError(Reason.INVALID_SECRET_DATA, message)


@dataclass(frozen=True)
class _Sdk:
    """The pieces of the Scaleway SDK that ``verify`` uses, once imported."""

    client: type[Any]
    iam_api: type[Any]
    project_api: type[Any]
    scaleway_exception: type[Exception]
    requests: Any  # the requests module, which the SDK itself depends on


def _load_sdk() -> _Sdk:
    """Imports the SDK (ImportError when it is not installed) and derives API classes
    whose requests carry a timeout."""
    import requests
    from scaleway.account.v3 import AccountV3ProjectAPI  # type: ignore[import-untyped]
    from scaleway.iam.v1alpha1 import IamV1Alpha1API  # type: ignore[import-untyped]
    from scaleway_core.api import API, ScalewayException
    from scaleway_core.client import Client

    class BoundedAPI(API):
        """The SDK's ``API`` with a shared deadline, a session and no redirects.

        ``_request`` mirrors scaleway_core's own (URL, headers, query, JSON body) and
        adds what it lacks: a timeout. Redirects are not followed because requests
        would resend the X-Auth-Token header to wherever a redirect points.
        """

        def __init__(self, client: Client, session: requests.Session, deadline: float) -> None:
            super().__init__(client)
            self._session = session
            self._deadline = deadline

        def _request(
            self,
            method: str,
            path: str,
            params: Params = {},  # noqa: B006 - the SDK's own signature, never mutated
            headers: dict[str, str] = {},  # noqa: B006
            body: Body | None = None,
        ) -> requests.Response:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise requests.Timeout("the time for this verification is spent")
            method = method.upper()
            all_headers = {"accept": "application/json", "user-agent": self.client.user_agent}
            if method in ("POST", "PUT", "PATCH"):
                all_headers["Content-Type"] = "application/json; charset=utf-8"
            all_headers.update(headers)
            if self.client.secret_key is not None:
                all_headers["x-auth-token"] = self.client.secret_key
            query: list[tuple[str, Any]] = []
            for key, value in params.items():
                if value is not None:
                    query.extend(
                        (key, item) for item in (value if isinstance(value, list) else [value])
                    )
            return self._session.request(
                method,
                f"{self.client.api_url}{path}",
                params=query,
                headers=all_headers,
                data=body if isinstance(body, bytes) else json.dumps({} if body is None else body),
                verify=not self.client.api_allow_insecure,
                timeout=remaining,
                allow_redirects=False,
            )

        def _throw_on_error(self, res: requests.Response) -> None:
            # The SDK's version parses the body first, so a proxy's HTML error page
            # turns into a JSON error without a status code, and it lets 3xx through.
            if not 200 <= res.status_code < 300:
                raise ScalewayException(res)

    # The generated classes are untyped (the scaleway package has no py.typed).
    class Iam(BoundedAPI, IamV1Alpha1API):  # type: ignore[misc]
        pass

    class Projects(BoundedAPI, AccountV3ProjectAPI):  # type: ignore[misc]
        pass

    return _Sdk(
        client=Client,
        iam_api=Iam,
        project_api=Projects,
        scaleway_exception=ScalewayException,
        requests=requests,
    )


def _no_answer(requests: Any, error: Exception, url: str, timeout: float) -> str:
    """Why a request got no answer to read, naming the URL and the error's class only
    (its text may quote the request)."""
    if isinstance(error, requests.Timeout):
        return f"no answer from {url} within {timeout:g}s"
    if isinstance(error, requests.ConnectionError):
        return f"could not connect to {url}"
    return f"request to {url} failed ({type(error).__name__})"


def _ask(
    sdk: _Sdk,
    call: Callable[[], _T],
    *,
    what: str,
    api_url: str,
    timeout: float,
    on_status: Callable[[int], VerificationError | None],
) -> _T:
    """Runs one SDK call and turns its failures into ``VerificationError``.

    ``on_status`` may return a step-specific error for an HTTP status; the common
    mapping applies otherwise. Nothing here reads ``str(exception)`` or the body, and
    every error is raised ``from None``: the SDK exception's text is the response body.
    """
    requests = sdk.requests
    try:
        return call()
    except sdk.scaleway_exception as error:
        status = int(getattr(getattr(error, "response", None), "status_code", 0) or 0)
        specific = on_status(status)
        if specific is not None:
            raise specific from None
        if status == 401:
            reason, answer = Reason.INVALID_CREDENTIALS, "refused the secret key"
        elif status == 403:
            reason, answer = Reason.ACCESS_DENIED, "denied permission"
        elif 400 <= status < 500 and status not in (408, 429):
            # 400, 404, 409, 422, ...: the request itself is refused, and will be again.
            reason, answer = Reason.PROVIDER_REFUSED, "refused the request"
        else:  # 3xx, 408, 429, 5xx, ...: a proxy or an outage, worth trying again later
            reason, answer = Reason.PROVIDER_UNREACHABLE, "answered"
        raise VerificationError(
            reason, f"{what}: the Scaleway API {answer} (HTTP {status})"
        ) from None
    except requests.RequestException as error:
        # Includes a success answer whose body is not JSON (requests' JSONDecodeError).
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"{what}: {_no_answer(requests, error, api_url, timeout)}"
        ) from None
    except (TypeError, ValueError, KeyError):
        # The SDK could not unmarshal the answer (not an object, a bad date, ...).
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"{what}: {api_url} gave an answer that cannot be read"
        ) from None


def _sdk_client(
    scaleway: ScalewaySpec, secret_key: str, context: VerifyContext
) -> tuple[_Sdk, Any]:
    """The SDK and a client signed with the key, at the configured API URL. Raises
    VerificationError (VerificationUnavailable) when the library or the URL is missing."""
    try:
        sdk = _load_sdk()
    except ImportError:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "the Scaleway library is not installed: install cloudcred[scaleway]",
        ) from None
    client_options: dict[str, Any] = {}
    if context.settings.scaleway_api_url:
        # The SDK refuses a trailing slash; an operator setting should not trip on it.
        client_options["api_url"] = context.settings.scaleway_api_url.rstrip("/")
    try:
        client = sdk.client(
            access_key=scaleway.access_key,
            secret_key=secret_key,
            default_project_id=scaleway.project_id,
            default_organization_id=scaleway.organization_id,
            **client_options,
        )
        client.validate()
    except ValueError:
        # The key and ids were checked already, so this is the API URL. The SDK's
        # message could quote the secret key: not used.
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "the Scaleway client refused its settings: check the operator's Scaleway API URL",
        ) from None
    return sdk, client


# Object Storage's error codes that are read (from ``<Code>`` of its XML error document).
# Only these fixed strings are compared with the body, and only they appear in a message.
_S3_MISMATCH = frozenset({"SignatureDoesNotMatch", "InvalidAccessKeyId"})
_S3_AUTHENTICATED = "AccessDenied"  # the signature matched; the bearer may not list buckets
_S3_KNOWN_CODES = _S3_MISMATCH | {
    _S3_AUTHENTICATED,
    "AuthorizationHeaderMalformed",  # the signing region is not the endpoint's
    "RequestTimeTooSkewed",  # the operator's clock
    "InvalidRequest",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
}
_S3_CODE = re.compile(rb"<Code>([A-Za-z]{1,64})</Code>")
_S3_ERROR_BYTES = 16384  # an error document is a few hundred bytes: read no more


def prove_pair(
    sdk: _Sdk, access_key: str, secret_key: str, context: VerifyContext, deadline: float
) -> None:
    """Proves that ``secret_key`` is the secret key of ``access_key``: a ListBuckets
    request signed with both (AWS Signature V4, which sends a signature, never the key)
    to Object Storage, which checks the signature before anything else. Blocking, until
    ``deadline`` at most; raises VerificationError, whose messages name the field and
    the answer's status and code, never the secret key nor anything else of the body.
    """
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    requests = sdk.requests
    settings = context.settings
    url = settings.scaleway_s3_url.rstrip("/") + "/"
    what = f"proving that the secret key belongs to access key {access_key}"
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"{what}: the time for this check is spent"
        )
    signed = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", settings.scaleway_s3_region).add_auth(
        signed
    )
    try:
        with (
            requests.Session() as http,
            http.get(
                url,
                headers=dict(signed.headers.items()),
                timeout=remaining,
                allow_redirects=False,  # a redirect is an answer like any other: not proof
                stream=True,
            ) as response,
        ):
            status = response.status_code
            head = b"" if status == 200 else response.raw.read(_S3_ERROR_BYTES, decode_content=True)
    except (requests.RequestException, OSError, ValueError) as error:
        problem = _no_answer(requests, error, url, settings.timeout_seconds)
        raise VerificationError(Reason.PROVIDER_UNREACHABLE, f"{what}: {problem}") from None
    if status == 200:
        return
    found = _S3_CODE.search(head or b"")
    code = found.group(1).decode() if found else ""
    code = code if code in _S3_KNOWN_CODES else ""
    answer = f"HTTP {status}" + (f" {code}" if code else "")
    if status == 403 and code == _S3_AUTHENTICATED:
        return  # authenticated, not authorised: the signature matched
    if code == "SignatureDoesNotMatch":
        raise VerificationError(
            Reason.INVALID_CREDENTIALS,
            f"spec.scaleway.accessKey: the secret key does not belong to access key "
            f"{access_key} (Object Storage: {answer}): the secret key of another API key "
            "cannot vouch for this one",
        )
    if code == "InvalidAccessKeyId":
        raise VerificationError(
            Reason.INVALID_CREDENTIALS,
            f"spec.scaleway.accessKey: the secret key cannot be shown to belong to access "
            f"key {access_key}: Object Storage does not know that access key ({answer})",
        )
    if 400 <= status < 500 and status not in (408, 429) and code != "SlowDown":
        raise VerificationError(
            Reason.PROVIDER_REFUSED,
            f"{what}: Object Storage at {url} refused the request ({answer}): check the "
            "operator's Scaleway Object Storage URL and region",
        )
    # 3xx, 408, 429, 5xx, ...: a proxy, a rate limit or an outage; no proof, try later.
    raise VerificationError(Reason.PROVIDER_UNREACHABLE, f"{what}: {url} answered ({answer})")


def verify(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> Verification:
    """Checks the API key, the project and the organization with the Scaleway API.

    Blocking: at most ``context.settings.timeout_seconds`` of network time in all.
    Raises ``VerificationError`` when the answer is no.
    """
    scaleway = _scaleway(spec)
    secret_key = _secret_key(secrets)
    sdk, client = _sdk_client(scaleway, secret_key, context)
    settings = context.settings
    api_url = str(client.api_url)
    access_key = scaleway.access_key
    project_id = scaleway.project_id
    timeout = settings.timeout_seconds

    def key_status(status: int) -> VerificationError | None:
        if status == 403:
            return VerificationError(
                Reason.ACCESS_DENIED,
                f"access key {access_key} may not read its own API key (HTTP 403): "
                "grant its bearer the IAMReadOnly permission set",
            )
        if status == 404:
            return VerificationError(
                Reason.INVALID_CREDENTIALS,
                f"access key {access_key} does not exist in the key's organization (HTTP 404)",
            )
        return None

    def project_status(status: int) -> VerificationError | None:
        if status in (403, 404):
            return VerificationError(
                Reason.ACCESS_DENIED,
                f"project {project_id} not found or not visible to this key (HTTP {status})",
            )
        return None

    deadline = time.monotonic() + timeout
    with sdk.requests.Session() as session:
        iam = sdk.iam_api(client, session, deadline)
        projects = sdk.project_api(client, session, deadline)
        api_key = _ask(
            sdk,
            lambda: iam.get_api_key(access_key=access_key),
            what=f"looking up access key {access_key}",
            api_url=api_url,
            timeout=timeout,
            on_status=key_status,
        )
        # IAM answered for the secret key's bearer about any access key it may read:
        # nothing of that answer is trusted until the pair is proved to be one key.
        prove_pair(sdk, access_key, secret_key, context, deadline)
        project = _ask(
            sdk,
            lambda: projects.get_project(project_id=project_id),
            what=f"reading project {project_id}",
            api_url=api_url,
            timeout=timeout,
            on_status=project_status,
        )

    organization_id = str(project.organization_id or "")
    if scaleway.organization_id and organization_id.lower() != scaleway.organization_id.lower():
        raise VerificationError(
            Reason.ACCESS_DENIED,
            f"project {project_id} belongs to organization {organization_id or '(none)'}, "
            f"not to organization {scaleway.organization_id}",
        )
    if str(project.status) == "deleting":
        raise VerificationError(Reason.ACCESS_DENIED, f"project {project_id} is being deleted")

    if api_key.user_id:
        bearer = f"user:{api_key.user_id}"
    elif api_key.application_id:
        bearer = f"application:{api_key.application_id}"
    else:
        bearer = f"api-key:{access_key}"
    return Verification(
        identity=f"{bearer} (organization {organization_id or 'unknown'})",
        key_created_time=api_key.created_at,
        static_keys=True,
    )


def check_region(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> None:
    """The deploy step's check. Scaleway credentials are not tied to a region, so it is the
    same check as verification."""
    verify(spec, secrets, context)


def delivery(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> Delivery:
    """The environment variables of Scaleway's CLI, SDKs and Terraform provider."""
    scaleway = _scaleway(spec)
    data = {
        "SCW_ACCESS_KEY": SecretStr(scaleway.access_key),
        "SCW_SECRET_KEY": secrets[SECRET_KEY_ROLE],
        "SCW_DEFAULT_PROJECT_ID": SecretStr(scaleway.project_id),
        "SCW_DEFAULT_REGION": SecretStr(region),
    }
    if scaleway.organization_id:
        data["SCW_DEFAULT_ORGANIZATION_ID"] = SecretStr(scaleway.organization_id)
    return Delivery(data)


# --- key rotation ------------------------------------------------------------------------
#
# The functions below act on the API keys of the bearer (IAM application or user) of the
# key in use, with that key itself: list, create, delete. Managing API keys needs the
# IAMManager permission set on the organization; Scaleway has nothing narrower. The same
# client, timeout and error hygiene as ``verify`` apply. Scaleway says nothing of when a
# key was last used, and a key cannot be disabled, only deleted (or left to expire).

# Error ``type`` codes of Scaleway's error bodies that are read. Only these fixed strings
# are compared with the body (and may appear in a message): nothing else of the body is.
_QUOTAS_EXCEEDED = "quotas_exceeded"
_KNOWN_ERROR_TYPES = frozenset(
    {
        _QUOTAS_EXCEEDED,
        "permissions_denied",
        "denied_authentication",
        "not_found",
        "invalid_arguments",
        "precondition_failed",
        "too_many_requests",
    }
)
_ACCESS_KEY = re.compile(SCALEWAY_ACCESS_KEY)
# A failed proof of the credential's own pair, as a rotation step reports it.
_ROTATION_REASONS = {
    Reason.INVALID_CREDENTIALS: RotationReason.ACCESS_DENIED,
    Reason.INVALID_SECRET_DATA: RotationReason.ACCESS_DENIED,
    Reason.SECRET_KEY_MISSING: RotationReason.ACCESS_DENIED,
    Reason.PROVIDER_UNREACHABLE: RotationReason.PROVIDER_UNREACHABLE,
    Reason.PROVIDER_REFUSED: RotationReason.PROVIDER_REFUSED,
}
_PAGE_SIZE = 100  # the API's largest page
_MAX_PAGES = 20  # 2,000 keys: far beyond any quota, a bound on a server paging forever
NEW_KEY_DESCRIPTION = "cloudcred"


@dataclass(frozen=True)
class _Session:
    """What one rotation step needs: the SDK, a client for the key in use, its limits."""

    sdk: _Sdk
    client: Any
    access_key: str
    api_url: str
    timeout: float


def _rotation_session(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> _Session:
    """The client for the key in use (``spec``'s access key, ``secrets``' secret key),
    built as ``verify`` builds it; failures become ``RotationError``."""
    scaleway = signer = _scaleway(spec)
    acting = context.rotation_identity or secrets
    try:
        secret_key = _secret_key(acting)
    except VerificationError as error:  # its message never quotes the secret
        raise RotationError(RotationReason.ACCESS_DENIED, error.message) from None
    if context.rotation_identity is not None:
        # An admin-owned key signs; the key in use is still the one whose bearer's keys
        # are managed (looked up by its access key).
        identity_key = context.rotation_identity[ACCESS_KEY_ROLE].get_secret_value()
        signer = scaleway.model_copy(update={"access_key": identity_key})
    try:
        sdk, client = _sdk_client(signer, secret_key, context)
    except VerificationError as error:  # no library, or an API URL the SDK refuses
        raise RotationError(RotationReason.NOT_SUPPORTED, error.message) from None
    return _Session(
        sdk=sdk,
        client=client,
        access_key=scaleway.access_key,
        api_url=str(client.api_url),
        timeout=context.settings.timeout_seconds,
    )


def _error_type(error: Exception) -> str | None:
    """The error body's ``type`` when it is one of the known codes, else None. Reads the
    body as JSON and keeps nothing of it but that fixed string."""
    response = getattr(error, "response", None)
    try:
        body = response.json() if response is not None else None
    except ValueError:  # not JSON: a proxy's page
        return None
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) and kind in _KNOWN_ERROR_TYPES else None


def _act(
    session: _Session,
    call: Callable[[], _T],
    *,
    what: str,
    on_status: Callable[[int, str | None], RotationError | None] = lambda status, kind: None,
) -> _T:
    """Runs one SDK call and turns its failures into ``RotationError``, as ``_ask`` does
    for verification: from status codes and known error codes only, raised ``from None``.

    ``on_status`` may return a step-specific error for an HTTP status and error code.
    """
    requests = session.sdk.requests
    api_url = session.api_url
    try:
        return call()
    except session.sdk.scaleway_exception as error:
        status = int(getattr(getattr(error, "response", None), "status_code", 0) or 0)
        kind = _error_type(error)
        specific = on_status(status, kind)
        if specific is not None:
            raise specific from None
        code = f"HTTP {status}" + (f" {kind}" if kind else "")
        if kind == _QUOTAS_EXCEEDED and 400 <= status < 500:
            reason, answer = RotationReason.KEY_LIMIT_REACHED, "reached a quota"
        elif status == 401:
            reason, answer = RotationReason.ACCESS_DENIED, "refused the secret key"
        elif status == 403:
            reason, answer = RotationReason.ACCESS_DENIED, "denied permission"
        elif 400 <= status < 500 and status not in (408, 429):
            reason, answer = RotationReason.PROVIDER_REFUSED, "refused the request"
        else:  # 3xx, 408, 429, 5xx: a proxy, a rate limit or an outage; try again later
            reason, answer = RotationReason.PROVIDER_UNREACHABLE, "answered"
        raise RotationError(reason, f"{what}: the Scaleway API {answer} ({code})") from None
    except requests.RequestException as error:
        problem = _no_answer(requests, error, api_url, session.timeout)
        raise RotationError(RotationReason.PROVIDER_UNREACHABLE, f"{what}: {problem}") from None
    except (TypeError, ValueError, KeyError):
        raise RotationError(
            RotationReason.PROVIDER_UNREACHABLE,
            f"{what}: {api_url} gave an answer that cannot be read",
        ) from None


def _utc(moment: datetime | None) -> datetime | None:
    """A time from the API, in UTC (one sent without a zone is taken as UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _facts(api_key: Any) -> KeyFacts:
    """KeyFacts of an SDK ``APIKey``: no last use at Scaleway; an expired key is inactive."""
    expires = _utc(api_key.expires_at)
    return KeyFacts(
        key_id=str(api_key.access_key),
        created=_utc(api_key.created_at),
        last_used=None,
        expires=expires,
        active=expires is None or expires > datetime.now(UTC),
    )


def _own_key(session: _Session, iam: Any, *, what: str) -> Any:
    """The key in use, as IAM describes it (its bearer, dates, default project)."""
    access_key = session.access_key

    def on_status(status: int, kind: str | None) -> RotationError | None:
        if status == 403 and kind != _QUOTAS_EXCEEDED:
            return RotationError(
                RotationReason.ACCESS_DENIED,
                f"{what}: access key {access_key} may not read its own API key (HTTP 403): "
                "grant its bearer the IAMManager permission set",
            )
        if status == 404:
            return RotationError(
                RotationReason.PROVIDER_REFUSED,
                f"{what}: access key {access_key} does not exist in the key's organization "
                "(HTTP 404)",
            )
        return None

    return _act(
        session, lambda: iam.get_api_key(access_key=access_key), what=what, on_status=on_status
    )


class _Gone(Exception):
    """The key asked about is not there (HTTP 404)."""


def _unless_gone(
    session: _Session,
    call: Callable[[], _T],
    *,
    what: str,
    on_status: Callable[[int, str | None], RotationError | None],
) -> _T | None:
    """``_act``, except that a 404 gives None."""

    def gone_or(status: int, kind: str | None) -> RotationError | None:
        if status == 404:
            raise _Gone
        return on_status(status, kind)

    try:
        return _act(session, call, what=what, on_status=gone_or)
    except _Gone:
        return None


def _bearer(api_key: Any, access_key: str, what: str) -> dict[str, str]:
    """The IAM filter naming the key's bearer: {"application_id": ...} or {"user_id": ...}."""
    if api_key.application_id:
        return {"application_id": str(api_key.application_id)}
    if api_key.user_id:
        return {"user_id": str(api_key.user_id)}
    raise RotationError(
        RotationReason.NOT_SUPPORTED,
        f"{what}: access key {access_key} has no user or application as its bearer",
    )


def _denied(what: str, access_key: str) -> Callable[[int, str | None], RotationError | None]:
    """A 403 on a key-management call, with the permission it needs."""

    def on_status(status: int, kind: str | None) -> RotationError | None:
        if status == 403 and kind != _QUOTAS_EXCEEDED:
            return RotationError(
                RotationReason.ACCESS_DENIED,
                f"{what}: access key {access_key} may not manage its bearer's API keys "
                "(HTTP 403): grant its bearer the IAMManager permission set",
            )
        return None

    return on_status


def _session_and_deadline(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> tuple[_Session, float]:
    """The session of one rotation step and its deadline. With a rotation identity, the
    credential's own pair is proved first (``prove_pair``): the identity acts on the
    bearer of the access key the spec names, which IAM never ties to the tenant's secret
    key. Without one, the key acts with its own secret key, within its own bearer's
    rights, which IAM checks."""
    session = _rotation_session(spec, secrets, context)
    deadline = time.monotonic() + session.timeout
    if context.rotation_identity is not None:
        try:
            prove_pair(session.sdk, session.access_key, _secret_key(secrets), context, deadline)
        except VerificationError as error:  # its message never quotes the secret
            reason = _ROTATION_REASONS.get(error.reason, RotationReason.PROVIDER_REFUSED)
            raise RotationError(reason, error.message) from None
    return session, deadline


def key_facts(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> KeyFacts | None:
    """What IAM says of the key in use: created, expires (no last use at Scaleway).
    None when IAM does not know the access key. Blocking, ``timeout_seconds`` at most."""
    session, deadline = _session_and_deadline(spec, secrets, context)
    access_key = session.access_key
    what = f"reading access key {access_key}"

    def on_status(status: int, kind: str | None) -> RotationError | None:
        if status == 403:
            return RotationError(
                RotationReason.ACCESS_DENIED,
                f"{what}: access key {access_key} may not read its own API key (HTTP 403): "
                "grant its bearer the IAMReadOnly permission set",
            )
        return None

    with session.sdk.requests.Session() as http:
        iam = session.sdk.iam_api(session.client, http, deadline)
        api_key = _unless_gone(
            session,
            lambda: iam.get_api_key(access_key=access_key),
            what=what,
            on_status=on_status,
        )
    return None if api_key is None else _facts(api_key)


def list_keys(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> list[KeyFacts]:
    """Every API key of the key in use's bearer (application or user), oldest first.
    Blocking, ``timeout_seconds`` at most for all pages."""
    session, deadline = _session_and_deadline(spec, secrets, context)
    what = f"listing the API keys of access key {session.access_key}'s bearer"
    with session.sdk.requests.Session() as http:
        iam = session.sdk.iam_api(session.client, http, deadline)
        bearer = _bearer(_own_key(session, iam, what=what), session.access_key, what)
        keys: list[KeyFacts] = []
        for page in range(1, _MAX_PAGES + 1):
            answer = _act(
                session,
                functools.partial(
                    iam.list_api_keys,
                    page=page,
                    page_size=_PAGE_SIZE,
                    order_by="created_at_asc",
                    **bearer,
                ),
                what=what,
                on_status=_denied(what, session.access_key),
            )
            keys.extend(_facts(api_key) for api_key in answer.api_keys)
            if len(answer.api_keys) < _PAGE_SIZE or len(keys) >= answer.total_count:
                break
    return keys


def create_key(spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext) -> NewKey:
    """A new API key for the key in use's bearer, with the same default project and, when
    the key in use expires, the same lifetime from now. Blocking.

    Raises ``RotationError``: KeyLimitReached when the organization's API key quota is
    reached, AccessDenied without IAMManager.
    """
    session, deadline = _session_and_deadline(spec, secrets, context)
    what = f"creating an API key for the bearer of access key {session.access_key}"
    with session.sdk.requests.Session() as http:
        iam = session.sdk.iam_api(session.client, http, deadline)
        current = _own_key(session, iam, what=what)
        bearer = _bearer(current, session.access_key, what)
        expires_at: datetime | None = None
        current_created, current_expires = _utc(current.created_at), _utc(current.expires_at)
        if current_created is not None and current_expires is not None:
            # An organization may require keys to expire: keep the lifetime the key had.
            expires_at = datetime.now(UTC) + (current_expires - current_created)
        created = _act(
            session,
            lambda: iam.create_api_key(
                description=NEW_KEY_DESCRIPTION,
                expires_at=expires_at,
                default_project_id=current.default_project_id or _scaleway(spec).project_id,
                **bearer,
            ),
            what=what,
            on_status=_denied(what, session.access_key),
        )
        access_key = str(created.access_key or "")
        secret_key = created.secret_key if isinstance(created.secret_key, str) else ""
        if not _ACCESS_KEY.fullmatch(access_key):
            raise RotationError(
                RotationReason.PROVIDER_UNREACHABLE,
                f"{what}: the answer holds no valid access key",
            )
        if not _SECRET_KEY.fullmatch(secret_key):
            # A key nobody can use: remove it rather than leave it behind.
            with contextlib.suppress(RotationError):  # resume finds keys not recorded
                _act(session, lambda: iam.delete_api_key(access_key=access_key), what=what)
            raise RotationError(
                RotationReason.PROVIDER_UNREACHABLE,
                f"{what}: the answer for new access key {access_key} holds no valid secret key",
            )
    return NewKey(facts=_facts(created), secret_data={SECRET_KEY_ROLE: SecretStr(secret_key)})


def deactivate_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> bool:
    """Scaleway API keys have no disabled state: False, and nothing is asked."""
    return False


def delete_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> None:
    """Deletes the API key ``key_id`` (an access key); one already gone is fine. The key
    in use, which the call itself authenticates with, is never deleted. Blocking."""
    scaleway = _scaleway(spec)
    what = f"deleting access key {key_id}"
    if not _ACCESS_KEY.fullmatch(key_id):
        # It goes into the URL path: only a well-formed access key is sent.
        raise RotationError(RotationReason.PROVIDER_REFUSED, "not a Scaleway access key")
    if key_id == scaleway.access_key:
        raise RotationError(
            RotationReason.PROVIDER_REFUSED,
            f"{what}: it is the key in use, which the request would be made with",
        )
    session, deadline = _session_and_deadline(spec, secrets, context)
    with session.sdk.requests.Session() as http:
        iam = session.sdk.iam_api(session.client, http, deadline)
        _unless_gone(
            session,
            lambda: iam.delete_api_key(access_key=key_id),
            what=what,
            on_status=_denied(what, session.access_key),
        )


# --- permission checks: the bearer's policies and their permission sets ----------------
#
# As the key in use: its bearer (IAM ``get_api_key``), the groups it belongs to, the
# policies of the bearer and of those groups, and each policy's rules. A rule grants its
# permission sets on the credential's project when it names the project, or the whole
# organization. Needs the IAMReadOnly permission set, as verification does.


def check_permissions(
    spec: CloudCredentialSpec,
    secrets: SecretValues,
    context: VerifyContext,
    needs: ScalewayPermissions,
) -> PermissionAnswer:
    scaleway = _scaleway(spec)
    sdk, client = _sdk_client(scaleway, _secret_key(secrets), context)
    api_url, timeout = str(client.api_url), context.settings.timeout_seconds
    access_key, project_id = scaleway.access_key, scaleway.project_id

    def on_status(status: int) -> VerificationError | None:
        if status == 403:
            return VerificationError(
                Reason.ACCESS_DENIED,
                f"access key {access_key} may not read its bearer's policies (HTTP 403): "
                "grant its bearer the IAMReadOnly permission set",
            )
        return None

    ask = functools.partial(_ask, sdk, api_url=api_url, timeout=timeout, on_status=on_status)
    deadline = time.monotonic() + timeout
    with sdk.requests.Session() as session:
        iam = sdk.iam_api(client, session, deadline)
        api_key = ask(lambda: iam.get_api_key(access_key=access_key),
                      what=f"looking up access key {access_key}")  # fmt: skip
        organization = scaleway.organization_id
        if not organization:
            projects = sdk.project_api(client, session, deadline)
            project = ask(lambda: projects.get_project(project_id=project_id),
                          what=f"reading project {project_id}")  # fmt: skip
            organization = str(project.organization_id)
        if api_key.application_id:
            bearer = {"application_ids": [str(api_key.application_id)]}
        elif api_key.user_id:
            bearer = {"user_ids": [str(api_key.user_id)]}
        else:
            raise VerificationError(Reason.PROVIDER_REFUSED, f"access key {access_key} has no "
                                    "user or application as its bearer")  # fmt: skip
        groups = ask(lambda: iam.list_groups_all(organization_id=organization, **bearer),
                     what="listing the bearer's groups")  # fmt: skip
        policies = ask(lambda: iam.list_policies_all(organization_id=organization, **bearer),
                       what="listing the bearer's policies")  # fmt: skip
        if groups:
            group_ids = [str(g.id) for g in groups]
            policies += ask(lambda: iam.list_policies_all(organization_id=organization,
                                                          group_ids=group_ids),
                            what="listing its groups' policies")  # fmt: skip
        held: set[str] = set()
        for policy in {str(p.id): p for p in policies}.values():
            rules = ask(functools.partial(iam.list_rules_all, policy_id=str(policy.id)),
                        what=f"reading the rules of policy {policy.id}")  # fmt: skip
            for rule in rules:
                if rule.organization_id or project_id in (rule.project_ids or []):
                    held.update(str(name) for name in rule.permission_set_names or [])
    missing = tuple(sorted(n for n in needs.permission_sets if n not in held))
    return PermissionAnswer(len(needs.permission_sets), missing)
