"""A local Microsoft Entra ID and Azure Resource Manager for permission checks.

One HTTPS server on loopback (its CA trusted through ``REQUESTS_CA_BUNDLE``, the
standard setting of azure-core's transport) plays both, reached through the operator's
own settings (``azure_authority_host`` and ``azure_management_url``), so azure-identity,
MSAL and azure-core run unmodified:

- Entra ID: the tenant's OpenID configuration and a token endpoint that issues a token
  for the one client secret of the one application, for the scope ``<base>/.default``;
- Resource Manager: ``Microsoft.Authorization/permissions`` of the subscription or of a
  resource group (which inherits the subscription's roles), one role's
  ``actions``/``notActions`` a page (``nextLink``), for a token it issued only.
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.echo import Pki

TENANT = str(uuid.uuid4())
SUBSCRIPTION = str(uuid.uuid4())
CLIENT = str(uuid.uuid4())
SECRET = "abc8Q~" + "x" * 34
API_VERSION = "2022-04-01"


@dataclass
class Arm:
    """The tenant's one application and its roles; what the server saw."""

    base: str = ""
    # Roles by scope: "" for the subscription, a resource group's name for it.
    roles: dict[str, list[dict[str, list[str]]]] = field(default_factory=dict)
    forced: tuple[int, str] | None = None  # (status, error code) for every permissions call
    tokens: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)  # permissions paths asked


class _Handler(BaseHTTPRequestHandler):
    server: ArmServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        arm = self.server.arm
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            self._send(200, {
                "issuer": f"{arm.base}/{TENANT}/v2.0",
                "authorization_endpoint": f"{arm.base}/{TENANT}/oauth2/v2.0/authorize",
                "token_endpoint": f"{arm.base}/{TENANT}/oauth2/v2.0/token",
                "jwks_uri": f"{arm.base}/{TENANT}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })  # fmt: skip
        elif path.endswith("/providers/Microsoft.Authorization/permissions"):
            self._permissions(path, parse_qs(url.query))
        else:
            self._send(404, {"error": {"code": "NotFound"}})

    def do_POST(self) -> None:
        arm = self.server.arm
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
        if urlsplit(self.path).path != f"/{TENANT}/oauth2/v2.0/token":
            self._send(404, {"error": "not_found"})
        elif form.get("client_id") != [CLIENT] or form.get("client_secret") != [SECRET]:
            refused = {"error": "invalid_client", "error_description": "AADSTS7000215: no."}
            self._send(401, refused)
        elif form.get("scope") != [f"{arm.base}/.default"]:
            self._send(400, {"error": "invalid_scope"})
        else:
            token = f"arm-token-{uuid.uuid4().hex}"
            arm.tokens.add(token)
            self._send(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})

    def _permissions(self, path: str, query: dict[str, list[str]]) -> None:
        arm = self.server.arm
        arm.calls.append(path)
        prefix = f"/subscriptions/{SUBSCRIPTION}"
        scope = path.removeprefix(prefix).removesuffix(
            "/providers/Microsoft.Authorization/permissions"
        )
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in arm.tokens:
            self._send(401, {"error": {"code": "InvalidAuthenticationToken"}})
        elif arm.forced is not None:
            self._send(arm.forced[0], {"error": {"code": arm.forced[1],
                                                 "message": f"echo {SECRET}"}})  # fmt: skip
        elif query.get("api-version") != [API_VERSION] or not path.startswith(prefix + "/"):
            self._send(400, {"error": {"code": "InvalidApiVersionParameter"}})
        elif scope and not scope.startswith("/resourceGroups/"):
            self._send(400, {"error": {"code": "InvalidResourceType"}})
        elif scope and scope.removeprefix("/resourceGroups/") not in arm.roles:
            self._send(404, {"error": {"code": "ResourceGroupNotFound"}})
        else:
            roles = arm.roles.get("", []) + (
                arm.roles[scope.removeprefix("/resourceGroups/")] if scope else [])  # fmt: skip
            page = int(query.get("page", ["0"])[0])
            body: dict[str, Any] = {"value": roles[page : page + 1]}
            if page + 1 < len(roles):
                body["nextLink"] = f"{arm.base}{path}?api-version={API_VERSION}&page={page + 1}"
            self._send(200, body)


class ArmServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, arm: Arm) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.arm = arm


def start_arm(pki: Pki, roles: dict[str, list[dict[str, list[str]]]]) -> tuple[Arm, ArmServer]:
    arm = Arm(roles=roles)
    server = ArmServer(arm)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.cert, pki.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    arm.base = f"https://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return arm, server
