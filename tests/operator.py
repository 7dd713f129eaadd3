"""Run the real operator (``python -m cloudcred run``) as a separate process.

A process, not a thread: tests kill it with SIGKILL and restart it, and read its
whole log output (the leak test runs it at DEBUG).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.envtest.controlplane import free_port
from tests.kube import ROOT


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    liveness_port: int = field(default_factory=free_port)
    # Each operator its own metrics port: several run at once in the tests.
    metrics_port: int = field(default_factory=free_port)
    # False: kopf peering (pass --peering NAME --priority N in args).
    standalone: bool = True

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "CLOUDCRED_LOG_LEVEL": "DEBUG",
            "CLOUDCRED_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.liveness_port}/healthz",
            "CLOUDCRED_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloudcred", "run",
             *(["--standalone"] if self.standalone else []), *self.args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no cleanup, as after an OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Operators:
    """The one way a test starts the operator: ``start`` runs ``python -m cloudcred run``
    with the tests' environment (moto, closed ports for the other providers), its own
    ports and log file; ``stop`` (the fixture's end) stops every process it started,
    whatever the test did. ``env`` adds to the tests' environment; ``base_env=False``
    replaces it (the chart's pod environment, a bare start)."""

    def __init__(self, folder: Path, kubeconfig: Path, environment: Callable[[], dict[str, str]]):
        self.folder = folder
        self.kubeconfig = kubeconfig
        self.environment = environment
        self.started: list[OperatorProcess] = []

    def start(
        self,
        *namespaces: str,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        kubeconfig: Path | None = None,
        standalone: bool = True,
        name: str | None = None,
        base_env: bool = True,
        liveness_port: int | None = None,
        metrics_port: int | None = None,
    ) -> OperatorProcess:
        """Start an operator watching ``namespaces`` (each a ``--namespace``); its log is
        ``<name or operator-N>.log`` in the fixture's folder, appended to on a restart."""
        ports = {"liveness_port": liveness_port, "metrics_port": metrics_port}
        process = OperatorProcess(
            kubeconfig=kubeconfig or self.kubeconfig,
            log_path=self.folder / f"{name or f'operator-{len(self.started)}'}.log",
            env={**(self.environment() if base_env else {}), **(env or {})},
            args=[*(arg for ns in namespaces for arg in ("--namespace", ns)), *args],
            standalone=standalone,
            **{port: value for port, value in ports.items() if value is not None},
        )
        self.started.append(process.start())
        return process

    def __iter__(self) -> Iterator[OperatorProcess]:
        return iter(self.started)

    def stop(self) -> None:
        for process in self.started:
            process.stop()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.25, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")
