"""Noticing changes to the data of the Secrets that credentials reference.

A label-selected watch (``cloudcred.io/credential-secret``, set by the binder on every
referenced Secret) in a background thread, so the operator never streams unrelated
Secrets. For each Secret it keeps only a digest of the data, never the data, and
reports a Secret whose digest changed; the handlers then re-check the credentials
that use it, which gives them a new revision. A 410 Gone (the watch fell too far
behind) or any other failure starts over with a fresh LIST, after a short backoff.
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


class SecretWatcher:
    def __init__(
        self,
        api: client.ApiClient,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str, str], None],
    ) -> None:
        """``on_change(namespace, name)`` is called on ``loop`` for every labelled Secret
        whose data changed, or that appeared after the first listing."""
        self.core = client.CoreV1Api(api)
        self.loop = loop
        self.on_change = on_change
        self.digests: dict[Key, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloudcred-secrets", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

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
                    logger.warning("watching Secrets failed: HTTP %s %s; listing again",
                                   error.status, error.reason)  # fmt: skip
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as error:  # network trouble: the text cannot hold data
                logger.warning("watching Secrets failed: %s; listing again", type(error).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self, report: bool) -> str:
        """Take in every labelled Secret; return the list's resourceVersion."""
        listing = self.core.list_secret_for_all_namespaces(label_selector=REFERENCED_LABEL)
        fresh = {
            (item.metadata.namespace, item.metadata.name): data_digest(item.data)
            for item in listing.items
        }
        changed = [key for key, digest in fresh.items() if self.digests.get(key) != digest]
        self.digests = fresh
        if report:  # after a re-list, report what changed while the watch was down
            for key in changed:
                self._report(key)
        return str(listing.metadata.resource_version)

    def _watch(self, version: str) -> str:
        """Follow changes from ``version`` until the server ends the watch; return the
        last resourceVersion seen."""
        stream = watch.Watch()
        for event in stream.stream(
            self.core.list_secret_for_all_namespaces,
            label_selector=REFERENCED_LABEL,
            resource_version=version,
            timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True,
        ):
            if self._stop.is_set():
                break
            self._take(event)
        return str(stream.resource_version or version)

    def _take(self, event: dict[str, Any]) -> None:
        item = event["object"]
        if event["type"] == "BOOKMARK":
            return
        key = (item.metadata.namespace, item.metadata.name)
        if event["type"] == "DELETED":
            self.digests.pop(key, None)
            return
        digest = data_digest(item.data)
        if self.digests.get(key) != digest:
            self.digests[key] = digest
            self._report(key)

    def _report(self, key: Key) -> None:
        self.loop.call_soon_threadsafe(self.on_change, *key)
