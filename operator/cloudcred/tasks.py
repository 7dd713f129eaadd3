"""Background tasks that must not die quietly.

A task the operator starts for its whole life (a worker pool, a lister) that ends with
an exception is a bug the operator cannot recover from by itself: the task's work
would silently stop while ``/healthz`` stayed green. So the process ends, and
Kubernetes starts a fresh one, which lists everything again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

logger = logging.getLogger("cloudcred")

EXIT_CODE = 70  # EX_SOFTWARE: an internal error


def spawn(coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Start a supervised task: if it ever raises, the process exits."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    task.add_done_callback(_end_process_if_failed)
    return task


def _end_process_if_failed(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        return
    logger.critical("background task %r died (%s): exiting so that the operator restarts\n%s",
                    task.get_name(), type(error).__name__, where(error))  # fmt: skip
    logging.shutdown()
    os._exit(EXIT_CODE)


async def in_thread(call: Callable[[], _T], timeout: float) -> _T:
    """Run a blocking call in a worker thread, for at most ``timeout`` seconds
    (TimeoutError after; a thread cannot be stopped, the libraries' own timeouts end it).

    If the caller is cancelled (shutdown, a peering handover), the cancellation waits
    for the call, up to ``timeout``, before it goes on: a provider call (a key made, a
    key deleted) never lands after the reconcile that asked for it has returned, when
    another reconcile may already be deciding from what it saw."""
    loop = asyncio.get_running_loop()
    future = asyncio.ensure_future(asyncio.to_thread(call))
    deadline = loop.time() + timeout
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.CancelledError:
        while not future.done() and loop.time() < deadline:
            try:
                await asyncio.wait([future], timeout=deadline - loop.time())
            except asyncio.CancelledError:
                continue  # cancelled again: still wait for the call, up to the deadline
        raise


def where(error: BaseException) -> str:
    """Where an unexpected error was raised: the traceback's frames without the
    exception's text, which could quote data (a request body, a secret value)."""
    return "".join(traceback.format_tb(error.__traceback__))
