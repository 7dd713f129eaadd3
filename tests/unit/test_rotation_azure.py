"""Azure client-secret rotation against a local Entra ID and Microsoft Graph look-alike.

azure-identity, MSAL and azure-core run unmodified. One HTTPS server on loopback (its CA
trusted through ``REQUESTS_CA_BUNDLE``, the standard setting of azure-core's transport)
plays both parts, reached through the operator's own settings
(``ProviderSettings.azure_authority_host`` and ``azure_graph_url``):

- Entra ID: the tenant's OpenID configuration, and a token endpoint that issues a token
  only for a client secret the application has (not expired, and propagated: a secret
  ``addPassword`` made is refused for ``Cloud.propagation`` seconds), for the scope of
  the configured Graph URL or of Azure Resource Manager (the operator's verification);
  its tokens are JWTs naming the application (``appid``) and the tenant (``tid``);
- Graph: the application's ``passwordCredentials``, ``addPassword`` and
  ``removePassword`` (and those of the tenant's other applications, ``Cloud.others``),
  each answered only for a bearer token the token endpoint issued.
  Error bodies echo the request (headers and body), as a careless proxy would.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from pydantic import SecretStr

from cloudcred.__main__ import QUIET_LOGGERS
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.config import Settings, SettingsError
from cloudcred.providers import azure
from cloudcred.providers.base import (
    KeyFacts,
    ProviderSettings,
    Reason,
    RotationError,
    RotationReason,
    VerificationError,
    VerifyContext,
)
from tests.echo import Pki, make_pki

TENANT = str(uuid.uuid4())
SUBSCRIPTION = str(uuid.uuid4())
CLIENT = str(uuid.uuid4())
TIMEOUT = 2.0
UTC = datetime.UTC
APP_PATH = f"/v1.0/applications(appId='{CLIENT}')"
# The token the operator's verification asks for: Azure Resource Manager's.
ARM_SCOPE = "https://management.azure.com/.default"


def new_secret(hint: str | None = None) -> str:
    """A value shaped like Entra's client secrets: 3 random characters, then ``8Q~``."""
    alphabet = string.ascii_letters + string.digits + "._-"
    head = hint or "".join(random.choice(alphabet) for _ in range(3))
    return head + "8Q~" + "".join(random.choice(alphabet + "~") for _ in range(34))


def graph_time(moment: datetime.datetime) -> str:
    """Graph's DateTimeOffset: seven fractional digits and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


@dataclass
class Password:
    key_id: str
    value: str
    start: datetime.datetime
    end: datetime.datetime
    display_name: str | None = None
    # Entra ID refuses the secret before this (a new secret propagates); None: at once.
    accepted_from: datetime.datetime | None = None

    def listed(self) -> dict[str, Any]:
        """As Graph lists it: the hint, never the value."""
        return {
            "customKeyIdentifier": None,
            "displayName": self.display_name,
            "endDateTime": graph_time(self.end),
            "hint": self.value[:3],
            "keyId": self.key_id,
            "secretText": None,
            "startDateTime": graph_time(self.start),
        }


@dataclass
class Cloud:
    """The tenant, its one application and what the server saw; tests change it."""

    base: str = ""
    passwords: list[Password] = field(default_factory=list)
    owner: bool = True  # the application may manage itself (OwnedBy, owner of itself)
    limit: int = 5  # secrets per application before addPassword is refused
    propagation: float = 0.0  # seconds a secret addPassword made is refused as invalid
    absent_status: int = 400  # what removePassword answers for a key the app lacks
    # (status, error code) Graph answers for an operation ("list", "add", "remove")
    forced: dict[str, tuple[int, str]] = field(default_factory=dict)
    hang: bool = False  # Graph reads requests and never answers
    scope: str = ""  # the token scope Entra ID serves (default: base + /.default)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> secret it was got with
    token_scopes: list[str] = field(default_factory=list)
    graph_calls: list[tuple[str, str, str]] = field(default_factory=list)  # op, method, secret
    added: list[dict[str, Any]] = field(default_factory=list)  # addPassword bodies
    echoes: list[str] = field(default_factory=list)  # error bodies sent
    release: threading.Event = field(default_factory=threading.Event)
    # Other applications of the tenant allowed to manage this one: client id -> secret.
    admins: dict[str, str] = field(default_factory=dict)
    # The tenant's other applications (another team's), by client id: their secrets.
    others: dict[str, list[Password]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)  # the appId of each Graph call
    claimed_app: str | None = None  # an appid every token names instead of the real one

    def add(self, value: str, age_days: float = 10, valid_days: float = 365) -> Password:
        start = datetime.datetime.now(UTC) - datetime.timedelta(days=age_days)
        password = Password(
            str(uuid.uuid4()), value, start, start + datetime.timedelta(days=valid_days)
        )
        self.passwords.append(password)
        return password

    def works(self, value: str, client: str = CLIENT) -> bool:
        now = datetime.datetime.now(UTC)
        return any(p.value == value and p.start <= now < p.end
                   and (p.accepted_from is None or p.accepted_from <= now)
                   for p in self.of(client) or [])  # fmt: skip

    def of(self, client: str) -> list[Password] | None:
        """An application's secrets; None for an application the tenant does not have."""
        return self.passwords if client == CLIENT else self.others.get(client)

    @property
    def key_ids(self) -> set[str]:
        return {p.key_id for p in self.passwords}


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _graph_error(self, status: int, code: str, raw: str) -> None:
        # The message echoes the whole request, the bearer token and the body first.
        echo = f"{self.headers.get('Authorization')} {raw} {self.requestline} {self.headers}"
        self.server.cloud.echoes.append(echo)
        self._send(status, {"error": {"code": code, "message": f"Refused: {echo}"}})

    def do_GET(self) -> None:
        self._handle("GET", "")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        self._handle("POST", raw)

    def _handle(self, method: str, raw: str) -> None:
        cloud = self.server.cloud
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            self._send(
                200,
                {
                    "issuer": f"{cloud.base}/{TENANT}/v2.0",
                    "authorization_endpoint": f"{cloud.base}/{TENANT}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{cloud.base}/{TENANT}/oauth2/v2.0/token",
                    "jwks_uri": f"{cloud.base}/{TENANT}/discovery/v2.0/keys",
                    "response_types_supported": ["code", "id_token", "token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        elif path == f"/{TENANT}/oauth2/v2.0/token" and method == "POST":
            self._token(parse_qs(raw))
        elif path.startswith("/v1.0/applications("):
            self._graph(method, path, url.query, raw)
        else:
            self._send(404, {"error": "not_found"})

    def _token(self, form: dict[str, list[str]]) -> None:
        cloud = self.server.cloud
        posted = form.get("client_secret", [""])[0]
        scope = form.get("scope", [""])[0]
        cloud.token_scopes.append(scope)
        # The application's own secrets, or an admins' application of the tenant.
        client = form.get("client_id", [""])[0]
        admin = cloud.admins.get(client)
        valid = (admin is not None and admin == posted) or cloud.works(posted, client)
        if not valid:
            self._send(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided. "
                    f"Received: '{posted}'.",
                },
            )
        elif scope not in (cloud.scope or f"{cloud.base}/.default", ARM_SCOPE):
            self._send(400, {"error": "invalid_scope"})
        else:
            claims = {"appid": cloud.claimed_app or client, "tid": TENANT}
            payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
            token = f"eyJhbGciOiJub25lIn0.{payload}.{uuid.uuid4().hex}"
            cloud.tokens[token] = posted
            self._send(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})

    def _graph(self, method: str, path: str, query: str, raw: str) -> None:
        cloud = self.server.cloud
        app = path.removeprefix("/v1.0/applications(appId='").partition("')")[0]
        app_path = f"/v1.0/applications(appId='{app}')"
        operation = {
            ("GET", ""): "list",
            ("POST", "/addPassword"): "add",
            ("POST", "/removePassword"): "remove",
        }.get((method, path.removeprefix(app_path)), "other")
        authorization = self.headers.get("Authorization", "")
        used = cloud.tokens.get(authorization.removeprefix("Bearer "))
        cloud.graph_calls.append((operation, method, used or ""))
        cloud.asked.append(app)
        passwords = cloud.of(app)
        if cloud.hang:
            cloud.release.wait(30)
            return
        if used is None:
            self._graph_error(401, "InvalidAuthenticationToken", raw)
        elif not path.startswith(app_path) or passwords is None:
            self._graph_error(404, "Request_ResourceNotFound", raw)
        elif not cloud.owner and used not in cloud.admins.values():
            self._graph_error(403, "Authorization_RequestDenied", raw)
        elif operation in cloud.forced:
            self._graph_error(*cloud.forced[operation], raw)
        elif operation == "list" and parse_qs(query) == {"$select": ["passwordCredentials"]}:
            self._send(200, {"passwordCredentials": [p.listed() for p in passwords]})
        elif operation == "add":
            self._add(json.loads(raw), raw, passwords)
        elif operation == "remove":
            key_id = json.loads(raw).get("keyId")
            if key_id not in {p.key_id for p in passwords}:
                self._graph_error(cloud.absent_status, "Request_BadRequest", raw)
                return
            passwords[:] = [p for p in passwords if p.key_id != key_id]
            self._send(204, None)
        else:
            self._graph_error(400, "Request_BadRequest", raw)

    def _add(self, body: dict[str, Any], raw: str, passwords: list[Password]) -> None:
        cloud = self.server.cloud
        cloud.added.append(body)
        if len(passwords) >= cloud.limit:
            self._graph_error(400, "Directory_QuotaExceeded", raw)
            return
        wanted = body["passwordCredential"]
        start = datetime.datetime.now(UTC)
        end = datetime.datetime.fromisoformat(wanted["endDateTime"])
        password = Password(str(uuid.uuid4()), new_secret(), start, end, wanted["displayName"],
                            start + datetime.timedelta(seconds=cloud.propagation))  # fmt: skip
        passwords.append(password)
        self._send(200, {**password.listed(), "secretText": password.value})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cloud: Cloud) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.cloud = cloud


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("azure-rotation-pki"))


@pytest.fixture(autouse=True)
def _library_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    """Trust the test CA the standard way, and keep the developer's environment out."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("AZURE_REGIONAL_AUTHORITY_NAME", raising=False)


def serve(pki: Pki) -> tuple[Cloud, Callable[[], None]]:
    """Entra ID and Graph over TLS with ``pki``'s certificate on an ephemeral port;
    returns their state and what stops them."""
    state = Cloud()
    server = Server(state)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.cert, pki.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop() -> None:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)

    return state, stop


@pytest.fixture
def cloud(pki: Pki) -> Iterator[Cloud]:
    state, stop = serve(pki)
    try:
        yield state
    finally:
        stop()


# --- helpers ---------------------------------------------------------------------------


def make_spec() -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(
        {
            "provider": "AZURE",
            "azure": {
                "tenantId": TENANT,
                "subscriptionId": SUBSCRIPTION,
                "clientId": CLIENT,
                "clientSecretRef": {"name": "azure-sp", "key": "client-secret"},
            },
        }
    )


def context(cloud: Cloud | None = None, graph: str | None = None) -> VerifyContext:
    base = cloud.base if cloud else f"https://127.0.0.1:{closed_port()}"
    return VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(
            azure_authority_host=base, azure_graph_url=graph or base, timeout_seconds=TIMEOUT
        ),
    )


def secrets(value: str) -> dict[str, SecretStr]:
    return {"clientSecret": SecretStr(value)}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def failure(call: Any, *args: Any) -> RotationError:
    with pytest.raises(RotationError) as caught:
        call(*args)
    error = caught.value
    # The library's exception (whose text may hold a body) is not chained.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


def close_to(moment: datetime.datetime | None, expected: datetime.datetime) -> bool:
    return moment is not None and abs(moment - expected) < datetime.timedelta(seconds=5)


# --- tests -------------------------------------------------------------------------------


def test_create_list_and_delete_with_the_credentials_own_identity(cloud: Cloud) -> None:
    current = new_secret()
    old = cloud.add(current, age_days=100, valid_days=365)
    spec, ctx = make_spec(), context(cloud)

    listed = azure.list_keys(spec, secrets(current), ctx)
    assert listed == [KeyFacts(key_id=old.key_id, created=old.start, expires=old.end, active=True)]

    new = azure.create_key(spec, secrets(current), ctx)
    now = datetime.datetime.now(UTC)
    value = new.secret_data["clientSecret"].get_secret_value()
    assert set(new.secret_data) == {"clientSecret"}
    assert cloud.works(value)
    assert value != current
    assert new.facts.key_id in cloud.key_ids - {old.key_id}
    assert close_to(new.facts.created, now)
    assert close_to(new.facts.expires, now + datetime.timedelta(days=730))
    assert new.facts.last_used is None
    assert new.facts.active
    assert cloud.added[0]["passwordCredential"]["displayName"] == "cloudcred"
    # Every Graph call carried a token that the current secret got, for Graph's scope.
    assert [(op, used) for op, _, used in cloud.graph_calls] == [
        ("list", current),
        ("add", current),
    ]
    assert set(cloud.token_scopes) == {f"{cloud.base}/.default"}

    # The new key lists both, and retires the old one.
    assert {k.key_id for k in azure.list_keys(spec, secrets(value), ctx)} == cloud.key_ids
    azure.delete_key(spec, secrets(value), ctx, old.key_id)
    assert cloud.key_ids == {new.facts.key_id}
    assert cloud.graph_calls[-1] == ("remove", "POST", value)

    # The old secret is gone at Entra ID: it gets no token any more.
    error = failure(azure.list_keys, spec, secrets(current), ctx)
    assert error.reason == RotationReason.ACCESS_DENIED
    assert "AADSTS7000215" in error.message


def test_a_new_secret_is_refused_as_invalid_until_entra_id_has_propagated_it(
    cloud: Cloud,
) -> None:
    """The check asks Entra ID for a Resource Manager token; a secret addPassword has just
    made is refused as an invalid client secret (AADSTS7000215) until it propagates:
    InvalidCredentials, which the operator reads as Propagating for its own new key."""
    current = new_secret()
    cloud.add(current)
    cloud.propagation = 3600
    spec, ctx = make_spec(), context(cloud)
    assert azure.verify(spec, secrets(current), ctx).identity == f"{CLIENT}@{TENANT}"
    new = azure.create_key(spec, secrets(current), ctx)
    value = new.secret_data["clientSecret"].get_secret_value()

    with pytest.raises(VerificationError) as refused:
        azure.verify(spec, secrets(value), ctx)
    assert refused.value.reason == Reason.INVALID_CREDENTIALS
    assert "AADSTS7000215" in refused.value.message

    made = next(p for p in cloud.passwords if p.key_id == new.facts.key_id)
    made.accepted_from = datetime.datetime.now(UTC)  # propagated
    assert azure.verify(spec, secrets(value), ctx).identity == f"{CLIENT}@{TENANT}"
    assert ARM_SCOPE in cloud.token_scopes


def test_key_facts_are_those_of_the_secret_in_use(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(new_secret(), age_days=400, valid_days=365)  # expired, another hint
    in_use = cloud.add(current, age_days=100, valid_days=120)
    cloud.add(new_secret(), age_days=1)

    facts = azure.key_facts(make_spec(), secrets(current), context(cloud))

    assert facts == KeyFacts(
        key_id=in_use.key_id, created=in_use.start, expires=in_use.end, active=True
    )
    assert facts.last_used is None  # Graph keeps no last use of a client secret


def test_an_expired_secret_is_listed_as_inactive(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    expired = cloud.add(new_secret(), age_days=400, valid_days=365)
    listed = {k.key_id: k for k in azure.list_keys(make_spec(), secrets(current), context(cloud))}
    assert listed[expired.key_id].active is False
    assert close_to(listed[expired.key_id].expires, expired.end)


def test_key_facts_name_no_key_when_two_secrets_share_the_hint(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    cloud.add(new_secret(hint=current[:3]))  # Graph shows both as the same hint
    assert azure.key_facts(make_spec(), secrets(current), context(cloud)) is None


@pytest.mark.parametrize("absent_status", [400, 404])
def test_deleting_a_secret_already_gone_is_fine(cloud: Cloud, absent_status: int) -> None:
    current = new_secret()
    kept = cloud.add(current)
    cloud.absent_status = absent_status

    azure.delete_key(make_spec(), secrets(current), context(cloud), str(uuid.uuid4()))

    assert cloud.key_ids == {kept.key_id}
    # Graph refused; the list then showed the key is not there.
    assert [op for op, _, _ in cloud.graph_calls] == ["remove", "list"]


def test_deactivation_does_not_exist_and_asks_nothing(cloud: Cloud) -> None:
    current = new_secret()
    key = cloud.add(current)
    assert azure.deactivate_key(make_spec(), secrets(current), context(cloud), key.key_id) is False
    assert cloud.graph_calls == []


def test_create_refused_for_the_secret_limit_is_key_limit_reached(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    cloud.limit = 1

    error = failure(azure.create_key, make_spec(), secrets(current), context(cloud))

    assert error.reason == RotationReason.KEY_LIMIT_REACHED
    assert "Directory_QuotaExceeded" in error.message
    assert CLIENT in error.message
    assert len(cloud.passwords) == 1


def test_create_refused_without_the_permission_is_access_denied(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    cloud.owner = False

    error = failure(azure.create_key, make_spec(), secrets(current), context(cloud))

    assert error.reason == RotationReason.ACCESS_DENIED
    assert "HTTP 403, Authorization_RequestDenied" in error.message
    assert "Application.ReadWrite.OwnedBy" in error.message
    assert len(cloud.passwords) == 1


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (403, "Authorization_RequestDenied", RotationReason.ACCESS_DENIED),
        (400, "Request_BadRequest", RotationReason.PROVIDER_REFUSED),
        (409, "Request_Conflict", RotationReason.PROVIDER_REFUSED),
        (503, "serviceNotAvailable", RotationReason.PROVIDER_UNREACHABLE),
        (429, "TooManyRequests", RotationReason.PROVIDER_UNREACHABLE),
    ],
)
def test_delete_refused_keeps_the_key_and_says_why(
    cloud: Cloud, status: int, code: str, reason: RotationReason
) -> None:
    current = new_secret()
    cloud.add(current)
    other = cloud.add(new_secret())
    cloud.forced["remove"] = (status, code)

    error = failure(azure.delete_key, make_spec(), secrets(current), context(cloud), other.key_id)

    assert error.reason == reason
    assert f"HTTP {status}, {code}" in error.message
    assert other.key_id in cloud.key_ids


def test_a_malformed_key_id_is_refused_before_asking(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    error = failure(azure.delete_key, make_spec(), secrets(current), context(cloud), "../x")
    assert error.reason == RotationReason.PROVIDER_REFUSED
    assert cloud.graph_calls == []


def test_an_unreachable_graph_is_provider_unreachable(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    graph = f"https://127.0.0.1:{closed_port()}"
    cloud.scope = f"{graph}/.default"  # Entra ID serves tokens for that Graph
    error = failure(azure.create_key, make_spec(), secrets(current), context(cloud, graph))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"Microsoft Graph at {graph}: the connection failed" == error.message


def test_an_unreachable_entra_id_is_provider_unreachable() -> None:
    error = failure(azure.list_keys, make_spec(), secrets(new_secret()), context())
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "Microsoft Entra ID" in error.message
    assert "connection failed" in error.message


def test_a_graph_that_never_answers_is_unreachable_within_the_timeout(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    cloud.hang = True
    started = time.monotonic()
    error = failure(azure.list_keys, make_spec(), secrets(current), context(cloud))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "no answer within 2s" in error.message
    assert time.monotonic() - started < TIMEOUT + 3
    assert len(cloud.graph_calls) == 1  # no retries


def test_a_graph_url_that_is_not_https_is_refused(cloud: Cloud) -> None:
    current = new_secret()
    cloud.add(current)
    ctx = context(cloud, graph=cloud.base.replace("https://", "http://"))
    error = failure(azure.list_keys, make_spec(), secrets(current), ctx)
    assert error.reason == RotationReason.NOT_SUPPORTED
    assert cloud.token_scopes == []  # the secret was not even sent


def test_the_graph_url_is_an_operator_setting() -> None:
    settings = Settings.from_env({"CLOUDCRED_AZURE_GRAPH_URL": "https://graph.microsoft.us"})
    assert settings.provider_settings().azure_graph_url == "https://graph.microsoft.us"
    assert Settings.from_env({}).provider_settings().azure_graph_url == (
        "https://graph.microsoft.com"
    )
    with pytest.raises(SettingsError, match="CLOUDCRED_AZURE_GRAPH_URL"):
        Settings.from_env({"CLOUDCRED_AZURE_GRAPH_URL": "http://graph.example"})


def test_no_secret_or_token_reaches_a_message_or_a_log_line(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    # Every library at DEBUG, even after a test that ran the operator's quieting.
    for logger in ("", *QUIET_LOGGERS):
        caplog.set_level(logging.DEBUG, logger=logger)
    current = new_secret()
    cloud.add(current)
    spec, ctx = make_spec(), context(cloud)
    errors: list[RotationError] = []

    new = azure.create_key(spec, secrets(current), ctx)  # the answer holds the new secret
    value = new.secret_data["clientSecret"].get_secret_value()
    for operation in ("list", "add", "remove"):
        cloud.forced[operation] = (400, "Request_BadRequest")  # the body echoes the request
    errors.append(failure(azure.list_keys, spec, secrets(value), ctx))
    errors.append(failure(azure.create_key, spec, secrets(value), ctx))
    errors.append(failure(azure.delete_key, spec, secrets(value), ctx, new.facts.key_id))
    wrong = new_secret()  # Entra ID echoes a wrong secret in its error body
    errors.append(failure(azure.key_facts, spec, secrets(wrong), ctx))

    assert [e.reason for e in errors] == [RotationReason.PROVIDER_REFUSED] * 3 + [
        RotationReason.ACCESS_DENIED
    ]
    hidden = [current, value, wrong, *cloud.tokens]
    # The error bodies did carry the bearer tokens and the key id asked for.
    assert sum(any(token in echo for token in cloud.tokens) for echo in cloud.echoes) >= 3
    assert any(new.facts.key_id in echo for echo in cloud.echoes)
    assert caplog.records, "the libraries log at DEBUG; the check below must see them"
    shown = [e.message for e in errors] + [str(e) for e in errors] + [repr(e.args) for e in errors]
    shown += [logging.Formatter().format(record) for record in caplog.records]
    for text in shown:
        for value_ in hidden:
            assert value_ not in text
    assert f"{new!r}".count(value) == 0  # the new key's repr hides its value


def test_the_test_ca_is_needed(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The server is reached over real TLS: without its CA the call fails."""
    other = make_pki(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca))
    error = failure(azure.list_keys, make_spec(), secrets(new_secret()), context(cloud))
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert "TLS" in error.message


def test_a_rotation_identity_manages_the_secrets_of_an_application_that_may_not(
    cloud: Cloud,
) -> None:
    """The tenant's application is no owner of itself (it may not manage its secrets);
    an admins' application of the same tenant, a boundary's rotation identity, gets
    the Graph token and adds and removes the tenant application's secrets."""
    current = cloud.add(new_secret())
    cloud.owner = False
    refused = failure(lambda: azure.create_key(make_spec(), secrets(current.value), context(cloud)))
    assert refused.reason == RotationReason.ACCESS_DENIED
    admin_client, admin_secret = str(uuid.uuid4()), new_secret()
    cloud.admins[admin_client] = admin_secret
    acting = dataclasses.replace(context(cloud), rotation_identity={
        "clientId": SecretStr(admin_client), "clientSecret": SecretStr(admin_secret)})  # fmt: skip
    new = azure.create_key(make_spec(), secrets(current.value), acting)
    assert new.facts.key_id in cloud.key_ids
    assert cloud.graph_calls[-1] == ("add", "POST", admin_secret)
    azure.delete_key(make_spec(), secrets(current.value), acting, current.key_id)
    assert current.key_id not in cloud.key_ids
    assert cloud.graph_calls[-1] == ("remove", "POST", admin_secret)


# --- a rotation identity acts only for a proved secret (decision 0216) ------------------

VICTIM = str(uuid.uuid4())  # another team's application in the same tenant


def identity_context(cloud: Cloud) -> VerifyContext:
    """A boundary's rotation identity: an admins' application of the tenant."""
    admin_client, admin_secret = str(uuid.uuid4()), new_secret()
    cloud.admins[admin_client] = admin_secret
    return dataclasses.replace(context(cloud), rotation_identity={
        "clientId": SecretStr(admin_client), "clientSecret": SecretStr(admin_secret)})  # fmt: skip


def victim_spec() -> CloudCredentialSpec:
    spec = make_spec().model_dump(by_alias=True)
    spec["azure"]["clientId"] = VICTIM
    return CloudCredentialSpec.model_validate(spec)


def test_a_rotation_identity_never_acts_for_another_application(cloud: Cloud) -> None:
    """A tenant points spec.azure.clientId at another team's application and keeps its
    own client secret (patched in while its rotation waits in Creating, say). The
    identity's Graph token may manage either application, so only the tenant's secret
    can prove which one it holds: every step refuses before Graph is asked."""
    own = cloud.add(new_secret())
    victim = Password(str(uuid.uuid4()), new_secret(), datetime.datetime.now(UTC),
                      datetime.datetime.now(UTC) + datetime.timedelta(days=90))  # fmt: skip
    cloud.others[VICTIM] = [victim]
    acting, spec, tenant = identity_context(cloud), victim_spec(), secrets(own.value)
    steps: dict[str, Callable[[], object]] = {
        "list": lambda: azure.list_keys(spec, tenant, acting),
        "create": lambda: azure.create_key(spec, tenant, acting),
        "facts": lambda: azure.key_facts(spec, tenant, acting),
        "delete": lambda: azure.delete_key(spec, tenant, acting, victim.key_id),
    }

    for step, call in steps.items():
        error = failure(call)
        assert error.reason == RotationReason.ACCESS_DENIED, step
        assert f"application {VICTIM} (spec.azure.clientId)" in error.message
        assert "AADSTS7000215" in error.message
        assert own.value not in error.message
    # Entra ID client secrets are removed, never disabled first: nothing is asked at all.
    assert azure.deactivate_key(spec, tenant, acting, victim.key_id) is False

    assert cloud.graph_calls == []
    assert VICTIM not in cloud.asked
    assert cloud.others[VICTIM] == [victim]
    assert cloud.added == []


def test_a_token_naming_another_application_is_no_proof(cloud: Cloud) -> None:
    """Entra ID's token for the tenant's secret must name the application the identity
    will act on (its appid claim), whatever the token endpoint answered."""
    own = cloud.add(new_secret())
    acting = identity_context(cloud)
    cloud.claimed_app = VICTIM

    error = failure(azure.create_key, make_spec(), secrets(own.value), acting)

    assert error.reason == RotationReason.ACCESS_DENIED
    assert f"names application {VICTIM}, not {CLIENT} (spec.azure.clientId)" in error.message
    assert cloud.graph_calls == []
    assert cloud.added == []


def test_a_rotation_identity_acts_for_the_tenants_own_secret_with_one_token_request_more(
    cloud: Cloud,
) -> None:
    """The tenant's genuine secret proves itself (a token for Resource Manager, as the
    check asks), then the identity's Graph token acts: two token requests a step."""
    current = cloud.add(new_secret())
    acting = identity_context(cloud)
    admin_secret = acting.rotation_identity["clientSecret"].get_secret_value()  # type: ignore[index]
    spec = make_spec()

    new = azure.create_key(spec, secrets(current.value), acting)
    assert cloud.token_scopes == [ARM_SCOPE, f"{cloud.base}/.default"]
    assert cloud.graph_calls == [("add", "POST", admin_secret)]
    assert cloud.asked == [CLIENT]
    value = new.secret_data["clientSecret"].get_secret_value()
    listed = azure.list_keys(spec, secrets(value), acting)
    assert {key.key_id for key in listed} == {current.key_id, new.facts.key_id}
    facts = azure.key_facts(spec, secrets(value), acting)
    assert facts is not None
    assert facts.key_id == new.facts.key_id
    azure.delete_key(spec, secrets(value), acting, current.key_id)
    assert cloud.key_ids == {new.facts.key_id}
    assert len(cloud.token_scopes) == 8  # a proof and the identity's token, each step
    assert list(cloud.tokens.values()).count(value) == 3  # the proofs of the new secret


def test_a_rotation_identity_waits_while_entra_id_cannot_prove_the_secret() -> None:
    """Entra ID does not answer the proof: ProviderUnreachable, retried later."""
    identity = {"clientId": SecretStr(str(uuid.uuid4())), "clientSecret": SecretStr(new_secret())}
    acting = dataclasses.replace(context(), rotation_identity=identity)
    error = failure(azure.list_keys, make_spec(), secrets(new_secret()), acting)
    assert error.reason == RotationReason.PROVIDER_UNREACHABLE
    assert f"application {CLIENT} (spec.azure.clientId)" in error.message
    assert "connection failed" in error.message
