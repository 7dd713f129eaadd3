"""A work queue of keys: what is left to do, one key at a time, with per-key retries.

The shape of client-go's ``workqueue`` (``Typed`` plus the rate-limiting and delaying
wrappers), for asyncio:

- a key is queued at most once: adding a key already waiting does nothing, so a burst
  of events about one object collapses into one reconcile;
- a key is handed to one worker at a time: adding a key that a worker holds only marks
  it dirty, and ``done`` queues it again, so no two workers ever reconcile one object
  at the same time and no change is lost while one does;
- ``add_rate_limited`` queues a key again after a per-key delay that doubles with every
  failure (``base`` up to ``cap``), and ``forget`` resets it after a success: one
  object that keeps failing waits longer and longer and never delays another;
- ``add_after`` queues a key later (a timer: a re-check, a debounced credential).

Keys are plain hashable values; the queue never holds objects or events (the
reconcilers read the caches: see ``cloudcred.cache``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, name: str, base_delay: float = 0.25, max_delay: float = 300.0) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._order: deque[K] = deque()  # waiting keys, in the order they came
        self._dirty: set[K] = set()  # waiting, or to run again after their worker is done
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()  # workers waiting for a key
        self._idle = asyncio.Event()
        self._idle.set()
        self.adds = 0  # keys queued, counted for the metrics
        self.retries = 0  # rate-limited re-queues, counted for the metrics
        self.last_done = time.monotonic()  # when a worker last finished a key
        self.last_arrival = 0.0  # when a new key (a new object) was last queued
        self._arrived = asyncio.Event()  # a burst of new keys that has not settled yet

    def __len__(self) -> int:
        return len(self._order)

    def add(self, key: K, arrival: bool = False) -> None:
        """Queue this key now (unless it waits already); ``arrival``: the key is a new
        object (see ``settled``)."""
        if arrival:
            self.last_arrival = time.monotonic()
            self._arrived.set()
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._dirty:
            return
        self._dirty.add(key)
        self.adds += 1
        self._idle.clear()
        if key in self._processing:
            return  # queued again by done()
        self._order.append(key)
        self._wake()

    def add_after(self, key: K, delay: float) -> None:
        """Queue this key in ``delay`` seconds; an earlier timer or a waiting key wins."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._dirty:
            return
        when = asyncio.get_running_loop().time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_at(when, self._fire, key)

    def add_rate_limited(self, key: K) -> float:
        """Queue this key again after its next backoff delay; return the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.retries += 1
        delay: float = min(self.base_delay * 2.0**failures, self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts from the base delay again."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def discard(self, key: K) -> None:
        """The object is gone: drop its timer and its failure count (a worker holding it
        finishes normally)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)
        self._settle()

    async def get(self) -> K:
        """The next key to reconcile; the caller must call ``done(key)`` afterwards."""
        while not self._order:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # hand the wake-up on to another worker
                raise
        key = self._order.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        self.last_done = time.monotonic()
        if key in self._dirty:  # added while it was being reconciled
            self._order.append(key)
            self._wake()
        self._settle()

    @property
    def busy(self) -> bool:
        """Keys are waiting or being reconciled (timers not counted)."""
        return bool(self._order or self._processing)

    async def idle(self) -> None:
        """Return once nothing is waiting or running. Timers (a retry after a failure, a
        paced credential) do not count: one object that keeps failing must not keep
        the queue busy for those waiting for it to settle."""
        await self._idle.wait()

    async def settled(self, quiet: float) -> None:
        """Return once the queue is idle and no new key has arrived for ``quiet``
        seconds: a stream of new objects has ended, not merely paused between two."""
        while True:
            await self.idle()
            wait = self.last_arrival + quiet - time.monotonic()
            if wait <= 0 and not self.busy:
                return
            await asyncio.sleep(max(wait, 0.01))

    @property
    def arriving(self) -> bool:
        """A burst of new keys is under way: one arrived, and ``burst_settled`` has not
        seen the burst settle yet."""
        return self._arrived.is_set()

    async def burst_settled(self, quiet: float) -> None:
        """Wait for a burst of new keys to begin, then return once it has ``settled``
        (no new key for ``quiet`` seconds and the queue idle)."""
        await self._arrived.wait()
        await self.settled(quiet)
        self._arrived.clear()  # no await since settled: no key arrived in between

    def timed(self) -> list[K]:
        """The keys that wait for a timer (``add_after``, a retry)."""
        return list(self._timers)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _settle(self) -> None:
        if not self._order and not self._processing:
            self._idle.set()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
