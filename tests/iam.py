"""A local IAM endpoint that answers ``iam:SimulatePrincipalPolicy``, which moto does
not implement, by evaluating the policies stored in moto; every other IAM call goes to
moto unchanged. boto3 reaches it through its own endpoint setting
(``AWS_ENDPOINT_URL_IAM``), so the operator runs unmodified against it.

Who may ask is moto's to say: each request is first passed to moto as received
(signature and all). moto checks the signature and the caller's right to
``iam:SimulatePrincipalPolicy`` before it finds that it has no such action; a refusal
(403 AccessDenied, a bad signature) goes back to the caller as moto gave it, and only a
request moto let through is simulated here.

The simulation reads, with moto's admin key, the principal's inline and attached
policies (for a user, its groups' too) and its permissions boundary, and evaluates them
as IAM documents it: an explicit Deny wins; else an Allow is needed, and within the
boundary if there is one; actions match case-insensitively with ``*`` and ``?``,
``NotAction``, resources with ``*`` and ``?``, ``NotResource``, and the ``String*``
condition operators on the context keys the request supplies (a condition on a key it
does not supply is not met). The answer has the API's XML shape, one result per action
and resource, in pages of ``page_size`` (fewer than ``MaxItems``, as IAM may send), so
the caller must paginate.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from botocore.exceptions import ClientError

from tests.aws import Moto

NS = "https://iam.amazonaws.com/doc/2010-05-08/"
ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY = "allowed", "explicitDeny", "implicitDeny"


def _glob(pattern: str, text: str, case: bool = True) -> bool:
    regex = "^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$"
    return re.match(regex, text, 0 if case else re.IGNORECASE) is not None


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _condition_met(condition: dict[str, Any], context: dict[str, list[str]]) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            actual = context.get(key.lower())
            if actual is None:
                return False
            wanted = _listed(expected)
            if operator == "StringEquals":
                ok = any(a in wanted for a in actual)
            elif operator == "StringNotEquals":
                ok = all(a not in wanted for a in actual)
            elif operator == "StringLike":
                ok = any(_glob(w, a) for a in actual for w in wanted)
            elif operator == "StringNotLike":
                ok = not any(_glob(w, a) for a in actual for w in wanted)
            else:
                return False  # an operator this endpoint does not know: not met
            if not ok:
                return False
    return True


def _applies(statement: dict[str, Any], action: str, resource: str,
             context: dict[str, list[str]]) -> bool:  # fmt: skip
    if "NotAction" in statement:
        if any(_glob(p, action, case=False) for p in _listed(statement["NotAction"])):
            return False
    elif not any(_glob(p, action, case=False) for p in _listed(statement.get("Action"))):
        return False
    if "NotResource" in statement:
        if any(_glob(p, resource) for p in _listed(statement["NotResource"])):
            return False
    elif not any(_glob(p, resource) for p in _listed(statement.get("Resource"))):
        return False
    return _condition_met(statement.get("Condition") or {}, context)


def evaluate(policies: list[dict[str, Any]], boundary: dict[str, Any] | None, action: str,
             resource: str, context: dict[str, list[str]]) -> str:  # fmt: skip
    """IAM's decision for one request within one account."""
    statements = [s for p in policies for s in _listed_statements(p)]
    limits = _listed_statements(boundary) if boundary else []
    if any(s.get("Effect") == "Deny" and _applies(s, action, resource, context)
           for s in statements + limits):  # fmt: skip
        return EXPLICIT_DENY
    allowed = any(s.get("Effect") == "Allow" and _applies(s, action, resource, context)
                  for s in statements)  # fmt: skip
    if allowed and boundary is not None:
        allowed = any(s.get("Effect") == "Allow" and _applies(s, action, resource, context)
                      for s in limits)  # fmt: skip
    return ALLOWED if allowed else IMPLICIT_DENY


def _listed_statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy.get("Statement") or []
    return [statements] if isinstance(statements, dict) else list(statements)


@dataclass
class SimulatingIam:
    url: str = ""
    page_size: int = 4
    simulations: list[dict[str, Any]] = field(default_factory=list)  # each request's form


def _document(value: Any) -> dict[str, Any]:
    """boto3 decodes policy documents to dicts; moto may leave them URL-encoded text."""
    if isinstance(value, dict):
        return value
    return dict(json.loads(unquote(value)))


class _Policies:
    """The policies of a principal, read from moto with its admin key."""

    def __init__(self, moto: Moto) -> None:
        self.iam = moto.client("iam")

    def _managed(self, arn: str) -> dict[str, Any]:
        version = self.iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        found = self.iam.get_policy_version(PolicyArn=arn, VersionId=version)
        return _document(found["PolicyVersion"]["Document"])

    def of(self, arn: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        kind, name = arn.split(":", 5)[5].split("/", 1)[0], arn.rsplit("/", 1)[-1]
        iam, policies = self.iam, []
        if kind == "user":
            entity = iam.get_user(UserName=name)["User"]
            for policy in iam.list_user_policies(UserName=name)["PolicyNames"]:
                got = iam.get_user_policy(UserName=name, PolicyName=policy)
                policies.append(_document(got["PolicyDocument"]))
            for attached in iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]:
                policies.append(self._managed(attached["PolicyArn"]))
            for group in iam.list_groups_for_user(UserName=name)["Groups"]:
                group_name = group["GroupName"]
                for policy in iam.list_group_policies(GroupName=group_name)["PolicyNames"]:
                    got = iam.get_group_policy(GroupName=group_name, PolicyName=policy)
                    policies.append(_document(got["PolicyDocument"]))
                attached_policies = iam.list_attached_group_policies(GroupName=group_name)
                for attached in attached_policies["AttachedPolicies"]:
                    policies.append(self._managed(attached["PolicyArn"]))
        elif kind == "role":
            entity = iam.get_role(RoleName=name)["Role"]
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                got = iam.get_role_policy(RoleName=name, PolicyName=policy)
                policies.append(_document(got["PolicyDocument"]))
            for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                policies.append(self._managed(attached["PolicyArn"]))
        else:
            raise ValueError(kind)
        boundary_arn = (entity.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
        return policies, self._managed(boundary_arn) if boundary_arn else None


def _members(form: dict[str, list[str]], name: str) -> list[str]:
    found = []
    for index in range(1, 1000):
        value = form.get(f"{name}.member.{index}")
        if value is None:
            return found
        found.append(value[0])
    return found


def _context(form: dict[str, list[str]]) -> dict[str, list[str]]:
    context = {}
    for index in range(1, 100):
        prefix = f"ContextEntries.member.{index}"
        key = form.get(f"{prefix}.ContextKeyName")
        if key is None:
            break
        context[key[0].lower()] = _members(form, f"{prefix}.ContextKeyValues")
    return context


def _error(status: int, code: str, message: str) -> tuple[int, str]:
    return status, (
        f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{escape(message)}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    )


def simulate(form: dict[str, list[str]], policies: _Policies, page_size: int) -> tuple[int, str]:
    """SimulatePrincipalPolicy's answer, as IAM's query API writes it."""
    source = form.get("PolicySourceArn", [""])[0]
    try:
        documents, boundary = policies.of(source)
    except ClientError:
        return _error(404, "NoSuchEntity", f"{source} does not exist")
    except ValueError:
        return _error(400, "InvalidInput", f"{source} is not a user or a role")
    actions = _members(form, "ActionNames")
    resources = _members(form, "ResourceArns") or ["*"]
    context = _context(form)
    results = [(a, r, evaluate(documents, boundary, a, r, context))
               for a in actions for r in resources]  # fmt: skip
    start = int(form.get("Marker", ["0"])[0])
    size = min(int(form.get("MaxItems", ["100"])[0]), page_size)
    page, end = results[start : start + size], start + size
    members = "".join(
        f"<member><EvalActionName>{escape(a)}</EvalActionName><EvalResourceName>{escape(r)}"
        f"</EvalResourceName><EvalDecision>{d}</EvalDecision><MatchedStatements/>"
        "<MissingContextValues/></member>"
        for a, r, d in page
    )
    more = end < len(results)
    marker = f"<Marker>{end}</Marker>" if more else ""
    return 200, (
        f'<SimulatePrincipalPolicyResponse xmlns="{NS}"><SimulatePrincipalPolicyResult>'
        f"<EvaluationResults>{members}</EvaluationResults>"
        f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{marker}"
        "</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>r</RequestId>"
        "</ResponseMetadata></SimulatePrincipalPolicyResponse>"
    )


def start_iam(moto: Moto, page_size: int = 4) -> tuple[SimulatingIam, ThreadingHTTPServer]:
    iam = SimulatingIam(page_size=page_size)
    policies = _Policies(moto)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, answer = self._to_moto(body)
            form = parse_qs(body.decode())
            if form.get("Action") == ["SimulatePrincipalPolicy"] and status >= 500:
                # moto let the caller through and found no such action: simulate here.
                with lock:
                    iam.simulations.append(form)
                    code, text = simulate(form, policies, iam.page_size)
                status, headers, answer = code, {"Content-Type": "text/xml"}, text.encode()
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                        "server", "date"):  # fmt: skip
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def _to_moto(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
            """The request as received (its Host header too: the signature covers it)."""
            request = urllib.request.Request(  # noqa: S310 - moto's own loopback address
                moto.endpoint + self.path, data=body, method="POST", headers=dict(self.headers)
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as error:
                return error.code, dict(error.headers), error.read()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    iam.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return iam, server
