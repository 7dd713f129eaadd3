"""The operator pod's NetworkPolicy (deploy/networkpolicy.yaml and the chart's
networkPolicy values) and the break-glass RBAC, as rendered by `helm template`: no CNI
runs here, so what is tested is what the policy says. (The real API server accepts both
installs in tests/integration/test_install.py and test_break_glass.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cloudcred"
HELM = ROOT / ".local" / "bin" / "helm"
METADATA_SERVICE = ["169.254.169.254/32", "fd00:ec2::254/128"]


def render(*settings: str) -> list[dict[str, Any]]:
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` ({HELM.relative_to(ROOT)})")
    args = [str(HELM), "template", "cloudcred", str(CHART), "--namespace", "cloudcred-system"]
    for setting in settings:
        args += ["--set", setting]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kind(docs: list[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == wanted]


def excluded(policy: dict[str, Any]) -> list[str]:
    """Every address the egress rules carve out of what they allow."""
    return [
        cidr
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        for cidr in peer.get("ipBlock", {}).get("except", [])
    ]


def allows_all_egress(policy: dict[str, Any]) -> bool:
    return {} in policy["spec"]["egress"]


def test_default_policy_admits_only_scrapers_to_the_metrics_port() -> None:
    docs = render()
    (policy,) = kind(docs, "NetworkPolicy")
    (deployment,) = kind(docs, "Deployment")
    pod = deployment["spec"]["template"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # It selects the operator pod, and the port it admits is the Deployment's.
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    ports = {port["name"]: port["containerPort"] for port in pod["spec"]["containers"][0]["ports"]}
    assert [port["port"] for port in rule["ports"]] == ["metrics"]
    assert "metrics" in ports
    assert ports["metrics"] == 9090
    (service,) = kind(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # From Prometheus pods in the namespace "monitoring" only.
    assert rule["from"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }]  # fmt: skip
    # Egress: everything but the metadata service, v4 and v6, and any pod (DNS).
    assert excluded(policy) == METADATA_SERVICE
    assert not allows_all_egress(policy)
    cidrs = [peer["ipBlock"]["cidr"] for peer in policy["spec"]["egress"][0]["to"]
             if "ipBlock" in peer]  # fmt: skip
    assert cidrs == ["0.0.0.0/0", "::/0"]
    assert {"namespaceSelector": {}} in policy["spec"]["egress"][0]["to"]


def test_the_metadata_service_is_excluded_only_when_asked() -> None:
    (policy,) = kind(render("networkPolicy.blockMetadataService=false"), "NetworkPolicy")
    assert excluded(policy) == []
    assert policy["spec"]["egress"] == [{}]


def test_metrics_port_follows_the_value() -> None:
    docs = render("metrics.port=9191")
    (policy,) = kind(docs, "NetworkPolicy")
    container = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    named = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert named["metrics"] == 9191
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == "metrics"


def test_scrapers_are_configurable_and_none_means_no_one() -> None:
    (policy,) = kind(render(
        "networkPolicy.metricsFrom[0].ipBlock.cidr=10.0.0.0/8",
    ), "NetworkPolicy")  # fmt: skip
    assert policy["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    # An empty list: no metrics rule at all (an empty `from` would admit every source).
    (closed,) = kind(render("networkPolicy.metricsFrom=null"), "NetworkPolicy")
    assert closed["spec"]["ingress"] == []
    (probes,) = kind(render(
        "networkPolicy.metricsFrom=null",
        "networkPolicy.extraIngress[0].ports[0].port=health",
        "networkPolicy.extraIngress[0].from[0].ipBlock.cidr=192.168.0.0/16",
    ), "NetworkPolicy")  # fmt: skip
    assert probes["spec"]["ingress"] == [
        {"ports": [{"port": "health"}], "from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}
    ]


def test_policy_can_be_left_out() -> None:
    assert kind(render("networkPolicy.enabled=false"), "NetworkPolicy") == []


def test_kustomize_base_has_the_charts_default_policy() -> None:
    """deploy/networkpolicy.yaml says what the chart renders by default (pod labels aside:
    the chart's carry the release's instance label)."""
    shipped = yaml.safe_load((ROOT / "deploy" / "networkpolicy.yaml").read_text())
    (rendered,) = kind(render(), "NetworkPolicy")
    strip = {key: value for key, value in rendered["spec"].items() if key != "podSelector"}
    assert {key: value for key, value in shipped["spec"].items() if key != "podSelector"} == strip
    resources = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())["resources"]
    assert "networkpolicy.yaml" in resources
    deployment = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert shipped["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_break_glass_verbs() -> None:
    """The chart ships cloudcred-break-glass with exactly the three custom verbs the
    policies check; the operator's own role has only unlabel-in-use (to release labels),
    not replace-installation-key (its work never deletes or re-keys that Secret)."""
    docs = render()
    roles = {role["metadata"]["name"]: role for role in kind(docs, "ClusterRole")}
    assert roles["cloudcred-break-glass"]["rules"] == [
        {"apiGroups": ["cloudcred.io"], "resources": ["cloudcredentials"],
         "verbs": ["force-delete"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["unlabel-in-use", "replace-installation-key"]},
    ]  # fmt: skip
    operator_verbs = {
        (group, resource, verb)
        for rule in roles["cloudcred"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert ("", "secrets", "unlabel-in-use") in operator_verbs
    assert ("cloudcred.io", "cloudcredentials", "force-delete") not in operator_verbs
    assert ("", "secrets", "replace-installation-key") not in operator_verbs
    policies = {doc["metadata"]["name"] for doc in kind(docs, "ValidatingAdmissionPolicy")}
    assert {"cloudcred-force-delete", "cloudcred-secret-in-use-label",
            "cloudcred-installation-key"} <= policies  # fmt: skip
    off = render("admissionPolicy.enabled=false")
    assert "cloudcred-break-glass" not in {role["metadata"]["name"] for role in off}
