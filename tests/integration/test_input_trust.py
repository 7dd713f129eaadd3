"""Least input trust (issue 14) against the real API server and the real operator:
bad input is refused at admission, a hostile key ends in a clear condition, a
permanent refusal is not retried like an outage, and Secrets the operator does not
watch cannot exhaust its memory."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from cloudcred.constants import REFERENCED_LABEL
from tests.aws import Moto
from tests.conftest import Kube
from tests.gcp import SERVER_KEY, key_json, start_token_endpoint
from tests.integration.test_admission import create, credential, names_field, rejection
from tests.kube import ROOT
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_credential,
    credential_ready,
    events_for,
    get_credential,
    secret,
)
from tests.sts import start_refusing_sts

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role"


def named(name: str, obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["name"] = name
    return obj


# --- admission ------------------------------------------------------------------------


@pytest.mark.parametrize("interval", ["1ms", "59s", "0.5m", "30s500ms"])
def test_an_interval_under_a_minute_is_refused(kube: Kube, namespace: str, interval: str) -> None:
    obj = credential(provider="AWS", aws={"roleArn": f"{ROLE}/deployer"},
                     verification={"interval": interval})  # fmt: skip
    message = rejection(kube, namespace, obj)
    assert names_field(message, "spec.verification.interval"), message
    assert "must be 0 or at least 1m" in message


@pytest.mark.parametrize("interval", ["1m", "0", "90s", "1h30m", "60000ms"])
def test_an_interval_of_zero_or_a_minute_and_more_is_accepted(
    kube: Kube, namespace: str, interval: str
) -> None:
    name = f"ok-{uuid.uuid4().hex[:6]}"
    obj = credential(provider="AWS", aws={"roleArn": f"{ROLE}/deployer"},
                     verification={"interval": interval})  # fmt: skip
    created = create(kube, namespace, named(name, obj))
    assert created["spec"]["verification"]["interval"] == interval


@pytest.mark.parametrize(
    "arn", [f"{ROLE}//", f"{ROLE}/a//b", f"{ROLE}/", f"{ROLE}/a/", f"{ROLE}/{'n' * 65}"]
)
def test_a_malformed_role_arn_is_refused(kube: Kube, namespace: str, arn: str) -> None:
    message = rejection(kube, namespace, credential(provider="AWS", aws={"roleArn": arn}))
    assert names_field(message, "spec.aws.roleArn"), message


@pytest.mark.parametrize(
    "arn", [f"{ROLE}/deployer", f"{ROLE}/team/ci/deployer", f"{ROLE}/{'n' * 64}"]
)
def test_a_well_formed_role_arn_is_accepted(kube: Kube, namespace: str, arn: str) -> None:
    name = f"ok-{uuid.uuid4().hex[:6]}"
    created = create(kube, namespace, named(name, credential(provider="AWS",
                                                             aws={"roleArn": arn})))  # fmt: skip
    assert created["spec"]["aws"]["roleArn"] == arn


# --- the operator -----------------------------------------------------------------------


def new_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture
def own_operator(operators: Operators) -> Any:
    """Start an operator of this test's own with extra settings, watching ``args``."""

    def start(args: list[str], **env: str) -> OperatorProcess:
        return operators.start(env=env, args=args)

    return start


def verified_reason(kube: Kube, namespace: str, name: str, reason: str, timeout: float = 40):  # type: ignore[no-untyped-def]
    def check() -> dict[str, Any] | None:
        found = condition(get_credential(kube, namespace, name), "Verified")
        return found if found and found["reason"] == reason else None

    return wait_for(check, timeout, what=f"{namespace}/{name} Verified {reason}")


def test_a_nested_json_key_ends_a_verified_credential_in_invalid_secret_data(
    kube: Kube, own_operator: Any
) -> None:
    ns = new_namespace(kube, "own")
    endpoint, server = start_token_endpoint([SERVER_KEY.public_key()])
    try:
        operator = own_operator(["--namespace", ns], CLOUDCRED_GCP_TOKEN_URI=endpoint.url)
        secret(kube, ns, "gcp-key", {"sa.json": key_json(endpoint.url)})
        ref = {"name": "gcp-key", "key": "sa.json"}
        create_credential(kube, ns, "gcp", provider="GCP", gcp={"serviceAccountKeyRef": ref})
        assert verified_reason(kube, ns, "gcp", "Verified")["status"] == "True"
        # The operator follows a Secret once it carries its label (after its caches sync).
        wait_for(lambda: (kube.core.read_namespaced_secret("gcp-key", ns).metadata.labels or {})
                 .get(REFERENCED_LABEL) == "true", what="the Secret labelled")  # fmt: skip

        nested = "[" * 100_000
        kube.core.patch_namespaced_secret("gcp-key", ns, {"stringData": {"sa.json": nested}})
        found = verified_reason(kube, ns, "gcp", "InvalidSecretData")
        assert found["status"] == "False"
        assert found["message"] == (
            f"key 'sa.json' of Secret {ns}/gcp-key is not a service-account JSON key "
            "(nested too deeply)"
        )
        credential_ready(kube, ns, "gcp", "False")
        log = operator.log()
        assert "RecursionError" not in log
        assert "[[[[" not in log
    finally:
        server.shutdown()
        server.server_close()


OUTAGE_RETRY = 5.0  # seconds: the first retry of a transient failure (ProviderUnreachable)


def test_a_permanent_aws_refusal_is_not_retried_like_an_outage(
    kube: Kube, own_operator: Any
) -> None:
    ns = new_namespace(kube, "own")
    sts, server = start_refusing_sts()
    try:
        own_operator(["--namespace", ns], AWS_ENDPOINT_URL_STS=sts.url)
        create_credential(kube, ns, "refused", provider="AWS",
                          aws={"roleArn": f"{ROLE}/deployer"})  # fmt: skip
        found = verified_reason(kube, ns, "refused", "ProviderRefused")
        assert found["status"] == "False"
        assert found["message"] == "AWS refused AssumeRole (ValidationError, HTTP 400)"
        first = sts.assume_role_calls
        # ProviderUnreachable would be asked again after 5 s (then 60 s, 120 s ...): not
        # this one. What follows (no call for the whole backoff series, the interval
        # instead) is tests/unit/test_reconcilers.py's, on a fake clock.
        time.sleep(OUTAGE_RETRY + 1)
        print(f"AssumeRole calls: {first} at the refusal, {sts.assume_role_calls} "
              f"{OUTAGE_RETRY + 1:g} s later")  # fmt: skip
        assert first == 1
        assert sts.assume_role_calls == first
        reasons = [e.reason for e in events_for(kube, ns, "refused")]
        assert reasons.count("ProviderRefused") == 1
    finally:
        server.shutdown()
        server.server_close()


# --- memory: labelled Secrets in namespaces the operator does not watch -----------------

SECRETS = 300
SECRET_BYTES = 1_000_000  # a Secret's data may total 1 MiB (1 048 576 bytes)


def memory_limit_mib() -> int:
    deployment = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit[:-2])


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


@pytest.fixture(scope="module")
def big_labelled_secrets(kube: Kube) -> Iterator[str]:
    """300 labelled Secrets of ~1 MiB each in a namespace of their own, created in
    parallel; deleted at the end."""
    ns = new_namespace(kube, "big")
    payload = "x" * SECRET_BYTES

    def make(number: int) -> None:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"big-{number}", labels={REFERENCED_LABEL: "true"}),
            string_data={"blob": payload},
        )
        kube.core.create_namespaced_secret(ns, body)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(make, range(SECRETS)))
    print(f"created {SECRETS} Secrets of {SECRET_BYTES} bytes in {time.monotonic() - started:.1f}s")
    yield ns
    kube.core.delete_collection_namespaced_secret(ns, label_selector=REFERENCED_LABEL)


# 300 MiB of labelled Secrets, created and deleted: before the shared operator starts,
# which would read all of it as watch events (and slow the writes down).
@pytest.mark.early
@pytest.mark.parametrize("watch", ["plain", "glob"])
def test_big_secrets_elsewhere_do_not_blow_the_memory_limit(
    kube: Kube, moto: Moto, own_operator: Any, big_labelled_secrets: str, watch: str
) -> None:
    """Plain names: one namespaced watch per namespace, the big Secrets are never read.
    A glob: one cluster-wide watch that reads them 20 to a page and keeps none."""
    ns = new_namespace(kube, "mem")
    user = moto.create_user(f"mem-{uuid.uuid4().hex[:6]}")
    secret(kube, ns, "keys", {"secretAccessKey": user.secret_access_key})
    ref = {"name": "keys", "key": "secretAccessKey"}
    create_credential(kube, ns, "aws", provider="AWS",
                      aws={"accessKeyId": user.access_key_id,
                           "secretAccessKeyRef": ref})  # fmt: skip
    pattern = ns if watch == "plain" else f"{ns[:-2]}*"
    started = time.monotonic()
    operator = own_operator(["--namespace", pattern], CLOUDCRED_LOG_LEVEL="INFO")
    verified_reason(kube, ns, "aws", "Verified", timeout=90)
    # The Secret is labelled by a worker, and workers wait for every store's full LIST.
    wait_for(lambda: (kube.core.read_namespaced_secret("keys", ns).metadata.labels or {})
             .get(REFERENCED_LABEL) == "true", timeout=90, what="the Secret labelled")  # fmt: skip
    elapsed = time.monotonic() - started
    assert operator.pid is not None
    peak, limit = peak_rss_mib(operator.pid), memory_limit_mib()
    print(f"{watch}: operator peak RSS {peak:.0f} MiB (limit {limit} MiB), "
          f"verified and synced in {elapsed:.1f}s")  # fmt: skip
    assert peak < limit * 0.75, f"peak RSS {peak:.0f} MiB is near the {limit} MiB limit"
    assert operator.alive
