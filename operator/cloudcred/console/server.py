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
import logging
import mimetypes
import sys
import webbrowser
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cloudcred import __version__
from cloudcred.cli import api
from cloudcred.cli.errors import CliError
from cloudcred.console import views
from cloudcred.console.cache import ConsoleCache
from cloudcred.console.security import HEADERS, Sessions, allowed_hosts, same_origin
from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION

logger = logging.getLogger("cloudcred.console")
HOST = "127.0.0.1"
SYNC_WAIT = 10.0  # how long a page waits for the first LISTs before it shows what it has
EVENTS_SHOWN = 20
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


class Console:
    """The pages over one cache, for the sessions one login URL opens."""

    def __init__(
        self,
        kube: api.Kube,
        cache: ConsoleCache,
        port: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.sessions = Sessions(port)
        self.clock = clock
        self.templates = templates()

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
        app.router.add_get("/static/{file}", self.static)
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
        if token is not None:
            return self._log_in(request, token)
        session = self.sessions.session(request.cookies.get(self.sessions.cookie_name))
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
                request, 403, "This link was used already",
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
        events, events_error = await self._events(detail.row.namespace, detail.row.name)
        return self._render(
            request,
            "detail.html",
            title=f"{detail.row.name} · Cloud Credentials",
            detail=detail,
            events=events,
            events_error=events_error,
        )

    async def clusters_page(self, request: web.Request) -> web.Response:
        await self.cache.wait_synced(SYNC_WAIT)
        found = self._credential(request)
        if isinstance(found, web.Response):
            return found
        listed = [
            (str(c.get("namespace", "")), str(c.get("name", "")))
            for c in (found.get("status") or {}).get("clusters") or []
        ]
        rows = views.cluster_rows(found, self.cache.cluster_map(listed))
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
) -> None:
    """Serve until cancelled (Ctrl-C). ``namespace`` None: every namespace."""
    await check_access(kube, namespace)
    cache = ConsoleCache(kube, namespace)
    cache.start(asyncio.get_running_loop())
    console = Console(kube, cache)
    runner = web.AppRunner(console.app(), access_log_class=AccessLogger, access_log=logger)
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
