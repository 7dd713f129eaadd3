"""The console without a cluster: its pages rendered from a filled cache, its rows,
filters and sorting, and its guard (login token, cookie, CSRF, Host, headers).

The application runs in-process on a real loopback socket (aiohttp's test server); the
Kubernetes client it holds points at a closed port, so the detail page's Events read
fails as it would with the API server away.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client

from cloudcred.cli import api
from cloudcred.cli.errors import ApiError
from cloudcred.console import actions, security, views
from cloudcred.console.cache import ConsoleCache, slim
from cloudcred.console.server import AccessLogger, Console, logger, refusal
from tests.envtest.controlplane import free_port
from tests.kube import ROOT

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
CONSOLE = ROOT / "operator" / "cloudcred" / "console"


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-01T00:00:00Z"}  # fmt: skip


def credential(
    namespace: str, name: str, provider: str = "AWS", clusters: int = 0, state: str = "Ready",
    reason: str = "Ready", **status: Any,
) -> dict[str, Any]:  # fmt: skip
    listed = [{"namespace": namespace, "name": f"{name}-c{i}"} for i in range(clusters)]
    block = {"AWS": "aws", "GCP": "gcp", "AZURE": "azure", "SCALEWAY": "scaleway"}[provider]
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}",
                     "managedFields": [{"manager": "kubectl"}],
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"provider": provider, block: {"secretKeyRef": {"name": f"{name}-keys",
                                                              "key": "k"}}},
        "status": {
            "publicId": f"PUB-{name}", "clusterCount": clusters, "clusters": listed,
            "revision": "v2-abc", "rollout": {"revision": "v2-abc", "updated": clusters,
                                             "total": clusters},
            "conditions": [cond(state, "True", reason)], **status,
        },
    }  # fmt: skip


def cluster(namespace: str, name: str, deployed: str = "v2-abc") -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"provider": "AWS", "region": "eu-west-3", "credentialRef": {"name": "x"}},
        "status": {"deployedRevision": deployed, "conditions": [cond("Ready", "True", "Ready")]},
    }


def make_console(
    credentials: list[dict[str, Any]],
    clusters: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> Console:
    closed = client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    kube = api.Kube(api=client.ApiClient(configuration=closed), namespace="default")
    cache = ConsoleCache(kube, None)
    for store, objects in ((cache.credentials, credentials), (cache.clusters, clusters)):
        keyed = {(o["metadata"]["namespace"], o["metadata"]["name"]): slim(o) for o in objects}
        store.replace(keyed, time.monotonic())
    return Console(kube, cache, clock=lambda: NOW)


Scenario = Callable[[TestClient, Console], Awaitable[None]]


def run(console: Console, scenario: Scenario, log_in: bool = True) -> None:
    """``scenario`` with a client of a running console (signed in when ``log_in``)."""

    async def main() -> None:
        server = TestServer(console.app(), host="127.0.0.1")
        await server.start_server(access_log_class=AccessLogger, access_log=logger)
        console.port = server.port or 0
        async with TestClient(server) as session:
            if log_in:
                answer = await session.get(
                    f"/?token={console.sessions.new_login()}", allow_redirects=False
                )
                assert answer.status == 303, await answer.text()
            await scenario(session, console)

    asyncio.run(main())


def names(html: str, table: str = "credentials") -> list[str]:
    body = html.split(f'id="{table}"', 1)[1]
    return re.findall(r'<tr data-namespace="[^"]*" data-name="([^"]*)"', body)


def cells(html: str, column: str) -> list[str]:
    return re.findall(rf'<td data-column="{column}"[^>]*>(.*?)</td>', html, re.S)


# --- rows, filters, sorting ------------------------------------------------------------


def test_the_list_shows_each_credentials_columns() -> None:
    aged = credential("acme", "aws-prod", clusters=2, keyCreatedTime="2026-11-05T12:00:00Z",
                      unusedSince=None)  # fmt: skip
    failing = credential("beta", "gcp-dev", "GCP", state="Stalled", reason="InvalidCredentials")

    async def scenario(session: TestClient, _: Console) -> None:
        answer = await session.get("/")
        html = await answer.text()
        assert answer.status == 200
        assert names(html) == ["aws-prod", "gcp-dev"]
        assert cells(html, "provider") == ["AWS", "GCP"]
        assert cells(html, "public_id") == ["PUB-aws-prod", "PUB-gcp-dev"]
        assert cells(html, "clusters") == ["2", "0"]
        assert cells(html, "key_age") == ["30d", "-"]
        assert "InvalidCredentials" in cells(html, "state")[1]
        assert "Stalled" in cells(html, "state")[1]
        assert "/credentials/acme/aws-prod/clusters" in html
        assert "View Associated Clusters" in html

    run(make_console([aged, failing]), scenario)


def test_the_list_filters_by_namespace_provider_and_state() -> None:
    items = [
        credential("acme", "a1"),
        credential("acme", "g1", "GCP"),
        credential("beta", "a2", state="Reconciling", reason="RolloutInProgress"),
    ]

    async def scenario(session: TestClient, _: Console) -> None:
        assert names(await (await session.get("/?namespace=acme")).text()) == ["a1", "g1"]
        assert names(await (await session.get("/?provider=GCP")).text()) == ["g1"]
        html = await (await session.get("/?state=Reconciling")).text()
        assert names(html) == ["a2"]
        assert "1 of 3 credentials" in html
        # Unknown values are no filter at all (the query string is user input).
        assert len(names(await (await session.get("/?provider=<b>&state=x")).text())) == 3

    run(make_console(items), scenario)


def test_every_column_sorts_both_ways() -> None:
    items = [credential("b", "one", clusters=5), credential("a", "two", clusters=1),
             credential("c", "three", "GCP", clusters=3)]  # fmt: skip

    async def scenario(session: TestClient, _: Console) -> None:
        html = await (await session.get("/?sort=clusters")).text()
        assert names(html) == ["two", "three", "one"]
        assert 'aria-sort="ascending"' in html
        html = await (await session.get("/?sort=clusters&order=desc")).text()
        assert names(html) == ["one", "three", "two"]
        assert names(await (await session.get("/?sort=namespace")).text()) == [
            "two",
            "one",
            "three",
        ]
        assert names(await (await session.get("/?sort=name")).text()) == ["one", "three", "two"]
        for column in views.COLUMNS:
            answer = await session.get(f"/?sort={column}&order=desc")
            assert answer.status == 200
            assert len(names(await answer.text())) == 3

    run(make_console(items), scenario)


def test_sort_links_keep_the_filters_and_flip_the_current_column() -> None:
    query = views.Query.parse({"provider": "AWS", "sort": "clusters"})
    assert query.sort_link("clusters") == "?provider=AWS&sort=clusters&order=desc"
    assert query.sort_link("name") == "?provider=AWS&sort=name"
    assert views.Query.parse({"sort": "nope"}).sort == "name"


# --- the other pages -------------------------------------------------------------------


def test_the_associated_clusters_are_those_the_credential_lists() -> None:
    owner = credential("acme", "aws-prod", clusters=3)
    known = [cluster("acme", "aws-prod-c0"), cluster("acme", "aws-prod-c1", deployed="v2-old"),
             cluster("acme", "unrelated")]  # fmt: skip

    async def scenario(session: TestClient, _: Console) -> None:
        html = await (await session.get("/credentials/acme/aws-prod/clusters")).text()
        assert names(html, "clusters") == ["aws-prod-c0", "aws-prod-c1", "aws-prod-c2"]
        assert cells(html, "up_to_date") == ["yes", "no", "unknown"]
        assert cells(html, "region")[:2] == ["eu-west-3", "eu-west-3"]
        assert "not watched by this console" in html
        missing = await session.get("/credentials/acme/nope/clusters")
        assert missing.status == 404
        assert "acme/nope is not there" in await missing.text()

    run(make_console([owner], known), scenario)


def test_the_detail_page_says_conditions_rollout_rotation_and_events() -> None:
    obj = credential(
        "acme", "aws-prod", clusters=4,
        rollout={"revision": "v2-new", "updated": 1, "total": 4},
        rotation={"phase": "RollingOut", "keyId": "AKIANEW", "nextRotationTime":
                  "2027-01-04T12:00:00Z"},
        key={"id": "AKIANEW", "createdTime": "2026-12-01T00:00:00Z"},
    )  # fmt: skip
    obj["status"]["conditions"] += [
        cond("Verified", "False", "InvalidCredentials", "the provider refused the key"),
        cond("RolloutComplete", "False", "RolloutBlocked", "v2-new failed verification"),
    ]
    obj["metadata"]["annotations"]["cloudcred.io/rollout-paused"] = "true"

    async def scenario(session: TestClient, _: Console) -> None:
        html = await (await session.get("/credentials/acme/aws-prod")).text()
        assert 'max="4" value="1"' in html
        assert "1 of 4 clusters on revision v2-new, paused" in html
        assert "v2-new failed verification" in html
        assert "Not verified with the provider" in html
        assert "the provider refused the key" in html
        assert "RollingOut" in html
        assert "AKIANEW" in html
        assert "The events cannot be read" in html
        assert "cannot reach the API server" in html
        assert "kubectl.kubernetes.io/last-applied-configuration" not in html

    run(make_console([obj]), scenario)


def test_json_lists_the_same_rows() -> None:
    async def scenario(session: TestClient, _: Console) -> None:
        answer = await session.get("/api/credentials?provider=GCP")
        assert answer.content_type == "application/json"
        items = (await answer.json())["items"]
        assert [(i["namespace"], i["name"], i["provider"]) for i in items] == [("b", "g", "GCP")]

    run(make_console([credential("a", "x"), credential("b", "g", "GCP")]), scenario)


def test_the_cache_keeps_no_managed_fields_nor_foreign_annotations() -> None:
    kept = slim(credential("a", "x"))
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {}


# --- the guard ---------------------------------------------------------------------------


def assert_headers(answer: ClientResponse) -> None:
    for name, value in security.HEADERS.items():
        assert answer.headers.get(name) == value, name


def test_the_login_token_opens_one_session_once_and_leaves_the_url() -> None:
    async def scenario(session: TestClient, console: Console) -> None:
        assert (await session.get("/")).status == 401
        token = console.sessions.new_login()
        answer = await session.get(f"/credentials/a/x?token={token}", allow_redirects=False)
        assert answer.status == 303
        assert answer.headers["Location"] == "/credentials/a/x"
        cookie = answer.cookies[console.sessions.cookie_name]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert str(console.port) in console.sessions.cookie_name
        assert cookie.value != token
        assert_headers(answer)
        assert (await session.get("/")).status == 200
        assert (await session.get("/static/console.css")).status == 200
        # Opened again in the same browser: already signed in, the token is dropped.
        again = await session.get(f"/credentials/a/x?token={token}", allow_redirects=False)
        assert again.status == 303
        assert again.headers["Location"] == "/credentials/a/x"
        assert console.sessions.cookie_name not in again.cookies
        # Used up: the same token opens nothing for another browser.
        session.session.cookie_jar.clear()
        again = await session.get(f"/?token={token}", allow_redirects=False)
        assert again.status == 403
        assert "used already" in await again.text()
        assert (await session.get("/static/console.css")).status == 401
        assert (await session.get("/?token=wrong", allow_redirects=False)).status == 403

    run(make_console([credential("a", "x")]), scenario, log_in=False)


def test_every_answer_carries_the_headers_and_the_policy_allows_no_other_origin() -> None:
    policy = security.CONTENT_SECURITY_POLICY
    assert "http" not in policy
    assert "*" not in policy
    assert "unsafe" not in policy
    assert "default-src 'none'" in policy

    async def scenario(session: TestClient, _: Console) -> None:
        for path in ("/", "/credentials/a/x", "/credentials/a/x/clusters", "/api/credentials",
                     "/static/console.css", "/static/nope.js", "/nope"):  # fmt: skip
            answer = await session.get(path)
            assert_headers(answer)
        session.session.cookie_jar.clear()
        assert_headers(await session.get("/"))

    run(make_console([credential("a", "x")]), scenario)


def test_a_foreign_host_header_is_refused() -> None:
    async def scenario(session: TestClient, console: Console) -> None:
        answer = await session.get("/", headers={"Host": f"evil.example:{console.port}"})
        assert answer.status == 421
        assert_headers(answer)
        ok = await session.get("/", headers={"Host": f"localhost:{console.port}"})
        assert ok.status == 200

    run(make_console([]), scenario)


def test_a_post_needs_the_sessions_csrf_token_and_this_origin() -> None:
    async def scenario(session: TestClient, console: Console) -> None:
        html = await (await session.get("/")).text()
        csrf = re.search(r'<meta name="csrf" content="([^"]+)"', html)
        assert csrf is not None
        own = f"http://127.0.0.1:{console.port}"
        refused = await session.post("/", data={"csrf": "forged"}, headers={"Origin": own})
        assert refused.status == 403
        assert "out of date or did not come from this console" in await refused.text()
        assert (await session.post("/", data={})).status == 403
        foreign = await session.post("/", data={"csrf": csrf[1]},
                                     headers={"Origin": "http://evil.example"})  # fmt: skip
        assert foreign.status == 403
        cross = await session.post("/", data={"csrf": csrf[1]},
                                   headers={"Sec-Fetch-Site": "cross-site"})  # fmt: skip
        assert cross.status == 403
        # Past the guard: "/" has no POST, so the router answers.
        assert (
            await session.post("/", data={"csrf": csrf[1]}, headers={"Origin": own})
        ).status == 405

    run(make_console([]), scenario)


def test_the_access_log_never_holds_the_login_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudcred.console")
    tokens = []

    async def scenario(session: TestClient, console: Console) -> None:
        tokens.append(console.sessions.new_login())
        await session.get(f"/?token={tokens[0]}", allow_redirects=False)
        await session.get("/?token=another-token-value")

    run(make_console([]), scenario, log_in=False)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET / 303" in logged
    assert tokens[0] not in logged
    assert "another-token-value" not in logged


# --- assets ---------------------------------------------------------------------------


def test_every_asset_ships_in_the_package_and_names_no_other_origin() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["cloudcred"]
    base = ROOT / "operator" / "cloudcred"
    shipped = {path for glob in globs for path in base.glob(glob)}
    for folder in ("templates", "static"):
        for path in (CONSOLE / folder).iterdir():
            assert path in shipped, f"{path.name} is not in the package data"
            text = path.read_text()
            # An SVG names its XML namespace; nothing is ever loaded from another origin.
            text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert not re.search(r"(https?:)?//[a-z0-9]", text, re.I), path.name
    templates = "".join(p.read_text() for p in (CONSOLE / "templates").iterdir())
    for asset in re.findall(r"/static/([\w.-]+)", templates):
        assert (CONSOLE / "static" / asset).is_file(), asset
    assert "<script>" not in templates
    assert "style=" not in templates


def test_console_is_on_the_command_line() -> None:
    from cloudcred.__main__ import _parser

    args = _parser().parse_args(["console", "-A", "--port", "8123", "--no-browser", "--as", "bob"])
    assert (args.command, args.port, args.no_browser, args.all_namespaces) == (
        "console", 8123, True, True)  # fmt: skip
    with pytest.raises(SystemExit):
        _parser().parse_args(["console", "--port", "70000"])


# --- actions and live updates ---------------------------------------------------------------


def test_the_offer_follows_the_spec_and_the_rights() -> None:
    everything = actions.Permissions(patch=True, rotate=True, delete=True, force_delete=True)
    static = credential("a", "x", clusters=1)
    static["spec"] = {"provider": "AWS", "aws": {"accessKeyId": "AKIAXXXXXXXXXXXXXXX1",
                      "secretAccessKeyRef": {"name": "k", "key": "secretAccessKey"}}}  # fmt: skip
    offered = actions.offer(static, everything)
    assert (offered.paste, offered.rotate_now, offered.pause, offered.resume) == (
        True, False, True, False)  # fmt: skip
    assert (offered.delete, offered.break_glass) == (True, True)
    automatic = {**static, "spec": {**static["spec"], "rotation": {"policy": "Automatic"}}}
    assert (actions.offer(automatic, everything).paste,
            actions.offer(automatic, everything).rotate_now) == (False, True)  # fmt: skip
    role = {**static, "spec": {"provider": "AWS", "aws": {"roleArn": "arn:aws:iam::1:role/r"}}}
    assert actions.offer(role, everything).paste is False
    paused = slim(static)
    paused["metadata"]["annotations"] = {"cloudcred.io/rollout-paused": "true"}
    assert (actions.offer(paused, everything).pause,
            actions.offer(paused, everything).resume) == (False, True)  # fmt: skip
    unused = credential("a", "y")
    assert actions.offer(unused, everything).break_glass is False  # nothing to force
    no_force = actions.Permissions(patch=True, rotate=True, delete=True, force_delete=False)
    assert actions.offer(static, no_force).break_glass is False
    assert actions.offer(static, actions.Permissions()) == actions.Offer(
        False, False, False, False, False, False)  # fmt: skip


def test_a_refusal_is_said_in_words_and_a_refused_delete_offers_the_clusters() -> None:
    forbidden = ApiError("annotating CloudCredential a/x: HTTP 403 Forbidden: cloudcredentials"
                         ' "x" is forbidden: User "bob" cannot patch', status=403)  # fmt: skip
    flash = refusal(forbidden, "/credentials/a/x")
    assert flash.text.startswith("Kubernetes refused this (HTTP 403 Forbidden). annotating")
    assert flash.link is None
    denied = ApiError("deleting CloudCredential a/x: HTTP 403 Forbidden: in use by a/c1",
                      status=403)  # fmt: skip
    assert refusal(denied, "/credentials/a/x").link == (
        "/credentials/a/x/clusters", "View Associated Clusters")  # fmt: skip


def test_without_rights_no_action_is_offered_and_a_failed_action_is_shown() -> None:
    async def scenario(session: TestClient, console: Console) -> None:
        html = await (await session.get("/credentials/a/x")).text()
        assert "No action: your Kubernetes rights allow no change" in html
        assert 'action="/credentials/a/x/' not in html
        csrf = re.search(r'<meta name="csrf" content="([^"]+)"', html)
        assert csrf is not None
        # Forced through anyway (the API server is away here): the failure is shown once.
        answer = await session.post("/credentials/a/x/pause", data={"csrf": csrf[1]},
                                    allow_redirects=False)  # fmt: skip
        assert answer.status == 303
        assert answer.headers["Location"] == "/credentials/a/x"
        shown = await (await session.get("/credentials/a/x")).text()
        assert "annotating CloudCredential a/x: cannot reach the API server" in shown
        again = await (await session.get("/credentials/a/x")).text()
        assert "cannot reach the API server: " not in again.split("Recent events")[0]
        # A delete asks first, on a page of its own.
        confirm = await session.post("/credentials/a/x/delete", data={"csrf": csrf[1]})
        assert "Delete a/x?" in await confirm.text()

    run(make_console([credential("a", "x", clusters=1)]), scenario)


def test_a_change_in_the_cache_reaches_the_browser_as_an_event() -> None:
    async def scenario(session: TestClient, console: Console) -> None:
        async with session.get("/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            assert_headers(stream)
            assert await stream.content.readline() == b": live\n"
            await stream.content.readline()
            change = console.cache.credentials.apply(("a", "y"), slim(credential("a", "y")))
            console.cache._changed("CloudCredential", [change])
            line = await asyncio.wait_for(stream.content.readline(), 5)
            assert line == b"event: change\n"

    run(make_console([credential("a", "x")]), scenario)


def test_past_the_status_cap_the_clusters_come_from_the_cache() -> None:
    owner = credential("acme", "big", clusters=1, clustersTruncated=True, clusterCount=3)
    bound = [cluster("acme", "big-c0"), cluster("team", "t1"), cluster("acme", "other")]
    for item in bound[:2]:
        item["status"]["credential"] = {"namespace": "acme", "name": "big"}

    async def scenario(session: TestClient, _: Console) -> None:
        html = await (await session.get("/credentials/acme/big/clusters")).text()
        assert names(html, "clusters") == ["big-c0", "t1"]
        assert "the credential's list is capped" in html

    run(make_console([owner], bound), scenario)


def test_the_bench_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    """``make bench-console`` cannot rot unseen; its figures are the bench's business."""
    from bench import console as bench

    assert bench.main(["12", "40", "1"]) == 0
    printed = capsys.readouterr().out
    assert "bench: console list (12 credentials) median " in printed
    assert "bench: console associated clusters (20 clusters) median " in printed


def test_a_roles_trust_policy_never_comes_from_a_forged_status() -> None:
    """A tenant who may patch cloudcredentials/status names its own account as the
    operator's principal: the page shows no policy built from status. Where the
    installation Secret cannot be read (here: no API server), it says why and gives the
    command that derives the policy (its success: tests/integration/test_console.py)."""
    attacker = "arn:aws:iam::999999999999:root"
    role = credential("acme", "aws-role", externalId="cloudcred-chosen",
                      operatorPrincipal=attacker)  # fmt: skip
    role["spec"] = {"provider": "AWS", "aws": {"roleArn": "arn:aws:iam::210987654321:role/r"}}
    keys = credential("acme", "aws-keys", externalId="x", operatorPrincipal=attacker)

    async def scenario(session: TestClient, _: Console) -> None:
        page = await (await session.get("/credentials/acme/aws-role")).text()
        assert "999999999999" not in page
        assert "cloudcred-chosen" not in page
        assert 'id="trust-policy"' not in page
        problem = re.search(r'<p id="trust-problem">(.*?)</p>', page, re.S)
        assert problem is not None
        assert "reading Secret cloudcred-system/cloudcred-installation" in problem[1]
        assert "cannot reach the API server" in problem[1]
        command = re.search(r'<code id="trust-command">(.*?)</code>', page)
        assert command is not None
        assert command[1] == (
            "cloudcred trust-policy aws-role -n acme --operator-namespace cloudcred-system"
        )
        assert "Trust policy" not in await (await session.get("/credentials/acme/aws-keys")).text()

    run(make_console([role, keys]), scenario)
