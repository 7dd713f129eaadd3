"""The binding invariant under churn, kills and restarts (seeded, reproducible).

20 clusters over 3 credentials are created, deleted and re-pointed concurrently while
credential deletions are attempted and the operator is SIGKILLed and restarted at
random points. At every check: no credential is gone while a cluster whose status is
current says it is bound to it still points at it. At the end: each credential's
status.clusters equals the set of clusters referencing it, computed from the API.

Re-run a failure with CLOUDCRED_INVARIANT_SEED=<the printed seed>.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION
from tests.aws import Moto
from tests.conftest import Kube
from tests.operator import Operators, wait_for
from tests.resources import condition, create_cluster, create_credential

pytestmark = pytest.mark.integration

CREDENTIALS = ["cred-a", "cred-b", "cred-c"]
MAX_CLUSTERS = 20
STEPS = int(os.environ.get("CLOUDCRED_INVARIANT_STEPS", "60"))


def _list(kube: Kube, namespace: str, plural: str) -> list[dict[str, Any]]:
    items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    return list(items["items"])


def _ignore_conflicts(action: Any) -> None:
    try:
        action()
    except ApiException as error:
        if error.status not in (403, 404, 409, 422):
            raise


def check_no_bound_credential_gone(kube: Kube, namespace: str) -> None:
    existing = {c["metadata"]["name"] for c in _list(kube, namespace, CREDENTIAL_PLURAL)}
    for cluster in _list(kube, namespace, CLUSTER_PLURAL):
        status = cluster.get("status") or {}
        bound = condition(cluster, "CredentialBound")
        current = status.get("observedGeneration") == cluster["metadata"]["generation"]
        target = (status.get("credential") or {}).get("name")
        if (
            bound
            and bound["status"] == "True"
            and current
            and (target == cluster["spec"]["credentialRef"]["name"])
        ):
            assert target in existing, (
                f"credential {target} is gone while cluster {cluster['metadata']['name']} "
                "is bound to it"
            )


def expected_lists(kube: Kube, namespace: str) -> dict[str, list[str]]:
    clusters = _list(kube, namespace, CLUSTER_PLURAL)
    return {
        credential["metadata"]["name"]: sorted(
            c["metadata"]["name"] for c in clusters
            if c["spec"]["credentialRef"]["name"] == credential["metadata"]["name"]
        )
        for credential in _list(kube, namespace, CREDENTIAL_PLURAL)
        if not credential["metadata"].get("deletionTimestamp")
    }  # fmt: skip


def actual_lists(kube: Kube, namespace: str) -> dict[str, list[str]]:
    return {
        credential["metadata"]["name"]: sorted(
            c["name"] for c in (credential.get("status") or {}).get("clusters") or []
        )
        for credential in _list(kube, namespace, CREDENTIAL_PLURAL)
        if not credential["metadata"].get("deletionTimestamp")
    }


def test_bindings_survive_churn_kills_and_restarts(
    kube: Kube, moto: Moto, operators: Operators
) -> None:
    seed = int(os.environ.get("CLOUDCRED_INVARIANT_SEED", random.randrange(2**32)))
    print(f"invariant seed: {seed}")
    rng = random.Random(seed)
    namespace = f"i-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    operator = operators.start(namespace)
    custom = kube.custom

    def ensure_credential(name: str) -> None:
        _ignore_conflicts(
            lambda: create_credential(
                kube,
                namespace,
                name,
                provider="AWS",
                verification={"enabled": False},
                aws={"roleArn": "arn:aws:iam::123456789012:role/deployer"},
            )
        )

    def op_create(index: int) -> None:
        _ignore_conflicts(
            lambda: create_cluster(
                kube,
                namespace,
                f"c{index}",
                provider="AWS",
                region="eu-west-3",
                credentialRef={"name": rng.choice(CREDENTIALS)},
            )
        )

    def op_delete(index: int) -> None:
        _ignore_conflicts(
            lambda: custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, CLUSTER_PLURAL, f"c{index}"
            )
        )

    def op_repoint(index: int) -> None:
        _ignore_conflicts(
            lambda: custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                CLUSTER_PLURAL,
                f"c{index}",
                {"spec": {"credentialRef": {"name": rng.choice(CREDENTIALS)}}},
            )
        )

    def op_delete_credential(name: str) -> None:
        _ignore_conflicts(lambda: custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name))  # fmt: skip

    try:
        for name in CREDENTIALS:
            ensure_credential(name)
        kills = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(STEPS):
                batch = []
                for _ in range(4):
                    roll = rng.random()
                    index = rng.randrange(MAX_CLUSTERS)
                    if roll < 0.35:
                        batch.append(pool.submit(op_create, index))
                    elif roll < 0.55:
                        batch.append(pool.submit(op_delete, index))
                    elif roll < 0.8:
                        batch.append(pool.submit(op_repoint, index))
                    elif roll < 0.9:
                        batch.append(pool.submit(op_delete_credential, rng.choice(CREDENTIALS)))
                    else:
                        batch.append(pool.submit(ensure_credential, rng.choice(CREDENTIALS)))
                for future in batch:
                    future.result()
                if rng.random() < 0.08:
                    operator.kill()
                    kills += 1
                    time.sleep(rng.uniform(0, 1.5))
                    operator.start()
                check_no_bound_credential_gone(kube, namespace)
                time.sleep(rng.uniform(0, 0.3))
        print(f"steps: {STEPS}, operator kills: {kills}")

        def converged() -> bool:
            check_no_bound_credential_gone(kube, namespace)
            return actual_lists(kube, namespace) == expected_lists(kube, namespace)

        wait_for(converged, timeout=90, interval=0.5,
                 what=f"lists to converge (seed {seed})")  # fmt: skip
        assert operator.alive
        assert "Traceback" not in operator.log()
    finally:
        operator.stop()
