"""Prometheus metrics, served on ``CLOUDCRED_METRICS_PORT`` from a registry of our own.

Three kinds:

- *state* (credentials by provider, every condition of every CloudCredential,
  Clusters counted by condition, bound clusters, pending redeploys, key creation
  time, rollout completion, work queue depths) is computed at scrape time by
  :class:`StateCollector` from the operator's caches and queues, so it can never
  drift from what the operator knows, a condition that changed leaves no stale series
  behind, and it costs nothing between scrapes;
- *events* (how long checks take, why they fail) are observed by
  :func:`observe_verification` after every provider check;
- *the process*: ``process_*`` (prometheus_client's process collector) and
  ``cloudcred_build_info``.

Times are Unix timestamps in seconds (``..._timestamp_seconds``), the Prometheus
convention: ``time() - x`` is the age, and the value does not change between scrapes.

Label values are only namespaces, names, providers, versions and condition types,
statuses and reasons (each a CamelCase word, or from a fixed set): never a secret, a
key id, an ARN or an e-mail address.
"""

from __future__ import annotations

import functools
import logging
import platform
import re
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

import kopf
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import cloudcred
from cloudcred import conditions
from cloudcred.api.common import Provider
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.providers.base import Reason
from cloudcred.rollout import ROLLOUT_COMPLETE

if TYPE_CHECKING:  # the caches and queues import this module for their own metrics
    from cloudcred.cache import Caches
    from cloudcred.workqueue import WorkQueue

logger = logging.getLogger("cloudcred.metrics")

# Counters and histograms without their `_created` series: in the text format each
# would be one more gauge series per label set, which nothing here reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
# process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
ProcessCollector(registry=REGISTRY)

_PROVIDERS = {provider.value for provider in Provider}
_REASONS = {reason.value for reason in Reason}
_STATUSES = {conditions.TRUE, conditions.FALSE, conditions.UNKNOWN}
# Condition types and reasons are CamelCase words (the CRDs' pattern allows more, such
# as "," and ":"); anything else becomes OTHER, so that a hand-edited status cannot put
# a key id or an ARN in a label. Acronym runs are not words either (AKIA... is a key id).
_WORD = re.compile(r"(?:[A-Z][a-z0-9]+){1,12}")
OTHER = "Other"  # a label value outside the known set (never the raw value)


def _version(distribution: str, fallback: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return fallback


BUILD_INFO = Gauge(
    "cloudcred_build_info",
    "Always 1; the labels say which cloudcred, Python and kopf the operator runs.",
    ["version", "python_version", "kopf_version"],
    registry=REGISTRY,
)
BUILD_INFO.labels(
    version=_version("cloudcred", cloudcred.__version__),
    python_version=platform.python_version(),
    kopf_version=_version("kopf", "unknown"),
).set(1)

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


def status_label(value: object) -> str:
    return str(value) if str(value) in _STATUSES else OTHER


def word_label(value: object) -> str:
    """A condition type or reason as a label value: the word itself, or ``Other``."""
    if value is None or value == "":
        return ""
    return _word(value) if isinstance(value, str) else OTHER


@functools.lru_cache(maxsize=4096)  # a few dozen words, seen at every scrape
def _word(value: str) -> str:
    return value if len(value) <= 64 and _WORD.fullmatch(value) else OTHER


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


def _timestamp(value: object) -> float | None:
    """An RFC 3339 time from a status as Unix seconds, or None."""
    moment = conditions.parse_time(value)
    return moment.timestamp() if moment else None


def _conditions(found: object) -> Iterator[tuple[str, str, str]]:
    """(type, status, reason) label values of each condition, one per type: a list
    with a type twice (which the operator never writes) gives the first, as
    :func:`conditions.find` does, so no two series share their labels."""
    seen: set[str] = set()
    for item in found if isinstance(found, list) else []:
        if not isinstance(item, Mapping):
            continue
        type_ = word_label(item.get("type"))
        if not type_ or type_ in seen:
            continue
        seen.add(type_)
        yield type_, status_label(item.get("status")), word_label(item.get("reason"))


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
        yield from self.families().values()

    @staticmethod
    def families() -> dict[str, Any]:
        """The families this collector fills, by name, without samples."""
        per_credential = ["namespace", "credential"]
        condition = ["condition", "status", "reason"]
        families = (
            GaugeMetricFamily(
                "cloudcred_credentials",
                "CloudCredentials by provider.",
                labels=["provider"],
            ),
            GaugeMetricFamily(
                "cloudcred_credential_condition",
                "Always 1: one series per condition of each CloudCredential, with its type, "
                "status and reason.",
                labels=[*per_credential, *condition],
            ),
            GaugeMetricFamily(
                "cloudcred_cluster_conditions",
                "Clusters per namespace by condition type, status and reason (each Cluster "
                "counts once for each condition it has).",
                labels=["namespace", *condition],
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
                "cloudcred_credential_key_created_timestamp_seconds",
                "When the credential's static key was created (status.keyCreatedTime), in "
                "Unix seconds, where known.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_credential_key_expiry_timestamp_seconds",
                "When the provider stops accepting the static key (status.key.expiryTime: "
                "GCP key validity, Azure secret end date, Scaleway expiry), in Unix seconds.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_credential_next_rotation_timestamp_seconds",
                "When the operator rotates the key next (status.rotation.nextRotationTime, "
                "spec.rotation.policy Automatic), in Unix seconds.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_credential_last_verified_timestamp_seconds",
                "When the provider last accepted the credential (status.lastVerifiedTime), "
                "in Unix seconds.",
                labels=per_credential,
            ),
            GaugeMetricFamily(
                "cloudcred_credential_permissions_missing",
                "Needs of the PermissionSets named by the credential and its bound Clusters "
                "that the provider does not allow (status.permissions, at the current "
                "revision; absent until a check answered).",
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
            GaugeMetricFamily(
                "cloudcred_installation_key_changed",
                "1 while the installation Secret holds another key than the one the operator "
                "uses (loaded at start; a restart would change every revision and ExternalId), "
                "else 0.",
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
        return {family.name: family for family in families}

    def collect(self) -> Iterator[Metric]:
        families = self.families()
        for queue in self.source.queues:
            families["cloudcred_workqueue_depth"].add_metric([queue.name], len(queue))
            families["cloudcred_workqueue_adds"].add_metric([queue.name], queue.adds)
            families["cloudcred_workqueue_retries"].add_metric([queue.name], queue.retries)
        for info in list(self.source.caches.installation_key.objects.values()):
            families["cloudcred_installation_key_changed"].add_metric(
                [], 0.0 if info.holds_key_in_use else 1.0
            )
        credentials, clusters = self._snapshot()

        bound: dict[Key, list[ClusterInfo]] = {key: [] for key in credentials}
        # Clusters are counted, not one series each: at 10 000 clusters, a series per
        # condition of each would be 50 000 series and a second of CPU per scrape.
        cluster_counts: dict[tuple[str, str, str, str], int] = {}
        for cluster in clusters.values():
            target = cluster.was_bound_to
            if target in bound:
                bound[target].append(cluster)
            for condition in _conditions(cluster.status.get("conditions")):
                counted = (cluster.namespace, *condition)
                cluster_counts[counted] = cluster_counts.get(counted, 0) + 1
        for counted, count in sorted(cluster_counts.items()):
            families["cloudcred_cluster_conditions"].add_metric(list(counted), count)

        by_provider: dict[str, int] = {}
        times = (
            ("keyCreatedTime", families["cloudcred_credential_key_created_timestamp_seconds"]),
            ("lastVerifiedTime", families["cloudcred_credential_last_verified_timestamp_seconds"]),
        )
        for key, credential in sorted(credentials.items()):
            status = credential.status
            provider = provider_label(credential.provider)
            by_provider[provider] = by_provider.get(provider, 0) + 1
            labels = [key[0], key[1]]
            for condition in _conditions(status.get("conditions")):
                families["cloudcred_credential_condition"].add_metric([*labels, *condition], 1.0)
            bound_clusters = bound[key]
            families["cloudcred_credential_bound_clusters"].add_metric(labels, len(bound_clusters))
            if credential.revision:
                behind = [c for c in bound_clusters if c.deployed_revision != credential.revision]
                families["cloudcred_redeploys_pending"].add_metric(labels, len(behind))
            for field, family in times:
                moment = _timestamp(status.get(field))
                if moment is not None:
                    family.add_metric(labels, moment)
            for moment, name in (
                ((status.get("key") or {}).get("expiryTime"), "key_expiry"),
                ((status.get("rotation") or {}).get("nextRotationTime"), "next_rotation"),
            ):
                if (seconds := _timestamp(moment)) is not None:
                    families[f"cloudcred_credential_{name}_timestamp_seconds"].add_metric(
                        labels, seconds
                    )
            report = status.get("permissions") or {}
            if report.get("sets") and report.get("revision") == credential.revision:
                missing = sum(int(s.get("missingCount") or 0) for s in report["sets"])
                families["cloudcred_credential_permissions_missing"].add_metric(labels, missing)
            complete = conditions.find(status.get("conditions"), ROLLOUT_COMPLETE)
            if complete is not None:
                families["cloudcred_credential_rollout_complete"].add_metric(
                    labels, 1.0 if complete.get("status") == conditions.TRUE else 0.0
                )
        for provider, count in sorted(by_provider.items()):
            families["cloudcred_credentials"].add_metric([provider], count)
        yield from families.values()

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
