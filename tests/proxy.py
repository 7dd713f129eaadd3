"""A loopback TCP proxy for fault tests: it stands between a client (the operator) and
a server (the API server, moto) on 127.0.0.1 and can stop answering.

- ``black_hole()``: every open connection stays open and forwards nothing again, in
  either direction, even after ``forward()`` (like a connection whose NAT entry was
  dropped: nothing reaches either end, not even a close); new connections are accepted
  and forward nothing. ``forward()``: new connections forward again.
- ``hold``: with it, the proxy reads the client's requests as HTTP/1.1 and asks
  ``hold(head)`` (the request line and headers; with ``hold_bodies``, the body after them)
  how many seconds to keep each one before passing it on (a slow LIST, a slow provider
  call); a negative answer drops the request and closes the connection (a request that
  never arrived). Answers pass unchanged.
- ``answered``: with it, the proxy reads requests and answers as HTTP/1.1 and calls
  ``answered(request, status_line)`` (the request as ``hold`` sees it) once an answer has
  arrived whole from the server, before its end is passed on (a streamed answer, a
  watch, passes as it comes, all but its last chunk); ``False`` drops the rest and closes
  the client's connection: the server did the call, the client never learns the outcome
  (a crash right after a call, or an answer lost on the way).
- ``tls``: the proxy ends TLS itself (with a certificate the client trusts) and opens
  its own TLS connection to the server (with a client certificate), so ``hold`` can
  read requests to the API server. Without it, TLS passes through untouched.

The proxy runs an asyncio loop in a daemon thread and stops itself after ``lifetime``
seconds at the latest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CHUNK = 65536


@dataclass(frozen=True)
class Tls:
    """The proxy's side of TLS: it presents ``cert``/``key`` to the client and connects
    upstream trusting ``ca``, with the client certificate ``client_cert``/``client_key``."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def of_control_plane(cls, pki: Path) -> Tls:
        """The local control plane's certificates (its serving certificate covers
        127.0.0.1; the admin's client certificate)."""
        return cls(pki / "server.crt", pki / "server.key", pki / "ca.crt",
                   pki / "admin.crt", pki / "admin.key")  # fmt: skip

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        context.set_alpn_protocols(["http/1.1"])
        return context


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    dead: bool
    upstream: asyncio.StreamWriter | None = None
    # The requests passed on and not answered yet, oldest first (with ``answered``).
    asked: collections.deque[str] = field(default_factory=collections.deque)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()


@dataclass
class LoopbackProxy:
    upstream_host: str
    upstream_port: int
    tls: Tls | None = None
    hold: Callable[[str], float] | None = None
    hold_bodies: bool = False  # ``hold`` and ``answered`` see each request's body too
    answered: Callable[[str, str], bool] | None = None
    lifetime: float = 900.0
    port: int = 0
    # Request lines seen (with hold), and connections accepted: (monotonic time, text).
    requests: list[tuple[float, str]] = field(default_factory=list)
    accepted: int = 0
    _forwarding: bool = True
    _connections: set[_Connection] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The proxy's address, in the scheme its client speaks to it."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> LoopbackProxy:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name=f"loopback-proxy-{self.upstream_port}")  # fmt: skip
        self._thread.start()
        if not ready.wait(10) or not self.port:
            raise RuntimeError("the loopback proxy did not start")
        return self

    def black_hole(self) -> None:
        """Every open connection is dead from now on; new ones too, until forward()."""
        self._call(self._black_hole)

    def forward(self) -> None:
        """New connections forward again (the dead ones stay dead)."""
        self._call(self._forward)

    def stop(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
            self._call(self._stop)
        self._thread.join(timeout=10)

    # -- on the proxy's loop -------------------------------------------------------------

    def _call(self, function: Callable[[], None]) -> None:
        assert self._loop is not None

        async def call() -> None:
            function()

        asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def _black_hole(self) -> None:
        self._forwarding = False
        for connection in self._connections:
            connection.dead = True

    def _forward(self) -> None:
        self._forwarding = True

    def _stop(self) -> None:
        assert self._stopped is not None
        self._stopped.set()

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(ready))
        finally:
            self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0,
            ssl=self.tls.server_context() if self.tls else None,
        )  # fmt: skip
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self.lifetime)
        server.close()
        for connection in list(self._connections):
            connection.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the proxy stops
            await self._connect(reader, writer)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        connection = _Connection(client=writer, dead=not self._forwarding)
        self._connections.add(connection)
        try:
            if connection.dead:  # accepted into the black hole: read and drop
                await self._pipe(reader, None, connection)
                return
            try:
                upstream_reader, upstream = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.upstream_host, self.upstream_port,
                        ssl=self.tls.client_context() if self.tls else None,
                        server_hostname=self.upstream_host if self.tls else None,
                    ),
                    timeout=10,
                )  # fmt: skip
            except (OSError, TimeoutError):
                return
            connection.upstream = upstream
            if self.hold or self.answered:
                to_server = self._requests(reader, upstream, connection)
            else:
                to_server = self._pipe(reader, upstream, connection)
            if self.answered:
                to_client = self._answers(upstream_reader, writer, connection)
            else:
                to_client = self._pipe(upstream_reader, writer, connection)
            await asyncio.gather(to_server, to_client, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            connection.close()

    async def _pipe(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter | None,
        connection: _Connection,
    ) -> None:  # fmt: skip
        """Copy bytes until the source ends; a dead connection swallows them, and does not
        pass the end on either (the other side never learns)."""
        try:
            while data := await source.read(CHUNK):
                if connection.dead or target is None:
                    continue
                target.write(data)
                await target.drain()
        except (OSError, ssl.SSLError):
            pass
        if not connection.dead:
            connection.close()
        elif target is None or target is connection.upstream:
            connection.client.close()  # the client went away: only its side ends
        elif connection.upstream is not None:
            connection.upstream.close()

    async def _requests(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:  # fmt: skip
        """Pass HTTP/1.1 requests on one at a time, each after ``hold(head)`` seconds.
        A body of unknown length (chunked) makes the rest of the connection a plain pipe."""
        try:
            while True:
                try:
                    head = await source.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                text = head.decode("latin-1")
                headers = _headers(text)
                length = int(headers.get("content-length") or 0)
                body = await source.readexactly(length) if length else b""
                self.requests.append((time.monotonic(), text.split("\r\n", 1)[0]))
                request = text + body.decode("latin-1") if self.hold_bodies else text
                delay = self.hold(request) if self.hold else 0.0
                if delay < 0:
                    break  # dropped: the connection closes below
                if delay > 0:
                    await asyncio.sleep(delay)
                if connection.dead:
                    continue
                if self.answered:
                    connection.asked.append(request)
                target.write(head + body)
                await target.drain()
                if "chunked" in headers.get("transfer-encoding", ""):
                    await self._pipe(source, target, connection)
                    return
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        if not connection.dead:
            connection.close()
        else:
            connection.client.close()

    async def _answers(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:  # fmt: skip
        """Pass HTTP/1.1 answers on, each one's end only once ``answered`` agreed."""
        assert self.answered is not None
        try:
            while True:
                try:
                    head = await source.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                text = head.decode("latin-1")
                status_line = text.split("\r\n", 1)[0]
                status = int(status_line.split(" ", 2)[1])
                if 100 <= status < 200:  # an interim answer: the final one follows
                    await _send(target, head, connection)
                    continue
                request = connection.asked.popleft() if connection.asked else ""
                headers = _headers(text)
                if request.startswith("HEAD ") or status in (204, 304):
                    last = head
                elif "chunked" in headers.get("transfer-encoding", ""):
                    await _send(target, head, connection)
                    last = await self._chunks(source, target, connection)
                elif "content-length" in headers:
                    last = head + await source.readexactly(int(headers["content-length"]))
                else:  # the answer ends where the server closes
                    last = head + await source.read()
                if not self.answered(request, status_line):
                    break  # the answer is lost: the client's connection closes without it
                await _send(target, last, connection)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError):  # fmt: skip
            pass
        connection.close()

    @staticmethod
    async def _chunks(
        source: asyncio.StreamReader, target: asyncio.StreamWriter, connection: _Connection
    ) -> bytes:
        """Pass a chunked body on as it comes; return its last chunk and trailer, unsent."""
        while True:
            line = await source.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                trailer = b""
                while (part := await source.readuntil(b"\r\n")) != b"\r\n":
                    trailer += part
                return line + trailer + b"\r\n"
            await _send(target, line + await source.readexactly(size + 2), connection)


def _headers(head: str) -> dict[str, str]:
    """An HTTP/1.1 head's header fields, by lower-case name."""
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    }


async def _send(target: asyncio.StreamWriter, data: bytes, connection: _Connection) -> None:
    if not connection.dead:
        target.write(data)
        await target.drain()


def kubeconfig_via(source: Path, url: str, path: Path) -> Path:
    """A copy of the kubeconfig ``source`` whose clusters' server is ``url``."""
    config = yaml.safe_load(source.read_text())
    for cluster in config.get("clusters") or []:
        cluster["cluster"]["server"] = url
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
