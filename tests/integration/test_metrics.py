"""The operator's /metrics endpoint, scraped while it works (AWS through moto)."""

from __future__ import annotations

import platform
import time
import urllib.request
import uuid
from importlib import metadata
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.aws import Moto
from tests.conftest import Kube
from tests.operator import Operators, wait_for
from tests.resources import (
    create_cluster,
    create_credential,
    get_credential,
    list_clusters,
    patch_cluster_status,
    secret,
)

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


def conditions_in(
    samples: Samples, name: str, kind_label: str, key: tuple[str, str]
) -> dict[str, tuple[str, str]]:
    """type -> (status, reason) of one object's condition series; each must be 1, once."""
    found: dict[str, tuple[str, str]] = {}
    for (sample, frozen), sample_value in samples.items():
        labels = dict(frozen)
        if sample != name or (labels["namespace"], labels[kind_label]) != key:
            continue
        assert sample_value == 1
        assert labels["condition"] not in found, f"two series for {labels['condition']}"
        found[labels["condition"]] = (labels["status"], labels["reason"])
    return found


def cluster_counts(samples: Samples, namespace: str) -> dict[tuple[str, str, str], float]:
    """(condition, status, reason) -> Clusters of the namespace."""
    found = {}
    for (sample, frozen), sample_value in samples.items():
        labels = dict(frozen)
        if sample == "cloudcred_cluster_conditions" and labels["namespace"] == namespace:
            found[labels["condition"], labels["status"], labels["reason"]] = sample_value
    return found


def conditions_of(obj: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    items = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in items}


def test_metrics_while_the_operator_runs(kube: Kube, moto: Moto, operators: Operators) -> None:
    # A namespace only this operator watches (the shared test operator watches t-*).
    namespace = f"m-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    started = time.time()
    process = operators.start(namespace)
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
        create_cluster(kube, namespace, "ghost", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "no-such-credential"})  # fmt: skip

        def value(samples: Samples, name: str, **labels: str) -> float | None:
            return samples.get((name, frozenset(labels.items())))

        good = {"namespace": namespace, "credential": "good"}
        credential_conditions = "cloudcred_credential_condition"

        def settled() -> tuple[str, Samples] | None:
            text, samples = scrape(port)
            wrong = conditions_in(
                samples, credential_conditions, "credential", (namespace, "wrong")
            )
            good_now = conditions_in(
                samples, credential_conditions, "credential", (namespace, "good")
            )
            wanted = [
                value(samples, "cloudcred_credentials", provider="AWS") == 2,
                good_now.get("Verified") == ("True", "Verified"),
                wrong.get("Verified") == ("False", INVALID),
                cluster_counts(samples, namespace).get(
                    ("CredentialBound", "False", "CredentialNotFound")
                )
                == 1,
                value(samples, "cloudcred_credential_bound_clusters", **good) == 1,
                value(samples, "cloudcred_redeploys_pending", **good) == 0,
                value(samples, "cloudcred_credential_rollout_complete", **good) == 1,
            ]
            return (text, samples) if all(wanted) else None

        text, samples = wait_for(settled, timeout=60, interval=0.5, what="metrics to settle")

        # Every condition each credential has, one series each, with its status and reason,
        # and the Clusters counted by theirs: the metrics and the objects read from the API
        # server agree (once both settled).
        def agree() -> bool:
            _, now = scrape(port)
            for name in ("good", "wrong"):
                exported = conditions_in(now, credential_conditions, "credential",
                                         (namespace, name))  # fmt: skip
                if not exported or exported != conditions_of(get_credential(kube, namespace, name)):
                    return False
            counted: dict[tuple[str, str, str], float] = {}
            for item in list_clusters(kube, namespace):
                for labels in conditions_of(item).items():
                    key = (labels[0], *labels[1])
                    counted[key] = counted.get(key, 0) + 1
            return bool(counted) and cluster_counts(now, namespace) == counted

        wait_for(agree, timeout=30, interval=0.5, what="metrics to match the objects' conditions")

        failures = value(samples, "cloudcred_verification_failures_total", provider="AWS",
                         reason=INVALID)  # fmt: skip
        assert failures is not None
        assert failures >= 1
        checks = value(samples, "cloudcred_verification_duration_seconds_count", provider="AWS")
        assert checks is not None
        assert checks >= 2
        wrong = {"namespace": namespace, "credential": "wrong"}
        assert value(samples, "cloudcred_credential_bound_clusters", **wrong) == 0
        assert "# TYPE cloudcred_verification_duration_seconds histogram" in text

        # Timestamps are Unix times: moto made the key just now; the check ran since start.
        now = time.time()
        created = value(samples, "cloudcred_credential_key_created_timestamp_seconds", **good)
        assert created is not None  # moto lets the user read its own key's creation time
        assert now - 3600 < created <= now + 5
        verified = value(samples, "cloudcred_credential_last_verified_timestamp_seconds", **good)
        assert verified is not None
        assert started - 2 <= verified <= now + 2
        assert value(samples, "cloudcred_credential_last_verified_timestamp_seconds",
                     **wrong) is None  # never accepted  # fmt: skip
        assert "cloudcred_credential_key_age_seconds" not in text

        # The operator process and its build.
        (build,) = [dict(labels) for name, labels in samples if name == "cloudcred_build_info"]
        assert build == {"version": metadata.version("cloudcred"),
                         "python_version": platform.python_version(),
                         "kopf_version": metadata.version("kopf")}  # fmt: skip
        start_time = value(samples, "process_start_time_seconds")
        assert start_time is not None
        assert started - 5 <= start_time <= now
        resident = value(samples, "process_resident_memory_bytes")
        assert resident is not None
        assert resident > 20 * 2**20
        cpu = value(samples, "process_cpu_seconds_total")
        assert cpu is not None
        assert cpu > 0
        assert not [name for name, _ in samples if name.endswith("_created")]

        # Fixing the wrong Secret: its Verified series changes, the old one is gone.
        fix = {"stringData": {"secretAccessKey": user.secret_access_key}}
        kube.core.patch_namespaced_secret("wrong-keys", namespace, fix)

        def fixed() -> dict[str, tuple[str, str]] | None:
            _, now_samples = scrape(port)
            found = conditions_in(now_samples, credential_conditions, "credential",
                                  (namespace, "wrong"))  # fmt: skip
            return found if found.get("Verified") == ("True", "Verified") else None

        after = wait_for(fixed, timeout=60, interval=0.5, what="the fixed credential's series")
        assert after.get("Ready", ("True", ""))[0] == "True"

        # Nothing secret, and no key id, in names, labels or help texts.
        for leak in (user.secret_access_key, wrong_value, user.access_key_id, user.user):
            assert leak not in text
        assert "arn:aws" not in text
    finally:
        process.stop()


def test_a_new_revision_reconciles_each_cluster_once(kube: Kube, operators: Operators) -> None:
    """The running operator, counted by its own metric: a credential edit that marks every
    cluster at once (maxConcurrent 100 %) costs one cluster reconcile per cluster."""
    namespace = f"m-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    process = operators.start(namespace)
    count = 30
    try:
        create_credential(kube, namespace, "shared", provider="AWS",
                          aws={"roleArn": "arn:aws:iam::123456789012:role/one"},
                          verification={"enabled": False},
                          rollout={"maxConcurrent": "100%"})  # fmt: skip
        first = wait_for(lambda: ((get_credential(kube, namespace, "shared") or {}).get("status")
                                  or {}).get("revision"), what="a revision")  # fmt: skip
        for index in range(count):
            create_cluster(kube, namespace, f"k{index:02d}", provider="AWS", region="eu-west-3",
                           credentialRef={"name": "shared"}, deploy="External")  # fmt: skip
            patch_cluster_status(kube, namespace, f"k{index:02d}", {"deployedRevision": first})

        def rollout() -> dict[str, Any]:
            return ((get_credential(kube, namespace, "shared") or {}).get("status") or {}).get(
                "rollout") or {}  # fmt: skip

        wait_for(lambda: rollout().get("updated") == count, what="every cluster on the revision")

        def reconciles() -> float:
            _, samples = scrape(process.metrics_port)
            return sum(value for (name, labels), value in samples.items()
                       if name == "cloudcred_reconciles_total"
                       and ("controller", "clusters") in labels)  # fmt: skip

        def quiet() -> float | None:
            before = reconciles()
            time.sleep(1.5)
            after = reconciles()
            return after if after == before else None

        before = wait_for(quiet, timeout=30, interval=0, what="the clusters to settle")
        kube.custom.patch_namespaced_custom_object(
            "cloudcred.io", "v1alpha1", namespace, "cloudcredentials", "shared",
            {"spec": {"aws": {"roleArn": "arn:aws:iam::123456789012:role/two"}}},
        )  # fmt: skip

        def all_waiting() -> bool:
            second = rollout().get("revision")
            return second not in (None, first) and all(
                (c["metadata"].get("annotations") or {}).get("cloudcred.io/redeploy-revision")
                == second
                and "waiting for the external deployer" in conditions_message(c)
                for c in list_clusters(kube, namespace)
            )

        wait_for(all_waiting, timeout=60, what="every cluster marked and told")
        after = wait_for(quiet, timeout=30, interval=0, what="the clusters to settle")
        assert after - before == count, f"{after - before:g} cluster reconciles for {count}"
    finally:
        process.stop()


def conditions_message(cluster: dict[str, Any]) -> str:
    found = [c for c in (cluster.get("status") or {}).get("conditions") or []
             if c["type"] == "RedeployPending"]  # fmt: skip
    return str(found[0]["message"]) if found else ""
