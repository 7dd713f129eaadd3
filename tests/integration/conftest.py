"""Fixtures for tests that need the operator running: moto and the operator process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.aws import REGION, Moto, start_moto
from tests.conftest import Kube
from tests.envtest.controlplane import free_port
from tests.operator import OperatorProcess

# Test namespaces start with "t-": the shared operator watches exactly those.
WATCHED = "t-*"


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    # The role the binding tests' credentials name: the deploy step assumes it.
    server.create_role("deployer")
    yield server
    server.stop()


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
        "CLOUDCRED_GCP_TOKEN_URI": f"http://{closed}/token",
        "CLOUDCRED_AZURE_AUTHORITY_HOST": f"https://{closed}",
        "CLOUDCRED_SCALEWAY_API_URL": f"http://{closed}",
    }


@pytest.fixture(scope="session")
def operator(
    kube: Kube, moto: Moto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig=kube.kubeconfig,
        log_path=tmp_path_factory.mktemp("operator") / "operator.log",
        env=operator_env(moto),
        args=["--namespace", WATCHED],
    ).start()
    yield process
    process.stop()


@pytest.fixture
def operators() -> Iterator[list[OperatorProcess]]:
    """Operators a test starts; stopped at its end whatever happens."""
    started: list[OperatorProcess] = []
    yield started
    for process in started:
        process.stop()
