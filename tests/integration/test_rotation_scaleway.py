"""Automatic rotation of a Scaleway API key end to end, through the running operator:
the Scaleway SDK unmodified, against a local IAM and Account API
(tests/unit/test_rotation_scaleway.py's: every request authenticated by its secret key,
the bearer's permission sets checked). Managing API keys takes IAMManager, which a key
tenants hold must not have: a CredentialBoundary names the admins' rotation identity,
and the tenant's key may only read. The story has each thing that goes wrong in
production: a forged status, a create refused while someone else makes a key for the
same application, a new key IAM refuses while it propagates, the status lost in the
middle, and a spec pointed back at the old key."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Kube
from tests.integration.test_boundary import Boundaries, label_namespace
from tests.integration.test_boundary import boundaries as boundaries  # a fixture
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
from tests.unit.test_rotation_scaleway import (
    ACCESS_KEY,
    APPLICATION_ID,
    ORGANIZATION_ID,
    OTHER_APPLICATION_ID,
    PROJECT_ID,
    SECRET_KEY,
    FakeIam,
    Key,
    serve,
)

pytestmark = pytest.mark.integration

NAME = "scw"
ADMIN_ACCESS_KEY = "SCWADMINADMINADMIN00"
ADMIN_SECRET_KEY = "99999999-2222-4333-8444-555555555555"
SOMEONE_ELSES = "SCWSOMEONEELSE000000"
# Generous for a loaded machine: each step takes a second or so when all is well.
TIMEOUT = 60.0


def rotation(kube: Kube, namespace: str) -> dict[str, Any]:
    return rotation_status(kube, namespace, NAME)


def reasons(kube: Kube, namespace: str) -> list[str]:
    return event_reasons(kube, namespace, NAME)


def deleted(fake: FakeIam) -> list[str]:
    """The API keys the operator deleted."""
    return [call.path.rsplit("/", 1)[-1] for call in fake.calls if call.method == "DELETE"]


@pytest.fixture
def rotation_identity(kube: Kube) -> Iterator[str]:
    """The admins' API key, in a Secret of the operator's namespace."""
    name = f"scw-rotator-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespaced_secret("default", {
        "metadata": {"name": name},
        "stringData": {"accessKey": ADMIN_ACCESS_KEY, "secretKey": ADMIN_SECRET_KEY}})  # fmt: skip
    yield name
    kube.core.delete_namespaced_secret(name, "default")


def test_a_scaleway_key_rotates_through_every_fault_and_none_in_use_is_retired(
    kube: Kube, own_namespace: str, operators: Operators, boundaries: Boundaries,
    rotation_identity: str,
) -> None:  # fmt: skip
    fake = FakeIam()
    # The tenant's key was made today (not due for 90 days); its application may read
    # its own key (IAMReadOnly), not manage keys.
    fake.add(Key(ACCESS_KEY, SECRET_KEY, application_id=APPLICATION_ID,
                 created_at=datetime.datetime.now(datetime.UTC)))  # fmt: skip
    fake.readers.add(APPLICATION_ID)
    # The admins' application holds IAMManager.
    fake.add(Key(ADMIN_ACCESS_KEY, ADMIN_SECRET_KEY, application_id=OTHER_APPLICATION_ID))
    fake.managers.add(OTHER_APPLICATION_ID)
    stop = serve(fake)
    try:
        boundaries({"namespaceSelector": {"matchLabels": label_namespace(kube, own_namespace)},
                    "scaleway": {"rotationIdentitySecret": rotation_identity}})  # fmt: skip
        process = operators.start(own_namespace, env={
            "CLOUDCRED_SCALEWAY_API_URL": fake.url, "CLOUDCRED_SCALEWAY_S3_URL": fake.url,
            "CLOUDCRED_PROPAGATION_SCALEWAY": "60",
        })  # fmt: skip
        story(kube, own_namespace, fake)
        # Each pair was proved at Object Storage (its signature checked), the tenant's
        # before anything was trusted, each new key's once it was known there.
        proved = {access_key for access_key, _ in fake.proofs}
        assert ACCESS_KEY in proved
        assert len(proved - {ACCESS_KEY}) >= 2  # the second and the third key
        # No secret key the story used in the operator's log (at DEBUG).
        log = process.log()
        assert f"rotation of {own_namespace}/{NAME}: RollingOut" in log  # it logged
        for value in {key.secret_key for key in fake.keys.values()} | {SECRET_KEY}:
            assert value not in log
    finally:
        stop()


def story(kube: Kube, namespace: str, fake: FakeIam) -> None:
    stalled: list[str] = []  # every Stalled status read with Verified

    def checked() -> dict[str, Any]:
        return verified_noting_stalled(kube, namespace, NAME, stalled)

    secret(kube, namespace, "scw-key", {"secretKey": SECRET_KEY})
    create_credential(kube, namespace, NAME, provider="SCALEWAY", rotation=AUTOMATIC, scaleway={
        "accessKey": ACCESS_KEY, "secretKeyRef": {"name": "scw-key", "key": "secretKey"},
        "projectId": PROJECT_ID, "organizationId": ORGANIZATION_ID})  # fmt: skip
    create_cluster(kube, namespace, "ext", provider="SCALEWAY", region="fr-par",
                   credentialRef={"name": NAME}, deploy="External")  # fmt: skip
    wait_for(lambda: checked().get("status") == "True", timeout=TIMEOUT, what="verified")
    first_revision = new_revision(kube, namespace, NAME, None)
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": first_revision})
    wait_for(lambda: rotation(kube, namespace).get("nextRotationTime"), timeout=TIMEOUT,
             what="scheduled")  # fmt: skip

    # A forged status changes nothing: written again from the operator's record.
    write_rotation_status(kube, namespace, NAME,
                          {"phase": "Deleting", "previousKeyId": ACCESS_KEY})  # fmt: skip
    wait_for(lambda: rotation(kube, namespace).get("phase") == "Idle"
             and "previousKeyId" not in rotation(kube, namespace),
             timeout=TIMEOUT, what="status rewritten")  # fmt: skip
    assert ACCESS_KEY in fake.keys
    assert deleted(fake) == []

    # The create is refused (the application's key quota) while someone else makes a
    # key for the same application: reported, never touched.
    fake.quota = 1
    ask_rotation(kube, namespace, NAME, "first")
    failing = wait_for(lambda: rotation(kube, namespace).get("reason") == "KeyLimitReached"
                       and rotation(kube, namespace), timeout=TIMEOUT,
                       what="the create refused")  # fmt: skip
    assert failing["phase"] == "Creating"
    fake.add(Key(SOMEONE_ELSES, str(uuid.uuid4()), application_id=APPLICATION_ID,
                 created_at=datetime.datetime.now(datetime.UTC)))  # fmt: skip
    fake.quota = 10
    fake.propagation = 3600  # the new key is refused until the story lets it through

    # The status is lost in the middle of the rotation (a restore without status): it
    # comes back from the record, which alone still knows when the rotation began and
    # what asked for it. (The operator looks again when status.rotation leaves its view,
    # so the refused step is tried again now, not 30 s after the refusal.)
    write_rotation_status(kube, namespace, NAME, None)
    wait_for(lambda: rotation(kube, namespace).get("startedTime") == failing["startedTime"]
             and rotation(kube, namespace).get("requested") == "first",
             timeout=TIMEOUT, what="status.rotation back from the record")  # fmt: skip
    wait_for(lambda: rotation(kube, namespace).get("phase") == "RollingOut", timeout=TIMEOUT,
             what="the new key in use")  # fmt: skip
    second_key = rotation(kube, namespace)["keyId"]
    assert second_key not in (ACCESS_KEY, SOMEONE_ELSES)
    # A key of the tenant's application, made with the admins' key.
    assert fake.keys[second_key].application_id == APPLICATION_ID
    assert {call.caller for call in fake.calls if call.method == "POST"} == {ADMIN_ACCESS_KEY}
    assert "UnknownKeys" in reasons(kube, namespace)
    assert SOMEONE_ELSES in rotation(kube, namespace)["unknownKeyIds"]

    # IAM refuses the new key for a while: Propagating and Reconciling, never Stalled
    # (no alert, no Argo CD Degraded), and nothing rolls out.
    seen = wait_for(lambda: checked().get("reason") == "Propagating" and checked(),
                    timeout=TIMEOUT, what="the new key propagating")  # fmt: skip
    assert seen["status"] == "Unknown", seen
    wait_for(lambda: (condition(get_credential(kube, namespace, NAME), "Reconciling") or {})
             .get("status") == "True", timeout=TIMEOUT,
             what="Reconciling while it propagates")  # fmt: skip
    assert rotation(kube, namespace)["phase"] == "RollingOut"
    fake.keys[second_key].accepted_from = datetime.datetime.now(datetime.UTC)

    # Lost again, now with the new key in use: the credential keeps using it.
    write_rotation_status(kube, namespace, NAME, None)
    wait_for(lambda: rotation(kube, namespace).get("keyId") == second_key, timeout=TIMEOUT,
             what="the key in use back from the record")  # fmt: skip
    second_revision = new_revision(kube, namespace, NAME, first_revision)
    # A propagating key is checked again 5 s after it was refused, then 10 s, ...
    wait_for(lambda: checked().get("status") == "True"
             and checked()["revision"] == second_revision,
             timeout=TIMEOUT, what="the new key accepted")  # fmt: skip
    assert "True" not in stalled, stalled
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": second_revision})
    wait_for(lambda: ACCESS_KEY not in fake.keys, timeout=TIMEOUT, what="the old key deleted")
    wait_for(lambda: "RotationComplete" in reasons(kube, namespace), timeout=TIMEOUT,
             what="the rotation complete")  # fmt: skip
    assert second_key in fake.keys
    assert SOMEONE_ELSES in fake.keys
    held = rotated_secret(kube, namespace, NAME)["secretKey"]
    assert fake.keys[second_key].secret_key == held

    # A second rotation; during its rollout a person points the spec back at the key in
    # use before it. The rotation stops: that key is kept, the rotation's own deleted.
    fake.propagation = 0
    ask_rotation(kube, namespace, NAME, "second")
    wait_for(lambda: rotation(kube, namespace).get("keyId") not in (None, second_key),
             timeout=TIMEOUT, what="the third key in use")  # fmt: skip
    third_key = rotation(kube, namespace)["keyId"]
    third_revision = new_revision(kube, namespace, NAME, second_revision)
    secret(kube, namespace, "back", {"secretKey": held})
    back = {"accessKey": second_key, "secretKeyRef": {"name": "back", "key": "secretKey"}}
    patch_credential(kube, namespace, NAME, {"spec": {"scaleway": back}})
    wait_for(lambda: "RotationStopped" in reasons(kube, namespace), timeout=TIMEOUT,
             what="the rotation stopped")  # fmt: skip
    back_revision = new_revision(kube, namespace, NAME, third_revision)
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": back_revision})
    wait_for(lambda: third_key not in fake.keys, timeout=TIMEOUT,
             what="the rotation's key deleted")  # fmt: skip
    assert set(fake.keys) == {second_key, SOMEONE_ELSES, ADMIN_ACCESS_KEY}
    assert set(deleted(fake)) == {ACCESS_KEY, third_key}
    # Every key was managed with the admins' key, never with a tenant's.
    assert {call.caller for call in fake.calls if call.method != "GET"} == {ADMIN_ACCESS_KEY}
