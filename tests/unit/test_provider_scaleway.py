"""The Scaleway verifier against a local fake of the three Scaleway endpoints it calls.

The SDK is not mocked: it sends real HTTP requests to a small ``http.server`` on
127.0.0.1 that answers like the IAM and Account APIs (paths and JSON shapes as the
SDK's generated code expects them), and like Object Storage for the proof that the
secret key belongs to the access key (a ListBuckets request signed with AWS Signature
V4, checked with botocore's signer: ``tests/scaleway.py``).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.providers import scaleway
from cloudcred.providers.base import (
    ProviderSettings,
    Reason,
    Verification,
    VerificationError,
    VerifyContext,
)
from tests.scaleway import is_object_storage, object_storage_answer

ACCESS_KEY = "SCWABCDEFGHIJ0123456"
SECRET_KEY = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
OTHER_SECRET_KEY = "11111111-2222-4333-8444-555555555555"
# Another bearer's API key, in the same organization: its access key is public.
VICTIM_ACCESS_KEY = "SCWVICTIMVICTIM00000"
VICTIM_SECRET_KEY = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
ORGANIZATION_ID = "6a0f2c2e-1a7b-4c11-9f0e-8d4a3b2c1d0e"
OTHER_ORGANIZATION_ID = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
APPLICATION_ID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
USER_ID = "4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a"
PROJECT_ID = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
HIDDEN_PROJECT_ID = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"  # exists, not visible: 403
UNKNOWN_PROJECT_ID = "8b9c0d1e-2f3a-4b4c-8d5e-6f7a8b9c0d1e"  # does not exist: 404
KEY_CREATED = "2024-03-01T10:20:30.123456Z"
TIMEOUT = 2.0
SIGV4_ACCESS_KEY = re.compile(r"Credential=([A-Z0-9]+)/")
CODE = re.compile(rb"<Code>([A-Za-z]+)</Code>")


@dataclass
class FakeScaleway:
    """State of the fake API; tests change it before calling ``verify``."""

    url: str
    secret_key: str = SECRET_KEY
    api_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    hidden_projects: set[str] = field(default_factory=set)
    iam_forbidden: bool = False  # the key lacks IAMReadOnly
    echo_token: bool = False  # error bodies quote the X-Auth-Token they received
    status_override: int | None = None  # answer every request with this status
    raw_body: bytes | None = None  # answer every request with 200 and this body
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    # Object Storage: the secret key of each access key it knows, whether their bearers
    # may list buckets (otherwise AccessDenied), an answer that replaces its own, and
    # the access key each proof named with the code it got ("" for 200).
    s3_keys: dict[str, str] = field(default_factory=lambda: {ACCESS_KEY: SECRET_KEY})
    s3_may_list: bool = True
    s3_override: tuple[int, bytes] | None = None
    proofs: list[tuple[str, str]] = field(default_factory=list)
    s3_seen: list[str] = field(default_factory=list)  # the headers of each proof request


def _s3_error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()


def _handler(fake: FakeScaleway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

        def _send(self, status: int, body: dict[str, Any] | bytes) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str) -> None:
            body: dict[str, Any] = {"message": message, "type": kind}
            if fake.echo_token:
                # A careless server or proxy: the token comes back in the error.
                body["details"] = f"token {self.headers.get('X-Auth-Token')} was refused"
            self._send(status, body)

        def _object_storage(self, path: str) -> None:
            status, body, _ = object_storage_answer(
                "GET", path, self.headers, fake.s3_keys.get,
                may_list=lambda access_key: fake.s3_may_list,
            )  # fmt: skip
            if fake.s3_override is not None:
                status, body = fake.s3_override
            fake.s3_seen.append(str(self.headers))
            named = SIGV4_ACCESS_KEY.search(self.headers.get("Authorization") or "")
            code = CODE.search(body)
            fake.proofs.append(
                (named.group(1) if named else "", code.group(1).decode() if code else "")
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if is_object_storage("GET", path, self.headers):
                self._object_storage(path)
                return
            fake.requests.append(("GET", path))
            if fake.status_override is not None:
                self._error(fake.status_override, "internal error", "internal")
                return
            if fake.raw_body is not None:
                self._send(200, fake.raw_body)
                return
            if self.headers.get("X-Auth-Token") != fake.secret_key:
                self._error(401, "authentication is denied", "denied_authentication")
                return
            iam_prefix = "/iam/v1alpha1/api-keys/"
            project_prefix = "/account/v3/projects/"
            if path.startswith(iam_prefix):
                if fake.iam_forbidden:
                    self._error(403, "insufficient permissions", "permissions_denied")
                    return
                key = fake.api_keys.get(path.removeprefix(iam_prefix))
                if key is None:
                    self._error(404, "resource is not found", "not_found")
                else:
                    self._send(200, key)
            elif path.startswith(project_prefix):
                project_id = path.removeprefix(project_prefix)
                if project_id in fake.hidden_projects:
                    self._error(403, "insufficient permissions", "permissions_denied")
                elif project_id in fake.projects:
                    self._send(200, fake.projects[project_id])
                else:
                    self._error(404, "resource is not found", "not_found")
            else:
                self._error(404, "unknown path", "not_found")

    return Handler


def _api_key(**overrides: Any) -> dict[str, Any]:
    """An API key as ``GET /iam/v1alpha1/api-keys/{access_key}`` returns it."""
    key: dict[str, Any] = {
        "access_key": ACCESS_KEY,
        "secret_key": None,  # only shown when the key is created
        "application_id": APPLICATION_ID,
        "description": "cloudcred test key",
        "created_at": KEY_CREATED,
        "updated_at": KEY_CREATED,
        "expires_at": None,
        "default_project_id": PROJECT_ID,
        "editable": True,
        "deletable": True,
        "managed": False,
        "creation_ip": "192.0.2.10",
    }
    key.update(overrides)
    return key


def _project(project_id: str, organization_id: str = ORGANIZATION_ID) -> dict[str, Any]:
    """A project as ``GET /account/v3/projects/{project_id}`` returns it."""
    return {
        "id": project_id,
        "name": "production",
        "organization_id": organization_id,
        "created_at": "2023-01-01T00:00:00Z",
        "updated_at": "2023-01-01T00:00:00Z",
        "description": "",
        "status": "active",
        "qualification": None,
    }


@pytest.fixture
def fake() -> Iterator[FakeScaleway]:
    """The fake API on an ephemeral port, with one key and one visible project."""
    state = FakeScaleway(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    state.api_keys[ACCESS_KEY] = _api_key()
    state.projects[PROJECT_ID] = _project(PROJECT_ID)
    state.projects[HIDDEN_PROJECT_ID] = _project(HIDDEN_PROJECT_ID)
    state.hidden_projects.add(HIDDEN_PROJECT_ID)
    # A short poll interval: shutdown() waits for it, and every test tears a server down.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-scaleway"
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) but never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _closed_port() -> int:
    """A port nothing listens on (bound then released: it stays free in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _spec(
    project_id: str = PROJECT_ID,
    organization_id: str | None = ORGANIZATION_ID,
    access_key: str = ACCESS_KEY,
) -> CloudCredentialSpec:
    block: dict[str, Any] = {
        "accessKey": access_key,
        "secretKeyRef": {"name": "scaleway-key", "key": "secret-key"},
        "projectId": project_id,
    }
    if organization_id is not None:
        block["organizationId"] = organization_id
    return CloudCredentialSpec.model_validate({"provider": "SCALEWAY", "scaleway": block})


def _context(url: str, timeout: float = TIMEOUT) -> VerifyContext:
    return VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(
            scaleway_api_url=url, scaleway_s3_url=url, timeout_seconds=timeout
        ),
    )


def _verify(
    url: str,
    secret_key: str = SECRET_KEY,
    *,
    project_id: str = PROJECT_ID,
    organization_id: str | None = ORGANIZATION_ID,
) -> Verification:
    return scaleway.verify(
        _spec(project_id, organization_id),
        {"secretKey": SecretStr(secret_key)},
        _context(url),
    )


def _refused(url: str, secret_key: str = SECRET_KEY, **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        _verify(url, secret_key, **kwargs)
    error = caught.value
    _assert_no_leak(error, secret_key)
    return error


def _assert_no_leak(error: VerificationError, secret_key: str) -> None:
    """The secret key is nowhere in the error, nor in an exception chained to it."""
    assert secret_key not in error.message
    assert secret_key not in str(error)
    assert secret_key not in repr(error)
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


# --- public_id and secret_refs ---------------------------------------------------------


def test_public_id_is_the_access_key() -> None:
    assert scaleway.public_id(_spec()) == ACCESS_KEY


def test_secret_refs_name_the_secret_key() -> None:
    refs = scaleway.secret_refs(_spec())
    assert list(refs) == ["secretKey"]
    assert (refs["secretKey"].name, refs["secretKey"].key) == ("scaleway-key", "secret-key")


def test_other_providers_are_refused() -> None:
    spec = CloudCredentialSpec.model_validate(
        {
            "provider": "AZURE",
            "azure": {
                "tenantId": ORGANIZATION_ID,
                "subscriptionId": PROJECT_ID,
                "clientId": APPLICATION_ID,
                "clientSecretRef": {"name": "azure", "key": "secret"},
            },
        }
    )
    with pytest.raises(ValueError, match="not a Scaleway credential"):
        scaleway.public_id(spec)


# --- success ---------------------------------------------------------------------------


def test_valid_key_of_an_application(fake: FakeScaleway) -> None:
    result = _verify(fake.url)
    assert result.identity == f"application:{APPLICATION_ID} (organization {ORGANIZATION_ID})"
    assert result.static_keys is True
    assert result.key_created_time == datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=UTC)
    assert fake.requests == [
        ("GET", f"/iam/v1alpha1/api-keys/{ACCESS_KEY}"),
        ("GET", f"/account/v3/projects/{PROJECT_ID}"),
    ]
    assert fake.proofs == [(ACCESS_KEY, "")]  # ListBuckets signed with the pair: 200


def test_valid_key_of_a_user(fake: FakeScaleway) -> None:
    fake.api_keys[ACCESS_KEY] = _api_key(application_id=None, user_id=USER_ID)
    assert _verify(fake.url).identity == f"user:{USER_ID} (organization {ORGANIZATION_ID})"


def test_organization_is_optional_and_compared_without_case(fake: FakeScaleway) -> None:
    assert _verify(fake.url, organization_id=None).identity.endswith(
        f"(organization {ORGANIZATION_ID})"
    )
    assert _verify(fake.url, organization_id=ORGANIZATION_ID.upper()).static_keys


def test_trailing_slash_in_the_api_url_is_accepted(fake: FakeScaleway) -> None:
    assert _verify(fake.url + "/").identity.startswith("application:")


# --- refusals --------------------------------------------------------------------------


def test_wrong_secret_key_is_invalid_credentials(fake: FakeScaleway) -> None:
    error = _refused(fake.url, OTHER_SECRET_KEY)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert "401" in error.message
    assert ACCESS_KEY in error.message


def test_unknown_access_key_is_invalid_credentials(fake: FakeScaleway) -> None:
    del fake.api_keys[ACCESS_KEY]
    error = _refused(fake.url)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert f"access key {ACCESS_KEY} does not exist" in error.message


def test_key_without_iam_read_is_access_denied(fake: FakeScaleway) -> None:
    fake.iam_forbidden = True
    error = _refused(fake.url)
    assert error.reason == Reason.ACCESS_DENIED
    assert "IAMReadOnly" in error.message


def test_organization_mismatch_is_access_denied(fake: FakeScaleway) -> None:
    fake.projects[PROJECT_ID] = _project(PROJECT_ID, OTHER_ORGANIZATION_ID)
    error = _refused(fake.url)
    assert error.reason == Reason.ACCESS_DENIED
    assert OTHER_ORGANIZATION_ID in error.message
    assert ORGANIZATION_ID in error.message


def test_unknown_project_is_access_denied(fake: FakeScaleway) -> None:
    error = _refused(fake.url, project_id=UNKNOWN_PROJECT_ID)
    assert error.reason == Reason.ACCESS_DENIED
    assert error.message.startswith(
        f"project {UNKNOWN_PROJECT_ID} not found or not visible to this key"
    )


def test_project_the_key_cannot_see_is_access_denied(fake: FakeScaleway) -> None:
    error = _refused(fake.url, project_id=HIDDEN_PROJECT_ID)
    assert error.reason == Reason.ACCESS_DENIED
    assert f"project {HIDDEN_PROJECT_ID} not found or not visible" in error.message
    assert "403" in error.message


def test_project_being_deleted_is_access_denied(fake: FakeScaleway) -> None:
    fake.projects[PROJECT_ID]["status"] = "deleting"
    error = _refused(fake.url)
    assert error.reason == Reason.ACCESS_DENIED
    assert "being deleted" in error.message


@pytest.mark.parametrize(
    "secret_key",
    [
        "not-a-uuid-but-secret",
        SECRET_KEY.replace("-", ""),  # uuid.UUID (and so the SDK) would take this
        "{" + SECRET_KEY + "}",
    ],
)
def test_malformed_secret_key_is_invalid_secret_data(fake: FakeScaleway, secret_key: str) -> None:
    error = _refused(fake.url, secret_key)
    assert error.reason == Reason.INVALID_SECRET_DATA
    assert fake.requests == []  # never sent anywhere


def test_secret_key_with_a_newline_says_so(fake: FakeScaleway) -> None:
    error = _refused(fake.url, SECRET_KEY + "\n")
    assert error.reason == Reason.INVALID_SECRET_DATA
    assert "newline" in error.message


def test_missing_secret_key(fake: FakeScaleway) -> None:
    with pytest.raises(VerificationError) as caught:
        scaleway.verify(_spec(), {}, _context(fake.url))
    assert caught.value.reason == Reason.SECRET_KEY_MISSING


# --- the provider cannot be reached ----------------------------------------------------


def test_silent_endpoint_is_unreachable_within_the_timeout(silent_port: int) -> None:
    start = time.monotonic()
    error = _refused(f"http://127.0.0.1:{silent_port}")
    elapsed = time.monotonic() - start
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert f"within {TIMEOUT:g}s" in error.message
    assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + 3


def test_closed_port_is_unreachable() -> None:
    port = _closed_port()
    start = time.monotonic()
    error = _refused(f"http://127.0.0.1:{port}")
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "could not connect" in error.message
    assert time.monotonic() - start < TIMEOUT + 3


@pytest.mark.parametrize("status", [302, 429, 500, 503])
def test_unexpected_status_is_unreachable(fake: FakeScaleway, status: int) -> None:
    fake.status_override = status
    error = _refused(fake.url)
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert f"HTTP {status}" in error.message
    assert len(fake.requests) == 1  # a 302 is not followed (it would carry the token)


@pytest.mark.parametrize("status", [400, 409, 422])
def test_a_refused_request_is_provider_refused_not_retried(fake: FakeScaleway, status: int) -> None:
    fake.status_override = status
    error = _refused(fake.url)
    assert error.reason == Reason.PROVIDER_REFUSED
    assert error.message.endswith(f"the Scaleway API refused the request (HTTP {status})")


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"[1, 2]", b'{"created_at": "x"}'])
def test_unreadable_answer_is_unreachable(fake: FakeScaleway, body: bytes) -> None:
    fake.raw_body = body
    error = _refused(fake.url)
    assert error.reason == Reason.PROVIDER_UNREACHABLE


# --- secrets never leak ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret_key", "case", "reason"),
    [
        (OTHER_SECRET_KEY, "wrong key", Reason.INVALID_CREDENTIALS),
        (SECRET_KEY, "iam forbidden", Reason.ACCESS_DENIED),
        (SECRET_KEY, "hidden project", Reason.ACCESS_DENIED),
        (SECRET_KEY, "unknown project", Reason.ACCESS_DENIED),
        (SECRET_KEY, "server error", Reason.PROVIDER_UNREACHABLE),
    ],
)
def test_secret_echoed_by_the_server_never_reaches_the_error(
    fake: FakeScaleway, secret_key: str, case: str, reason: Reason
) -> None:
    fake.echo_token = True
    project_id = PROJECT_ID
    if case == "iam forbidden":
        fake.iam_forbidden = True
    elif case == "hidden project":
        project_id = HIDDEN_PROJECT_ID
    elif case == "unknown project":
        project_id = UNKNOWN_PROJECT_ID
    elif case == "server error":
        fake.status_override = 500
    error = _refused(fake.url, secret_key, project_id=project_id)  # checks for leaks
    assert error.reason == reason


def test_bad_api_url_setting_does_not_quote_the_secret() -> None:
    error = _refused("not a url")
    assert error.reason == Reason.VERIFICATION_UNAVAILABLE


# --- without the library ---------------------------------------------------------------


def test_without_the_scaleway_library(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import` raise ImportError, as if not installed.
    for name in list(sys.modules):
        if name.split(".")[0] in ("scaleway", "scaleway_core"):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "scaleway", None)
    monkeypatch.setitem(sys.modules, "scaleway_core", None)
    with pytest.raises(VerificationError) as caught:
        _verify("http://127.0.0.1:9")
    assert caught.value.reason == Reason.VERIFICATION_UNAVAILABLE
    assert "cloudcred[scaleway]" in caught.value.message


# --- the secret key must belong to the access key ----------------------------------------


def test_another_bearers_access_key_with_ones_own_secret_key_is_refused(
    fake: FakeScaleway,
) -> None:
    """IAM authenticates the secret key alone and looks the access key up as a name: a
    tenant naming someone else's access key (VICTIM_ACCESS_KEY) with its own secret key
    (whose bearer may read IAM) must not get Verified with the victim's identity."""
    fake.api_keys[VICTIM_ACCESS_KEY] = _api_key(
        access_key=VICTIM_ACCESS_KEY, application_id=None, user_id=USER_ID
    )
    fake.s3_keys[VICTIM_ACCESS_KEY] = VICTIM_SECRET_KEY
    spec = _spec(access_key=VICTIM_ACCESS_KEY)
    with pytest.raises(VerificationError) as caught:
        scaleway.verify(spec, {"secretKey": SecretStr(SECRET_KEY)}, _context(fake.url))
    error = caught.value
    _assert_no_leak(error, SECRET_KEY)
    _assert_no_leak(error, VICTIM_SECRET_KEY)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert error.message.startswith("spec.scaleway.accessKey: ")
    assert f"the secret key does not belong to access key {VICTIM_ACCESS_KEY}" in error.message
    # Nothing of the victim's reached the caller, and the project was never read.
    assert USER_ID not in error.message
    assert ("GET", f"/account/v3/projects/{PROJECT_ID}") not in fake.requests


def test_a_pair_whose_bearer_may_not_list_buckets_is_proved_all_the_same(
    fake: FakeScaleway,
) -> None:
    # AccessDenied comes after the signature was checked: authenticated, not authorised.
    fake.s3_may_list = False
    assert _verify(fake.url).identity.startswith(f"application:{APPLICATION_ID}")
    assert fake.proofs == [(ACCESS_KEY, "AccessDenied")]


def test_the_secret_key_is_never_sent_to_object_storage(fake: FakeScaleway) -> None:
    _verify(fake.url)
    assert fake.s3_seen
    for headers in fake.s3_seen:
        assert SECRET_KEY not in headers
        assert "AWS4-HMAC-SHA256 Credential=" in headers


def test_an_access_key_object_storage_does_not_know_is_refused(fake: FakeScaleway) -> None:
    del fake.s3_keys[ACCESS_KEY]
    error = _refused(fake.url)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert error.message == (
        f"spec.scaleway.accessKey: the secret key cannot be shown to belong to access key "
        f"{ACCESS_KEY}: Object Storage does not know that access key (HTTP 403 "
        "InvalidAccessKeyId)"
    )
    assert ("GET", f"/account/v3/projects/{PROJECT_ID}") not in fake.requests


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (400, "AuthorizationHeaderMalformed", Reason.PROVIDER_REFUSED),
        (403, "RequestTimeTooSkewed", Reason.PROVIDER_REFUSED),
        (404, "", Reason.PROVIDER_REFUSED),
        (301, "", Reason.PROVIDER_UNREACHABLE),  # not followed: no proof
        (429, "", Reason.PROVIDER_UNREACHABLE),
        (500, "InternalError", Reason.PROVIDER_UNREACHABLE),
        (503, "SlowDown", Reason.PROVIDER_UNREACHABLE),
    ],
)
def test_no_proof_without_a_clear_answer(
    fake: FakeScaleway, status: int, code: str, reason: Reason
) -> None:
    fake.s3_override = (status, _s3_error(code) if code else b"<html>proxy</html>")
    error = _refused(fake.url)
    assert error.reason == reason
    answer = f"HTTP {status}" + (f" {code}" if code else "")
    assert f"proving that the secret key belongs to access key {ACCESS_KEY}: " in error.message
    assert f"({answer})" in error.message
    assert ("GET", f"/account/v3/projects/{PROJECT_ID}") not in fake.requests


def test_only_known_codes_of_object_storage_reach_the_message(fake: FakeScaleway) -> None:
    # A proxy's error document quoting what it received (the signature, the access key).
    fake.s3_override = (403, _s3_error(f"Sneaky{SECRET_KEY}") + b"<Message>sig=abc</Message>")
    error = _refused(fake.url)
    assert error.reason == Reason.PROVIDER_REFUSED
    assert error.message.endswith("refused the request (HTTP 403): check the operator's "
                                  "Scaleway Object Storage URL and region")  # fmt: skip
    assert "Sneaky" not in error.message


def test_silent_object_storage_is_unreachable_within_the_timeout(
    fake: FakeScaleway, silent_port: int
) -> None:
    context = VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(
            scaleway_api_url=fake.url,
            scaleway_s3_url=f"http://127.0.0.1:{silent_port}",
            timeout_seconds=0.5,
        ),
    )
    start = time.monotonic()
    with pytest.raises(VerificationError) as caught:
        scaleway.verify(_spec(), {"secretKey": SecretStr(SECRET_KEY)}, context)
    assert time.monotonic() - start < 0.5 + 3
    _assert_no_leak(caught.value, SECRET_KEY)
    assert caught.value.reason == Reason.PROVIDER_UNREACHABLE
    assert "within 0.5s" in caught.value.message


def test_closed_object_storage_port_is_unreachable(fake: FakeScaleway) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    context = VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(
            scaleway_api_url=fake.url, scaleway_s3_url=url, timeout_seconds=TIMEOUT
        ),
    )
    with pytest.raises(VerificationError) as caught:
        scaleway.verify(_spec(), {"secretKey": SecretStr(SECRET_KEY)}, context)
    assert caught.value.reason == Reason.PROVIDER_UNREACHABLE
    assert f"could not connect to {url}/" in caught.value.message


def test_the_default_object_storage_is_scaleways_in_its_own_region() -> None:
    settings = ProviderSettings()
    assert (settings.scaleway_s3_url, settings.scaleway_s3_region) == (
        "https://s3.fr-par.scw.cloud",
        "fr-par",
    )
