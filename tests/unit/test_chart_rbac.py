"""The chart's Secret rights, as `helm template` renders them for each kind of
`namespaces`: plain names get them through a Role in each watched namespace (and the
operator's own), patterns and all namespaces through the ClusterRole. What the API
server makes of them (reads allowed in a watched namespace, 403 in another) is in
tests/integration/test_namespaced_rbac.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudcred.cache.informers import plain_namespaces

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".local" / "bin" / "helm"
CHART = ROOT / "charts" / "cloudcred"
RELEASE_NAMESPACE = "cloudcred-system"
READS = {"get", "list", "watch", "patch"}
WRITES = {"create", "delete"}
# What the operator does with Secrets in its own namespace: the installation key (get,
# create, patch its annotation), rotation identities (get), rotation records (get,
# list, patch, create, delete).
OWN = {"get", "list", "watch", "patch", "create", "delete"}
WATCHED = ("team-a", "team-b", "team-c")


def render(*settings: str) -> list[dict[str, Any]]:
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` (it builds {HELM.relative_to(ROOT)})")
    args = [str(HELM), "template", "cloudcred", str(CHART), "--namespace", RELEASE_NAMESPACE,
            "--kube-version", "v1.31.0", "--skip-tests"]  # fmt: skip
    for setting in settings:
        args += ["--set", setting]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def namespaces_value(names: list[str]) -> str:
    """--set namespaces={...}, commas inside an entry escaped (one entry, several names)."""
    return "namespaces={" + ",".join(name.replace(",", "\\,") for name in names) + "}"


def secret_verbs(role: dict[str, Any]) -> set[str]:
    return {
        verb
        for rule in role["rules"] if "secrets" in rule.get("resources", [])
        for verb in rule["verbs"]
    }  # fmt: skip


def cluster_secret_verbs(docs: list[dict[str, Any]]) -> set[str]:
    (role,) = [doc for doc in docs if doc["kind"] == "ClusterRole"
               and doc["metadata"]["name"] == "cloudcred"]  # fmt: skip
    return secret_verbs(role)


def roles(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, name) of each Role: the Secret verbs it grants."""
    return {
        (doc["metadata"]["namespace"], doc["metadata"]["name"]): secret_verbs(doc)
        for doc in docs if doc["kind"] == "Role"
    }  # fmt: skip


def bindings(docs: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, list[Any]]]:
    """(namespace, name) of each RoleBinding: its Role and subjects."""
    return {
        (doc["metadata"]["namespace"], doc["metadata"]["name"]):
            (doc["roleRef"]["name"], doc["subjects"])
        for doc in docs if doc["kind"] == "RoleBinding"
    }  # fmt: skip


def test_plain_names_get_secret_rights_in_each_watched_namespace_and_none_cluster_wide() -> None:
    docs = render(namespaces_value(["team-b", "team-a, team-c", "team-a"]), "delivery.enabled=true")
    # Cluster-wide only the mark the operator-secret-writes policy looks for: no request.
    assert cluster_secret_verbs(docs) == {"cloudcred-operator"}
    assert roles(docs) == {
        ("team-a", "cloudcred-secrets"): READS | WRITES | {"unlabel-in-use"},
        ("team-b", "cloudcred-secrets"): READS | WRITES | {"unlabel-in-use"},
        ("team-c", "cloudcred-secrets"): READS | WRITES | {"unlabel-in-use"},
        (RELEASE_NAMESPACE, "cloudcred-installation"): OWN,
    }
    account = [{"kind": "ServiceAccount", "name": "cloudcred", "namespace": RELEASE_NAMESPACE}]
    assert bindings(docs) == {
        **{(ns, "cloudcred-secrets"): ("cloudcred-secrets", account) for ns in WATCHED},
        (RELEASE_NAMESPACE, "cloudcred-installation"): ("cloudcred-installation", account),
    }
    container = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"][
        "spec"]["containers"][0]  # fmt: skip
    assert {"name": "CLOUDCRED_NAMESPACES", "value": "team-b,team-a, team-c,team-a"} in \
        container["env"]  # fmt: skip


@pytest.mark.parametrize("namespaces", [[], ["team-*"], ["team-a", "team-[bc]"],
                                        ["team-a", "!team-b"], ["team-a,team-?"]])  # fmt: skip
def test_patterns_or_all_namespaces_keep_the_cluster_wide_grant(namespaces: list[str]) -> None:
    """A Role cannot follow a pattern (nor a namespace made later): one grant for all."""
    docs = render(*([namespaces_value(namespaces)] if namespaces else []))
    assert cluster_secret_verbs(docs) == READS | {"unlabel-in-use", "cloudcred-operator"}
    assert roles(docs) == {(RELEASE_NAMESPACE, "cloudcred-installation"): OWN}


@pytest.mark.parametrize(("delivery", "rotation"), [(False, False), (True, False), (False, True),
                                               (True, True)])  # fmt: skip
@pytest.mark.parametrize("namespaces", [["team-a"], ["team-*"]])
def test_create_and_delete_only_with_delivery_or_rotation(
    namespaces: list[str], delivery: bool, rotation: bool
) -> None:
    docs = render(namespaces_value(namespaces), f"delivery.enabled={str(delivery).lower()}",
                  f"rotation.enabled={str(rotation).lower()}")  # fmt: skip
    granted = cluster_secret_verbs(docs) | roles(docs).get(("team-a", "cloudcred-secrets"), set())
    assert granted.issuperset(WRITES) is (delivery or rotation)
    assert granted.issuperset(READS)
    # Its own namespace: the installation key and rotation records, whatever the switches.
    assert roles(docs)[(RELEASE_NAMESPACE, "cloudcred-installation")] == OWN


@pytest.mark.parametrize("namespaces", [
    ["a"], ["b", "a", "b"], [" a ,b,,"], ["a", "b*"], ["a", "!b"], ["[ab]"], ["a?"], [" , "],
])  # fmt: skip
def test_the_chart_and_the_operator_agree_on_what_plain_names_are(namespaces: list[str]) -> None:
    """Per-namespace rights exactly where the operator's Secret watches are per namespace:
    a namespace the operator would LIST on its own must have its Role, and patterns must
    keep the cluster-wide grant its all-namespace watch needs."""
    docs = render(namespaces_value(namespaces))
    per_namespace = sorted(ns for ns, name in roles(docs) if name == "cloudcred-secrets")
    expected = plain_namespaces(namespaces)
    assert (per_namespace or None) == expected
    assert ("list" in cluster_secret_verbs(docs)) is (expected is None)


def test_rbac_create_false_renders_no_role() -> None:
    docs = render(namespaces_value(["team-a"]), "rbac.create=false")
    assert not [doc for doc in docs if doc["kind"] in
                {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
                and doc["metadata"]["name"].startswith("cloudcred")
                and doc["metadata"]["name"] != "cloudcred-break-glass"]  # fmt: skip
