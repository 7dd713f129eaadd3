"""Scaleway key rotation against a local fake of the IAM API-key endpoints.

The SDK is not mocked: it sends real HTTP(S) requests to a small ``http.server`` on
127.0.0.1 that keeps API keys in memory and behaves like IAM for them: every request is
authenticated by its ``X-Auth-Token`` (the secret key of an existing, unexpired key
that has propagated: a key it made is refused for ``FakeIam.propagation`` seconds), the
bearer's permissions are checked, keys are listed per bearer and paged, created with a
fresh access key and secret key, and deleted. It also answers the Account API for the
project (``GET /account/v3/projects/{id}``), so that ``verify`` runs against it too, and
Object Storage's signed ``GET /`` for the proof that a secret key belongs to its access
key (``tests/scaleway.py``: the signature checked with botocore's signer, for the keys
IAM accepts; their bearers may not list buckets, so a matching pair gets AccessDenied).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets as random
import socket
import ssl
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from cloudcred.__main__ import QUIET_LOGGERS
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.providers import scaleway
from cloudcred.providers.base import (
    KeyFacts,
    ProviderSettings,
    Reason,
    RotationError,
    RotationReason,
    VerificationError,
    VerifyContext,
)
from tests.echo import make_pki
from tests.scaleway import is_object_storage, object_storage_answer

ACCESS_KEY = "SCWABCDEFGHIJ0123456"
SECRET_KEY = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
WRONG_SECRET_KEY = "11111111-2222-4333-8444-555555555555"
# Another bearer's API key (a user's), in the same organization: its access key is public.
VICTIM_ACCESS_KEY = "SCWVICTIMVICTIM00000"
VICTIM_SECRET_KEY = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
ADMIN_ACCESS_KEY = "SCWADMINADMINADMIN00"
ADMIN_SECRET_KEY = "99999999-2222-4333-8444-555555555555"
ORGANIZATION_ID = "6a0f2c2e-1a7b-4c11-9f0e-8d4a3b2c1d0e"
APPLICATION_ID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
OTHER_APPLICATION_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
USER_ID = "4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a"
PROJECT_ID = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
KEY_PROJECT_ID = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"  # the key's own default project
KEY_CREATED = datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=UTC)
TIMEOUT = 2.0
KEYS_PATH = "/iam/v1alpha1/api-keys"
PROJECTS_PATH = "/account/v3/projects/"


def _timestamp(moment: datetime | None, zone: str = "Z") -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + zone


def _new_access_key() -> str:
    return "SCW" + "".join(random.choice(string.ascii_uppercase + string.digits) for _ in range(17))


@dataclass
class Key:
    """One API key at the fake: its secret and who bears it."""

    access_key: str
    secret_key: str
    application_id: str | None = None
    user_id: str | None = None
    created_at: datetime = KEY_CREATED
    expires_at: datetime | None = None
    default_project_id: str = KEY_PROJECT_ID
    description: str = "made by hand"
    # IAM refuses the secret key before this (a new key propagates); None: at once.
    accepted_from: datetime | None = None

    @property
    def bearer(self) -> str:
        return self.application_id or self.user_id or ""

    def document(self, *, with_secret: bool = False, zone: str = "Z") -> dict[str, Any]:
        """The key as IAM returns it; the secret only in the answer to its creation."""
        return {
            "access_key": self.access_key,
            "secret_key": self.secret_key if with_secret else None,
            "application_id": self.application_id,
            "user_id": self.user_id,
            "description": self.description,
            "created_at": _timestamp(self.created_at, zone),
            "updated_at": _timestamp(self.created_at, zone),
            "expires_at": _timestamp(self.expires_at, zone),
            "default_project_id": self.default_project_id,
            "editable": True,
            "deletable": True,
            "managed": False,
            "creation_ip": "192.0.2.10",
        }


@dataclass(frozen=True)
class Call:
    """A request the fake received and who it authenticated (None: nobody)."""

    method: str
    path: str
    query: dict[str, list[str]]
    caller: str | None
    body: dict[str, Any] | None = None


@dataclass
class FakeIam:
    """State of the fake; tests change it before calling the provider."""

    url: str = ""
    keys: dict[str, Key] = field(default_factory=dict)
    managers: set[str] = field(default_factory=set)  # bearers with IAMManager
    readers: set[str] = field(default_factory=set)  # bearers with IAMReadOnly
    quota: int = 10  # API keys per bearer
    propagation: float = 0.0  # seconds a key it made is refused (HTTP 401)
    refuse_delete: int | None = None  # answer deletes with this status
    omit_secret: bool = False  # a create answer without the secret key
    echo_token: bool = False  # error bodies quote the X-Auth-Token they received
    status_override: int | None = None  # answer every request with this status
    zone: str = "Z"  # how times end ("": no zone at all)
    calls: list[Call] = field(default_factory=list)
    # Object Storage's answers to the proofs of a pair: (access key proved or None, status)
    proofs: list[tuple[str | None, int]] = field(default_factory=list)

    def add(self, key: Key) -> Key:
        self.keys[key.access_key] = key
        return key

    @staticmethod
    def _accepted(key: Key) -> bool:
        now = datetime.now(UTC)
        return (key.expires_at is None or key.expires_at > now) and (
            key.accepted_from is None or key.accepted_from <= now
        )

    def caller(self, token: str | None) -> Key | None:
        for key in self.keys.values():
            if key.secret_key == token and self._accepted(key):
                return key
        return None

    def secret_of(self, access_key: str) -> str | None:
        """What Object Storage knows: the secret key of an accepted key."""
        key = self.keys.get(access_key)
        return key.secret_key if key is not None and self._accepted(key) else None


def _handler(fake: FakeIam) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any] | None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, kind: str, **extra: Any) -> None:
            body: dict[str, Any] = {"type": kind, "message": kind.replace("_", " "), **extra}
            if fake.echo_token:  # a careless server or proxy: the token comes back
                body["details"] = f"token {self.headers.get('X-Auth-Token')} was refused"
            self._send(status, body)

        def _object_storage(self, path: str) -> None:
            status, xml, proved = object_storage_answer("GET", path, self.headers, fake.secret_of)
            fake.proofs.append((proved, status))
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            if is_object_storage(method, parts.path, self.headers):
                self._object_storage(parts.path)
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw and method == "POST" else None
            caller = fake.caller(self.headers.get("X-Auth-Token"))
            fake.calls.append(
                Call(
                    method,
                    parts.path,
                    parse_qs(parts.query),
                    caller.access_key if caller else None,
                    body,
                )
            )
            if fake.status_override is not None:
                self._error(fake.status_override, "internal_error")
                return
            if caller is None:
                self._error(401, "denied_authentication", method="api_key")
                return
            may_read = caller.bearer in fake.managers | fake.readers
            if parts.path.startswith(PROJECTS_PATH) and method == "GET":
                self._project(parts.path.removeprefix(PROJECTS_PATH))
            elif not parts.path.startswith(KEYS_PATH):
                self._error(404, "not_found")
            elif method == "GET" and not may_read:
                self._error(403, "permissions_denied", resource="api_key", action="read")
            elif method != "GET" and caller.bearer not in fake.managers:
                self._error(403, "permissions_denied", resource="api_key", action="write")
            elif parts.path == KEYS_PATH and method == "GET":
                self._list(parse_qs(parts.query))
            elif parts.path == KEYS_PATH and method == "POST":
                self._create(body or {})
            elif method == "GET":
                key = fake.keys.get(parts.path.removeprefix(KEYS_PATH + "/"))
                self._send(200, key.document(zone=fake.zone)) if key else self._error(
                    404, "not_found"
                )
            elif method == "DELETE":
                self._delete(parts.path.removeprefix(KEYS_PATH + "/"))
            else:
                self._error(404, "not_found")

        def _list(self, query: dict[str, list[str]]) -> None:
            bearers = query.get("application_id", []) + query.get("user_id", [])
            if len(bearers) != 1:
                self._error(400, "invalid_arguments")
                return
            order = query.get("order_by", ["created_at_asc"])[0]
            keys = sorted(
                (key for key in fake.keys.values() if key.bearer == bearers[0]),
                key=lambda key: (key.created_at, key.access_key),
                reverse=order == "created_at_desc",
            )
            page = int(query.get("page", ["1"])[0])
            size = int(query.get("page_size", ["20"])[0])
            chosen = keys[(page - 1) * size : page * size]
            self._send(
                200,
                {
                    "api_keys": [key.document(zone=fake.zone) for key in chosen],
                    "total_count": len(keys),
                },
            )

        def _project(self, project_id: str) -> None:
            """The one project, in the organization, for any key (ProjectReadOnly)."""
            if project_id != PROJECT_ID:
                self._error(404, "not_found", resource="project")
                return
            when = _timestamp(KEY_CREATED)
            self._send(200, {"id": PROJECT_ID, "name": "prod", "description": "",
                             "organization_id": ORGANIZATION_ID, "created_at": when,
                             "updated_at": when})  # fmt: skip

        def _create(self, body: dict[str, Any]) -> None:
            bearer = body.get("application_id") or body.get("user_id")
            if not bearer or not body.get("description"):
                self._error(400, "invalid_arguments")
                return
            if sum(key.bearer == bearer for key in fake.keys.values()) >= fake.quota:
                self._error(
                    403,
                    "quotas_exceeded",
                    details=[{"resource": "api_keys", "quota": fake.quota, "current": fake.quota}],
                )
                return
            expires = body.get("expires_at")
            now = datetime.now(UTC)
            key = fake.add(
                Key(
                    access_key=_new_access_key(),
                    secret_key=str(uuid.uuid4()),
                    application_id=body.get("application_id"),
                    user_id=body.get("user_id"),
                    created_at=now,
                    expires_at=datetime.fromisoformat(expires) if expires else None,
                    default_project_id=body.get("default_project_id") or PROJECT_ID,
                    description=body["description"],
                    accepted_from=now + timedelta(seconds=fake.propagation),
                )
            )
            self._send(200, key.document(with_secret=not fake.omit_secret, zone=fake.zone))

        def _delete(self, access_key: str) -> None:
            if fake.refuse_delete is not None:
                kinds = {403: "permissions_denied", 409: "precondition_failed"}
                self._error(fake.refuse_delete, kinds.get(fake.refuse_delete, "internal_error"))
            elif fake.keys.pop(access_key, None) is None:
                self._error(404, "not_found", resource="api_key")
            else:
                self._send(204, None)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


def serve(state: FakeIam, tls_folder: Path | None = None) -> Callable[[], None]:
    """Starts the fake on an ephemeral port (TLS with its own CA when ``tls_folder`` is
    given: ``state.url`` is https then) and returns what stops it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    scheme = "http"
    if tls_folder is not None:
        pki = make_pki(tls_folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert, pki.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-iam"
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def _seeded() -> FakeIam:
    """One application with IAMManager and the key the credential uses."""
    state = FakeIam()
    state.add(Key(ACCESS_KEY, SECRET_KEY, application_id=APPLICATION_ID))
    state.managers.add(APPLICATION_ID)
    return state


@pytest.fixture
def fake() -> Iterator[FakeIam]:
    state = _seeded()
    stop = serve(state)
    try:
        yield state
    finally:
        stop()


@pytest.fixture
def tls_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIam]:
    """The fake over HTTPS, its CA trusted the standard way (REQUESTS_CA_BUNDLE)."""
    state = _seeded()
    stop = serve(state, tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "echo-ca.pem"))
    try:
        yield state
    finally:
        stop()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _spec(access_key: str = ACCESS_KEY) -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(
        {
            "provider": "SCALEWAY",
            "scaleway": {
                "accessKey": access_key,
                "secretKeyRef": {"name": "scaleway-key", "key": "secret-key"},
                "projectId": PROJECT_ID,
                "organizationId": ORGANIZATION_ID,
            },
            "rotation": {"policy": "Automatic", "maxAge": "90d"},
        }
    )


def _secrets(secret_key: str = SECRET_KEY) -> dict[str, SecretStr]:
    return {"secretKey": SecretStr(secret_key)}


def _context(url: str, timeout: float = TIMEOUT) -> VerifyContext:
    return VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(
            scaleway_api_url=url, scaleway_s3_url=url, timeout_seconds=timeout
        ),
    )


def _no_leak(error: RotationError, *secret_values: str) -> None:
    """No secret in the error, nor an exception chained to it (whose text is a body)."""
    for value in secret_values:
        assert value not in error.message
        assert value not in str(error)
        assert value not in repr(error)
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


def _refused(call: Callable[[], object], *secret_values: str) -> RotationError:
    with pytest.raises(RotationError) as caught:
        call()
    _no_leak(caught.value, SECRET_KEY, *secret_values)
    return caught.value


# What each operation does, for the tests that try them all.
OPERATIONS: dict[str, Callable[..., object]] = {  # (url, secret key=SECRET_KEY)
    "key_facts": lambda url, key=SECRET_KEY: scaleway.key_facts(
        _spec(), _secrets(key), _context(url)
    ),
    "list_keys": lambda url, key=SECRET_KEY: scaleway.list_keys(
        _spec(), _secrets(key), _context(url)
    ),
    "create_key": lambda url, key=SECRET_KEY: scaleway.create_key(
        _spec(), _secrets(key), _context(url)
    ),
    "delete_key": lambda url, key=SECRET_KEY: scaleway.delete_key(
        _spec(), _secrets(key), _context(url), "SCWOLDKEY00000000000"
    ),
}


# --- facts of the key in use -------------------------------------------------------------


def test_key_facts_of_the_key_in_use(fake: FakeIam) -> None:
    expires = datetime(2027, 1, 1, tzinfo=UTC)
    fake.keys[ACCESS_KEY].expires_at = expires
    facts = scaleway.key_facts(_spec(), _secrets(), _context(fake.url))
    assert facts == KeyFacts(
        key_id=ACCESS_KEY, created=KEY_CREATED, last_used=None, expires=expires, active=True
    )
    assert [(call.method, call.path, call.caller) for call in fake.calls] == [
        ("GET", f"{KEYS_PATH}/{ACCESS_KEY}", ACCESS_KEY)
    ]


@pytest.mark.parametrize("zone", ["", "+02:00"])
def test_key_facts_are_in_utc(fake: FakeIam, zone: str) -> None:
    # Times the API sends without a zone are UTC; others are converted.
    fake.zone = zone
    fake.keys[ACCESS_KEY].expires_at = datetime(2027, 1, 1, tzinfo=UTC)
    facts = scaleway.key_facts(_spec(), _secrets(), _context(fake.url))
    assert facts is not None
    shift = timedelta(hours=2) if zone else timedelta(0)
    assert facts.created == KEY_CREATED - shift
    assert facts.expires == datetime(2027, 1, 1, tzinfo=UTC) - shift
    assert facts.created.tzinfo is UTC
    new = scaleway.create_key(_spec(), _secrets(), _context(fake.url))
    assert new.facts.expires is not None  # lifetime kept, zones and all


def test_key_facts_need_only_iam_read(fake: FakeIam) -> None:
    fake.managers.clear()
    fake.readers.add(APPLICATION_ID)
    facts = scaleway.key_facts(_spec(), _secrets(), _context(fake.url))
    assert facts is not None
    assert facts.expires is None


def test_key_facts_of_an_access_key_iam_does_not_know_are_none(fake: FakeIam) -> None:
    # The secret key authenticates (it is another key's), the access key is unknown.
    assert scaleway.key_facts(_spec("SCWZZZZZZZZZZZZZZZZZ"), _secrets(), _context(fake.url)) is None


def test_key_facts_without_iam_read_is_access_denied(fake: FakeIam) -> None:
    fake.managers.clear()
    error = _refused(lambda: scaleway.key_facts(_spec(), _secrets(), _context(fake.url)))
    assert error.reason == RotationReason.ACCESS_DENIED
    assert "IAMReadOnly" in error.message


def test_wrong_secret_key_is_access_denied(fake: FakeIam) -> None:
    for operation in ("key_facts", "list_keys", "create_key", "delete_key"):
        error = _refused(
            functools.partial(OPERATIONS[operation], fake.url, WRONG_SECRET_KEY),
            WRONG_SECRET_KEY,
        )
        assert error.reason == RotationReason.ACCESS_DENIED
        assert error.message.endswith(
            "the Scaleway API refused the secret key (HTTP 401 denied_authentication)"
        )
    assert {call.caller for call in fake.calls} == {None}
    assert len(fake.keys) == 1


def test_malformed_secret_key_is_never_sent(fake: FakeIam) -> None:
    error = _refused(
        lambda: scaleway.create_key(_spec(), _secrets("not-a-uuid-x"), _context(fake.url)),
        "not-a-uuid-x",
    )
    assert error.reason == RotationReason.ACCESS_DENIED
    assert fake.calls == []


# --- listing ---------------------------------------------------------------------------


def test_list_keys_lists_the_bearers_keys_oldest_first(fake: FakeIam) -> None:
    older = fake.add(
        Key(
            "SCWOLDER000000000000",
            str(uuid.uuid4()),
            application_id=APPLICATION_ID,
            created_at=KEY_CREATED - timedelta(days=30),
            expires_at=datetime(2024, 6, 1, tzinfo=UTC),  # expired: no longer works
        )
    )
    fake.add(Key("SCWOTHERAPP000000000", str(uuid.uuid4()), application_id=OTHER_APPLICATION_ID))
    fake.add(Key("SCWAUSER000000000000", str(uuid.uuid4()), user_id=USER_ID))
    keys = scaleway.list_keys(_spec(), _secrets(), _context(fake.url))
    assert keys == [
        KeyFacts(older.access_key, older.created_at, None, older.expires_at, active=False),
        KeyFacts(ACCESS_KEY, KEY_CREATED, None, None, active=True),
    ]
    listed = [call for call in fake.calls if call.path == KEYS_PATH]
    assert len(listed) == 1
    assert listed[0].query["application_id"] == [APPLICATION_ID]
    assert listed[0].query["organization_id"] == [ORGANIZATION_ID]
    assert "user_id" not in listed[0].query
    assert {call.caller for call in fake.calls} == {ACCESS_KEY}


def test_list_keys_of_a_users_key_filters_by_user(fake: FakeIam) -> None:
    fake.keys[ACCESS_KEY].application_id = None
    fake.keys[ACCESS_KEY].user_id = USER_ID
    fake.managers = {USER_ID}
    fake.add(Key("SCWOTHERAPP000000000", str(uuid.uuid4()), application_id=APPLICATION_ID))
    keys = scaleway.list_keys(_spec(), _secrets(), _context(fake.url))
    assert [key.key_id for key in keys] == [ACCESS_KEY]
    assert [call.query.get("user_id") for call in fake.calls if call.path == KEYS_PATH] == [
        [USER_ID]
    ]


def test_list_keys_reads_every_page(fake: FakeIam) -> None:
    fake.quota = 1000
    for index in range(130):
        fake.add(
            Key(
                f"SCWPAGE{index:013d}",
                str(uuid.uuid4()),
                application_id=APPLICATION_ID,
                created_at=KEY_CREATED + timedelta(minutes=index + 1),
            )
        )
    keys = scaleway.list_keys(_spec(), _secrets(), _context(fake.url))
    assert len(keys) == 131
    assert len({key.key_id for key in keys}) == 131
    assert keys[0].key_id == ACCESS_KEY
    assert keys[-1].key_id == "SCWPAGE0000000000129"
    pages = [call.query["page"] for call in fake.calls if call.path == KEYS_PATH]
    assert pages == [["1"], ["2"]]


def test_list_keys_without_iam_read_is_access_denied(fake: FakeIam) -> None:
    fake.managers.clear()
    error = _refused(lambda: scaleway.list_keys(_spec(), _secrets(), _context(fake.url)))
    assert error.reason == RotationReason.ACCESS_DENIED
    assert "IAMManager" in error.message


# --- creating --------------------------------------------------------------------------


def test_create_key_for_the_same_bearer(fake: FakeIam) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    new = scaleway.create_key(_spec(), _secrets(), _context(fake.url))
    made = fake.keys[new.facts.key_id]
    assert made.application_id == APPLICATION_ID
    assert made.user_id is None
    assert made.description == "cloudcred"
    assert made.default_project_id == KEY_PROJECT_ID  # as the key it replaces
    assert made.expires_at is None
    assert new.secret_data == {"secretKey": SecretStr(made.secret_key)}
    assert new.facts.created is not None
    assert new.facts.created >= before
    assert new.facts.expires is None
    assert new.facts.active
    assert SECRET_KEY not in made.secret_key
    assert made.secret_key not in repr(new)
    posts = [call for call in fake.calls if call.method == "POST"]
    assert len(posts) == 1
    assert posts[0].caller == ACCESS_KEY
    # The new key works on its own, and sees itself.
    facts = scaleway.key_facts(_spec(new.facts.key_id), new.secret_data, _context(fake.url))
    assert facts is not None
    assert facts.key_id == new.facts.key_id
    assert fake.calls[-1].caller == new.facts.key_id


def test_create_key_keeps_the_lifetime_of_an_expiring_key(fake: FakeIam) -> None:
    fake.keys[ACCESS_KEY].created_at = datetime.now(UTC) - timedelta(days=80)
    fake.keys[ACCESS_KEY].expires_at = datetime.now(UTC) + timedelta(days=10)
    new = scaleway.create_key(_spec(), _secrets(), _context(fake.url))
    assert new.facts.expires is not None
    expected = datetime.now(UTC) + timedelta(days=90)
    assert abs(new.facts.expires - expected) < timedelta(minutes=1)
    assert fake.keys[new.facts.key_id].expires_at == new.facts.expires


def test_create_refused_by_the_quota_is_key_limit_reached(fake: FakeIam) -> None:
    fake.quota = 1
    fake.echo_token = True
    error = _refused(lambda: scaleway.create_key(_spec(), _secrets(), _context(fake.url)))
    assert error.reason == RotationReason.KEY_LIMIT_REACHED
    assert error.message.endswith("reached a quota (HTTP 403 quotas_exceeded)")
    assert list(fake.keys) == [ACCESS_KEY]


def test_create_without_iam_manager_is_access_denied(fake: FakeIam) -> None:
    fake.managers.clear()
    fake.readers.add(APPLICATION_ID)
    error = _refused(lambda: scaleway.create_key(_spec(), _secrets(), _context(fake.url)))
    assert error.reason == RotationReason.ACCESS_DENIED
    assert f"access key {ACCESS_KEY} may not manage its bearer's API keys (HTTP 403)" in (
        error.message
    )
    assert "IAMManager" in error.message
    assert list(fake.keys) == [ACCESS_KEY]


def test_create_answer_without_a_secret_removes_the_key(fake: FakeIam) -> None:
    fake.omit_secret = True
    error = _refused(lambda: scaleway.create_key(_spec(), _secrets(), _context(fake.url)))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "holds no valid secret key" in error.message
    assert list(fake.keys) == [ACCESS_KEY]  # made, then deleted again
    assert [call.method for call in fake.calls] == ["GET", "POST", "DELETE"]


# --- deactivating and deleting ---------------------------------------------------------


def test_deactivate_is_not_a_scaleway_state(fake: FakeIam) -> None:
    assert scaleway.deactivate_key(_spec(), _secrets(), _context(fake.url), ACCESS_KEY) is False
    assert fake.calls == []


def test_delete_key_with_the_new_key(fake: FakeIam) -> None:
    new = scaleway.create_key(_spec(), _secrets(), _context(fake.url))
    new_spec = _spec(new.facts.key_id)
    scaleway.delete_key(new_spec, new.secret_data, _context(fake.url), ACCESS_KEY)
    assert list(fake.keys) == [new.facts.key_id]
    delete = fake.calls[-1]
    assert (delete.method, delete.path, delete.caller) == (
        "DELETE",
        f"{KEYS_PATH}/{ACCESS_KEY}",
        new.facts.key_id,
    )
    # The old key no longer works.
    error = _refused(lambda: scaleway.key_facts(_spec(), _secrets(), _context(fake.url)))
    assert error.reason == RotationReason.ACCESS_DENIED
    keys = scaleway.list_keys(new_spec, new.secret_data, _context(fake.url))
    assert [key.key_id for key in keys] == [new.facts.key_id]


def test_delete_of_a_key_already_gone_is_fine(fake: FakeIam) -> None:
    scaleway.delete_key(_spec(), _secrets(), _context(fake.url), "SCWGONE0000000000000")
    assert [(call.method, call.path) for call in fake.calls] == [
        ("DELETE", f"{KEYS_PATH}/SCWGONE0000000000000")
    ]
    assert list(fake.keys) == [ACCESS_KEY]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (403, RotationReason.ACCESS_DENIED),
        (409, RotationReason.PROVIDER_REFUSED),
        (503, RotationReason.PROVIDER_UNREACHABLE),
    ],
)
def test_delete_refused(fake: FakeIam, status: int, reason: RotationReason) -> None:
    old = fake.add(Key("SCWOLDKEY00000000000", str(uuid.uuid4()), application_id=APPLICATION_ID))
    fake.refuse_delete = status
    fake.echo_token = True
    error = _refused(
        lambda: scaleway.delete_key(_spec(), _secrets(), _context(fake.url), old.access_key)
    )
    assert error.reason == reason
    assert f"deleting access key {old.access_key}" in error.message
    assert f"HTTP {status}" in error.message
    assert old.access_key in fake.keys


def test_delete_never_deletes_the_key_in_use(fake: FakeIam) -> None:
    error = _refused(
        lambda: scaleway.delete_key(_spec(), _secrets(), _context(fake.url), ACCESS_KEY)
    )
    assert error.reason == RotationReason.PROVIDER_REFUSED
    assert "key in use" in error.message
    assert fake.calls == []
    assert ACCESS_KEY in fake.keys


@pytest.mark.parametrize("key_id", ["../projects/x", "", "scwlowercase00000000", SECRET_KEY])
def test_delete_sends_only_an_access_key(fake: FakeIam, key_id: str) -> None:
    error = _refused(lambda: scaleway.delete_key(_spec(), _secrets(), _context(fake.url), key_id))
    assert error.reason == RotationReason.PROVIDER_REFUSED
    if key_id:
        assert key_id not in error.message
    assert fake.calls == []


def test_a_new_key_is_refused_as_invalid_until_iam_has_propagated_it(fake: FakeIam) -> None:
    """``verify`` (the key and its project) against the fake; a key it has just made is
    refused (HTTP 401) until it propagates: InvalidCredentials, which the operator reads
    as Propagating for its own new key."""
    fake.propagation = 3600
    context = _context(fake.url)
    identity = f"application:{APPLICATION_ID} (organization {ORGANIZATION_ID})"
    assert scaleway.verify(_spec(), _secrets(), context).identity == identity
    new = scaleway.create_key(_spec(), _secrets(), context)
    new_spec = _spec(new.facts.key_id)

    with pytest.raises(VerificationError) as refused:
        scaleway.verify(new_spec, new.secret_data, context)
    assert refused.value.reason == Reason.INVALID_CREDENTIALS

    fake.keys[new.facts.key_id].accepted_from = datetime.now(UTC)  # propagated
    verified = scaleway.verify(new_spec, new.secret_data, context)
    assert verified.identity == identity
    assert verified.key_created_time == fake.keys[new.facts.key_id].created_at


# --- a whole rotation over TLS -----------------------------------------------------------


def test_rotation_over_https(tls_fake: FakeIam) -> None:
    context = _context(tls_fake.url)
    assert tls_fake.url.startswith("https://")
    new = scaleway.create_key(_spec(), _secrets(), context)
    new_spec = _spec(new.facts.key_id)
    assert [key.key_id for key in scaleway.list_keys(new_spec, new.secret_data, context)] == [
        ACCESS_KEY,
        new.facts.key_id,
    ]
    scaleway.delete_key(new_spec, new.secret_data, context, ACCESS_KEY)
    assert scaleway.key_facts(new_spec, new.secret_data, context) is not None
    assert list(tls_fake.keys) == [new.facts.key_id]


def test_untrusted_certificate_is_unreachable(
    tls_fake: FakeIam, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    error = _refused(lambda: scaleway.create_key(_spec(), _secrets(), _context(tls_fake.url)))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "could not connect" in error.message
    assert list(tls_fake.keys) == [ACCESS_KEY]


# --- the provider cannot be reached ------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_closed_port_is_unreachable(operation: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    error = _refused(lambda: OPERATIONS[operation](url))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"could not connect to {url}" in error.message


def test_silent_endpoint_is_unreachable_within_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        error = _refused(lambda: OPERATIONS["create_key"](url))
        elapsed = time.monotonic() - start
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"within {TIMEOUT:g}s" in error.message
    assert TIMEOUT - 0.5 <= elapsed < TIMEOUT + 3


@pytest.mark.parametrize("status", [429, 500, 502])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_overloaded_or_failing_api_is_unreachable(
    fake: FakeIam, operation: str, status: int
) -> None:
    fake.status_override = status
    error = _refused(lambda: OPERATIONS[operation](fake.url))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"HTTP {status}" in error.message


# --- secrets never leak ------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["wrong key", "no permission", "quota", "refused delete", "server error"]
)
def test_no_secret_in_errors_or_logs(
    fake: FakeIam, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    # Every library at DEBUG, even after a test that ran the operator's quieting.
    for logger in ("", *QUIET_LOGGERS):
        caplog.set_level(logging.DEBUG, logger=logger)
    fake.echo_token = True
    secret_key = SECRET_KEY
    old = fake.add(Key("SCWOLDKEY00000000000", str(uuid.uuid4()), application_id=APPLICATION_ID))
    if case == "wrong key":
        secret_key = WRONG_SECRET_KEY
    elif case == "no permission":
        fake.managers.clear()
    elif case == "quota":
        fake.quota = 2
    elif case == "refused delete":
        fake.refuse_delete = 403
    elif case == "server error":
        fake.status_override = 500
    context = _context(fake.url)
    calls: list[Callable[[], object]] = [
        lambda: scaleway.key_facts(_spec(), _secrets(secret_key), context),
        lambda: scaleway.list_keys(_spec(), _secrets(secret_key), context),
        lambda: scaleway.create_key(_spec(), _secrets(secret_key), context),
        lambda: scaleway.delete_key(_spec(), _secrets(secret_key), context, old.access_key),
    ]
    failures = 0
    for call in calls:
        try:
            call()
        except RotationError as error:
            failures += 1
            _no_leak(error, secret_key, old.secret_key)
    assert failures >= 1  # the case really made the provider say no
    assert caplog.records  # urllib3 logged the requests at DEBUG
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + str(record.exc_info)
        assert secret_key not in text
        assert old.secret_key not in text


def test_no_new_secret_in_logs(fake: FakeIam, caplog: pytest.LogCaptureFixture) -> None:
    # Every library at DEBUG, even after a test that ran the operator's quieting.
    for logger in ("", *QUIET_LOGGERS):
        caplog.set_level(logging.DEBUG, logger=logger)
    new = scaleway.create_key(_spec(), _secrets(), _context(fake.url))
    new_secret = new.secret_data["secretKey"].get_secret_value()
    scaleway.delete_key(_spec(new.facts.key_id), new.secret_data, _context(fake.url), ACCESS_KEY)
    assert caplog.records  # urllib3 logged the requests at DEBUG
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert new_secret not in text
        assert SECRET_KEY not in text
    assert new_secret not in repr(new)
    assert new_secret not in str(new)


def test_a_rotation_identity_manages_the_keys_of_a_bearer_without_iammanager(
    fake: FakeIam,
) -> None:
    """The tenant's application has no IAMManager (a key tenants hold must not have it);
    an admins' application with IAMManager signs every call, on the tenant key's
    bearer: the new key is the tenant's application's."""
    fake.managers.discard(APPLICATION_ID)
    refused = _refused(lambda: scaleway.create_key(_spec(), _secrets(), _context(fake.url)))
    assert refused.reason == RotationReason.ACCESS_DENIED
    admin = fake.add(Key("SCWADMINADMINADMIN00", "99999999-2222-4333-8444-555555555555",
                         application_id=OTHER_APPLICATION_ID))  # fmt: skip
    fake.managers.add(OTHER_APPLICATION_ID)
    identity = {"accessKey": SecretStr(admin.access_key), "secretKey": SecretStr(admin.secret_key)}
    acting = dataclasses.replace(_context(fake.url), rotation_identity=identity)
    calls = len(fake.calls)
    new = scaleway.create_key(_spec(), _secrets(), acting)
    assert fake.keys[new.facts.key_id].application_id == APPLICATION_ID
    assert {call.caller for call in fake.calls[calls:]} == {admin.access_key}
    listed = {key.key_id for key in scaleway.list_keys(_spec(), _secrets(), acting)}
    assert listed == {ACCESS_KEY, new.facts.key_id}
    scaleway.delete_key(_spec(new.facts.key_id), new.secret_data, acting, ACCESS_KEY)
    assert ACCESS_KEY not in fake.keys
    # Each step proved the credential's own pair first (AccessDenied: authenticated).
    assert fake.proofs == [(ACCESS_KEY, 403), (ACCESS_KEY, 403), (new.facts.key_id, 403)]


def test_a_rotation_identity_waits_for_a_new_key_object_storage_does_not_know_yet(
    fake: FakeIam,
) -> None:
    """A key a rotation has just made may not be known everywhere yet: until Object
    Storage accepts its signature, no step acts with the identity for it."""
    fake.add(Key(ADMIN_ACCESS_KEY, ADMIN_SECRET_KEY, application_id=OTHER_APPLICATION_ID))
    fake.managers.add(OTHER_APPLICATION_ID)
    identity = {"accessKey": SecretStr(ADMIN_ACCESS_KEY), "secretKey": SecretStr(ADMIN_SECRET_KEY)}
    acting = dataclasses.replace(_context(fake.url), rotation_identity=identity)
    fake.propagation = 3600
    new = scaleway.create_key(_spec(), _secrets(), acting)
    new_spec = _spec(new.facts.key_id)
    new_secret = new.secret_data["secretKey"].get_secret_value()
    error = _refused(
        lambda: scaleway.delete_key(new_spec, new.secret_data, acting, ACCESS_KEY), new_secret
    )
    assert error.reason == RotationReason.ACCESS_DENIED
    assert "Object Storage does not know that access key (HTTP 403 InvalidAccessKeyId)" in (
        error.message
    )
    assert ACCESS_KEY in fake.keys
    fake.keys[new.facts.key_id].accepted_from = datetime.now(UTC)  # propagated
    scaleway.delete_key(new_spec, new.secret_data, acting, ACCESS_KEY)
    assert ACCESS_KEY not in fake.keys


def test_without_a_rotation_identity_nothing_is_proved(fake: FakeIam) -> None:
    # The key acts with its own secret key: IAM itself bounds it by its bearer's rights.
    scaleway.list_keys(_spec(), _secrets(), _context(fake.url))
    assert fake.proofs == []


def test_a_rotation_identity_never_acts_for_another_bearers_access_key(fake: FakeIam) -> None:
    """A tenant names someone else's access key (a user's, VICTIM_ACCESS_KEY) with its own
    secret key, whose application may only read IAM. The admins' rotation identity signs
    the key-management calls, and IAM never ties the tenant's secret key to the access
    key: unless the operator proves the pair first, it makes a key for the victim's
    user, hands it to the tenant, then deletes the victim's key."""
    fake.managers.discard(APPLICATION_ID)
    fake.readers.add(APPLICATION_ID)
    victim = fake.add(Key(VICTIM_ACCESS_KEY, VICTIM_SECRET_KEY, user_id=USER_ID))
    fake.add(Key(ADMIN_ACCESS_KEY, ADMIN_SECRET_KEY, application_id=OTHER_APPLICATION_ID))
    fake.managers.add(OTHER_APPLICATION_ID)
    identity = {"accessKey": SecretStr(ADMIN_ACCESS_KEY), "secretKey": SecretStr(ADMIN_SECRET_KEY)}
    acting = dataclasses.replace(_context(fake.url), rotation_identity=identity)
    spec = _spec(VICTIM_ACCESS_KEY)

    refused: RotationError | None = None
    try:
        # The rotator's steps: make a key for the bearer, then retire the one replaced.
        new = scaleway.create_key(spec, _secrets(), acting)
        scaleway.delete_key(_spec(new.facts.key_id), new.secret_data, acting, VICTIM_ACCESS_KEY)
    except RotationError as error:
        refused = error
    writes = [(call.method, call.path) for call in fake.calls if call.method != "GET"]
    assert writes == []  # no POST /iam/v1alpha1/api-keys, no DELETE of the victim's key
    assert VICTIM_ACCESS_KEY in fake.keys
    assert [key.access_key for key in fake.keys.values() if key.user_id == USER_ID] == [
        VICTIM_ACCESS_KEY
    ]
    assert refused is not None
    _no_leak(refused, SECRET_KEY, VICTIM_SECRET_KEY, ADMIN_SECRET_KEY)
    assert refused.reason == RotationReason.ACCESS_DENIED
    assert refused.message.startswith("spec.scaleway.accessKey: ")
    assert f"the secret key does not belong to access key {VICTIM_ACCESS_KEY}" in refused.message

    # Every other step refuses the same way, before the identity is used at all.
    calls = len(fake.calls)
    for operation in (
        lambda: scaleway.key_facts(spec, _secrets(), acting),
        lambda: scaleway.list_keys(spec, _secrets(), acting),
        lambda: scaleway.delete_key(spec, _secrets(), acting, "SCWOLDKEY00000000000"),
    ):
        error = _refused(operation, VICTIM_SECRET_KEY, ADMIN_SECRET_KEY)
        assert error.reason == RotationReason.ACCESS_DENIED
        assert "the secret key does not belong to access key" in error.message
    assert victim.secret_key == VICTIM_SECRET_KEY
    assert ADMIN_ACCESS_KEY not in {call.caller for call in fake.calls[calls:]}
    # Object Storage refused each signature: the tenant's secret key is not the victim's.
    assert fake.proofs == [(None, 403)] * 4
