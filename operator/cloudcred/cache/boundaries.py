"""The operator's own LIST+WATCH of CredentialBoundaries, into ``Caches.boundaries``.

Cluster-scoped objects, followed in a thread with the official client like Namespaces
(``informers.Informer``, which deserializes core kinds only): kopf serves cluster-scoped
kinds in namespaced mode only while a watched namespace exists, and stops its watches
while peering pauses the replica; boundaries must be known whatever the operator
watches. Each start, and each restart after a failure or a 410 Gone, is a paginated
LIST taken in whole by ``Store.replace`` (the store is not synced in between, so no
credential is checked meanwhile), then a WATCH from its resourceVersion; the LIST is
repeated every ``relist_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from cloudcred.api.boundary import CredentialBoundarySpec
from cloudcred.api.common import LabelSelector
from cloudcred.boundary import Boundary
from cloudcred.cache.store import Change, Key, Store
from cloudcred.constants import BOUNDARY_PLURAL, GROUP, VERSION
from cloudcred.kube import describe_error

PAGE_SIZE = 500
MAX_BACKOFF = 30.0

logger = logging.getLogger("cloudcred.cache")


class BoundaryInformer:
    def __init__(
        self,
        store: Store[Boundary],
        api: client.ApiClient,
        sink: Callable[[list[Change[Boundary]]], None],
        loop: asyncio.AbstractEventLoop,
        watch_timeout: int,
        relist_interval: float,
    ) -> None:
        self.store = store
        self.custom = client.CustomObjectsApi(api)
        self.sink = sink
        self.loop = loop
        self.watch_timeout = watch_timeout
        self.relist_interval = relist_interval
        self.last_progress = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloudcred-boundary", daemon=True)

    @property
    def name(self) -> str:
        return self.store.kind

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _list_function(self, **kwargs: Any) -> Any:
        # (connect, read): the server ends each watch after watch_timeout seconds.
        return self.custom.list_cluster_custom_object(
            GROUP, VERSION, BOUNDARY_PLURAL, _request_timeout=(10, self.watch_timeout + 15),
            **kwargs,
        )  # fmt: skip

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 1.0
                relist_at = time.monotonic() + self.relist_interval
                while not self._stop.is_set() and time.monotonic() < relist_at:
                    version = self._watch(version)
            except Exception as error:  # 410 Gone, network trouble: list again
                self.loop.call_soon_threadsafe(self._unsync)
                if not (isinstance(error, ApiException) and error.status == 410):
                    logger.warning("watching %ss failed (%s); listing again in %.0fs",
                                   self.name, describe_error(error), backoff)  # fmt: skip
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self) -> str:
        asked_at = time.monotonic()
        listed: dict[Key, Boundary] = {}
        token = None
        while True:
            page = self._list_function(limit=PAGE_SIZE, _continue=token)
            for body in page.get("items") or []:
                found = _convert(body)
                listed[("", found.name)] = found
            token = (page.get("metadata") or {}).get("continue")
            self.last_progress = time.monotonic()
            if not token:
                break
        self.loop.call_soon_threadsafe(self._replace, listed, asked_at)
        return str(page["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        stream = watch.Watch()
        for event in stream.stream(
            self._list_function,
            resource_version=version,
            timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True,
        ):
            self.last_progress = time.monotonic()
            if self._stop.is_set():
                break
            # Custom objects arrive as dicts, and the client does not follow their
            # resourceVersion (an ERROR event, such as 410 Gone, raises ApiException).
            kind, body = event["type"], event["object"]
            version = str(body["metadata"].get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            key = ("", body["metadata"]["name"])
            found = None if kind == "DELETED" else _convert(body)
            self.loop.call_soon_threadsafe(self._apply, key, found)
        self.last_progress = time.monotonic()
        return version

    def _unsync(self) -> None:
        self.store.unsync()
        self.sink([])

    def _replace(self, listed: dict[Key, Boundary], asked_at: float) -> None:
        self.sink(self.store.replace(listed, asked_at))

    def _apply(self, key: Key, value: Boundary | None) -> None:
        change = self.store.delete(key) if value is None else self.store.apply(key, value)
        if change.old != change.new:
            self.sink([change])


def _convert(body: dict[str, Any]) -> Boundary:
    """The boundary; one that this version cannot read (stored under another schema)
    fails closed: it selects every namespace and allows no provider until fixed."""
    try:
        return Boundary.from_body(body)
    except ValidationError:
        name = str(body["metadata"]["name"])
        logger.error("CredentialBoundary %s cannot be read by this operator version: no "
                     "credential is allowed until it is fixed", name)  # fmt: skip
        return Boundary(name, CredentialBoundarySpec(namespace_selector=LabelSelector()))
