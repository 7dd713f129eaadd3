"""``make bench``: the operator against the best a plain client could do, in one run.

Everything runs on this machine: the local control plane (real kube-apiserver and
etcd), moto's server as AWS, and the real operator as a process. Each measured phase
has a baseline measured in the same run: a plain async client (the official client in
worker threads, at most 8 requests at a time -- the operator's own limit) issuing only
the writes the same end state needs; each baseline is the best of two runs.

- bind: create BENCH_CLUSTERS clusters over 10 credentials; done when every credential
  lists all of its clusters and every cluster is bound. Baseline: the same creations,
  one status write per cluster and one per credential.
- fan-out: change one credential with BENCH_CLUSTERS bound clusters; done when every
  cluster is marked with the new revision and redeployed (status.deployedRevision).
  Baseline: clusters brought untimed to the same deployed state, then per cluster the
  marking as the operator's contract defines it (the annotation and a
  RedeployPending=True status), the deployment's status and the Deployed event. The
  ratio against a baseline that skips the pending state is reported beside it.
- cost: the operator's peak RSS at BENCH_CLUSTERS and at BENCH_LARGE clusters, its API
  requests per cluster event (from the audit log), its writes in 60 idle seconds after
  convergence, and the size of the largest credential object at BENCH_LARGE clusters on
  one credential.

Diagnostics: BENCH_TIMELINE=1 prints the operator's writes per second during the
fan-out; BENCH_PROFILE=<py-spy> records the operator's CPU (BENCH_PROFILE_SECONDS).

Prints a table and writes bench/results.json.

    BENCH_CLUSTERS=1000 BENCH_LARGE=5000 BENCH_IDLE_SECONDS=60 .venv/bin/python -m bench.run
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.aws import Moto, start_moto
from tests.envtest.controlplane import ControlPlane
from tests.integration.conftest import operator_env
from tests.kube import api_client, install_admission_policies, install_crds
from tests.operator import OperatorProcess, wait_for
from tests.resources import condition

from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION

CONCURRENCY = 8  # the operator's own limit on concurrent API calls (cloudcred.kube.Kube)
CREDENTIALS = 10
ETCD_LIMIT = 1_572_864  # etcd's default request size limit, 1.5 MiB
# Every request, at Metadata level (no bodies): requests are counted by user agent.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""
OPERATOR_AGENTS = ("cloudcred/", "kopf/")
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@dataclass
class Bench:
    plane: ControlPlane
    api: client.ApiClient
    moto: Moto
    workdir: Path

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def operator(self, namespace: str) -> OperatorProcess:
        return OperatorProcess(
            kubeconfig=self.plane.kubeconfig, log_path=self.workdir / f"{namespace}.log",
            env={**operator_env(self.moto), "CLOUDCRED_LOG_LEVEL": "INFO",
                 "CLOUDCRED_METRICS_PORT": "0"},
            args=["--namespace", namespace],
        ).start()  # fmt: skip


async def gather_limited(calls: Iterable[Callable[[], Any]], limit: int = CONCURRENCY) -> None:
    """Run blocking client calls in threads, at most ``limit`` at a time."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Any]) -> None:
        async with slots:
            await asyncio.to_thread(call)

    await asyncio.gather(*(one(call) for call in calls))


def timed(coroutine: Callable[[], Awaitable[None]]) -> float:
    started = time.monotonic()
    asyncio.run(coroutine())
    return time.monotonic() - started


def cluster_body(name: str, credential: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Cluster", "metadata": {"name": name},
            "spec": {"provider": "AWS", "region": "eu-west-3",
                     "credentialRef": {"name": credential}}}  # fmt: skip


def credential_body(name: str, role_arn: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CloudCredential",
            "metadata": {"name": name},
            "spec": {"provider": "AWS", "aws": {"roleArn": role_arn, "externalId": "one"},
                     **spec}}  # fmt: skip


def create_calls(bench: Bench, namespace: str, count: int, credentials: list[str]) -> list[Any]:
    return [
        lambda i=i: bench.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, CLUSTER_PLURAL,
            cluster_body(f"c{i:05d}", credentials[i % len(credentials)]))
        for i in range(count)
    ]  # fmt: skip


def items(bench: Bench, namespace: str, plural: str) -> list[dict[str, Any]]:
    listed = bench.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    return list(listed["items"])


def condition_status(obj: dict[str, Any], type_: str) -> str | None:
    return (condition(obj, type_) or {}).get("status")


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> None:
    wait_for(predicate, timeout=timeout, interval=interval, what=what)


def create_credentials(bench: Bench, namespace: str, count: int, **spec: Any) -> list[str]:
    role = bench.moto.create_role(f"bench-{uuid.uuid4().hex[:6]}")
    names = [f"cred{i}" for i in range(count)]
    for name in names:
        bench.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIAL_PLURAL, credential_body(name, role, **spec)
        )
    wait(lambda: all(condition_status(c, "Verified") == "True"
                     for c in items(bench, namespace, CREDENTIAL_PLURAL)) and
         len(items(bench, namespace, CREDENTIAL_PLURAL)) == count,
         60, "the credentials to verify")  # fmt: skip
    return names


def peak_rss_mb(process: OperatorProcess) -> float:
    status = Path(f"/proc/{operator_pid(process)}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def operator_pid(process: OperatorProcess) -> int:
    assert process.process is not None
    return process.process.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plane_cpu_seconds(bench: Bench) -> float:
    """CPU time kube-apiserver and etcd have used so far."""
    return sum(cpu_seconds(p.pid) for p in bench.plane.processes.values())


def audit_entries(bench: Bench, since: int) -> list[dict[str, Any]]:
    with bench.plane.audit_log.open() as log:
        log.seek(since)
        return [json.loads(line) for line in log]


def operator_requests(bench: Bench, since: int, namespace: str) -> list[dict[str, Any]]:
    """The operator's requests that concern ``namespace`` (or no namespace at all:
    its cluster-wide watches and lists)."""
    return [
        entry for entry in audit_entries(bench, since)
        if entry.get("userAgent", "").startswith(OPERATOR_AGENTS)
        and (entry.get("objectRef") or {}).get("namespace") in (namespace, None)
    ]  # fmt: skip


def print_timeline(requests: list[dict[str, Any]], step: float = 1.0) -> None:
    """The operator's writes per ``step`` seconds, by kind of write (a diagnostic)."""
    from datetime import datetime

    def when(entry: dict[str, Any]) -> float:
        return datetime.fromisoformat(entry["stageTimestamp"].replace("Z", "+00:00")).timestamp()

    writes = [e for e in requests if e["verb"] in WRITE_VERBS]
    if not writes:
        return
    start = min(when(e) for e in writes)
    buckets: dict[int, dict[str, int]] = {}
    for entry in writes:
        ref = entry.get("objectRef") or {}
        kind = f"{ref.get('resource')}/{ref.get('subresource', '')}".rstrip("/")
        manager = entry["requestURI"].partition("fieldManager=")[2].partition("&")[0]
        label = f"{entry['verb']} {kind} {manager}".strip()
        bucket = buckets.setdefault(int((when(entry) - start) / step), {})
        bucket[label] = bucket.get(label, 0) + 1
    for index in sorted(buckets):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(buckets[index].items()))
        print(f"{index * step:6.1f}s {counts}")


# -- phases ------------------------------------------------------------------------------


def bind_phase(bench: Bench, count: int, idle_seconds: float) -> dict[str, Any]:
    namespace = bench.namespace("op-bind")
    operator = bench.operator(namespace)
    try:
        credentials = create_credentials(bench, namespace, CREDENTIALS)
        audit_from = bench.plane.audit_log.stat().st_size

        def bound() -> bool:
            # The cheap check first (10 objects), the full list only when it passes: the
            # harness's own reads must not slow the API server down for the operator.
            listed = items(bench, namespace, CREDENTIAL_PLURAL)
            if sum((c.get("status") or {}).get("clusterCount", 0) for c in listed) != count:
                return False
            clusters = items(bench, namespace, CLUSTER_PLURAL)
            bound = [condition_status(c, "CredentialBound") == "True" for c in clusters]
            return len(clusters) == count and all(bound)

        started = time.monotonic()
        asyncio.run(gather_limited(create_calls(bench, namespace, count, credentials)))
        wait(bound, 300, "every cluster bound and listed", interval=0.25)
        seconds = time.monotonic() - started
        wait(lambda: all(condition_status(c, "Ready") == "True"
                         for c in items(bench, namespace, CLUSTER_PLURAL)),
             300, "every cluster deployed", interval=2)  # fmt: skip
        time.sleep(5)  # the last writes of the convergence
        requests = len(operator_requests(bench, audit_from, namespace))
        rss = peak_rss_mb(operator)
        idle_from = bench.plane.audit_log.stat().st_size
        time.sleep(idle_seconds)
        idle = [e for e in operator_requests(bench, idle_from, namespace)
                if e["verb"] in WRITE_VERBS]  # fmt: skip
    finally:
        operator.stop()

    def bind_baseline() -> float:
        """One baseline run in a namespace of its own; returns its seconds."""
        baseline_ns = bench.namespace("base-bind")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def status_calls() -> list[Any]:
            def bound_status(i: int) -> dict[str, Any]:
                cond = {"type": "CredentialBound", "status": "True", "reason": "Bound",
                        "message": "bound", "lastTransitionTime": now}  # fmt: skip
                return {"status": {"credential": {"namespace": baseline_ns,
                                                  "name": credentials[i % CREDENTIALS]},
                                   "conditions": [cond, {**cond, "type": "Ready"}]}}  # fmt: skip

            calls: list[Any] = [
                lambda i=i: bench.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, baseline_ns, CLUSTER_PLURAL, f"c{i:05d}", bound_status(i))
                for i in range(count)
            ]  # fmt: skip
            return calls

        for name in credentials:
            bench.custom.create_namespaced_custom_object(
                GROUP, VERSION, baseline_ns, CREDENTIAL_PLURAL,
                credential_body(name, "arn:aws:iam::123456789012:role/baseline"))  # fmt: skip

        async def baseline() -> None:
            await gather_limited(create_calls(bench, baseline_ns, count, credentials))
            await gather_limited(status_calls())
            lists = {name: [{"namespace": baseline_ns, "name": f"c{i:05d}"}
                            for i in range(count) if i % CREDENTIALS == k]
                     for k, name in enumerate(credentials)}  # fmt: skip
            await gather_limited(
                lambda name=name: bench.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, baseline_ns, CREDENTIAL_PLURAL, name,
                    {"status": {"clusters": lists[name], "clusterCount": len(lists[name])}})
                for name in credentials
            )  # fmt: skip

        return timed(baseline)

    # The best of two runs: the baseline is the best a plain client does here.
    baseline_seconds = min(bind_baseline(), bind_baseline())
    return {
        "bind_seconds": round(seconds, 2),
        "bind_baseline_seconds": round(baseline_seconds, 2),
        "bind_ratio": round(seconds / baseline_seconds, 2),
        "rss_mb": round(rss, 1),
        "requests_per_cluster_event": round(requests / count, 2),
        "idle_writes": len(idle),
        "idle_seconds": idle_seconds,
    }


def fanout_phase(bench: Bench, count: int) -> dict[str, Any]:
    namespace = bench.namespace("op-fan")
    operator = bench.operator(namespace)
    try:
        # Every cluster at once: this measures the fan-out itself, not the pacing.
        (credential,) = create_credentials(bench, namespace, 1, rollout={"maxConcurrent": "100%"})
        asyncio.run(gather_limited(create_calls(bench, namespace, count, [credential])))

        def revision() -> str:
            found = bench.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CREDENTIAL_PLURAL, credential
            )
            return str((found.get("status") or {}).get("revision", ""))

        def all_on(rev: str, annotated: bool) -> bool:
            found = bench.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CREDENTIAL_PLURAL, credential
            )
            rollout = (found.get("status") or {}).get("rollout") or {}
            if rollout.get("revision") != rev or rollout.get("updated") != count:
                return False  # the cheap check first, as in the bind phase
            clusters = items(bench, namespace, CLUSTER_PLURAL)
            return len(clusters) == count and all(
                (c.get("status") or {}).get("deployedRevision") == rev
                and (not annotated or c["metadata"].get("annotations", {}).get(
                    "cloudcred.io/redeploy-revision") == rev)
                for c in clusters)  # fmt: skip

        first = revision()
        wait(lambda: all_on(first, annotated=False), 300, "the first deployment")
        time.sleep(3)
        cpu_before = cpu_seconds(operator_pid(operator))
        plane_before = plane_cpu_seconds(bench)
        if os.environ.get("BENCH_PROFILE"):  # py-spy over the fan-out, for the curious
            import subprocess

            subprocess.Popen([os.environ["BENCH_PROFILE"], "record", "-p",
                              str(operator_pid(operator)), "-o", "/tmp/fanout-profile.txt",
                              "-f", "raw", "-r", "100", "--gil",
                              "-d", os.environ.get("BENCH_PROFILE_SECONDS", "6")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(0.5)
        audit_from = bench.plane.audit_log.stat().st_size
        started = time.monotonic()
        bench.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIAL_PLURAL, credential,
            {"spec": {"aws": {"externalId": "two"}}})  # fmt: skip
        wait(lambda: revision() not in ("", first), 60, "the new revision", interval=0.1)
        second = revision()
        wait(lambda: all_on(second, annotated=True), 300, "the fan-out", interval=0.25)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(operator_pid(operator)) - cpu_before
        plane_cpu = plane_cpu_seconds(bench) - plane_before
        if os.environ.get("BENCH_TIMELINE"):
            print_timeline(operator_requests(bench, audit_from, namespace))
    finally:
        operator.stop()

    baseline_ns = bench.namespace("base-fan")
    asyncio.run(gather_limited(create_calls(bench, baseline_ns, count, ["base"])))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def cluster_status(revision: str, pending: bool = False) -> dict[str, Any]:
        """A deployed cluster's status; ``pending``: marked for ``revision``, still
        deployed with v1-old."""
        deployed = "v1-old" if pending else revision
        ready = {"type": "Ready", "status": "True", "reason": "Ready",
                 "message": f"deployed with credential revision {deployed}",
                 "lastTransitionTime": now, "observedGeneration": 1}  # fmt: skip
        redeploy = {**ready, "type": "RedeployPending", "status": "False", "reason": "UpToDate"}
        if pending:
            redeploy = {**redeploy, "status": "True", "reason": "RevisionChanged",
                        "message": f"the credential changed to revision {revision}"}  # fmt: skip
        return {"status": {
            "credential": {"namespace": baseline_ns, "name": "base"},
            "deployedRevision": deployed, "lastDeployedTime": now,
            "conditions": [{**ready, "type": "CredentialBound", "reason": "Bound"},
                           redeploy, ready]}}  # fmt: skip

    def first_deployment() -> None:
        """Untimed: the same starting point as the operator's clusters, deployed once."""
        asyncio.run(gather_limited(
            lambda i=i: bench.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, baseline_ns, CLUSTER_PLURAL, f"c{i:05d}", cluster_status("v1-old"))
            for i in range(count)
        ))  # fmt: skip

    def redeploy(i: int, revision: str, mark: bool) -> list[Any]:
        """One cluster's writes, in order: the annotation, with ``mark`` the
        RedeployPending=True status (marking as the operator's contract defines it),
        the deployment's status, the Deployed event."""
        name = f"c{i:05d}"
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:16]}"),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="Cluster", name=name,
                namespace=baseline_ns),
            type="Normal", reason="Deployed", message=f"deployed with revision {revision}",
            source=client.V1EventSource(component="baseline"))  # fmt: skip

        def status(pending: bool) -> Callable[[], Any]:
            return lambda: bench.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, baseline_ns, CLUSTER_PLURAL, name, cluster_status(revision, pending)
            )

        return [
            lambda: bench.custom.patch_namespaced_custom_object(
                GROUP, VERSION, baseline_ns, CLUSTER_PLURAL, name,
                {"metadata": {"annotations": {"cloudcred.io/redeploy-revision": revision}}}),
            *([status(pending=True)] if mark else []),
            status(pending=False),
            lambda: bench.core.create_namespaced_event(baseline_ns, event),
        ]  # fmt: skip

    def baseline(revision: str, mark: bool) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            slots = asyncio.Semaphore(CONCURRENCY)

            async def one_cluster(i: int) -> None:
                for call in redeploy(i, revision, mark):  # in order, as a deployer would
                    async with slots:
                        await asyncio.to_thread(call)

            await asyncio.gather(*(one_cluster(i) for i in range(count)))

        return run

    # Marking as the contract defines it (the annotation and RedeployPending=True), and
    # for comparison without the pending state; each the best of two alternating runs.
    marked_runs, direct_runs, plane_runs = [], [], []
    for attempt in range(2):
        first_deployment()
        plane_before = plane_cpu_seconds(bench)
        marked_runs.append(timed(baseline(f"v2-marked-{attempt}", mark=True)))
        plane_runs.append(plane_cpu_seconds(bench) - plane_before)
        first_deployment()
        direct_runs.append(timed(baseline(f"v2-direct-{attempt}", mark=False)))
    baseline_seconds, direct_seconds = min(marked_runs), min(direct_runs)
    baseline_plane_cpu = plane_runs[marked_runs.index(baseline_seconds)]
    return {
        "fanout_plane_cpu_seconds": round(plane_cpu, 2),
        "fanout_baseline_plane_cpu_seconds": round(baseline_plane_cpu, 2),
        "fanout_seconds": round(seconds, 2),
        "fanout_baseline_seconds": round(baseline_seconds, 2),
        "fanout_ratio": round(seconds / baseline_seconds, 2),
        "fanout_direct_baseline_seconds": round(direct_seconds, 2),
        "fanout_direct_ratio": round(seconds / direct_seconds, 2),
        "fanout_operator_cpu_seconds": round(cpu, 2),
    }


def large_phase(bench: Bench, count: int) -> dict[str, Any]:
    namespace = bench.namespace("op-large")
    operator = bench.operator(namespace)
    try:
        (credential,) = create_credentials(bench, namespace, 1)
        asyncio.run(gather_limited(create_calls(bench, namespace, count, [credential])))

        def listed() -> dict[str, Any]:
            return dict(bench.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CREDENTIAL_PLURAL, credential))  # fmt: skip

        wait(lambda: (listed().get("status") or {}).get("clusterCount") == count, 600,
             f"{count} clusters listed")  # fmt: skip
        wait(lambda: all(condition_status(c, "Ready") == "True"
                         for c in items(bench, namespace, CLUSTER_PLURAL)),
             600, "every cluster deployed", interval=2)  # fmt: skip
        time.sleep(3)
        rss = peak_rss_mb(operator)
        largest = listed()
        size = len(json.dumps(largest, separators=(",", ":")))
    finally:
        operator.stop()
    return {
        "large_clusters": count,
        "rss_mb_large": round(rss, 1),
        "largest_object_bytes": size,
        "largest_object_listed": len(largest["status"].get("clusters") or []),
        "largest_object_truncated": bool(largest["status"].get("clustersTruncated")),
    }


def main() -> None:
    count = int(os.environ.get("BENCH_CLUSTERS", "1000"))
    large = int(os.environ.get("BENCH_LARGE", "5000"))
    idle_seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        (workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        plane = ControlPlane(workdir=workdir / "plane",
                             audit_policy=workdir / "audit-policy.yaml").start()  # fmt: skip
        moto = start_moto(workdir / "moto.log")
        api = api_client(plane.kubeconfig)
        install_crds(api)
        install_admission_policies(api)
        bench = Bench(plane, api, moto, workdir)
        results: dict[str, Any] = {"clusters": count}
        phases = os.environ.get("BENCH_PHASES", "bind,fanout,large").split(",")
        try:
            if "bind" in phases:
                print(f"bench: bind, {count} clusters over {CREDENTIALS} credentials",
                      flush=True)  # fmt: skip
                results |= bind_phase(bench, count, idle_seconds)
            if "fanout" in phases:
                print(f"bench: fan-out, {count} clusters on one credential", flush=True)
                results |= fanout_phase(bench, count)
            if "large" in phases:
                print(f"bench: cost, {large} clusters on one credential", flush=True)
                results |= large_phase(bench, large)
        finally:
            moto.stop()
            plane.stop()
    report(results)


def report(results: dict[str, Any]) -> None:
    if not {"bind_ratio", "fanout_ratio", "rss_mb_large"} <= set(results):
        print(json.dumps(results, indent=2))  # some phases only (BENCH_PHASES)
        return
    rows = [
        ("bind", f"{results['bind_seconds']} s", f"{results['bind_baseline_seconds']} s",
         f"{results['bind_ratio']}", "<= 2.0"),
        ("fan-out", f"{results['fanout_seconds']} s", f"{results['fanout_baseline_seconds']} s",
         f"{results['fanout_ratio']}", "<= 2.0"),
        ("fan-out, baseline without pending state", f"{results['fanout_seconds']} s",
         f"{results['fanout_direct_baseline_seconds']} s", f"{results['fanout_direct_ratio']}",
         ""),
        (f"peak RSS at {results['clusters']}", f"{results['rss_mb']} MB", "", "", "<= 150 MB"),
        (f"peak RSS at {results['large_clusters']}", f"{results['rss_mb_large']} MB", "", "",
         "<= 250 MB"),
        ("API requests per cluster event", f"{results['requests_per_cluster_event']}", "", "",
         ""),
        (f"writes in {results['idle_seconds']:g} idle s", f"{results['idle_writes']}", "", "",
         "0"),
        (f"largest object ({results['large_clusters']} clusters)",
         f"{results['largest_object_bytes']} B", f"etcd limit {ETCD_LIMIT} B",
         f"{results['largest_object_bytes'] / ETCD_LIMIT:.2f}", "well under 1"),
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    header = ("measure", "operator", "baseline", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    path = Path(__file__).parent / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {path}")
    met = (results["bind_ratio"] <= 2.0 and results["fanout_ratio"] <= 2.0
           and results["rss_mb"] <= 150 and results["rss_mb_large"] <= 250
           and results["idle_writes"] == 0
           and results["largest_object_bytes"] < ETCD_LIMIT / 2)  # fmt: skip
    print("targets met" if met else "targets NOT met")
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
