"""A local OAuth token endpoint for GCP service-account keys.

A real HTTP server on 127.0.0.1 that checks the JWT assertion's RS256 signature with
the public halves of real RSA keys, as Google's does, so google-auth and requests run
unmodified. It accepts any of its public keys: a key rotation is two keys that both
work for a while.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

EMAIL = "deployer@my-project.iam.gserviceaccount.com"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


# One key pair for the whole module: generating RSA keys is the slow part.
SERVER_KEY = _new_key()
SERVER_PEM = pem(SERVER_KEY)
OTHER_PEM = pem(_new_key())


@dataclass
class TokenEndpoint:
    """What the local token endpoint saw."""

    url: str
    public_keys: list[rsa.RSAPublicKey]
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Answer to send instead of checking the assertion: (status, JSON body).
    forced: tuple[int, dict[str, Any]] | None = None


def _make_handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            claims = self._check(form)
            endpoint.requests.append({"path": self.path, "form": form, "claims": claims})
            if endpoint.forced is not None:
                self._answer(*endpoint.forced)
            elif claims is None:
                self._answer(400, {"error": "invalid_grant", "error_description": "bad"})
            else:
                self._answer(
                    200,
                    {"access_token": "ya29.local", "expires_in": 3600, "token_type": "Bearer"},
                )

        def _check(self, form: dict[str, list[str]]) -> dict[str, Any] | None:
            """The assertion's claims if its signature verifies, else None."""
            if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
                return None
            header, payload, signature = form["assertion"][0].split(".")
            if json.loads(_b64decode(header)).get("alg") != "RS256":
                return None
            if not any(_signed_by(key, header, payload, signature)
                       for key in endpoint.public_keys):  # fmt: skip
                return None
            claims: dict[str, Any] = json.loads(_b64decode(payload))
            return claims

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _signed_by(key: rsa.RSAPublicKey, header: str, payload: str, signature: str) -> bool:
    try:
        key.verify(_b64decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(),
                   hashes.SHA256())  # fmt: skip
    except InvalidSignature:
        return False
    return True


def start_token_endpoint(
    public_keys: list[rsa.RSAPublicKey],
) -> tuple[TokenEndpoint, ThreadingHTTPServer]:
    """Serve in a daemon thread; the caller shuts the server down."""
    endpoint = TokenEndpoint(url="", public_keys=public_keys)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(endpoint))
    server.daemon_threads = True
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/token"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return endpoint, server


def key_json(token_uri: str | None, private_key: str = SERVER_PEM, **changes: Any) -> str:
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": private_key,
        "client_email": EMAIL,
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }
    info.update(changes)
    return json.dumps({k: v for k, v in info.items() if v is not None})


@dataclass
class ResourceManager:
    """A local Cloud Resource Manager API v1: ``projects.testIamPermissions`` answers,
    for the bearer token the local token endpoint issues, the asked permissions the
    project grants (``granted``); a project it does not know is refused with 403
    PERMISSION_DENIED, as Google answers for a project the caller may not see."""

    url: str = ""
    granted: dict[str, set[str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # project, permissions
    forced: tuple[int, dict[str, Any]] | None = None


def start_resource_manager(
    granted: dict[str, set[str]],
) -> tuple[ResourceManager, ThreadingHTTPServer]:
    api = ResourceManager(granted=granted)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            match = re.fullmatch(r"/v1/projects/([^/:]+):testIamPermissions", self.path)
            asked = body.get("permissions") or []
            api.requests.append({"project": match and match.group(1), "permissions": asked})
            if api.forced is not None:
                self._answer(*api.forced)
            elif self.headers.get("Authorization") != "Bearer ya29.local":
                self._answer(401, _rpc_error(401, "UNAUTHENTICATED"))
            elif match is None:
                self._answer(404, _rpc_error(404, "NOT_FOUND"))
            elif len(asked) > 100:
                self._answer(400, _rpc_error(400, "INVALID_ARGUMENT"))
            elif match.group(1) not in api.granted:
                self._answer(403, _rpc_error(403, "PERMISSION_DENIED"))
            else:
                held = [p for p in asked if p in api.granted[match.group(1)]]
                self._answer(200, {"permissions": held} if held else {})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return api, server


def _rpc_error(code: int, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": "The caller does not have permission",
                      "status": status}}  # fmt: skip
