"""A local Scaleway IAM and Account API for permission checks, behind the Scaleway SDK
(reached through the operator's own ``scaleway_api_url`` setting).

It answers, for the one secret key it knows (``X-Auth-Token``): the API key (its
bearer), the project (its organization), and the organization's groups, policies and
rules, filtered and paginated the way the SDK's ``list_*_all`` asks for them (page by
page until an empty one).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ACCESS_KEY = "SCWPERMS0123456789AB"
SECRET_KEY = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
ORGANIZATION_ID = "6a0f2c2e-1a7b-4c11-9f0e-8d4a3b2c1d0e"
PROJECT_ID = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
OTHER_PROJECT_ID = "7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"
APPLICATION_ID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
WHEN = "2024-03-01T10:20:30Z"


@dataclass
class ScalewayIam:
    url: str = ""
    groups: list[dict[str, Any]] = field(default_factory=list)  # {"id", "application_ids"}
    # Policies: {"id", "application_id" | "group_id", "rules": [{"permission_set_names",
    # "project_ids" | "organization_id"}]}
    policies: list[dict[str, Any]] = field(default_factory=list)
    forbidden: set[str] = field(default_factory=set)  # paths that answer 403
    requests: list[str] = field(default_factory=list)


def _group(group: dict[str, Any]) -> dict[str, Any]:
    return {"id": group["id"], "organization_id": ORGANIZATION_ID, "name": group["id"],
            "description": "", "user_ids": [], "application_ids": group["application_ids"],
            "tags": [], "editable": True, "deletable": True, "managed": False,
            "created_at": WHEN, "updated_at": WHEN}  # fmt: skip


def _policy(policy: dict[str, Any]) -> dict[str, Any]:
    return {"id": policy["id"], "name": policy["id"], "description": "",
            "organization_id": ORGANIZATION_ID, "editable": True, "deletable": True,
            "managed": False, "nb_rules": len(policy["rules"]), "nb_scopes": 1,
            "nb_permission_sets": 1, "tags": [], "created_at": WHEN, "updated_at": WHEN,
            "application_id": policy.get("application_id"),
            "group_id": policy.get("group_id")}  # fmt: skip


def _rule(index: int, rule: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"rule-{index}", "permission_sets_scope_type": "projects",
            "condition": "", **rule}  # fmt: skip


def start_scaleway_iam(state: ScalewayIam) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _page(self, key: str, items: list[dict[str, Any]], query: dict[str, Any]) -> None:
            size = int(query.get("page_size", ["20"])[0])
            page = int(query.get("page", ["1"])[0])
            chosen = items[(page - 1) * size : page * size]
            self._send(200, {key: chosen, "total_count": len(items)})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            state.requests.append(path)
            organization = query.get("organization_id", [ORGANIZATION_ID])
            if self.headers.get("X-Auth-Token") != SECRET_KEY:
                self._send(401, {"message": "authentication is denied",
                                 "type": "denied_authentication"})  # fmt: skip
            elif path in state.forbidden:
                self._send(403, {"message": "insufficient permissions",
                                 "type": "permissions_denied"})  # fmt: skip
            elif organization != [ORGANIZATION_ID]:
                self._send(403, {"message": "other organization", "type": "permissions_denied"})
            elif path == f"/iam/v1alpha1/api-keys/{ACCESS_KEY}":
                self._send(200, {"access_key": ACCESS_KEY, "application_id": APPLICATION_ID,
                                 "description": "", "created_at": WHEN, "updated_at": WHEN,
                                 "default_project_id": PROJECT_ID, "editable": True,
                                 "deletable": True, "managed": False})  # fmt: skip
            elif path == f"/account/v3/projects/{PROJECT_ID}":
                self._send(200, {"id": PROJECT_ID, "name": "prod", "description": "",
                                 "organization_id": ORGANIZATION_ID, "created_at": WHEN,
                                 "updated_at": WHEN})  # fmt: skip
            elif path == "/iam/v1alpha1/groups":
                apps = set(query.get("application_ids", []))
                found = [_group(g) for g in state.groups if apps & set(g["application_ids"])]
                self._page("groups", found, query)
            elif path == "/iam/v1alpha1/policies":
                apps = set(query.get("application_ids", []))
                groups = set(query.get("group_ids", []))
                found = [_policy(p) for p in state.policies
                         if p.get("application_id") in apps
                         or p.get("group_id") in groups]  # fmt: skip
                self._page("policies", found, query)
            elif path == "/iam/v1alpha1/rules":
                policy = next((p for p in state.policies
                               if p["id"] == query.get("policy_id", [""])[0]), None)  # fmt: skip
                rules = [_rule(i, r) for i, r in enumerate(policy["rules"])] if policy else []
                self._page("rules", rules, query)
            else:
                self._send(404, {"message": "resource is not found", "type": "not_found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server
