"""A real browser for the console's tests: Debian's Chromium, headless, driven over its
own DevTools protocol (a WebSocket, with aiohttp) — no browser download, no driver.

``Browser.start`` launches Chromium with a fresh profile and the flags this machine's
closed network needs, attaches to one page, records every request the page makes
(``requests``) and what it logged to its console (``problems``: errors, CSP reports).
``chromium()`` finds the executable; tests skip with the reason when there is none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",  # root, in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no update checks, sync, component downloads
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--remote-debugging-port=0",  # a free port, written to DevToolsActivePort
    "--window-size=1280,900",
]
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], http: aiohttp.ClientSession,
                 socket: aiohttp.ClientWebSocketResponse) -> None:  # fmt: skip
        self.process = process
        self.http = http
        self.socket = socket
        self.session = ""
        self.requests: list[str] = []
        self.problems: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, executable: str, profile: Path) -> Browser:
        profile.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=(profile / "chromium.log").open("wb"),
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if process.poll() is not None or loop.time() > deadline:
                process.kill()
                log = (profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not start: {log}")
            await asyncio.sleep(0.05)
        port, path = active.read_text().splitlines()[:2]
        http = aiohttp.ClientSession()
        socket = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        browser = cls(process, http, socket)
        target = await browser.call("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = await browser.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, page=False
        )
        browser.session = attached["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            await browser.call(f"{domain}.enable")
        return browser

    async def _read(self) -> None:
        async for message in self.socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            method, params = data.get("method"), data.get("params") or {}
            if method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])
            elif method == "Page.loadEventFired":
                self._loaded.set()
            elif method == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(params.get("exceptionDetails"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                self.problems.append(str(params["entry"].get("text"))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                self.problems.append(json.dumps(params.get("args"))[:500])

    async def call(
        self, method: str, params: dict[str, Any] | None = None, page: bool = True
    ) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self.socket.send_str(json.dumps(message))
        answer = await asyncio.wait_for(future, CALL_TIMEOUT)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return dict(answer.get("result") or {})

    async def goto(self, url: str) -> None:
        """Navigate and wait for the page's load event (after any redirect)."""
        self._loaded.clear()
        result = await self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise RuntimeError(f"navigating to {url}: {result['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), CALL_TIMEOUT)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when a promise)."""
        result = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        })  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """Click the element and wait for the page it loads."""
        self._loaded.clear()
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        await asyncio.wait_for(self._loaded.wait(), CALL_TIMEOUT)

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"{expression} stayed falsy for {timeout}s")
            await asyncio.sleep(0.1)

    async def press(self, key: str, code: str | None = None, shift: bool = False) -> None:
        """A key press as a person makes it (Tab, Enter, Space, the arrows)."""
        codes = {"Tab": 9, "Enter": 13, " ": 32, "ArrowDown": 40, "ArrowUp": 38}
        base = {"key": key, "code": code or key, "windowsVirtualKeyCode": codes.get(key, 0),
                "modifiers": 8 if shift else 0}  # fmt: skip
        text = {"Enter": "\r", " ": " "}.get(key)
        down = {**base, "type": "keyDown", **({"text": text} if text else {})}
        await self.call("Input.dispatchKeyEvent", down)
        await self.call("Input.dispatchKeyEvent", {**base, "type": "keyUp"})

    async def press_and_load(self, key: str) -> None:
        """Press a key that loads a page (Enter on a link or a button); wait for it."""
        self._loaded.clear()
        await self.press(key)
        await asyncio.wait_for(self._loaded.wait(), CALL_TIMEOUT)

    async def screenshot(self, path: Path) -> Path:
        result = await self.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # no answer is awaited: the browser goes away
            await self.socket.send_str(json.dumps({"id": 0, "method": "Browser.close"}))
        self._reader.cancel()
        await self.socket.close()
        await self.http.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
