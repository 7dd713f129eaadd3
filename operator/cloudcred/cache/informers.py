"""How the stores are filled.

``Informer``: the operator's own LIST+WATCH of one kind, in a background thread with
the official client (kopf watches whole kinds and would stream every Secret's data; in
namespaced mode it cannot watch Namespaces; each of its events costs more than the
work it leads to):

- Secrets, selected by the label ``cloudcred.io/credential-secret`` that the operator
  puts on every referenced Secret, so unrelated Secrets never reach the operator. When
  the watched namespaces are plain names, one informer per namespace (as client-go's
  multi-namespace cache does): other namespaces' Secrets are never even listed. LISTs
  of Secrets take small pages: a page of 1 MiB Secrets is held whole while it is read;
- Namespaces, for their labels (``allowedNamespaces``);
- Clusters, each kept as a ``ClusterInfo``: one informer per watched namespace when
  they are plain names, else one for all namespaces, filtered (a fleet of ten thousand
  writes back every status the operator writes: kopf handled each such event with
  four times the CPU of everything the operator then does about it).

Each start, and each restart after a failure or a 410 Gone, is a paginated LIST
taken in whole by ``Store.replace`` (the store is not synced in between), then a
WATCH from the LIST's resourceVersion, resumed each time the server ends it from the
last version it delivered; the LIST is repeated every ``relist_interval``. Every
request has a timeout: the server ends each watch after ``watch_timeout`` seconds, and
a connection silent for longer than that is given up.
``last_progress`` tells ``/healthz`` when the informer last heard from the API server.

``CustomResourceLister``: kopf feeds the CloudCredential store from its watch (its
handlers, daemons and finalizer are there), but a kopf listing (start, 410 Gone) sends
no deletion for objects that went away in the gap, and nothing says when it is
complete. So the operator LISTs them itself (paginated; the watched namespaces one by
one when they are plain names) at start, shortly after every kopf listing (the store
is not synced until then), and every ``relist_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from cloudcred.cache import DeliveredInfo, SecretInfo
from cloudcred.cache.store import Change, Key, Store
from cloudcred.constants import GROUP, IN_USE_LABEL, REFERENCED_LABEL
from cloudcred.kube import Kube, describe_error

T = TypeVar("T")
PAGE_SIZE = 500
# Secrets can be 1 MiB each, and the client holds a page about five times over while
# it reads it (bytes, text, parsed JSON, its objects): measured with 300 such Secrets,
# a page of 50 peaked at 448 MiB of the 512 MiB limit, a page of 20 at 285 MiB.
SECRET_PAGE_SIZE = 20
# CloudCredentials and Clusters: a Cluster with its managedFields is ~17 KB once parsed,
# a page of 500 ~8 MB more while it is read.
LISTER_PAGE_SIZE = 100
MAX_BACKOFF = 30.0
RELIST_DEBOUNCE = 2.0  # after kopf's last listing event: a listing sends every object

logger = logging.getLogger("cloudcred.cache")

Sink = Callable[[list[Change[Any]]], None]


def namespace_matcher(patterns: list[str]) -> Callable[[str], bool]:
    """kopf's namespace patterns: globs, comma-separated, ``!`` to exclude; none: all."""
    items = [item.strip() for pattern in patterns for item in pattern.split(",") if item.strip()]
    include = [item for item in items if not item.startswith("!")]
    exclude = [item[1:] for item in items if item.startswith("!")]

    def watched(namespace: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(namespace, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(namespace, p) for p in exclude)

    return watched


def plain_namespaces(patterns: list[str]) -> list[str] | None:
    """The watched namespaces when they are all plain names (no glob, no ``!``), sorted;
    None when every namespace is watched or a pattern selects them."""
    items = [item.strip() for pattern in patterns for item in pattern.split(",") if item.strip()]
    if not items or any(item.startswith("!") or set(item) & set("*?[]") for item in items):
        return None
    return sorted(set(items))


class SyncScopes:
    """The namespaces whose own informers fill one store together: the store is synced
    only while every one of them has taken in a LIST since its last watch gap."""

    def __init__(self, namespaces: list[str]) -> None:
        self.unsynced = set(namespaces)


class Informer(Generic[T]):
    """LIST+WATCH of one kind in a thread; the store is updated on the event loop, then
    ``sink`` gets what changed. Core kinds arrive as the client's objects, custom ones
    (``CustomObjectsApi``) as dicts: ``convert`` takes what the list function gives."""

    def __init__(
        self,
        store: Store[T],
        list_function: Callable[..., Any],
        convert: Callable[[Any], T],
        sink: Sink,
        loop: asyncio.AbstractEventLoop,
        watch_timeout: int,
        relist_interval: float,
        label_selector: str | None = None,
        watched: Callable[[str], bool] = lambda _: True,
        page_size: int = PAGE_SIZE,
        namespace: str | None = None,
        scopes: SyncScopes | None = None,
        field_selector: str | None = None,
    ) -> None:
        """``watched(namespace)``: objects in other namespaces are left out (another
        operator may own them). ``namespace``: a namespaced ``list_function`` for this
        one namespace, sharing the store with the other namespaces' informers of the
        same ``scopes``."""
        self.store = store
        self.list_function = list_function
        self.convert = convert
        self.sink = sink
        self.loop = loop
        self.watch_timeout = watch_timeout
        self.relist_interval = relist_interval
        self.label_selector = label_selector
        self.watched = watched
        self.page_size = page_size
        self.namespace = namespace
        self.scopes = scopes
        self.field_selector = field_selector
        self.last_progress = time.monotonic()
        self._stop = threading.Event()
        suffix = f"-{namespace}" if namespace else ""
        self._thread = threading.Thread(
            target=self._run, name=f"cloudcred-{store.kind.lower()}{suffix}", daemon=True
        )

    @property
    def name(self) -> str:
        return f"{self.store.kind} ({self.namespace})" if self.namespace else self.store.kind

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _selection(self) -> dict[str, Any]:
        # (connect, read): the server ends each watch after watch_timeout seconds, so a
        # longer silence means the connection is dead.
        selection: dict[str, Any] = {"_request_timeout": (10, self.watch_timeout + 15)}
        if self.namespace:
            selection["namespace"] = self.namespace
        if self.label_selector:
            selection["label_selector"] = self.label_selector
        if self.field_selector:
            selection["field_selector"] = self.field_selector
        return selection

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 1.0
                # A fresh LIST every relist_interval repairs what a watch might have
                # missed without a gap it noticed (the store stays synced meanwhile).
                relist_at = time.monotonic() + self.relist_interval
                while not self._stop.is_set() and time.monotonic() < relist_at:
                    version = self._watch(version)
            except Exception as error:  # 410 Gone, network trouble: list again
                self._post(self._unsync)
                if not (isinstance(error, ApiException) and error.status == 410):
                    logger.warning("watching %ss failed (%s); listing again in %.0fs",
                                   self.name, describe_error(error), backoff)  # fmt: skip
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self) -> str:
        """A full, paginated LIST, taken in whole; return its resourceVersion."""
        asked_at = time.monotonic()
        listed: dict[Key, T] = {}
        token = None
        while True:
            page = self.list_function(limit=self.page_size, _continue=token, **self._selection())
            items, token, version = _page(page)
            for item in items:
                key = _key(item)
                if self.watched(key[0]):
                    # What the store holds already is kept, not a second copy of it
                    # (replace would leave it as it is).
                    value, known = self.convert(item), self.store.get(key)
                    listed[key] = known if known is not None and known == value else value
            self.last_progress = time.monotonic()
            if not token:
                break
        self._post(self._replace, listed, asked_at)
        return version

    def _watch(self, version: str) -> str:
        """Follow changes from ``version`` until the server ends the watch; return the
        last resourceVersion seen."""
        stream = watch.Watch()
        for event in stream.stream(
            self.list_function,
            resource_version=version,
            timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True,
            **self._selection(),
        ):
            self.last_progress = time.monotonic()
            if self._stop.is_set():
                break
            item = event["object"]
            # The version to resume from is followed here, not by the client: it follows
            # versions only for a list function whose docstring names its return type,
            # which a partial's does not. A resume from the LIST's version instead
            # replays every change since, old states over newer ones, or fails with
            # 410 Gone and a full LIST, with the workers stopped until it is in.
            metadata = item["metadata"] if isinstance(item, dict) else None
            seen = metadata.get("resourceVersion") if metadata is not None else \
                item.metadata.resource_version  # fmt: skip
            version = str(seen or version)
            if event["type"] == "BOOKMARK":
                continue
            key = _key(item)
            if not self.watched(key[0]):
                continue
            if event["type"] == "DELETED":
                self._post(self._apply, key, None)
            else:
                self._post(self._apply, key, self.convert(item))
        self.last_progress = time.monotonic()
        return version

    def _post(self, function: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(function, *args)

    def _unsync(self) -> None:
        if self.scopes is not None and self.namespace:
            self.scopes.unsynced.add(self.namespace)
        self.store.unsync()
        self.sink([])

    def _replace(self, listed: dict[Key, T], asked_at: float) -> None:
        changes = self.store.replace(listed, asked_at, namespace=self.namespace)
        if self.scopes is not None and self.namespace:
            self.scopes.unsynced.discard(self.namespace)
            if self.scopes.unsynced:  # another namespace's LIST is still to come
                self.store.unsync()
        self.sink(changes)

    def _apply(self, key: Key, value: T | None) -> None:
        change = self.store.delete(key) if value is None else self.store.apply(key, value)
        if change.old != change.new:
            self.sink([change])


def _key(item: Any) -> Key:
    if isinstance(item, dict):
        return (item["metadata"].get("namespace") or "", item["metadata"]["name"])
    return (item.metadata.namespace or "", item.metadata.name)


def _page(page: Any) -> tuple[list[Any], str | None, str]:
    """A LIST page's items, continue token and resourceVersion (object or dict)."""
    if isinstance(page, dict):
        metadata = page.get("metadata") or {}
        return page.get("items") or [], metadata.get("continue"), str(metadata["resourceVersion"])
    return page.items, page.metadata._continue, str(page.metadata.resource_version)


class CustomResourceLister(Generic[T]):
    """Full LISTs of one of our kinds into a store that kopf's watch feeds."""

    def __init__(
        self,
        store: Store[T],
        kube: Kube,
        plural: str,
        convert: Callable[[dict[str, Any]], T],
        sink: Sink,
        watched: Callable[[str], bool],
        namespaces: list[str] | None = None,
    ) -> None:
        """``namespaces``: the watched namespaces when they are plain names, each
        LISTed on its own (the objects of other namespaces are never read); None:
        one LIST of every namespace, filtered by ``watched``."""
        self.store = store
        self.kube = kube
        self.plural = plural
        self.convert = convert
        self.sink = sink
        self.watched = watched
        self.namespaces = namespaces
        self.last_progress = time.monotonic()
        self._soon: asyncio.TimerHandle | None = None
        self._wanted = asyncio.Event()
        self._wanted.set()  # the first LIST, at start

    @property
    def name(self) -> str:
        return self.store.kind

    def listing_seen(self) -> None:
        """kopf is listing the kind (start, or after a 410 Gone): deletions in the gap
        are missed, so the store is not synced until a LIST taken after kopf's last
        listing event is in."""
        self.store.unsync()
        self.sink([])
        if self._soon is not None:
            self._soon.cancel()
        self._soon = asyncio.get_running_loop().call_later(RELIST_DEBOUNCE, self._wanted.set)

    async def run(self, interval: float) -> None:
        """LIST when asked to, and every ``interval`` seconds; retry failures with a
        backoff (the store stays unsynced meanwhile if it was)."""
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), timeout=interval)
            self._wanted.clear()
            try:
                await self.relist()
                backoff = 1.0
            except Exception as error:  # the API is away: try again
                logger.warning("listing %ss failed (%s); again in %.0fs", self.name,
                               describe_error(error), backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                self._wanted.set()

    async def relist(self) -> None:
        asked_at = time.monotonic()
        listed: dict[Key, T] = {}
        for namespace in self.namespaces if self.namespaces is not None else [None]:
            pages = self.kube.list_pages(self.plural, namespace=namespace,
                                         page_size=LISTER_PAGE_SIZE)  # fmt: skip
            async for body in pages:
                metadata = body["metadata"]
                if self.watched(metadata["namespace"]):
                    key = (metadata["namespace"], metadata["name"])
                    value, known = self.convert(body), self.store.get(key)
                    # What the store holds already is kept, not a second copy of it
                    # (replace would leave it as it is): a LIST of ten thousand objects
                    # holds one page of them at a time, not the whole store twice.
                    listed[key] = known if known is not None and known == value else value
                self.last_progress = time.monotonic()
        # One replace for all of them: the store holds the watched namespaces only.
        changes = self.store.replace(listed, asked_at)
        self.last_progress = time.monotonic()
        logger.debug("listed %d %s(s): %d change(s)", len(listed), self.name, len(changes))
        self.sink(changes)  # also when nothing changed: the store is synced again


def data_digest(data: dict[str, str] | None) -> str:
    """A digest of a Secret's data, to notice a change; the data itself is not kept."""
    canonical = json.dumps(data or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def secret_info(item: client.V1Secret) -> SecretInfo:
    labels = item.metadata.labels or {}
    return SecretInfo(
        referenced=labels.get(REFERENCED_LABEL) == "true",
        in_use=labels.get(IN_USE_LABEL) == "true",
        digest=data_digest(item.data),
    )


def delivered_info(item: client.V1Secret) -> DeliveredInfo:
    """A Secret labelled as the operator's: whose controller owner is a Cluster of ours
    (the UID there is what counts; a label anyone may set)."""
    owner = next((ref.uid for ref in item.metadata.owner_references or []
                  if ref.controller and ref.kind == "Cluster"
                  and ref.api_version.startswith(f"{GROUP}/")), None)  # fmt: skip
    labels = item.metadata.labels or {}
    return DeliveredInfo(str(item.metadata.uid), owner, labels.get(IN_USE_LABEL) == "true")


def namespace_labels(item: client.V1Namespace) -> dict[str, str]:
    return dict(item.metadata.labels or {})
