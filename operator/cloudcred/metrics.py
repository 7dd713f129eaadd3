"""Prometheus metrics, served on ``CLOUDCRED_METRICS_PORT`` from a registry of our own.

Two kinds:

- *state* (credentials by provider and verification state, bound clusters, pending
  redeploys, key age, rollout completion, work queue depths) is computed at scrape
  time by :class:`StateCollector` from the operator's caches and queues, so it can
  never drift from what the operator knows and costs nothing between scrapes;
- *events* (how long checks take, why they fail) are observed by
  :func:`observe_verification` after every provider check.

Label values are only namespaces, names, providers and condition reasons (each from a
fixed set): never a secret, a key id, an ARN or an e-mail address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import kopf
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloudcred import conditions
from cloudcred.api.common import Provider
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.providers.base import Reason
from cloudcred.rollout import ROLLOUT_COMPLETE

if TYPE_CHECKING:  # the caches and queues import this module for their own metrics
    from cloudcred.cache import Caches
    from cloudcred.workqueue import WorkQueue

logger = logging.getLogger("cloudcred.metrics")

REGISTRY = CollectorRegistry()

_PROVIDERS = {provider.value for provider in Provider}
_REASONS = {reason.value for reason in Reason}
OTHER = "Other"  # a label value outside the known set (never the raw value)
PENDING = "Pending"  # `verified` of a credential not checked yet

VERIFICATION_DURATION = Histogram(
    "cloudcred_verification_duration_seconds",
    "Time one credential check took: reading its Secrets, waiting for a check slot and "
    "asking the provider.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
VERIFICATION_FAILURES = Counter(
    "cloudcred_verification_failures",
    "Credential checks that ended with Verified=False, by reason.",
    ["provider", "reason"],
    registry=REGISTRY,
)


def provider_label(value: object) -> str:
    return str(value) if str(value) in _PROVIDERS else OTHER


def reason_label(value: object) -> str:
    return str(value) if str(value) in _REASONS else OTHER


def observe_verification(provider: object, seconds: float, verified: Mapping[str, Any]) -> None:
    """Record one check; ``verified`` is the resulting Verified condition."""
    label = provider_label(provider)
    VERIFICATION_DURATION.labels(provider=label).observe(seconds)
    if verified.get("status") == conditions.FALSE:
        VERIFICATION_FAILURES.labels(
            provider=label, reason=reason_label(verified.get("reason"))
        ).inc()


class StateSource(Protocol):
    """What the collector reads: :class:`cloudcred.controllers.runner.Controllers`."""

    @property
    def caches(self) -> Caches: ...

    @property
    def queues(self) -> tuple[WorkQueue[Key], ...]: ...


def verified_label(credential_status: Mapping[str, Any]) -> str:
    """``True`` when verified, otherwise the Verified condition's reason (a fixed set),
    ``Pending`` before the first check."""
    verified = conditions.find(credential_status.get("conditions"), "Verified")
    if verified is None:
        return PENDING
    if verified.get("status") == conditions.TRUE:
        return conditions.TRUE
    return reason_label(verified.get("reason"))


def _age_seconds(value: object, now: datetime) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((now - moment).total_seconds(), 0.0)


class StateCollector(Collector):
    """Computes the state metrics from the caches at each scrape.

    Scrapes run in the HTTP server's thread while the event loop updates the caches:
    the collector only reads, and copies each dict first (a single C-level operation
    under the GIL) so that it never iterates a dict that is changing size.
    """

    def __init__(self, source: StateSource) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        # Families without samples: lets the registry check names when registering
        # without computing anything.
        yield from self._families()

    def _families(self) -> tuple[Any, ...]:
        per_credential = ["namespace", "credential"]
        return (
            GaugeMetricFamily(
                "cloudcred_credentials",
                "CloudCredentials by provider and verification state (True, or the "
                "Verified condition's reason; Pending before the first check).",
                labels=["provider", "verified"],
            ),
            GaugeMetricFamily(
                "cloudcred_credential_bound_clusters",
                "Clusters bound to the credential.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_redeploys_pending",
                "Bound clusters not deployed with the credential's current revision "
                "(marked or queued for redeploy, held back by a blocked rollout, never "
                "deployed, or failing to deploy).",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_credential_key_age_seconds",
                "Age of the credential's static key (status.keyCreatedTime), where known.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_credential_rollout_complete",
                "1 when every bound cluster runs the current revision (RolloutComplete "
                "True), 0 while a rollout is in progress or blocked.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_workqueue_depth",
                "Keys waiting in a work queue (clusters, credentials, secrets, deploy).",
                labels=["queue"],
            ),
            CounterMetricFamily(
                "cloudcred_workqueue_adds",
                "Keys queued (a key already waiting is not counted again).",
                labels=["queue"],
            ),
            CounterMetricFamily(
                "cloudcred_workqueue_retries",
                "Keys queued again after a failed reconcile, with a backoff.",
                labels=["queue"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        credentials_family, bound_family, pending_family, age_family, rollout_family = families[:5]
        depth_family, adds_family, retries_family = families[5:]
        for queue in self.source.queues:
            depth_family.add_metric([queue.name], len(queue))
            adds_family.add_metric([queue.name], queue.adds)
            retries_family.add_metric([queue.name], queue.retries)
        credentials, clusters = self._snapshot()
        now = datetime.now(UTC)

        bound: dict[Key, list[ClusterInfo]] = {key: [] for key in credentials}
        for cluster in clusters.values():
            target = cluster.was_bound_to
            if target in bound:
                bound[target].append(cluster)

        by_state: dict[tuple[str, str], int] = {}
        for key, credential in sorted(credentials.items()):
            status = credential.status
            state = (provider_label(credential.provider), verified_label(status))
            by_state[state] = by_state.get(state, 0) + 1
            labels = [key[0], key[1]]
            bound_clusters = bound[key]
            bound_family.add_metric(labels, len(bound_clusters))
            if credential.revision:
                behind = [c for c in bound_clusters if c.deployed_revision != credential.revision]
                pending_family.add_metric(labels, len(behind))
            age = _age_seconds(status.get("keyCreatedTime"), now)
            if age is not None:
                age_family.add_metric(labels, age)
            complete = conditions.find(status.get("conditions"), ROLLOUT_COMPLETE)
            if complete is not None:
                rollout_family.add_metric(
                    labels, 1.0 if complete.get("status") == conditions.TRUE else 0.0
                )
        for (provider, verified), count in sorted(by_state.items()):
            credentials_family.add_metric([provider, verified], count)
        yield from families

    def _snapshot(self) -> tuple[dict[Key, CredentialInfo], dict[Key, ClusterInfo]]:
        caches = self.source.caches
        for _ in range(5):
            try:
                return caches.credentials.objects.copy(), caches.clusters.objects.copy()
            except RuntimeError:  # changed during the copy: try again
                continue
        return {}, {}


def serve(port: int, source: StateSource, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``/metrics`` on ``port`` (all interfaces) in a daemon thread. A port that
    cannot be bound stops the operator (kopf does not retry a PermanentError at start):
    a Service or ServiceMonitor pointing at it would otherwise find nothing, silently."""
    try:
        start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - scraped via the pod IP
    except OSError as error:
        raise kopf.PermanentError(
            f"cannot serve metrics on port {port} (CLOUDCRED_METRICS_PORT): {error.strerror}"
        ) from None
    registry.register(StateCollector(source))
    logger.info("serving Prometheus metrics on port %d at /metrics", port)
