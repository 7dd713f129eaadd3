"""The Argo CD health checks in deploy/argocd/resource_customizations, in lupa's Lua 5.1.

Argo CD runs a health check with gopher-lua (Lua 5.1) in a sandbox: the global ``obj``
is the object (JSON arrays become 1-based tables), and the script returns a table
``{status = ..., message = ...}``. lupa's Lua 5.1 with the unsafe libraries removed is
close; tests/integration/test_health.py runs the same scripts in gopher-lua itself, with
the libraries Argo CD opens, over objects the operator produced.

The ConfigMap patch deploy/argocd/argocd-cm.yaml embeds the two health.lua files, which
are the source of truth; after editing them, regenerate it with
``.venv/bin/python -m tests.unit.test_argocd_health``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lupa = pytest.importorskip("lupa.lua51")

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations" / "cloudcred.io"
SCRIPTS = {
    "cloudcred.io_CloudCredential": CUSTOMIZATIONS / "CloudCredential" / "health.lua",
    "cloudcred.io_Cluster": CUSTOMIZATIONS / "Cluster" / "health.lua",
}
CONFIGMAP = ARGOCD / "argocd-cm.yaml"
KEY_PREFIX = "resource.customizations.health."
REVISION, OLD = "v1-943c1aa8cd74", "v1-0123456789ab"


def render_configmap() -> str:
    lines = [
        "# Argo CD health checks for cloudcred's two kinds, as a patch of argocd-cm.",
        "# Generated from resource_customizations/cloudcred.io/*/health.lua (the source of",
        "# truth) by `python -m tests.unit.test_argocd_health`; a unit test checks they agree.",
        "#   kubectl patch configmap argocd-cm -n argocd --type merge \\",
        "#     --patch-file deploy/argocd/argocd-cm.yaml",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "  labels:",
        "    app.kubernetes.io/name: argocd-cm",
        "    app.kubernetes.io/part-of: argocd",
        "data:",
    ]
    for kind, path in SCRIPTS.items():
        lines.append(f"  {KEY_PREFIX}{kind}: |")
        lines += [f"    {line}" if line else "" for line in path.read_text().splitlines()]
    return "\n".join(lines) + "\n"


def to_lua(runtime: Any, value: Any) -> Any:
    """Python → Lua as Argo CD converts JSON: objects and arrays become tables (arrays
    1-based), null fields are absent."""
    if isinstance(value, dict):
        return runtime.table_from(
            {k: to_lua(runtime, v) for k, v in value.items() if v is not None}
        )
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lupa.LuaRuntime()
    sandbox = runtime.globals()
    for unsafe in ("os", "io", "debug", "package", "require", "dofile", "loadfile", "load"):
        sandbox[unsafe] = None
    sandbox.obj = to_lua(runtime, obj)
    result = runtime.execute(SCRIPTS[kind].read_text())
    status, message = result["status"], result["message"]
    assert isinstance(status, str)
    assert isinstance(message, str)
    assert message
    return status, message


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason,
            "message": message or f"{type_} is {status} because {reason}",
            "lastTransitionTime": "2026-11-22T10:00:00Z", "observedGeneration": 2}  # fmt: skip


def credential(*conditions: dict[str, Any], generation: int = 2, observed: int | None = 2,
               annotations: dict[str, str] | None = None,
               status: bool = True) -> dict[str, Any]:  # fmt: skip
    obj: dict[str, Any] = {
        "apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential",
        "metadata": {"name": "aws-prod", "namespace": "acme", "generation": generation,
                     "annotations": annotations or {}},
        "spec": {"provider": "AWS",
                 "aws": {"roleArn": "arn:aws:iam::123456789012:role/cloudcred"}},
    }  # fmt: skip
    if status:
        obj["status"] = {"observedGeneration": observed, "revision": REVISION,
                         "conditions": list(conditions)}  # fmt: skip
    return obj


def cluster(*conditions: dict[str, Any], deploy: str | None = None, generation: int = 2,
            observed: int | None = 2, status: bool = True) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {"provider": "AWS", "region": "eu-west-3",
                            "credentialRef": {"name": "aws-prod"}}  # fmt: skip
    if deploy:
        spec["deploy"] = deploy
    obj: dict[str, Any] = {
        "apiVersion": "cloudcred.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "prod-eu", "namespace": "acme", "generation": generation},
        "spec": spec,
    }  # fmt: skip
    if status:
        obj["status"] = {"observedGeneration": observed, "conditions": list(conditions),
                         "credential": {"namespace": "acme", "name": "aws-prod",
                                        "revision": REVISION}}  # fmt: skip
    return obj


def summary(state: str, reason: str, message: str = "") -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled as the operator writes them: ``state`` True."""
    return [cond(type_, "True" if type_ == state else "False", reason, message)
            for type_ in ("Ready", "Reconciling", "Stalled")]  # fmt: skip


VERIFIED = cond("Verified", "True", "Verified", "AWS accepted the credential")
ROLLED_OUT = cond("RolloutComplete", "True", "RolloutComplete", "all 3 cluster(s) are deployed")

# The scripts read the summary only; the cases cover what an object can carry, including
# objects written by an operator from before the summary (Ready alone).
CREDENTIAL_CASES = {
    "no status yet": (credential(status=False), "Progressing", "Waiting for the operator"),
    "status without conditions": (credential(), "Progressing", "Waiting for the operator"),
    "spec edited, not observed yet": (
        credential(VERIFIED, *summary("Ready", "Ready"), generation=3), "Progressing",
        "generation 3"),
    "no observedGeneration": (
        credential(VERIFIED, *summary("Ready", "Ready"), observed=None), "Progressing",
        "generation 2"),
    "stalled": (credential(*summary("Stalled", "InvalidCredentials", "the key is wrong")),
                "Degraded", "Stalled=True (InvalidCredentials): the key is wrong"),
    "reconciling": (credential(*summary("Reconciling", "RolloutInProgress", "1 of 3")),
                    "Progressing", "Reconciling=True (RolloutInProgress): 1 of 3"),
    "paused": (credential(*summary("Reconciling", "RolloutPaused", "1 of 3")),
               "Suspended", "RolloutPaused"),
    "ready": (credential(VERIFIED, ROLLED_OUT, *summary("Ready", "Ready", "all deployed")),
              "Healthy", "all deployed"),
    "ready, waiting for external deployers": (
        credential(*summary("Ready", "ExternalDeployPending", "0 of 1 deployed")),
        "Healthy", "0 of 1 deployed"),
    "an older operator's Ready only, True": (
        credential(cond("Ready", "True", "Ready", "AWS accepted")), "Healthy", "AWS accepted"),
    "an older operator's Ready only, False": (
        credential(cond("Ready", "False", "AccessDenied")), "Progressing", "AccessDenied"),
    "details without a summary": (credential(VERIFIED), "Progressing", "Waiting"),
    "being deleted": (
        {**credential(*summary("Reconciling", "Deleting")),
         "metadata": {"name": "x", "namespace": "acme", "generation": 2,
                      "deletionTimestamp": "2026-11-30T10:00:00Z"}},
        "Progressing", "Pending deletion"),
}  # fmt: skip


@pytest.mark.parametrize(("obj", "expected", "says"), list(CREDENTIAL_CASES.values()),
                         ids=list(CREDENTIAL_CASES))  # fmt: skip
def test_cloudcredential_health(obj: dict[str, Any], expected: str, says: str) -> None:
    status, message = health("cloudcred.io_CloudCredential", obj)
    assert (status, says in message) == (expected, True), message


CLUSTER_CASES = {
    "no status yet": (cluster(status=False), "Progressing", "bind the cluster"),
    "generation behind": (cluster(*summary("Ready", "Ready"), generation=3), "Progressing",
                          "generation 3"),
    "dangling reference": (cluster(*summary("Stalled", "CredentialNotFound", "no such")),
                           "Degraded", "CredentialNotFound"),
    "deploying": (cluster(*summary("Reconciling", "RevisionChanged", "redeploying")),
                  "Progressing", "RevisionChanged"),
    "external deploy pending": (
        cluster(*summary("Ready", "ExternalDeployPending", "waiting for the external deployer"),
                deploy="External"), "Healthy", "waiting for the external deployer"),
    "deployed": (cluster(*summary("Ready", "Ready", "deployed with v1")), "Healthy",
                 "deployed with v1"),
}  # fmt: skip


@pytest.mark.parametrize(("obj", "expected", "says"), list(CLUSTER_CASES.values()),
                         ids=list(CLUSTER_CASES))  # fmt: skip
def test_cluster_health(obj: dict[str, Any], expected: str, says: str) -> None:
    status, message = health("cloudcred.io_Cluster", obj)
    assert (status, says in message) == (expected, True), message


@pytest.mark.parametrize("kind", list(SCRIPTS))
def test_the_shipped_health_tests_pass_in_lupa(kind: str) -> None:
    """Each health_test.yaml case (objects the operator produced) gives its verdict here too."""
    folder = SCRIPTS[kind].parent
    cases = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    assert len(cases) >= 4
    for case in cases:
        obj = yaml.safe_load((folder / case["inputPath"]).read_text())
        assert health(kind, obj) == (
            case["healthStatus"]["status"],
            case["healthStatus"]["message"],
        ), case["inputPath"]


def test_the_configmap_carries_the_lua_files() -> None:
    assert CONFIGMAP.read_text() == render_configmap(), (
        "deploy/argocd/argocd-cm.yaml is stale: run "
        "`.venv/bin/python -m tests.unit.test_argocd_health`"
    )
    data = yaml.safe_load(CONFIGMAP.read_text())["data"]
    assert data == {KEY_PREFIX + kind: path.read_text() for kind, path in SCRIPTS.items()}


if __name__ == "__main__":
    CONFIGMAP.write_text(render_configmap())
    print(f"wrote {CONFIGMAP}")
