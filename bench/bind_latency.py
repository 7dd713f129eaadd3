"""Time from creating a Cluster until its credential's status lists it.

Starts the local control plane and the operator (no provider calls: verification is
off), creates clusters one at a time and prints the median and the 90th percentile.

    .venv/bin/python -m bench.bind_latency [COUNT]     (default 50)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client
from tests.envtest.controlplane import ControlPlane
from tests.kube import api_client, install_admission_policies, install_crds
from tests.operator import OperatorProcess, wait_for
from tests.resources import create_cluster, create_credential, get_credential


def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        plane = ControlPlane(workdir=Path(folder) / "plane").start()
        api = api_client(plane.kubeconfig)
        install_crds(api)
        install_admission_policies(api)
        operator = OperatorProcess(plane.kubeconfig, Path(folder) / "operator.log",
                                   env={"CLOUDCRED_LOG_LEVEL": "INFO"},
                                   args=["--namespace", "bench"]).start()  # fmt: skip
        try:
            core = client.CoreV1Api(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bench")))

            class Kube:  # the two attributes the test helpers use
                custom = client.CustomObjectsApi(api)

            kube = Kube()
            create_credential(kube, "bench", "cred", provider="AWS",  # type: ignore[arg-type]
                              aws={"roleArn": "arn:aws:iam::123456789012:role/x"},
                              verification={"enabled": False})  # fmt: skip
            wait_for(lambda: "clusterCount" in (get_credential(kube, "bench", "cred") or {})
                     .get("status", {}), timeout=60, what="operator ready")  # fmt: skip
            samples = []
            for index in range(count):
                started = time.monotonic()
                create_cluster(kube, "bench", f"c{index}", provider="AWS",  # type: ignore[arg-type]
                               region="eu-west-3", credentialRef={"name": "cred"})  # fmt: skip
                wait_for(lambda want=index + 1: get_credential(kube, "bench", "cred")["status"]
                         .get("clusterCount") == want, timeout=30, interval=0.01)  # fmt: skip
                samples.append(time.monotonic() - started)
            samples.sort()
            print(f"clusters: {count}")
            print(f"bind latency median: {statistics.median(samples) * 1000:.0f} ms")
            print(f"bind latency p90:    {samples[int(len(samples) * 0.9) - 1] * 1000:.0f} ms")
            print(f"bind latency max:    {samples[-1] * 1000:.0f} ms")
        finally:
            operator.stop()
            plane.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
