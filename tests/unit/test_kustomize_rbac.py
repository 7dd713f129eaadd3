"""The kustomize install's per-namespace Secret rights: the component deploy/namespaced
(with deploy/namespaced/delivery and deploy/namespaced/rotation), rendered with
`kubectl kustomize` over deploy/ as a platform team's overlay would, grants the Secret
rights through Roles in the watched namespaces and the operator's own, none
cluster-wide, and the same rules as `helm template` of the chart for those plain names.
What the API server makes of them is in tests/integration/test_namespaced_rbac.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudcred.cache.informers import plain_namespaces
from tests.envtest.controlplane import cache_dir
from tests.unit.test_chart_rbac import (
    OWN,
    READS,
    RELEASE_NAMESPACE,
    WRITES,
    bindings,
    namespaces_value,
    render,
    roles,
    secret_verbs,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NAMESPACED = DEPLOY / "namespaced"
EXAMPLE_NAMESPACES = ["team-a", "team-b"]  # those of deploy/namespaced
OPERATOR = {"kind": "ServiceAccount", "name": "cloudcred", "namespace": RELEASE_NAMESPACE}
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
SWITCHES = [(False, False), (True, False), (False, True), (True, True)]


def kubectl() -> Path:
    """kubectl (with its kustomize) from `make envtest`: .local/bin, or the envtest cache."""
    for candidate in (ROOT / ".local" / "bin" / "kubectl", cache_dir() / "kubectl"):
        if candidate.exists():
            return candidate
    pytest.skip("kubectl is not built: run `make envtest` (it links it into .local/bin)")


def kustomize(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run([str(kubectl()), "kustomize", str(folder)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def namespaced_overlay(directory: Path, delivery: bool = False, rotation: bool = False) -> Path:
    """A platform team's overlay: deploy/ with the component deploy/namespaced (and its
    delivery and rotation components). kustomize wants relative paths."""

    def relative(path: Path) -> str:
        return os.path.relpath(path, directory)

    components = [NAMESPACED]
    components += [NAMESPACED / "delivery"] if delivery else []
    components += [NAMESPACED / "rotation"] if rotation else []
    overlay = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
               "resources": [relative(DEPLOY)],
               "components": [relative(component) for component in components]}  # fmt: skip
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return directory


def operator_cluster_secret_verbs(docs: list[dict[str, Any]]) -> set[str]:
    """The Secret verbs of every ClusterRole bound cluster-wide to the operator's
    ServiceAccount (deploy/delivery's and deploy/rotation's included, if present)."""
    bound = {
        doc["roleRef"]["name"]
        for doc in docs if doc["kind"] == "ClusterRoleBinding" and OPERATOR in doc["subjects"]
    }  # fmt: skip
    return {
        verb
        for doc in docs if doc["kind"] == "ClusterRole" and doc["metadata"]["name"] in bound
        for verb in secret_verbs(doc)
    }  # fmt: skip


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) a role grants."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
    }  # fmt: skip


def cluster_role_grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    (role,) = [doc for doc in docs if doc["kind"] == "ClusterRole"
               and doc["metadata"]["name"] == "cloudcred"]  # fmt: skip
    return grants(role)


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container["env"]}


def rbac(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    """Each RBAC object by (kind, namespace, name): the set of what a role grants, a
    binding's role and subjects; labels and comments left out."""

    return {
        (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]):
            grants(doc) if "rules" in doc else (doc["roleRef"], doc["subjects"])
        for doc in docs if doc["kind"] in RBAC_KINDS
    }  # fmt: skip


def test_the_base_keeps_the_cluster_wide_grant() -> None:
    """deploy/ alone watches all namespaces: the checks below would fail on it."""
    docs = kustomize(DEPLOY)
    assert operator_cluster_secret_verbs(docs) == READS | {"unlabel-in-use", "cloudcred-operator"}
    assert "CLOUDCRED_NAMESPACES" not in operator_env(docs)
    assert roles(docs) == {(RELEASE_NAMESPACE, "cloudcred-installation"): OWN}


@pytest.mark.parametrize(("delivery", "rotation"), SWITCHES)
def test_the_namespaced_component_grants_secret_rights_per_namespace_and_none_cluster_wide(
    tmp_path: Path, delivery: bool, rotation: bool
) -> None:
    docs = kustomize(namespaced_overlay(tmp_path, delivery, rotation))
    # Cluster-wide only the mark the operator-secret-writes policy looks for: no request.
    assert operator_cluster_secret_verbs(docs) == {"cloudcred-operator"}
    writes = WRITES if delivery or rotation else set()
    assert roles(docs) == {
        **{(ns, "cloudcred-secrets"): READS | writes | {"unlabel-in-use"}
           for ns in EXAMPLE_NAMESPACES},
        (RELEASE_NAMESPACE, "cloudcred-installation"): OWN,
    }  # fmt: skip
    assert bindings(docs) == {
        **{(ns, "cloudcred-secrets"): ("cloudcred-secrets", [OPERATOR])
           for ns in EXAMPLE_NAMESPACES},
        (RELEASE_NAMESPACE, "cloudcred-installation"): ("cloudcred-installation", [OPERATOR]),
    }  # fmt: skip
    # The ClusterRole keeps everything else.
    moved = {("", "secrets", verb) for verb in READS | {"unlabel-in-use"}}
    assert cluster_role_grants(docs) == cluster_role_grants(kustomize(DEPLOY)) - moved
    # The operator watches exactly the namespaces that have a Role, one by one (its
    # Secret watches are per namespace only for plain names).
    env = operator_env(docs)
    assert plain_namespaces([env["CLOUDCRED_NAMESPACES"]]) == EXAMPLE_NAMESPACES
    assert (env.get("CLOUDCRED_DELIVERY_ENABLED") == "true") is delivery


@pytest.mark.parametrize(("delivery", "rotation"), SWITCHES)
def test_the_namespaced_component_and_the_chart_grant_the_same_rules(
    tmp_path: Path, delivery: bool, rotation: bool
) -> None:
    """The same Roles, ClusterRoles and bindings, by name and namespace, as `helm
    template` with `namespaces` set to the component's names (release cloudcred in
    cloudcred-system), and the same watched namespaces and delivery switch."""
    docs = kustomize(namespaced_overlay(tmp_path, delivery, rotation))
    chart = render(namespaces_value([",".join(EXAMPLE_NAMESPACES)]),
                   f"delivery.enabled={str(delivery).lower()}",
                   f"rotation.enabled={str(rotation).lower()}")  # fmt: skip
    assert rbac(docs) == rbac(chart)
    switches = ("CLOUDCRED_NAMESPACES", "CLOUDCRED_DELIVERY_ENABLED")
    assert {name: value for name, value in operator_env(docs).items() if name in switches} == {
        name: value for name, value in operator_env(chart).items() if name in switches
    }
