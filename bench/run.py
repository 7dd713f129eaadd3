"""``make bench``: the operator against the best a plain client could do, in one run.

Everything runs on this machine: the local control plane (real kube-apiserver and
etcd), moto's server as AWS, and the real operator as a process. Each measured phase
has a baseline measured in the same run: a plain async client (the official client in
worker threads, at most 8 requests at a time -- the operator's own limit) issuing only
the writes the same end state needs; each baseline is the best of two runs.

- bind: create BENCH_CLUSTERS clusters over 10 credentials; done when every credential
  lists all of its clusters and every cluster is bound. Baseline: the same creations,
  one status write per cluster and one per credential.
- fan-out: change one credential with BENCH_CLUSTERS bound clusters (its spec.aws.roleArn
  switches to a second role: a change the schema keeps and the revision covers); done when
  every cluster is marked with the new revision and redeployed (status.deployedRevision).
  Baseline: clusters brought untimed to the same deployed state, then per cluster the
  marking as the operator's contract defines it (the annotation and a
  RedeployPending=True status), the deployment's status and the Deployed event. The
  ratio against a baseline that skips the pending state is reported beside it. The
  baselines' statuses carry what the operator's do: the detailed conditions and the
  summary (Ready, Reconciling, Stalled).
- cost: the operator's peak RSS at BENCH_CLUSTERS and at BENCH_LARGE clusters, its API
  requests per cluster event (from the audit log), its writes in BENCH_IDLE_SECONDS idle
  seconds after convergence, and the size of the largest credential object at
  BENCH_LARGE clusters on one credential.
- huge: the bind and the fan-out again at BENCH_HUGE clusters (the same phases and
  baselines, best of two; 0 skips), and the operator's peak RSS over that size's runs
  (bind, deletion guard, fan-out). Its credentials are named cred-huge-0..9, names no
  other phase uses.
- deletion guard, at the end of the huge bind (10 credentials with BENCH_HUGE/10 bound
  clusters each, the operator still running): a server-side dry-run delete of
  cred-huge-0 shows whether the admission policy refuses it; then the policy's binding
  (cloudcred-credential-in-use) is removed for the step, the credential deleted for
  real (the finalizer holds it), and the operator's counters
  cloudcred_deletion_guard_checks_total and cloudcred_deletion_guard_objects_total read
  on its metrics port until a check has run: objects per check, against the
  credential's own clusters and all clusters in the control plane. The binding is
  restored afterwards (deploy/admission/credential-in-use.yaml) and the credential left
  deleting in its namespace; later phases use namespaces of their own. An operator
  without these counters is reported as "not exported" (then the step waits for the
  guard's DeletionBlocked Event instead); the audit log's count of the operator's
  Cluster LISTs during the step, field-selected or not, is recorded beside it.

- broken: BENCH_BROKEN (default 1000) broken AWS static-key credentials, half whose
  Secret does not exist, half whose Secret holds a key id moto never issued (each check
  asks the provider and is refused), each half in a namespace of its own under one
  operator; beside them, under a second operator started with it, as many healthy ones
  (one valid moto key, verification at its default interval) in a third namespace.
  Every first check done, then BENCH_BROKEN_WARMUP s (default 60: the 5 s retry is past,
  the first one-minute retry due), the operators' API requests (from the audit log, by
  the namespace they concern; cluster-wide ones, both operators', apart) and provider
  requests (counted by a proxy in front of moto, by the key that signed them) over
  BENCH_BROKEN_SECONDS s (default 240: the 60 s and 120 s retries of the backoff fall in
  it; a code that re-reads more often than once a minute shows at once). Printed: the
  broken credentials' requests per second to each, the healthy ones' beside them and
  the ratio, and requests per credential-hour by kind.

The harness reads Clusters a page at a time (500) and polls at most once a second
beyond 1000 clusters: at BENCH_HUGE it never holds a whole namespace's Clusters, and its
reads take little of the API server's time from the operator.

Phases: BENCH_PHASES (default bind,fanout,large,huge,broken; huge-bind and huge-fanout
run one half of huge). BENCH_OPERATOR_PATH: a git tree whose operator code the bench
runs (its ``operator/`` first on the operator processes' PYTHONPATH; this tree's CRDs,
the harness and the baselines stay), for figures before a change:
``git worktree add --detach /tmp/before <commit>`` then
``BENCH_OPERATOR_PATH=/tmp/before BENCH_PHASES=broken make bench``.
Diagnostics: BENCH_TIMELINE=1 prints the operator's writes per second during each bind
and fan-out; BENCH_PROFILE=<py-spy> records the operator's CPU during each
(BENCH_PROFILE_SECONDS, default 6; into /tmp/<phase>-<clusters>-profile.txt).

Control plane: its own local one (real kube-apiserver and etcd, with an audit log of
every request), or the cluster of BENCH_KUBECONFIG, where nothing is started (the CRDs and
admission policies are installed there): without this run's own audit log and processes,
the API requests per cluster event, the idle writes, the guard's LIST count, the control
plane's CPU and the timeline are not measured (printed as n/a). BENCH_MAX_WAIT caps every
wait (seconds; a tiny run sets it so a stuck phase fails in a minute, not in five).

Each phase prints its figures as it ends (``bench: PHASE done in N s: operator ..., baseline
..., ratio ...``); at the end a table, and bench/results.json (BENCH_RESULTS: another path)
when every phase of a full run ran; it also holds each phase's seconds with its baselines
and the harness's own peak RSS. Exit status: 0 when every phase ran and the targets are
met (or some phases only, BENCH_PHASES, ran: their figures are printed as JSON, with no
verdict), 1 when a target is not met (or not measured), 2 when a phase failed or timed out
(the bench stops there; the failure and the end of the operator's log are printed).

    BENCH_CLUSTERS=1000 BENCH_LARGE=5000 BENCH_HUGE=10000 BENCH_IDLE_SECONDS=60 \\
        BENCH_BROKEN=1000 BENCH_BROKEN_WARMUP=60 BENCH_BROKEN_SECONDS=240 \\
        .venv/bin/python -m bench.run
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.aws import Moto, start_moto
from tests.envtest.controlplane import ControlPlane
from tests.integration.conftest import operator_env
from tests.kube import api_client, install_admission_policies, install_crds
from tests.operator import OperatorProcess, wait_for
from tests.proxy import LoopbackProxy
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
PAGE = 500  # Clusters per LIST page when the harness reads them
HUGE_CREDENTIALS = "cred-huge-"  # the huge bind's credential names: no other phase's
# The deletion guard's counters (Clusters its LISTs returned, summed), on the metrics port.
GUARD_CHECKS = "cloudcred_deletion_guard_checks_total"
GUARD_OBJECTS = "cloudcred_deletion_guard_objects_total"
IN_USE_BINDING = "cloudcred-credential-in-use"  # deploy/admission/credential-in-use.yaml


class PhaseFailed(RuntimeError):
    """A phase could not measure what it measures; the message says why."""


@dataclass
class Bench:
    plane: ControlPlane | None  # None: a cluster this run did not start (BENCH_KUBECONFIG)
    kubeconfig: Path
    api: client.ApiClient
    moto: Moto
    workdir: Path
    operators: list[OperatorProcess] = field(default_factory=list)  # started, newest last

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

    def operator(
        self, namespace: str, metrics: bool = False, also: Iterable[str] = (),
        env: dict[str, str] | None = None,
    ) -> OperatorProcess:  # fmt: skip
        """The operator watching ``namespace`` (and the namespaces ``also``); with
        ``metrics`` it serves /metrics on its ``metrics_port`` (off otherwise, as in the
        phases measured before); ``env`` over the tests' operator environment. With
        BENCH_OPERATOR_PATH, the operator's code is that tree's (its ``operator/`` first
        on PYTHONPATH)."""
        off = {} if metrics else {"CLOUDCRED_METRICS_PORT": "0"}
        process = OperatorProcess(
            kubeconfig=self.kubeconfig, log_path=self.workdir / f"{namespace}.log",
            env={**operator_env(self.moto), "CLOUDCRED_LOG_LEVEL": "INFO", **off,
                 **operator_code(), **(env or {})},
            args=[arg for ns in (namespace, *also) for arg in ("--namespace", ns)],
        )  # fmt: skip
        self.operators.append(process)
        return process.start()

    def audit_mark(self) -> int | None:
        """Where the audit log ends now; None without an audit log of this run's own."""
        return self.plane.audit_log.stat().st_size if self.plane else None


def operator_code() -> dict[str, str]:
    """The operator's PYTHONPATH with BENCH_OPERATOR_PATH's tree first (its code measured
    with this bench: ``before`` figures); nothing to change without it."""
    tree = os.environ.get("BENCH_OPERATOR_PATH")
    if not tree:
        return {}
    code = Path(tree).resolve() / "operator"
    if not (code / "cloudcred" / "__init__.py").is_file():
        raise PhaseFailed(f"BENCH_OPERATOR_PATH: no operator/cloudcred package in {tree}")
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{code}{os.pathsep}{rest}" if rest else str(code)}


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
            "spec": {"provider": "AWS", "aws": {"roleArn": role_arn}, **spec}}  # fmt: skip


def summary(condition: dict[str, Any], true: str) -> list[dict[str, Any]]:
    """The summary conditions every object carries, all three (Ready, Reconciling,
    Stalled): ``true`` the one True, each with ``condition``'s reason and message."""
    return [{**condition, "type": type_, "status": "True" if type_ == true else "False"}
            for type_ in ("Ready", "Reconciling", "Stalled")]  # fmt: skip


def create_calls(bench: Bench, namespace: str, count: int, credentials: list[str]) -> list[Any]:
    return [
        lambda i=i: bench.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, CLUSTER_PLURAL,
            cluster_body(f"c{i:05d}", credentials[i % len(credentials)]))
        for i in range(count)
    ]  # fmt: skip


def items(bench: Bench, namespace: str, plural: str) -> list[dict[str, Any]]:
    """Every object of a kind in ``namespace`` at once: for the credentials (at most 10)."""
    listed = bench.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    return list(listed["items"])


def cluster_pages(
    bench: Bench, namespace: str | None = None, field_selector: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The Clusters of ``namespace`` (None: of every namespace), PAGE at a time: the
    harness never holds more than one page of them."""
    token = None
    while True:
        options: dict[str, Any] = {"limit": PAGE}
        if field_selector:
            options["field_selector"] = field_selector
        if token:
            options["_continue"] = token
        if namespace is None:
            page = bench.custom.list_cluster_custom_object(
                GROUP, VERSION, CLUSTER_PLURAL, **options
            )
        else:
            page = bench.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, CLUSTER_PLURAL, **options
            )
        yield page["items"]
        token = page["metadata"].get("continue")
        if not token:
            return


def all_clusters(
    bench: Bench, namespace: str, count: int, check: Callable[[dict[str, Any]], bool]
) -> bool:
    """``namespace`` holds ``count`` Clusters and ``check`` passes for each: read a page
    at a time, stopping at the first page with one that fails."""
    seen = 0
    for page in cluster_pages(bench, namespace):
        seen += len(page)
        if not all(check(cluster) for cluster in page):
            return False
    return seen == count


def count_clusters(bench: Bench, field_selector: str | None = None) -> int:
    """Clusters in every namespace (matching ``field_selector``), without reading them
    all when the API server can count (remainingItemCount: lists without selectors)."""
    if not field_selector:
        first = bench.custom.list_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, limit=1)
        remaining = first["metadata"].get("remainingItemCount")
        if remaining is not None or not first["metadata"].get("continue"):
            return len(first["items"]) + int(remaining or 0)
    return sum(len(page) for page in cluster_pages(bench, None, field_selector))


def condition_status(obj: dict[str, Any], type_: str) -> str | None:
    return (condition(obj, type_) or {}).get("status")


def capped(timeout: float) -> float:
    """``timeout``, or BENCH_MAX_WAIT seconds if that is shorter."""
    cap = os.environ.get("BENCH_MAX_WAIT")
    return min(timeout, float(cap)) if cap else timeout


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); PhaseFailed when it
    does not within ``timeout`` (capped by BENCH_MAX_WAIT)."""
    try:
        return wait_for(predicate, timeout=capped(timeout), interval=interval, what=what)
    except AssertionError as error:
        raise PhaseFailed(str(error)) from None


def patience(count: int, seconds: float = 300) -> float:
    """A timeout that grows with the size: ``seconds`` per 1000 clusters, never less."""
    return seconds * max(1.0, count / 1000)


def polling(count: int, interval: float = 0.25) -> float:
    """The harness's polling interval: ``interval`` up to 1000 clusters (as measured
    before), longer beyond, at most 1 s: each poll reads objects that grow with the size
    and takes the API server's time from the operator."""
    return min(max(1.0, interval), interval * max(1.0, count / 1000))


def create_credentials(
    bench: Bench, namespace: str, count: int, prefix: str = "cred", **spec: Any
) -> list[str]:
    role = bench.moto.create_role(f"bench-{uuid.uuid4().hex[:6]}")
    names = [f"{prefix}{i}" for i in range(count)]
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


def plane_cpu_seconds(bench: Bench) -> float | None:
    """CPU time kube-apiserver and etcd have used so far; None when this run did not start
    them (BENCH_KUBECONFIG)."""
    if bench.plane is None:
        return None
    return sum(cpu_seconds(p.pid) for p in bench.plane.processes.values())


def cpu_spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def audit_entries(bench: Bench, since: int, until: int | None = None) -> Iterator[dict[str, Any]]:
    """The audit log's entries from byte ``since`` on (to byte ``until``), one at a time
    (at BENCH_HUGE a phase logs hundreds of thousands); a last line still being written
    is skipped."""
    assert bench.plane is not None, "only with an audit log of this run's own (audit_mark)"
    with bench.plane.audit_log.open() as log:
        log.seek(since)
        read = since
        for line in log:
            read += len(line.encode())
            if until is not None and read > until:
                return
            if line.endswith("\n"):
                yield json.loads(line)


def operator_requests(bench: Bench, since: int, namespace: str) -> Iterator[dict[str, Any]]:
    """The operator's requests that concern ``namespace`` (or no namespace at all:
    its cluster-wide watches and lists)."""
    return (
        entry for entry in audit_entries(bench, since)
        if entry.get("userAgent", "").startswith(OPERATOR_AGENTS)
        and (entry.get("objectRef") or {}).get("namespace") in (namespace, None)
    )  # fmt: skip


def start_profile(operator: OperatorProcess, phase: str, count: int) -> None:
    """BENCH_PROFILE (py-spy's path): record the operator's CPU for BENCH_PROFILE_SECONDS
    into /tmp/<phase>-<count>-profile.txt (raw, for flame graphs), in the background."""
    spy = os.environ.get("BENCH_PROFILE")
    if not spy:
        return
    import subprocess

    subprocess.Popen([spy, "record", "-p", str(operator_pid(operator)), "-o",
                      f"/tmp/{phase}-{count}-profile.txt", "-f", "raw", "-r", "100", "--gil",
                      "-d", os.environ.get("BENCH_PROFILE_SECONDS", "6")],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)


def print_timeline(requests: Iterable[dict[str, Any]], step: float = 1.0) -> None:
    """The operator's writes per ``step`` seconds, by kind of write (a diagnostic)."""
    from datetime import datetime

    def when(entry: dict[str, Any]) -> float:
        return datetime.fromisoformat(entry["stageTimestamp"].replace("Z", "+00:00")).timestamp()

    def label(entry: dict[str, Any]) -> str:
        ref = entry.get("objectRef") or {}
        kind = f"{ref.get('resource')}/{ref.get('subresource', '')}".rstrip("/")
        manager = entry["requestURI"].partition("fieldManager=")[2].partition("&")[0]
        return f"{entry['verb']} {kind} {manager}".strip()

    writes = [(when(e), label(e)) for e in requests if e["verb"] in WRITE_VERBS]
    if not writes:
        return
    start = min(moment for moment, _ in writes)
    buckets: dict[int, dict[str, int]] = {}
    for moment, kind in writes:
        bucket = buckets.setdefault(int((moment - start) / step), {})
        bucket[kind] = bucket.get(kind, 0) + 1
    for index in sorted(buckets):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(buckets[index].items()))
        print(f"{index * step:6.1f}s {counts}")


# -- phases ------------------------------------------------------------------------------


def bind_phase(
    bench: Bench, count: int, idle_seconds: float, prefix: str = "cred", guard: bool = False
) -> dict[str, Any]:
    """Bind ``count`` clusters over 10 credentials named ``prefix``0..9 and its baseline;
    with ``guard``, the deletion guard step at the end, while the operator still runs."""
    namespace = bench.namespace("op-bind")
    operator = bench.operator(namespace, metrics=guard)
    guarded: dict[str, Any] = {}
    try:
        credentials = create_credentials(bench, namespace, CREDENTIALS, prefix)
        audit_from = bench.audit_mark()

        def bound() -> bool:
            # The cheap check first (10 objects), the full list only when it passes: the
            # harness's own reads must not slow the API server down for the operator.
            listed = items(bench, namespace, CREDENTIAL_PLURAL)
            if sum((c.get("status") or {}).get("clusterCount", 0) for c in listed) != count:
                return False
            return all_clusters(
                bench, namespace, count, lambda c: condition_status(c, "CredentialBound") == "True"
            )

        start_profile(operator, "bind", count)
        cpu_before = cpu_seconds(operator_pid(operator))
        plane_before = plane_cpu_seconds(bench)
        started = time.monotonic()
        asyncio.run(gather_limited(create_calls(bench, namespace, count, credentials)))
        wait(bound, patience(count), "every cluster bound and listed", interval=polling(count))
        seconds = time.monotonic() - started
        cpu = cpu_seconds(operator_pid(operator)) - cpu_before
        plane_cpu = cpu_spent(plane_before, plane_cpu_seconds(bench))
        if os.environ.get("BENCH_TIMELINE") and audit_from is not None:
            print_timeline(operator_requests(bench, audit_from, namespace))
        wait(lambda: all_clusters(bench, namespace, count,
                                  lambda c: condition_status(c, "Ready") == "True"),
             patience(count), "every cluster deployed", interval=2)  # fmt: skip
        time.sleep(5)  # the last writes of the convergence
        requests, idle = None, None  # without an audit log of this run's own: not measured
        if audit_from is not None:
            requests = sum(1 for _ in operator_requests(bench, audit_from, namespace))
        rss = peak_rss_mb(operator)
        idle_from = bench.audit_mark()
        if idle_from is not None:
            time.sleep(idle_seconds)
            idle = [e for e in operator_requests(bench, idle_from, namespace)
                    if e["verb"] in WRITE_VERBS]  # fmt: skip
        if guard:
            guarded = deletion_guard_step(bench, namespace, operator, credentials)
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
                                   "conditions": [cond, *summary(cond, "Ready")]}}  # fmt: skip

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
    runs = []
    for _ in range(2):
        plane_before = plane_cpu_seconds(bench)
        runs.append((bind_baseline(), cpu_spent(plane_before, plane_cpu_seconds(bench))))
    baseline_seconds, baseline_plane_cpu = min(runs, key=lambda run: run[0])
    return {
        "bind_seconds": round(seconds, 2),
        "bind_baseline_seconds": round(baseline_seconds, 2),
        "bind_ratio": round(seconds / baseline_seconds, 2),
        "bind_operator_cpu_seconds": round(cpu, 2),
        "bind_plane_cpu_seconds": plane_cpu,
        "bind_baseline_plane_cpu_seconds": baseline_plane_cpu,
        "rss_mb": round(rss, 1),
        "requests_per_cluster_event": None if requests is None else round(requests / count, 2),
        "idle_writes": None if idle is None else len(idle),
        "idle_seconds": idle_seconds,
        **guarded,
    }


# -- the deletion guard ------------------------------------------------------------------


def scrape(port: int) -> dict[str, float] | None:
    """The operator's /metrics: each sample name with its values summed over their
    labels, and each declared counter (its ``# TYPE`` line) at 0 before its first sample;
    None when the endpoint does not answer."""
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            family = line.split()[2]  # with or without _total, by client library version
            values.setdefault(family if family.endswith("_total") else f"{family}_total", 0.0)
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{") if "{" in line else line.partition(" ")
        value = rest.rpartition("}")[2] if "{" in line else rest
        values[name] = values.get(name, 0.0) + float(value.split()[0])
    return values


def delete_refused(bench: Bench, namespace: str, name: str, dry_run: bool = False) -> str | None:
    """Delete a credential (server-side dry run: only ask admission); the admission
    refusal's message, or None when the delete passed."""
    try:
        bench.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name,
            **({"dry_run": "All"} if dry_run else {}))  # fmt: skip
    except ApiException as error:
        if error.status not in (400, 403, 422):
            raise
        try:
            return str(json.loads(error.body).get("message") or error.reason)
        except (TypeError, ValueError):
            return str(error.reason)
    return None


def deletion_guard_step(
    bench: Bench, namespace: str, operator: OperatorProcess, credentials: list[str]
) -> dict[str, Any]:
    """Delete a credential that clusters use and read how many Clusters the operator's
    deletion guard LISTs per check (its metrics); see the module's docstring."""
    name, other = credentials[0], credentials[1]
    # What the guard's own LIST selects: Clusters naming it, in every namespace (the name
    # is this phase's alone, but a control plane used before may hold earlier runs' too).
    own = count_clusters(bench, f"spec.credentialRef.name={name}")
    total = count_clusters(bench)
    refusal = delete_refused(bench, namespace, name, dry_run=True)
    before = scrape(operator.metrics_port)
    audit_from = bench.audit_mark()
    admission = client.AdmissionregistrationV1Api(bench.api)
    admission.delete_validating_admission_policy_binding(IN_USE_BINDING)
    outcome = "not exported"
    checks = objects = 0.0
    try:
        # The API server drops the binding from its admission cache within a second or so.
        wait(lambda: delete_refused(bench, namespace, name) is None, 60,
             "the credential's delete to pass admission without the policy's binding")  # fmt: skip
        try:  # held by the finalizer, or gone at once (nothing guarded it)
            found = bench.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name)  # fmt: skip
            held = bool(found["metadata"].get("deletionTimestamp"))
        except ApiException as error:
            if error.status != 404:
                raise
            held = False

        def blocked_event() -> bool:
            selector = f"involvedObject.name={name},reason=DeletionBlocked"
            return bool(bench.core.list_namespaced_event(namespace, field_selector=selector).items)

        def observed() -> str | None:
            now = scrape(operator.metrics_port)
            if now is None:
                return "unreachable" if blocked_event() else None
            if GUARD_CHECKS in now and GUARD_OBJECTS in now:
                base = before or {}
                if now[GUARD_CHECKS] >= base.get(GUARD_CHECKS, 0.0) + 1:
                    return "exported"
                return None
            if blocked_event():  # the guard ran; counters may be registered on first use
                time.sleep(2)
                now = scrape(operator.metrics_port) or {}
                return "exported" if GUARD_CHECKS in now and GUARD_OBJECTS in now else "missing"
            return None

        try:
            state = wait(observed, 120, "a deletion guard check", interval=1)
        except PhaseFailed:
            state = f"no check within {capped(120):g} s"
        if state == "exported":
            # Both counters from one scrape, once two scrapes a second apart agree: a
            # check counted whose objects are not added yet would skew the ratio.
            def settled() -> dict[str, float] | None:
                first = scrape(operator.metrics_port)
                time.sleep(1)
                second = scrape(operator.metrics_port)
                if first is None or second is None:
                    return None
                pair = [(m.get(GUARD_CHECKS), m.get(GUARD_OBJECTS)) for m in (first, second)]
                return second if pair[0] == pair[1] else None

            after = wait(settled, 30, "the guard's counters", interval=0)
            base = before or {}
            checks = after[GUARD_CHECKS] - base.get(GUARD_CHECKS, 0.0)
            objects = after[GUARD_OBJECTS] - base.get(GUARD_OBJECTS, 0.0)
            outcome = "exported"
        elif state == "unreachable":
            outcome = "not exported (the metrics endpoint does not answer)"
        elif state != "missing":
            outcome = f"not measured ({state})"
        lists = None if audit_from is None else [
            e["requestURI"] for e in operator_requests(bench, audit_from, namespace)
            if e["verb"] == "list" and (e.get("objectRef") or {}).get("resource") == CLUSTER_PLURAL
        ]  # fmt: skip
        guard_rss = peak_rss_mb(operator)
    finally:
        install_admission_policies(bench.api)  # the binding back, from deploy/admission
        try:
            wait(lambda: delete_refused(bench, namespace, other, dry_run=True) is not None, 60,
                 "the policy to refuse deleting an in-use credential again")  # fmt: skip
            restored = True
        except PhaseFailed:
            restored = False
    if not restored:
        raise PhaseFailed(f"the admission policy binding {IN_USE_BINDING} is not back in force "
                          "(install it again: kubectl apply -k deploy/admission/)")  # fmt: skip
    if outcome.startswith("not measured"):  # the guard never ran: nothing was measured
        raise PhaseFailed(f"deletion guard: {outcome}; held by the finalizer: {held}")
    per_check = round(objects / checks, 1) if checks else None
    if per_check is None:
        print(f"deletion guard: {outcome} (the credential's own clusters: {own}; "
              f"all clusters: {total})", flush=True)  # fmt: skip
    else:
        print(f"deletion guard: {per_check:g} objects per check (the credential's own clusters: "
              f"{own}; all clusters: {total})", flush=True)  # fmt: skip
    return {
        "guard_credential": f"{namespace}/{name}",
        "guard_admission_refused": refusal is not None,
        "guard_held_by_finalizer": held,
        "guard_metrics": outcome,
        "guard_checks": int(checks),
        "guard_objects_per_check": per_check,
        "guard_credential_clusters": own,
        "guard_all_clusters": total,
        "guard_cluster_lists": None if lists is None else len(lists),
        "guard_cluster_lists_field_selected": (
            None if lists is None else sum("fieldSelector=" in uri for uri in lists)
        ),
        "guard_rss_mb": round(guard_rss, 1),
        "guard_binding_restored": restored,
    }


def fanout_phase(bench: Bench, count: int) -> dict[str, Any]:
    namespace = bench.namespace("op-fan")
    operator = bench.operator(namespace)
    try:
        # Every cluster at once: this measures the fan-out itself, not the pacing.
        (credential,) = create_credentials(bench, namespace, 1, rollout={"maxConcurrent": "100%"})
        # The change to measure: the credential switches to another role. The revision
        # covers the provider block (cloudcred/revision.py), and roleArn is all a role's
        # block holds now that the ExternalId is the operator's (not in the spec).
        other_role = bench.moto.create_role(f"bench-{uuid.uuid4().hex[:6]}")
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
            return all_clusters(bench, namespace, count, lambda c: (
                (c.get("status") or {}).get("deployedRevision") == rev
                and (not annotated or c["metadata"].get("annotations", {}).get(
                    "cloudcred.io/redeploy-revision") == rev)))  # fmt: skip

        first = wait(revision, 60, "the credential's first revision", interval=0.1)
        wait(lambda: all_on(first, annotated=False), patience(count), "the first deployment",
             interval=polling(count, 0.5))  # fmt: skip
        time.sleep(3)
        cpu_before = cpu_seconds(operator_pid(operator))
        plane_before = plane_cpu_seconds(bench)
        start_profile(operator, "fanout", count)
        audit_from = bench.audit_mark()
        started = time.monotonic()
        bench.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIAL_PLURAL, credential,
            {"spec": {"aws": {"roleArn": other_role}}})  # fmt: skip
        second = wait(lambda: (rev := revision()) not in ("", first) and rev, 60,
                      "the new revision", interval=0.1)  # fmt: skip
        wait(lambda: all_on(second, annotated=True), patience(count), "the fan-out",
             interval=polling(count))  # fmt: skip
        seconds = time.monotonic() - started
        cpu = cpu_seconds(operator_pid(operator)) - cpu_before
        plane_cpu = cpu_spent(plane_before, plane_cpu_seconds(bench))
        time.sleep(3)  # the last writes of the convergence, as in the bind phase
        rss = peak_rss_mb(operator)
        if os.environ.get("BENCH_TIMELINE") and audit_from is not None:
            print_timeline(operator_requests(bench, audit_from, namespace))
    finally:
        operator.stop()

    baseline_ns = bench.namespace("base-fan")
    asyncio.run(gather_limited(create_calls(bench, baseline_ns, count, ["base"])))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def cluster_status(revision: str, pending: bool = False) -> dict[str, Any]:
        """A deployed cluster's status; ``pending``: marked for ``revision``, still
        deployed with v1-old. The conditions are the operator's: CredentialBound,
        RedeployPending and the summary (Reconciling while pending, else Ready)."""
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
            "conditions": [{**ready, "type": "CredentialBound", "reason": "Bound"}, redeploy,
                           *(summary(redeploy, "Reconciling") if pending
                             else summary(ready, "Ready"))]}}  # fmt: skip

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

        def event() -> client.CoreV1Event:
            # Built when sent, not when every cluster's writes are queued: one client
            # model holds several Configuration objects, ~10 KB (100 MB at 10,000).
            return client.CoreV1Event(
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
            lambda: bench.core.create_namespaced_event(baseline_ns, event()),
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
        plane_runs.append(cpu_spent(plane_before, plane_cpu_seconds(bench)))
        first_deployment()
        direct_runs.append(timed(baseline(f"v2-direct-{attempt}", mark=False)))
    baseline_seconds, direct_seconds = min(marked_runs), min(direct_runs)
    baseline_plane_cpu = plane_runs[marked_runs.index(baseline_seconds)]
    return {
        "fanout_plane_cpu_seconds": plane_cpu,
        "fanout_baseline_plane_cpu_seconds": baseline_plane_cpu,
        "fanout_seconds": round(seconds, 2),
        "fanout_baseline_seconds": round(baseline_seconds, 2),
        "fanout_ratio": round(seconds / baseline_seconds, 2),
        "fanout_direct_baseline_seconds": round(direct_seconds, 2),
        "fanout_direct_ratio": round(seconds / direct_seconds, 2),
        "fanout_operator_cpu_seconds": round(cpu, 2),
        "fanout_rss_mb": round(rss, 1),
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
        wait(lambda: all_clusters(bench, namespace, count,
                                  lambda c: condition_status(c, "Ready") == "True"),
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


# -- broken credentials ------------------------------------------------------------------

# The three kinds of credential of the broken phase, each in a namespace of its own.
BROKEN_KINDS = ("missing", "refused", "healthy")
SECRET_KEY = "secretAccessKey"
# "Credential=AKIA.../20260101/eu-west-3/sts/aws4_request": the key a request is signed with.
SIGNED_WITH = re.compile(r"Credential=([A-Z0-9]+)/")


@dataclass
class ProviderCount:
    """The requests reaching moto through the counting proxy, by the kind of credential
    whose key signed them (``other``: the operator's own identity, the harness)."""

    kinds: dict[str, str] = field(default_factory=dict)  # access key id -> kind
    seen: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, kind)

    def hold(self, head: str) -> float:
        signed = SIGNED_WITH.search(head)
        kind = self.kinds.get(signed[1], "other") if signed else "other"
        self.seen.append((time.monotonic(), kind))
        return 0.0  # counted, passed on at once

    def between(self, start: float, end: float) -> dict[str, int]:
        counts = dict.fromkeys((*BROKEN_KINDS, "other"), 0)
        for moment, kind in list(self.seen):
            if start <= moment < end:
                counts[kind] += 1
        return counts


def broken_credential(name: str, key_id: str, secret: str) -> dict[str, Any]:
    """An AWS static key whose secret half is in ``secret`` (default verification: on,
    every hour)."""
    ref = {"name": secret, "key": SECRET_KEY}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CloudCredential",
            "metadata": {"name": name},
            "spec": {"provider": "AWS",
                     "aws": {"accessKeyId": key_id, "secretAccessKeyRef": ref}}}  # fmt: skip


def key_secret(bench: Bench, namespace: str, name: str, value: str) -> None:
    bench.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), string_data={SECRET_KEY: value}))  # fmt: skip


def verdicts(bench: Bench, namespaces: dict[str, str]) -> dict[str, int]:
    """Credentials per kind whose Verified condition is True or False: a first check done."""
    return {
        kind: sum(condition_status(c, "Verified") in ("True", "False")
                  for c in items(bench, namespace, CREDENTIAL_PLURAL))
        for kind, namespace in namespaces.items()
    }  # fmt: skip


def api_requests_by_namespace(
    bench: Bench, since: int, until: int, namespaces: dict[str, str]
) -> dict[str, int]:
    """The operators' API requests between two audit marks, by kind (the namespace they
    concern) and ``cluster-wide`` (no namespace: both operators'); each request once
    (a watch logs its start and its end)."""
    kinds = {namespace: kind for kind, namespace in namespaces.items()}
    counted: dict[str, set[str]] = {kind: set() for kind in (*BROKEN_KINDS, "cluster-wide")}
    for entry in audit_entries(bench, since, until):
        if not entry.get("userAgent", "").startswith(OPERATOR_AGENTS):
            continue
        namespace = (entry.get("objectRef") or {}).get("namespace")
        kind = "cluster-wide" if namespace is None else kinds.get(namespace)
        if kind is not None:
            counted[kind].add(entry["auditID"])
    return {kind: len(ids) for kind, ids in counted.items()}


def broken_phase(bench: Bench, count: int, warmup: float, seconds: float) -> dict[str, Any]:
    """``count`` broken credentials (half with a missing Secret, half with a key the
    provider refuses) under one operator, ``count`` healthy ones under another, at once;
    after every first check and ``warmup`` seconds, each kind's API and provider requests
    over ``seconds``."""
    half = count // 2
    sizes = {"missing": half, "refused": count - half, "healthy": count}
    namespaces = {kind: bench.namespace(f"op-broken-{kind}") for kind in BROKEN_KINDS}
    counter = ProviderCount()
    endpoint = urllib.parse.urlparse(bench.moto.endpoint)
    proxy = LoopbackProxy(
        endpoint.hostname or "127.0.0.1",
        endpoint.port or 80,
        hold=counter.hold,
        lifetime=max(900.0, 4 * (warmup + seconds) + 900),
    )
    proxy.start()
    via_proxy = {"AWS_ENDPOINT_URL": proxy.url}
    broken = bench.operator(namespaces["missing"], also=[namespaces["refused"]], env=via_proxy)
    healthy_operator = bench.operator(namespaces["healthy"], env=via_proxy)
    try:
        key = bench.moto.create_user(f"bench-healthy-{uuid.uuid4().hex[:6]}")
        counter.kinds[key.access_key_id] = "healthy"
        key_secret(bench, namespaces["healthy"], "key", key.secret_access_key)
        # A well-formed key id moto never issued: each check asks it and is refused.
        key_secret(bench, namespaces["refused"], "key", "not-the-secret-of-any-key")
        refused_ids = [f"AKIAZZZZ{uuid.uuid4().hex[:12].upper()}" for _ in range(sizes["refused"])]
        counter.kinds.update(dict.fromkeys(refused_ids, "refused"))
        bodies = (
            [(namespaces["missing"], broken_credential(f"m{i:05d}", f"AKIAYYYY{i:012d}", "gone"))
             for i in range(sizes["missing"])]
            + [(namespaces["refused"], broken_credential(f"r{i:05d}", key_id, "key"))
               for i, key_id in enumerate(refused_ids)]
            + [(namespaces["healthy"], broken_credential(f"h{i:05d}", key.access_key_id, "key"))
               for i in range(sizes["healthy"])]
        )  # fmt: skip
        phase_audit, started = bench.audit_mark(), time.monotonic()
        asyncio.run(gather_limited(
            lambda ns=ns, body=body: bench.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, CREDENTIAL_PLURAL, body)
            for ns, body in bodies))  # fmt: skip
        created = time.monotonic() - started

        def first_checks() -> bool:
            return verdicts(bench, namespaces) == sizes

        wait(first_checks, patience(count, 600), "every credential's first check",
             interval=polling(count, 2.0))  # fmt: skip
        checked = time.monotonic() - started
        time.sleep(warmup)
        audit_from, window_start = bench.audit_mark(), time.monotonic()
        time.sleep(seconds)
        audit_to, window_end = bench.audit_mark(), time.monotonic()
        window = window_end - window_start
        if not (broken.alive and healthy_operator.alive):
            raise PhaseFailed("an operator exited during the window")
    finally:
        broken.stop()
        healthy_operator.stop()
        proxy.stop()
    provider = counter.between(window_start, window_end)
    api = None
    measures = {"broken_provider_phase_requests": counter.between(started, window_end)}
    if phase_audit is not None and audit_from is not None and audit_to is not None:
        api = api_requests_by_namespace(bench, audit_from, audit_to, namespaces)
        measures["broken_api_phase_requests"] = api_requests_by_namespace(
            bench, phase_audit, audit_to, namespaces)  # fmt: skip
    return broken_measures(count, sizes, window, provider, api, created, checked) | measures


def broken_measures(
    count: int, sizes: dict[str, int], window: float, provider: dict[str, int],
    api: dict[str, int] | None, created: float, checked: float,
) -> dict[str, Any]:  # fmt: skip
    """The broken phase's figures: per second and per credential-hour, each kind and the
    broken ones together, and broken against healthy."""

    def rate(requests: int) -> float:
        return round(requests / window, 3)

    def per_hour(requests: int, credentials: int) -> float:
        return round(requests / credentials / (window / 3600), 2) if credentials else 0.0

    def ratio(broken: float, healthy: float) -> float | None:
        return round(broken / healthy, 1) if healthy else None

    measures: dict[str, Any] = {
        "broken_credentials": count,
        "broken_window_seconds": round(window, 1),
        "broken_create_seconds": round(created, 1),
        "broken_first_checks_seconds": round(checked, 1),
    }
    sources: dict[str, dict[str, int] | None] = {"provider": provider, "api": api}
    for source, counts in sources.items():
        for kind in ("missing", "refused", "healthy"):
            requests = None if counts is None else counts[kind]
            measures[f"broken_{source}_{kind}_requests"] = requests
            measures[f"broken_{source}_{kind}_per_credential_hour"] = (
                None if requests is None else per_hour(requests, sizes[kind])
            )
        both = None if counts is None else counts["missing"] + counts["refused"]
        healthy = None if counts is None else counts["healthy"]
        measures[f"broken_{source}_per_second"] = None if both is None else rate(both)
        measures[f"broken_{source}_healthy_per_second"] = None if healthy is None else rate(healthy)
        measures[f"broken_{source}_per_credential_hour"] = (
            None if both is None else per_hour(both, count)
        )
        measures[f"broken_{source}_ratio"] = (
            None if both is None or healthy is None else ratio(both, healthy)
        )
    measures["broken_provider_other_requests"] = provider["other"]
    measures["broken_api_cluster_wide_requests"] = None if api is None else api["cluster-wide"]
    return measures


def huge_measures(measures: dict[str, Any]) -> dict[str, Any]:
    """A phase's measures at BENCH_HUGE under ``huge_`` keys (``rss_mb``, the bind's,
    becomes ``huge_bind_rss_mb``); the deletion guard's keep their ``guard_`` names and
    the idle check (not run at this size) is dropped."""
    renamed = {"rss_mb": "bind_rss_mb"}
    return {
        key if key.startswith("guard_") else f"huge_{renamed.get(key, key)}": value
        for key, value in measures.items() if not key.startswith("idle_")
    }  # fmt: skip


def requested_phases(huge: int) -> list[str]:
    """BENCH_PHASES in the order they run; huge stands for huge-bind and huge-fanout,
    which BENCH_HUGE=0 skips."""
    asked = set(os.environ.get("BENCH_PHASES", "bind,fanout,large,huge,broken").split(","))
    if "huge" in asked:
        asked |= {"huge-bind", "huge-fanout"}
    order = ["bind", "fanout", "large", *(["huge-bind", "huge-fanout"] if huge else []),
             "broken"]  # fmt: skip
    return [phase for phase in order if phase in asked]


# Targets: at BENCH_CLUSTERS (and the RSS at BENCH_LARGE), and tighter at BENCH_HUGE.
BIND_RATIO, FANOUT_RATIO, RSS_MB, RSS_MB_LARGE = 2.0, 2.0, 150, 250
HUGE_BIND_RATIO, HUGE_FANOUT_RATIO, HUGE_RSS_MB = 1.5, 1.3, 200

PHASE_FAILED = 2  # exit status: a phase failed or timed out, or the bench could not start
TARGETS_NOT_MET = 1  # exit status: every phase ran, a target is not met or not measured


def figure(value: Any, unit: str = "") -> str:
    """A measure for printing; ``n/a`` when it was not measured."""
    return "n/a" if value is None else f"{value}{unit}"


def phase_line(phase: str, measures: dict[str, Any], seconds: int) -> str:
    """The figures of a phase that ended, on one line: the operator against its baseline
    and their ratio first (the test of the bench reads them), then the phase's costs."""
    if phase == "broken":
        return (f"bench: {phase} done in {seconds} s: {measures['broken_credentials']} broken "
                f"credentials over {measures['broken_window_seconds']} s: API "
                f"{figure(measures['broken_api_per_second'])} req/s (healthy "
                f"{figure(measures['broken_api_healthy_per_second'])}, ratio "
                f"{figure(measures['broken_api_ratio'])}), provider "
                f"{measures['broken_provider_per_second']} req/s (healthy "
                f"{measures['broken_provider_healthy_per_second']}, ratio "
                f"{figure(measures['broken_provider_ratio'])}); per broken credential-hour: "
                f"API {figure(measures['broken_api_per_credential_hour'])}, provider "
                f"{measures['broken_provider_per_credential_hour']}")  # fmt: skip
    if phase == "large":
        size = measures["largest_object_bytes"]
        return (f"bench: {phase} done in {seconds} s: operator {size} B, baseline {ETCD_LIMIT} B "
                f"(etcd's limit), ratio {size / ETCD_LIMIT:.3g}; peak RSS "
                f"{measures['rss_mb_large']} MB; {measures['largest_object_listed']} clusters "
                f"listed")  # fmt: skip
    kind = "bind" if phase.endswith("bind") else "fanout"
    key = f"huge_{kind}" if phase.startswith("huge-") else kind
    rss = measures.get(f"{key}_rss_mb", measures.get("rss_mb"))
    line = (
        f"bench: {phase} done in {seconds} s: operator {measures[f'{key}_seconds']} s, "
        f"baseline {measures[f'{key}_baseline_seconds']} s, ratio {measures[f'{key}_ratio']}"
    )
    if kind == "fanout":
        line += (f"; without the pending state: baseline "
                 f"{measures[f'{key}_direct_baseline_seconds']} s, ratio "
                 f"{measures[f'{key}_direct_ratio']}")  # fmt: skip
    line += f"; peak RSS {rss} MB"
    if kind == "bind":
        requests = measures.get("huge_requests_per_cluster_event",
                                measures.get("requests_per_cluster_event"))  # fmt: skip
        line += f"; API requests per cluster event {figure(requests)}"
        if "idle_writes" in measures:
            line += (f"; writes in {measures['idle_seconds']:g} idle s "
                     f"{figure(measures['idle_writes'])}")  # fmt: skip
    return line


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a timeout of whoever started the bench) unwinds like Ctrl-C: every
    operator, moto and the control plane this run started are stopped on the way out."""
    raise KeyboardInterrupt


def failed(what: str, bench: Bench | None) -> None:
    """Say which phase failed and why, with the end of its operator's log; exit 2."""
    print(f"bench: {what} FAILED:", flush=True)
    traceback.print_exc(file=sys.stdout)
    if bench is not None and bench.operators:
        tail = bench.operators[-1].log().splitlines()[-40:]
        print(f"bench: the end of the operator's log ({bench.operators[-1].log_path.name}):")
        print("\n".join(f"    {line}" for line in tail), flush=True)
    sys.exit(PHASE_FAILED)


def main() -> None:
    count = int(os.environ.get("BENCH_CLUSTERS", "1000"))
    large = int(os.environ.get("BENCH_LARGE", "5000"))
    huge = int(os.environ.get("BENCH_HUGE", "10000"))
    idle_seconds = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    broken = int(os.environ.get("BENCH_BROKEN", "1000"))
    broken_warmup = float(os.environ.get("BENCH_BROKEN_WARMUP", "60"))
    broken_seconds = float(os.environ.get("BENCH_BROKEN_SECONDS", "240"))
    attached = os.environ.get("BENCH_KUBECONFIG")  # a cluster this run does not start
    phases = requested_phases(huge)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    results: dict[str, Any] = {"clusters": count}
    if {"huge-bind", "huge-fanout"} & set(phases):
        results["huge_clusters"] = huge
    durations: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        plane: ControlPlane | None = None
        moto: Moto | None = None
        bench: Bench | None = None
        try:
            try:
                if attached:
                    kubeconfig = Path(attached)
                    print(f"bench: on the cluster of {kubeconfig} (BENCH_KUBECONFIG): no audit "
                          "log or control-plane processes of its own", flush=True)  # fmt: skip
                else:
                    policy = workdir / "audit-policy.yaml"
                    policy.write_text(AUDIT_POLICY)
                    plane = ControlPlane(workdir=workdir / "plane", audit_policy=policy).start()
                    kubeconfig = plane.kubeconfig
                moto = start_moto(workdir / "moto.log")
                api = api_client(kubeconfig)
                install_crds(api)
                install_admission_policies(api)
            except Exception:
                failed("starting the control plane and moto", None)
            bench = Bench(plane, kubeconfig, api, moto, workdir)
            runs: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
                "bind": (f"bind, {count} clusters over {CREDENTIALS} credentials",
                         lambda: bind_phase(bench, count, idle_seconds)),
                "fanout": (f"fan-out, {count} clusters on one credential",
                           lambda: fanout_phase(bench, count)),
                "large": (f"cost, {large} clusters on one credential",
                          lambda: large_phase(bench, large)),
                "huge-bind": (f"bind, {huge} clusters over {CREDENTIALS} credentials, then the "
                              f"deletion guard", lambda: huge_measures(
                                  bind_phase(bench, huge, 0, prefix=HUGE_CREDENTIALS,
                                             guard=True))),
                "huge-fanout": (f"fan-out, {huge} clusters on one credential",
                                lambda: huge_measures(fanout_phase(bench, huge))),
                "broken": (f"broken credentials, {broken} against {broken} healthy, "
                           f"{broken_warmup:g} s after the first checks, for {broken_seconds:g} s",
                           lambda: broken_phase(bench, broken, broken_warmup, broken_seconds)),
            }  # fmt: skip
            for phase in phases:
                what, run = runs[phase]
                print(f"bench: {what}", flush=True)
                phase_started = time.monotonic()
                try:
                    measures = run()
                except Exception:
                    failed(f"phase {phase} (after {time.monotonic() - phase_started:.0f} s)",
                           bench)  # fmt: skip
                results |= measures
                durations[phase] = round(time.monotonic() - phase_started)
                print(phase_line(phase, measures, durations[phase]), flush=True)
        finally:
            for operator in bench.operators if bench else []:
                operator.stop()  # stopped by their phases, unless interrupted
            if moto:
                moto.stop()
            if plane:
                plane.stop()
    peaks = [results[k] for k in ("huge_bind_rss_mb", "guard_rss_mb", "huge_fanout_rss_mb")
             if k in results]  # fmt: skip
    if peaks:
        results["huge_rss_mb"] = max(peaks)
    results["harness_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["bench_seconds"] = round(time.monotonic() - started)
    results["phase_seconds"] = durations  # each phase with its baselines
    report(results)


def report(results: dict[str, Any]) -> None:
    needed = {"bind_ratio", "fanout_ratio", "rss_mb_large"}
    huge = results.get("huge_clusters")
    if huge:
        needed |= {"huge_bind_ratio", "huge_fanout_ratio"}
    if not needed <= set(results):
        print(json.dumps(results, indent=2))  # some phases only (BENCH_PHASES): no verdict
        return
    count = results["clusters"]
    idle = results["idle_writes"]
    rows = [
        (f"bind, {count} clusters", f"{results['bind_seconds']} s",
         f"{results['bind_baseline_seconds']} s", f"{results['bind_ratio']}",
         f"<= {BIND_RATIO}"),
        (f"fan-out, {count} clusters", f"{results['fanout_seconds']} s",
         f"{results['fanout_baseline_seconds']} s", f"{results['fanout_ratio']}",
         f"<= {FANOUT_RATIO}"),
        ("fan-out, baseline without pending state", f"{results['fanout_seconds']} s",
         f"{results['fanout_direct_baseline_seconds']} s", f"{results['fanout_direct_ratio']}",
         ""),
        (f"peak RSS at {count}", f"{results['rss_mb']} MB", "", "", f"<= {RSS_MB} MB"),
        (f"peak RSS at {results['large_clusters']}", f"{results['rss_mb_large']} MB", "", "",
         f"<= {RSS_MB_LARGE} MB"),
        ("API requests per cluster event", figure(results["requests_per_cluster_event"]), "",
         "", ""),
        (f"writes in {results['idle_seconds']:g} idle s", figure(idle), "", "", "0"),
        (f"largest object ({results['large_clusters']} clusters)",
         f"{results['largest_object_bytes']} B", f"etcd limit {ETCD_LIMIT} B",
         f"{results['largest_object_bytes'] / ETCD_LIMIT:.2f}", "well under 1"),
    ]  # fmt: skip
    if huge:
        per_check = results["guard_objects_per_check"]
        own = results["guard_credential_clusters"]
        rows += [
            (f"bind, {huge} clusters", f"{results['huge_bind_seconds']} s",
             f"{results['huge_bind_baseline_seconds']} s", f"{results['huge_bind_ratio']}",
             f"<= {HUGE_BIND_RATIO}"),
            (f"fan-out, {huge} clusters", f"{results['huge_fanout_seconds']} s",
             f"{results['huge_fanout_baseline_seconds']} s", f"{results['huge_fanout_ratio']}",
             f"<= {HUGE_FANOUT_RATIO}"),
            (f"fan-out {huge}, baseline without pending state",
             f"{results['huge_fanout_seconds']} s",
             f"{results['huge_fanout_direct_baseline_seconds']} s",
             f"{results['huge_fanout_direct_ratio']}", ""),
            (f"peak RSS at {huge} (bind, guard, fan-out)", f"{results['huge_rss_mb']} MB", "",
             "", f"<= {HUGE_RSS_MB} MB"),
            (f"API requests per cluster event ({huge})",
             figure(results["huge_requests_per_cluster_event"]), "", "", ""),
            ("deletion guard, objects per check",
             results["guard_metrics"] if per_check is None else f"{per_check:g}",
             f"own {own}, all {results['guard_all_clusters']}", "", f"<= {own} (own)"),
        ]  # fmt: skip
    if "broken_credentials" in results:
        broken = results["broken_credentials"]
        rows += [
            (f"API req/s, {broken} broken credentials",
             figure(results["broken_api_per_second"]),
             f"{figure(results['broken_api_healthy_per_second'])} (healthy)",
             figure(results["broken_api_ratio"]), ""),
            (f"provider req/s, {broken} broken credentials",
             f"{results['broken_provider_per_second']}",
             f"{results['broken_provider_healthy_per_second']} (healthy)",
             figure(results["broken_provider_ratio"]), ""),
        ]  # fmt: skip
    rows.append(("bench harness peak RSS", f"{results['harness_rss_mb']} MB", "", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    header = ("measure", "operator", "baseline", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    path = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).parent / "results.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {path} ({results['bench_seconds']} s in all)")
    met = (results["bind_ratio"] <= BIND_RATIO and results["fanout_ratio"] <= FANOUT_RATIO
           and results["rss_mb"] <= RSS_MB and results["rss_mb_large"] <= RSS_MB_LARGE
           and idle == 0 and results["largest_object_bytes"] < ETCD_LIMIT / 2)  # fmt: skip
    if huge:
        per_check = results["guard_objects_per_check"]
        met = met and (results["huge_bind_ratio"] <= HUGE_BIND_RATIO
                       and results["huge_fanout_ratio"] <= HUGE_FANOUT_RATIO
                       and results["huge_rss_mb"] <= HUGE_RSS_MB and per_check is not None
                       and per_check <= results["guard_credential_clusters"])  # fmt: skip
    if met:
        print("targets met")
        return
    print("targets NOT met" + (" (idle writes not measured)" if idle is None else ""))
    sys.exit(TARGETS_NOT_MET)


if __name__ == "__main__":
    main()
