"""The operator's /metrics endpoint, scraped while it works (AWS through moto)."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.aws import Moto
from tests.conftest import Kube
from tests.integration.conftest import operator_env
from tests.operator import OperatorProcess, wait_for
from tests.resources import create_cluster, create_credential, secret

pytestmark = pytest.mark.integration

INVALID = "InvalidCredentials"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def test_metrics_while_the_operator_runs(kube: Kube, moto: Moto, tmp_path: Path) -> None:
    # A namespace only this operator watches (the shared test operator watches t-*).
    namespace = f"m-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    process = OperatorProcess(kube.kubeconfig, tmp_path / "operator.log", env=operator_env(moto),
                              args=["--namespace", namespace]).start()  # fmt: skip
    port = process.metrics_port
    try:
        wait_for(lambda: "cloudcred settings" in process.log(), timeout=30, what="start")
        user = moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")
        wrong_value = "not-the-secret-" + uuid.uuid4().hex
        secret(kube, namespace, "good-keys", {"secretAccessKey": user.secret_access_key})
        secret(kube, namespace, "wrong-keys", {"secretAccessKey": wrong_value})
        for name in ("good", "wrong"):
            ref = {"name": f"{name}-keys", "key": "secretAccessKey"}
            aws = {"accessKeyId": user.access_key_id, "secretAccessKeyRef": ref}
            create_credential(kube, namespace, name, provider="AWS", aws=aws)
        create_cluster(kube, namespace, "prod-eu", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "good"})  # fmt: skip

        def value(samples: Samples, name: str, **labels: str) -> float | None:
            return samples.get((name, frozenset(labels.items())))

        good = {"namespace": namespace, "credential": "good"}

        def settled() -> tuple[str, Samples] | None:
            text, samples = scrape(port)
            wanted = [
                value(samples, "cloudcred_credentials", provider="AWS", verified="True") == 1,
                value(samples, "cloudcred_credentials", provider="AWS", verified=INVALID) == 1,
                value(samples, "cloudcred_credential_bound_clusters", **good) == 1,
                value(samples, "cloudcred_redeploys_pending", **good) == 0,
                value(samples, "cloudcred_credential_rollout_complete", **good) == 1,
            ]
            return (text, samples) if all(wanted) else None

        text, samples = wait_for(settled, timeout=60, interval=0.5, what="metrics to settle")

        failures = value(samples, "cloudcred_verification_failures_total", provider="AWS",
                         reason=INVALID)  # fmt: skip
        assert failures is not None
        assert failures >= 1
        checks = value(samples, "cloudcred_verification_duration_seconds_count", provider="AWS")
        assert checks is not None
        assert checks >= 2
        wrong = {"namespace": namespace, "credential": "wrong"}
        assert value(samples, "cloudcred_credential_bound_clusters", **wrong) == 0
        age = value(samples, "cloudcred_credential_key_age_seconds", **good)
        assert age is not None  # moto lets the user read its own key's creation time
        assert 0 <= age < 3600
        assert "# TYPE cloudcred_verification_duration_seconds histogram" in text

        # Nothing secret, and no key id, in names, labels or help texts.
        for leak in (user.secret_access_key, wrong_value, user.access_key_id, user.user):
            assert leak not in text
        assert "arn:aws" not in text
    finally:
        process.stop()
