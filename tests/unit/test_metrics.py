"""The metrics: state computed from the caches at scrape time, check events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
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
    key_created = (datetime.now(UTC) - timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fake = FakeBinder()
    # Verified, rolled out on 1 of 3 bound clusters; a 4th references it unbound.
    fake.credential_seen(credential("acme", "aws-prod", status={
        "revision": REVISION, "observedGeneration": 1, "publicId": KEY_ID,
        "identity": "arn:aws:iam::123456789012:user/deployer", "keyCreatedTime": key_created,
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


def test_credentials_by_provider_and_verification_state(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_credentials"
    assert value(samples, name, provider="AWS", verified="True") == 1
    assert value(samples, name, provider="AWS", verified="InvalidCredentials") == 1
    assert value(samples, name, provider="AWS", verified="Pending") == 1
    assert value(samples, name, provider="GCP", verified="True") == 1
    assert sum(v for (n, _), v in samples.items() if n == name) == 4


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


def test_key_age_only_where_known(binder: FakeBinder) -> None:
    _, samples = scrape(binder)
    name = "cloudcred_credential_key_age_seconds"
    age = value(samples, name, namespace="acme", credential="aws-prod")
    assert age is not None
    assert 100 * 86400 - 60 < age < 100 * 86400 + 60
    assert [labels for n, labels in samples if n == name] == [
        frozenset({("namespace", "acme"), ("credential", "aws-prod")})
    ]


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
    assert label_values <= {"acme", "team-b", "aws-prod", "aws-wrong", "aws-new", "gcp-stage",
                            "AWS", "GCP", "True", "InvalidCredentials", "Pending"}  # fmt: skip


def test_unknown_label_values_are_bounded() -> None:
    fake = FakeBinder()
    odd = cond("Verified", "False", f"SomethingNew {KEY_ID}")
    fake.credential_seen(credential("acme", "odd", status={"conditions": [odd]}))
    _, samples = scrape(fake)
    assert value(samples, "cloudcred_credentials", provider="AWS", verified="Other") == 1
    assert metrics.provider_label("arn:aws:iam::1:role/x") == "Other"


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
            lambda _: None,
            Installation(bytes(32)),
        )
        real.credential_event("ADDED", credential("acme", "aws-prod"))
        _, samples = scrape(real)
        assert value(samples, "cloudcred_credentials", provider="AWS", verified="Pending") == 1
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
