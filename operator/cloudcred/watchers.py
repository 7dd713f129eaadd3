"""Watches the operator keeps outside kopf: referenced Secrets and Namespaces.

kopf watches whole kinds and would stream every Secret's data (and, in namespaced
mode, cannot watch Namespaces), so these two are followed here, each by a LIST + WATCH
loop in a background thread with the official client:

- Secrets, selected by the label ``cloudcred.io/credential-secret`` that the binder
  sets on every referenced Secret, so unrelated Secrets never reach the operator. For
  each it keeps a digest of the data, never the data; a changed digest makes the
  handlers check the credentials that use the Secret again (a new revision).
- Namespaces, fingerprinted by their labels; a change makes the binder decide the
  bindings of the clusters in that namespace again (``allowedNamespaces``).

A 410 Gone (the watch fell too far behind) or any other failure starts over with a
fresh LIST, after a short backoff, and reports what changed in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from cloudcred.constants import REFERENCED_LABEL

WATCH_SECONDS = 120  # the server ends each watch after this; the thread reconnects
MAX_BACKOFF = 30.0

logger = logging.getLogger("cloudcred.secrets")

Key = tuple[str, str]


def data_digest(data: dict[str, str] | None) -> str:
    """A digest of a Secret's data; the data itself is not kept."""
    canonical = json.dumps(data or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ChangeWatcher:
    """Follows one kind in a thread and reports objects whose fingerprint changed."""

    def __init__(
        self,
        name: str,
        list_function: Callable[..., Any],
        fingerprint: Callable[[Any], str],
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str, str], None],
        label_selector: str | None = None,
    ) -> None:
        """``on_change(namespace, name)`` runs on ``loop`` for every object whose
        fingerprint changed, or that appeared, after the first listing (namespace is
        "" for cluster-scoped objects)."""
        self.name = name
        self.list_function = list_function
        self.fingerprint = fingerprint
        self.loop = loop
        self.on_change = on_change
        self.label_selector = label_selector
        self.fingerprints: dict[Key, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cloudcred-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _selection(self) -> dict[str, Any]:
        return {"label_selector": self.label_selector} if self.label_selector else {}

    def _run(self) -> None:
        backoff = 1.0
        first = True
        while not self._stop.is_set():
            try:
                version = self._list(report=not first)
                first = False
                backoff = 1.0
                while not self._stop.is_set():
                    version = self._watch(version)
            except ApiException as error:
                if error.status != 410:
                    logger.warning("watching %s failed: HTTP %s %s; listing again",
                                   self.name, error.status, error.reason)  # fmt: skip
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as error:  # network trouble: the text cannot hold data
                logger.warning("watching %s failed: %s; listing again", self.name,
                               type(error).__name__)  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self, report: bool) -> str:
        """Take in every selected object; return the list's resourceVersion."""
        listing = self.list_function(**self._selection())
        fresh = {_key(item): self.fingerprint(item) for item in listing.items}
        changed = [key for key, value in fresh.items() if self.fingerprints.get(key) != value]
        self.fingerprints = fresh
        if report:  # after a re-list, report what changed while the watch was down
            for key in changed:
                self._report(key)
        return str(listing.metadata.resource_version)

    def _watch(self, version: str) -> str:
        """Follow changes from ``version`` until the server ends the watch; return the
        last resourceVersion seen."""
        stream = watch.Watch()
        for event in stream.stream(
            self.list_function,
            resource_version=version,
            timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True,
            **self._selection(),
        ):
            if self._stop.is_set():
                break
            self._take(event)
        return str(stream.resource_version or version)

    def _take(self, event: dict[str, Any]) -> None:
        if event["type"] == "BOOKMARK":
            return
        item = event["object"]
        key = _key(item)
        if event["type"] == "DELETED":
            self.fingerprints.pop(key, None)
            return
        value = self.fingerprint(item)
        if self.fingerprints.get(key) != value:
            self.fingerprints[key] = value
            self._report(key)

    def _report(self, key: Key) -> None:
        self.loop.call_soon_threadsafe(self.on_change, *key)


def _key(item: Any) -> Key:
    return (item.metadata.namespace or "", item.metadata.name)


def secret_watcher(
    api: client.ApiClient, loop: asyncio.AbstractEventLoop, on_change: Callable[[str, str], None]
) -> ChangeWatcher:
    """Referenced Secrets, by the digest of their data."""
    core = client.CoreV1Api(api)
    return ChangeWatcher("secrets", core.list_secret_for_all_namespaces,
                         lambda item: data_digest(item.data), loop, on_change,
                         label_selector=REFERENCED_LABEL)  # fmt: skip


def namespace_watcher(
    api: client.ApiClient, loop: asyncio.AbstractEventLoop, on_change: Callable[[str, str], None]
) -> ChangeWatcher:
    """Namespaces, by their labels."""
    core = client.CoreV1Api(api)
    return ChangeWatcher(
        "namespaces", core.list_namespace, lambda item: data_digest(item.metadata.labels),
        loop, on_change,
    )  # fmt: skip
