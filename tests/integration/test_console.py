"""``cloudcred console`` as a person uses it: a separate process with a kubeconfig,
against the real API server, the running operator and moto, looked at in Debian's
Chromium (headless, over its DevTools protocol: ``tests/browser.py``).

Screenshots of each page are saved under the test's folder, and under
``$CLOUDCRED_SCREENSHOTS`` when it is set (the README's come from there).
"""

from __future__ import annotations

import asyncio
import base64
import html
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from kubernetes import client

from cloudcred.constants import GROUP
from tests.aws import AwsKey, Moto
from tests.browser import Browser, chromium
from tests.conftest import Kube
from tests.integration.test_cli import (
    aws_cluster,
    kubectl,
    new_access_key,
    static_key_credential,
    verified_and_listing,
)
from tests.kube import ROOT
from tests.operator import OperatorProcess, wait_for
from tests.resources import create_credential, get_credential, patch_credential

pytestmark = pytest.mark.integration
URL = re.compile(r"(http://127\.0\.0\.1:(\d+)/\?token=[\w-]+)")


class ConsoleProcess:
    """``cloudcred console --no-browser -v`` in a subprocess; ``url`` is the login URL it
    printed, ``log()`` what it wrote on stderr."""

    def __init__(self, kubeconfig: Path, folder: Path, *args: str) -> None:
        self.stderr_path = folder / "console.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloudcred", "console", "--no-browser", "-v", *args],
            cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"), text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.printed = ""
        while not URL.search(self.printed):
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"the console did not start: {self.log()}")
            self.printed += line
        found = URL.search(self.printed)
        assert found is not None
        self.url, self.port = found[1], int(found[2])
        self.origin = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Session:
    """A plain HTTP client signed in with the console's login URL."""

    def __init__(self, console: ConsoleProcess) -> None:
        self.port = console.port
        answer = self.request("GET", console.url.removeprefix(console.origin))
        assert answer[0] == 303, answer
        cookie = answer[1]["Set-Cookie"].split(";", 1)[0]
        self.headers = {"Cookie": cookie}

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent = {**getattr(self, "headers", {}), **(headers or {})}
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            connection.close()


@pytest.fixture
def deployer(moto: Moto) -> AwsKey:
    return moto.create_user(f"console-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def fleet(kube: Kube, namespace: str, deployer: AwsKey, operator: OperatorProcess) -> str:
    """aws-prod (a static key, two clusters) and aws-idle (no cluster), verified."""
    static_key_credential(kube, namespace, "aws-prod", deployer)
    static_key_credential(kube, namespace, "aws-idle", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    aws_cluster(kube, namespace, "prod-us", "aws-prod")
    verified_and_listing(kube, namespace, "aws-prod", 2)
    verified_and_listing(kube, namespace, "aws-idle", 0)
    for name in ("aws-prod", "aws-idle"):  # settled: the pages compare with a still picture
        wait_for(lambda name=name: summary(get_credential(kube, namespace, name) or {}) == "Ready",
                 timeout=60, what=f"{name} Ready")  # fmt: skip
    return namespace


@pytest.fixture
def console(kube: Kube, fleet: str, tmp_path: Path) -> Iterator[ConsoleProcess]:
    started = ConsoleProcess(kube.kubeconfig, tmp_path, "-A")
    yield started
    started.stop()


def screenshots(tmp_path: Path) -> list[Path]:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("CLOUDCRED_SCREENSHOTS"):
        folders.append(Path(os.environ["CLOUDCRED_SCREENSHOTS"]))
    return folders


async def shoot(browser: Browser, tmp_path: Path, name: str) -> None:
    first, *others = screenshots(tmp_path)
    saved = await browser.screenshot(first / f"{name}.png")
    for folder in others:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved, folder / saved.name)


ROWS = """[...document.querySelectorAll('#%s tbody tr[data-namespace="%s"]')].map(tr =>
  Object.fromEntries([...tr.querySelectorAll('td[data-column]')].map(
    td => [td.dataset.column, td.textContent.trim()])))"""


def kubectl_listing(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    """``kubectl get cloudcredentials -A -o json``, this test's namespace."""
    result = subprocess.run(
        [kubectl(), "--kubeconfig", str(kube.kubeconfig), "get", "cloudcredentials", "-A",
         "-o", "json"], capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    items = json.loads(result.stdout)["items"]
    return sorted(
        (i for i in items if i["metadata"]["namespace"] == namespace),
        key=lambda i: i["metadata"]["name"],
    )


def summary(obj: dict[str, Any]) -> str:
    """The summary condition that is True (Ready, Reconciling or Stalled)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = [c["type"] for c in conditions if c["status"] == "True"]
    return next((t for t in ("Ready", "Reconciling", "Stalled") if t in true), "Unknown")


def test_the_pages_in_a_real_browser(
    kube: Kube, fleet: str, console: ConsoleProcess, tmp_path: Path
) -> None:
    executable = chromium()
    if executable is None:
        pytest.skip("Chromium is not installed: `make browser` installs Debian's chromium")
    namespace = fleet

    async def scenario(browser: Browser) -> None:
        await browser.goto(console.url)
        # Signed in, and the token is off the URL.
        assert await browser.evaluate("location.href") == f"{console.origin}/"

        # The page follows the API server's watch: it agrees with kubectl once both
        # have seen the operator's last status write.
        async def listing() -> tuple[list[Any], list[Any]]:
            await browser.goto(f"{console.origin}/?namespace={namespace}")
            rows = await browser.evaluate(ROWS % ("credentials", namespace))
            shown = [(r["name"], r["provider"], r["public_id"], r["clusters"],
                      r["state"].split()[0]) for r in rows]  # fmt: skip
            expected = [(i["metadata"]["name"], i["spec"]["provider"], i["status"]["publicId"],
                         str(i["status"]["clusterCount"]), summary(i))
                        for i in kubectl_listing(kube, namespace)]  # fmt: skip
            return shown, expected

        for _ in range(100):
            shown, expected = await listing()
            if shown == expected:
                break
            await asyncio.sleep(0.3)
        assert shown == expected
        assert [row[0] for row in shown] == ["aws-idle", "aws-prod"]
        await shoot(browser, tmp_path, "credentials")

        # Sorting by a column's heading: most clusters first.
        await browser.click('th a[href*="sort=clusters"]')
        await browser.click('th a[href*="sort=clusters"]')
        rows = await browser.evaluate(ROWS % ("credentials", namespace))
        assert [r["name"] for r in rows] == ["aws-prod", "aws-idle"]
        await browser.goto(f"{console.origin}/?namespace={namespace}&sort=clusters")
        rows = await browser.evaluate(ROWS % ("credentials", namespace))
        assert [r["name"] for r in rows] == ["aws-idle", "aws-prod"]

        # "View Associated Clusters": what status.clusters lists.
        await browser.click(f'tr[data-namespace="{namespace}"][data-name="aws-prod"] a.button')
        assert await browser.evaluate("location.pathname") == (
            f"/credentials/{namespace}/aws-prod/clusters")  # fmt: skip
        clusters = await browser.evaluate(ROWS % ("clusters", namespace))
        status = (get_credential(kube, namespace, "aws-prod") or {})["status"]
        assert [(c["namespace"], c["name"]) for c in clusters] == [
            (c["namespace"], c["name"]) for c in status["clusters"]
        ]
        assert {c["region"] for c in clusters} == {"eu-west-3"}
        await shoot(browser, tmp_path, "clusters")

        # The detail page: the rollout bar and the conditions in words.
        await browser.goto(f"{console.origin}/credentials/{namespace}/aws-prod")
        bar = await browser.evaluate(
            "(p => [p.value, p.max])(document.querySelector('progress#rollout'))"
        )
        rollout = status["rollout"]
        assert bar == [rollout["updated"] or 0, rollout["total"]]
        text = await browser.evaluate("document.body.innerText")
        assert "Verified with the provider" in text
        assert f"of {rollout['total']} clusters on revision {rollout['revision']}" in text
        await shoot(browser, tmp_path, "detail")

        # Nothing left loopback, and the page reported no error (a CSP refusal is one).
        outside = [u for u in browser.requests if not u.startswith(console.origin + "/")]
        assert outside == [], outside
        assert browser.problems == []

    async def main() -> None:
        assert executable is not None
        browser = await Browser.start(executable, tmp_path / "profile")
        try:
            await scenario(browser)
        finally:
            await browser.close()

    asyncio.run(main())


def needles(value: str) -> set[str]:
    """The value and its base64, as a page or log could carry it."""
    return {value, base64.b64encode(value.encode()).decode()}


def test_no_secret_in_the_consoles_html_json_or_log(
    kube: Kube, fleet: str, deployer: AwsKey, console: ConsoleProcess
) -> None:
    namespace = fleet
    session = Session(console)
    pages = ["/", f"/?namespace={namespace}", "/api/credentials",
             f"/credentials/{namespace}/aws-prod", f"/credentials/{namespace}/aws-prod/clusters",
             f"/credentials/{namespace}/aws-idle"]  # fmt: skip
    seen = ""
    for path in pages:
        status, headers, body = session.request("GET", path)
        assert status == 200, (path, body[:500])
        seen += "\n".join(f"{k}: {v}" for k, v in headers.items()) + body
    assert deployer.access_key_id in seen  # the public half is shown...
    seen += console.log()
    assert f"GET /credentials/{namespace}/aws-prod 200" in console.log()
    for needle in needles(deployer.secret_access_key):
        assert needle not in seen  # ...the secret half never
    assert console.url.split("token=")[1] not in console.log()
    # Ctrl-C stops it, at once, though a browser could hold a live-update stream open.
    stream = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
    stream.request("GET", "/events", headers=session.headers)
    assert stream.getresponse().status == 200
    asked = time.monotonic()
    console.process.send_signal(signal.SIGINT)
    # At once: well before a watch's own timeout (minutes), with room for a loaded machine.
    assert console.process.wait(timeout=30) == 0
    assert time.monotonic() - asked < 15
    stream.close()
    assert "cloudcred console: stopped" in console.log()


# --- actions --------------------------------------------------------------------------------

CSRF = re.compile(r'<meta name="csrf" content="([^"]+)"')
FLASH = re.compile(r'<div class="flash (ok|error)"[^>]*>\s*<p>(.*?)</p>', re.S)


def page(session: Session, path: str) -> str:
    status, _, body = session.request("GET", path)
    assert status == 200, (path, body[:300])
    return body


def post(session: Session, path: str, **fields: str) -> tuple[str, str]:
    """A form posted as the page's own would be: the CSRF token of a page, this origin;
    what the next page says about it (the flash) and that page."""
    fields.setdefault("csrf", CSRF.findall(page(session, "/"))[0])
    status, headers, body = session.request(
        "POST", path, body=urlencode(fields),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Origin": f"http://127.0.0.1:{session.port}"},
    )  # fmt: skip
    if status != 303:
        return "", body
    after = page(session, headers["Location"])
    found = FLASH.search(after)
    return (html.unescape(found[2]) if found else ""), after


def annotations(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    return dict(((get_credential(kube, namespace, name) or {}).get("metadata") or {}).get(
        "annotations") or {})  # fmt: skip


def test_actions_through_the_clis_code_and_the_api_servers_refusals(
    kube: Kube, fleet: str, moto: Moto, console: ConsoleProcess
) -> None:
    namespace = fleet
    session = Session(console)
    base = f"/credentials/{namespace}/aws-prod"
    detail = page(session, base)
    for offered in ("/rotate", "/pause", "/delete", "/break-glass"):
        assert f'action="{base}{offered}"' in detail, offered
    assert f'action="{base}/rotate-now"' not in detail  # Manual rotation

    said, _ = post(session, base + "/pause")
    assert said == f"The rollout of {namespace}/aws-prod is paused."
    assert annotations(kube, namespace, "aws-prod")["cloudcred.io/rollout-paused"] == "true"
    assert f'action="{base}/resume"' in page(session, base)
    said, _ = post(session, base + "/resume")
    assert "resumed" in said
    assert "cloudcred.io/rollout-paused" not in annotations(kube, namespace, "aws-prod")

    # Forced through, the CLI's own check answers, in the CLI's words.
    said, _ = post(session, base + "/rotate-now")
    assert "has spec.rotation.policy Manual: --now asks the operator to rotate" in said

    # Delete asks first; in use, the API server's refusal names the clusters.
    _, confirm = post(session, base + "/delete")
    assert f"Delete {namespace}/aws-prod?" in confirm
    said, after = post(session, base + "/delete", confirm="yes")
    assert said.startswith(f"Kubernetes refused this (HTTP 403 Forbidden). deleting "
                           f"CloudCredential {namespace}/aws-prod")  # fmt: skip
    assert "prod-eu" in said
    assert "prod-us" in said
    assert f'href="{base}/clusters">View Associated Clusters</a>' in after
    assert get_credential(kube, namespace, "aws-prod") is not None

    # Rotate now, on a credential under Automatic rotation: the CLI's annotation.
    auto = f"/credentials/{namespace}/aws-auto"
    static_key_credential(kube, namespace, "aws-auto", moto.create_user(f"auto-{namespace}"))
    patch_credential(kube, namespace, "aws-auto",
                     {"spec": {"rotation": {"policy": "Automatic", "maxAge": "90d"}}})  # fmt: skip
    wait_for(lambda: f'action="{auto}/rotate-now"' in page(session, auto), timeout=15,
             what="rotate now offered")  # fmt: skip
    assert f'action="{auto}/rotate"' not in page(session, auto)  # nothing to paste
    said, _ = post(session, auto + "/rotate-now")
    assert said == f"Asked the operator to rotate the key of {namespace}/aws-auto now."
    assert "cloudcred.io/rotate-now" in annotations(kube, namespace, "aws-auto")

    said, _ = post(session, f"/credentials/{namespace}/aws-idle/delete", confirm="yes")
    assert said == f"CloudCredential {namespace}/aws-idle is being deleted."
    wait_for(lambda: get_credential(kube, namespace, "aws-idle") is None, timeout=30,
             what="aws-idle gone")  # fmt: skip
    # The cache follows: the list no longer has it.
    wait_for(lambda: "aws-idle" not in page(session, f"/?namespace={namespace}"), timeout=15,
             what="aws-idle off the page")  # fmt: skip

    # Break glass: a reason, the user's own name, then the delete goes through.
    said, _ = post(session, base + "/break-glass", reason="  ")
    assert said == "break glass needs a reason: why must this credential go now?"
    said, _ = post(session, base + "/break-glass", reason="key published in a test")
    assert said.startswith(f"CloudCredential {namespace}/aws-prod is being deleted by ")
    assert said.endswith(": key published in a test")
    wait_for(lambda: get_credential(kube, namespace, "aws-prod") is None, timeout=60,
             what="aws-prod force-deleted")  # fmt: skip


def role(kube: Kube, namespace: str, user: str, *extra: dict[str, Any]) -> None:
    """Read rights on credentials, clusters and events in ``namespace``, and ``extra``."""
    rbac = client.RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": f"console-{user}"},
        "rules": [{"apiGroups": [GROUP], "resources": ["cloudcredentials", "clusters"],
                   "verbs": ["get", "list", "watch"]},
                  {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}, *extra],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": f"console-{user}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": f"console-{user}"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    })  # fmt: skip


def test_a_read_only_user_is_offered_nothing_and_a_forged_post_gets_the_403_in_words(
    kube: Kube, fleet: str, tmp_path: Path
) -> None:
    namespace = fleet
    role(kube, namespace, "viewer")
    console = ConsoleProcess(kube.kubeconfig, tmp_path, "-n", namespace, "--as", "viewer")
    try:
        session = Session(console)
        base = f"/credentials/{namespace}/aws-prod"
        detail = page(session, base)
        assert "No action: your Kubernetes rights allow no change to this credential." in detail
        assert '<form method="post"' not in detail
        assert "Recent events" in detail
        said, _ = post(session, base + "/pause")
        assert said.startswith("Kubernetes refused this (HTTP 403 Forbidden). annotating "
                               f"CloudCredential {namespace}/aws-prod")  # fmt: skip
        assert 'User "viewer" cannot patch resource "cloudcredentials"' in said
        said, _ = post(session, base + "/delete", confirm="yes")
        assert 'User "viewer" cannot delete resource "cloudcredentials"' in said
        assert "cloudcred.io/rollout-paused" not in annotations(kube, namespace, "aws-prod")
        assert get_credential(kube, namespace, "aws-prod") is not None
    finally:
        console.stop()


def test_an_editor_without_the_break_glass_verb_is_not_offered_break_glass(
    kube: Kube, fleet: str, tmp_path: Path
) -> None:
    namespace = fleet
    role(kube, namespace, "editor",
         {"apiGroups": [GROUP], "resources": ["cloudcredentials"], "verbs": ["patch", "delete"]},
         {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]})  # fmt: skip
    console = ConsoleProcess(kube.kubeconfig, tmp_path, "-n", namespace, "--as", "editor")
    try:
        base = f"/credentials/{namespace}/aws-prod"
        detail = page(Session(console), base)
        for offered in ("/rotate", "/pause", "/delete"):
            assert f'action="{base}{offered}"' in detail, offered
        assert f'action="{base}/break-glass"' not in detail
    finally:
        console.stop()


def test_a_roles_trust_policy_is_the_clis_from_the_installation_secret(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess, tmp_path: Path
) -> None:
    """The detail page's trust policy is what ``cloudcred trust-policy`` derives from the
    installation Secret; a user who may not read that Secret is told so, with the command,
    and sees no policy (never one built from status: tests/unit/test_console.py)."""
    role_arn = moto.create_role(f"console-{uuid.uuid4().hex[:6]}")
    create_credential(kube, namespace, "aws-role", provider="AWS", aws={"roleArn": role_arn})
    wait_for(lambda: ((get_credential(kube, namespace, "aws-role") or {}).get("status") or {})
             .get("operatorPrincipal"), timeout=60, what="the role verified")  # fmt: skip
    printed = subprocess.run(
        [sys.executable, "-m", "cloudcred", "trust-policy", "aws-role", "-n", namespace,
         "--operator-namespace", "default"],
        cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    base = f"/credentials/{namespace}/aws-role"
    admin = ConsoleProcess(kube.kubeconfig, tmp_path, "-n", namespace,
                           "--operator-namespace", "default")  # fmt: skip
    try:
        shown = re.search(r'<pre id="trust-policy">(.*?)</pre>', page(Session(admin), base), re.S)
    finally:
        admin.stop()
    assert shown is not None
    assert json.loads(html.unescape(shown[1])) == json.loads(printed.stdout)

    role(kube, namespace, "viewer")
    viewer = ConsoleProcess(kube.kubeconfig, tmp_path, "-n", namespace, "--as", "viewer",
                            "--operator-namespace", "default")  # fmt: skip
    try:
        detail = page(Session(viewer), base)
    finally:
        viewer.stop()
    assert 'id="trust-policy"' not in detail
    problem = re.search(r'<p id="trust-problem">(.*?)</p>', detail, re.S)
    assert problem is not None
    assert "reading Secret default/cloudcred-installation" in problem[1]
    assert "HTTP 403 Forbidden" in problem[1]
    assert (f'<code id="trust-command">cloudcred trust-policy aws-role -n {namespace} '
            "--operator-namespace default</code>") in detail  # fmt: skip


def test_a_user_who_may_not_list_hears_it_at_start(kube: Kube, namespace: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudcred", "console", "--no-browser", "-A", "--as", "nobody"],
        cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("cloudcred: listing CloudCredentials in every namespace: "
                                    "HTTP 403 Forbidden")  # fmt: skip


def test_live_updates_and_a_rotation_by_paste_in_the_browser(
    kube: Kube, fleet: str, moto: Moto, deployer: AwsKey, console: ConsoleProcess,
    tmp_path: Path,
) -> None:  # fmt: skip
    executable = chromium()
    if executable is None:
        pytest.skip("Chromium is not installed: `make browser` installs Debian's chromium")
    namespace = fleet
    base = f"{console.origin}/credentials/{namespace}/aws-prod"
    old = (get_credential(kube, namespace, "aws-prod") or {})["status"]["revision"]
    new_key = new_access_key(moto, deployer)
    secret = new_key["AccessKey"]["SecretAccessKey"]
    words = "document.querySelector('#rollout-words').textContent"

    async def scenario(browser: Browser) -> None:
        await browser.goto(console.url)
        await browser.goto(base)
        await browser.wait_for("document.body.dataset.live === 'on'")
        await browser.evaluate("window.samePage = true")
        # A cluster binds: the page follows without a reload.
        aws_cluster(kube, namespace, "prod-ap", "aws-prod")
        await browser.wait_for(f"{words}.includes('of 3 clusters') && window.samePage")

        # The new key pasted into the form, as a person would; never shown again.
        await browser.evaluate(
            f"document.querySelector('#new-key').value = {json.dumps(json.dumps(new_key))}"
        )
        await browser.click("#rotate-form button[type=submit]")
        text = await browser.evaluate("document.body.innerText")
        assert f"switched to Secret {namespace}/aws-prod-" in text
        # The rollout reaches every cluster, live: the bar ends at 3 of 3.
        await browser.wait_for(
            f"{words}.startsWith('3 of 3 clusters on revision ') && !{words}.includes('{old}')",
            timeout=90,
        )
        bar = await browser.evaluate("(p => [p.value, p.max])(document.querySelector('#rollout'))")
        assert bar == [3, 3]
        await shoot(browser, tmp_path, "rotated")
        dom = await browser.evaluate("document.documentElement.outerHTML")
        for needle in needles(secret):
            assert needle not in dom
            assert not any(needle in url for url in browser.requests)
        assert [u for u in browser.requests if not u.startswith(console.origin + "/")] == []
        assert browser.problems == []

    async def main() -> None:
        assert executable is not None
        browser = await Browser.start(executable, tmp_path / "profile")
        try:
            await scenario(browser)
        finally:
            await browser.close()

    asyncio.run(main())
    credential = get_credential(kube, namespace, "aws-prod") or {}
    assert credential["spec"]["aws"]["accessKeyId"] == new_key["AccessKey"]["AccessKeyId"]
    done = next(c for c in credential["status"]["conditions"] if c["type"] == "RolloutComplete")
    assert done["status"] == "True"
    for needle in needles(secret):
        assert needle not in console.log()


# --- keyboard, theme, accessibility ---------------------------------------------------------

AXE = ROOT / ".local" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
FOCUSED = """(e => e ? (e.getAttribute('aria-label') || e.textContent || e.name || e.id).trim()
  : '')(document.activeElement)"""
UNLABELLED = """[...document.querySelectorAll(
  'a[href], button, select, textarea, input:not([type=hidden])')].filter(e =>
  !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
  && !e.textContent.trim()).map(e => e.outerHTML)"""
AXE_RUN = """axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'best-practice']}).then(r =>
  r.violations.filter(v => ['serious', 'critical'].includes(v.impact)).map(v =>
    v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', ')))"""


async def tab_to(browser: Browser, focused: str, limit: int = 80) -> None:
    """Press Tab until the JavaScript expression ``focused`` holds."""
    for _ in range(limit):
        await browser.press("Tab")
        if await browser.evaluate(focused):
            return
    raise AssertionError(f"{focused}: not reachable with Tab")


def test_keyboard_only_labelled_controls_both_themes_and_axe(
    kube: Kube, fleet: str, console: ConsoleProcess, tmp_path: Path
) -> None:
    executable = chromium()
    if executable is None:
        pytest.skip("Chromium is not installed: `make browser` installs Debian's chromium")
    namespace = fleet
    pages = [f"/?namespace={namespace}", f"/credentials/{namespace}/aws-prod",
             f"/credentials/{namespace}/aws-prod/clusters"]  # fmt: skip

    async def scenario(browser: Browser) -> None:
        await browser.goto(console.url)
        await browser.goto(console.origin + pages[0])
        # The first Tab reaches the skip link; Enter moves the focus to the content.
        await browser.press("Tab")
        assert await browser.evaluate(FOCUSED) == "Skip to content"
        await browser.press("Enter")
        assert await browser.evaluate("document.activeElement.id") == "main"
        # A visible focus ring, then "View Associated Clusters" with the keyboard alone.
        await tab_to(browser, f"{FOCUSED} === 'View Associated Clusters of {namespace}/aws-prod'")
        outline = await browser.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        await browser.press_and_load("Enter")
        assert await browser.evaluate("location.pathname") == pages[2].split("?")[0]
        # A filter chosen from the keyboard: the provider select, then Filter.
        await browser.goto(console.origin + "/")
        await tab_to(browser, "document.activeElement.name === 'provider'")
        label = await browser.evaluate("document.activeElement.labels[0].textContent")
        assert label.strip().startswith("Provider")
        await browser.press("ArrowDown")  # All -> AWS
        assert await browser.evaluate("document.activeElement.value") == "AWS"
        await tab_to(browser, f"{FOCUSED} === 'Filter'")
        await browser.press_and_load("Enter")
        assert "provider=AWS" in await browser.evaluate("location.search")

        for path in pages:
            await browser.goto(console.origin + path)
            assert await browser.evaluate(UNLABELLED) == [], path
        # The system's theme: dark when it asks for dark.
        light = await browser.evaluate("getComputedStyle(document.body).backgroundColor")
        await browser.call("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": "dark"}]})  # fmt: skip
        dark = await browser.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (light, dark) == ("rgb(255, 255, 255)", "rgb(15, 19, 24)")
        await browser.goto(console.origin + pages[1])
        await shoot(browser, tmp_path, "detail-dark")
        if not AXE.exists():
            return  # reported below
        for scheme in ("dark", "light"):
            await browser.call("Emulation.setEmulatedMedia", {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]})  # fmt: skip
            for path in pages:
                await browser.goto(console.origin + path)
                await browser.evaluate(AXE.read_text())
                assert await browser.evaluate(AXE_RUN) == [], (scheme, path)
        assert browser.problems == []

    async def main() -> None:
        assert executable is not None
        browser = await Browser.start(executable, tmp_path / "profile")
        try:
            await scenario(browser)
        finally:
            await browser.close()

    asyncio.run(main())
    if not AXE.exists():
        pytest.skip(
            "axe-core is not installed (`make browser` installs it with npm): the "
            "keyboard and theme checks passed, the accessibility check did not run"
        )
