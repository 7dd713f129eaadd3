"""The metrics: state computed from the caches at scrape time, check events, build and
process series; and the shipped alerts (docs/operations.md, chart PrometheusRule) on those
names."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cloudcred import metrics
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.installation import Installation
from cloudcred.workqueue import WorkQueue

REVISION, OLD = "v1-943c1aa8cd74", "v1-0123456789ab"
KEY_ID, ROLE_ARN = "AKIAIOSFODNN7EXAMPLE", "arn:aws:iam::123456789012:role/cloudcred"
EMAIL = "deployer@acme-staging.iam.gserviceaccount.com"


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-22T10:00:00Z"}  # fmt: skip


def credential(
    namespace: str, name: str, provider: str = "AWS", *, status: dict[str, Any] | None = None,
    block: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    spec = {"provider": provider, provider.lower(): block or {"roleArn": ROLE_ARN}}
    return {"apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential",
            "metadata": {"namespace": namespace, "name": name, "generation": 1},
            "spec": spec, "status": status or {}}  # fmt: skip


def cluster(
    namespace: str, name: str, credential_name: str, *, bound: bool = True,
    deployed: str | None = None, external: bool = False, provider: str = "AWS",
) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"conditions": [
        cond("CredentialBound", "True" if bound else "False",
             "Bound" if bound else "ProviderMismatch")]}  # fmt: skip
    if bound:
        status["credential"] = {"namespace": namespace, "name": credential_name,
                                "revision": REVISION}  # fmt: skip
    if deployed:
        status["deployedRevision"] = deployed
    spec = {"provider": provider, "region": "eu-west-3",
            "credentialRef": {"name": credential_name},
            "deploy": "External" if external else "Operator"}  # fmt: skip
    return {"metadata": {"namespace": namespace, "name": name, "generation": 1},
            "spec": spec, "status": status}  # fmt: skip


@dataclass
class FakeBinder:
    """The operator's real caches, filled the way the watch handlers fill them, and
    no queues."""

    caches: Caches = field(default_factory=Caches)
    queues: tuple[WorkQueue[Key], ...] = ()
    key_created: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def credential_seen(self, body: dict[str, Any]) -> None:
        info = CredentialInfo.from_body(body)
        self.caches.credentials.apply(info.key, info)

    def cluster_seen(self, body: dict[str, Any]) -> None:
        info = ClusterInfo.from_body(body)
        self.caches.clusters.apply(info.key, info)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(binder: metrics.StateSource) -> tuple[str, Samples]:
    registry = CollectorRegistry()
    registry.register(metrics.StateCollector(binder))
    text = generate_latest(registry).decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def binder() -> FakeBinder:
    fake = FakeBinder(key_created=(datetime.now(UTC) - timedelta(days=100)).replace(microsecond=0))
    key_created = fake.key_created.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Verified, rolled out on 1 of 3 bound clusters; a 4th references it unbound.
    fake.credential_seen(credential("acme", "aws-prod", status={
        "revision": REVISION, "observedGeneration": 1, "publicId": KEY_ID,
        "identity": "arn:aws:iam::123456789012:user/deployer", "keyCreatedTime": key_created,
        "lastVerifiedTime": "2026-11-22T10:05:00Z",
        "clusterCount": 3,
        "conditions": [cond("Verified", "True", "Verified"), cond("Ready", "True", "Ready"),
                       cond("RolloutComplete", "False", "RolloutInProgress")],
    }, block={"accessKeyId": KEY_ID,
              "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"}}))  # fmt: skip
    fake.cluster_seen(cluster("acme", "prod-eu", "aws-prod", deployed=REVISION))
    fake.cluster_seen(cluster("acme", "prod-us", "aws-prod", deployed=OLD))
    fake.cluster_seen(cluster("acme", "new", "aws-prod", external=True))
    fake.cluster_seen(cluster("acme", "gcp-one", "aws-prod", bound=False, provider="GCP"))
    # Refused by AWS, no revision-dependent rollout yet.
    fake.credential_seen(credential("acme", "aws-wrong", status={
        "revision": OLD, "observedGeneration": 1,
        "conditions": [cond("Verified", "False", "InvalidCredentials"),
                       cond("RolloutComplete", "True", "RolloutComplete")],
    }))  # fmt: skip
    # Never checked yet; and a GCP one that verified, in another namespace.
    fake.credential_seen(credential("team-b", "aws-new"))
    fake.credential_seen(credential("team-b", "gcp-stage", "GCP", status={
        "revision": REVISION, "publicId": EMAIL,
        "conditions": [cond("Verified", "True", "Verified")]},
        block={"serviceAccountKeyRef": {"name": "gcp-key", "key": "key.json"}}))  # fmt: skip
    return fake


def test_credentials_by_provider(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_credentials"
    assert value(samples, name, provider="AWS") == 3
    assert value(samples, name, provider="GCP") == 1
    assert [n for n, _ in samples if n == name] == [name, name]


def condition_series(samples: Samples, name: str, **object_labels: str) -> dict[str, Any]:
    """condition type -> (status, reason) of one object's condition series (all valued 1)."""
    found: dict[str, Any] = {}
    for (sample, labels), sample_value in samples.items():
        labels_dict = dict(labels)
        if sample != name or any(labels_dict.get(k) != v for k, v in object_labels.items()):
            continue
        assert sample_value == 1
        assert labels_dict["condition"] not in found, "two series for one condition"
        found[labels_dict["condition"]] = (labels_dict["status"], labels_dict["reason"])
    return found


def test_one_series_per_credential_condition(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_credential_condition"
    assert condition_series(samples, name, namespace="acme", credential="aws-prod") == {
        "Verified": ("True", "Verified"),
        "Ready": ("True", "Ready"),
        "RolloutComplete": ("False", "RolloutInProgress"),
    }
    assert condition_series(samples, name, namespace="acme", credential="aws-wrong") == {
        "Verified": ("False", "InvalidCredentials"),
        "RolloutComplete": ("True", "RolloutComplete"),
    }
    # Not checked yet: no conditions, no series.
    assert condition_series(samples, name, namespace="team-b", credential="aws-new") == {}


def cluster_counts(samples: Samples) -> dict[tuple[str, str, str, str], float]:
    """(namespace, condition, status, reason) -> Clusters."""
    found = {}
    for (sample, frozen), sample_value in samples.items():
        if sample == "cloudcred_cluster_conditions":
            labels = dict(frozen)
            assert set(labels) == {"namespace", "condition", "status", "reason"}
            found[labels["namespace"], labels["condition"], labels["status"], labels["reason"]] = (
                sample_value
            )
    return found


def test_clusters_counted_by_condition(binder: FakeBinder) -> None:
    binder.cluster_seen(cluster("team-b", "other", "gcp-stage", provider="GCP"))
    _, samples = scrape(binder)
    assert cluster_counts(samples) == {
        ("acme", "CredentialBound", "True", "Bound"): 3,
        ("acme", "CredentialBound", "False", "ProviderMismatch"): 1,
        ("team-b", "CredentialBound", "True", "Bound"): 1,
    }


def test_a_changed_condition_leaves_no_stale_series(binder: FakeBinder) -> None:
    """Whatever conditions the object has, whichever new types appear (Reconciling,
    Stalled): each is one series, and the old reason's series is gone at the next scrape."""
    name = "cloudcred_credential_condition"
    binder.credential_seen(credential("acme", "aws-wrong", status={
        "revision": OLD, "conditions": [
            cond("Verified", "False", "ProviderUnreachable"),
            cond("Reconciling", "True", "ProviderUnreachable"),
            cond("Stalled", "False", "ProviderUnreachable"),
        ]}))  # fmt: skip
    _, samples = scrape(binder)
    assert condition_series(samples, name, namespace="acme", credential="aws-wrong") == {
        "Verified": ("False", "ProviderUnreachable"),
        "Reconciling": ("True", "ProviderUnreachable"),
        "Stalled": ("False", "ProviderUnreachable"),
    }
    assert value(samples, name, namespace="acme", credential="aws-wrong", condition="Verified",
                 status="False", reason="InvalidCredentials") is None  # fmt: skip
    # A Cluster's condition changes: it moves to the other count, and a count that
    # reaches zero is no series at all.
    binder.cluster_seen(cluster("acme", "gcp-one", "aws-prod"))  # now bound
    _, samples = scrape(binder)
    assert cluster_counts(samples) == {("acme", "CredentialBound", "True", "Bound"): 4}


def test_condition_labels_are_words_or_other() -> None:
    fake = FakeBinder()
    fake.credential_seen(credential("acme", "odd", status={"conditions": [
        cond("Verified", "False", KEY_ID),  # an acronym run: not a word
        cond("Ready", "Maybe", "Some reason, with spaces"),
        cond(ROLE_ARN, "True", "Fine"),
        cond("Verified", "True", "Verified"),  # a second Verified: the first counts
        {"type": "InUse", "status": "True"},  # no reason
    ]}))  # fmt: skip
    _, samples = scrape(fake)
    name = "cloudcred_credential_condition"
    assert condition_series(samples, name, namespace="acme", credential="odd") == {
        "Verified": ("False", "Other"),
        "Ready": ("Other", "Other"),
        "Other": ("True", "Fine"),
        "InUse": ("True", ""),
    }
    for reason in ("RolloutInProgress", "OutsideBoundary", "CredentialNotReady", "Http2Error"):
        assert metrics.word_label(reason) == reason
    for odd in (KEY_ID, EMAIL, "arn:aws:iam::1:role/x", "A" * 80, "lower", "Bad,Comma"):
        assert metrics.word_label(odd) == "Other"


def test_bound_clusters_count_only_bound_ones(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_credential_bound_clusters"
    assert value(samples, name, namespace="acme", credential="aws-prod") == 3
    assert value(samples, name, namespace="acme", credential="aws-wrong") == 0
    assert value(samples, name, namespace="team-b", credential="aws-new") == 0


def test_pending_redeploys_are_bound_clusters_behind_the_revision(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_redeploys_pending"
    # prod-us (old revision) and new (never deployed); not prod-eu, not the unbound one.
    assert value(samples, name, namespace="acme", credential="aws-prod") == 2
    assert value(samples, name, namespace="acme", credential="aws-wrong") == 0
    # No revision yet: nothing to compare with, so no sample.
    assert value(samples, name, namespace="team-b", credential="aws-new") is None


def test_key_created_and_last_verified_are_unix_timestamps(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    created = "cloudcred_credential_key_created_timestamp_seconds"
    moment = value(samples, created, namespace="acme", credential="aws-prod")
    assert moment == binder.key_created.timestamp()
    # Only where known, and the same value at every scrape (not an age that grows).
    assert [labels for n, labels in samples if n == created] == [
        frozenset({("namespace", "acme"), ("credential", "aws-prod")})
    ]
    _, again = scrape(binder)
    assert value(again, created, namespace="acme", credential="aws-prod") == moment
    verified = "cloudcred_credential_last_verified_timestamp_seconds"
    assert value(samples, verified, namespace="acme", credential="aws-prod") == datetime(
        2026, 11, 22, 10, 5, tzinfo=UTC).timestamp()  # fmt: skip
    assert value(samples, verified, namespace="team-b", credential="aws-new") is None


def test_rollout_complete_from_the_condition(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_credential_rollout_complete"
    assert value(samples, name, namespace="acme", credential="aws-prod") == 0
    assert value(samples, name, namespace="acme", credential="aws-wrong") == 1
    assert value(samples, name, namespace="team-b", credential="aws-new") is None


def test_no_key_id_arn_or_email_in_the_scrape(binder: FakeBinder) -> None:
    text, samples = scrape(binder)
    for public in (KEY_ID, ROLE_ARN, EMAIL, "arn:aws", "aws-keys", "gcp-key", REVISION):
        assert public not in text
    label_values = {v for _, labels in samples for _, v in labels}
    names = {"acme", "team-b", "aws-prod", "aws-wrong", "aws-new", "gcp-stage", "prod-eu",
             "prod-us", "new", "gcp-one", "AWS", "GCP"}  # fmt: skip
    condition_words = {"True", "False", "Verified", "Ready", "RolloutComplete",
                       "CredentialBound", "Bound", "ProviderMismatch", "InvalidCredentials",
                       "RolloutInProgress"}  # fmt: skip
    assert label_values <= names | condition_words


def test_unknown_label_values_are_bounded() -> None:
    assert metrics.provider_label("arn:aws:iam::1:role/x") == "Other"
    assert metrics.reason_label(f"SomethingNew {KEY_ID}") == "Other"
    assert metrics.status_label("Yes") == "Other"


def test_an_empty_index_scrapes_cleanly() -> None:
    text, samples = scrape(FakeBinder())
    assert "# TYPE cloudcred_credentials gauge" in text
    assert samples == {}


def test_the_real_controllers_fit_the_collector() -> None:
    """The collector reads the real controllers' caches and queues as they are."""
    import asyncio

    from cloudcred.config import Settings
    from cloudcred.controllers.runner import Controllers

    async def scenario() -> None:
        real = Controllers(
            None,  # type: ignore[arg-type]
            Settings(),
            asyncio.Semaphore(1),
            [],
            Installation(bytes(32)),
        )
        real.credential_event("ADDED", credential("acme", "aws-prod"))
        _, samples = scrape(real)
        assert value(samples, "cloudcred_credentials", provider="AWS") == 1
        # The credential event queued the credential; nothing else waits.
        assert value(samples, "cloudcred_workqueue_depth", queue="credentials") == 1
        assert value(samples, "cloudcred_workqueue_depth", queue="clusters") == 0
        assert value(samples, "cloudcred_workqueue_adds_total", queue="credentials") == 1

    asyncio.run(scenario())


def test_verification_events(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    duration = Histogram("cloudcred_verification_duration_seconds", "d", ["provider"],
                         registry=registry)  # fmt: skip
    failures = Counter("cloudcred_verification_failures", "f", ["provider", "reason"],
                       registry=registry)  # fmt: skip
    monkeypatch.setattr(metrics, "VERIFICATION_DURATION", duration)
    monkeypatch.setattr(metrics, "VERIFICATION_FAILURES", failures)

    metrics.observe_verification("AWS", 0.3, cond("Verified", "True", "Verified"))
    metrics.observe_verification("AWS", 1.2, cond("Verified", "False", "InvalidCredentials"))
    metrics.observe_verification("GCP", 0.01, cond("Verified", "Unknown", "VerificationDisabled"))
    metrics.observe_verification("AWS", 3.0, cond("Verified", "False", "ProviderUnreachable"))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("cloudcred_verification_duration_seconds_count", provider="AWS") == 3
    assert sample("cloudcred_verification_duration_seconds_sum", provider="AWS") == 4.5
    assert sample("cloudcred_verification_duration_seconds_count", provider="GCP") == 1
    total = "cloudcred_verification_failures_total"
    assert sample(total, provider="AWS", reason="InvalidCredentials") == 1
    assert sample(total, provider="AWS", reason="ProviderUnreachable") == 1
    assert sample(total, provider="GCP", reason="VerificationDisabled") is None


def test_the_module_registry_is_not_the_global_one() -> None:
    from prometheus_client import REGISTRY as GLOBAL

    assert metrics.REGISTRY is not GLOBAL
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert {"cloudcred_verification_duration_seconds", "cloudcred_verification_failures"} <= names


def test_build_info_and_process_series_on_the_served_registry() -> None:
    import platform
    from importlib import metadata

    text = generate_latest(metrics.REGISTRY).decode()
    samples = {s.name: s for family in metrics.REGISTRY.collect() for s in family.samples}
    build = samples["cloudcred_build_info"]
    assert build.value == 1
    assert build.labels == {"version": metadata.version("cloudcred"),
                            "python_version": platform.python_version(),
                            "kopf_version": metadata.version("kopf")}  # fmt: skip
    # This process, measured: its start time is in the past, it holds memory and fds.
    assert samples["process_resident_memory_bytes"].value > 10 * 2**20
    assert samples["process_open_fds"].value > 0
    assert 0 < samples["process_start_time_seconds"].value < datetime.now(UTC).timestamp()
    assert "# TYPE process_cpu_seconds_total counter" in text
    # No `_created` series next to counters and histograms (turned off for the process).
    registry = CollectorRegistry()
    Counter("probe", "p", registry=registry).inc()
    Histogram("probe_seconds", "p", registry=registry).observe(1)
    probe = {s.name for family in registry.collect() for s in family.samples}
    assert "probe_total" in probe
    assert not [name for name in probe if name.endswith("_created")]


def test_serve_and_a_taken_port(binder: FakeBinder) -> None:
    import socket
    import urllib.request

    import kopf

    from tests.envtest.controlplane import free_port

    port = free_port()
    metrics.serve(port, binder, registry=CollectorRegistry())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'cloudcred_credential_bound_clusters{credential="aws-prod",namespace="acme"} 3.0' in text

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - the operator binds all interfaces too
        taken.listen()
        with pytest.raises(kopf.PermanentError, match="CLOUDCRED_METRICS_PORT"):
            metrics.serve(taken.getsockname()[1], binder, registry=CollectorRegistry())


# The shipped alerts: the "Alerts" block of docs/operations.md and the chart's PrometheusRule.

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".local" / "bin" / "helm"
OPERATIONS = ROOT / "docs" / "operations.md"


def documented_alerts() -> dict[str, Any]:
    section = OPERATIONS.read_text().split("\n### Alerts\n", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded: dict[str, Any] = yaml.safe_load(block)
    return loaded


def chart_alerts() -> dict[str, Any]:
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` ({HELM.relative_to(ROOT)})")
    args = [str(HELM), "template", "cloudcred", str(ROOT / "charts" / "cloudcred"),
            "--namespace", "cloudcred-system", "--set", "prometheusRule.enabled=true",
            "--set", "prometheusRule.labels.release=prometheus"]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    (rule,) = [doc for doc in yaml.safe_load_all(result.stdout)
               if doc and doc["kind"] == "PrometheusRule"]  # fmt: skip
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["metadata"]["namespace"] == "cloudcred-system"
    spec: dict[str, Any] = rule["spec"]
    return spec


def test_the_chart_ships_the_documented_alerts() -> None:
    documented = documented_alerts()
    assert documented == chart_alerts()
    assert len(documented["groups"][0]["rules"]) >= 4


def test_the_chart_renders_no_rule_unless_asked() -> None:
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` ({HELM.relative_to(ROOT)})")
    args = [str(HELM), "template", "cloudcred", str(ROOT / "charts" / "cloudcred")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "PrometheusRule" not in result.stdout


def exported_series() -> dict[str, set[str]]:
    """Every series name the operator's /metrics can carry, with its label names: the
    module registry (with the counters other modules register on it) and the state
    collector's families."""
    import cloudcred.controllers.runner
    import cloudcred.handlers.deletion  # noqa: F401 - both register counters

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    found: dict[str, set[str]] = {}

    def add(name: str, kind: str, labels: tuple[str, ...]) -> None:
        for suffix in suffixes.get(kind, [""]):
            extra = {"le"} if suffix == "_bucket" else set()
            found[name + suffix] = set(labels) | extra

    # prometheus_client keeps label names in `_labelnames`, on collectors and families.
    collectors = list(metrics.REGISTRY._collector_to_names)
    for collector in collectors:
        for family in collector.collect():
            add(family.name, family.type, getattr(collector, "_labelnames", ()))
    for family in metrics.StateCollector.families().values():
        add(family.name, family.type, family._labelnames)
    return found


def selectors(expr: Any) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(expr, visit)
    return found


def result_labels(expr: Any, series: dict[str, set[str]]) -> set[str]:
    """Labels an alert's result carries: an aggregation's `by` labels, or the labels of
    the series it selects."""
    if isinstance(expr, promql_parser.BinaryExpr):
        return result_labels(expr.lhs, series) | result_labels(expr.rhs, series)
    if isinstance(expr, promql_parser.AggregateExpr):
        assert expr.modifier is not None
        assert expr.modifier.type == promql_parser.AggModifierType.By
        return set(expr.modifier.labels)
    return set().union(*(series[s.name] for s in selectors(expr)))


def test_alerts_name_only_series_and_labels_the_operator_exports() -> None:
    from cloudcred.health import ROLLOUT_PAUSED, SUMMARY_CONDITIONS

    series = exported_series()
    assert "cloudcred_credential_condition" in series
    assert "process_resident_memory_bytes" in series
    assert "cloudcred_reconcile_errors_total" in series
    rules = documented_alerts()["groups"][0]["rules"]
    for rule in rules:
        expr = promql_parser.parse(rule["expr"])  # a syntax or type error raises
        for selector in selectors(expr):
            assert selector.name in series, f"{rule['alert']}: {selector.name} is not exported"
            for matcher in selector.matchers.matchers:
                assert matcher.name in series[selector.name], (rule["alert"], matcher.name)
                if matcher.name == "condition":  # a condition type the operator writes
                    assert matcher.value in SUMMARY_CONDITIONS, (rule["alert"], matcher.value)
                if matcher.name == "reason":
                    assert matcher.value == ROLLOUT_PAUSED, (rule["alert"], matcher.value)
        available = result_labels(expr, series)
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in available, f"{rule['alert']}: no label {label} in the result"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_the_metrics_table_lists_every_series() -> None:
    section = OPERATIONS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    documented = set(re.findall(r"`([a-z_]+)`", table))
    for name in exported_series():
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in documented or base in documented, f"{name} is not in {OPERATIONS.name}"
    # ...and nothing the operator no longer exports.
    names = {n for n in documented if n.startswith(("cloudcred_", "process_"))}
    histograms = {"cloudcred_verification_duration_seconds", "cloudcred_reconcile_duration_seconds"}
    exported = set(exported_series()) | histograms
    assert names <= exported, names - exported


def test_missing_permissions_are_counted_at_the_current_revision_only() -> None:
    fake = FakeBinder()
    report = {"sets": [
        {"name": "create", "sufficient": "False", "reason": "MissingPermissions", "checked": 41,
         "missingCount": 3, "missing": ["eks:CreateCluster", "iam:PassRole", "kms:*"]},
        {"name": "read", "sufficient": "False", "reason": "MissingPermissions", "checked": 2,
         "missingCount": 1, "missing": ["s3:ListAllMyBuckets"]},
        {"name": "other", "sufficient": "Unknown", "reason": "CheckNotAllowed", "checked": 0,
         "missingCount": 0}]}  # fmt: skip
    for name, revision in (("current", REVISION), ("stale", OLD)):
        fake.credential_seen(credential("acme", name, status={
            "revision": REVISION, "permissions": {**report, "revision": revision}}))  # fmt: skip
    fake.credential_seen(credential("acme", "unchecked", status={"revision": REVISION}))
    text, samples = scrape(fake)
    name = "cloudcred_credential_permissions_missing"
    assert value(samples, name, namespace="acme", credential="current") == 4
    assert value(samples, name, namespace="acme", credential="stale") is None
    assert value(samples, name, namespace="acme", credential="unchecked") is None
    assert "eks:CreateCluster" not in text, "what is missing is in status, not in labels"
