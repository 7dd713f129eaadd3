"""The local control plane is the real thing, and it never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import Kube
from tests.envtest.controlplane import pinned_versions
from tests.kube import ROOT

pytestmark = pytest.mark.integration


def test_api_server_reports_the_pinned_kubernetes_version(kube: Kube) -> None:
    if kube.plane is None:
        pytest.skip("tests run against an existing cluster (CLOUDCRED_TEST_KUBECONFIG)")
    info = client.VersionApi(kube.api).get_code()
    assert info.git_version == pinned_versions()[0]


def test_validating_admission_policies_are_served(kube: Kube) -> None:
    policies = client.AdmissionregistrationV1Api(kube.api).list_validating_admission_policy()
    assert policies.items is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as far as we are concerned.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_killed_owner_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL the Python process that started a control plane: etcd and
    kube-apiserver die with it instead of lingering."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from tests.envtest.controlplane import ControlPlane
        plane = ControlPlane(workdir=Path({str(tmp_path)!r})).start()
        print(" ".join(str(pid) for pid in plane.pids().values()), flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == 2
    assert all(_alive(pid) for pid in pids)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)]
