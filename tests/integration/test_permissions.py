"""Permission checks against AWS's iam:SimulatePrincipalPolicy, as moto's policies and
the local IAM endpoint (``tests/iam.py``) answer it, reached through boto3's own
``AWS_ENDPOINT_URL_IAM``: the provider's cases in-process, then the story through the
running operator and the real API server."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import boto3
import pytest
from kubernetes.client.rest import ApiException
from pydantic import SecretStr

from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.api.permissions import AwsPermissions
from cloudcred.constants import GROUP, PERMISSION_SET_PLURAL, VERSION
from cloudcred.providers import aws
from cloudcred.providers.base import PermissionAnswer, Reason, VerificationError, VerifyContext
from tests.aws import AwsKey, Moto
from tests.conftest import Kube
from tests.iam import SimulatingIam
from tests.kube import ROOT, load_yaml_documents
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    get_cluster,
    get_credential,
    new_namespace,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

# What every checked identity needs to be able to ask at all.
ASK = {"Effect": "Allow", "Action": ["iam:SimulatePrincipalPolicy", "sts:GetCallerIdentity"],
       "Resource": "*"}  # fmt: skip
SAMPLE = ROOT / "deploy" / "samples" / "permissionset-platform-aws.yaml"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def user(moto: Moto, *statements: dict[str, Any]) -> AwsKey:
    return moto.create_user(f"perm-{uuid.uuid4().hex[:10]}", policy(ASK, *statements))


def key_spec(key: AwsKey) -> tuple[CloudCredentialSpec, dict[str, SecretStr]]:
    spec = CloudCredentialSpec.model_validate({"provider": "AWS", "aws": {
        "accessKeyId": key.access_key_id,
        "secretAccessKeyRef": {"name": "keys", "key": "secretAccessKey"}}})  # fmt: skip
    return spec, {"secretAccessKey": SecretStr(key.secret_access_key)}


@pytest.fixture
def check(
    moto: Moto, iam: SimulatingIam, monkeypatch: pytest.MonkeyPatch
) -> Any:  # a function: (spec, secrets, needs) -> PermissionAnswer
    """The provider's check in this process, with boto3's standard endpoint settings
    (moto, and the local IAM endpoint for IAM) and moto's admin as the operator's own
    identity (it assumes roles)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", iam.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.admin.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.admin.secret_access_key)
    # The operator reads its own identity once per process (boto3's session caches it);
    # this process has played other operators with other identities before.
    monkeypatch.setattr(aws, "_SESSION", boto3.session.Session())

    def run(spec: CloudCredentialSpec, secrets: dict[str, SecretStr],
            needs: dict[str, Any]) -> PermissionAnswer:  # fmt: skip
        return aws.check_permissions(spec, secrets, VerifyContext("t-perm", "c"),
                                     AwsPermissions.model_validate(needs))  # fmt: skip

    return run


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def needs(*actions: str, resources: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"actions": list(actions)}
    if resources:
        statement["resources"] = resources
    return {"statements": [statement], **extra}


@pytest.mark.parametrize(
    ("granted", "asked", "missing"),
    [
        pytest.param([allow(["ec2:*", "eks:*"])],
                     needs("ec2:RunInstances", "eks:CreateCluster"), (), id="all-allowed"),
        pytest.param([allow("ec2:*")],
                     needs("ec2:RunInstances", "eks:CreateCluster", "iam:PassRole"),
                     ("eks:CreateCluster", "iam:PassRole"), id="some-missing"),
        pytest.param([allow(["ec2:Describe*", "EKS:*"])],
                     needs("ec2:DescribeInstances", "ec2:RunInstances", "eks:*",
                           "eks:ListClusters"),
                     ("ec2:RunInstances",), id="wildcard-actions"),
        pytest.param([allow("s3:*", "arn:aws:s3:::qovery*")],
                     needs("s3:*", resources=["arn:aws:s3:::qovery*", "arn:aws:s3:::other*"]),
                     ("s3:* on arn:aws:s3:::other*",), id="resource-scoped"),
        pytest.param([allow("iam:*"),
                      {"Effect": "Deny", "Action": "iam:PassRole", "Resource": "*"}],
                     needs("iam:PassRole", "iam:CreateRole"), ("iam:PassRole (denied)",),
                     id="explicit-deny-beats-allow"),
        pytest.param([allow("ec2:*", Condition={"StringEquals": {
                         "aws:RequestedRegion": "eu-west-3"}})],
                     needs("ec2:RunInstances", region="us-east-1"), ("ec2:RunInstances",),
                     id="other-region"),
        pytest.param([allow("ec2:*", Condition={"StringEquals": {
                         "aws:RequestedRegion": "eu-west-3"}})],
                     needs("ec2:RunInstances", region="eu-west-3"), (), id="region-context"),
    ],
)  # fmt: skip
def test_a_static_key_is_simulated_as_its_iam_user(
    moto: Moto, iam: SimulatingIam, check: Any, granted: list[dict[str, Any]],
    asked: dict[str, Any], missing: tuple[str, ...],
) -> None:  # fmt: skip
    key = user(moto, *granted)
    answer = check(*key_spec(key), asked)
    assert answer.missing == missing
    actions, resources = asked["statements"][0]["actions"], asked["statements"][0].get("resources")
    assert answer.checked == len(actions) * len(resources or ["*"])
    assert iam.simulations[-1]["PolicySourceArn"] == [f"arn:aws:iam::123456789012:user/{key.user}"]


def test_every_page_of_the_answer_is_read(moto: Moto, iam: SimulatingIam, check: Any) -> None:
    """The endpoint answers 4 results a page: 9 actions take 3 requests."""
    actions = [f"ec2:Action{i}" for i in range(9)]
    before = len(iam.simulations)
    answer = check(*key_spec(user(moto, allow("ec2:Action8"))),
                   needs(*actions))  # fmt: skip
    assert len(iam.simulations) - before == 3
    assert answer == PermissionAnswer(9, tuple(f"ec2:Action{i}" for i in range(9) if i != 8))


def test_an_identity_that_may_not_ask_gets_access_denied(moto: Moto, check: Any) -> None:
    """The check's own refusal is an error (Unknown to the operator), never an answer."""
    key = moto.create_user(f"perm-{uuid.uuid4().hex[:10]}", policy(allow("ec2:*")))
    with pytest.raises(VerificationError) as refused:
        check(*key_spec(key), needs("ec2:RunInstances"))
    assert refused.value.reason == Reason.ACCESS_DENIED
    assert "SimulatePrincipalPolicy" in refused.value.message


def test_a_role_is_simulated_on_its_role_arn_not_the_session(
    moto: Moto, iam: SimulatingIam, check: Any
) -> None:
    admin = moto.client("iam")
    name = f"perm-role-{uuid.uuid4().hex[:8]}"
    trust = policy({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"})
    arn = admin.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    admin.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=policy(ASK, allow("eks:*")))
    spec = CloudCredentialSpec.model_validate({"provider": "AWS", "aws": {"roleArn": arn}})
    answer = check(spec, {}, needs("eks:CreateCluster", "iam:PassRole"))
    assert answer.missing == ("iam:PassRole",)
    assert iam.simulations[-1]["PolicySourceArn"] == [arn]


# -- the story, through the running operator ------------------------------------------


@pytest.fixture(scope="module")
def own_namespace(kube: Kube) -> str:
    """A namespace of this module's operator alone (the shared one watches ``t-*``)."""
    return new_namespace(kube, "perm")


@pytest.fixture(scope="module")
def checking_operator(
    module_operators: Operators, iam: SimulatingIam, own_namespace: str
) -> OperatorProcess:
    """An operator that reaches IAM through the local endpoint, and checks a credential
    short of a permission every 2 s."""
    return module_operators.start(
        own_namespace, name="permissions",
        env={"AWS_ENDPOINT_URL_IAM": iam.url, "CLOUDCRED_PERMISSIONS_RECHECK": "2"},
    )  # fmt: skip


def guide_policy(without: str = "") -> list[dict[str, Any]]:
    """The AWS guide's policy (the sample set's statements), less one action."""
    spec = load_yaml_documents(SAMPLE)[0]["spec"]["aws"]
    return [allow([a for a in s["actions"] if a != without], s.get("resources") or "*")
            for s in spec["statements"]]  # fmt: skip


def create_set(kube: Kube, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PermissionSet",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip
    kube.custom.create_cluster_custom_object(GROUP, VERSION, PERMISSION_SET_PLURAL, body)


def sufficient(kube: Kube, namespace: str, name: str, status: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = condition(get_credential(kube, namespace, name), "PermissionsSufficient")
        return found if found and found["status"] == status else None

    found: dict[str, Any] = wait_for(check, timeout=30, what=f"PermissionsSufficient={status}")
    return found


def summary_of(obj: dict[str, Any] | None) -> str:
    summary = ("Ready", "Reconciling", "Stalled")
    found = [c for c in (obj or {}).get("status", {}).get("conditions") or []
             if c["type"] in summary and c["status"] == "True"]  # fmt: skip
    return f"{found[0]['type']} ({found[0]['reason']})" if found else "none"


def permissions_cli(kube: Kube, namespace: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "cloudcred", "permissions", "prod", "-n", namespace, "-o", "json"],
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)}, cwd=ROOT,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def test_a_cluster_short_of_the_sample_set_is_stalled_until_the_admin_grants_it(
    kube: Kube, own_namespace: str, moto: Moto, checking_operator: OperatorProcess
) -> None:
    """The story: a Cluster using the sample set on a credential that lacks eks:* is
    Stalled and names it, deploys nothing; the admin adds the action at AWS, and the
    Cluster deploys without anyone touching it. Then an edit of the set checks again."""
    namespace = own_namespace
    set_name = f"platform-aws-{uuid.uuid4().hex[:6]}"
    sample = load_yaml_documents(SAMPLE)[0]
    create_set(kube, set_name, sample["spec"])
    key = user(moto, *guide_policy(without="eks:*"))
    secret(kube, namespace, "keys", {"secretAccessKey": key.secret_access_key})
    static_key_credential(kube, namespace, "prod", key.access_key_id, "keys")
    create_cluster(kube, namespace, "eu", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "prod"}, permissionSets=[set_name])  # fmt: skip
    missing = sufficient(kube, namespace, "prod", "False")
    assert missing["reason"] == "MissingPermissions"
    # 42 actions on '*' (the guide lists dynamodb:* twice) and 2 on 4 resources.
    assert missing["message"] == f"missing 1 of 50: eks:* (PermissionSet {set_name})"
    report = get_credential(kube, namespace, "prod")["status"]["permissions"]  # type: ignore[index]
    assert report["sets"] == [{
        "name": set_name, "sufficient": "False", "reason": "MissingPermissions", "checked": 50,
        "missingCount": 1, "missing": ["eks:*"], "message": "missing 1 of 50: eks:*"}]  # fmt: skip
    stalled = wait_for(lambda: (c := get_cluster(kube, namespace, "eu")) and
                       summary_of(c) == "Stalled (MissingPermissions)" and c,
                       what="the cluster Stalled (MissingPermissions)")  # fmt: skip
    assert condition(stalled, "Stalled")["message"] == (  # type: ignore[index]
        f"missing 1 of 50: eks:* (PermissionSet {set_name})"
    )
    assert "deployedRevision" not in stalled.get("status", {})
    code, document = permissions_cli(kube, namespace)
    assert code == 4
    assert document["sets"][0]["missing"] == ["eks:*"]

    # The admin grants it at AWS; nobody touches the cluster or the credential.
    moto.client("iam").put_user_policy(UserName=key.user, PolicyName="access",
                                       PolicyDocument=policy(ASK, *guide_policy()))  # fmt: skip
    granted = sufficient(kube, namespace, "prod", "True")
    assert granted["message"] == f"all 50 allowed (PermissionSet {set_name})"
    revision = get_credential(kube, namespace, "prod")["status"]["revision"]  # type: ignore[index]
    deployed = wait_for(lambda: (c := get_cluster(kube, namespace, "eu")) and
                        summary_of(c) == "Ready (Ready)" and c,
                        what="the cluster deployed")  # fmt: skip
    assert deployed["status"]["deployedRevision"] == revision
    assert permissions_cli(kube, namespace)[0] == 0

    # An edit to the set checks again at once.
    more = copy.deepcopy(sample["spec"])
    more["aws"]["statements"][0]["actions"].append("sns:Publish")
    kube.custom.patch_cluster_custom_object(GROUP, VERSION, PERMISSION_SET_PLURAL, set_name,
                                            {"spec": more})  # fmt: skip
    short = sufficient(kube, namespace, "prod", "False")
    assert short["message"] == f"missing 1 of 51: sns:Publish (PermissionSet {set_name})"
    wait_for(lambda: summary_of(get_cluster(kube, namespace, "eu")) ==
             "Stalled (MissingPermissions)", what="the cluster Stalled again")  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({}, "spec", "needs at least one of aws, gcp, azure, scaleway"),
        ({"aws": {"statements": [{"actions": ["*"]}]}}, "spec.aws.statements[0].actions[0]",
         "should match"),
        ({"aws": {"statements": [{"actions": ["s3:*"], "resources": ["qovery*"]}]}},
         "spec.aws.statements[0].resources[0]", "should match"),
        ({"gcp": {"permissions": []}}, "spec.gcp.permissions", "at least 1 items"),
    ],
)  # fmt: skip
def test_a_permission_set_is_refused_at_admission_naming_the_field(
    kube: Kube, spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ApiException) as refused:
        create_set(kube, f"bad-{uuid.uuid4().hex[:8]}", spec)
    message = json.loads(refused.value.body)["message"]
    assert field in message
    assert words in message
