"""The installation key Secret while the operator runs (``controllers/installation.py``):
deleted, it is written back with the key the operator holds; changed, the operator
keeps its key and says so loudly. Over ``tests/fakekube.py`` and a fake clock: the real
wiring, store and reconciler, and the key never in a log, an Event or a metric.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cloudcred.config import Settings
from cloudcred.controllers.installation import RESTORES
from cloudcred.controllers.runner import Controllers
from cloudcred.installation import (
    INSTALLATION_SECRET,
    KEY_FIELD,
    PRINCIPAL_ANNOTATION,
    Installation,
    record_principal,
)
from cloudcred.metrics import StateCollector
from tests.fakekube import Clock, FakeKube, Operator

SYSTEM = "cloudcred-system"
SECRET = (SYSTEM, INSTALLATION_SECRET)
KEY = bytes(range(1, 33))
OTHER = bytes(range(101, 133))


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def stored(key: bytes) -> dict[str, str]:
    """The Secret's data as the operator writes it: the key in base64, as Secret data."""
    return {KEY_FIELD: base64.b64encode(base64.b64encode(key)).decode()}


def forms(key: bytes) -> list[str]:
    """Every way the key could show in text."""
    once = base64.b64encode(key)
    return [key.hex(), once.decode(), base64.b64encode(once).decode(), repr(key)[2:-1]]


def changed_gauge(operator: Operator) -> str:
    registry = CollectorRegistry()
    registry.register(StateCollector(operator.controllers))
    text = generate_latest(registry).decode()
    return "\n".join(line for line in text.splitlines() if "installation_key" in line)


async def started(kube: FakeKube, clock: Clock) -> Operator:
    kube.put_secret(*SECRET, stored(KEY))
    kube.secrets[SECRET]["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "cloudcred"}
    installation = Installation(KEY, SYSTEM)
    operator = Operator(kube, clock, installation=installation)
    operator.start_from(kube)
    # The operator's principal, as its first check of an AWS role records it.
    await record_principal(kube, installation, "arn:aws:iam::1:role/op")  # type: ignore[arg-type]
    await operator.settle()
    kube.recorded.writes.clear()
    assert not kube.recorded.events, "a Secret holding the key in use is left alone"
    return operator


@run
async def test_a_deleted_installation_key_is_written_back_from_memory(
    kube: FakeKube, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    operator = await started(kube, clock)
    restores = RESTORES._value.get()

    kube.remove_secret(*SECRET)  # kubectl delete secret cloudcred-installation
    await operator.settle()

    assert [(w.verb, w.key) for w in kube.recorded.writes] == [("create", SECRET)]
    secret = kube.secrets[SECRET]
    assert secret["data"] == stored(KEY), "the same key, not a new one"
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "cloudcred"}
    # cloudcred trust-policy reads the principal there: it comes back too.
    assert secret["metadata"]["annotations"] == {PRINCIPAL_ANNOTATION: "arn:aws:iam::1:role/op"}
    ((kind, where, type_, reason, message),) = kube.recorded.events
    assert (kind, where, type_, reason) == ("Secret", SECRET, "Warning", "InstallationKeyDeleted")
    assert "was deleted" in message
    assert "back up" in message
    assert "wrote it back" in caplog.text
    assert RESTORES._value.get() == restores + 1
    # Its own write, echoed by the watch, queues nothing more.
    assert await operator.settle() == 0
    for text in (caplog.text, message, changed_gauge(operator)):
        for form in forms(KEY):
            assert form not in text


@run
async def test_a_changed_installation_key_is_reported_and_the_key_in_use_kept(
    kube: FakeKube, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    operator = await started(kube, clock)
    assert "cloudcred_installation_key_changed 0.0" in changed_gauge(operator)

    kube.put_secret(*SECRET, stored(OTHER))  # someone wrote another key
    await operator.settle()

    assert not kube.recorded.writes, "the operator neither rewrites nor takes the new key"
    assert operator.installation.key == KEY
    ((_, where, type_, reason, message),) = kube.recorded.events
    assert (where, type_, reason) == (SECRET, "Warning", "InstallationKeyChanged")
    assert "keeps using the key it loaded at start" in message
    assert "restore" in message
    assert "rollout restart" in message
    assert "cloudcred_installation_key_changed 1.0" in changed_gauge(operator)
    assert any(r.levelno == logging.ERROR and "InstallationKeyChanged" not in r.getMessage()
               and INSTALLATION_SECRET in r.getMessage() for r in caplog.records)  # fmt: skip

    # Data that holds no valid key at all is a change too.
    kube.put_secret(*SECRET, {KEY_FIELD: "bm90IGEga2V5"})
    await operator.settle()
    assert [e[3] for e in kube.recorded.events] == ["InstallationKeyChanged"] * 2

    # Restored from the backup: said once, and the gauge is back to 0.
    kube.put_secret(*SECRET, stored(KEY))
    await operator.settle()
    assert kube.recorded.events[-1][2:4] == ("Normal", "InstallationKeyRestored")
    assert "cloudcred_installation_key_changed 0.0" in changed_gauge(operator)
    assert not kube.recorded.writes

    texts = [caplog.text, changed_gauge(operator), *(e[4] for e in kube.recorded.events)]
    for text in texts:
        for form in forms(KEY) + forms(OTHER):
            assert form not in text


@run
async def test_without_an_installation_secret_nothing_is_followed(kube: FakeKube) -> None:
    """An installation made from a bare key (no Secret): nothing to follow, the workers
    are not held waiting for it, and the gauge has no sample."""
    controllers = Controllers(kube, Settings(), asyncio.Semaphore(1), [],  # type: ignore[arg-type]
                              Installation(KEY))  # fmt: skip
    assert controllers.caches.installation_key.synced
    registry = CollectorRegistry()
    registry.register(StateCollector(controllers))
    text = generate_latest(registry).decode()
    assert "\ncloudcred_installation_key_changed " not in text
