"""End to end on kind: the operator's image, installed by the Helm chart, running in
a real cluster (probes, restricted pod security, in-cluster ServiceAccount and RBAC).

`make test-e2e` builds the image, creates the kind cluster, loads the image, installs
the chart in cloudcred-system watching the `e2e-*` namespaces (the integration suite's
own operator process watches `t-*`), then runs the integration suite and this file with
CLOUDCRED_TEST_KUBECONFIG pointing at the cluster. Without Docker or kind, or outside
`make test-e2e`, these tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from kubernetes import client

from tests.conftest import Kube
from tests.operator import wait_for
from tests.resources import condition, create_cluster, create_credential, get_credential

RELEASE_NAMESPACE = "cloudcred-system"
DEPLOYMENT = "cloudcred"


def _docker_runs() -> bool:
    if not shutil.which("docker"):
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return result.returncode == 0


def _skip_reason() -> str | None:
    """Why these tests cannot run here, in the order `make test-e2e` checks."""
    if not shutil.which("docker"):
        return "needs Docker (kind runs Kubernetes nodes as containers): docker is not installed"
    if not _docker_runs():
        return "needs Docker: docker is installed but its daemon does not answer (docker info)"
    if not shutil.which("kind"):
        return "needs kind: not installed (`make kind` builds it into .local/bin)"
    if not os.environ.get("CLOUDCRED_TEST_KUBECONFIG"):
        return "run through `make test-e2e`, which creates the kind cluster and installs the chart"
    return None


REASON = _skip_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def test_operator_deployment_is_available(kube: Kube) -> None:
    apps = client.AppsV1Api(kube.api)

    def available() -> bool:
        deployment = apps.read_namespaced_deployment(DEPLOYMENT, RELEASE_NAMESPACE)
        return (deployment.status.available_replicas or 0) == 1

    wait_for(available, timeout=180, what="the operator's Deployment available")
    pods = kube.core.list_namespaced_pod(
        RELEASE_NAMESPACE, label_selector="app.kubernetes.io/name=cloudcred"
    ).items
    assert len(pods) == 1
    pod = pods[0]
    assert pod.spec.security_context.run_as_user == 10001
    container = pod.status.container_statuses[0]
    assert container.ready
    assert container.restart_count == 0


def test_in_cluster_operator_binds_a_cluster(kube: Kube) -> None:
    """The operator in the pod (its own ServiceAccount, the chart's ClusterRole) binds a
    Cluster and checks the credential. Its provider is not reachable from kind, so the
    check ends in some Verified condition, never in a permission error."""
    namespace = f"e2e-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    create_credential(kube, namespace, "gcp", provider="GCP", gcp={
        "serviceAccountEmail": "deployer@acme-prod.iam.gserviceaccount.com",
        "workloadIdentityProvider": "projects/123456789012/locations/global/"
        "workloadIdentityPools/cloudcred/providers/kubernetes",
    })  # fmt: skip
    create_cluster(kube, namespace, "prod", provider="GCP", region="europe-west1",
                   credentialRef={"name": "gcp"})  # fmt: skip

    def bound() -> bool:
        credential = get_credential(kube, namespace, "gcp") or {}
        status = credential.get("status") or {}
        return status.get("clusterCount") == 1 and condition(credential, "Verified") is not None

    wait_for(bound, timeout=120, what="credential checked and listing its cluster")
    pod = kube.core.list_namespaced_pod(
        RELEASE_NAMESPACE, label_selector="app.kubernetes.io/name=cloudcred"
    ).items[0]
    log = kube.core.read_namespaced_pod_log(pod.metadata.name, RELEASE_NAMESPACE)
    assert "Forbidden" not in log
    assert "Not enough permissions" not in log
