"""``make demo`` (``python -m demo``) as a user runs it: a separate process that starts
its own control plane, moto and the operator, tells what it shows, and leaves nothing
behind -- after a full tour, and after Ctrl-C half-way."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kube import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get("CLOUDCRED_TEST_KUBECONFIG")),
        reason="the demo starts its own local control plane; tested with the local one only",
    ),
]

TOUR_TIMEOUT = 90.0


class Demo:
    """``python -m demo`` in a session of its own (so a timeout can stop all of it),
    its stdout and stderr read line by line as they come."""

    def __init__(self) -> None:
        env = {**os.environ, "DEMO_PAUSE": "0", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "demo"], cwd=ROOT, env=env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, fragment: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(fragment in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line with {fragment!r} in:\n{self.output}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.reader.join(timeout=5)
            raise AssertionError(f"the demo took over {timeout:g} s:\n{self.output}") from None
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def demo() -> Iterator[Callable[[], Demo]]:
    """Starts the demo; kills whatever is left of it after the test."""
    started: list[Demo] = []

    def start() -> Demo:
        started.append(Demo())
        return started[-1]

    yield start
    for each in started:
        if each.process.poll() is None:
            each.kill()


def port_closed(url: str) -> bool:
    host, port = url.rsplit("//", 1)[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def assert_nothing_left(demo: Demo) -> None:
    """The processes the demo started are gone, their ports closed, its folder removed."""
    output = demo.output
    pids = re.search(r"Stopped the operator, moto and the control plane \(pids ([\d, ]*)\)", output)
    assert pids, output
    started = [int(pid) for pid in pids.group(1).split(", ") if pid]
    for pid in started:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} is still there"
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.process.pid, 0)  # nothing left in the demo's process group either
    urls = re.findall(r"(?:kube-apiserver|moto \(stand-in AWS\)) at (\S+?);?\s", output)
    assert len(urls) == 2, output
    for url in urls:
        assert port_closed(url), f"{url} still answers"
    workdir = re.search(r"Everything runs on loopback, in (\S+)\.", output)
    assert workdir, output
    assert not Path(workdir.group(1)).exists()


def row(output: str, name: str) -> list[str]:
    """The first `kubectl get` row naming ``name`` (after the first kubectl get)."""
    start = output.index("$ kubectl get cloud -A")
    for line in output[start:].splitlines():
        cells = line.split()
        if len(cells) > 1 and cells[1].endswith(f"/{name}"):
            return cells
    raise AssertionError(f"no row for {name} in:\n{output[start:]}")


def test_the_tour_shows_verify_refuse_rotate_and_cleans_up(demo: Callable[[], Demo]) -> None:
    started = time.monotonic()
    tour = demo()
    code = tour.wait(TOUR_TIMEOUT)
    output = tour.output
    assert code == 0, output
    assert "AWS here is moto, a local stand-in: no real cloud is contacted" in output

    # kubectl get cloud -A: both credentials verified by moto, listing their clusters.
    prod, staging = row(output, "aws-prod-us-east-1"), row(output, "aws-staging-eu-west-3")
    assert prod[2] == staging[2] == "AWS"
    assert prod[3].startswith("arn:aws:iam::"), prod
    assert prod[4:6] == ["1", "True"], prod  # CLUSTERS, VERIFIED
    assert staging[3].startswith("AKIA"), staging
    assert staging[4:6] == ["2", "True"], staging
    for cluster in ("prod-us", "staging-eu", "staging-us"):
        assert row(output, cluster)[5] == "True", row(output, cluster)  # BOUND

    # The admission policy refuses the delete, naming the cluster.
    assert ("denied request: cloudcredential acme/aws-prod-us-east-1 is used by clusters "
            "prod-us; remove the association first") in output  # fmt: skip

    # cloudcred rotate switches to a new moto key and follows the rollout to both clusters.
    assert "All 2 clusters use the new key" in output
    old_key = staging[3]
    assert f"The old key {old_key} is no longer used by any cluster" in output
    # The operator rotates the key itself (--now) and retires the old one after the rollout.
    assert "Rotated: the credential uses key AKIA" in output
    assert "deployer now has one key" in output
    assert '"phase":"Idle"' in output  # status.rotation, printed with kubectl
    assert "2 of 2 clusters on the current revision" in output  # cloudcred usage

    assert "Tour complete" in output
    assert_nothing_left(tour)
    assert time.monotonic() - started < TOUR_TIMEOUT


def test_ctrl_c_stops_everything(demo: Callable[[], Demo]) -> None:
    tour = demo()
    tour.wait_for_line("serverside-applied", timeout=60)
    os.killpg(tour.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    code = tour.wait(30)
    assert code == 130, tour.output
    assert "Interrupted." in tour.output
    assert "Tour complete" not in tour.output
    assert_nothing_left(tour)
