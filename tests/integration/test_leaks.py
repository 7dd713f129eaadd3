"""No secret reaches the operator's log, Events, the objects, /metrics or the CLI's output.

Every secret is a distinct sentinel (per provider and per path), and the operator, at
DEBUG with JSON logs, works on them against provider endpoints that echo back the whole
request they received (``tests/echo.py``) with statuses that drive the error paths:
400, 401, 403, 500, a 200 that is not JSON and a 400 HTML page. AWS reaches moto through
the same echo server (unmatched requests are forwarded), so one operator process serves
verification successes and failures, credential delivery (AWS static key and role, GCP,
Azure), renewal of delivered role sessions, a failing deploy check, and exception paths
(a Secret that is not UTF-8, a Scaleway key that is not a UUID, GCP keys nested, encoded
twice or naming a foreign token endpoint). The search covers each secret's raw, base64,
URL-encoded and JSON-escaped forms (``needles``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client

from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION
from tests.aws import Moto
from tests.conftest import Kube
from tests.echo import EchoServer, make_pki
from tests.integration.conftest import operator_env
from tests.kube import ROOT
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import condition, create_cluster, create_credential, get_credential

pytestmark = pytest.mark.integration

STATUSES = ("400", "401", "403", "500", "garbage", "html")  # the echo's error behaviours
EXPIRES = "cloudcred.io/expires-at"
DELIVERY_OPT_IN = {"enabled": True}  # spec.delivery of a credential that may be delivered
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # not the configured endpoint


# --- the search ---------------------------------------------------------------------------


def _percent_lower(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda match: match.group().lower(), text)


def needles(value: str) -> set[str]:
    """The forms in which ``value`` could show up in text.

    Base64 encodes 3 bytes as 4 characters, so a value inside a longer byte string is
    encoded differently depending on its offset modulo 3; and the encoding of its last
    1-2 bytes depends on what follows it. A value starting at offset ``k`` shows, inside
    the encoding of the whole, as the encoding of ``value[s:]`` cut to whole 3-byte
    groups, where ``s = (3 - k % 3) % 3``. So the three needles for s = 0, 1, 2 (standard
    and URL-safe alphabets, no padding) find the value at any offset, at the price of up
    to 2 bytes at each end, which sentinels of 30+ bytes can spare.
    """
    raw = value.encode()
    found = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    for encoded in (quote(value, safe=""), quote(value), quote_plus(value)):
        found |= {encoded, _percent_lower(encoded)}
    for shift in range(3):
        part = raw[shift:]
        part = part[: len(part) // 3 * 3]
        found |= {base64.b64encode(part).decode(), base64.urlsafe_b64encode(part).decode()}
    return {needle for needle in found if len(needle) >= 16}


def fragments(value: str) -> list[str]:
    """A long value (a PEM key, a session token) is also searched by pieces of it: a
    log line cut at some length would still show one."""
    if len(value) <= 64:
        return [value]
    lines = [line for line in value.splitlines() if len(line) >= 40 and "-----" not in line]
    middle = len(value) // 2
    return [value, value[:40], value[middle : middle + 40], value[-40:], *lines]


@dataclass
class Secrets:
    """Every secret value the test planted or the operator produced, by label."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str) -> str:
        self.values[label] = value
        return value

    def leaks(self, places: dict[str, str]) -> list[str]:
        hits = []
        for label, value in self.values.items():
            for piece in fragments(value):
                for needle in needles(piece):
                    hits += [f"{label} ({needle[:24]}...) in {place}"
                             for place, text in places.items() if needle in text]  # fmt: skip
        return sorted(set(hits))


def test_the_search_finds_every_form() -> None:
    """The search itself: a sentinel at every offset in base64 (both alphabets), URL- and
    JSON-encoded, inside a PEM line, is found; an unrelated text is not."""
    sentinel = 'Sent+inel/"quoted"=' + uuid.uuid4().hex
    book = Secrets({"s": sentinel})
    for prefix in (b"", b"x", b"xy", b"xyz"):
        blob = prefix + sentinel.encode() + b"tail"
        assert book.leaks({"std": base64.b64encode(blob).decode()})
        assert book.leaks({"url": base64.urlsafe_b64encode(blob).decode()})
    assert book.leaks({"form": "a=1&secret=" + quote_plus(sentinel)})
    assert book.leaks({"path": "/x/" + _percent_lower(quote(sentinel, safe=""))})
    assert book.leaks({"json": json.dumps({"m": f"got {sentinel}"})})
    pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert Secrets({"pem": pem}).leaks({"log": "key line " + pem.splitlines()[7]})
    assert not book.leaks({"other": base64.b64encode(uuid.uuid4().bytes * 4).decode()})


# --- the world the operator works in --------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()  # fmt: skip


def _route() -> str:
    return uuid.uuid4().hex[:12]


def _scw_key() -> str:
    return "SCW" + uuid.uuid4().hex[:17].upper()


def _key_id() -> str:
    return "AKIA" + uuid.uuid4().hex[:16].upper()


def _secret(kube: Kube, namespace: str, name: str, data: dict[str, bytes]) -> None:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    kube.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=encoded)
    )


@dataclass
class World:
    kube: Kube
    namespace: str
    operator: OperatorProcess
    plain: EchoServer  # GCP, Scaleway, AWS (forwarding to moto)
    tls: EchoServer  # Azure
    secrets: Secrets
    succeed: list[str]  # credentials that must verify
    fail: list[str]  # credentials that must not
    delivered: dict[str, str]  # cluster -> its delivered Secret
    role_cluster: str = "aws-role-eu"


@pytest.fixture(scope="module")
def world(
    kube: Kube, moto: Moto, tmp_path_factory: pytest.TempPathFactory, module_operators: Operators
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("leaks")
    namespace = f"leak-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    book = Secrets()
    plain = EchoServer(default="forward", upstream=moto.endpoint).start()
    tls = EchoServer(default="400", pki=make_pki(folder)).start()
    succeed: list[str] = []
    fail: list[str] = []
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = book.add("gcp private_key", _pem(key))
    token_uri = f"{plain.url}/token"

    def credential(name: str, ok: bool, **spec: Any) -> None:
        create_credential(kube, namespace, name, **spec)
        (succeed if ok else fail).append(name)

    # AWS static keys: a sentinel moto refuses, one per echo behaviour (routed by key id),
    # and a real moto key that verifies, is delivered, and fails the deploy check of a
    # region whose Auto Scaling calls the echo server refuses.
    def aws_static(name: str, key_id: str, value: bytes, ok: bool, **extra: Any) -> None:
        _secret(kube, namespace, name, {"secretAccessKey": value})
        credential(name, ok, provider="AWS", aws={
            "accessKeyId": key_id,
            "secretAccessKeyRef": {"name": name, "key": "secretAccessKey"}}, **extra)  # fmt: skip

    refused = book.add("aws static (moto refuses)", f"AwsSENTINEL/moto+{uuid.uuid4().hex}=")
    aws_static("aws-refused", _key_id(), refused.encode(), ok=False)
    for status in STATUSES:
        key_id = _key_id()
        plain.routes[key_id] = status
        value = book.add(f"aws static ({status})", f"AwsSENTINEL/{status}+{uuid.uuid4().hex}=")
        aws_static(f"aws-{status}", key_id, value.encode(), ok=False)
    not_utf8 = book.add("aws static (not UTF-8)", f"AwsSENTINEL/utf8+{uuid.uuid4().hex}")
    aws_static("aws-not-utf8", _key_id(), b"\xff\xfe" + not_utf8.encode(), ok=False)
    user = moto.create_user(f"leak-{uuid.uuid4().hex[:8]}")
    book.add("aws static (moto key)", user.secret_access_key)
    aws_static("aws-ok", user.access_key_id, user.secret_access_key.encode(), ok=True,
               delivery=DELIVERY_OPT_IN)  # fmt: skip
    plain.routes["/ap-southeast-2/autoscaling/"] = "403"

    # AWS roles: one moto assumes (verified, delivered, renewed), one the echo refuses.
    credential("aws-role", ok=True, provider="AWS", delivery=DELIVERY_OPT_IN,
               aws={"roleArn": moto.create_role(f"leak-{_route()}")})  # fmt: skip
    refused_role = f"leak-echo-{_route()}"
    plain.routes[refused_role] = "403"
    credential("aws-role-refused", ok=False, provider="AWS",
               aws={"roleArn": f"arn:aws:iam::123456789012:role/{refused_role}"})  # fmt: skip

    # GCP keys: a real RSA key; private_key_id (sent as the JWT's kid) is a sentinel.
    def gcp(name: str, ok: bool, text: str, **extra: Any) -> None:
        _secret(kube, namespace, name, {"key.json": text.encode()})
        ref = {"name": name, "key": "key.json"}
        credential(name, ok, provider="GCP", gcp={"serviceAccountKeyRef": ref}, **extra)

    def gcp_key(behaviour: str, name: str, **changes: Any) -> str:
        route = _route()
        plain.routes[route] = behaviour
        kid = book.add(f"gcp private_key_id ({name})", uuid.uuid4().hex + _route()[:8])
        info = {"type": "service_account", "project_id": "leak", "private_key_id": kid,
                "private_key": pem, "client_email": f"sa-{route}@leak.iam.gserviceaccount.com",
                "client_id": "1234567890", "token_uri": token_uri, **changes}  # fmt: skip
        return json.dumps(info)

    for status in STATUSES:
        gcp(f"gcp-{status}", False, gcp_key(status, f"gcp-{status}"))
    gcp("gcp-ok", True, gcp_key("gcp-token", "gcp-ok"), delivery=DELIVERY_OPT_IN)
    nested = book.add("gcp nested private_key", f"GcpSENTINEL-nested-{uuid.uuid4().hex}")
    nested_key = gcp_key("400", "unsent nested", private_key={"pem": nested, "in": [nested]})
    gcp("gcp-nested", False, nested_key)
    gcp("gcp-twice", False, json.dumps(gcp_key("400", "unsent twice")))  # a JSON string
    gcp("gcp-foreign", False, gcp_key("400", "unsent foreign", token_uri=GOOGLE_TOKEN_URI))

    # Azure: the client secret is POSTed (form-encoded: "+/=" change when encoded).
    def azure(name: str, behaviour: str, ok: bool, **extra: Any) -> None:
        tenant = str(uuid.uuid4())
        tls.routes[tenant] = behaviour
        value = book.add(f"azure client secret ({behaviour})",
                         f"AzSENTINEL~{behaviour}+/={uuid.uuid4().hex}")  # fmt: skip
        _secret(kube, namespace, name, {"clientSecret": value.encode()})
        credential(name, ok, provider="AZURE", azure={
            "tenantId": tenant, "subscriptionId": str(uuid.uuid4()), "clientId": str(uuid.uuid4()),
            "clientSecretRef": {"name": name, "key": "clientSecret"}}, **extra)  # fmt: skip

    for status in STATUSES:
        azure(f"azure-{status}", status, ok=False)
    azure("azure-ok", "azure-token", ok=True, delivery=DELIVERY_OPT_IN)

    # Scaleway: the secret key (a UUID) is the X-Auth-Token header of every request.
    for status in STATUSES:
        access_key = _scw_key()
        plain.routes[access_key] = status
        value = book.add(f"scaleway secret key ({status})", str(uuid.uuid4()))
        _secret(kube, namespace, f"scw-{status}", {"secretKey": value.encode()})
        credential(f"scw-{status}", False, provider="SCALEWAY", scaleway={
            "accessKey": access_key, "projectId": str(uuid.uuid4()),
            "secretKeyRef": {"name": f"scw-{status}", "key": "secretKey"}})  # fmt: skip

    not_uuid = book.add("scaleway secret key (not a UUID)", f"ScwSENTINEL-{uuid.uuid4().hex}")
    _secret(kube, namespace, "scw-not-uuid", {"secretKey": not_uuid.encode() + b"\n"})
    credential("scw-not-uuid", False, provider="SCALEWAY", scaleway={
        "accessKey": _scw_key(), "projectId": str(uuid.uuid4()),
        "secretKeyRef": {"name": "scw-not-uuid", "key": "secretKey"}})  # fmt: skip

    # Clusters: deliveries, a deploy check the echo refuses, one on a failing credential.
    delivered = {"aws-role-eu": "aws-role-creds", "aws-ok-eu": "aws-ok-creds",
                 "gcp-eu": "gcp-creds", "azure-eu": "azure-creds"}  # fmt: skip
    clusters = [
        ("aws-role-eu", "AWS", "eu-west-3", "aws-role"),
        ("aws-ok-eu", "AWS", "eu-west-3", "aws-ok"),
        ("gcp-eu", "GCP", "europe-west1", "gcp-ok"),
        ("azure-eu", "AZURE", "westeurope", "azure-ok"),
        ("aws-ok-sydney", "AWS", "ap-southeast-2", "aws-ok"),
        ("aws-403-eu", "AWS", "eu-west-3", "aws-403"),
    ]
    for name, provider, region, credential_name in clusters:
        extra = {"credentialsSecret": {"name": delivered[name]}} if name in delivered else {}
        create_cluster(kube, namespace, name, provider=provider, region=region,
                       credentialRef={"name": credential_name}, **extra)  # fmt: skip

    env = {
        **operator_env(moto),
        "AWS_ENDPOINT_URL": plain.url,
        "CLOUDCRED_LOG_FORMAT": "json",
        "CLOUDCRED_LOG_LEVEL": "DEBUG",
        "CLOUDCRED_GCP_TOKEN_URI": token_uri,
        "CLOUDCRED_AZURE_AUTHORITY_HOST": tls.url,
        "CLOUDCRED_SCALEWAY_API_URL": plain.url,
        "CLOUDCRED_SCALEWAY_S3_URL": plain.url,
        "REQUESTS_CA_BUNDLE": str(tls.pki.ca) if tls.pki else "",
        "CLOUDCRED_OPERATOR_NAMESPACE": namespace,
        "CLOUDCRED_DELIVERY_ENABLED": "true",
        # The shortest session; renewed 10 s after each delivery (config.refresh_before).
        "CLOUDCRED_DELIVERY_SESSION_SECONDS": "900",
        "CLOUDCRED_DELIVERY_REFRESH_BEFORE": "890",
    }
    book.add("the operator's own AWS secret key", env["AWS_SECRET_ACCESS_KEY"])
    # The environment in full (base_env=False): the book must know the operator's own key.
    operator = module_operators.start(namespace, env=env, base_env=False)
    try:
        yield World(kube, namespace, operator, plain, tls, book, succeed, fail, delivered)
    finally:
        operator.stop()
        plain.stop()
        tls.stop()


# --- what the operator did ------------------------------------------------------------------


def _verified(world: World, name: str) -> dict[str, Any] | None:
    return condition(get_credential(world.kube, world.namespace, name), "Verified")


def _delivered(world: World, secret: str) -> client.V1Secret | None:
    try:
        found: client.V1Secret = world.kube.core.read_namespaced_secret(secret, world.namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def _values(found: client.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}


def test_the_operator_ran_every_path(world: World) -> None:
    """Verification successes and echoed failures, deliveries, a renewal and a failed
    deploy check all happened: the search below is over real work."""
    kube, namespace = world.kube, world.namespace
    for name in world.succeed:
        found = wait_for(lambda name=name: _verified(world, name), timeout=60,
                         what=f"{name} checked")  # fmt: skip
        assert found["status"] == "True", (name, found)
    for name in world.fail:
        found = wait_for(lambda name=name: _verified(world, name), timeout=60,
                         what=f"{name} checked")  # fmt: skip
        assert found["status"] != "True", (name, found)
    for name in ("aws-not-utf8", "gcp-nested", "gcp-twice", "gcp-foreign", "scw-not-uuid"):
        assert _verified(world, name)["reason"] == "InvalidSecretData", name  # type: ignore[index]

    # The echo server really received the secrets it echoed back, and the search finds
    # them in the forms they had on the wire (the request as sent, before any decoding:
    # the client secret form-encoded, the private_key_id inside the JWT's base64url).
    echoes = "\n".join(echo for echo, _ in world.plain.seen + world.tls.seen)
    as_sent = "\n".join(echo.split("\nform-decoded:")[0] for echo, _ in world.plain.seen
                        + world.tls.seen)  # fmt: skip
    found_as_sent = " ".join(world.secrets.leaks({"echo": as_sent}))
    for label, value in world.secrets.values.items():
        sent = ("azure client secret", "scaleway secret key (", "gcp private_key_id (gcp-")
        if label.startswith(sent) and "not a UUID" not in label:
            assert value in echoes, f"{label} never reached the echo server"
            assert f"{label} (" in found_as_sent, f"{label} not found as sent"
    assert "%2B%2F%3D" in as_sent  # the Azure secrets' "+/=" as form-encoded
    behaviours = {behaviour for _, behaviour in world.plain.seen + world.tls.seen}
    assert {*STATUSES, "forward", "openid", "gcp-token", "azure-token"} <= behaviours

    for cluster, secret in world.delivered.items():
        wait_for(lambda secret=secret: _delivered(world, secret), timeout=60,
                 what=f"{cluster}'s credentials delivered")  # fmt: skip
    wait_for(lambda: any(e.reason == "DeployFailed" for e in _events(world, "aws-ok-sydney")),
             timeout=30, what="the refused deploy check")  # fmt: skip

    # Delivered role sessions are secrets too; wait for one renewal and take both.
    first = _delivered(world, "aws-role-creds")
    assert first is not None
    for round_, found in enumerate([first, _renewed(world, first)]):
        data = _values(found)
        world.secrets.add(f"delivered session secret {round_}", data["AWS_SECRET_ACCESS_KEY"])
        world.secrets.add(f"delivered session token {round_}", data["AWS_SESSION_TOKEN"])
    installation = _delivered(world, "cloudcred-installation")
    if installation is not None:  # the installation's HMAC key
        world.secrets.add("installation key", _values(installation)["key"])
    assert _values(_delivered(world, "gcp-creds"))["credentials.json"]
    kinds = {e.involved_object.kind for e in kube.core.list_namespaced_event(namespace).items}
    assert {"CloudCredential", "Cluster"} <= kinds


def _renewed(world: World, first: client.V1Secret) -> client.V1Secret:
    def renewed() -> client.V1Secret | None:
        now = _delivered(world, first.metadata.name)
        expires = (now.metadata.annotations or {}).get(EXPIRES) if now else None
        return now if expires and expires != first.metadata.annotations[EXPIRES] else None

    found: client.V1Secret = wait_for(renewed, timeout=40, what="a session renewal")
    assert _values(found)["AWS_SESSION_TOKEN"] != _values(first)["AWS_SESSION_TOKEN"]
    return found


def _events(world: World, name: str) -> list[client.CoreV1Event]:
    events = world.kube.core.list_namespaced_event(world.namespace).items
    return [e for e in events if e.involved_object.name == name]


def _cli(world: World, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(world.kube.kubeconfig)}
    done = subprocess.run([sys.executable, "-m", "cloudcred", *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    return f"$ cloudcred {' '.join(args)} (exit {done.returncode})\n{done.stdout}{done.stderr}"


def _metrics(world: World) -> str:
    url = f"http://127.0.0.1:{world.operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_no_secret_leaks_anywhere(world: World) -> None:
    """Runs after ``test_the_operator_ran_every_path`` (file order), which waits for the
    work and adds the session credentials the operator obtained."""
    kube, namespace = world.kube, world.namespace
    time.sleep(2)  # the last events and log lines land
    custom = kube.custom
    objects = {plural: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
               for plural in (CREDENTIAL_PLURAL, CLUSTER_PLURAL)}  # fmt: skip
    events = kube.core.list_namespaced_event(namespace).items
    ns = ["-n", namespace]
    commands = [["list", "-A"]]
    commands += [["usage", name, *ns] for name in ("aws-ok", "aws-role", "gcp-ok", "azure-ok",
                                                   "aws-403")]  # fmt: skip
    commands += [
        ["trust-policy", name, *ns, "--operator-namespace", namespace]
        for name in ("aws-role", "aws-role-refused")
    ]
    with ThreadPoolExecutor(4) as pool:  # separate processes that only read
        cli = list(pool.map(lambda args: _cli(world, *args), commands))
    log = world.operator.log()
    places = {
        "operator log": log,
        "CloudCredentials (spec, status, metadata, managedFields)":
            json.dumps(objects[CREDENTIAL_PLURAL]),
        "Clusters (spec, status, metadata, managedFields)": json.dumps(objects[CLUSTER_PLURAL]),
        "Events": json.dumps(kube.api.sanitize_for_serialization(events)),
        "Event messages": "\n".join(e.message or "" for e in events),
        "condition messages": "\n".join(
            c.get("message", "") for kind in objects.values() for item in kind["items"]
            for c in (item.get("status") or {}).get("conditions") or []),
        "/metrics": _metrics(world),
        "CLI output": "\n".join(cli),
    }  # fmt: skip
    # The operator really logged at DEBUG, in JSON, and the echoes reached its error paths.
    assert re.search(r'"severity":\s*"debug"', log, re.IGNORECASE), log[:2000]
    assert "aws-ok" in places["CLI output"]
    assert len(world.secrets.values) >= 30
    leaks = world.secrets.leaks(places)
    assert not leaks, "secret values found:\n" + "\n".join(leaks)
