"""The console's web server: aiohttp (kopf's own HTTP stack) on 127.0.0.1, Jinja2 pages
rendered from the watch-fed cache, assets from the package.

``serve`` is what ``cloudcred console`` runs; ``Console.app`` is the application, which
tests drive in-process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.resources
import json
import logging
import mimetypes
import sys
import time
import webbrowser
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cloudcred import __version__
from cloudcred.cli import api, trust
from cloudcred.cli.errors import ApiError, CliError
from cloudcred.console import actions, views
from cloudcred.console.cache import ConsoleCache
from cloudcred.console.security import HEADERS, Sessions, allowed_hosts, same_origin
from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    DEFAULT_OPERATOR_NAMESPACE,
    GROUP,
    VERSION,
)
from cloudcred.installation import INSTALLATION_SECRET

logger = logging.getLogger("cloudcred.console")
HOST = "127.0.0.1"
SYNC_WAIT = 10.0  # how long a page waits for the first LISTs before it shows what it has
EVENTS_SHOWN = 20
PERMISSIONS_TTL = 30.0  # seconds an answer of the access reviews is reused
LIVE_INTERVAL = 0.5  # at most two live updates a second per browser
KEEP_ALIVE = 15.0
STATIC = importlib.resources.files("cloudcred.console") / "static"
SESSION = web.RequestKey("session", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessLogger(AbstractAccessLogger):
    """Method, path and status: never the query string, where the login token travels."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s", request.method, request.path, response.status)


def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cloudcred.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["version"] = __version__
    return environment


@dataclasses.dataclass(frozen=True)
class RoleTrust:
    """What the detail page shows of an AWS role's trust policy: the policy, or why the
    console could not derive it and the command that can."""

    policy: str
    problem: str
    command: str


@dataclasses.dataclass(frozen=True)
class Flash:
    """What an action did, shown once on the next page."""

    kind: str  # ok or error
    text: str
    link: tuple[str, str] | None = None  # (path, label)


class Console:
    """The pages over one cache, for the sessions one login URL opens."""

    def __init__(
        self,
        kube: api.Kube,
        cache: ConsoleCache,
        port: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.operator_namespace = operator_namespace
        self.sessions = Sessions(port)
        self.clock = clock
        self.templates = templates()
        self.flashes: dict[str, list[Flash]] = {}
        self._permissions: dict[str, tuple[float, actions.Permissions]] = {}

    @property
    def port(self) -> int:
        return self.sessions.port

    @port.setter
    def port(self, value: int) -> None:
        self.sessions.port = value

    def login_url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.sessions.new_login()}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self.credentials_page)
        app.router.add_get("/credentials/{namespace}/{name}", self.detail_page)
        app.router.add_get("/credentials/{namespace}/{name}/clusters", self.clusters_page)
        app.router.add_get("/api/credentials", self.credentials_json)
        app.router.add_get("/events", self.live)
        app.router.add_get("/static/{file}", self.static)
        base = "/credentials/{namespace}/{name}/"
        for action in ("rotate", "rotate-now", "pause", "resume", "delete", "break-glass"):
            app.router.add_post(base + action, self.act)
        return app

    # -- security ---------------------------------------------------------------------

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(HEADERS)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host not in allowed_hosts(self.port):
            return web.Response(status=421, text="This console answers on 127.0.0.1 only.\n")
        token = request.query.get("token")
        session = self.sessions.session(request.cookies.get(self.sessions.cookie_name))
        if token is not None:
            if session is not None:  # signed in already (the login URL opened again)
                return web.Response(status=303, headers={"Location": request.path})
            return self._log_in(request, token)
        if session is None:
            return self._error(
                request, 401, "Not signed in",
                "Open the URL that cloudcred console printed when it started. Each URL "
                "opens one browser session once; start the console again for a new one.",
            )  # fmt: skip
        request[SESSION] = session
        if request.method not in ("GET", "HEAD"):
            headers = request.headers
            if not same_origin(self.port, headers.get("Origin"), headers.get("Sec-Fetch-Site")):
                return self._error(request, 403, "Refused", "The request came from another site.")
            form = await request.post()
            given = form.get("csrf")
            if not isinstance(given, str) or not self.sessions.csrf_ok(session, given):
                return self._error(
                    request, 403, "Refused",
                    "The form is out of date or did not come from this console: reload "
                    "the page and try again.",
                )  # fmt: skip
        return await handler(request)

    def _log_in(self, request: web.Request, token: str) -> web.StreamResponse:
        session = self.sessions.log_in(token)
        if session is None:
            return self._error(
                request, 403, "This link was used already, or is not this console's",
                "Each URL that cloudcred console prints opens one browser session once. "
                "Start the console again for a new one.",
            )  # fmt: skip
        # Off the URL at once: the token stays out of the history and of Referer headers.
        response = web.Response(status=303, headers={"Location": request.path})
        response.set_cookie(
            self.sessions.cookie_name, session, httponly=True, samesite="Strict", path="/"
        )
        return response

    # -- pages --------------------------------------------------------------------------

    def _render(
        self, request: web.Request, template: str, status: int = 200, **context: Any
    ) -> web.Response:
        session = request.get(SESSION)
        body = self.templates.get_template(template).render(
            scope=self.cache.namespace or "every namespace",
            synced=self.cache.synced,
            csrf=self.sessions.csrf(session) if session else "",
            flashes=self.flashes.pop(session, []) if session else [],
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _error(self, request: web.Request, status: int, title: str, text: str) -> web.Response:
        return self._render(request, "error.html", status=status, title=title, text=text)

    async def credentials_page(self, request: web.Request) -> web.Response:
        await self.cache.wait_synced(SYNC_WAIT)
        query = views.Query.parse(request.query)
        objects = self.cache.credentials.objects.values()
        rows = views.credential_rows(objects, query, self.clock())
        namespaces = sorted({key[0] for key in self.cache.credentials.objects})
        return self._render(
            request,
            "credentials.html",
            title="Cloud Credentials",
            rows=rows,
            total=len(self.cache.credentials),
            query=query,
            columns=views.COLUMNS,
            namespaces=namespaces,
            providers=views.PROVIDERS,
            states=(*views.STATES, views.UNKNOWN_STATE),
        )

    async def credentials_json(self, request: web.Request) -> web.Response:
        await self.cache.wait_synced(SYNC_WAIT)
        query = views.Query.parse(request.query)
        rows = views.credential_rows(self.cache.credentials.objects.values(), query, self.clock())
        return web.json_response({"items": [dataclasses.asdict(row) for row in rows]})

    def _credential(self, request: web.Request) -> dict[str, Any] | web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        found = self.cache.credential(namespace, name)
        if found is None:
            return self._error(
                request, 404, "Not found",
                f"CloudCredential {namespace}/{name} is not there, or this console does not "
                f"follow its namespace (it follows {self.cache.namespace or 'every namespace'}).",
            )  # fmt: skip
        return found

    async def detail_page(self, request: web.Request) -> web.Response:
        await self.cache.wait_synced(SYNC_WAIT)
        found = self._credential(request)
        if isinstance(found, web.Response):
            return found
        detail = views.detail_view(found, self.clock())
        (events, events_error), allowed, role_trust = await asyncio.gather(
            self._events(detail.row.namespace, detail.row.name),
            self.permissions(detail.row.namespace),
            self.trust_policy(found),
        )
        return self._render(
            request,
            "detail.html",
            title=f"{detail.row.name} · Cloud Credentials",
            detail=detail,
            events=events,
            events_error=events_error,
            offer=actions.offer(found, allowed),
            trust=role_trust,
        )

    async def trust_policy(self, obj: dict[str, Any]) -> RoleTrust | None:
        """The trust policy of an AWS role credential, derived as ``cloudcred
        trust-policy`` derives it: from the installation Secret, read with the user's
        rights, never from the credential's status (which a tenant may write). When the
        Secret cannot be read, the reason and the command for someone who may. None: no
        role."""
        spec, metadata = obj.get("spec") or {}, obj.get("metadata") or {}
        if not (spec.get("aws") or {}).get("roleArn"):
            return None
        namespace, name = metadata["namespace"], metadata["name"]
        command = (f"cloudcred trust-policy {name} -n {namespace} "
                   f"--operator-namespace {self.operator_namespace}")  # fmt: skip
        try:
            external_id, principal = await asyncio.to_thread(
                trust.trusted_values, self.kube, self.operator_namespace, namespace, name
            )
        except CliError as error:
            return RoleTrust(policy="", problem=error.message.rstrip("."), command=command)
        if not principal:
            return RoleTrust(policy="", command=command, problem=(
                f"the operator has not recorded its AWS principal on Secret "
                f"{self.operator_namespace}/{INSTALLATION_SECRET} yet"))  # fmt: skip
        policy = trust.trust_policy(principal, external_id, namespace, name)
        return RoleTrust(policy=json.dumps(policy, indent=2), problem="", command=command)

    async def permissions(self, namespace: str) -> actions.Permissions:
        """What RBAC lets this identity do in ``namespace``; asked again after a while."""
        now = time.monotonic()
        known = self._permissions.get(namespace)
        if known is None or now - known[0] > PERMISSIONS_TTL:
            allowed = await asyncio.to_thread(actions.permissions, self.kube, namespace)
            known = self._permissions[namespace] = (now, allowed)
        return known[1]

    # -- actions ------------------------------------------------------------------------

    async def act(self, request: web.Request) -> web.StreamResponse:
        """One action, then back to a page (POST, redirect, GET), which shows what
        happened. An action RBAC does not allow is not offered; one forced through gets
        the API server's refusal, in its words."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        action = request.path.rsplit("/", 1)[1]
        form = await request.post()
        field = functools.partial(_text, form)
        page = f"/credentials/{namespace}/{name}"
        if action == "delete" and field("confirm") != "yes":
            found = self._credential(request)
            if isinstance(found, web.Response):
                return found
            return self._render(request, "delete.html", title=f"Delete {name}?",
                                row=views.credential_row(found, self.clock()))  # fmt: skip
        work: Callable[[], str] = {
            "rotate": lambda: actions.rotate_with(self.kube, namespace, name, field("key")),
            "rotate-now": lambda: actions.rotate_now(self.kube, namespace, name),
            "pause": lambda: actions.set_paused(self.kube, namespace, name, True),
            "resume": lambda: actions.set_paused(self.kube, namespace, name, False),
            "delete": lambda: actions.delete(self.kube, namespace, name),
            "break-glass": lambda: actions.break_glass(self.kube, namespace, name, field("reason")),
        }[action]
        session = request[SESSION]
        try:
            done = await asyncio.to_thread(work)
        except CliError as error:
            logger.info("%s of %s/%s refused: %s", action, namespace, name, error.message)
            self.flashes.setdefault(session, []).append(refusal(error, page))
            return web.Response(status=303, headers={"Location": page})
        logger.info("%s of %s/%s: done", action, namespace, name)
        self.flashes.setdefault(session, []).append(Flash("ok", done))
        gone = action in ("delete", "break-glass")
        return web.Response(status=303, headers={"Location": "/" if gone else page})

    # -- live updates -------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``change`` whenever the cache changes (at most two a
        second); the page's script then fetches the page again and swaps what changed."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        changed = asyncio.Event()

        def listener(kind: str, changes: list[Any]) -> None:
            if changes:
                changed.set()

        self.cache.listeners.append(listener)
        try:
            await response.write(b": live\n\n")
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), KEEP_ALIVE)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                changed.clear()
                await response.write(b"event: change\ndata: {}\n\n")
                await asyncio.sleep(LIVE_INTERVAL)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.cache.listeners.remove(listener)
        return response

    async def clusters_page(self, request: web.Request) -> web.Response:
        await self.cache.wait_synced(SYNC_WAIT)
        found = self._credential(request)
        if isinstance(found, web.Response):
            return found
        metadata = found["metadata"]
        bound = self.cache.clusters.by("credential", (metadata["namespace"], metadata["name"]))
        keys = views.associated(found, bound)
        rows = views.cluster_rows(found, keys, self.cache.cluster_map(keys))
        row = views.credential_row(found, self.clock())
        return self._render(
            request,
            "clusters.html",
            title=f"Clusters of {row.name} · Cloud Credentials",
            row=row,
            rows=rows,
            columns=views.CLUSTER_COLUMNS,
            revision=str((found.get("status") or {}).get("revision") or "-"),
            truncated=bool((found.get("status") or {}).get("clustersTruncated")),
        )

    async def _events(self, namespace: str, name: str) -> tuple[list[views.EventView], str]:
        """The credential's recent Events, read when its page is shown (one selected LIST
        of a few objects), and what went wrong when they cannot be read."""
        selector = f"involvedObject.kind=CloudCredential,involvedObject.name={name}"
        try:
            listing = await asyncio.to_thread(
                api.call,
                f"reading the Events of {namespace}/{name}",
                self.kube.core.list_namespaced_event,
                namespace,
                field_selector=selector,
            )
        except CliError as error:
            return [], error.message
        items = self.kube.api.sanitize_for_serialization(listing).get("items") or []
        return views.event_views(items, EVENTS_SHOWN), ""

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        asset = STATIC / name
        if "/" in name or name.startswith(".") or not asset.is_file():
            raise web.HTTPNotFound()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.Response(body=asset.read_bytes(), content_type=content_type)


def _text(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def refusal(error: CliError, page: str) -> Flash:
    """An action's failure in words: a 403 says that Kubernetes refused; a refused delete
    offers the credential's clusters."""
    text = error.message
    if isinstance(error, ApiError) and error.status == 403:
        text = f"Kubernetes refused this (HTTP 403 Forbidden). {text}"
    link = (page + "/clusters", "View Associated Clusters") if "delet" in text else None
    return Flash("error", text, link)


async def check_access(kube: api.Kube, namespace: str | None) -> None:
    """One small LIST of each kind, so that a user who may not list them hears it now, in
    the API server's words, rather than from a page that never fills."""
    custom = kube.custom
    for plural, kind in ((CREDENTIAL_PLURAL, "CloudCredentials"), (CLUSTER_PLURAL, "Clusters")):
        where = f"in {namespace}" if namespace else "in every namespace"
        if namespace is None:
            call = functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, plural)
        else:
            call = functools.partial(
                custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
            )
        await asyncio.to_thread(api.call, f"listing {kind} {where}", call, limit=1)


async def serve(
    kube: api.Kube,
    namespace: str | None,
    port: int,
    open_browser: bool,
    out: IO[str] = sys.stdout,
    started: Callable[[Console], None] | None = None,
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE,
) -> None:
    """Serve until cancelled (Ctrl-C). ``namespace`` None: every namespace."""
    await check_access(kube, namespace)
    cache = ConsoleCache(kube, namespace)
    cache.start(asyncio.get_running_loop())
    console = Console(kube, cache, operator_namespace=operator_namespace)
    # A short shutdown: open live-update streams would hold Ctrl-C for a minute.
    runner = web.AppRunner(console.app(), access_log_class=AccessLogger, access_log=logger,
                           shutdown_timeout=1.0)  # fmt: skip
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, port)
        try:
            await site.start()
        except OSError as error:
            raise CliError(f"cannot listen on {HOST}:{port}: {error.strerror}") from None
        console.port = runner.addresses[0][1]
        url = console.login_url()
        print(f"Cloud Credentials console for {cache.namespace or 'every namespace'}:", file=out)
        print(f"  {url}", file=out)
        print("The link opens one browser session, once. Ctrl-C stops the console.", file=out)
        out.flush()
        if open_browser:
            await asyncio.to_thread(webbrowser.open, url)
        if started is not None:
            started(console)
        await asyncio.Event().wait()
    finally:
        cache.stop()
        await runner.cleanup()
