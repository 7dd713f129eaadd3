"""Fixtures shared by every test folder.

``kube`` gives a session-wide Kubernetes API with the CRDs installed: the local
control plane (real etcd + kube-apiserver, built on first use), or the cluster named
by ``CLOUDCRED_TEST_KUBECONFIG`` (kind, a real cluster), in which case nothing starts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from tests.envtest.controlplane import ControlPlane
from tests.kube import (
    api_client,
    install_admission_policies,
    install_crds,
    install_installation_key,
)


@dataclass
class Kube:
    kubeconfig: Path
    api: client.ApiClient
    plane: ControlPlane | None  # None when the tests use an existing cluster

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


# Every write, at Metadata level (no bodies, so no Secret data): tests count the
# operator's requests by user agent.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    external = os.environ.get("CLOUDCRED_TEST_KUBECONFIG")
    plane = None
    if external:
        kubeconfig = Path(external)
    else:
        workdir = tmp_path_factory.mktemp("controlplane")
        (workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        plane = ControlPlane(workdir=workdir, audit_policy=workdir / "audit-policy.yaml").start()
        kubeconfig = plane.kubeconfig
    api = api_client(kubeconfig)
    try:
        install_crds(api)
        install_admission_policies(api)
        install_installation_key(api)
        yield Kube(kubeconfig=kubeconfig, api=api, plane=plane)
    finally:
        api.close()
        if plane:
            plane.stop(grace=1)  # the run is over: nothing left to drain


@pytest.fixture
def namespace(kube: Kube) -> str:
    """A fresh namespace for one test (the local control plane never finishes deleting
    namespaces, so every test gets a new one)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name
