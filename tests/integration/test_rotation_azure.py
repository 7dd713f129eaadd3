"""Automatic rotation of an Azure client secret end to end, through the running
operator: azure-identity, MSAL and azure-core unmodified, against a local Entra ID and
Microsoft Graph over TLS (tests/unit/test_rotation_azure.py's: a token only for a secret
the application has, for Resource Manager, which the check asks for, or for Graph, where
the rotation adds and removes secrets). The story has each thing that goes wrong in
production: a forged status, an addPassword refused while someone else adds a secret to
the same application, a new secret Entra ID refuses while it propagates, the status lost
in the middle, and a spec pointed back at the old secret."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kube
from tests.echo import make_pki
from tests.integration.test_rotation import AUTOMATIC, rotated_secret, rotation_status
from tests.operator import Operators, wait_for
from tests.resources import (
    ask_rotation,
    condition,
    create_cluster,
    create_credential,
    event_reasons,
    get_credential,
    new_revision,
    patch_cluster_status,
    patch_credential,
    secret,
    verified_noting_stalled,
    write_rotation_status,
)
from tests.unit.test_rotation_azure import (
    CLIENT,
    SUBSCRIPTION,
    TENANT,
    Cloud,
    Password,
    new_secret,
    serve,
)

pytestmark = pytest.mark.integration

NAME = "azure"
# Generous for a loaded machine: each step takes a second or so when all is well.
TIMEOUT = 60.0


def rotation(kube: Kube, namespace: str) -> dict[str, Any]:
    return rotation_status(kube, namespace, NAME)


def reasons(kube: Kube, namespace: str) -> list[str]:
    return event_reasons(kube, namespace, NAME)


def password(cloud: Cloud, key_id: str) -> Password:
    return next(p for p in cloud.passwords if p.key_id == key_id)


def removed(cloud: Cloud) -> list[str]:
    """The Graph removePassword calls the operator made."""
    return [call for call, _, _ in cloud.graph_calls if call == "remove"]


def test_an_azure_client_secret_rotates_through_every_fault_and_none_in_use_is_retired(
    kube: Kube, own_namespace: str, operators: Operators, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    cloud, stop = serve(pki)
    try:
        process = operators.start(own_namespace, env={
            "CLOUDCRED_AZURE_AUTHORITY_HOST": cloud.base, "CLOUDCRED_AZURE_GRAPH_URL": cloud.base,
            # azure-core's transport (requests) trusts the stand-in's CA the standard way.
            "REQUESTS_CA_BUNDLE": str(pki.ca), "CLOUDCRED_PROPAGATION_AZURE": "60",
        })  # fmt: skip
        story(kube, own_namespace, cloud)
        # No secret the story used, nor a token, in the operator's log (at DEBUG).
        log = process.log()
        assert f"rotation of {own_namespace}/{NAME}: RollingOut" in log  # it logged
        for value in {p.value for p in cloud.passwords} | set(cloud.tokens.values()):
            assert value not in log
        assert not [token for token in cloud.tokens if token in log]
    finally:
        stop()


def story(kube: Kube, namespace: str, cloud: Cloud) -> None:
    stalled: list[str] = []  # every Stalled status read with Verified

    def checked() -> dict[str, Any]:
        return verified_noting_stalled(kube, namespace, NAME, stalled)

    first_value = new_secret()
    first = cloud.add(first_value, age_days=0)  # made today: not due for 90 days
    secret(kube, namespace, "sp", {"clientSecret": first_value})
    create_credential(kube, namespace, NAME, provider="AZURE", rotation=AUTOMATIC, azure={
        "tenantId": TENANT, "subscriptionId": SUBSCRIPTION, "clientId": CLIENT,
        "clientSecretRef": {"name": "sp", "key": "clientSecret"}})  # fmt: skip
    create_cluster(kube, namespace, "ext", provider="AZURE", region="westeurope",
                   credentialRef={"name": NAME}, deploy="External")  # fmt: skip
    wait_for(lambda: checked().get("status") == "True", timeout=TIMEOUT, what="verified")
    first_revision = new_revision(kube, namespace, NAME, None)
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": first_revision})
    wait_for(lambda: rotation(kube, namespace).get("nextRotationTime"), timeout=TIMEOUT,
             what="scheduled")  # fmt: skip

    # A forged status changes nothing: written again from the operator's record.
    write_rotation_status(kube, namespace, NAME,
                          {"phase": "Deleting", "previousKeyId": first.key_id})  # fmt: skip
    wait_for(lambda: rotation(kube, namespace).get("phase") == "Idle"
             and "previousKeyId" not in rotation(kube, namespace),
             timeout=TIMEOUT, what="status rewritten")  # fmt: skip
    assert first.key_id in cloud.key_ids
    assert removed(cloud) == []

    # addPassword is refused (the application's secrets at their limit) while someone
    # else adds a secret to the same application: reported, never touched.
    cloud.limit = len(cloud.passwords)
    ask_rotation(kube, namespace, NAME, "first")
    failing = wait_for(lambda: rotation(kube, namespace).get("reason") == "KeyLimitReached"
                       and rotation(kube, namespace), timeout=TIMEOUT,
                       what="addPassword refused")  # fmt: skip
    assert failing["phase"] == "Creating"
    someone_elses = cloud.add(new_secret(), age_days=0)
    cloud.limit = 10
    cloud.propagation = 3600  # the new secret is refused until the story lets it through

    # The status is lost in the middle of the rotation (a restore without status): it
    # comes back from the record, which alone still knows when the rotation began and
    # what asked for it. (The operator looks again when status.rotation leaves its view,
    # so the refused step is tried again now, not 30 s after the refusal.)
    write_rotation_status(kube, namespace, NAME, None)
    wait_for(lambda: rotation(kube, namespace).get("startedTime") == failing["startedTime"]
             and rotation(kube, namespace).get("requested") == "first",
             timeout=TIMEOUT, what="status.rotation back from the record")  # fmt: skip
    wait_for(lambda: rotation(kube, namespace).get("phase") == "RollingOut", timeout=TIMEOUT,
             what="the new secret in use")  # fmt: skip
    second_key = rotation(kube, namespace)["keyId"]
    assert second_key not in (first.key_id, someone_elses.key_id)
    assert "UnknownKeys" in reasons(kube, namespace)
    assert someone_elses.key_id in rotation(kube, namespace)["unknownKeyIds"]

    # Entra ID refuses the new secret for a while: Propagating and Reconciling, never
    # Stalled (no alert, no Argo CD Degraded), and nothing rolls out.
    seen = wait_for(lambda: checked().get("reason") == "Propagating" and checked(),
                    timeout=TIMEOUT, what="the new secret propagating")  # fmt: skip
    assert seen["status"] == "Unknown", seen
    wait_for(lambda: (condition(get_credential(kube, namespace, NAME), "Reconciling") or {})
             .get("status") == "True", timeout=TIMEOUT,
             what="Reconciling while it propagates")  # fmt: skip
    assert rotation(kube, namespace)["phase"] == "RollingOut"
    password(cloud, second_key).accepted_from = datetime.datetime.now(datetime.UTC)

    # Lost again, now with the new secret in use: the credential keeps using it.
    write_rotation_status(kube, namespace, NAME, None)
    wait_for(lambda: rotation(kube, namespace).get("keyId") == second_key, timeout=TIMEOUT,
             what="the secret in use back from the record")  # fmt: skip
    second_revision = new_revision(kube, namespace, NAME, first_revision)
    # A propagating secret is checked again 5 s after it was refused, then 10 s, ...
    wait_for(lambda: checked().get("status") == "True"
             and checked()["revision"] == second_revision,
             timeout=TIMEOUT, what="the new secret accepted")  # fmt: skip
    assert "True" not in stalled, stalled
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": second_revision})
    wait_for(lambda: first.key_id not in cloud.key_ids, timeout=TIMEOUT,
             what="the old secret removed")  # fmt: skip
    wait_for(lambda: "RotationComplete" in reasons(kube, namespace), timeout=TIMEOUT,
             what="the rotation complete")  # fmt: skip
    assert second_key in cloud.key_ids
    assert someone_elses.key_id in cloud.key_ids
    held = rotated_secret(kube, namespace, NAME)["clientSecret"]
    assert cloud.works(held)

    # A second rotation; during its rollout a person points the spec back at the secret
    # in use before it. The rotation stops: that secret is kept, the rotation's own
    # removed.
    cloud.propagation = 0
    ask_rotation(kube, namespace, NAME, "second")
    wait_for(lambda: rotation(kube, namespace).get("keyId") not in (None, second_key),
             timeout=TIMEOUT, what="the third secret in use")  # fmt: skip
    third_key = rotation(kube, namespace)["keyId"]
    third_revision = new_revision(kube, namespace, NAME, second_revision)
    secret(kube, namespace, "back", {"clientSecret": held})
    patch_credential(kube, namespace, NAME, {"spec": {"azure": {
        "clientSecretRef": {"name": "back", "key": "clientSecret"}}}})  # fmt: skip
    wait_for(lambda: "RotationStopped" in reasons(kube, namespace), timeout=TIMEOUT,
             what="the rotation stopped")  # fmt: skip
    back_revision = new_revision(kube, namespace, NAME, third_revision)
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": back_revision})
    wait_for(lambda: third_key not in cloud.key_ids, timeout=TIMEOUT,
             what="the rotation's secret removed")  # fmt: skip
    assert cloud.key_ids == {second_key, someone_elses.key_id}
    assert cloud.works(held)
