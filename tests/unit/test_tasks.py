"""A long-lived task that dies ends the operator's process (Kubernetes restarts it)
instead of leaving its work silently stopped; the log says where, not the error's
text (it could quote data)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import threading
import time as clock

import pytest

from cloudcred.tasks import EXIT_CODE, in_thread
from tests.kube import ROOT

SCRIPT = textwrap.dedent("""
    import asyncio, logging
    from cloudcred.tasks import spawn

    async def worker():
        await asyncio.sleep(0.05)
        raise ValueError("token=not-for-the-log")

    async def main():
        spawn(worker(), "clusters worker 0")
        await asyncio.sleep(10)
        print("still running")

    logging.basicConfig()
    asyncio.run(main())
""")


def test_a_failed_background_task_ends_the_process() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == EXIT_CODE, done.stderr
    assert "still running" not in done.stdout
    assert "background task 'clusters worker 0' died (ValueError)" in done.stderr
    assert "in worker" in done.stderr  # where it failed
    assert "not-for-the-log" not in done.stderr


def test_a_cancelled_task_does_not_end_the_process() -> None:
    script = SCRIPT.replace(
        'raise ValueError("token=not-for-the-log")', "raise asyncio.CancelledError"
    )
    script = script.replace("sleep(10)", "sleep(0.3)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "still running" in done.stdout


def test_a_cancelled_caller_waits_for_its_thread_call_to_end() -> None:
    """The cancellation goes on only once the call in the thread has returned."""

    finished = threading.Event()

    def slow() -> None:
        clock.sleep(0.3)
        finished.set()

    async def main() -> bool:
        task = asyncio.create_task(in_thread(slow, 5.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return finished.is_set()

    assert asyncio.run(main()), "the reconcile returned while its provider call still ran"


def test_a_call_past_its_timeout_raises() -> None:

    with pytest.raises(TimeoutError):
        asyncio.run(in_thread(lambda: clock.sleep(0.3), 0.05))
