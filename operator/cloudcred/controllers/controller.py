"""One generic controller: a work queue, its workers, the sync gate, its metrics, and
the reconcile contract.

The shape of controller-runtime's ``Controller``. A reconciler is a function from a
key to a ``Result``; it never sees the queue. What its answer means:

- it returns ``Result()`` (or None): done; the key's failure count is reset;
- it returns ``Result(requeue_after=s)``: done for now, look again in ``s`` seconds
  (a periodic check, a retry that is not due yet, a renewal);
- it returns ``Result(requeue=True)``: not done, and not an error either (a provider
  that is away, a Secret not created yet): look again after the key's next backoff;
- it raises: the key is queued again after its next backoff, the error is counted,
  logged, and shown on the object (see ``errors`` in ``runner.py``).

Workers take keys only while the gate is open (every cache synced, this replica
active): a key taken is held until it opens. ``process`` is one turn of a worker
without the gate, so tests drive a reconciler through the same contract.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram

from cloudcred import metrics
from cloudcred.workqueue import WorkQueue

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None  # look again in this many seconds
    requeue: bool = False  # look again after the key's next backoff (not an error)


DONE = Result()

RECONCILES = Counter(
    "cloudcred_reconciles",
    "Reconciles, by controller and outcome (done, requeue_after, requeue, error).",
    ["controller", "outcome"],
    registry=metrics.REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "cloudcred_reconcile_errors",
    "Reconciles that failed (and were queued again after a backoff), by controller.",
    ["controller"],
    registry=metrics.REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "cloudcred_reconcile_duration_seconds",
    "Time one reconcile took, by controller.",
    ["controller"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0),
    registry=metrics.REGISTRY,
)

Reconcile = Callable[[K], Awaitable[Result | None]]
ErrorSink = Callable[[str, K, Exception, float], Awaitable[None]]


class Controller(Generic[K]):
    def __init__(
        self,
        name: str,
        reconcile: Reconcile[K],
        workers: int,
        on_error: ErrorSink[K],
        on_success: Callable[[str, K], None] = lambda name, key: None,
        base_delay: float = 0.25,
        max_delay: float = 300.0,
    ) -> None:
        """``on_error(name, key, error, delay)`` shows a failure; ``on_success(name,
        key)`` is told when a key that may have failed before succeeds."""
        self.name = name
        self.queue: WorkQueue[K] = WorkQueue(name, base_delay, max_delay)
        self.reconcile = reconcile
        self.workers = workers
        self.on_error = on_error
        self.on_success = on_success
        self.runs: dict[K, int] = {}  # reconciles per key since start (for tests and benches)
        self.last_run: dict[K, float] = {}  # when each key was last reconciled (pacing)

    def start(self, gate: asyncio.Event, spawn: Callable[..., asyncio.Task[None]]) -> None:
        for number in range(self.workers):
            spawn(self._work(gate), f"{self.name} worker {number}")

    async def process(self, key: K) -> Result | None:
        """One reconcile of ``key`` through the contract (the queue's bookkeeping
        included); returns the reconciler's answer, None when it raised."""
        self.runs[key] = self.runs.get(key, 0) + 1
        self.last_run[key] = started = time.monotonic()
        try:
            result = await self.reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            delay = self.queue.add_rate_limited(key)
            RECONCILES.labels(controller=self.name, outcome="error").inc()
            RECONCILE_ERRORS.labels(controller=self.name).inc()
            await self.on_error(self.name, key, error, delay)
            return None
        finally:
            RECONCILE_SECONDS.labels(controller=self.name).observe(time.monotonic() - started)
        result = result or DONE
        if result.requeue:
            self.queue.add_rate_limited(key)
            RECONCILES.labels(controller=self.name, outcome="requeue").inc()
        else:
            self.queue.forget(key)
            self.on_success(self.name, key)
            if result.requeue_after is not None:
                self.queue.add_after(key, result.requeue_after)
                RECONCILES.labels(controller=self.name, outcome="requeue_after").inc()
            else:
                RECONCILES.labels(controller=self.name, outcome="done").inc()
        return result

    async def _work(self, gate: asyncio.Event) -> None:
        while True:
            key = await self.queue.get()
            try:
                # Held, not put back, while the caches sync or the replica is paused:
                # nothing is decided on the word of a cache that is not complete.
                await gate.wait()
                await self.process(key)
            finally:
                self.queue.done(key)
