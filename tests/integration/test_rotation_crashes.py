"""A crash at every write of a rotation, through the running operator.

Two loopback proxies stand between the operator and what it writes to: the API server
(TLS ended and opened again) and moto. They count the operator's mutating calls: POST,
PUT, PATCH and DELETE to the API server (access reviews, which store nothing, left out),
and the IAM actions that change something (CreateAccessKey, UpdateAccessKey,
DeleteAccessKey). One scripted rotation (an AWS key, an External cluster whose deployer
this test plays, rotate-now) without a crash gives N calls. Then for each k the same
story runs again from scratch, and once the server has done the k-th call of that list
(named by what it is and which of its kind it is: the third write of the record, the
first UpdateAccessKey; the controllers' queues run in no fixed order, so its index may
differ) the proxy SIGKILLs the operator before the answer reaches it (the call took
effect; the operator never learned it); a new operator starts and is left to converge.
Each time:

- no key in use (the key the credential's record and spec put in effect, or the key of
  the revision the cluster reports deployed) is ever deactivated or deleted: checked by
  the moto proxy when such a call passes, before moto sees it;
- at the end exactly one key is in use, the cluster's, and a call signed with it works;
- no key the operator made is left behind, and another party's key is untouched. AWS
  holds at most two keys per user, so the other party's key is on another user of the
  account (a rotation of a user holding a key of someone else's cannot make its key);
  on the same user, the key a create made whose answer was lost is the operator's own
  that it cannot tell from a stranger's: it is reported by its id and kept, and this
  test, as a person would, deletes it once reported;
- the rotation completes.

``CLOUDCRED_FAULT_CRASH_POINTS=all`` (``make test-long``) runs every k; by default three:
the first call, one in the middle and the last.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from cloudcred.constants import MANAGED_BY_LABEL
from cloudcred.rotation import effective_spec
from cloudcred.rotation_record import RECORD_FIELD, RECORD_PREFIX, record_name
from tests.aws import AwsKey, Moto
from tests.conftest import Kube
from tests.integration.test_rotation import keys_at_moto, works
from tests.operator import OperatorProcess, Operators, wait_for
from tests.proxy import LoopbackProxy, Tls, kubeconfig_via
from tests.resources import (
    condition,
    create_cluster,
    events_for,
    get_cluster,
    get_credential,
    marked,
    new_revision,
    patch_cluster_status,
    secret,
    static_key_credential,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ALL_POINTS = os.environ.get("CLOUDCRED_FAULT_CRASH_POINTS") == "all"
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# POSTs that store nothing: the operator's access reviews.
REVIEWS = ("/apis/authorization.k8s.io/", "/apis/authentication.k8s.io/")
AWS_WRITES = ("Create", "Update", "Delete", "Put", "Attach", "Detach", "Tag", "Untag")
OPERATOR_NAMESPACE = "default"  # where the tests' operators keep their rotation records
CONVERGE = 120.0  # seconds a run may take from rotate-now to the rotation done


def api_call(request: str) -> str | None:
    """A mutating call to the API server, as ``METHOD path`` (the namespace left out)."""
    method, target, _ = request.split("\r\n", 1)[0].split(" ", 2)
    path = urlparse(target).path
    if method not in WRITES or path.startswith(REVIEWS):
        return None
    parts = path.split("/")
    if "namespaces" in parts[:-1]:
        parts[parts.index("namespaces") + 1] = "NS"
    if parts[-1].startswith(RECORD_PREFIX):
        parts[-1] = f"{RECORD_PREFIX}RECORD"
    parts[-1] = re.sub(r"-key-[0-9a-f]{10}$", "-key-KEY", parts[-1])  # a key's own Secret
    return f"{method} {'/'.join(parts)}"


def aws_form(request: str) -> dict[str, str]:
    body = request.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in request else ""
    return {name: values[0] for name, values in parse_qs(body).items()}


def aws_call(request: str) -> str | None:
    """A mutating AWS call, as ``Action [Status]`` (key ids differ from run to run)."""
    form = aws_form(request)
    action = form.get("Action", "")
    if not action.startswith(AWS_WRITES):
        return None
    return " ".join(part for part in (action, form.get("Status")) if part)


class Calls:
    """The operator's mutating calls, as the proxies see their answers (on the proxies'
    threads); the one ``crash`` picks (by its name and which of that name it is, from 1)
    kills the operator before its answer goes on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list[str] = []
        self.last = time.monotonic()
        self.crash: Callable[[str, int], bool] = lambda name, nth: False
        self.victim: OperatorProcess | None = None
        self.killed_after: str | None = None
        self.killed = threading.Event()

    def begin(self, crash: Callable[[str, int], bool]) -> None:
        with self.lock:
            self.names, self.crash, self.killed_after = [], crash, None
            self.killed.clear()

    def answered(self, name: str | None) -> bool:
        if name is None:
            return True
        with self.lock:
            self.names.append(name)
            self.last = time.monotonic()
            if self.victim is None or not self.crash(name, self.names.count(name)):
                return True
            self.victim.kill()  # SIGKILL, and waited for: it never reads this answer
            self.crash = lambda name, nth: False  # the next operator lives
            self.killed_after = f"call {len(self.names)} ({name})"
            self.killed.set()
            return False

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last >= seconds


@dataclass
class Harness:
    kube: Kube
    moto: Moto
    operators: Operators
    folder: Path
    calls: Calls
    kubeconfig: Path
    aws_endpoint: str
    bystander: AwsKey
    violations: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)  # keys the operator deactivated or deleted
    # What the moto proxy checks a retiring call against: the run's credential.
    watched: Run | None = None

    def check_retiring(self, request: str) -> float:
        """The moto proxy's look at each request before moto sees it."""
        form = aws_form(request)
        action, key_id = form.get("Action"), form.get("AccessKeyId")
        retiring = action == "DeleteAccessKey" or (
            action == "UpdateAccessKey" and form.get("Status") == "Inactive"
        )  # fmt: skip
        run = self.watched
        if retiring and key_id:
            self.retired.append(key_id)
        if retiring and key_id and run is not None:
            if key_id == self.bystander.access_key_id:
                self.violations.append(f"{action} of another party's key")
            in_use = run.keys_in_use()
            if key_id in in_use:
                self.violations.append(f"{action} {key_id} while in use ({sorted(in_use)})")
        return 0.0


@dataclass
class Run:
    """One scripted rotation in a namespace of its own, with its own IAM user."""

    harness: Harness
    namespace: str
    user: AwsKey
    operator: OperatorProcess | None = None
    revisions: dict[str, str] = field(default_factory=dict)  # revision -> its key's id
    deleted_by_hand: list[str] = field(default_factory=list)

    @property
    def kube(self) -> Kube:
        return self.harness.kube

    def record(self) -> dict[str, Any]:
        """The operator's rotation record of the credential (its state)."""
        try:
            found = self.kube.core.read_namespaced_secret(
                record_name(self.namespace, "auto"), OPERATOR_NAMESPACE)  # fmt: skip
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise
        return dict(json.loads(base64.b64decode((found.data or {})[RECORD_FIELD])))

    def key_in_effect(self) -> str:
        body = get_credential(self.kube, self.namespace, "auto") or {}
        spec = effective_spec(body["spec"], {"rotation": self.record().get("state") or {}})
        return str(spec["aws"]["accessKeyId"])

    def deployed_key(self) -> str | None:
        revision = (get_cluster(self.kube, self.namespace, "ext").get("status") or {}).get(
            "deployedRevision")  # fmt: skip
        return self.revisions.get(revision) if revision else None

    def keys_in_use(self) -> set[str]:
        return {self.key_in_effect(), *(key for key in [self.deployed_key()] if key)}

    def start_operator(self) -> None:
        self.operator = self.harness.operators.start(
            self.namespace, kubeconfig=self.harness.kubeconfig, name=f"{self.namespace}",
            env={"AWS_ENDPOINT_URL": self.harness.aws_endpoint,
                 "CLOUDCRED_ROTATION_DELETE_AFTER": "1"},
        )  # fmt: skip
        self.harness.calls.victim = self.operator

    def note_revision(self) -> None:
        """Which key a revision was computed with: the verification writes the two
        together."""
        status = (get_credential(self.kube, self.namespace, "auto") or {}).get("status") or {}
        if status.get("revision") and status.get("publicId"):
            self.revisions.setdefault(status["revision"], status["publicId"])

    def deploy(self) -> None:
        """The External cluster's deployer: it deploys the revision it is marked with."""
        cluster = get_cluster(self.kube, self.namespace, "ext")
        mark = marked(cluster)
        if mark and mark in self.revisions and mark != (cluster.get("status") or {}).get(
                "deployedRevision"):  # fmt: skip
            patch_cluster_status(self.kube, self.namespace, "ext", {"deployedRevision": mark})

    def delete_reported_strays(self) -> None:
        """A key on the user that the operator has reported by its id (a Warning Event
        and status.rotation.unknownKeyIds) and that nothing uses: a person deletes it."""
        record = self.record()
        state = record.get("state") or {}
        own = {self.user.access_key_id, state.get("keyId"), state.get("pendingKeyId"),
               *(record.get("made") or [])}  # fmt: skip
        strays = [key for key in keys_at_moto(self.harness.moto, self.user.user) if key not in own]
        if not strays:
            return
        reported = " ".join(e.message or "" for e in events_for(self.kube, self.namespace, "auto")
                            if e.reason == "UnknownKeys" and e.type == "Warning")  # fmt: skip
        shown = (((get_credential(self.kube, self.namespace, "auto") or {}).get("status") or {})
                 .get("rotation") or {}).get("unknownKeyIds") or []  # fmt: skip
        for stray in strays:
            if stray in reported and stray in shown:
                self.harness.moto.client("iam").delete_access_key(UserName=self.user.user,
                                                                  AccessKeyId=stray)  # fmt: skip
                self.deleted_by_hand.append(stray)

    def done(self) -> bool:
        state = self.record().get("state") or {}
        new = state.get("keyId")
        return bool(
            state.get("phase") == "Idle" and state.get("lastRotationTime") and new
            and not state.get("previousKeyId")
            and keys_at_moto(self.harness.moto, self.user.user) == {new: "Active"}
            and self.deployed_key() == new
        )  # fmt: skip


def setup_run(harness: Harness) -> Run:
    """A user with one key, a credential under Automatic rotation using it, an External
    cluster that deployed it, and an operator that has settled."""
    namespace = f"own-{uuid.uuid4().hex[:10]}"
    harness.kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))  # fmt: skip
    kube = harness.kube
    run = Run(harness, namespace, harness.moto.create_user(f"crash-{uuid.uuid4().hex[:8]}"))
    secret(kube, namespace, "keys", {"secretAccessKey": run.user.secret_access_key})
    static_key_credential(kube, namespace, "auto", run.user.access_key_id, "keys",
                          rotation={"policy": "Automatic", "maxAge": "90d", "gracePeriod": "1s"},
                          rollout={"maxConcurrent": "100%"})  # fmt: skip
    create_cluster(kube, namespace, "ext", provider="AWS", region="eu-west-3",
                   credentialRef={"name": "auto"}, deploy="External")  # fmt: skip
    harness.watched = run
    run.start_operator()
    first = new_revision(kube, namespace, "auto", None)
    wait_for(lambda: run.note_revision() or first in run.revisions, what="the first revision")
    patch_cluster_status(kube, namespace, "ext", {"deployedRevision": first})

    def settled() -> bool:
        body = get_credential(kube, namespace, "auto")
        return bool(
            (condition(body, "Verified") or {}).get("status") == "True"
            and (condition(body, "RolloutComplete") or {}).get("status") == "True"
            and ((body or {}).get("status") or {}).get("rotation", {}).get("nextRotationTime")
            and harness.calls.quiet_for(1.5)
        )  # fmt: skip

    wait_for(settled, timeout=60, what="the operator settled before the rotation")
    return run


def rotate(harness: Harness, crash: Callable[[str, int], bool]) -> Run:
    """The scripted rotation, crashing where ``crash`` says; the run once converged."""
    run = setup_run(harness)
    harness.calls.begin(crash)
    kube = harness.kube
    kube.custom.patch_namespaced_custom_object(
        "cloudcred.io", "v1alpha1", run.namespace, "cloudcredentials", "auto",
        {"metadata": {"annotations": {"cloudcred.io/rotate-now": "crash"}}})  # fmt: skip
    deadline = time.monotonic() + CONVERGE
    restarted = False
    try:
        while not run.done():
            assert time.monotonic() < deadline, (
                f"no convergence in {CONVERGE:.0f}s (killed after "
                f"{harness.calls.killed_after}): {run.record()}, "
                f"{keys_at_moto(harness.moto, run.user.user)}"
            )
            if harness.calls.killed.is_set() and not restarted:
                run.start_operator()  # nothing the dead one had in memory survives
                restarted = True
            run.note_revision()
            run.deploy()
            run.delete_reported_strays()
            time.sleep(0.2)
    finally:
        harness.watched = None
        if run.operator is not None:
            run.operator.stop()
    return run


def check(harness: Harness, run: Run, where: str) -> None:
    """Every invariant of the module's list, at the end of a run."""
    assert not harness.violations, (where, harness.violations)
    state = run.record()["state"]
    new = state["keyId"]
    assert new != run.user.access_key_id, where
    assert run.key_in_effect() == new == run.deployed_key(), where
    held = run.kube.core.read_namespaced_secret(state["secretName"], run.namespace).data or {}
    key = AwsKey(run.user.user, new, base64.b64decode(held["secretAccessKey"]).decode())
    assert works(harness.moto, key), where
    assert not works(harness.moto, run.user), where  # the old key is gone
    assert keys_at_moto(harness.moto, run.user.user) == {new: "Active"}, where
    # Nor a Secret of the operator's for a key that is gone.
    made = run.kube.core.list_namespaced_secret(
        run.namespace, label_selector=f"{MANAGED_BY_LABEL}=cloudcred").items  # fmt: skip
    assert [found.metadata.name for found in made] == [state["secretName"]], where
    assert keys_at_moto(harness.moto, harness.bystander.user) == {
        harness.bystander.access_key_id: "Active"}, where  # fmt: skip
    log = run.operator.log() if run.operator else ""
    assert "Traceback" not in log, where
    assert run.user.secret_access_key not in log, where
    assert key.secret_access_key not in log, where


@pytest.fixture
def harness(kube: Kube, moto: Moto, operators: Operators, tmp_path: Path) -> Iterator[Harness]:
    if kube.plane is None:
        pytest.skip("the proxy ends the local control plane's TLS with its certificates")
    calls = Calls()
    holder: list[Harness] = []
    api = LoopbackProxy("127.0.0.1", kube.plane.port, tls=Tls.of_control_plane(kube.plane.pki),
                        answered=lambda request, status: calls.answered(api_call(request)),
                        lifetime=3600).start()  # fmt: skip
    endpoint = urlparse(moto.endpoint)
    aws = LoopbackProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80,
                        hold=lambda request: holder[0].check_retiring(request), hold_bodies=True,
                        answered=lambda request, status: calls.answered(aws_call(request)),
                        lifetime=3600).start()  # fmt: skip
    # Another party's user in the same account, with a key of its own.
    bystander = moto.create_user(f"other-{uuid.uuid4().hex[:8]}")
    holder.append(Harness(kube, moto, operators, tmp_path, calls,
                          kubeconfig_via(kube.kubeconfig, api.url, tmp_path / "kubeconfig"),
                          aws.url, bystander))  # fmt: skip
    try:
        yield holder[0]
    finally:
        api.stop()
        aws.stop()


def sample(count: int) -> list[int]:
    """The crash points to run: all, or the first, one in the middle and the last."""
    return list(range(1, count + 1)) if ALL_POINTS else sorted({1, (count + 1) // 2, count})


# Every crash point: about 20 s each, for 44 to 46 of them.
@pytest.mark.timeout(3600 if ALL_POINTS else 600)
def test_a_crash_after_any_write_of_a_rotation_retires_no_key_in_use_and_completes(
    harness: Harness,
) -> None:
    started = time.monotonic()
    counted = rotate(harness, lambda name, nth: False)
    check(harness, counted, "without a crash")
    script = list(harness.calls.names)
    assert any(name.startswith("CreateAccessKey") for name in script), script
    assert any(name.startswith("DeleteAccessKey") for name in script), script
    print(f"\na rotation with a rollout makes N = {len(script)} mutating calls:")
    for index, name in enumerate(script, 1):
        print(f"  {index:3d} {name}")
    for k in sample(len(script)):
        target, nth = script[k - 1], script[:k].count(script[k - 1])
        run = rotate(harness, lambda name, count, target=target, nth=nth: (name, count) == (
            target, nth))  # fmt: skip
        where = (f"k={k}, {target} #{nth}: crash after "
                 f"{harness.calls.killed_after or 'no call: not reached'}")  # fmt: skip
        print(f"{where}; deleted by hand after the report: {run.deleted_by_hand}")
        check(harness, run, where)
    print(f"{len(sample(len(script)))} of N = {len(script)} crash points in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip


def test_a_create_whose_answer_is_lost_leaves_a_key_reported_by_its_id(
    harness: Harness,
) -> None:
    """The operator dies after moto made the key and before the answer reaches it: the
    key is nowhere in the operator's record. The next operator reports it by its id (a
    Warning Event that says a create of its own whose answer was lost may have made it,
    and status.rotation.unknownKeyIds), never deletes it, and once a person deleted it
    the rotation completes."""
    run = rotate(harness, lambda name, nth: (name, nth) == ("CreateAccessKey", 1))
    assert harness.calls.killed_after, harness.calls.names
    assert len(run.deleted_by_hand) == 1, run.deleted_by_hand
    orphan = run.deleted_by_hand[0]
    reports = [e for e in events_for(harness.kube, run.namespace, "auto")
               if e.reason == "UnknownKeys"]  # fmt: skip
    assert [e.type for e in reports] == ["Warning"], reports
    assert orphan in (reports[0].message or "")
    assert "whose answer was lost" in (reports[0].message or ""), reports[0].message
    assert orphan not in (run.record().get("made") or [])
    assert orphan not in harness.retired, harness.retired
    check(harness, run, "a lost create answer")
