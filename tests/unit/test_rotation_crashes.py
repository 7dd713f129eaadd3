"""A crash at every write of a rotation, over the fake API.

One scripted rotation (two clusters the operator deploys, a key someone else made on the
same service account) counts the operator's mutating calls: writes to Kubernetes and
the provider's create, deactivate and delete. Then, for each k, the same rotation runs
again and the operator dies right after call k (the call took effect, its answer is
lost, nothing in memory survives, as after a SIGKILL); a new operator starts from what
the API server and the provider hold and is left to converge. Each time:

- no key was deactivated or deleted while the credential or a cluster used it;
- at the end exactly one key is in use, and it is active;
- no key the operator made is left behind, except one whose create answer was lost
  (nothing can tell it from someone else's: it is reported, never deleted);
- the key someone else made is untouched;
- the rotation completes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from cloudcred.providers import gcp
from cloudcred.rotation import effective_spec
from cloudcred.rotation_record import RECORD_FIELD, RECORD_LABEL
from tests.fakekube import Clock, FakeKube, Operator
from tests.unit.test_reconcilers import (
    CRED,
    NS,
    ServiceAccount,
    automatic,
    cluster,
    credential,
    key_file,
    provider_calls,
    rotation_state,
)

MUTATING = (
    "apply_status", "patch_status_guarded", "annotate", "set_secret_labels", "create_secret",
    "replace_secret_data", "create_secret_versioned", "swap_secret_data", "delete_secret",
)  # fmt: skip
DELETE_AFTER = 60.0


class Crash(BaseException):
    """The operator dies here (not an Exception: nothing in the operator catches it)."""


class Calls:
    """Counts mutating calls; raises Crash right after the ``crash_after``-th."""

    def __init__(self, crash_after: int | None) -> None:
        self.count = 0
        self.crash_after = crash_after
        self.names: list[str] = []
        self.after: Callable[[], None] = lambda: None

    def done(self, name: str) -> None:
        self.after()
        self.count += 1
        self.names.append(name)
        if self.count == self.crash_after:
            self.crash_after = None  # the next operator lives
            raise Crash(name)


def count_kube_writes(kube: FakeKube, calls: Calls) -> None:
    for name in MUTATING:
        original = getattr(kube, name)

        def wrapped(*args: Any, _original: Callable[..., Any] = original,
                    _name: str = name, **kwargs: Any) -> Any:  # fmt: skip
            async def call() -> Any:
                result = await _original(*args, **kwargs)
                calls.done(_name)
                return result

            return call()

        setattr(kube, name, wrapped)


def record_state(kube: FakeKube) -> dict[str, Any]:
    """The operator's rotation record, read from the API server's Secrets."""
    for secret in kube.secrets.values():
        if RECORD_LABEL in (secret.get("metadata", {}).get("labels") or {}):
            return dict(json.loads(base64.b64decode(secret["data"][RECORD_FIELD]))["state"])
    return {}


def key_in_effect(kube: FakeKube) -> str:
    """The key the credential uses now: its spec with the record's key in effect."""
    spec = effective_spec(
        kube.body("CloudCredential", CRED)["spec"], {"rotation": record_state(kube)}
    )
    secret = kube.secrets[(NS, spec["gcp"]["serviceAccountKeyRef"]["name"])]
    return str(json.loads(base64.b64decode(secret["data"]["key.json"]))["private_key_id"])


def keys_deployed(kube: FakeKube, revisions: dict[str, str]) -> set[str]:
    """The keys the clusters hold: those of the revisions they report."""
    found = set()
    for (kind, _), body in kube.objects.items():
        deployed = (body.get("status") or {}).get("deployedRevision")
        if kind == "Cluster" and deployed:
            found.add(revisions.get(deployed, "?"))
    return found


async def rotate(kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch,
                 crash_after: int | None) -> tuple[Calls, ServiceAccount, list[str]]:  # fmt: skip
    """The scripted rotation, with a crash after call ``crash_after``; returns the calls,
    the account and every violation seen."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    account.keys.append("other")  # made by someone else on the same service account
    calls = Calls(None)
    violations: list[str] = []
    revisions: dict[str, str] = {}  # revision -> the key it was computed with
    inactive: set[str] = set()
    create, deactivate, delete = account.create_key, account.deactivate_key, account.delete_key

    def guarded(verb: str, key_id: str) -> None:
        in_use = {key_in_effect(kube)} | keys_deployed(kube, revisions)
        if key_id in in_use:
            violations.append(f"{verb} {key_id} while in use ({sorted(in_use)})")
        if key_id == "other":
            violations.append(f"{verb} someone else's key")

    def counted_create(spec: Any, secrets: Any, context: Any) -> Any:
        made = create(spec, secrets, context)
        calls.done("create_key")
        return made

    def counted_deactivate(spec: Any, secrets: Any, context: Any, key_id: str) -> bool:
        guarded("deactivate", key_id)
        inactive.add(key_id)
        deactivate(spec, secrets, context, key_id)
        calls.done("deactivate_key")
        return True

    def counted_delete(spec: Any, secrets: Any, context: Any, key_id: str) -> None:
        guarded("delete", key_id)
        delete(spec, secrets, context, key_id)
        calls.done("delete_key")

    monkeypatch.setattr(gcp, "create_key", counted_create)
    monkeypatch.setattr(gcp, "deactivate_key", counted_deactivate)
    monkeypatch.setattr(gcp, "delete_key", counted_delete)
    count_kube_writes(kube, calls)

    def note_revision() -> None:
        if ("CloudCredential", CRED) not in kube.objects:
            return
        revision = (kube.body("CloudCredential", CRED).get("status") or {}).get("revision")
        if revision and revision not in revisions:
            revisions[revision] = key_in_effect(kube)

    calls.after = note_revision

    settings = {"rotation_delete_after": DELETE_AFTER}
    operator = Operator(kube, clock, **settings)
    credential(kube, key=key_file("k1"), check=True)
    cluster(kube, "eu1", external=False)
    cluster(kube, "eu2", external=False)
    await operator.settle()
    note_revision()
    calls.crash_after = crash_after  # count from the rotate-now on
    calls.count, calls.names = 0, []
    automatic(kube, rotate_now="now")
    for _ in range(30):
        try:
            await operator.settle()
            note_revision()
            await operator.advance(DELETE_AFTER + 1)
            note_revision()
        except Crash:
            operator = Operator(kube, clock, **settings)  # nothing in memory survives
            operator.start_from(kube)
            continue
        state = rotation_state(kube)
        if state.get("phase") == "Idle" and state.get("keyId") and not state.get("previousKeyId"):
            break
    in_use = key_in_effect(kube)
    if in_use in inactive or in_use not in account.keys:
        violations.append(f"the key in use, {in_use}, does not work")
    if rotation_state(kube).get("lastRotationTime") is None:
        violations.append(f"the rotation did not complete: {rotation_state(kube)}")
    return calls, account, violations


def test_a_crash_after_any_call_of_a_rotation_retires_no_key_in_use_and_completes() -> None:
    """The rotation without a crash makes N mutating calls; then N runs, each dying
    right after call k, each checked as the module says."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        kube = FakeKube()
        calls, account, violations = asyncio.run(rotate(kube, Clock(monkeypatch), monkeypatch,
                                                        None))  # fmt: skip
    assert not violations, violations
    script = list(calls.names)
    print(f"a rotation with a rollout to 2 clusters makes {len(script)} mutating calls")
    assert len(script) >= 10, script
    for crash_after in range(1, len(script) + 1):
        with pytest.MonkeyPatch.context() as monkeypatch:
            kube = FakeKube()
            calls, account, violations = asyncio.run(
                rotate(kube, Clock(monkeypatch), monkeypatch, crash_after)
            )
            crashed = calls.names[crash_after - 1]
            where = f"crash after call {crash_after} ({crashed})"
            assert not violations, (where, violations)
            in_use = key_in_effect(kube)
            assert in_use != "k1", where
            left = sorted(set(account.keys) - {in_use, "other"})
            if crashed == "create_key":
                # Its answer lost: nothing tells it from someone else's key. Reported,
                # never deleted.
                assert len(left) <= 1, (where, account.keys)
                reported = " ".join(e[4] for e in kube.recorded.events if e[3] == "UnknownKeys")
                assert all(key in reported for key in left), (where, reported)
            else:
                assert left == [], (where, account.changes)
            assert "other" in account.keys, where


def test_a_key_whose_create_answer_was_lost_is_reported_as_maybe_the_operators() -> None:
    """The operator dies right after the provider made the key, before the answer
    reached it. The next operator cannot tell that key from someone else's: it keeps it
    and reports it by its id, saying that its own create, whose answer was lost, may
    have made it (not that someone else did)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        kube = FakeKube()
        calls, _, _ = asyncio.run(rotate(kube, Clock(monkeypatch), monkeypatch, None))
    create = calls.names.index("create_key") + 1
    with pytest.MonkeyPatch.context() as monkeypatch:
        kube = FakeKube()
        _, account, violations = asyncio.run(rotate(kube, Clock(monkeypatch), monkeypatch,
                                                    create))  # fmt: skip
    assert not violations, violations
    left = sorted(set(account.keys) - {key_in_effect(kube), "other"})
    assert len(left) == 1, account.keys
    reports = [e[4] for e in kube.recorded.events if e[3] == "UnknownKeys"]
    assert len(reports) == 1, reports
    assert left[0] in reports[0]
    assert "other" not in reports[0]  # there before the rotation: not reported
    assert "whose answer was lost" in reports[0], reports[0]
    assert "did not make" not in reports[0], reports[0]
