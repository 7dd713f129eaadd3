"""GCP key rotation (list, create, facts, delete) against a local IAM API.

The server is a small in-memory stand-in for Google's: a token endpoint that checks the
JWT assertion's RS256 signature with the public half of the key it names (``kid``) and
that the key is one of the issuing service account's (``iss``), and the IAM API v1's
service-account key methods, for any service account it has keys of, which accept only
a bearer token issued for a key that still exists. google-auth and requests run
unmodified; a key the server makes is a real RSA key in a real JSON key file, so a test
can go on with it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr

from cloudcred.__main__ import QUIET_LOGGERS
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.conditions import parse_time
from cloudcred.providers import gcp
from cloudcred.providers.base import (
    KeyFacts,
    ProviderSettings,
    RotationError,
    RotationReason,
    VerifyContext,
)
from tests.echo import Pki, make_pki
from tests.gcp import EMAIL, SERVER_KEY, SERVER_PEM, key_json, pem

TIMEOUT = 3.0
FIRST_KEY_ID = "0123456789abcdef0123456789abcdef01234567"  # tests.gcp.key_json's
KEYS_PATH = f"/v1/projects/-/serviceAccounts/{EMAIL}/keys"
NO_EXPIRY = "9999-12-31T23:59:59Z"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeKey:
    key_id: str
    public: rsa.RSAPublicKey | None
    valid_after: str
    valid_before: str = NO_EXPIRY
    disabled: bool = False
    key_type: str = "USER_MANAGED"
    email: str = EMAIL  # the service account the key is one of

    def resource(self) -> dict[str, Any]:
        return {
            "name": f"projects/my-project/serviceAccounts/{self.email}/keys/{self.key_id}",
            "validAfterTime": self.valid_after,
            "validBeforeTime": self.valid_before,
            "keyAlgorithm": "KEY_ALG_RSA_2048",
            "keyOrigin": "GOOGLE_PROVIDED",
            "keyType": self.key_type,
            **({"disabled": True} if self.disabled else {}),
        }


@dataclass
class FakeIam:
    """Service accounts' keys (``EMAIL``'s unless a key says otherwise), the token
    endpoint and the IAM key methods."""

    url: str = ""
    keys: dict[str, FakeKey] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> key id
    # Every IAM call: (method, path with query, the key id its token was issued for).
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    # Answers instead of the real ones, by action (list, create, get, delete).
    refuse: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # privateKeyData handed out
    assertions: list[str] = field(default_factory=list)  # signed JWTs received
    private_pems: list[str] = field(default_factory=list)
    corrupt_create: bool = False
    no_rights: set[str] = field(default_factory=set)  # keys whose tokens may not manage keys
    limit: int = 10  # GCP's user-managed keys per service account

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def user_keys(self, email: str = EMAIL) -> list[FakeKey]:
        return [key for key in self.keys.values()
                if key.key_type == "USER_MANAGED" and key.email == email]  # fmt: skip

    def new_key(self, token_uri: str, email: str = EMAIL) -> tuple[FakeKey, str]:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key = FakeKey(
            secrets.token_hex(20), private.public_key(), _stamp(datetime.now(UTC)), email=email
        )
        self.keys[key.key_id] = key
        text = key_json(token_uri, private_key=pem(private), private_key_id=key.key_id,
                        client_email=email)  # fmt: skip
        self.private_pems.append(pem(private))
        return key, text


def _handler(iam: FakeIam) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._keys()

        def do_DELETE(self) -> None:
            self._keys()

        def do_POST(self) -> None:
            if self.path == "/token":
                self._token()
            else:
                self._keys()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _token(self) -> None:
            form = parse_qs(self._body().decode())
            iam.assertions.append(form["assertion"][0])
            header, payload, signature = form["assertion"][0].split(".")
            key = iam.keys.get(json.loads(_b64decode(header)).get("kid", ""))
            if key is None or key.public is None or key.disabled:
                return self._json(400, {"error": "invalid_grant", "error_description": "x"})
            try:
                key.public.verify(
                    _b64decode(signature),
                    f"{header}.{payload}".encode(),
                    padding.PKCS1v15(),
                    hashes.SHA256(),
                )
            except Exception:
                return self._json(400, {"error": "invalid_grant"})
            if json.loads(_b64decode(payload)).get("iss") != key.email:
                # Google: the key is not one of the issuer's ("Invalid JWT Signature.").
                return self._json(400, {"error": "invalid_grant"})
            token = f"ya29.fake-{secrets.token_urlsafe(24)}"
            iam.tokens[token] = key.key_id
            self._json(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

        def _keys(self) -> None:
            body = self._body()
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            match = re.fullmatch(r"/v1/projects/-/serviceAccounts/([^/]+)/keys(?:/([^/]*))?", path)
            email = match.group(1) if match else ""
            if not any(key.email == email for key in iam.keys.values()):
                return self._error(404, "NOT_FOUND")  # no such service account
            key_id = (match.group(2) if match else None) or ""
            # Only a token issued for a key that still exists is accepted.
            authorization = self.headers.get("Authorization", "")
            token_key = iam.tokens.get(authorization.removeprefix("Bearer "), "")
            if token_key not in iam.keys:
                return self._error(401, "UNAUTHENTICATED", echo=authorization)
            iam.calls.append((self.command, self.path, token_key))
            if token_key in iam.no_rights:
                return self._error(403, "PERMISSION_DENIED")
            action = {"GET": "get" if key_id else "list", "POST": "create", "DELETE": "delete"}
            forced = iam.refuse.get(action[self.command])
            if forced is not None:
                status, answer = forced
                # A careless error body quotes the request: the token and the body.
                answer = json.loads(json.dumps(answer))
                answer["error"]["message"] = f"echo {authorization} {body.decode()}"
                return self._json(status, answer)
            if self.command == "GET" and not key_id:
                types = parse_qs(parts.query).get("keyTypes")
                keys = [key for key in iam.keys.values()
                        if key.email == email and (not types or key.key_type in types)]  # fmt: skip
                return self._json(200, {"keys": [key.resource() for key in keys]})
            if self.command == "POST":
                return self._create(json.loads(body), email)
            key = iam.keys.get(key_id)
            if key is None or key.key_type != "USER_MANAGED" or key.email != email:
                return self._error(404, "NOT_FOUND")
            if self.command == "DELETE":
                del iam.keys[key_id]
                return self._json(200, {})
            self._json(200, key.resource())

        def _create(self, request: dict[str, Any], email: str) -> None:
            if request.get("privateKeyType") != "TYPE_GOOGLE_CREDENTIALS_FILE":
                return self._error(400, "INVALID_ARGUMENT")
            if len(iam.user_keys(email)) >= iam.limit:
                return self._error(400, "FAILED_PRECONDITION")
            key, text = iam.new_key(iam.token_uri, email)
            data = base64.b64encode(text.encode()).decode()
            if iam.corrupt_create:
                data = base64.b64encode(b'{"type": "service_account"}').decode()
            iam.created.append(data)
            self._json(200, {**key.resource(), "privateKeyType": request["privateKeyType"],
                             "privateKeyData": data})  # fmt: skip

        def _error(self, status: int, code: str, echo: str = "") -> None:
            self._json(status, {"error": {"code": status, "status": code, "message": echo}})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def serve(pki: Pki | None = None) -> tuple[FakeIam, ThreadingHTTPServer]:
    fake = FakeIam()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    scheme = "http"
    if pki is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.cert, pki.key)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    fake.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    fake.keys[FIRST_KEY_ID] = FakeKey(
        FIRST_KEY_ID, SERVER_KEY.public_key(), "2026-01-02T03:04:05.123456789Z"
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return fake, server


@pytest.fixture
def iam() -> Iterator[FakeIam]:
    fake, server = serve()
    yield fake
    server.shutdown()
    server.server_close()


def spec() -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(
        {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "k", "key": "key.json"}}}
    )


def context(token_uri: str, iam_url: str, timeout: float = TIMEOUT) -> VerifyContext:
    settings = ProviderSettings(
        gcp_token_uri=token_uri, gcp_iam_url=iam_url, timeout_seconds=timeout
    )
    return VerifyContext(namespace="ns", name="cred", settings=settings)


def first_key(iam: FakeIam) -> dict[str, SecretStr]:
    return {"serviceAccountKey": SecretStr(key_json(iam.token_uri))}


def ctx(iam: FakeIam) -> VerifyContext:
    return context(iam.token_uri, iam.url)


def secret_texts(iam: FakeIam) -> list[str]:
    """Everything that must never be shown: private keys (whole and line by line), the
    key files handed out, and every access token the server issued."""
    texts = [SERVER_PEM, *iam.private_pems, *iam.created, *iam.tokens, "PRIVATE KEY"]
    texts += [assertion.rsplit(".", 1)[-1] for assertion in iam.assertions]  # signatures
    for private in (SERVER_PEM, *iam.private_pems):
        texts += [line for line in private.splitlines() if line and "-----" not in line]
    return texts


def failure(iam: FakeIam, call: Any) -> RotationError:
    """The RotationError ``call`` raises, after checking it carries no secret."""
    with pytest.raises(RotationError) as caught:
        call()
    error = caught.value
    for shown in (error.message, str(error), repr(error)):
        for text in secret_texts(iam):
            assert text not in shown
        assert "echo" not in shown  # nothing of an error body's free text
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


# --- list, facts, create, delete ---------------------------------------------------------


def test_list_keys_gives_the_user_managed_keys_with_their_dates(iam: FakeIam) -> None:
    iam.keys["b" * 40] = FakeKey(
        "b" * 40, None, "2026-03-01T00:00:00Z", valid_before="2026-06-01T00:00:00Z"
    )
    iam.keys["c" * 40] = FakeKey("c" * 40, None, "2026-04-01T00:00:00Z", disabled=True)
    iam.keys["d" * 40] = FakeKey("d" * 40, None, "2026-04-01T00:00:00Z", key_type="SYSTEM_MANAGED")

    keys = gcp.list_keys(spec(), first_key(iam), ctx(iam))

    assert keys == [
        KeyFacts(FIRST_KEY_ID, datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        KeyFacts(
            "b" * 40,
            created=datetime(2026, 3, 1, tzinfo=UTC),
            expires=datetime(2026, 6, 1, tzinfo=UTC),
        ),
        KeyFacts("c" * 40, created=datetime(2026, 4, 1, tzinfo=UTC), active=False),
    ]
    # Asked for user-managed keys, with a token issued for the key in the Secret.
    [(method, path, used)] = iam.calls
    assert (method, used) == ("GET", FIRST_KEY_ID)
    assert path == f"{KEYS_PATH}?keyTypes=USER_MANAGED"


def test_key_facts_reads_the_key_in_use(iam: FakeIam) -> None:
    iam.keys[FIRST_KEY_ID].valid_before = "2027-01-02T03:04:05Z"

    facts = gcp.key_facts(spec(), first_key(iam), ctx(iam))

    assert facts == KeyFacts(
        FIRST_KEY_ID,
        created=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        last_used=None,  # the IAM API keeps none
        expires=datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert iam.calls == [("GET", f"{KEYS_PATH}/{FIRST_KEY_ID}", FIRST_KEY_ID)]


def test_key_facts_without_an_expiry_or_a_known_key(iam: FakeIam) -> None:
    facts = gcp.key_facts(spec(), first_key(iam), ctx(iam))
    assert facts is not None
    assert facts.expires is None

    iam.refuse["get"] = (404, {"error": {"code": 404, "status": "NOT_FOUND"}})
    assert gcp.key_facts(spec(), first_key(iam), ctx(iam)) is None


def test_create_key_gives_a_key_file_that_works(iam: FakeIam) -> None:
    before = datetime.now(UTC).replace(microsecond=0)

    new = gcp.create_key(spec(), first_key(iam), ctx(iam))

    assert iam.calls == [("POST", KEYS_PATH, FIRST_KEY_ID)]
    assert new.facts.key_id in iam.keys
    assert new.facts.key_id != FIRST_KEY_ID
    assert new.facts.created is not None
    assert before <= new.facts.created <= datetime.now(UTC)
    assert new.facts.expires is None
    assert new.facts.active
    assert list(new.secret_data) == ["serviceAccountKey"]
    info = json.loads(new.secret_data["serviceAccountKey"].get_secret_value())
    assert (info["private_key_id"], info["client_email"]) == (new.facts.key_id, EMAIL)
    assert "SecretStr('**********')" in repr(new)

    # The new key acts on its own: its token is the one the IAM API sees.
    keys = gcp.list_keys(spec(), new.secret_data, ctx(iam))
    assert {key.key_id for key in keys} == {FIRST_KEY_ID, new.facts.key_id}
    assert iam.calls[-1][2] == new.facts.key_id


def test_a_rotation_retires_the_old_key(iam: FakeIam) -> None:
    new = gcp.create_key(spec(), first_key(iam), ctx(iam))
    calls = len(iam.calls)
    assert gcp.deactivate_key(spec(), new.secret_data, ctx(iam), FIRST_KEY_ID) is False
    assert len(iam.calls) == calls  # GCP keys are not disabled first: no call at all
    assert iam.keys[FIRST_KEY_ID].disabled is False

    gcp.delete_key(spec(), new.secret_data, ctx(iam), FIRST_KEY_ID)

    assert list(iam.keys) == [new.facts.key_id]
    assert iam.calls[-1] == ("DELETE", f"{KEYS_PATH}/{FIRST_KEY_ID}", new.facts.key_id)
    # The old key cannot act any more: the token endpoint refuses it.
    error = failure(iam, lambda: gcp.list_keys(spec(), first_key(iam), ctx(iam)))
    assert error.reason == RotationReason.ACCESS_DENIED
    assert "invalid_grant" in error.message


def test_deleting_a_key_already_gone_is_fine(iam: FakeIam) -> None:
    gcp.delete_key(spec(), first_key(iam), ctx(iam), "a" * 40)
    assert iam.calls == [("DELETE", f"{KEYS_PATH}/{'a' * 40}", FIRST_KEY_ID)]
    assert FIRST_KEY_ID in iam.keys


# --- the provider refuses ----------------------------------------------------------------


def test_create_at_the_key_limit_is_key_limit_reached(iam: FakeIam) -> None:
    for n in range(9):
        iam.keys[f"{n}" * 40] = FakeKey(f"{n}" * 40, None, "2026-04-01T00:00:00Z")

    error = failure(iam, lambda: gcp.create_key(spec(), first_key(iam), ctx(iam)))

    assert error.reason == RotationReason.KEY_LIMIT_REACHED
    assert "HTTP 400, FAILED_PRECONDITION" in error.message
    assert "at most 10 keys" in error.message
    assert len(iam.user_keys()) == 10


@pytest.mark.parametrize(
    ("action", "status", "code", "reason", "expected"),
    [
        ("create", 403, "PERMISSION_DENIED", RotationReason.ACCESS_DENIED,
         "needs iam.serviceAccountKeys.create"),
        ("create", 401, "UNAUTHENTICATED", RotationReason.ACCESS_DENIED, "HTTP 401"),
        ("create", 400, "INVALID_ARGUMENT", RotationReason.PROVIDER_REFUSED, "HTTP 400"),
        ("create", 429, "RESOURCE_EXHAUSTED", RotationReason.PROVIDER_UNREACHABLE, "HTTP 429"),
        ("create", 503, "UNAVAILABLE", RotationReason.PROVIDER_UNREACHABLE, "HTTP 503"),
        ("list", 403, "PERMISSION_DENIED", RotationReason.ACCESS_DENIED,
         "needs iam.serviceAccountKeys.list"),
        ("get", 500, "INTERNAL", RotationReason.PROVIDER_UNREACHABLE, "HTTP 500"),
        ("delete", 403, "PERMISSION_DENIED", RotationReason.ACCESS_DENIED,
         "needs iam.serviceAccountKeys.delete"),
        ("delete", 400, "FAILED_PRECONDITION", RotationReason.PROVIDER_REFUSED, "HTTP 400"),
    ],
)  # fmt: skip
def test_refusals_map_to_reasons(
    iam: FakeIam,
    action: str,
    status: int,
    code: str,
    reason: RotationReason,
    expected: str,
) -> None:
    iam.refuse[action] = (status, {"error": {"code": status, "status": code}})
    calls = {
        "list": lambda: gcp.list_keys(spec(), first_key(iam), ctx(iam)),
        "create": lambda: gcp.create_key(spec(), first_key(iam), ctx(iam)),
        "get": lambda: gcp.key_facts(spec(), first_key(iam), ctx(iam)),
        "delete": lambda: gcp.delete_key(spec(), first_key(iam), ctx(iam), FIRST_KEY_ID),
    }
    started = time.monotonic()

    error = failure(iam, calls[action])

    assert error.reason == reason
    assert expected in error.message
    assert code in error.message
    assert len(iam.calls) == 1  # one call: google-auth retries nothing here
    assert time.monotonic() - started < 1
    assert list(iam.keys) == [FIRST_KEY_ID]  # nothing made, nothing deleted


def test_an_organization_policy_is_named(iam: FakeIam) -> None:
    violation = {
        "type": "constraints/iam.disableServiceAccountKeyCreation",
        "subject": "orgpolicy:projects/my-project",
        "description": "Key creation is not allowed on this service account.",
    }
    details = [{"@type": "type.googleapis.com/google.rpc.PreconditionFailure",
                "violations": [violation]}]  # fmt: skip
    iam.refuse["create"] = (
        400,
        {"error": {"code": 400, "status": "FAILED_PRECONDITION", "details": details}},
    )

    error = failure(iam, lambda: gcp.create_key(spec(), first_key(iam), ctx(iam)))

    assert error.reason == RotationReason.PROVIDER_REFUSED
    assert "constraints/iam.disableServiceAccountKeyCreation" in error.message


def test_a_created_key_without_its_file_is_removed_again(iam: FakeIam) -> None:
    iam.corrupt_create = True

    error = failure(iam, lambda: gcp.create_key(spec(), first_key(iam), ctx(iam)))

    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    [(_, made_path, _), (method, delete_path, _)] = iam.calls
    assert json.loads(base64.b64decode(iam.created[0])) == {"type": "service_account"}
    assert (made_path, method) == (KEYS_PATH, "DELETE")
    key_id = delete_path.rsplit("/", 1)[-1]
    assert delete_path == f"{KEYS_PATH}/{key_id}"
    assert key_id != FIRST_KEY_ID
    assert list(iam.keys) == [FIRST_KEY_ID]
    assert key_id in error.message  # the key id is public


def test_a_key_id_that_is_not_one_is_refused_before_any_call(iam: FakeIam) -> None:
    error = failure(
        iam, lambda: gcp.delete_key(spec(), first_key(iam), ctx(iam), "../../other/keys/x")
    )
    assert error.reason == RotationReason.PROVIDER_REFUSED
    assert iam.calls == []
    assert iam.tokens == {}


# --- no key to act with ------------------------------------------------------------------


def test_workload_identity_has_nothing_to_rotate() -> None:
    wif = CloudCredentialSpec.model_validate(
        {
            "provider": "GCP",
            "gcp": {
                "serviceAccountEmail": EMAIL,
                "workloadIdentityProvider": "projects/123456789/locations/global/"
                "workloadIdentityPools/my-pool/providers/my-provider",
            },
        }
    )
    with pytest.raises(RotationError) as caught:
        gcp.list_keys(wif, {}, context("http://127.0.0.1:9/token", "http://127.0.0.1:9"))
    assert caught.value.reason == RotationReason.NOT_SUPPORTED


def test_a_key_naming_another_token_endpoint_is_never_sent(iam: FakeIam) -> None:
    secrets_ = {"serviceAccountKey": SecretStr(key_json("http://169.254.169.254/token"))}
    error = failure(iam, lambda: gcp.create_key(spec(), secrets_, ctx(iam)))
    assert error.reason == RotationReason.ACCESS_DENIED
    assert "token_uri" in error.message
    assert iam.calls == []
    assert iam.tokens == {}


# --- an endpoint that cannot be reached --------------------------------------------------


@pytest.fixture
def closed_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """Accepts connections (into the backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_an_iam_api_nobody_listens_on_is_unreachable(iam: FakeIam, closed_url: str) -> None:
    error = failure(
        iam, lambda: gcp.create_key(spec(), first_key(iam), context(iam.token_uri, closed_url))
    )
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"could not connect to the IAM API {closed_url}" in error.message


def test_a_silent_iam_api_is_unreachable_within_the_timeout(iam: FakeIam, silent_url: str) -> None:
    started = time.monotonic()
    error = failure(
        iam,
        lambda: gcp.list_keys(spec(), first_key(iam), context(iam.token_uri, silent_url, 1.0)),
    )
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "no answer from the IAM API" in error.message
    assert time.monotonic() - started < 1.0 + 1.5


def test_an_unreachable_token_endpoint_is_unreachable(iam: FakeIam, closed_url: str) -> None:
    secrets_ = {"serviceAccountKey": SecretStr(key_json(closed_url + "/token"))}
    error = failure(
        iam, lambda: gcp.delete_key(spec(), secrets_, context(closed_url + "/token", iam.url), "a")
    )
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "token endpoint" in error.message
    assert iam.calls == []


def test_over_tls_trusting_the_ca_the_library_is_told_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = serve(make_pki(tmp_path))
    try:
        with pytest.raises(RotationError) as caught:  # a CA nobody trusts yet
            gcp.list_keys(spec(), first_key(fake), ctx(fake))
        assert caught.value.reason == RotationReason.PROVIDER_UNREACHABLE
        assert fake.tokens == {}

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "echo-ca.pem"))
        new = gcp.create_key(spec(), first_key(fake), ctx(fake))
        gcp.delete_key(spec(), new.secret_data, ctx(fake), FIRST_KEY_ID)
        assert list(fake.keys) == [new.facts.key_id]
    finally:
        server.shutdown()
        server.server_close()


# --- nothing secret in logs --------------------------------------------------------------


def test_no_secret_reaches_a_log_record(
    iam: FakeIam, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # google-auth logs requests and answers at DEBUG once its "google" logger is set up.
    monkeypatch.setattr(logging.getLogger("google"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("google"), "level", logging.DEBUG)
    # Every library at DEBUG, even after a test that ran the operator's quieting.
    for logger in ("", *QUIET_LOGGERS):
        caplog.set_level(logging.DEBUG, logger=logger)

    new = gcp.create_key(spec(), first_key(iam), ctx(iam))
    gcp.list_keys(spec(), new.secret_data, ctx(iam))
    gcp.key_facts(spec(), new.secret_data, ctx(iam))
    gcp.delete_key(spec(), new.secret_data, ctx(iam), FIRST_KEY_ID)
    iam.refuse["create"] = (403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}})
    failure(iam, lambda: gcp.create_key(spec(), new.secret_data, ctx(iam)))

    assert any(record.name.startswith("google.auth") for record in caplog.records)
    assert any(record.name.startswith("urllib3") for record in caplog.records)
    logged = "\n".join(f"{record.getMessage()} {record.__dict__!r}" for record in caplog.records)
    for text in secret_texts(iam):
        assert text not in logged
    assert new.secret_data["serviceAccountKey"].get_secret_value() not in logged
    assert "'assertion': '***'" in logged  # the token request was logged, without its JWT


def test_timestamps_as_the_iam_api_writes_them() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time("2026-01-02T03:04:05.5+02:00") == datetime(
        2026, 1, 2, 1, 4, 5, 500000, tzinfo=UTC
    )
    assert parse_time("2026-01-02T03:04:05.123456789Z") == datetime(
        2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC
    )
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_a_rotation_identity_manages_the_keys_of_a_key_that_has_no_rights_over_keys(
    iam: FakeIam,
) -> None:
    """The tenant's key may not manage keys. With a CredentialBoundary's rotation identity
    (an admins' service-account key), every IAM call carries the identity's token and
    acts on the tenant key's service account."""
    admin, admin_file = iam.new_key(iam.token_uri)
    iam.no_rights.add(FIRST_KEY_ID)
    error = failure(iam, lambda: gcp.create_key(spec(), first_key(iam), ctx(iam)))
    assert error.reason == RotationReason.ACCESS_DENIED
    acting = dataclasses.replace(ctx(iam), rotation_identity={gcp.KEY_ROLE: SecretStr(admin_file)})
    new = gcp.create_key(spec(), first_key(iam), acting)
    assert iam.calls[-1] == ("POST", KEYS_PATH, admin.key_id)
    assert {key.key_id for key in gcp.list_keys(spec(), new.secret_data, acting)} == {
        FIRST_KEY_ID, admin.key_id, new.facts.key_id}  # fmt: skip
    gcp.delete_key(spec(), new.secret_data, acting, FIRST_KEY_ID)
    assert iam.calls[-1] == ("DELETE", f"{KEYS_PATH}/{FIRST_KEY_ID}", admin.key_id)
    assert FIRST_KEY_ID not in iam.keys


# --- a rotation identity acts only for a proved key (decision 0216) ---------------------

VICTIM = "payments@other-project.iam.gserviceaccount.com"
ADMIN = "rotator@admin-project.iam.gserviceaccount.com"


def admin_context(iam: FakeIam) -> VerifyContext:
    """A boundary's rotation identity: a key of the admins' own service account."""
    _, admin_file = iam.new_key(iam.token_uri, ADMIN)
    return dataclasses.replace(ctx(iam), rotation_identity={gcp.KEY_ROLE: SecretStr(admin_file)})


@pytest.mark.parametrize("victim_key_id", [False, True], ids=["own-key-id", "victims-key-id"])
def test_a_rotation_identity_never_acts_for_another_service_accounts_email(
    iam: FakeIam, victim_key_id: bool
) -> None:
    """A tenant writes another team's service account into its key file's client_email,
    beside its own private key (and its own key id, or one of the victim's). Google
    answers for any service account the identity may manage, so only the tenant's own
    key can prove which account it holds: every step refuses before the identity acts."""
    victim_key, _ = iam.new_key(iam.token_uri, VICTIM)
    acting = admin_context(iam)
    forged = json.loads(first_key(iam)[gcp.KEY_ROLE].get_secret_value())
    forged["client_email"] = VICTIM  # the tenant's own private key stays
    if victim_key_id:
        forged["private_key_id"] = victim_key.key_id
    tenant = {gcp.KEY_ROLE: SecretStr(json.dumps(forged))}
    steps = {
        "list": lambda: gcp.list_keys(spec(), tenant, acting),
        "create": lambda: gcp.create_key(spec(), tenant, acting),
        "facts": lambda: gcp.key_facts(spec(), tenant, acting),
        "delete": lambda: gcp.delete_key(spec(), tenant, acting, victim_key.key_id),
    }
    before = dict(iam.keys)

    for step, call in steps.items():
        error = failure(iam, call)
        assert error.reason == RotationReason.ACCESS_DENIED, step
        assert f"a key of {VICTIM} (client_email)" in error.message
        assert "invalid_grant" in error.message
    # GCP keys are deleted, never disabled first: nothing is asked at all.
    assert gcp.deactivate_key(spec(), tenant, acting, victim_key.key_id) is False

    assert not any(VICTIM in path for _, path, _ in iam.calls)
    assert iam.calls == []
    assert iam.keys == before  # nothing made, nothing deleted
    assert iam.user_keys(VICTIM) == [victim_key]


def test_a_rotation_identity_acts_for_the_tenants_own_key_with_one_token_request_more(
    iam: FakeIam,
) -> None:
    """The tenant's genuine key proves itself at the token endpoint, then the identity's
    token acts: two token requests a step, the first signed with the tenant's key."""
    acting = admin_context(iam)
    admin_key_id = next(key.key_id for key in iam.keys.values() if key.email == ADMIN)

    def assertions_of(call: Any) -> list[str]:
        before = len(iam.assertions)
        call()
        return [json.loads(_b64decode(a.split(".")[0]))["kid"] for a in iam.assertions[before:]]

    assert assertions_of(lambda: gcp.list_keys(spec(), first_key(iam), acting)) == [
        FIRST_KEY_ID, admin_key_id]  # fmt: skip
    new = gcp.create_key(spec(), first_key(iam), acting)
    assert iam.calls[-1] == ("POST", KEYS_PATH, admin_key_id)
    facts = gcp.key_facts(spec(), new.secret_data, acting)
    assert facts is not None
    assert facts.key_id == new.facts.key_id
    assert assertions_of(lambda: gcp.delete_key(spec(), new.secret_data, acting, FIRST_KEY_ID)) == [
        new.facts.key_id,
        admin_key_id,
    ]
    assert iam.calls[-1] == ("DELETE", f"{KEYS_PATH}/{FIRST_KEY_ID}", admin_key_id)
    assert {key.key_id for key in iam.user_keys()} == {new.facts.key_id}


def test_a_rotation_identity_waits_while_the_tenants_key_cannot_be_proved(
    iam: FakeIam, closed_url: str
) -> None:
    """The token endpoint does not answer the proof: ProviderUnreachable, retried later,
    and the identity has not acted."""
    token_uri = closed_url + "/token"
    _, admin_file = iam.new_key(token_uri, ADMIN)
    identity = {gcp.KEY_ROLE: SecretStr(admin_file)}
    acting = dataclasses.replace(context(token_uri, iam.url), rotation_identity=identity)
    tenant = {gcp.KEY_ROLE: SecretStr(key_json(token_uri))}
    error = failure(iam, lambda: gcp.create_key(spec(), tenant, acting))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"a key of {EMAIL} (client_email)" in error.message
    assert iam.calls == []
