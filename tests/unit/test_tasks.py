"""A long-lived task that dies ends the operator's process (Kubernetes restarts it)
instead of leaving its work silently stopped; the log says where, not the error's
text (it could quote data)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cloudcred.tasks import EXIT_CODE
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
