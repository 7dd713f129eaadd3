"""A provider endpoint that echoes: every answer carries the whole request it received.

The leak test points the operator's provider settings at it (``CLOUDCRED_GCP_TOKEN_URI``,
``CLOUDCRED_AZURE_AUTHORITY_HOST``, ``CLOUDCRED_SCALEWAY_API_URL``,
``CLOUDCRED_SCALEWAY_S3_URL``, ``AWS_ENDPOINT_URL``),
so whatever secret a client sends -- a posted client secret, an ``X-Auth-Token`` header,
a JWT assertion -- comes straight back in an error body, as a careless proxy or a
provider's verbose error would send it. The echo holds the request line, the headers,
the raw body, the body form-decoded, and the decoded parts of any JWT in it.

What it answers is chosen by ``routes``: the first route whose text occurs in the echo
(an access key id, a tenant id, a role ARN, a service account's e-mail inside a JWT)
names a behaviour; ``default`` otherwise:

- ``"400"``, ``"401"``, ``"403"``, ``"500"``: that status, the echo in the error body
  (AWS's XML error document for AWS query requests, an OAuth-style JSON body otherwise);
- ``"garbage"``: 200 with a body that is not JSON (nor XML), the echo inside;
- ``"html"``: 400 with an HTML page (not JSON) holding the echo, as a proxy would send;
- ``"gcp-token"``, ``"azure-token"``: a valid token response, the echo in an extra field;
- ``"forward"``: passed on to ``upstream`` (moto) and its answer passed back, so one
  operator can reach moto and the echo through the same ``AWS_ENDPOINT_URL``.

Entra ID's tenant metadata (``/<tenant>/v2.0/.well-known/openid-configuration``) is
always answered properly, so that MSAL goes on to POST the client secret.

Threaded, on 127.0.0.1, optionally over TLS with a CA of its own (``make_pki``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import http.client
import ipaddress
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

JWT = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
OPENID = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration")
ERROR_CODES = {  # (AWS error code, OAuth error) by status
    400: ("ValidationError", "invalid_request"),
    401: ("InvalidClientTokenId", "invalid_client"),
    403: ("AccessDenied", "access_denied"),
    500: ("InternalFailure", "server_error"),
}


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(folder: Path) -> Pki:
    """A CA and a certificate for 127.0.0.1 signed by it (trust ``ca`` on the client)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("echo CA")).issuer_name(name("echo CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pki = Pki(folder / "echo-ca.pem", folder / "echo.pem", folder / "echo-key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    return pki


def _b64url_json(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _decoded_jwts(text: str) -> list[str]:
    """The header and payload of every JWT-looking token in ``text``, decoded."""
    parts = []
    for token in JWT.findall(text):
        for segment in token.split(".")[:2]:
            try:
                parts.append(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
                             .decode())  # fmt: skip
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
    return parts


@dataclass
class EchoServer:
    routes: dict[str, str] = field(default_factory=dict)
    default: str = "400"
    upstream: str | None = None  # http://host:port for "forward"
    pki: Pki | None = None
    # Every echo, and the behaviour it got (tests check that secrets really came back).
    seen: list[tuple[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.pki else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> EchoServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if self.pki:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.pki.cert, self.pki.key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def behaviour(self, echo: str) -> str:
        return next((then for text, then in self.routes.items() if text in echo), self.default)


def _handler(echo_server: EchoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_PUT(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            text = body.decode("utf-8", errors="replace")
            form = parse_qsl(text, keep_blank_values=True)
            query = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
            echo = "\n".join([
                f"{self.command} {self.path} {self.request_version}",
                *(f"{name}: {value}" for name, value in self.headers.items()),
                "", text, "form-decoded:",
                *(f"{name}={value}" for name, value in [*query, *form]),
                "jwt-decoded:", *_decoded_jwts(text + " " + self.path),
            ])  # fmt: skip
            tenant = OPENID.fullmatch(urlsplit(self.path).path)
            if tenant:
                echo_server.seen.append((echo, "openid"))
                return self._openid(tenant.group(1))
            behaviour = echo_server.behaviour(echo)
            echo_server.seen.append((echo, behaviour))
            if behaviour == "forward":
                return self._forward(body)
            aws = any(name == "Action" for name, _ in form)
            if behaviour == "garbage":
                start = "<ErrorResponse><Error><Message>" if aws else '{"access_token": "'
                return self._send(200, start + echo, "application/json")
            if behaviour == "html":
                return self._send(400, f"<html><pre>{echo}</pre></html>", "text/html")
            if behaviour == "gcp-token":
                return self._json(200, {"access_token": "ya29.echo", "expires_in": 3600,
                                        "token_type": "Bearer", "echo": echo})  # fmt: skip
            if behaviour == "azure-token":
                token = self._azure_token()
                return self._json(200, {"token_type": "Bearer", "expires_in": 3599,
                                        "access_token": token, "echo": echo})  # fmt: skip
            status = int(behaviour)
            aws_code, oauth_error = ERROR_CODES[status]
            if aws:
                document = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{aws_code}</Code>"
                            f"<Message>{escape(echo)}</Message></Error>"
                            "<RequestId>echo</RequestId></ErrorResponse>")  # fmt: skip
                return self._send(status, document, "text/xml")
            return self._json(status, {"error": oauth_error, "error_description": echo,
                                       "message": echo, "type": oauth_error})  # fmt: skip

        def _openid(self, tenant: str) -> None:
            base = f"{echo_server.url}/{tenant}"
            self._json(200, {
                "issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })  # fmt: skip

        def _azure_token(self) -> str:
            tenant = urlsplit(self.path).path.split("/")[1]
            claims = {"aud": "https://management.azure.com", "tid": tenant,
                      "oid": "00000000-0000-0000-0000-0000000000e0", "appid": "echo"}  # fmt: skip
            return f"{_b64url_json({'alg': 'RS256'})}.{_b64url_json(claims)}.c2ln"

        def _forward(self, body: bytes) -> None:
            assert echo_server.upstream is not None
            target = urlsplit(echo_server.upstream)
            connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
            try:
                # The same headers, Host included: the signature covers them.
                connection.putrequest(self.command, self.path, skip_host=True,
                                      skip_accept_encoding=True)  # fmt: skip
                for name, value in self.headers.items():
                    connection.putheader(name, value)
                connection.endheaders(body)
                answer = connection.getresponse()
                data = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body), "application/json")

        def _send(self, status: int, text: str, content_type: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
