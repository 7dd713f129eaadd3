"""The Argo CD health checks in deploy/argocd/, run as Argo CD runs them.

Argo CD runs a health check with gopher-lua (Lua 5.1) in a sandbox: the global ``obj``
is the object (JSON arrays become 1-based tables), and the script returns a table
``{status = ..., message = ...}``. lupa's Lua 5.1 with the unsafe libraries removed is
the same setting.

The ConfigMap patch deploy/argocd/argocd-cm.yaml embeds the two .lua files, which are
the source of truth; after editing them, regenerate it with
``.venv/bin/python -m tests.unit.test_argocd_health``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

lupa = pytest.importorskip("lupa.lua51")

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
SCRIPTS = {
    "cloudcred.io_CloudCredential": ARGOCD / "cloudcredential-health.lua",
    "cloudcred.io_Cluster": ARGOCD / "cluster-health.lua",
}
CONFIGMAP = ARGOCD / "argocd-cm.yaml"
KEY_PREFIX = "resource.customizations.health."
REVISION, OLD = "v1-943c1aa8cd74", "v1-0123456789ab"


def render_configmap() -> str:
    lines = [
        "# Argo CD health checks for cloudcred's two kinds, as a patch of argocd-cm.",
        "# Generated from cloudcredential-health.lua and cluster-health.lua (the source of",
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


VERIFIED = cond("Verified", "True", "Verified", "AWS accepted the credential")
READY = cond("Ready", "True", "Ready", "AWS accepted the credential")
ROLLED_OUT = cond("RolloutComplete", "True", "RolloutComplete", "all 3 cluster(s) are deployed")


def failed(reason: str) -> list[dict[str, Any]]:
    return [cond("Verified", "False", reason), cond("Ready", "False", reason)]


CREDENTIAL_CASES = {
    "no status yet": (credential(status=False), "Progressing", "Waiting for the operator"),
    "status without conditions": (credential(), "Progressing", "Waiting for the operator"),
    "spec edited, not checked yet": (
        credential(VERIFIED, READY, ROLLED_OUT, generation=3), "Progressing", "generation 3"),
    "no observedGeneration": (
        credential(VERIFIED, READY, ROLLED_OUT, observed=None), "Progressing", "generation 2"),
    **{f"Verified False {reason}": (credential(*failed(reason), ROLLED_OUT), "Degraded", reason)
       for reason in ("InvalidCredentials", "AccessDenied", "SecretKeyMissing",
                      "InvalidSecretData")},
    **{f"Verified False {reason} (transient)": (
        credential(*failed(reason)), "Progressing", "the operator retries")
       for reason in ("SecretNotFound", "ProviderUnreachable")},
    "Ready only, permanent failure": (
        credential(cond("Ready", "False", "AccessDenied")), "Degraded", "AccessDenied"),
    "Verified Unknown, in between": (
        credential(cond("Verified", "Unknown", "Checking")), "Progressing", "Unknown"),
    "rollout blocked": (
        credential(VERIFIED, READY, cond("RolloutComplete", "False", "RolloutBlocked",
                                         "revision v1-1 failed verification")),
        "Degraded", "RolloutBlocked"),
    "rollout blocked while the check retries": (
        credential(*failed("ProviderUnreachable"),
                   cond("RolloutComplete", "False", "RolloutBlocked")),
        "Degraded", "RolloutBlocked"),
    "rollout in progress": (
        credential(VERIFIED, READY, cond("RolloutComplete", "False", "RolloutInProgress",
                                         "1 of 3 cluster(s) deployed")),
        "Progressing", "1 of 3 cluster(s) deployed"),
    "rollout paused": (
        credential(VERIFIED, READY, cond("RolloutComplete", "False", "RolloutInProgress"),
                   annotations={"cloudcred.io/rollout-paused": "true"}),
        "Suspended", "paused"),
    "verified, rollout status not computed yet": (
        credential(VERIFIED, READY), "Progressing", "rollout status"),
    "healthy": (credential(VERIFIED, READY, ROLLED_OUT), "Healthy", "all 3 cluster(s)"),
    "verification disabled": (
        credential(cond("Verified", "Unknown", "VerificationDisabled"),
                   cond("Ready", "True", "Ready"), ROLLED_OUT),
        "Healthy", "verification is disabled"),
    "verification unavailable (steady state)": (
        credential(cond("Verified", "Unknown", "VerificationUnavailable",
                        "workload identity cannot be checked here"),
                   cond("Ready", "Unknown", "VerificationUnavailable"), ROLLED_OUT),
        "Healthy", "not verified: workload identity cannot be checked here"),
}  # fmt: skip


@pytest.mark.parametrize(("obj", "expected", "says"), list(CREDENTIAL_CASES.values()),
                         ids=list(CREDENTIAL_CASES))  # fmt: skip
def test_cloudcredential_health(obj: dict[str, Any], expected: str, says: str) -> None:
    status, message = health("cloudcred.io_CloudCredential", obj)
    assert (status, says in message) == (expected, True), message


BOUND = cond("CredentialBound", "True", "Bound", "bound to CloudCredential acme/aws-prod")
UP_TO_DATE = cond("RedeployPending", "False", "UpToDate", f"deployed with {REVISION}")
CLUSTER_READY = cond("Ready", "True", "Ready", f"deployed with credential revision {REVISION}")


def waiting(reason: str, who: str = "the operator's deploy step") -> list[dict[str, Any]]:
    message = f"waiting for {who} to deploy credential revision {REVISION}"
    return [cond("RedeployPending", "True", reason, message),
            cond("Ready", "False", reason, message)]  # fmt: skip


CLUSTER_CASES = {
    "no status yet": (cluster(status=False), "Progressing", "Waiting for the operator"),
    "status without conditions": (cluster(), "Progressing", "Waiting for the operator"),
    "spec edited, not processed yet": (
        cluster(BOUND, UP_TO_DATE, CLUSTER_READY, generation=3), "Progressing", "generation 3"),
    **{f"not bound: {reason}": (
        cluster(cond("CredentialBound", "False", reason), cond("Ready", "False", reason)),
        "Degraded", reason)
       for reason in ("CredentialNotFound", "ProviderMismatch", "NamespaceNotAllowed",
                      "CredentialDeleting")},
    "deploy failed": (
        cluster(BOUND, *waiting("DeployFailed")), "Degraded", "DeployFailed"),
    "deploy failed, external": (
        cluster(BOUND, *waiting("DeployFailed"), deploy="External"), "Degraded",
        "DeployFailed"),
    **{f"operator deploys: {reason}": (
        cluster(BOUND, *waiting(reason)), "Progressing", reason)
       for reason in ("RevisionChanged", "NotDeployed")},
    "operator deploys (explicit): RevisionChanged": (
        cluster(BOUND, *waiting("RevisionChanged"), deploy="Operator"), "Progressing",
        "RevisionChanged"),
    **{f"external deployer: {reason}": (
        cluster(BOUND, *waiting(reason, "the external deployer"), deploy="External"),
        "Healthy", "Waiting for the external deployer")
       for reason in ("RevisionChanged", "NotDeployed")},
    "rollout blocked: keeps its last good deployment": (
        cluster(BOUND, cond("RedeployPending", "False", "RolloutBlocked",
                            f"revision v1-1 is not rolled out; keeping the deployment of {OLD}"),
                cond("Ready", "True", "Ready", f"keeping the deployment of {OLD}")),
        "Healthy", "keeping the deployment"),
    "credential has no revision yet": (
        cluster(BOUND, cond("Ready", "False", "CredentialNotReady", "see its Verified")),
        "Progressing", "CredentialNotReady"),
    "healthy": (cluster(BOUND, UP_TO_DATE, CLUSTER_READY), "Healthy", REVISION),
    "healthy, external": (
        cluster(BOUND, UP_TO_DATE, CLUSTER_READY, deploy="External"), "Healthy", REVISION),
}  # fmt: skip


@pytest.mark.parametrize(("obj", "expected", "says"), list(CLUSTER_CASES.values()),
                         ids=list(CLUSTER_CASES))  # fmt: skip
def test_cluster_health(obj: dict[str, Any], expected: str, says: str) -> None:
    status, message = health("cloudcred.io_Cluster", obj)
    assert (status, says in message) == (expected, True), message


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
