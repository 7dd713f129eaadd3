"""Automatic rotation of a GCP service-account key end to end, through the running
operator: google-auth and the IAM API client unmodified, against a local stand-in for
Google's token endpoint and IAM key methods (tests/unit/test_rotation_gcp.py's, which
checks each token request's RS256 signature with the key it names). The story has each
thing that goes wrong in production: a forged status, a create refused while someone
else makes a key on the same service account, a new key Google refuses while it
propagates, the status lost in the middle, and a spec pointed back at the old key."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import Kube
from tests.gcp import EMAIL, key_json
from tests.operator import Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    events_for,
    get_credential,
    new_revision,
    patch_cluster_status,
    secret,
)
from tests.unit.test_rotation_gcp import FIRST_KEY_ID as SERVED_KEY_ID
from tests.unit.test_rotation_gcp import FakeIam, FakeKey, serve

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "cloudcred.io", "v1alpha1", "cloudcredentials"
PROPAGATION = 8.0  # seconds a new key is refused at the token endpoint


def rotation(kube: Kube, namespace: str) -> dict[str, Any]:
    return dict(((get_credential(kube, namespace, "gcp") or {}).get("status") or {})
                .get("rotation") or {})  # fmt: skip


def annotate_now(kube: Kube, namespace: str, value: str) -> None:
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "gcp",
        {"metadata": {"annotations": {"cloudcred.io/rotate-now": value}}},
    )  # fmt: skip


def reasons(kube: Kube, namespace: str) -> list[str]:
    return [event.reason for event in events_for(kube, namespace, "gcp")]


def test_a_gcp_key_rotates_through_every_fault_and_no_key_in_use_is_retired(
    kube: Kube, own_namespace: str, operators: Operators
) -> None:
    fake, server = serve()
    try:
        story(kube, own_namespace, operators, fake)
    finally:
        server.shutdown()


def story(kube: Kube, namespace: str, operators: Operators, fake: FakeIam) -> None:
    made_by_google = fake.new_key
    # A key id of this run's own: the suite's control plane keeps other tests'
    # credentials, and a key any CloudCredential still names is never retired.
    first_key_id = secrets.token_hex(20)
    fake.keys[first_key_id] = fake.keys.pop(SERVED_KEY_ID)
    fake.keys[first_key_id].key_id = first_key_id

    def propagating(token_uri: str, email: str = EMAIL) -> tuple[FakeKey, str]:
        """Google accepts a new key only some seconds after making it."""
        key, text = made_by_google(token_uri, email)
        key.disabled = True
        threading.Timer(PROPAGATION, lambda: setattr(key, "disabled", False)).start()
        return key, text

    fake.new_key = propagating  # type: ignore[method-assign]
    # The key in use was made today: not due for 90 days.
    fake.keys[first_key_id].valid_after = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    operators.start(namespace, env={
        "CLOUDCRED_GCP_TOKEN_URI": fake.token_uri, "CLOUDCRED_GCP_IAM_URL": fake.url,
        "CLOUDCRED_PROPAGATION_GCP": "60",
    })  # fmt: skip
    secret(
        kube, namespace, "sa", {"key.json": key_json(fake.token_uri, private_key_id=first_key_id)}
    )
    policy = {"policy": "Automatic", "maxAge": "90d", "gracePeriod": "3s"}
    create_credential(kube, namespace, "gcp", provider="GCP", rotation=policy,
                      gcp={"serviceAccountKeyRef": {"name": "sa", "key": "key.json"}})  # fmt: skip
    create_cluster(kube, namespace, "ext", provider="GCP", region="europe-west1",
                   credentialRef={"name": "gcp"}, deploy="External")  # fmt: skip
    first = new_revision(kube, namespace, "gcp", None)
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": first})
    wait_for(lambda: rotation(kube, namespace).get("nextRotationTime"), what="scheduled")

    # A forged status changes nothing: written again from the operator's record.
    kube.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "gcp",
        {"status": {"rotation": {"phase": "Deleting", "previousKeyId": first_key_id}}},
    )  # fmt: skip
    wait_for(lambda: rotation(kube, namespace).get("phase") == "Idle"
             and "previousKeyId" not in rotation(kube, namespace),
             what="status rewritten")  # fmt: skip
    assert first_key_id in fake.keys

    # The create is refused (the service account's key limit) while someone else makes
    # a key on the same service account: that key is reported, never touched.
    fake.refuse["create"] = (400, {"error": {"code": 400, "status": "FAILED_PRECONDITION"}})
    annotate_now(kube, namespace, "first")
    wait_for(lambda: rotation(kube, namespace).get("reason"), timeout=30,
             what="the create refused")  # fmt: skip
    someone_elses, _ = made_by_google(fake.token_uri)
    del fake.refuse["create"]
    # The refused step is tried again 30 s after it failed.
    wait_for(lambda: rotation(kube, namespace).get("phase") == "RollingOut", timeout=120,
             what="the new key in use")  # fmt: skip
    second_key = rotation(kube, namespace)["keyId"]
    assert second_key not in (first_key_id, someone_elses.key_id)

    # Google refuses the new key for a while: Propagating, never Stalled.
    seen = wait_for(lambda: (condition(get_credential(kube, namespace, "gcp"), "Verified")
                             or {}).get("reason") in ("Propagating", "Verified")
                    and condition(get_credential(kube, namespace, "gcp"), "Verified"),
                    timeout=30, what="the new key checked")  # fmt: skip
    stalled = condition(get_credential(kube, namespace, "gcp"), "Stalled") or {}
    assert stalled.get("status") != "True", (seen, stalled)

    # The status is lost in the middle (a restore without status): it comes back.
    kube.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "gcp", {"status": {"rotation": None}})  # fmt: skip
    wait_for(lambda: rotation(kube, namespace).get("keyId") == second_key, timeout=30,
             what="status.rotation back from the record")  # fmt: skip
    second = new_revision(kube, namespace, "gcp", first)
    # A key that propagates is checked again after 5, 10, 20 and 40 s.
    wait_for(lambda: (condition(get_credential(kube, namespace, "gcp"), "Verified") or {})
             .get("status") == "True", timeout=90, what="the new key accepted")  # fmt: skip
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": second})
    wait_for(lambda: first_key_id not in fake.keys, timeout=60, what="the old key deleted")
    assert second_key in fake.keys
    assert someone_elses.key_id in fake.keys
    assert "UnknownKeys" in reasons(kube, namespace)

    # A second rotation; during its rollout a person points the spec back at the key in
    # use before it. The rotation stops: that key is kept, the rotation's own retired.
    annotate_now(kube, namespace, "second")
    wait_for(lambda: rotation(kube, namespace).get("keyId") not in (None, second_key),
             timeout=60, what="the third key in use")  # fmt: skip
    third_key = rotation(kube, namespace)["keyId"]
    third = new_revision(kube, namespace, "gcp", second)
    held = kube.core.read_namespaced_secret(rotation_secret(kube, namespace, second_key),
                                            namespace)  # fmt: skip
    secret(kube, namespace, "back", {"key.json": base64.b64decode(
        held.data["key.json"]).decode()})  # fmt: skip
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "gcp",
        {"spec": {"gcp": {"serviceAccountKeyRef": {"name": "back", "key": "key.json"}}}},
    )  # fmt: skip
    wait_for(lambda: "RotationStopped" in reasons(kube, namespace), timeout=30,
             what="the rotation stopped")  # fmt: skip
    back = new_revision(kube, namespace, "gcp", third)
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": back})
    wait_for(lambda: third_key not in fake.keys, timeout=60, what="the rotation's key retired")
    assert second_key in fake.keys
    assert not fake.keys[second_key].disabled
    assert someone_elses.key_id in fake.keys
    assert json.loads(base64.b64decode(held.data["key.json"]))["private_key_id"] == second_key


def rotation_secret(kube: Kube, namespace: str, key_id: str) -> str:
    """The Secret the operator made for one of its keys (annotated with the key's id)."""
    for found in kube.core.list_namespaced_secret(namespace).items:
        if (found.metadata.annotations or {}).get("cloudcred.io/key-id") == key_id:
            return str(found.metadata.name)
    raise AssertionError(f"no Secret holds key {key_id}")
