"""The command-line companion (``python -m cloudcred list|usage|rotate``) as a user runs
it: a separate process with a kubeconfig, against the real API server with the
operator running and AWS as moto's server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from cloudcred.constants import CLUSTER_PLURAL, GROUP, VERSION
from tests.aws import AwsKey, Moto
from tests.conftest import Kube
from tests.kube import ROOT
from tests.operator import OperatorProcess, wait_for
from tests.resources import condition, create_cluster, create_credential, get_credential, secret

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
                              "KEY", "AGE", "UNUSED", "SINCE", "ROLLOUT"]  # fmt: skip
    cells = row.split()
    assert cells[:5] == ["aws-prod", "AWS", deployer.access_key_id, "2", "True"]
    assert cells[5] == "0d"  # moto knows when the key was created

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
