"""The command-line companion (``python -m cloudcred list|usage|rotate``) as a user runs
it: a separate process with a kubeconfig, against the real API server with the
operator running and AWS as moto's server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from cloudcred.constants import CLUSTER_PLURAL, GROUP, VERSION
from tests.aws import AwsKey, Moto
from tests.conftest import Kube
from tests.envtest.controlplane import cache_dir, ensure_binaries
from tests.kube import ROOT
from tests.operator import OperatorProcess, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    get_credential,
    patch_credential,
    secret,
)

pytestmark = pytest.mark.integration


def cloudcred(
    kube: Kube, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs the CLI as a user would; stdin is a pipe (or /dev/null), never a terminal."""
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "cloudcred", *args], cwd=ROOT, env=env, input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def get_cluster(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, CLUSTER_PLURAL, name))  # fmt: skip


def static_key_credential(kube: Kube, namespace: str, name: str, key: AwsKey) -> None:
    secret(kube, namespace, f"{name}-keys", {"secretAccessKey": key.secret_access_key})
    create_credential(kube, namespace, name, provider="AWS", aws={
        "accessKeyId": key.access_key_id,
        "secretAccessKeyRef": {"name": f"{name}-keys", "key": "secretAccessKey"},
    })  # fmt: skip


def aws_cluster(kube: Kube, namespace: str, name: str, credential: str) -> None:
    create_cluster(kube, namespace, name, provider="AWS", region="eu-west-3",
                   credentialRef={"name": credential})  # fmt: skip


def verified_and_listing(kube: Kube, namespace: str, name: str, count: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get_credential(kube, namespace, name) or {}
        found = condition(obj, "Verified") or {}
        ready = found.get("status") == "True" and obj["status"].get("clusterCount") == count
        return obj if ready else None

    found: dict[str, Any] = wait_for(check, timeout=45, what=f"{name} verified, {count} clusters")
    return found


def all_deployed(kube: Kube, namespace: str, clusters: list[str], revision: str) -> None:
    wait_for(
        lambda: all(
            (get_cluster(kube, namespace, name).get("status") or {}).get("deployedRevision")
            == revision
            for name in clusters
        ),
        timeout=60, what=f"clusters {clusters} deployed with {revision}",
    )  # fmt: skip


def new_access_key(moto: Moto, key: AwsKey) -> dict[str, Any]:
    """What `aws iam create-access-key --user-name USER` prints (a second key)."""
    created = moto.client("iam").create_access_key(UserName=key.user)
    return json.loads(json.dumps({"AccessKey": created["AccessKey"]}, default=str))


def assert_no_leak(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for value in secrets:
        assert value not in result.stdout
        assert value not in result.stderr


@pytest.fixture
def deployer(moto: Moto) -> AwsKey:
    return moto.create_user(f"deployer-{uuid.uuid4().hex[:6]}")


def test_list_shows_the_credential_and_its_clusters(
    kube: Kube, namespace: str, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    aws_cluster(kube, namespace, "prod-us", "aws-prod")
    verified_and_listing(kube, namespace, "aws-prod", 2)

    result = cloudcred(kube, "list", "-n", namespace)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "PROVIDER", "KEY", "OR", "ROLE", "CLUSTERS", "VERIFIED",
                              "KEY", "AGE", "NEXT", "ROTATION", "UNUSED", "SINCE",
                              "ROLLOUT"]  # fmt: skip
    cells = row.split()
    assert cells[:5] == ["aws-prod", "AWS", deployer.access_key_id, "2", "True"]
    assert cells[5] == "0d"  # moto knows when the key was created
    assert cells[6] == "-"  # Manual: no next rotation

    everywhere = cloudcred(kube, "list", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert everywhere.stdout.startswith("NAMESPACE ")
    assert any(line.split()[:2] == [namespace, "aws-prod"]
               for line in everywhere.stdout.splitlines())  # fmt: skip


def test_usage_shows_bound_clusters_and_their_revision(
    kube: Kube, namespace: str, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    aws_cluster(kube, namespace, "prod-us", "aws-prod")
    revision = verified_and_listing(kube, namespace, "aws-prod", 2)["status"]["revision"]
    all_deployed(kube, namespace, ["prod-eu", "prod-us"], revision)

    result = cloudcred(kube, "usage", "aws-prod", "-n", namespace)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"CloudCredential {namespace}/aws-prod, revision {revision}: "
                        "2 of 2 clusters on the current revision")  # fmt: skip
    assert lines[1].split() == ["NAMESPACE", "NAME", "REGION", "DEPLOY", "DEPLOYED", "REVISION",
                                "UP", "TO", "DATE"]  # fmt: skip
    assert [line.split() for line in lines[2:]] == [
        [namespace, "prod-eu", "eu-west-3", "Operator", revision, "yes"],
        [namespace, "prod-us", "eu-west-3", "Operator", revision, "yes"],
    ]


def test_rotate_switches_key_and_follows_the_rollout(
    kube: Kube, namespace: str, moto: Moto, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    aws_cluster(kube, namespace, "prod-us", "aws-prod")
    before = verified_and_listing(kube, namespace, "aws-prod", 2)
    all_deployed(kube, namespace, ["prod-eu", "prod-us"], before["status"]["revision"])
    new = new_access_key(moto, deployer)["AccessKey"]

    result = cloudcred(kube, "rotate", "aws-prod", "-n", namespace, "--timeout", "90s",
                       stdin=json.dumps({"AccessKey": new}, indent=4))  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert_no_leak(result, new["SecretAccessKey"], deployer.secret_access_key)
    old_id = deployer.access_key_id
    assert f"The old key {old_id} is no longer used by any cluster" in result.stdout
    assert (f"aws iam delete-access-key --access-key-id {old_id} "
            f"--user-name {deployer.user}") in result.stdout  # fmt: skip
    assert f"kubectl delete secret -n {namespace} aws-prod-keys" in result.stdout
    assert "All 2 clusters use the new key" in result.stdout

    after = get_credential(kube, namespace, "aws-prod")
    assert after is not None
    aws = after["spec"]["aws"]
    assert aws["accessKeyId"] == new["AccessKeyId"]
    new_secret = aws["secretAccessKeyRef"]["name"]
    assert new_secret.startswith("aws-prod-")
    assert aws["secretAccessKeyRef"]["key"] == "secretAccessKey"
    stored = kube.core.read_namespaced_secret(new_secret, namespace)
    assert stored.metadata.labels["app.kubernetes.io/managed-by"] == "cloudcred-cli"
    [owner] = stored.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name) == (
        "cloudcred.io/v1alpha1", "CloudCredential", "aws-prod")  # fmt: skip
    assert owner.uid == after["metadata"]["uid"]
    assert set(stored.data) == {"secretAccessKey"}
    revision = after["status"]["revision"]
    assert revision != before["status"]["revision"]
    assert condition(after, "Verified")["status"] == "True"
    for name in ("prod-eu", "prod-us"):
        assert get_cluster(kube, namespace, name)["status"]["deployedRevision"] == revision


def test_rotate_with_a_wrong_secret_is_refused(
    kube: Kube, namespace: str, moto: Moto, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    verified_and_listing(kube, namespace, "aws-prod", 1)
    new = new_access_key(moto, deployer)["AccessKey"]
    wrong = "Wr0ngSecretSentinel" + "x" * 21  # right shape, wrong value

    result = cloudcred(
        kube, "rotate", "aws-prod", "-n", namespace, "--timeout", "60s",
        stdin=f"AWS_ACCESS_KEY_ID={new['AccessKeyId']}\nAWS_SECRET_ACCESS_KEY={wrong}\n",
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert_no_leak(result, wrong, new["SecretAccessKey"], deployer.secret_access_key)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cloudcred: the new key was refused: InvalidCredentials: ")
    assert "fix the key and run rotate again" in last
    assert "Traceback" not in result.stderr


def test_rotate_of_a_role_has_nothing_to_rotate(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    create_credential(kube, namespace, "role", provider="AWS",
                      aws={"roleArn": "arn:aws:iam::123456789012:role/deployer"})  # fmt: skip
    sentinel = "RoleSentinelSecret" + "y" * 22
    key = {"accessKeyId": "AKIAIOSFODNN7EXAMPLE", "secretAccessKey": sentinel}

    result = cloudcred(kube, "rotate", "role", "-n", namespace, stdin=json.dumps(key))

    assert result.returncode == 2
    assert result.stderr.startswith(f"cloudcred: nothing to rotate: {namespace}/role uses an "
                                    "IAM role")  # fmt: skip
    assert result.stdout == ""
    assert_no_leak(result, sentinel)


def test_rotate_refuses_the_key_in_use_and_missing_credentials(
    kube: Kube, namespace: str, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    same = json.dumps({"accessKeyId": deployer.access_key_id,
                       "secretAccessKey": deployer.secret_access_key})  # fmt: skip

    result = cloudcred(kube, "rotate", "aws-prod", "-n", namespace, stdin=same)
    assert result.returncode == 2
    assert "is the key already in use" in result.stderr
    assert_no_leak(result, deployer.secret_access_key)
    secrets = [s.metadata.name for s in kube.core.list_namespaced_secret(namespace).items]
    assert [name for name in secrets if name.startswith("aws-prod-")] == ["aws-prod-keys"]

    missing = cloudcred(kube, "rotate", "nope", "-n", namespace, stdin=same)
    assert missing.returncode == 1
    assert missing.stderr == f"cloudcred: CloudCredential {namespace}/nope not found\n"
    assert_no_leak(missing, deployer.secret_access_key)


def test_rotate_no_wait_and_empty_stdin(
    kube: Kube, namespace: str, moto: Moto, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    empty = cloudcred(kube, "rotate", "aws-prod", "-n", namespace, stdin="")
    assert empty.returncode == 2
    assert empty.stderr.startswith("cloudcred: no key material in the input")

    new = new_access_key(moto, deployer)["AccessKey"]
    result = cloudcred(kube, "rotate", "aws-prod", "-n", namespace, "--no-wait",
                       stdin=json.dumps({"AccessKey": new}))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_no_leak(result, new["SecretAccessKey"])
    assert "Not waiting" in result.stdout
    after = get_credential(kube, namespace, "aws-prod")
    assert after is not None
    assert after["spec"]["aws"]["accessKeyId"] == new["AccessKeyId"]


def test_errors_are_one_line_without_traceback(kube: Kube, namespace: str) -> None:
    missing = cloudcred(kube, "usage", "nope", "-n", namespace)
    assert (missing.returncode, missing.stderr) == (
        1, f"cloudcred: CloudCredential {namespace}/nope not found\n")  # fmt: skip
    bad_context = cloudcred(kube, "list", "--context", "nope")
    assert bad_context.returncode == 1
    assert bad_context.stderr.startswith("cloudcred: context nope is not in ")
    empty = cloudcred(kube, "list", "-n", "t-does-not-exist")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert "No CloudCredentials in namespace t-does-not-exist" in empty.stderr


# --- scripting: -o, namespace-only rights, --as, --gitops, completion ----------------------


def kubectl() -> str:
    """The kubectl built with the local control plane; against an existing cluster
    (CLOUDCRED_TEST_KUBECONFIG) a kubectl on PATH will do."""
    cached = cache_dir() / "kubectl"
    if cached.exists():
        return str(cached)
    if os.environ.get("CLOUDCRED_TEST_KUBECONFIG") and shutil.which("kubectl"):
        return str(shutil.which("kubectl"))
    return str(ensure_binaries()["kubectl"])


def other_namespace(kube: Kube, labels: dict[str, str]) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    return name


def tenant_role(kube: Kube, namespace: str, name: str, subject: dict[str, str]) -> None:
    """Read rights on CloudCredentials and Clusters in ``namespace`` only."""
    rbac = client.RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": name},
        "rules": [{"apiGroups": [GROUP], "resources": ["cloudcredentials", "clusters"],
                   "verbs": ["get", "list", "watch"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", **subject}
                     if subject["kind"] != "ServiceAccount" else subject],
    })  # fmt: skip


def token_kubeconfig(kube: Kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig holding only a ServiceAccount token, as a tenant gets one."""
    kube.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = kube.core.create_namespaced_service_account_token(account, namespace, request)
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    config["users"] = [{"name": account, "user": {"token": token.status.token}}]
    for context in config["contexts"]:
        context["context"] = {**context["context"], "user": account, "namespace": namespace}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def cli_as(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "cloudcred", *args], cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_output_formats_for_scripts(
    kube: Kube, namespace: str, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    aws_cluster(kube, namespace, "prod-us", "aws-prod")
    revision = verified_and_listing(kube, namespace, "aws-prod", 2)["status"]["revision"]
    all_deployed(kube, namespace, ["prod-eu", "prod-us"], revision)

    as_json = cloudcred(kube, "list", "-n", namespace, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    listing = json.loads(as_json.stdout)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    [item] = listing["items"]
    assert (item["apiVersion"], item["kind"]) == ("cloudcred.io/v1alpha1", "CloudCredential")
    assert item["metadata"]["name"] == "aws-prod"
    assert item["status"]["revision"] == revision
    assert item["spec"]["aws"]["accessKeyId"] == deployer.access_key_id

    as_yaml = cloudcred(kube, "list", "-n", namespace, "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout)["items"][0]["metadata"]["uid"] == item["metadata"]["uid"]
    named = cloudcred(kube, "list", "-n", namespace, "-o", "name")
    assert named.stdout == "cloudcredential.cloudcred.io/aws-prod\n"

    wide = cloudcred(kube, "list", "-n", namespace, "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = wide.stdout.splitlines()
    assert header.split()[-4:] == ["READY", "REVISION", "SECRET", "IDENTITY"]
    assert row.split()[-3:] == [
        revision,
        "aws-prod-keys",
        f"arn:aws:iam::123456789012:user/{deployer.user}",
    ]
    # The default table is unchanged by all this.
    assert cloudcred(kube, "list", "-n", namespace).stdout.splitlines()[0].split()[-1] == "ROLLOUT"

    empty = cloudcred(kube, "list", "-n", "t-does-not-exist", "-o", "json")
    assert (empty.returncode, json.loads(empty.stdout)["items"]) == (0, [])

    usage = cloudcred(kube, "usage", "aws-prod", "-n", namespace, "-o", "json")
    assert usage.returncode == 0, usage.stderr
    clusters = json.loads(usage.stdout)["items"]
    assert [(c["kind"], c["metadata"]["name"]) for c in clusters] == [
        ("Cluster", "prod-eu"), ("Cluster", "prod-us")]  # fmt: skip
    assert {c["status"]["deployedRevision"] for c in clusters} == {revision}

    def settled(name: str) -> bool:
        cluster = get_cluster(kube, namespace, name)
        ready = (condition(cluster, "Ready") or {}).get("status") == "True"
        return ready and (condition(cluster, "RedeployPending") or {}).get("reason") == "UpToDate"

    wait_for(lambda: settled("prod-eu") and settled("prod-us"), timeout=30, what="Ready")
    wide_usage = cloudcred(kube, "usage", "aws-prod", "-n", namespace, "-o", "wide")
    assert wide_usage.stdout.splitlines()[1].split()[-5:] == ["DATE", "READY", "REDEPLOY",
                                                              "LAST", "DEPLOYED"]  # fmt: skip
    assert wide_usage.stdout.splitlines()[2].split()[5:8] == ["yes", "True", "UpToDate"]


def test_usage_with_namespace_only_rights(
    kube: Kube, namespace: str, deployer: AwsKey, operator: OperatorProcess, tmp_path: Path
) -> None:
    """A tenant with read rights in its namespace only: usage shows its clusters, names
    the namespace it cannot read, and -A fails with a clear message."""
    team = other_namespace(kube, {"cloudcred-test-team": namespace})
    static_key_credential(kube, namespace, "aws-prod", deployer)
    patch_credential(kube, namespace, "aws-prod", {"spec": {"allowedNamespaces": {
        "matchLabels": {"cloudcred-test-team": namespace}}}})  # fmt: skip
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    create_cluster(kube, team, "team-eu", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "aws-prod", "namespace": namespace})  # fmt: skip
    verified_and_listing(kube, namespace, "aws-prod", 2)
    tenant_role(kube, namespace, "reader",
                {"kind": "ServiceAccount", "name": "tenant", "namespace": namespace})  # fmt: skip
    tenant = token_kubeconfig(kube, namespace, "tenant", tmp_path / "tenant")

    result = cli_as(tenant, "usage", "aws-prod")  # the context's namespace
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(f"(1 not shown: no access to Clusters in {team})")
    assert [line.split()[:2] for line in lines[2:]] == [[namespace, "prod-eu"]]
    assert f"cloudcred: warning: listing Clusters that reference aws-prod in {team}: HTTP 403" in (
        result.stderr)  # fmt: skip

    everywhere = cli_as(tenant, "usage", "aws-prod", "-A")
    assert everywhere.returncode == 1
    assert everywhere.stdout == ""
    [line] = everywhere.stderr.splitlines()
    assert line.startswith("cloudcred: listing Clusters that reference aws-prod in every "
                           "namespace: HTTP 403 Forbidden")  # fmt: skip
    assert "-A needs the right to list clusters.cloudcred.io in every namespace" in line

    # With rights in both namespaces (a group, through --as), the whole picture.
    tenant_role(kube, team, "reader", {"kind": "Group", "name": "team-readers"})
    tenant_role(kube, namespace, "group-reader", {"kind": "Group", "name": "team-readers"})
    both = cli_as(kube.kubeconfig, "usage", "aws-prod", "-n", namespace, "--as", "carol",
                  "--as-group", "other", "--as-group", "team-readers")  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert both.stderr == ""
    assert "of 2 clusters on the current revision" in both.stdout.splitlines()[0]
    assert "not shown" not in both.stdout
    assert [line.split()[:2] for line in both.stdout.splitlines()[2:]] == sorted(
        [[namespace, "prod-eu"], [team, "team-eu"]])  # fmt: skip
    nobody = cli_as(kube.kubeconfig, "list", "-n", namespace, "--as", "nobody")
    assert nobody.returncode == 1
    assert nobody.stderr.startswith(f"cloudcred: listing CloudCredentials in {namespace}: "
                                    "HTTP 403 Forbidden")  # fmt: skip


def test_rotate_gitops_prints_the_change_instead_of_patching(
    kube: Kube, namespace: str, moto: Moto, deployer: AwsKey, operator: OperatorProcess
) -> None:
    static_key_credential(kube, namespace, "aws-prod", deployer)
    aws_cluster(kube, namespace, "prod-eu", "aws-prod")
    before = verified_and_listing(kube, namespace, "aws-prod", 1)
    new = new_access_key(moto, deployer)["AccessKey"]

    result = cloudcred(kube, "rotate", "aws-prod", "-n", namespace, "--gitops",
                       stdin=json.dumps({"AccessKey": new}))  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert_no_leak(result, new["SecretAccessKey"], deployer.secret_access_key)
    manifest = yaml.safe_load(result.stdout)
    new_secret = manifest["spec"]["aws"]["secretAccessKeyRef"]["name"]
    assert new_secret.startswith("aws-prod-")
    assert manifest["spec"]["aws"] == {
        "accessKeyId": new["AccessKeyId"],
        "secretAccessKeyRef": {"name": new_secret, "key": "secretAccessKey"},
    }
    assert manifest["metadata"] == {"name": "aws-prod", "namespace": namespace}
    assert "status" not in manifest
    assert (f"spec.aws.accessKeyId: {deployer.access_key_id} -> {new['AccessKeyId']}"
            in result.stderr)  # fmt: skip
    # The server's credential is untouched; the Secret is there, owned by it.
    unchanged = get_credential(kube, namespace, "aws-prod")
    assert unchanged is not None
    assert unchanged["spec"] == before["spec"]
    assert unchanged["metadata"]["generation"] == before["metadata"]["generation"]
    stored = kube.core.read_namespaced_secret(new_secret, namespace)
    assert [owner.uid for owner in stored.metadata.owner_references] == [before["metadata"]["uid"]]

    # What the GitOps tool does with the pull request: apply the manifest.
    applied = subprocess.run(
        [kubectl(), "--kubeconfig", str(kube.kubeconfig), "apply", "-f", "-"],
        input=result.stdout, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    after = get_credential(kube, namespace, "aws-prod")
    assert after is not None
    # The spec a plain rotate's merge patch gives.
    assert after["spec"] == {**before["spec"], "aws": manifest["spec"]["aws"]}

    def rolled_out() -> str | None:
        obj = get_credential(kube, namespace, "aws-prod") or {}
        status = obj.get("status") or {}
        fresh = status.get("observedGeneration") == obj["metadata"]["generation"]
        verified = (condition(obj, "Verified") or {}).get("status") == "True"
        return status.get("revision") if fresh and verified else None

    revision = wait_for(rolled_out, timeout=45, what="the applied key verified")
    assert revision != before["status"]["revision"]
    all_deployed(kube, namespace, ["prod-eu"], revision)


@pytest.fixture
def shell_env(kube: Kube) -> dict[str, str]:
    """PATH with the installed cloudcred command first, KUBECONFIG the test cluster's."""
    bindir = Path(sys.executable).parent
    if not (bindir / "cloudcred").exists():
        pytest.skip(f"the cloudcred command is not installed next to {sys.executable}")
    path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "KUBECONFIG": str(kube.kubeconfig)}


def run_shell(shell: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    found = shutil.which(shell)
    if not found:
        pytest.skip(f"{shell} is not installed")
    return subprocess.run([found, "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_completion_scripts_load_and_complete_names(
    kube: Kube, namespace: str, shell_env: dict[str, str], tmp_path: Path
) -> None:
    for name in ("prod-role", "staging-role"):
        create_credential(kube, namespace, name, provider="AWS",
                          aws={"roleArn": f"arn:aws:iam::123456789012:role/{name}"})  # fmt: skip
    bash = run_shell("bash", f"""
        source <(cloudcred completion bash) && complete -p cloudcred || exit 1
        complete_line() {{
            COMP_LINE=$1; COMP_POINT=${{#1}}; _cloudcred; echo "${{COMPREPLY[*]}}"
        }}
        complete_line 'cloudcred us'
        complete_line 'cloudcred list -o '
        complete_line 'cloudcred usage -n {namespace} p'
        complete_line 'cloudcred rotate --namespace={namespace} '
        complete_line 'cloudcred list --namespace={namespace[:4]}'
    """, shell_env)  # fmt: skip
    assert bash.returncode == 0, bash.stderr
    assert bash.stdout.splitlines() == [
        "complete -F _cloudcred cloudcred",
        "usage",
        "json yaml wide name",
        "prod-role",
        "prod-role staging-role",
        bash.stdout.splitlines()[-1],
    ]
    assert namespace in bash.stdout.splitlines()[-1].split()

    fish = run_shell("fish", f"""
        cloudcred completion fish | source
        complete -C 'cloudcred us'
        complete -C 'cloudcred trust-policy -n {namespace} '
    """, shell_env)  # fmt: skip
    assert fish.returncode == 0, fish.stderr
    assert fish.stdout.split() == ["usage", "prod-role", "staging-role"]

    # zsh completes only inside its line editor: compadd stands in for it here.
    zsh = run_shell("zsh", f"""
        compdef() {{ print -r -- "compdef $*"; }}
        compadd() {{ print -r -- "${{(@P)${{@[-1]}}}}"; }}
        source <(cloudcred completion zsh)
        words=(cloudcred usage -n {namespace} ''); CURRENT=5; _cloudcred
    """, shell_env)  # fmt: skip
    assert zsh.returncode == 0, zsh.stderr
    assert zsh.stdout.splitlines() == [
        "compdef _cloudcred cloudcred kubectl-cloudcred", "prod-role staging-role"]  # fmt: skip

    # kubectl's own completion asks kubectl_complete-cloudcred (the package's entry point;
    # here the same function behind a script of the test's own).
    helper = tmp_path / "kubectl_complete-cloudcred"
    helper.write_text(f"#!{sys.executable}\nimport sys\n"
                      "from cloudcred.__main__ import kubectl_complete\n"
                      "sys.exit(kubectl_complete())\n")  # fmt: skip
    helper.chmod(0o755)
    env = {**shell_env, "PATH": f"{tmp_path}{os.pathsep}{shell_env['PATH']}"}
    plugin = subprocess.run(
        [kubectl(), "__complete", "cloudcred", "usage", "-n", namespace, "p"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout.splitlines() == ["prod-role", ":4"]
