"""Fixtures for tests that need the operator running: moto and the operator process,
and the fault tests' own control plane."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.aws import REGION, Moto, start_moto
from tests.conftest import AUDIT_POLICY, Kube
from tests.envtest.controlplane import ControlPlane, free_port
from tests.iam import SimulatingIam, start_iam
from tests.kube import ROOT, api_client, install_crds, install_installation_key, load_yaml_documents
from tests.operator import OperatorProcess, Operators
from tests.resources import new_namespace

# Test namespaces start with "t-": the shared operator watches exactly those.
WATCHED = "t-*"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "early: runs before every other test, so before the shared operator starts (its "
        "pattern means a cluster-wide Secret watch, which would read every event of the test)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``early`` first, in their order; the others as collected."""
    early = [item for item in items if item.get_closest_marker("early")]
    if early:
        items[:] = early + [item for item in items if not item.get_closest_marker("early")]


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    # The role the binding tests' credentials name: the deploy step assumes it.
    server.create_role("deployer")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def iam(moto: Moto) -> Iterator[SimulatingIam]:
    """An IAM endpoint that answers iam:SimulatePrincipalPolicy over moto's policies
    (``tests/iam.py``): an operator reaches it with ``AWS_ENDPOINT_URL_IAM``."""
    stand_in, server = start_iam(moto)
    yield stand_in
    server.shutdown()


def operator_env(moto: Moto) -> dict[str, str]:
    """The operator's environment in tests: AWS is moto, every other provider endpoint
    a closed loopback port, so nothing ever leaves this machine."""
    # A name of its own: a port number (free_port) can come back, a user name may not.
    identity = moto.create_user(f"cloudcred-operator-{uuid.uuid4().hex[:10]}")
    closed = f"127.0.0.1:{free_port()}"
    return {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": identity.access_key_id,
        "AWS_SECRET_ACCESS_KEY": identity.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        "CLOUDCRED_VERIFICATION_TIMEOUT": "3",
        # An installation that delivers credentials (each credential still opts in).
        "CLOUDCRED_DELIVERY_ENABLED": "true",
        # Rotations retire an old key seconds, not a day, after its deactivation, and
        # may follow one another (the unit tests hold the defaults).
        "CLOUDCRED_ROTATION_DELETE_AFTER": "2",
        "CLOUDCRED_ROTATION_MIN_INTERVAL": "0",
        "CLOUDCRED_GCP_TOKEN_URI": f"http://{closed}/token",
        "CLOUDCRED_AZURE_AUTHORITY_HOST": f"https://{closed}",
        "CLOUDCRED_SCALEWAY_API_URL": f"http://{closed}",
        "CLOUDCRED_SCALEWAY_S3_URL": f"http://{closed}",
    }


def registry(kube: Kube, moto: Moto, folder: Path) -> Operators:
    return Operators(folder, kube.kubeconfig, lambda: operator_env(moto))


@pytest.fixture(scope="session")
def operator(
    kube: Kube, moto: Moto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The shared operator: it watches every ``t-*`` namespace."""
    started = registry(kube, moto, tmp_path_factory.mktemp("operator"))
    yield started.start(WATCHED, name="operator")
    started.stop()


@pytest.fixture
def operators(kube: Kube, moto: Moto, tmp_path: Path) -> Iterator[Operators]:
    """Operators a test starts (``operators.start(namespace, env=...)``); stopped at its end."""
    started = registry(kube, moto, tmp_path)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def module_operators(
    kube: Kube, moto: Moto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operators]:
    """Operators a module's fixtures share; stopped at the module's end."""
    started = registry(kube, moto, tmp_path_factory.mktemp("operators"))
    yield started
    started.stop()


PEERING_CRDS = ROOT / "deploy" / "peering" / "crds.yaml"


@pytest.fixture(scope="session")
def fault_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of the fault tests' own (test_faults.py, test_holding.py), started
    once: the tests restart it, compact its etcd and run a second API server on it. No
    watch cache (a real 410 from etcd), and an audit log of writes (the peering test
    counts each replica's)."""
    workdir = tmp_path_factory.mktemp("fault-plane")
    (workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
    started = time.monotonic()
    plane = ControlPlane(workdir=workdir, watch_cache=False,
                         audit_policy=workdir / "audit-policy.yaml").start()  # fmt: skip
    api = api_client(plane.kubeconfig)
    try:
        install_crds(api)
        install_installation_key(api)
        extensions = client.ApiextensionsV1Api(api)
        for crd in load_yaml_documents(PEERING_CRDS):
            extensions.create_custom_resource_definition(crd)
        print(f"fault control plane up in {time.monotonic() - started:.1f}s")
        yield plane
    finally:
        api.close()
        plane.stop(grace=1)  # nothing left to drain


@pytest.fixture
def own_namespace(kube: Kube) -> str:
    """A namespace the shared operator does not watch (it watches t-*): for a test whose
    own operator must be the only one acting there."""
    return new_namespace(kube, "own")


@pytest.fixture
def impersonate(kube: Kube) -> Iterator[Callable[[str], Kube]]:
    """``impersonate("alice")``: the API as user alice (the admin may impersonate)."""
    clients: list[client.ApiClient] = []

    def as_user(user: str) -> Kube:
        api = api_client(kube.kubeconfig)
        api.set_default_header("Impersonate-User", user)
        clients.append(api)
        return Kube(kubeconfig=kube.kubeconfig, api=api, plane=None)

    yield as_user
    for api in clients:
        api.close()


TENANT_ROLES = ROOT / "deploy" / "tenant" / "roles.yaml"


@pytest.fixture
def tenant(kube: Kube, impersonate: Callable[[str], Kube]) -> Callable[[str], Kube]:
    """``tenant(namespace)``: the API as a member of the team of ``namespace``, with the
    documented tenant rights (deploy/tenant/roles.yaml) and the status subresources
    besides: the most a tenant may hold."""
    rbac = client.RbacAuthorizationV1Api(kube.api)
    for role in load_yaml_documents(TENANT_ROLES):
        try:
            rbac.create_cluster_role(role)
        except client.ApiException as error:
            if error.status != 409:
                raise

    def member_of(namespace: str) -> Kube:
        user = f"tenant-of-{namespace}"
        for role in ("cloudcred-tenant", "cloudcred-tenant-status"):
            rbac.create_namespaced_role_binding(namespace, {
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                              "name": user}],
            })  # fmt: skip
        return impersonate(user)

    return member_of
