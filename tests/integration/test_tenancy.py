"""Tenants cannot borrow each other's AWS identity: the operator, not the tenant,
determines the ExternalId; session names and tags say exactly which credential asked;
``cloudcred trust-policy`` prints the trust policy (or a CloudFormation template) that
lets only that credential in. What the operator sends is read from moto's own request
recorder, so the test sees the real AssumeRole calls."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cloudcred.constants import GROUP, VERSION
from cloudcred.installation import (
    INSTALLATION_SECRET,
    PRINCIPAL_ANNOTATION,
    Installation,
    key_from_data,
    secret_data,
)
from tests.aws import Moto, recorded_calls, start_moto
from tests.conftest import Kube
from tests.integration.conftest import operator_env
from tests.integration.test_cli import cloudcred
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import condition, create_credential, events_for, get_credential

pytestmark = pytest.mark.integration


class Recorded:
    """A moto of its own, recording, and an operator watching two fresh namespaces."""

    def __init__(self, kube: Kube, tmp: Path) -> None:
        self.recording = tmp / "moto-recording.jsonl"
        self.moto: Moto = start_moto(tmp / "moto.log", recording=self.recording)
        suffix = uuid.uuid4().hex[:6]
        # Joined with '-', team/a-prod and team-a/prod were the same session name.
        self.team, self.team_a = f"team{suffix}", f"team{suffix}-a"
        self.operator_namespace = f"cloudcred{suffix}"
        for name in (self.team, self.team_a, self.operator_namespace):
            kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        self.env = {**operator_env(self.moto),
                    "CLOUDCRED_OPERATOR_NAMESPACE": self.operator_namespace}  # fmt: skip
        self.operators = Operators(tmp, kube.kubeconfig, lambda: self.env)
        self.operator = self.start()

    def start(self) -> OperatorProcess:
        return self.operators.start(self.team, self.team_a, name="operator")

    def assume_role_calls(self) -> list[dict[str, list[str]]]:
        return recorded_calls(self.recording, "AssumeRole")


@pytest.fixture(scope="module")
def recorded(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """One for the module: each test has credentials of its own names, and reads the
    recording by their session names."""
    setup = Recorded(kube, tmp_path_factory.mktemp("tenancy"))
    try:
        yield setup
    finally:
        setup.operators.stop()
        setup.moto.stop()


def verified(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = get_credential(kube, namespace, name)
        found = condition(obj, "Verified")
        return obj if found and found["status"] == "True" else None

    return wait_for(done, timeout=60, what=f"{namespace}/{name} verified")


def tags(call: dict[str, list[str]]) -> dict[str, str]:
    keys = {
        k.split(".")[2]: v[0] for k, v in call.items() if re.fullmatch(r"Tags\.member\.\d+\.Key", k)
    }
    return {value: call[f"Tags.member.{index}.Value"][0] for index, value in keys.items()}


def test_tenants_whose_names_join_alike_get_distinct_sessions_and_external_ids(
    kube: Kube, recorded: Recorded
) -> None:
    role_arn = recorded.moto.create_role(f"shared-{uuid.uuid4().hex[:6]}")
    create_credential(kube, recorded.team, "a-prod", provider="AWS", aws={"roleArn": role_arn})
    create_credential(kube, recorded.team_a, "prod", provider="AWS", aws={"roleArn": role_arn})
    first = verified(kube, recorded.team, "a-prod")["status"]
    second = verified(kube, recorded.team_a, "prod")["status"]

    assert re.fullmatch(r"cloudcred-[0-9a-f]{32}", first["externalId"])
    assert first["externalId"] != second["externalId"]
    operator_user = recorded.env["AWS_ACCESS_KEY_ID"]
    assert first["operatorPrincipal"].startswith(
        "arn:aws:iam::123456789012:user/cloudcred-operator"
    )
    assert operator_user not in json.dumps(first)

    calls = recorded.assume_role_calls()
    by_session = {call["RoleSessionName"][0]: call for call in calls}
    one = by_session[f"cloudcred+{recorded.team}+a-prod"]
    other = by_session[f"cloudcred+{recorded.team_a}+prod"]
    assert one["ExternalId"] == [first["externalId"]]
    assert other["ExternalId"] == [second["externalId"]]
    assert tags(one) == {"cloudcred:namespace": recorded.team, "cloudcred:name": "a-prod"}
    assert tags(other) == {"cloudcred:namespace": recorded.team_a, "cloudcred:name": "prod"}


def test_a_tenant_chosen_external_id_has_no_effect(kube: Kube, recorded: Recorded) -> None:
    """spec.aws.externalId is no field any more: a strict client is refused, and a lax
    one's value is dropped by the API server; the operator sends its own."""
    role_arn = recorded.moto.create_role(f"victim-{uuid.uuid4().hex[:6]}")
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CloudCredential",
            "metadata": {"name": "borrowed", "namespace": recorded.team},
            "spec": {"provider": "AWS",
                     "aws": {"roleArn": role_arn, "externalId": "victim-external-id"}}}  # fmt: skip
    with pytest.raises(client.ApiException) as refused:
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, recorded.team, "cloudcredentials", body, field_validation="Strict"
        )
    assert 'unknown field "spec.aws.externalId"' in json.loads(refused.value.body)["message"]
    kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, recorded.team, "cloudcredentials", body, field_validation="Ignore"
    )
    status = verified(kube, recorded.team, "borrowed")["status"]
    sent = [call["ExternalId"][0] for call in recorded.assume_role_calls()
            if call["RoleSessionName"] == [f"cloudcred+{recorded.team}+borrowed"]]  # fmt: skip
    assert sent
    assert set(sent) == {status["externalId"]}
    assert "victim-external-id" not in recorded.recording.read_text()


def test_installation_key_survives_restarts(kube: Kube, recorded: Recorded) -> None:
    """The key is created once in the operator's namespace; after a restart the same
    credential has the same ExternalId and revision (no redeploy, no new trust policy)."""
    role_arn = recorded.moto.create_role(f"kept-{uuid.uuid4().hex[:6]}")
    create_credential(kube, recorded.team, "kept", provider="AWS", aws={"roleArn": role_arn})
    before = verified(kube, recorded.team, "kept")["status"]
    secret = kube.core.read_namespaced_secret(INSTALLATION_SECRET, recorded.operator_namespace)
    recorded.operator.stop()
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, recorded.team, "cloudcredentials", "kept",
        {"spec": {"description": "checked again after the restart"}},
    )  # fmt: skip
    recorded.operator = recorded.start()

    def checked_again() -> dict[str, Any] | None:
        obj = get_credential(kube, recorded.team, "kept")
        status = (obj or {}).get("status") or {}
        generation = (obj or {}).get("metadata", {}).get("generation")
        return status if status.get("observedGeneration") == generation else None

    after = wait_for(checked_again, timeout=60, what="the credential checked after restart")
    assert after["externalId"] == before["externalId"]
    assert after["revision"] == before["revision"]
    again = kube.core.read_namespaced_secret(INSTALLATION_SECRET, recorded.operator_namespace)
    assert again.metadata.uid == secret.metadata.uid
    assert again.data == secret.data


def test_installation_key_deleted_or_changed_while_running_keeps_the_key_in_use(
    kube: Kube, recorded: Recorded
) -> None:
    """While the operator runs, a deleted installation Secret comes back with the same key
    (and the recorded principal), and a Secret holding another key is reported while the
    ExternalId stays the one derived from the key in use; the key is in no log or Event."""
    role_arn = recorded.moto.create_role(f"held-{uuid.uuid4().hex[:6]}")
    create_credential(kube, recorded.team, "held", provider="AWS", aws={"roleArn": role_arn})
    before = verified(kube, recorded.team, "held")["status"]
    where = recorded.operator_namespace
    secret = kube.core.read_namespaced_secret(INSTALLATION_SECRET, where)

    def reasons() -> list[str]:
        return [str(event.reason) for event in events_for(kube, where, INSTALLATION_SECRET)]

    kube.core.delete_namespaced_secret(INSTALLATION_SECRET, where)  # cluster-admin may

    def written_back() -> client.V1Secret | None:
        try:
            found = kube.core.read_namespaced_secret(INSTALLATION_SECRET, where)
        except client.ApiException:
            return None
        return found if found.metadata.uid != secret.metadata.uid else None

    again = wait_for(written_back, what="the Secret written back")
    assert again.data == secret.data
    assert again.metadata.annotations == secret.metadata.annotations  # the principal
    wait_for(lambda: "InstallationKeyDeleted" in reasons(), what="the Event")

    other = {"data": secret_data(bytes(range(64, 96)))}
    kube.core.patch_namespaced_secret(INSTALLATION_SECRET, where, other)
    wait_for(lambda: "InstallationKeyChanged" in reasons(), what="the change reported")
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, recorded.team, "cloudcredentials", "held",
        {"spec": {"description": "checked with the key in use"}},
    )  # fmt: skip

    def checked_again() -> dict[str, Any] | None:
        status = (get_credential(kube, recorded.team, "held") or {}).get("status") or {}
        return status if status.get("observedGeneration") == 2 else None

    after = wait_for(checked_again, timeout=60, what="checked again")
    assert after["externalId"] == before["externalId"]

    kube.core.patch_namespaced_secret(INSTALLATION_SECRET, where, {"data": secret.data})
    wait_for(lambda: "InstallationKeyRestored" in reasons(), what="the key in use again")
    key = key_from_data(where, secret.data)
    messages = " ".join(str(e.message) for e in events_for(kube, where, INSTALLATION_SECRET))
    for text in (recorded.operator.log(), messages):
        for form in (key.hex(), base64.b64encode(key).decode(), secret.data["key"]):
            assert form not in text


def test_trust_policy_command_builds_a_role_cloudformation_creates(
    kube: Kube, recorded: Recorded
) -> None:
    """The CloudFormation template, deployed as it is printed (moto's CloudFormation),
    creates the role with a trust policy naming the operator and the ExternalId."""
    role_name = f"made-by-template-{uuid.uuid4().hex[:6]}"
    role_arn = f"arn:aws:iam::123456789012:role/cloudcred/{role_name}"
    create_credential(kube, recorded.team, "templated", provider="AWS", aws={"roleArn": role_arn})

    def published() -> dict[str, Any] | None:
        status = (get_credential(kube, recorded.team, "templated") or {}).get("status") or {}
        return status if status.get("externalId") and status.get("operatorPrincipal") else None

    status = wait_for(published, timeout=60, what="status.externalId and operatorPrincipal")
    policy = cloudcred(kube, "trust-policy", "templated", "-n", recorded.team,
                       "--operator-namespace", recorded.operator_namespace)  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    document = json.loads(policy.stdout)
    assume, tag = document["Statement"]
    assert assume["Principal"] == {"AWS": status["operatorPrincipal"]}
    assert assume["Condition"] == {"StringEquals": {"sts:ExternalId": status["externalId"]}}
    assert tag["Action"] == "sts:TagSession"
    assert tag["Condition"]["StringEquals"]["aws:RequestTag/cloudcred:namespace"] == recorded.team

    template = cloudcred(kube, "trust-policy", "templated", "-n", recorded.team,
                         "--operator-namespace", recorded.operator_namespace,
                         "-o", "cloudformation")  # fmt: skip
    assert template.returncode == 0, template.stderr
    formation = recorded.moto.client("cloudformation")
    formation.create_stack(StackName=f"role-{uuid.uuid4().hex[:6]}", TemplateBody=template.stdout,
                           Capabilities=["CAPABILITY_NAMED_IAM"])  # fmt: skip
    role = recorded.moto.client("iam").get_role(RoleName=role_name)["Role"]
    assert role["Arn"] == role_arn
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust == document


def test_trust_policy_command_ignores_a_forged_status(
    kube: Kube, recorded: Recorded, tenant: Callable[[str], Kube]
) -> None:
    """A tenant who may patch cloudcredentials/status names an account of their own as
    the operator's principal and an ExternalId of their choice: the printed policy still
    names the operator's principal and the ExternalId the installation key gives."""
    role_arn = recorded.moto.create_role(f"forged-{uuid.uuid4().hex[:6]}")
    create_credential(kube, recorded.team, "forged", provider="AWS", aws={"roleArn": role_arn})
    genuine = verified(kube, recorded.team, "forged")["status"]
    installation = kube.core.read_namespaced_secret(INSTALLATION_SECRET,
                                                    recorded.operator_namespace)  # fmt: skip
    assert installation.metadata.annotations[PRINCIPAL_ANNOTATION] == genuine["operatorPrincipal"]
    uid = kube.core.read_namespace(recorded.team).metadata.uid
    expected = Installation(key_from_data("", installation.data)).external_id(uid, "forged")
    attacker = "arn:aws:iam::999999999999:root"
    # The operator writes its own fields back at once (below): held still meanwhile, so
    # that the command meets the forged status.
    assert recorded.operator.pid is not None
    os.kill(recorded.operator.pid, signal.SIGSTOP)
    try:
        tenant(recorded.team).custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, recorded.team, "cloudcredentials", "forged",
            {"status": {"operatorPrincipal": attacker, "externalId": "cloudcred-chosen",
                        "revision": "v2-forged"}},
        )  # fmt: skip
        forged = get_credential(kube, recorded.team, "forged")["status"]
        assert forged["operatorPrincipal"] == attacker
        printed = cloudcred(kube, "trust-policy", "forged", "-n", recorded.team,
                            "--operator-namespace", recorded.operator_namespace)  # fmt: skip
    finally:
        os.kill(recorded.operator.pid, signal.SIGCONT)
    assert printed.returncode == 0, printed.stderr
    assume, tag = json.loads(printed.stdout)["Statement"]
    assert assume["Principal"] == tag["Principal"] == {"AWS": genuine["operatorPrincipal"]}
    assert assume["Condition"] == {"StringEquals": {"sts:ExternalId": expected}}
    assert expected == genuine["externalId"]
    assert "999999999999" not in printed.stdout
    assert "cloudcred-chosen" not in printed.stdout
    assert "status.externalId" in printed.stderr  # the forgery is pointed out

    # The verifier writes back what its last check found, without checking again.
    fields = ("operatorPrincipal", "externalId", "revision")
    wait_for(lambda: all(get_credential(kube, recorded.team, "forged")["status"].get(field)
                         == genuine[field] for field in fields),
             timeout=10, what="the forged status written back")  # fmt: skip


def test_trust_policy_command_refuses_what_has_no_trust_policy(
    kube: Kube, recorded: Recorded
) -> None:
    create_credential(kube, recorded.team, "keys", provider="AWS",
                      aws={"accessKeyId": "AKIAIOSFODNN7EXAMPLE",
                           "secretAccessKeyRef": {"name": "none", "key": "k"}})  # fmt: skip
    refused = cloudcred(kube, "trust-policy", "keys", "-n", recorded.team)
    assert refused.returncode == 2
    assert "no spec.aws.roleArn" in refused.stderr
    missing = cloudcred(kube, "trust-policy", "nothing", "-n", recorded.team)
    assert missing.returncode == 1
    bad_format = cloudcred(kube, "trust-policy", "keys", "-n", recorded.team, "-o", "yaml")
    assert bad_format.returncode == 2
    assert "-o yaml" in bad_format.stderr
