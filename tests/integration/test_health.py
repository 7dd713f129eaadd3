"""One health verdict everywhere: for each state the operator puts an object in, kstatus
(the library Flux and kpt use, built from its Go module), the shipped Argo CD scripts in
Argo CD's own Lua runtime (gopher-lua) and ``kubectl wait --for=condition=Ready`` give the
verdict the health table of docs/health.md promises, on objects the real operator produced.

``CLOUDCRED_HEALTH_TESTDATA=1`` also writes those objects (trimmed) into the Argo CD
scripts' ``testdata/`` with a ``health_test.yaml`` in Argo CD's format.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from cloudcred.constants import ROLLOUT_PAUSED_ANNOTATION
from tests import health
from tests.aws import Moto
from tests.conftest import Kube
from tests.iam import SimulatingIam
from tests.integration.test_guard_rails import READ_ONLY_STS
from tests.integration.test_install import kubectl_path
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    get_cluster,
    get_credential,
    new_revision,
    patch_cluster_status,
    patch_credential,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

# What an identity needs to be checked at all, and nothing else.
ASK_ONLY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", '
    '"Action": ["iam:SimulatePrincipalPolicy", "sts:GetCallerIdentity"]}]}'
)

HEALTH_DOC = Path(__file__).resolve().parents[2] / "docs" / "health.md"


def promised() -> dict[str, dict[str, str]]:
    """The health table of docs/health.md: state -> column -> value."""
    text = HEALTH_DOC.read_text()
    table = text.split("<!-- health-table -->")[1].split("<!-- /health-table -->")[0]
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in table.strip().splitlines()
        if line.startswith("|")
    ]
    header, body = rows[0], rows[2:]
    return {row[0]: dict(zip(header, row, strict=True)) for row in body}


def summary(obj: dict[str, Any]) -> str:
    """Which of Ready, Reconciling, Stalled is True, with its reason: 'Stalled (X)'."""
    true = [
        c
        for c in (obj.get("status") or {}).get("conditions") or []
        if c["type"] in ("Ready", "Reconciling", "Stalled") and c["status"] == "True"
    ]
    assert len(true) <= 1, f"more than one summary condition is True: {true}"
    return f"{true[0]['type']} ({true[0]['reason']})" if true else "none"


def kubectl_wait(kube: Kube, obj: dict[str, Any]) -> str:
    """'met' when ``kubectl wait --for=condition=Ready`` succeeds at once, else 'not met'."""
    kind = {"CloudCredential": "cloudcredentials", "Cluster": "clusters"}[obj["kind"]]
    result = subprocess.run(
        [kubectl_path(), "--kubeconfig", str(kube.kubeconfig), "wait", "--timeout=0s",
         "--for=condition=Ready", "-n", obj["metadata"]["namespace"],
         f"{kind}.cloudcred.io/{obj['metadata']['name']}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return "met" if result.returncode == 0 else "not met"


def reach(reads: dict[str, Any], expected: dict[str, str], timeout: float = 45) -> None:
    """Wait until every object's summary says what ``expected`` says (the operator is
    asynchronous; the objects make their way at the same time)."""
    behind: dict[str, str] = {}

    def there() -> bool:
        behind.clear()
        for what, want in expected.items():
            found = summary(reads[what]())
            if found != want:
                behind[what] = f"{found}, not {want}"
        return not behind

    try:
        wait_for(there, timeout=timeout, interval=0.5, what="the states")
    except AssertionError as error:
        raise AssertionError(f"{error}; still: {behind}") from None


def still(reads: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The objects once the operator has stopped writing them: none changed (its
    resourceVersion) over half a second."""
    last: dict[str, str] = {}

    def unchanged() -> dict[str, dict[str, Any]] | None:
        objects = {what: read() for what, read in reads.items()}
        versions = {what: obj["metadata"]["resourceVersion"] for what, obj in objects.items()}
        if versions == last:
            return objects
        last.clear()
        last.update(versions)
        return None

    found: dict[str, dict[str, Any]] = wait_for(unchanged, timeout=30, interval=0.5,
                                                what="the operator to stop writing")  # fmt: skip
    return found


def produce_states(
    kube: Kube, namespace: str, moto: Moto, unwatched: str, checked: str
) -> dict[str, dict[str, Any]]:
    """Each state of the documented table, made by the real operator (or, in the namespace
    ``unwatched``, not yet by it): state -> object. The objects are made at once and
    make their way together; three of them need a second step once they are Ready."""

    def cred(name: str) -> Any:
        return lambda: get_credential(kube, namespace, name)

    def clus(name: str) -> Any:
        return lambda: get_cluster(kube, namespace, name)

    def aws_cluster(name: str, credential: str, **spec: Any) -> None:
        create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3",
                       credentialRef={"name": credential}, **spec)  # fmt: skip

    # Not looked at yet (a namespace the operator does not watch): the CRDs default
    # status.observedGeneration to 0, so kstatus does not take the object for Current.
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=unwatched)))
    create_credential(kube, unwatched, "unseen", provider="AWS",
                      aws={"roleArn": "arn:aws:iam::123456789012:role/unseen"})  # fmt: skip
    create_cluster(kube, unwatched, "unseen", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "unseen"})  # fmt: skip
    unseen = {
        "credential not looked at yet": lambda: get_credential(kube, unwatched, "unseen") or {},
        "cluster not looked at yet": lambda: get_cluster(kube, unwatched, "unseen"),
    }

    # Verified, every cluster deployed (by the operator's deploy step).
    good = moto.create_user(f"health-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "good", {"secretAccessKey": good.secret_access_key})
    static_key_credential(kube, namespace, "good", good.access_key_id, "good")
    aws_cluster("deployed", "good")
    # The Secret is not there (yet): retried with backoff.
    static_key_credential(kube, namespace, "no-secret", good.access_key_id, "absent")
    aws_cluster("waiting-revision", "no-secret")
    # The provider refuses the key: only a person can fix it.
    secret(kube, namespace, "wrong", {"secretAccessKey": "not-the-secret-key"})
    static_key_credential(kube, namespace, "refused", good.access_key_id, "wrong")
    aws_cluster("never-deployed", "refused")
    # A Cluster naming a credential that does not exist.
    aws_cluster("dangling", "nowhere")
    # Waiting for an external deployer: the operator's part is done.
    role = moto.create_role(f"health-{uuid.uuid4().hex[:6]}")
    create_credential(kube, namespace, "external", provider="AWS", aws={"roleArn": role})
    aws_cluster("external", "external", deploy="External")
    # To be paused, blocked and deleted once Ready (below).
    create_credential(kube, namespace, "paused", provider="AWS", aws={"roleArn": role})
    aws_cluster("paused", "paused", deploy="External")
    limited = moto.create_user(f"limited-{uuid.uuid4().hex[:8]}", policy=READ_ONLY_STS)
    secret(kube, namespace, "limited", {"secretAccessKey": limited.secret_access_key})
    static_key_credential(kube, namespace, "halting", good.access_key_id, "good",
                          rollout={"maxConcurrent": 1})  # fmt: skip
    aws_cluster("first", "halting")
    aws_cluster("second", "halting")
    create_credential(kube, namespace, "leaving", provider="AWS", aws={"roleArn": role})
    # Short of a PermissionSet (namespace ``checked``: its operator reaches the local IAM
    # endpoint that answers iam:SimulatePrincipalPolicy).
    needs = f"health-{uuid.uuid4().hex[:6]}"
    kube.custom.create_cluster_custom_object("cloudcred.io", "v1alpha1", "permissionsets", {
        "apiVersion": "cloudcred.io/v1alpha1", "kind": "PermissionSet",
        "metadata": {"name": needs},
        "spec": {"aws": {"statements": [{"actions": ["eks:CreateCluster"]}]}}})  # fmt: skip
    asking = moto.create_user(f"short-{uuid.uuid4().hex[:8]}", policy=ASK_ONLY)
    secret(kube, checked, "short", {"secretAccessKey": asking.secret_access_key})
    static_key_credential(kube, checked, "short-own", asking.access_key_id, "short",
                          permissionSets=[needs])  # fmt: skip
    static_key_credential(kube, checked, "short-for-cluster", asking.access_key_id, "short")
    create_cluster(kube, checked, "short", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "short-for-cluster"}, permissionSets=[needs])  # fmt: skip

    reads = {
        "credential verified, rolled out": cred("good"),
        "cluster deployed": clus("deployed"),
        "credential check retrying": cred("no-secret"),
        "cluster waiting for its credential": clus("waiting-revision"),
        "credential refused by the provider": cred("refused"),
        "cluster whose credential failed verification": clus("never-deployed"),
        "cluster naming a missing credential": clus("dangling"),
        "credential waiting for external deployers": cred("external"),
        "cluster waiting for its external deployer": clus("external"),
        "credential with a paused rollout": cred("paused"),
        "credential with a blocked rollout": cred("halting"),
        "credential being deleted": cred("leaving"),
        "cluster short of its permission sets": lambda: get_cluster(kube, checked, "short"),
        "credential short of its own permission sets":
            lambda: get_credential(kube, checked, "short-own"),
    }  # fmt: skip
    final = {
        "credential verified, rolled out": "Ready (Ready)",
        "cluster deployed": "Ready (Ready)",
        "credential check retrying": "Reconciling (SecretNotFound)",
        "cluster waiting for its credential": "Reconciling (CredentialNotReady)",
        "credential refused by the provider": "Stalled (InvalidCredentials)",
        "cluster whose credential failed verification": "Stalled (CredentialNotVerified)",
        "cluster naming a missing credential": "Stalled (CredentialNotFound)",
        "credential waiting for external deployers": "Ready (ExternalDeployPending)",
        "cluster waiting for its external deployer": "Ready (ExternalDeployPending)",
        "cluster short of its permission sets": "Stalled (MissingPermissions)",
        "credential short of its own permission sets": "Stalled (MissingPermissions)",
    }
    first = new_revision(kube, namespace, "paused", None)
    patch_cluster_status(kube, namespace, "paused", {"deployedRevision": first})
    ready = {what: "Ready (Ready)" for what in ("credential with a paused rollout",
                                                "credential with a blocked rollout",
                                                "credential being deleted")}  # fmt: skip
    reach(reads, {**final, **ready})

    # A paused rollout: clusters behind, none marked until someone resumes it.
    patch_credential(
        kube,
        namespace,
        "paused",
        {"metadata": {"annotations": {ROLLOUT_PAUSED_ANNOTATION: "true"}}},
    )
    other = moto.create_role(f"health-{uuid.uuid4().hex[:6]}")
    patch_credential(kube, namespace, "paused", {"spec": {"aws": {"roleArn": other}}})
    # A new key that verifies but cannot deploy: the rollout stops at the first failure.
    patch_credential(
        kube,
        namespace,
        "halting",
        {
            "spec": {
                "aws": {
                    "accessKeyId": limited.access_key_id,
                    "secretAccessKeyRef": {"name": "limited"},
                }
            }
        },
    )
    # Being deleted: held by another controller's finalizer (as Argo CD's own is).
    hold = {"metadata": {"finalizers": ["example.com/hold"]}}
    patch_credential(kube, namespace, "leaving", hold)
    kube.custom.delete_namespaced_custom_object(
        "cloudcred.io", "v1alpha1", namespace, "cloudcredentials", "leaving"
    )
    new_revision(kube, namespace, "paused", first)
    final.update({
        "credential with a paused rollout": "Reconciling (RolloutPaused)",
        "credential with a blocked rollout": "Stalled (RolloutBlocked)",
        "credential being deleted": "Reconciling (Deleting)",
    })  # fmt: skip
    reach(reads, final)
    failed = next(n for n in ("first", "second")
                  if (condition(get_cluster(kube, namespace, n), "RedeployPending") or {})
                  .get("reason") == "DeployFailed")  # fmt: skip
    kept = "second" if failed == "first" else "first"
    reads["cluster whose deploy failed"] = clus(failed)
    reads["cluster kept on its last revision by a blocked rollout"] = clus(kept)
    final["cluster whose deploy failed"] = "Stalled (DeployFailed)"
    final["cluster kept on its last revision by a blocked rollout"] = "Ready (Ready)"
    reach(reads, final)

    states = {**{what: read() for what, read in unseen.items()}, **still(reads)}
    for what, want in final.items():
        assert summary(states[what]) == want, (what, states[what].get("status"))
    return states


def test_every_tool_gives_the_verdict_the_docs_promise(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess, operators: Operators,
    iam: SimulatingIam,
) -> None:  # fmt: skip
    table = promised()
    unwatched = f"health-unwatched-{uuid.uuid4().hex[:6]}"
    checked = f"health-checked-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=checked)))
    operators.start(checked, env={"AWS_ENDPOINT_URL_IAM": iam.url}, name="checked")
    try:
        states = produce_states(kube, namespace, moto, unwatched, checked)
        assert sorted(states) == sorted(table), "docs/health.md's table and the states differ"
        objects = list(states.values())
        by_kstatus = health.kstatus(objects)
        for (state, obj), kstatus in zip(states.items(), by_kstatus, strict=True):
            row = table[state]
            argocd = health.argocd(obj["kind"], [obj])[0]
            found = {
                "Kind": obj["kind"],
                "Conditions": summary(obj),
                "kstatus": kstatus["status"],
                "Argo CD": argocd["status"],
                "kubectl wait": kubectl_wait(kube, obj),
            }
            assert found == {column: row[column] for column in found}, (state, obj["status"])
            # Each tool says why, in the operator's words.
            if found["Conditions"] not in ("Ready (Ready)", "none"):
                reason = re.search(r"\((\w+)\)", found["Conditions"]).group(1)  # type: ignore[union-attr]
                assert reason in argocd["message"] or argocd["message"] == "Pending deletion"
        if os.environ.get("CLOUDCRED_HEALTH_TESTDATA"):
            write_testdata(states, table)
    finally:
        if get_credential(kube, namespace, "leaving"):
            patch_credential(kube, namespace, "leaving", {"metadata": {"finalizers": None}})
        kube.core.delete_namespace(unwatched)


def test_the_argocd_scripts_pass_their_own_tests_in_gopher_lua() -> None:
    """health_test.yaml, as Argo CD runs resource_customizations tests, in gopher-lua with
    only the libraries Argo CD opens."""
    for kind in health.SCRIPTS:
        result = health.argocd_tests(kind)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("ok ") >= 4, result.stdout


def trimmed(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as testdata: what the scripts read, no server bookkeeping."""
    metadata = {k: v for k, v in obj["metadata"].items()
                if k in ("name", "namespace", "generation", "deletionTimestamp", "annotations",
                         "finalizers")}  # fmt: skip
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": metadata,
            "spec": obj["spec"], "status": obj["status"]}  # fmt: skip


def write_testdata(states: dict[str, dict[str, Any]], table: dict[str, dict[str, str]]) -> None:
    for kind, folder in health.SCRIPTS.items():
        cases = []
        for state, obj in states.items():
            if obj["kind"] != kind or "deletionTimestamp" in obj["metadata"]:
                continue  # Argo CD decides deletions itself, before any script
            name = re.sub(r"[^a-z0-9]+", "-", state.lower()).strip("-") + ".yaml"
            (folder / "testdata").mkdir(exist_ok=True)
            # The test's namespace is random: the testdata says team-a, in messages too.
            text = yaml.safe_dump(trimmed(obj), sort_keys=False)
            text = text.replace(obj["metadata"]["namespace"], "team-a")
            (folder / "testdata" / name).write_text(text)
            verdict = health.argocd(kind, [yaml.safe_load(text)])[0]
            assert verdict["status"] == table[state]["Argo CD"]
            cases.append({"healthStatus": verdict, "inputPath": f"testdata/{name}"})
        (folder / "health_test.yaml").write_text(yaml.safe_dump({"tests": cases},
                                                                 sort_keys=False))  # fmt: skip
