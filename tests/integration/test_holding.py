"""Bindings that hold in the real world (issue 13), against the real API server.

Each test is one of the issue's promises, shown the way a user would meet it:

1. a restart at scale (``CLOUDCRED_HOLD_CLUSTERS`` clusters: 200 in ``make test``, 2000 in
   ``make test-long``) never lets the credential's count drop, its Secret lose
   ``cloudcred.io/in-use``, or a delete of either through admission, polled every 200 ms
   from the SIGKILL until the restarted operator has nothing left to do (its work queues
   empty and quiet) and at least ``CLOUDCRED_HOLD_WINDOW`` seconds (12; 30 in
   ``make test-long``) after the new start; the restarted operator reaches the API server
   through a proxy that holds its first LIST of one kind, so the kinds arrive in a known
   order; and it takes over within 30 s: a Cluster deleted and one created while no
   operator ran are reflected by it. (Listing in pages, and ``status.clusters`` cut at
   2000, are shown at any size by ``test_the_operators_listing_reads_every_page`` here
   and ``tests/unit/test_reconcilers.py``);
2. ``kubectl replace`` of a referenced Secret (its labels dropped) is a new revision and
   the Secret is labelled and protected again;
3. one Cluster that a policy refuses to update holds up no other cluster, shows its
   problem in a Warning Event, is retried with backoff (refused writes read in the audit
   log) and is Bound once the policy is lifted;
4. after a credential switched to a new Secret and the rollout completed, the old Secret
   is released (it can be deleted) and the new one is protected;
5. a credential deleted while the operator's watch was down (a 410 Gone, then a re-list)
   leaves its clusters CredentialNotFound (fault suite: its own control plane);
6. a watch that stops answering (a loopback proxy turned into a black hole) makes
   ``/healthz`` fail (``make test-long``: it takes 40 s), and the operator catches up once
   the network is back;
7. a Cluster deleted and re-created under the same name while its deploy is under way
   gets a deployment of its own (the provider calls of the deploy are held by a proxy).

The operators here are the tests' own (killed, restarted, pointed at a proxy), each
watching namespaces the shared operator does not watch, except in 2 and 4.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    FORCE_DELETE_ANNOTATION,
    GROUP,
    IN_USE_LABEL,
    REDEPLOY_ANNOTATION,
    REFERENCED_LABEL,
    VERSION,
)
from cloudcred.kube import Kube as OperatorKube
from tests.aws import Moto
from tests.conftest import Kube
from tests.envtest.controlplane import ControlPlane
from tests.integration.test_faults import STOP_GRACE, plane_kube
from tests.integration.test_metrics import scrape
from tests.kube import api_client
from tests.operator import OperatorProcess, Operators, wait_for
from tests.proxy import LoopbackProxy, Tls, kubeconfig_via
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    deployed,
    events_for,
    get_cluster,
    get_credential,
    list_clusters,
    marked,
    new_namespace,
    new_revision,
    patch_cluster_status,
    patch_credential,
    refusal,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

HOLD_CLUSTERS = int(os.environ.get("CLOUDCRED_HOLD_CLUSTERS", "200"))
POLL_INTERVAL = 0.2
# Seconds polled after the restarted operator starts, at least; and in any case until it
# has had nothing left to do for SETTLED seconds (every work queue empty, none added).
AFTER_START = float(os.environ.get("CLOUDCRED_HOLD_WINDOW", "12"))
SETTLED = 3.0
TAKE_OVER = 30.0  # seconds after its start within which the restarted operator takes over
LIST_HOLD = 6.0  # seconds the restarted operator's first LIST of one kind is held
TEAMS = 4  # namespaces the cross-namespace fleet is spread over
QUIET = {"CLOUDCRED_LOG_LEVEL": "INFO"}  # DEBUG logs every body: slow with many clusters
ROLE = {"roleArn": "arn:aws:iam::123456789012:role/deployer"}  # moto's account; see moto
NO_CHECK = {"enabled": False}  # bindings do not need the provider
REFUSED_WINDOW = 30.0
RETRY_CAP = 4.0  # CLOUDCRED_RETRY_MAX_DELAY of the refused-cluster test
OTHERS = 20  # clusters beside the refused one (100 on the fake API: test_reconcilers.py)
BACKOFF_SHOWN = 3.5  # seconds between two retries that show the delay grows (0.25 s, 0.5 s...)
WATCH_TIMEOUT = 5  # CLOUDCRED_WATCH_TIMEOUT of the black-hole test
# The black hole lasts until /healthz fails (2 x WATCH_TIMEOUT + 30 s) in make test-long;
# BLACK_HOLE seconds in make test.
HEALTHZ = os.environ.get("CLOUDCRED_FAULT_HEALTHZ") == "1"
BLACK_HOLE = 3.0
DEPLOY_HOLD = 1.5  # seconds each regional AWS call of a deploy is held


# -- helpers -----------------------------------------------------------------------------


def is_bound(cluster: dict[str, Any] | None) -> bool:
    return (condition(cluster, "CredentialBound") or {}).get("status") == "True"


def bound_reason(cluster: dict[str, Any] | None) -> str:
    found = condition(cluster, "CredentialBound") or {}
    return f"{found.get('status')}/{found.get('reason')}"


def credential_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict((get_credential(kube, namespace, name) or {}).get("status") or {})


def secret_labels(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    return dict(kube.core.read_namespaced_secret(name, namespace).metadata.labels or {})


def refused(action: Callable[[], Any]) -> bool:
    """True if the API server refuses ``action()`` (a 4xx other than 404)."""
    try:
        action()
    except ApiException as error:
        if error.status == 404 or error.status >= 500 or error.status == 0:
            raise
        return True
    return False


def dry_run_delete_secret(kube: Kube, namespace: str, name: str) -> Callable[[], Any]:
    return lambda: kube.core.delete_namespaced_secret(name, namespace, dry_run="All")


def dry_run_delete_credential(kube: Kube, namespace: str, name: str) -> Callable[[], Any]:
    return lambda: kube.custom.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name, dry_run="All"
    )


def rollout_complete(kube: Kube, namespace: str, name: str, revision: str, total: int) -> bool:
    credential = get_credential(kube, namespace, name) or {}
    done = condition(credential, "RolloutComplete") or {}
    rollout = (credential.get("status") or {}).get("rollout")
    return done.get("status") == "True" and rollout == {
        "revision": revision, "updated": total, "total": total,
    }  # fmt: skip


def report_deployed(kube: Kube, namespace: str, names: list[str], revision: str) -> None:
    """What an external deployer does once it has deployed ``revision``."""
    for name in names:
        patch_cluster_status(kube, namespace, name, {"deployedRevision": revision})


def deadline_left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.1)


def healthz(port: int) -> int | None:
    """The HTTP status of the operator's liveness endpoint; None if it does not answer."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def operator_writes(
    audit_log: Path, offset: int, namespace: str, name: str, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """Write requests by the operator (user agent ``cloudcred/`` or ``kopf/``) to the
    Cluster ``namespace/name`` (status included), received in [since, until), refused
    ones included, read from byte ``offset`` of the audit log."""
    found = []
    with audit_log.open() as log:
        log.seek(offset)
        for line in log:
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if (ref.get("resource"), ref.get("namespace"), ref.get("name")) != (
                CLUSTER_PLURAL, namespace, name
            ):  # fmt: skip
                continue
            if not entry.get("userAgent", "").startswith(("cloudcred/", "kopf/")):
                continue
            received = datetime.fromisoformat(entry["requestReceivedTimestamp"])
            if since <= received < until:
                found.append(entry)
    return found


# -- 1. restart at scale ---------------------------------------------------------------------


@dataclass
class Fleet:
    """One static-key credential ``fleet`` in ``home`` and ``count`` External clusters
    spread over ``namespaces``."""

    home: str
    namespaces: list[str]
    count: int
    credential: str = "fleet"
    secret: str = "fleet-keys"

    def where(self, index: int) -> tuple[str, str]:
        return self.namespaces[index % len(self.namespaces)], f"c{index:05d}"

    def samples(self) -> list[tuple[str, str]]:
        return [self.where(i) for i in sorted({0, self.count // 2, self.count - 1})]

    def create_clusters(self, kube: Kube) -> float:
        """Create the clusters, 8 at a time; return the seconds it took."""
        started = time.monotonic()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda index: self.create_one(kube, *self.where(index)),
                          range(self.count)))  # fmt: skip
        return time.monotonic() - started

    def create_one(self, kube: Kube, namespace: str, name: str) -> None:
        """One more cluster of the credential, outside the fleet's count."""
        ref = {"name": self.credential}
        if namespace != self.home:
            ref["namespace"] = self.home
        create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3",
                       credentialRef=ref, deploy="External")  # fmt: skip

    def create_credential(self, kube: Kube, moto: Moto) -> None:
        user = moto.create_user(f"hold-{uuid.uuid4().hex[:8]}")
        secret(kube, self.home, self.secret, {"secretAccessKey": user.secret_access_key})
        extra: dict[str, Any] = {}
        if self.namespaces != [self.home]:
            extra["allowedNamespaces"] = {"matchLabels": {"cloudcred-test/fleet": self.home}}
        static_key_credential(kube, self.home, self.credential, user.access_key_id,
                              self.secret, **extra)  # fmt: skip

    def problems(
        self, kube: Kube, lowest: list[int], pool: ThreadPoolExecutor | None = None
    ) -> list[str]:
        """What breaks the promise right now ([] while it holds), its parts asked at once
        with ``pool``; the lowest clusterCount seen goes into ``lowest``."""

        def count() -> list[str]:
            status = credential_status(kube, self.home, self.credential)
            found = int(status.get("clusterCount") or 0)
            lowest[0] = min(lowest[0], found)
            return [f"clusterCount {found} < {self.count}"] if found < self.count else []

        def label() -> list[str]:
            labels = secret_labels(kube, self.home, self.secret)
            return [] if labels.get(IN_USE_LABEL) == "true" else [f"Secret without {IN_USE_LABEL}"]

        def delete_secret() -> list[str]:
            admitted = not refused(dry_run_delete_secret(kube, self.home, self.secret))
            return ["dry-run delete of the Secret admitted"] if admitted else []

        def delete_credential() -> list[str]:
            admitted = not refused(dry_run_delete_credential(kube, self.home, self.credential))
            return ["dry-run delete of the credential admitted"] if admitted else []

        def sample(where: tuple[str, str]) -> Callable[[], list[str]]:
            def bound() -> list[str]:
                cluster = get_cluster(kube, *where)
                if is_bound(cluster):
                    return []
                return [f"cluster {where[0]}/{where[1]} CredentialBound {bound_reason(cluster)}"]

            return bound

        checks = [count, label, delete_secret, delete_credential,
                  *(sample(where) for where in self.samples())]  # fmt: skip
        answers = pool.map(lambda check: check(), checks) if pool else (c() for c in checks)
        return [problem for found in answers for problem in found]


@dataclass
class Poller:
    """Runs ``check()`` every ``interval`` seconds in a thread, keeping what it said."""

    check: Callable[[], list[str]]
    interval: float = POLL_INTERVAL
    results: list[tuple[float, list[str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.results.append((started, self.check()))
            except Exception as error:  # the API server answered badly: not a verdict
                self.errors.append(f"{type(error).__name__}: {str(error)[:200]}")
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(next_at - time.monotonic())

    def longest_gap(self) -> float:
        times = [at for at, _ in self.results]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class QueueWatch:
    """The operator's work queues, from its /metrics: ``settled()`` is the moment they
    have been empty, with no key added, for ``SETTLED`` seconds (falsy until then)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.since: tuple[float, float] | None = None  # (adds then, quiet since)
        self.last: dict[str, float] = {}

    def settled(self) -> float | None:
        _, samples = scrape(self.port)
        self.last = {
            f"{name}{dict(labels)}": value
            for (name, labels), value in samples.items()
            if name in ("cloudcred_workqueue_depth", "cloudcred_workqueue_adds_total")
        }
        depth = sum(v for (name, _), v in samples.items() if name == "cloudcred_workqueue_depth")
        adds = sum(v for (name, _), v in samples.items()
                   if name == "cloudcred_workqueue_adds_total")  # fmt: skip
        now = time.monotonic()
        if depth or self.since is None or self.since[0] != adds:
            self.since = (adds, now)
            return None
        return now if now - self.since[1] >= SETTLED else None


LIST_PATHS = {
    CLUSTER_PLURAL: re.compile(rf"^/apis/{re.escape(GROUP)}/[^/]+/(namespaces/[^/]+/)?clusters$"),
    CREDENTIAL_PLURAL: re.compile(
        rf"^/apis/{re.escape(GROUP)}/[^/]+/(namespaces/[^/]+/)?cloudcredentials$"
    ),
    "namespaces": re.compile(r"^/api/v1/namespaces$"),
}


def hold_first_lists(kind: str, seconds: float, held: list[str]) -> Callable[[str], float]:
    """A ``hold`` for the proxy: the first LIST (not a watch, not a next page) of each
    collection path of ``kind`` waits ``seconds``; every other request passes at once."""

    def hold(head: str) -> float:
        method, target, _ = head.split(" ", 2)
        path, _, query = target.partition("?")
        params = parse_qs(query)
        watching = params.get("watch", [""])[0].lower() in ("true", "1")
        if method != "GET" or watching or "continue" in params:
            return 0.0
        if not LIST_PATHS[kind].match(path) or path in held:
            return 0.0
        held.append(path)
        return seconds

    return hold


# variant: (clusters created before the credential, cross-namespace, kind listed last)
VARIANTS = {
    "credential-first": (False, False, CLUSTER_PLURAL),
    "clusters-first": (True, False, CREDENTIAL_PLURAL),
    "cross-namespace": (False, True, "namespaces"),
}


@pytest.mark.faults
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_restart_at_scale_never_lets_go_of_the_credential_or_its_secret(
    kube: Kube, moto: Moto, tmp_path: Path, operators: Operators, variant: str
) -> None:
    """``HOLD_CLUSTERS`` clusters bound to one static-key credential; the operator is
    SIGKILLed and started again. From the kill until 30 s after the new start, polled
    every 200 ms: the credential's clusterCount never drops, its Secret keeps
    ``cloudcred.io/in-use``, a server-side dry-run delete of the Secret and of the
    credential is refused, and sampled clusters stay Bound.

    Variants: the credential created before its clusters, the clusters before the
    credential, and clusters in other namespaces admitted by ``allowedNamespaces``. The
    restarted operator reaches the API server through a TLS-ending proxy that holds its
    first LIST of one kind for ``LIST_HOLD`` s: Clusters (credentials listed first),
    CloudCredentials (clusters listed first), Namespaces (cross-namespace).

    The restarted operator must also have synced and written, not merely left things
    alone: a Cluster of the credential deleted and one created while no operator ran
    are, within the 30 s, dropped from and added to the credential's count and list,
    and the new one is Bound."""
    clusters_first, cross_namespace, held_kind = VARIANTS[variant]
    home = new_namespace(kube, "hh")
    namespaces = [home]
    if cross_namespace:
        labels = {"cloudcred-test/fleet": home}
        namespaces = [new_namespace(kube, f"{home}-{i}", labels) for i in range(TEAMS)]
    fleet = Fleet(home=home, namespaces=namespaces, count=HOLD_CLUSTERS)
    watched = sorted({home, *namespaces})
    try:
        env = QUIET
        first = operators.start(*watched, kubeconfig=kube.kubeconfig, env=env, name="operator-1")
        print(f"\n{variant}: {HOLD_CLUSTERS} clusters in {len(namespaces)} namespace(s)")

        started = time.monotonic()
        if clusters_first:
            took = fleet.create_clusters(kube)
            fleet.create_credential(kube, moto)
        else:
            fleet.create_credential(kube, moto)
            took = fleet.create_clusters(kube)
        print(f"created the clusters in {took:.1f}s ({HOLD_CLUSTERS / took:.0f}/s)")
        lowest = [HOLD_CLUSTERS]
        last: list[list[str]] = [[]]

        def steady() -> bool:
            last[0] = fleet.problems(kube, [HOLD_CLUSTERS])
            return not last[0]

        try:
            wait_for(
                steady, timeout=300, interval=0.5, what="every cluster bound and the Secret held"
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; still: {last[0]}") from None
        print(f"bound and held {time.monotonic() - started:.1f}s after the first create")

        def loose() -> list[str]:
            return [f"{ns}/{c['metadata']['name']}" for ns in namespaces
                    for c in list_clusters(kube, ns) if not is_bound(c)]  # fmt: skip

        try:
            wait_for(lambda: not loose(), timeout=120, interval=1, what="every cluster Bound")
        except AssertionError as error:
            raise AssertionError(f"{error}; not Bound: {loose()[:10]}") from None
        print(f"every cluster Bound {time.monotonic() - started:.1f}s after the first create")

        # One cluster more, to be deleted while no operator runs; another is created then.
        # Named to come first in status.clusters (key order), which lists 2000 at most.
        extra_ns, doomed, late = namespaces[0], "a-doomed", "a-late"
        total = HOLD_CLUSTERS + 1
        fleet.create_one(kube, extra_ns, doomed)

        def listing() -> tuple[int, list[str]]:
            """The credential's clusterCount and the clusters of ``extra_ns`` it lists."""
            status = credential_status(kube, home, fleet.credential)
            listed = [c["name"] for c in status.get("clusters") or []
                      if c.get("namespace") == extra_ns]  # fmt: skip
            return int(status.get("clusterCount") or 0), listed

        def counted(present: str, absent: str | None = None) -> bool:
            count, listed = listing()
            return count == total and present in listed and absent not in listed

        # The binder's writes for the fleet are in: the last cluster is counted and listed.
        wait_for(lambda: is_bound(get_cluster(kube, extra_ns, doomed)) and counted(doomed),
                 timeout=60, interval=0.5,
                 what=f"{doomed} bound, clusterCount {total}, {doomed} listed")  # fmt: skip

        held: list[str] = []
        proxy = None
        kubeconfig = kube.kubeconfig
        if kube.plane is not None:
            proxy = LoopbackProxy("127.0.0.1", kube.plane.port, tls=Tls.of_control_plane(
                kube.plane.pki), hold=hold_first_lists(held_kind, LIST_HOLD, held),
                lifetime=600).start()  # fmt: skip
            kubeconfig = kubeconfig_via(kube.kubeconfig, proxy.url, tmp_path / "kubeconfig-proxy")
        poll_kube = Kube(kubeconfig=kube.kubeconfig, api=api_client(kube.kubeconfig), plane=None)
        pool = ThreadPoolExecutor(8)  # a poll's requests at once: polls keep their pace
        poller = Poller(lambda: fleet.problems(poll_kube, lowest, pool))
        took_over: str | None = None
        try:
            poller.start()
            wait_for(lambda: poller.results or poller.errors, timeout=10, interval=0.05,
                     what="a first poll before the kill")  # fmt: skip
            first.kill()
            killed = time.monotonic()
            # While no operator runs: only the restarted one can reflect these (no watch
            # event will tell it of the deletion: its LIST must).
            kube.custom.delete_namespaced_custom_object(GROUP, VERSION, extra_ns,
                                                        CLUSTER_PLURAL, doomed)  # fmt: skip
            fleet.create_one(kube, extra_ns, late)
            wait_for(lambda: refusal(lambda: get_cluster(kube, extra_ns, doomed)) is not None,
                     timeout=10, interval=0.1, what=f"{doomed} gone")  # fmt: skip
            second = operators.start(*watched, kubeconfig=kubeconfig, env=env, name="operator-2")
            restarted = time.monotonic()

            def taken_over() -> bool:
                return is_bound(get_cluster(kube, extra_ns, late)) and counted(late, doomed)

            try:
                wait_for(taken_over, timeout=deadline_left(restarted + TAKE_OVER), interval=0.5,
                         what="the restarted operator to bind the new cluster and drop the "
                         "deleted one")  # fmt: skip
                print(f"the restarted operator reflected the changes made while none ran "
                      f"{time.monotonic() - restarted:.1f}s after its start")  # fmt: skip
            except AssertionError as error:
                count, listed = listing()
                synced = "caches synced" in second.log()
                took_over = (
                    f"{error}; {late} CredentialBound "
                    f"{bound_reason(get_cluster(kube, extra_ns, late))}, clusterCount {count} "
                    f"(expected {total}), of {doomed} and {late} listed "
                    f"{[n for n in listed if n in (doomed, late)]}; the restarted operator "
                    f"{'logged' if synced else 'never logged'} 'caches synced'"
                )
            # The promise holds through the restarted operator's catch-up: polled until it
            # has had nothing left to do for SETTLED s, and AFTER_START s at least.
            quiet = QueueWatch(second.metrics_port)
            try:
                settled_at = wait_for(
                    quiet.settled,
                    timeout=120,
                    interval=0.5,
                    what="the restarted operator's work queues to settle",
                )
            except AssertionError as error:
                raise AssertionError(f"{error}; queues: {quiet.last}") from None
            window_end = max(restarted + AFTER_START, settled_at)
            print(f"the restarted operator had nothing left to do {settled_at - restarted:.1f}s "
                  f"after its start; polled until {window_end - restarted:.1f}s")  # fmt: skip
            wait_for(lambda: poller.results and poller.results[-1][0] >= window_end,
                     timeout=deadline_left(window_end) + 10, interval=POLL_INTERVAL,
                     what="the polls until the end of the window")  # fmt: skip
            poller.stop()
        finally:
            poller.stop()
            pool.shutdown()
            poll_kube.api.close()
            if proxy:
                proxy.stop()

        results = [(at, found) for at, found in poller.results if at >= killed - POLL_INTERVAL]
        broken = [(at, found) for at, found in results if found]
        kinds = sorted({re.sub(r"\d+", "N", problem) for _, found in broken for problem in found})
        print(f"{len(results)} polls from the kill to {window_end - restarted:.0f}s after the "
              "new start "
              f"(longest gap {poller.longest_gap():.2f}s); lowest clusterCount {lowest[0]}; "
              f"{len(broken)} poll(s) found a broken promise")  # fmt: skip
        if proxy:
            print(f"held {held_kind} LIST(s) {held or 'none: the kind was never listed'} for "
                  f"{LIST_HOLD:.0f}s; the restarted operator sent {len(proxy.requests)} "
                  "request(s) through the proxy")  # fmt: skip
        assert not poller.errors, f"polls failed: {poller.errors[:5]}"
        assert len(results) >= (window_end - restarted) / 1.0, "too few polls"
        if broken:
            at, found = broken[0]
            raise AssertionError(
                f"{variant}: {len(broken)} of {len(results)} polls broke the promise, the "
                f"first {at - killed:+.1f}s after the SIGKILL ({at - restarted:+.1f}s after the "
                f"new start): {found}; lowest clusterCount {lowest[0]} of {HOLD_CLUSTERS}; "
                f"problems seen: {kinds}"
            )
        assert took_over is None, f"{variant}: {took_over}"
        assert second.alive, "the restarted operator exited"
        assert "Traceback" not in second.log()
    finally:
        for process in operators:
            process.stop()
        for namespace in namespaces:  # less for the other tests' LISTs to carry
            kube.custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, namespace, CLUSTER_PLURAL
            )


def test_the_operators_listing_reads_every_page(kube: Kube) -> None:
    """The operator lists its kinds in pages (500 a page), the deletion guard by a field
    selector: against the real API server, with pages of 3, both listings get every
    object once. (The store takes a listing in only after its last page:
    tests/unit/test_store.py.)"""
    ns = new_namespace(kube, "hp")
    names = [f"p{index}" for index in range(5)]
    for name in names:
        create_cluster(kube, ns, name, provider="AWS", region="eu-west-3",
                       credentialRef={"name": ns}, deploy="External")  # fmt: skip

    async def listing(selector: str | None) -> list[tuple[str, str]]:
        api = api_client(kube.kubeconfig)
        try:
            pages = OperatorKube(api).list_pages(CLUSTER_PLURAL, selector, 3)
            return [(b["metadata"]["namespace"], b["metadata"]["name"]) async for b in pages]
        finally:
            api.close()

    mine = [(ns, name) for name in names]
    everything = asyncio.run(listing(None))
    assert len(everything) == len(set(everything))
    assert sorted(key for key in everything if key[0] == ns) == mine
    assert sorted(asyncio.run(listing(f"spec.credentialRef.name={ns}"))) == mine


# -- 2. kubectl replace of a referenced Secret ---------------------------------------------------


def test_a_replaced_secret_is_a_new_revision_and_is_labelled_and_protected_again(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """``kubectl replace`` of a referenced Secret: a full update that drops the operator's
    labels. Within 30 s: a new revision, the bound clusters marked with it, the Secret
    labelled ``credential-secret`` and ``in-use`` again, and its deletion refused."""
    secret(kube, namespace, "keys", {"secretAccessKey": "a" * 40})
    static_key_credential(kube, namespace, "prod", "AKIAIOSFODNN7EXAMPLE", "keys",
                          verification=NO_CHECK, rollout={"maxConcurrent": "100%"})  # fmt: skip
    names = ["a", "b"]
    for name in names:
        create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3",
                       credentialRef={"name": "prod"}, deploy="External")  # fmt: skip
    first = new_revision(kube, namespace, "prod", None)
    report_deployed(kube, namespace, names, first)
    wait_for(lambda: rollout_complete(kube, namespace, "prod", first, 2), timeout=30,
             what="the first rollout")  # fmt: skip
    labelled = {REFERENCED_LABEL: "true", IN_USE_LABEL: "true"}
    wait_for(lambda: secret_labels(kube, namespace, "keys") == labelled, timeout=30,
             what="the Secret labelled")  # fmt: skip
    assert refused(dry_run_delete_secret(kube, namespace, "keys"))

    # `kubectl create secret generic keys --from-literal=... -o yaml --dry-run=client |
    # kubectl replace -f -`: the whole object, without the labels.
    current = kube.core.read_namespaced_secret("keys", namespace)
    replacement = client.V1Secret(
        metadata=client.V1ObjectMeta(name=current.metadata.name),
        string_data={"secretAccessKey": "b" * 40},
    )  # fmt: skip
    stored = kube.core.replace_namespaced_secret("keys", namespace, replacement)
    replaced = time.monotonic()
    assert not stored.metadata.labels, "the replace kept the labels"  # as stored by it
    deadline = replaced + 30

    second = wait_for(
        lambda: (r := credential_status(kube, namespace, "prod").get("revision")) != first and r,
        timeout=deadline_left(deadline), what="a new revision after the replace",
    )  # fmt: skip
    print(f"\nnew revision {time.monotonic() - replaced:.1f}s after the replace")
    wait_for(lambda: all(marked(c) == second for c in list_clusters(kube, namespace)),
             timeout=deadline_left(deadline),
             what=f"the clusters marked {REDEPLOY_ANNOTATION}={second}")  # fmt: skip
    wait_for(lambda: secret_labels(kube, namespace, "keys") == labelled,
             timeout=deadline_left(deadline), what="the Secret labelled again")  # fmt: skip
    wait_for(lambda: refused(dry_run_delete_secret(kube, namespace, "keys")),
             timeout=deadline_left(deadline), what="the Secret's deletion refused")  # fmt: skip
    print(f"marked, labelled and protected {time.monotonic() - replaced:.1f}s after the replace")


# -- 3. one refused Cluster -------------------------------------------------------------------


def refusing_policy(name: str, namespace: str, cluster: str) -> tuple[dict[str, Any], ...]:
    """A ValidatingAdmissionPolicy and its binding that refuse every update of one
    Cluster, status included (a patch is an update for admission)."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["UPDATE"],
                "resources": [CLUSTER_PLURAL, f"{CLUSTER_PLURAL}/status"],
            }]},
            "matchConditions": [{
                "name": "that-cluster",
                "expression": f"object.metadata.namespace == '{namespace}' "
                              f"&& object.metadata.name == '{cluster}'",
            }],
            "validations": [{"expression": "false", "reason": "Forbidden",
                             "message": f"cluster {namespace}/{cluster} is frozen by a test"}],
        },
    }  # fmt: skip
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return policy, binding


def update_refused(kube: Kube, namespace: str, cluster: str) -> bool:
    """Whether the API server refuses an update of the Cluster (server-side dry run:
    admission runs, nothing is stored, the operator sees no event)."""
    patch = {"metadata": {"annotations": {"cloudcred-test/probe": str(time.time())}}}
    refused_by = refusal(lambda: kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CLUSTER_PLURAL, cluster, patch, dry_run="All"))  # fmt: skip
    return refused_by is not None


@pytest.fixture
def refused_cluster(kube: Kube) -> Iterator[Callable[[str, str], Callable[[], None]]]:
    """Installs a policy refusing every update of one Cluster (cluster-wide: removed at
    the end) and waits until it refuses; returns what lifts it (and waits until the
    Cluster's updates are admitted again)."""
    admission = client.AdmissionregistrationV1Api(kube.api)
    installed: list[str] = []

    def remove(name: str) -> None:
        for delete in (admission.delete_validating_admission_policy_binding,
                       admission.delete_validating_admission_policy):  # fmt: skip
            try:
                delete(name)
            except ApiException as error:
                if error.status != 404:
                    raise

    def install(namespace: str, cluster: str) -> Callable[[], None]:
        name = f"cloudcred-test-frozen-{namespace}"
        policy, binding = refusing_policy(name, namespace, cluster)
        admission.create_validating_admission_policy(policy)
        installed.append(name)
        admission.create_validating_admission_policy_binding(binding)
        # Policies load asynchronously.
        wait_for(lambda: update_refused(kube, namespace, cluster), timeout=30, interval=0.5,
                 what="the policy to refuse updates")  # fmt: skip

        def lift() -> None:
            remove(name)
            wait_for(lambda: not update_refused(kube, namespace, cluster), timeout=30,
                     interval=0.2, what="the policy to admit updates again")  # fmt: skip

        return lift

    yield install
    for name in installed:
        remove(name)


def test_one_refused_cluster_holds_up_no_other_and_is_retried_with_backoff(
    kube: Kube, tmp_path: Path, moto: Moto, operators: Operators,
    refused_cluster: Callable[[str, str], Callable[[], None]],
) -> None:  # fmt: skip
    """A Cluster whose every update a policy engine refuses (a ValidatingAdmissionPolicy
    on that one object), then ``OTHERS`` clusters on another credential: within 30 s they
    are bound and counted; the refused cluster's problem is a Warning Event
    ``ReconcileFailed`` on it, not repeated; the operator's writes to it, read in the
    audit log, are retried with a growing delay (at least four refused attempts, fewer
    than one a second, until two are ``BACKOFF_SHOWN`` s apart) and counted in
    ``cloudcred_reconcile_errors_total``; and once the policy is lifted the cluster is
    Bound within ``RETRY_CAP`` s and a bit (the operator's longest backoff is set to it)."""
    if kube.plane is None:
        pytest.skip("counts writes in the local control plane's audit log")
    audit_log = kube.plane.audit_log
    ns = new_namespace(kube, "hr")
    for name in ("frozen", "fleet"):
        create_credential(kube, ns, name, provider="AWS", aws=ROLE, verification=NO_CHECK)
    create_cluster(kube, ns, "frozen", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "frozen"}, deploy="External")  # fmt: skip
    lift = refused_cluster(ns, "frozen")
    offset = audit_log.stat().st_size
    since_start = datetime.now(UTC) - timedelta(seconds=1)
    env = {"CLOUDCRED_RETRY_MAX_DELAY": str(RETRY_CAP)}
    operator = operators.start(ns, kubeconfig=kube.kubeconfig, env=env, name="operator")
    far = datetime.now(UTC) + timedelta(days=1)

    def attempts() -> list[datetime]:
        """When the API server received each refused write of the operator to the
        frozen cluster, in order."""
        writes = operator_writes(audit_log, offset, ns, "frozen", since_start, far)
        return sorted(datetime.fromisoformat(w["requestReceivedTimestamp"]) for w in writes
                      if ((w.get("responseStatus") or {}).get("code") or 0) >= 400)  # fmt: skip

    def gaps(times: list[datetime]) -> list[float]:
        return [round((b - a).total_seconds(), 2) for a, b in itertools.pairwise(times)]

    wait_for(attempts, timeout=60,
             what="the operator's first (refused) write to the frozen cluster")  # fmt: skip
    first = time.monotonic()

    created = time.monotonic()
    names = [f"c{i:03d}" for i in range(OTHERS)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: create_cluster(
            kube, ns, name, provider="AWS", region="eu-west-3", credentialRef={"name": "fleet"},
            deploy="External"), names))  # fmt: skip
    problems: list[str] = []

    def all_bound() -> bool:
        clusters = {c["metadata"]["name"]: c for c in list_clusters(kube, ns)}
        count = credential_status(kube, ns, "fleet").get("clusterCount")
        return all(is_bound(clusters.get(n)) for n in names) and count == len(names)

    try:
        wait_for(all_bound, timeout=REFUSED_WINDOW, interval=0.5, what="the others bound")
        print(f"\n{OTHERS} clusters bound and counted {time.monotonic() - created:.1f}s after "
              "their creation began")  # fmt: skip
    except AssertionError:
        clusters = list_clusters(kube, ns)
        loose = sum(not is_bound(c) for c in clusters if c["metadata"]["name"] in names)
        count = credential_status(kube, ns, "fleet").get("clusterCount")
        problems.append(f"after {REFUSED_WINDOW:.0f}s, {loose} of the {OTHERS} clusters not Bound "
                        f"and the credential's clusterCount is {count}")  # fmt: skip

    def warnings() -> list[client.CoreV1Event]:
        return [e for e in events_for(kube, ns, "frozen") if e.reason == "ReconcileFailed"
                and e.type == "Warning" and e.involved_object.kind == "Cluster"]  # fmt: skip

    try:
        wait_for(warnings, timeout=deadline_left(created + REFUSED_WINDOW), interval=0.5,
                 what="a ReconcileFailed Warning Event on the frozen cluster")  # fmt: skip
    except AssertionError:
        problems.append("no Warning Event ReconcileFailed on the frozen cluster")

    # Retried, with a growing delay: a queue that drops the key after a failure makes
    # one attempt; one that retries at a fixed pace never leaves BACKOFF_SHOWN between two.
    def backed_off() -> bool:
        times = attempts()
        return len(times) >= 4 and max(gaps(times)) >= BACKOFF_SHOWN

    try:
        wait_for(backed_off, timeout=deadline_left(first + REFUSED_WINDOW), interval=0.5,
                 what=f"four refused attempts and a pause of {BACKOFF_SHOWN:.1f}s between "
                 "two")  # fmt: skip
    except AssertionError:
        problems.append(f"the frozen cluster was not retried with a growing delay within "
                        f"{REFUSED_WINDOW:.0f}s of the first refused write: attempts "
                        f"{len(attempts())}, seconds between them {gaps(attempts())}")  # fmt: skip
    tried = attempts()
    span = (tried[-1] - tried[0]).total_seconds()
    found = warnings()
    _, samples = scrape(operator.metrics_port)
    errors = samples.get(("cloudcred_reconcile_errors_total",
                          frozenset({("controller", "clusters")})), 0.0)  # fmt: skip
    print(f"refused writes to the frozen cluster: {len(tried)} over {span:.1f}s, seconds "
          f"between them {gaps(tried)}; cloudcred_reconcile_errors_total{{clusters}} "
          f"{errors:g}; {len(found)} ReconcileFailed event(s): "
          f"{[(e.message[:160], e.count) for e in found][:3]}")  # fmt: skip
    if len(tried) >= 4 and len(tried) > span:
        problems.append(f"{len(tried)} refused writes in {span:.1f}s: no backoff")
    if errors < min(len(tried), 4):
        problems.append(f"cloudcred_reconcile_errors_total{{controller=clusters}} is "
                        f"{errors:g} after {len(tried)} refused writes")  # fmt: skip
    if len(found) > 3:
        problems.append(f"{len(found)} ReconcileFailed events: repeated, not one per error")
    if any(not (e.message or "").strip() for e in found):
        problems.append("a ReconcileFailed event without a message")
    assert not problems, "; ".join(problems)

    # The refusal lifted: the next retry (at most RETRY_CAP s away) goes through.
    lift()
    lifted = time.monotonic()
    try:
        wait_for(lambda: is_bound(get_cluster(kube, ns, "frozen")), timeout=RETRY_CAP + 15,
                 interval=0.25,
                 what="the frozen cluster Bound once the refusal is lifted")  # fmt: skip
    except AssertionError as error:
        raise AssertionError(
            f"{error}; CredentialBound {bound_reason(get_cluster(kube, ns, 'frozen'))}; "
            f"refused writes {len(attempts())}, the last "
            f"{(datetime.now(UTC) - attempts()[-1]).total_seconds():.1f}s ago"
        ) from None
    print(f"the frozen cluster Bound {time.monotonic() - lifted:.1f}s after the refusal was "
          f"lifted ({time.monotonic() - first:.1f}s after the first refused write)")  # fmt: skip
    wait_for(lambda: credential_status(kube, ns, "frozen").get("clusterCount") == 1,
             timeout=10, what="the frozen cluster counted by its credential")  # fmt: skip
    assert operator.alive
    assert "Traceback" not in operator.log()


# -- 4. a credential switched to a new Secret ---------------------------------------------


def test_after_a_switch_to_a_new_secret_the_old_one_is_released(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess
) -> None:
    """The rotation flow of docs/rotation.md: the credential switches to a new key in a new Secret
    and the rollout completes (an external deployer reports each cluster). The old
    Secret loses both labels within 30 s and can be deleted; the new one cannot."""
    user = moto.create_user(f"switch-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "keys-1", {"secretAccessKey": user.secret_access_key})
    static_key_credential(kube, namespace, "prod", user.access_key_id, "keys-1",
                          rollout={"maxConcurrent": "100%"})  # fmt: skip
    names = ["a", "b", "c"]
    for name in names:
        create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3",
                       credentialRef={"name": "prod"}, deploy="External")  # fmt: skip
    first = new_revision(kube, namespace, "prod", None)
    report_deployed(kube, namespace, names, first)
    wait_for(lambda: rollout_complete(kube, namespace, "prod", first, 3), timeout=30,
             what="the first rollout")  # fmt: skip
    wait_for(lambda: secret_labels(kube, namespace, "keys-1").get(IN_USE_LABEL) == "true",
             timeout=30, what="keys-1 labelled in use")  # fmt: skip

    new_key = moto.client("iam").create_access_key(UserName=user.user)["AccessKey"]
    secret(kube, namespace, "keys-2", {"secretAccessKey": new_key["SecretAccessKey"]})
    patch_credential(kube, namespace, "prod", {"spec": {"aws": {
        "accessKeyId": new_key["AccessKeyId"],
        "secretAccessKeyRef": {"name": "keys-2", "key": "secretAccessKey"},
    }}})  # fmt: skip
    second = new_revision(kube, namespace, "prod", first)
    wait_for(lambda: all(marked(c) == second for c in list_clusters(kube, namespace)),
             timeout=30, what="every cluster marked with the new revision")  # fmt: skip
    report_deployed(kube, namespace, names, second)
    wait_for(lambda: rollout_complete(kube, namespace, "prod", second, 3), timeout=30,
             what="RolloutComplete for the new revision")  # fmt: skip
    done = time.monotonic()

    def still_labelled() -> list[str]:
        return sorted({IN_USE_LABEL, REFERENCED_LABEL} & set(secret_labels(kube, namespace,
                                                                           "keys-1")))  # fmt: skip

    try:
        wait_for(lambda: not still_labelled(), timeout=30,
                 what="keys-1 released (neither in-use nor credential-secret label)")  # fmt: skip
    except AssertionError as error:
        refused_by = refusal(lambda: kube.core.delete_namespaced_secret("keys-1", namespace,
                                                                        dry_run="All"))  # fmt: skip
        raise AssertionError(f"{error}; still labelled {still_labelled()}; a delete of keys-1 "
                             f"is refused: {refused_by}") from None  # fmt: skip
    print(f"\nkeys-1 released {time.monotonic() - done:.1f}s after RolloutComplete")
    wait_for(lambda: refusal(lambda: kube.core.delete_namespaced_secret("keys-1", namespace))
             is None, timeout=10, what="keys-1 deleted")  # fmt: skip
    assert secret_labels(kube, namespace, "keys-2").get(IN_USE_LABEL) == "true"
    assert refused(dry_run_delete_secret(kube, namespace, "keys-2"))


# -- 5. a credential deleted while the watch is down ---------------------------------------


@pytest.mark.faults
def test_a_credential_deleted_while_the_watch_was_down_is_dropped_after_the_relist(
    fault_plane: ControlPlane, moto: Moto, tmp_path: Path, operators: Operators
) -> None:
    """While the operator's API server is away, a second API server on the same etcd
    deletes a credential that two clusters use (its finalizer removed, break glass), and
    etcd is compacted past it: the operator's watch gets 410 Gone and re-lists, and no
    DELETED event ever comes. Within 30 s of the API server's return, both clusters
    show CredentialNotFound; a cluster of another credential stays Bound."""
    plane = fault_plane
    kube = plane_kube(plane)
    ns = new_namespace(kube, "hg")
    operator = operators.start(ns, kubeconfig=plane.kubeconfig, name="operator")
    for name in ("doomed", "kept"):
        create_credential(kube, ns, name, provider="AWS", aws=ROLE, verification=NO_CHECK)
    users = {"a": "doomed", "b": "doomed", "c": "kept"}
    for name, credential in users.items():
        create_cluster(kube, ns, name, provider="AWS", region="eu-west-3",
                       credentialRef={"name": credential}, deploy="External")  # fmt: skip
    wait_for(lambda: all(is_bound(get_cluster(kube, ns, n)) for n in users)
             and credential_status(kube, ns, "doomed").get("clusterCount") == 2,
             timeout=60, what="the clusters bound")  # fmt: skip
    log_offset = len(operator.log())

    other = plane_kube(plane, plane.add_apiserver("kube-apiserver-holding"))
    try:
        plane.stop_process("kube-apiserver", STOP_GRACE)  # the operator's watches break
        patch_credential(other, ns, "doomed", {"metadata": {
            "finalizers": [], "annotations": {FORCE_DELETE_ANNOTATION: "test"}}})  # fmt: skip
        other.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, CREDENTIAL_PLURAL,
                                                     "doomed")  # fmt: skip
        wait_for(lambda: get_credential(other, ns, "doomed") is None, timeout=10,
                 what="the credential gone")  # fmt: skip
        compacted = plane.compact_etcd()
    finally:
        other.api.close()
        plane.stop_process("kube-apiserver-holding", STOP_GRACE)
    back = time.monotonic()
    plane.resume()
    print(f"\netcd compacted at revision {compacted}; API server back in "
          f"{time.monotonic() - back:.1f}s")  # fmt: skip

    def reasons() -> dict[str, str]:
        return {n: bound_reason(get_cluster(kube, ns, n)) for n in users}

    expected = {"a": "False/CredentialNotFound", "b": "False/CredentialNotFound",
                "c": "True/Bound"}  # fmt: skip
    try:
        wait_for(lambda: reasons() == expected, timeout=30,
                 what="the clusters of the deleted credential CredentialNotFound")  # fmt: skip
    except AssertionError as error:
        raise AssertionError(f"{error}; CredentialBound: {reasons()}") from None
    print(f"CredentialNotFound {time.monotonic() - back:.1f}s after the API server came back")
    restarted = re.findall(r"Restarting the watch-stream for (\S+)", operator.log()[log_offset:])
    print(f"watch-streams restarted on 410 Gone: {restarted}")
    assert any(kind.startswith(CREDENTIAL_PLURAL) for kind in restarted), (
        "the CloudCredential watch got no 410 Gone: the fault was not injected"
    )
    assert operator.alive
    assert "Traceback" not in operator.log()


# -- 6. a watch that stops answering ---------------------------------------------------------


@pytest.mark.faults
def test_a_watch_that_stops_answering_fails_healthz_and_the_operator_catches_up(
    kube: Kube, moto: Moto, tmp_path: Path, operators: Operators
) -> None:
    """The operator reaches the API server through a loopback proxy. The proxy turns into
    a black hole: its connections stay open and carry nothing, new ones are accepted
    and carry nothing. With ``CLOUDCRED_WATCH_TIMEOUT=5``, in ``make test-long``
    (``CLOUDCRED_FAULT_HEALTHZ=1``) ``/healthz`` (200 before) fails within 90 s (its limit
    is 2 x 5 + 30 s; the verdict's thresholds are tests/unit/test_reconcilers.py's); in
    ``make test`` the black hole lasts ``BLACK_HOLE`` s. Once the proxy forwards again
    (the dead connections stay dead: the operator must give them up), a cluster created
    during the outage is bound within 60 s and ``/healthz`` is 200."""
    if kube.plane is None:
        pytest.skip("needs the local control plane (its certificate covers 127.0.0.1)")
    ns = new_namespace(kube, "hw")
    server = urlsplit(kube.plane.url)
    proxy = LoopbackProxy(server.hostname or "127.0.0.1", server.port or 443,
                          lifetime=600).start()  # fmt: skip
    try:
        via = kubeconfig_via(kube.kubeconfig, f"https://127.0.0.1:{proxy.port}",
                             tmp_path / "kubeconfig-proxy")  # fmt: skip
        env = {"CLOUDCRED_WATCH_TIMEOUT": str(WATCH_TIMEOUT)}
        operator = operators.start(ns, kubeconfig=via, env=env, name="operator")
        create_credential(kube, ns, "cred", provider="AWS", aws=ROLE, verification=NO_CHECK)
        create_cluster(kube, ns, "early", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "cred"}, deploy="External")  # fmt: skip
        wait_for(lambda: is_bound(get_cluster(kube, ns, "early")), timeout=60,
                 what="a cluster bound through the proxy")  # fmt: skip
        # kopf's own watches are up too (its handler checked the credential): an outage
        # before kopf found the resources would test its discovery, not the watches.
        wait_for(lambda: condition(get_credential(kube, ns, "cred"), "Verified"), timeout=60,
                 what="kopf's handler to have run")  # fmt: skip
        wait_for(lambda: healthz(operator.liveness_port) == 200, timeout=30,
                 what="/healthz 200 before the outage")  # fmt: skip

        proxy.black_hole()
        dark = time.monotonic()
        create_cluster(kube, ns, "late", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "cred"}, deploy="External")  # fmt: skip
        seen: list[int | None] = []

        def failing() -> bool:
            seen.append(healthz(operator.liveness_port))
            return seen[-1] != 200

        if HEALTHZ:
            try:
                wait_for(failing, timeout=90, interval=1,
                         what="/healthz to fail in the black hole")  # fmt: skip
            except AssertionError:
                raise AssertionError(
                    f"/healthz answered 200 throughout 90 s of black hole ({len(seen)} probes)"
                ) from None
            print(f"\n/healthz {seen[-1]} {time.monotonic() - dark:.1f}s into the black hole")
        else:
            time.sleep(BLACK_HOLE)  # the outage itself

        proxy.forward()
        light = time.monotonic()
        wait_for(lambda: is_bound(get_cluster(kube, ns, "late")), timeout=60,
                 what="the cluster created during the outage bound")  # fmt: skip
        print(f"the late cluster bound {time.monotonic() - light:.1f}s after the network "
              "came back")  # fmt: skip
        wait_for(lambda: healthz(operator.liveness_port) == 200, timeout=60,
                 what="/healthz 200 again")  # fmt: skip
        print(f"/healthz 200 again {time.monotonic() - light:.1f}s after")
        assert operator.alive, "the operator exited (Kubernetes would restart it)"
    finally:
        proxy.stop()


# -- 7. a Cluster re-created during its deploy ---------------------------------------------


def test_a_cluster_recreated_during_its_deploy_gets_its_own_deployment(
    kube: Kube, moto: Moto, tmp_path: Path, operators: Operators
) -> None:
    """The operator's own deploy step, with its regional AWS calls held 3 s each by a
    proxy in front of moto. While the first deploy of a cluster is under way, the
    cluster is deleted and created again under the same name. The new object (new
    uid) gets a deployment of its own: ``deployedRevision`` and a ``Deployed`` Event
    for its uid, ``lastDeployedTime`` not before its creation, and the old object's
    deploy writes nothing and announces nothing."""
    ns = new_namespace(kube, "hd")
    endpoint = urlsplit(moto.endpoint)
    deploying: list[float] = []

    def hold(head: str) -> float:
        # A deploy checks the cluster's region (STS and Auto Scaling in eu-west-3); the
        # credential's own check uses the operator's region.
        if "/eu-west-3/" not in head:
            return 0.0
        deploying.append(time.monotonic())
        return DEPLOY_HOLD

    proxy = LoopbackProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80, hold=hold,
                          lifetime=600).start()  # fmt: skip
    try:
        # Provider calls may take longer than the held ones (the tests' default is 3 s).
        env = {"AWS_ENDPOINT_URL": proxy.url,
               "CLOUDCRED_VERIFICATION_TIMEOUT": "30"}  # fmt: skip
        operator = operators.start(ns, kubeconfig=kube.kubeconfig, env=env, name="operator")
        create_credential(kube, ns, "deployer", provider="AWS", aws=ROLE)
        revision = new_revision(kube, ns, "deployer", None)
        wait_for(lambda: (condition(get_credential(kube, ns, "deployer"), "Verified") or {})
                 .get("status") == "True", timeout=30, what="the role verified")  # fmt: skip
        spec: dict[str, Any] = {"provider": "AWS", "region": "eu-west-3",
                                "credentialRef": {"name": "deployer"}}  # fmt: skip
        create_cluster(kube, ns, "c", **spec)
        old_uid = get_cluster(kube, ns, "c")["metadata"]["uid"]
        wait_for(lambda: deploying, timeout=30, interval=0.05,
                 what="the deploy's first regional AWS call")  # fmt: skip
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, CLUSTER_PLURAL, "c")
        create_cluster(kube, ns, "c", **spec)
        recreated = time.monotonic()
        new = get_cluster(kube, ns, "c")
        new_uid = new["metadata"]["uid"]
        assert new_uid != old_uid
        assert deployed(new) is None
        print(f"\nre-created {recreated - deploying[0]:.2f}s into the first deploy")

        def deployed_events(uid: str) -> list[client.CoreV1Event]:
            return [e for e in events_for(kube, ns, "c")
                    if e.reason == "Deployed" and e.involved_object.uid == uid]  # fmt: skip

        def own_deployment() -> bool:
            cluster = get_cluster(kube, ns, "c")
            return deployed(cluster) == revision and bool(deployed_events(new_uid))

        try:
            wait_for(own_deployment, timeout=60, interval=0.5,
                     what="the new object's own deployment")  # fmt: skip
        except AssertionError as error:
            now = get_cluster(kube, ns, "c")
            uids = [(e.involved_object.uid, e.message) for e in events_for(kube, ns, "c")
                    if e.reason == "Deployed"]  # fmt: skip
            raise AssertionError(
                f"{error}; deployedRevision {deployed(now)} (revision {revision}), Deployed "
                f"events by uid {uids} (old {old_uid}, new {new_uid})"
            ) from None
        print(f"deployed {time.monotonic() - recreated:.1f}s after the re-creation")
        cluster = get_cluster(kube, ns, "c")
        assert cluster["metadata"]["uid"] == new_uid
        when = datetime.fromisoformat(cluster["status"]["lastDeployedTime"])
        assert when >= datetime.fromisoformat(cluster["metadata"]["creationTimestamp"])
        stale = deployed_events(old_uid)
        assert not stale, (
            "the old object's deploy, under way when it was deleted, announced a deployment "
            f"(its write went to the new object): {[e.message for e in stale]}"
        )
        assert operator.alive
        assert "Traceback" not in operator.log()
    finally:
        proxy.stop()
