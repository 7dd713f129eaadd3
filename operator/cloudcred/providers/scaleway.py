"""Scaleway: checks an API key (access key + secret key) with the Scaleway API.

``verify`` asks two questions with the Scaleway SDK (an optional dependency, imported
lazily so that the operator runs without it):

1. IAM ``GET /iam/v1alpha1/api-keys/{access_key}``: does the key exist, and who bears it
   (a user or an application)? Needs the ``IAMReadOnly`` permission set.
2. Account ``GET /account/v3/projects/{project_id}``: can the key see the project, and
   does the project belong to ``spec.scaleway.organizationId`` when that is set? Needs
   ``ProjectReadOnly`` (or more) on the organization.

Scaleway authenticates a request by its ``X-Auth-Token`` header, that is the secret key
alone: the access key is only the name that is looked up in step 1.

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
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr

from cloudcred.api.common import SecretKeyRef
from cloudcred.api.credential import CloudCredentialSpec, ScalewaySpec
from cloudcred.providers.base import (
    Delivery,
    Reason,
    SecretValues,
    Verification,
    VerificationError,
    VerifyContext,
)

if TYPE_CHECKING:
    import requests
    from scaleway_core.api import Body, Params

SECRET_KEY_ROLE = "secretKey"

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
    except requests.Timeout:
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE,
            f"{what}: no answer from {api_url} within {timeout:g}s",
        ) from None
    except requests.ConnectionError:
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"{what}: could not connect to {api_url}"
        ) from None
    except requests.RequestException as error:
        # Includes a success answer whose body is not JSON (requests' JSONDecodeError).
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE,
            f"{what}: request to {api_url} failed ({type(error).__name__})",
        ) from None
    except (TypeError, ValueError, KeyError):
        # The SDK could not unmarshal the answer (not an object, a bad date, ...).
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"{what}: {api_url} gave an answer that cannot be read"
        ) from None


def verify(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> Verification:
    """Checks the API key, the project and the organization with the Scaleway API.

    Blocking: at most ``context.settings.timeout_seconds`` of network time in all.
    Raises ``VerificationError`` when the answer is no.
    """
    scaleway = _scaleway(spec)
    secret_key = _secret_key(secrets)
    try:
        sdk = _load_sdk()
    except ImportError:
        raise VerificationError(
            Reason.VERIFICATION_UNAVAILABLE,
            "the Scaleway library is not installed: install cloudcred[scaleway]",
        ) from None

    settings = context.settings
    client_options: dict[str, Any] = {}
    if settings.scaleway_api_url:
        # The SDK refuses a trailing slash; an operator setting should not trip on it.
        client_options["api_url"] = settings.scaleway_api_url.rstrip("/")
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
