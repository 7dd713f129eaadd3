"""The Azure verifier against a local Microsoft Entra ID look-alike.

azure-identity and MSAL run unmodified. They insist on https, so the tests make a CA and
a certificate for 127.0.0.1 with ``cryptography``, serve the two endpoints MSAL uses for
a client-secret flow (the tenant's OpenID configuration and its token endpoint) over TLS
on loopback, and point the library at them through the operator's own setting
(``ProviderSettings.azure_authority_host``). The CA is trusted through
``REQUESTS_CA_BUNDLE``, the standard setting of azure-core's requests transport, so the
operator carries no test-only code.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from cloudcred.api.common import SecretKeyRef
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.providers import azure
from cloudcred.providers.base import (
    ProviderSettings,
    Reason,
    VerificationError,
    VerifyContext,
)

TENANT = str(uuid.uuid4())
SUBSCRIPTION = str(uuid.uuid4())
CLIENT = str(uuid.uuid4())
OBJECT_ID = str(uuid.uuid4())
SECRET = "Zx8Q~s3cr3t-value.for_the-test-only~0123456789"
TIMEOUT = 2.0


# --- certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the CA that signed the server certificate
    other_ca_file: Path  # a CA that did not
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("azure-pki")
    ca_key, ca_cert = _ca("cloudcred test CA")
    _, other_ca_cert = _ca("cloudcred unrelated CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        ca_file=folder / "ca.pem",
        other_ca_file=folder / "other-ca.pem",
        cert_file=folder / "server.pem",
        key_file=folder / "server-key.pem",
    )
    pki.ca_file.write_bytes(_pem(ca_cert))
    pki.other_ca_file.write_bytes(_pem(other_ca_cert))
    pki.cert_file.write_bytes(_pem(cert))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@pytest.fixture(autouse=True)
def _library_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    """Trust the test CA the standard way, and keep the developer's environment out."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca_file))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("AZURE_REGIONAL_AUTHORITY_NAME", raising=False)


# --- the Entra ID look-alike ------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def access_token() -> str:
    """A JWT-shaped token like Entra ID's for Resource Manager (not signed for real)."""
    header = {"typ": "JWT", "alg": "RS256", "kid": "test"}
    claims = {
        "aud": "https://management.azure.com",
        "iss": f"https://sts.windows.net/{TENANT}/",
        "appid": CLIENT,
        "oid": OBJECT_ID,
        "tid": TENANT,
        "sub": OBJECT_ID,
    }
    return f"{_b64(header)}.{_b64(claims)}.c2lnbmF0dXJl"


@dataclass
class EntraState:
    """What the server knows and how it misbehaves; tests change it before verifying."""

    base: str = ""
    token: str = field(default_factory=access_token)
    # (status, body) the token endpoint answers instead of checking the secret
    token_error: tuple[int, dict[str, Any] | str] | None = None
    # put the posted secret in the wrong-secret answer: "json" in its error_description,
    # "html" in a page that is not JSON at all (MSAL logs such a body)
    echo_secret: str | None = None
    metadata_status: int | None = None  # the tenant metadata answers this status instead
    hang: bool = False  # read requests, never answer
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class EntraHandler(BaseHTTPRequestHandler):
    server: EntraServer

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        pass

    def _send(self, status: int, body: dict[str, Any] | str) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/json" if isinstance(body, dict) else "text/html"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        state.requests.append(f"GET {path}")
        if state.hang:
            state.release.wait(30)
            return
        match = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path)
        if match and state.metadata_status:
            self._send(state.metadata_status, "<html>Service Unavailable</html>")
        elif match and match.group(1) == TENANT:
            self._send(
                200,
                {
                    "issuer": f"{state.base}/{TENANT}/v2.0",
                    "authorization_endpoint": f"{state.base}/{TENANT}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{state.base}/{TENANT}/oauth2/v2.0/token",
                    "jwks_uri": f"{state.base}/{TENANT}/discovery/v2.0/keys",
                    "response_types_supported": ["code", "id_token", "token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        elif match:
            tenant = match.group(1)
            self._send(
                400,
                {
                    "error": "invalid_tenant",
                    "error_description": f"AADSTS90002: Tenant '{tenant}' not found.",
                    "error_codes": [90002],
                },
            )
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        state.requests.append(f"POST {path}")
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        form = parse_qs(raw)
        if state.hang:
            state.release.wait(30)
            return
        if path != f"/{TENANT}/oauth2/v2.0/token":
            self._send(404, {"error": "not_found"})
            return
        if state.token_error:
            self._send(*state.token_error)
            return
        posted = form.get("client_secret", [""])[0]
        echo = f" Received: '{posted}'." if state.echo_secret else ""
        if form.get("grant_type") != ["client_credentials"]:
            self._send(400, {"error": "unsupported_grant_type"})
        elif form.get("client_id") != [CLIENT]:
            self._send(
                400,
                {
                    "error": "unauthorized_client",
                    "error_description": "AADSTS700016: Application with identifier "
                    f"'{form.get('client_id')}' was not found in the directory.{echo}",
                },
            )
        elif posted != SECRET and state.echo_secret == "html":
            self._send(400, f"<html>Bad request from client secret '{posted}'</html>")
        elif posted != SECRET and state.echo_secret == "raw-html":  # the form, URL-encoded
            self._send(400, f"<html>Bad request: {raw}</html>")
        elif posted != SECRET:
            self._send(
                401,
                {
                    "error": "invalid_client",
                    "error_description": f"AADSTS7000215: Invalid client secret provided.{echo}",
                    "error_codes": [7000215],
                },
            )
        elif form.get("scope") != ["https://management.azure.com/.default"]:
            self._send(400, {"error": "invalid_scope"})
        else:
            self._send(
                200,
                {"token_type": "Bearer", "expires_in": 3599, "access_token": state.token},
            )


class EntraServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: EntraState) -> None:
        super().__init__(("127.0.0.1", 0), EntraHandler)
        self.state = state


@pytest.fixture
def entra(pki: Pki) -> Iterator[EntraState]:
    state = EntraState()
    server = EntraServer(state)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.cert_file, pki.key_file)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    state.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- helpers ---------------------------------------------------------------------------


def make_spec(client_id: str = CLIENT, tenant_id: str = TENANT) -> CloudCredentialSpec:
    return CloudCredentialSpec.model_validate(
        {
            "provider": "AZURE",
            "azure": {
                "tenantId": tenant_id,
                "subscriptionId": SUBSCRIPTION,
                "clientId": client_id,
                "clientSecretRef": {"name": "azure-sp", "key": "client-secret"},
            },
        }
    )


def context(authority: str | None) -> VerifyContext:
    return VerifyContext(
        namespace="ns",
        name="cred",
        settings=ProviderSettings(azure_authority_host=authority, timeout_seconds=TIMEOUT),
    )


def secrets(value: str = SECRET) -> dict[str, SecretStr]:
    return {"clientSecret": SecretStr(value)}


def refused(spec: CloudCredentialSpec, secret: str, authority: str) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        azure.verify(spec, secrets(secret), context(authority))
    error = caught.value
    # The library's exception (whose text holds the error body) is not chained.
    assert error.__cause__ is None
    assert error.__suppress_context__
    return error


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- tests -------------------------------------------------------------------------------


def test_public_id_and_secret_refs() -> None:
    spec = make_spec()
    assert azure.public_id(spec) == CLIENT
    assert azure.secret_refs(spec) == {
        "clientSecret": SecretKeyRef(name="azure-sp", key="client-secret")
    }


def test_valid_secret_is_verified_with_the_token_identity(entra: EntraState) -> None:
    result = azure.verify(make_spec(), secrets(), context(entra.base))

    assert result.identity == f"{CLIENT}@{TENANT} (object id {OBJECT_ID})"
    assert result.static_keys is True
    assert result.key_created_time is None
    # Tenant metadata, then the token; no instance discovery for the configured host.
    assert entra.requests == [
        f"GET /{TENANT}/v2.0/.well-known/openid-configuration",
        f"POST /{TENANT}/oauth2/v2.0/token",
    ]


def test_a_token_that_is_not_a_jwt_falls_back_to_the_spec_ids(entra: EntraState) -> None:
    entra.token = "opaque-token"
    result = azure.verify(make_spec(), secrets(), context(entra.base))
    assert result.identity == f"{CLIENT}@{TENANT}"


def test_wrong_secret_is_invalid_credentials(entra: EntraState) -> None:
    error = refused(make_spec(), "not-the-secret", entra.base)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert "AADSTS7000215" in error.message
    assert "client secret is not valid" in error.message
    assert CLIENT in error.message


def test_unknown_application_is_invalid_credentials(entra: EntraState) -> None:
    error = refused(make_spec(client_id=str(uuid.uuid4())), SECRET, entra.base)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert "AADSTS700016" in error.message


def test_unknown_tenant_is_invalid_credentials(entra: EntraState) -> None:
    other = str(uuid.uuid4())
    error = refused(make_spec(tenant_id=other), SECRET, entra.base)
    assert error.reason == Reason.INVALID_CREDENTIALS
    assert other in error.message
    assert "AADSTS90002" in error.message


@pytest.mark.parametrize(
    ("status", "body", "reason", "shown"),
    [
        pytest.param(
            401,
            {"error": "invalid_client"},
            Reason.INVALID_CREDENTIALS,
            "invalid_client",
            id="oauth-error-only",
        ),
        pytest.param(
            401,
            {"error": "invalid_client", "error_description": "AADSTS7000222: expired."},
            Reason.INVALID_CREDENTIALS,
            "AADSTS7000222",
            id="expired-secret",
        ),
        pytest.param(
            400,
            {"error": "invalid_grant", "error_description": "AADSTS50105: not assigned."},
            Reason.ACCESS_DENIED,
            "AADSTS50105",
            id="not-assigned",
        ),
        pytest.param(
            400,
            {"error": "invalid_grant", "error_description": "AADSTS53003: blocked by CA."},
            Reason.ACCESS_DENIED,
            "AADSTS53003",
            id="conditional-access",
        ),
        pytest.param(
            400,
            {"error": "access_denied"},
            Reason.ACCESS_DENIED,
            "access_denied",
            id="oauth-access-denied",
        ),
        pytest.param(
            400,
            {"error": "invalid_grant", "error_description": "AADSTS1234567: something new."},
            Reason.INVALID_CREDENTIALS,
            "AADSTS1234567",
            id="unknown-code",
        ),
        pytest.param(
            400,
            {"error": "temporarily_unavailable", "error_description": "AADSTS90033: busy."},
            Reason.PROVIDER_UNREACHABLE,
            "AADSTS90033",
            id="transient-code",
        ),
        pytest.param(
            503,
            {"error": "temporarily_unavailable", "error_description": "AADSTS90033: down."},
            Reason.PROVIDER_UNREACHABLE,
            "HTTP 503",
            id="server-error",
        ),
        pytest.param(
            502,
            "<html>Bad gateway</html>",
            Reason.PROVIDER_UNREACHABLE,
            "HTTP 502",
            id="gateway-error",
        ),
        pytest.param(
            403,
            "<html>Forbidden by proxy</html>",
            Reason.PROVIDER_UNREACHABLE,
            "not JSON",
            id="not-json",
        ),
    ],
)
def test_token_endpoint_errors_map_to_reasons(
    entra: EntraState,
    status: int,
    body: dict[str, Any] | str,
    reason: Reason,
    shown: str,
) -> None:
    entra.token_error = (status, body)
    error = refused(make_spec(), SECRET, entra.base)
    assert error.reason == reason
    assert shown in error.message


@pytest.mark.parametrize("echo", ["json", "html", "raw-html"])
@pytest.mark.parametrize(
    "secret",
    [
        "wrong-secret-that-the-server-echoes-back-0123456789",
        # A secret that looks like an error code must not be reported as one.
        "AADSTS424242-looks-like-a-code",
        # Characters that a form encodes: the echoed body holds it URL-encoded.
        "wrong+secret/with=chars~[424242]",
    ],
)
def test_the_secret_never_reaches_a_message_or_a_log_line(
    entra: EntraState, caplog: pytest.LogCaptureFixture, secret: str, echo: str
) -> None:
    entra.echo_secret = echo
    caplog.set_level(logging.DEBUG)

    error = refused(make_spec(), secret, entra.base)

    if echo == "json":
        assert error.reason == Reason.INVALID_CREDENTIALS
        assert "AADSTS7000215" in error.message
    else:
        assert error.reason == Reason.PROVIDER_UNREACHABLE
        assert "not JSON" in error.message
    for text in (error.message, str(error), repr(error.args)):
        assert secret not in text
        assert "424242" not in text
    assert caplog.records, "the libraries log at DEBUG; the check below must see them"
    for record in caplog.records:
        logged = logging.Formatter().format(record)
        for form in (secret, quote(secret, safe=""), quote_plus(secret), "424242"):
            assert form not in logged


def test_tenant_metadata_server_error_is_unreachable(entra: EntraState) -> None:
    entra.metadata_status = 503
    error = refused(make_spec(), SECRET, entra.base)
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "HTTP 503" in error.message


def test_a_server_that_never_answers_is_unreachable_within_the_timeout(
    entra: EntraState,
) -> None:
    entra.hang = True
    started = time.monotonic()
    error = refused(make_spec(), SECRET, entra.base)
    elapsed = time.monotonic() - started

    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "no answer within 2s" in error.message
    assert elapsed < TIMEOUT + 3
    assert len(entra.requests) == 1  # no retries


def test_a_port_that_accepts_but_never_speaks_tls_is_unreachable() -> None:
    with socket.socket() as listener:
        # Connections complete in the kernel's backlog; nobody ever accepts or answers.
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        authority = f"https://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        error = refused(make_spec(), SECRET, authority)
        elapsed = time.monotonic() - started

    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "no answer within 2s" in error.message
    assert elapsed < TIMEOUT + 3


def test_a_closed_port_is_unreachable() -> None:
    authority = f"https://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    error = refused(make_spec(), SECRET, authority)

    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "connection failed" in error.message
    assert authority in error.message
    assert time.monotonic() - started < TIMEOUT + 3


def test_an_untrusted_certificate_is_unreachable(
    entra: EntraState, monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca_file))
    error = refused(make_spec(), SECRET, entra.base)
    assert error.reason == Reason.PROVIDER_UNREACHABLE
    assert "TLS" in error.message


def test_an_authority_that_is_not_https_is_reported() -> None:
    error = refused(make_spec(), SECRET, "http://127.0.0.1:1")
    assert error.reason == Reason.VERIFICATION_UNAVAILABLE
    assert "https" in error.message


def test_without_the_azure_library_verification_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes "import azure.identity" raise ImportError.
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    error = refused(make_spec(), SECRET, "https://127.0.0.1:1")
    assert error.reason == Reason.VERIFICATION_UNAVAILABLE
    assert "cloudcred[azure]" in error.message
