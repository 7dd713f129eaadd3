"""A local Scaleway IAM and Account API for permission checks, behind the Scaleway SDK
(reached through the operator's own ``scaleway_api_url`` setting).

It answers, for the one secret key it knows (``X-Auth-Token``): the API key (its
bearer), the project (its organization), and the organization's groups, policies and
rules, filtered and paginated the way the SDK's ``list_*_all`` asks for them (page by
page until an empty one).

``object_storage_answer`` is Object Storage's side of the proof that a secret key
belongs to its access key (``scaleway.prove_pair``): it checks a request's AWS
Signature V4 the way the service does, recomputing it with botocore's own signer from
the request received and the secret key it knows for the access key. Every fake of a
Scaleway API in the tests answers ``GET /`` signed that way with it.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<access_key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/s3/"
    r"aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<signature>[0-9a-f]{64})"
)


def is_object_storage(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """Whether a request is ListBuckets signed with Signature V4 (Object Storage's)."""
    authorization = headers.get("Authorization") or ""
    return method == "GET" and path == "/" and authorization.startswith("AWS4-HMAC-SHA256")


def object_storage_answer(
    method: str,
    path: str,
    headers: Mapping[str, str],
    secret_of: Callable[[str], str | None],
    *,
    may_list: Callable[[str], bool] = lambda access_key: False,
) -> tuple[int, bytes, str | None]:
    """Object Storage's answer to a signed ``GET /`` (ListBuckets): (status, XML body,
    the access key the signature proved, or None). ``secret_of`` gives an access key's
    secret key (None: no such key); ``may_list`` whether its bearer may list buckets
    (otherwise AccessDenied: authenticated, not authorised)."""
    found = SIGV4.fullmatch(headers.get("Authorization") or "")
    if found is None:
        return 403, _s3_error("AccessDenied"), None
    access_key = found["access_key"]
    secret_key = secret_of(access_key)
    if secret_key is None:
        return 403, _s3_error("InvalidAccessKeyId"), None
    signed = {name: headers.get(name) or "" for name in found["signed"].split(";")}
    request = AWSRequest(method=method, url=f"http://{signed.get('host', '')}{path}",
                         headers=signed)  # fmt: skip
    request.context["timestamp"] = headers.get("X-Amz-Date") or ""
    signer = S3SigV4Auth(Credentials(access_key, secret_key), "s3", found["region"])
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, found["signature"]):
        return 403, _s3_error("SignatureDoesNotMatch"), None
    if not may_list(access_key):
        return 403, _s3_error("AccessDenied"), access_key
    body = ("<?xml version='1.0' encoding='UTF-8'?><ListAllMyBucketsResult><Owner><ID>"
            f"{access_key}</ID></Owner><Buckets/></ListAllMyBucketsResult>")  # fmt: skip
    return 200, body.encode(), access_key


def _s3_error(code: str) -> bytes:
    return (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>"
            f"{code}</Message><RequestId>tx0</RequestId></Error>").encode()  # fmt: skip


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
            if is_object_storage("GET", path, self.headers):
                status, xml, _ = object_storage_answer(
                    "GET", path, self.headers, {ACCESS_KEY: SECRET_KEY}.get
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.end_headers()
                self.wfile.write(xml)
                return
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
