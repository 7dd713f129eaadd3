"""Every decision of the controllers, in milliseconds: the real wiring, queues and
reconcilers over a fake Kubernetes (``tests/fakekube.py``) and a fake clock.

The credentials are GCP keys whose check is turned off (``spec.verification``), so
the real verification controller computes their revision without asking Google; a
new key in their Secret is a new revision. An external deployer is played by
writing ``deployedRevision``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.rest import ApiException
from pydantic import SecretStr

from cloudcred import conditions, rotation
from cloudcred.api.credential import MAX_LISTED_CLUSTERS, RotationStatus
from cloudcred.constants import (
    DELIVERED_REVISION_ANNOTATION,
    EXPIRES_ANNOTATION,
    IN_USE_LABEL,
    MANAGED_BY_LABEL,
    REDEPLOY_ANNOTATION,
    ROLLOUT_PAUSED_ANNOTATION,
)
from cloudcred.kube import Conflict, NotFound
from cloudcred.providers import aws, gcp
from cloudcred.providers.base import (
    Delivery,
    KeyFacts,
    NewKey,
    PermissionAnswer,
    Reason,
    RotationError,
    RotationReason,
    Verification,
    VerificationError,
)
from tests.fakekube import Clock, FakeKube, Operator

NS = "acme"
CRED = (NS, "prod")


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


KEY = '{"type": "service_account", "client_email": "cc@p.iam.gserviceaccount.com"}'


def credential(
    kube: FakeKube, max_concurrent: int | str = "25%", key: str = KEY, check: bool = False
) -> None:
    spec = {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "sa", "key": "key.json"}},
            "rollout": {"maxConcurrent": max_concurrent},
            "verification": {"enabled": check}}  # fmt: skip
    new_key(kube, key)
    kube.put("CloudCredential", {"metadata": {"namespace": NS, "name": "prod"}, "spec": spec})


def new_key(kube: FakeKube, key: str) -> None:
    """A new key in the credential's Secret: a new revision."""
    kube.put_secret(NS, "sa", {"key.json": base64.b64encode(key.encode()).decode()})


def revision(kube: FakeKube) -> str:
    found = kube.body("CloudCredential", CRED)["status"].get("revision")
    assert found, "the verification controller computed no revision"
    return str(found)


def cluster(kube: FakeKube, name: str, *, deployed: str | None = None, external: bool = True,
            credential_name: str = "prod", provider: str = "GCP",
            secret: str | None = None) -> None:  # fmt: skip
    spec: dict[str, Any] = {"provider": provider, "region": "europe-west1",
                            "credentialRef": {"name": credential_name},
                            "deploy": "External" if external else "Operator"}  # fmt: skip
    if secret:
        spec["credentialsSecret"] = {"name": secret}
    status = {"deployedRevision": deployed} if deployed else {}
    kube.put("Cluster", {"metadata": {"namespace": NS, "name": name}, "spec": spec,
                         "status": status})  # fmt: skip


def deploy(kube: FakeKube, name: str, revision: str) -> None:
    """An external deployer records its deployment."""
    body = kube.body("Cluster", (NS, name))
    body["status"]["deployedRevision"] = revision
    kube.put("Cluster", body)


def find(kube: FakeKube, kind: str, name: str, type_: str) -> dict[str, Any]:
    found = conditions.find(kube.body(kind, (NS, name))["status"].get("conditions"), type_)
    assert found is not None, f"{kind} {name} has no {type_}"
    return found


def marked(kube: FakeKube) -> dict[str, str | None]:
    return {key[1]: (body["metadata"].get("annotations") or {}).get(REDEPLOY_ANNOTATION)
            for (kind, key), body in sorted(kube.objects.items()) if kind == "Cluster"}  # fmt: skip


async def deployed_fleet(
    kube: FakeKube, operator: Operator, names: str, max_concurrent: int | str
) -> str:
    """The credential, checked, and a cluster per letter of ``names`` deployed with its
    revision, which is returned."""
    credential(kube, max_concurrent=max_concurrent)
    await operator.settle()
    first = revision(kube)
    for name in names:
        cluster(kube, name, deployed=first)
    await operator.settle()
    return first


def forge_condition(kube: FakeKube, type_: str, **fields: str) -> dict[str, Any]:
    """The credential's body with condition ``type_`` rewritten as a tenant with the
    status subresource would (not yet put back)."""
    body = kube.body("CloudCredential", CRED)
    body["status"]["conditions"] = [{**c, **fields} if c["type"] == type_ else c
                                    for c in body["status"]["conditions"]]  # fmt: skip
    return body


# -- binding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credential_name", "provider", "bound", "reason"),
    [
        ("prod", "GCP", "True", "Bound"),
        ("missing", "GCP", "False", "CredentialNotFound"),
        ("prod", "AWS", "False", "ProviderMismatch"),
    ],
)
@run
async def test_a_cluster_binds_or_says_why_not(
    kube: FakeKube, clock: Clock, credential_name: str, provider: str, bound: str, reason: str
) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    cluster(kube, "eu", credential_name=credential_name, provider=provider)
    await operator.settle()
    condition = find(kube, "Cluster", "eu", "CredentialBound")
    assert (condition["status"], condition["reason"]) == (bound, reason)
    listed = kube.body("CloudCredential", CRED)["status"]["clusters"]
    assert listed == ([{"namespace": NS, "name": "eu"}] if bound == "True" else [])


@run
async def test_what_a_watch_missed_is_repaired_by_the_next_list(
    kube: FakeKube, clock: Clock
) -> None:
    """The credential's watch misses two events (a spec edit and, later, the deletion):
    the operator's caches keep the old view until the periodic LIST, which takes in the
    difference and queues what it concerns; the cluster then says why it is unbound."""
    operator = Operator(kube, clock)
    credential(kube)
    cluster(kube, "eu")
    await operator.settle()
    assert find(kube, "Cluster", "eu", "CredentialBound")["status"] == "True"
    listen = kube.on_change
    kube.on_change = lambda *_: None  # the watch drops what follows
    body = kube.body("CloudCredential", CRED)
    body["spec"]["provider"] = "AWS"
    body["spec"]["aws"] = {"roleArn": "arn:aws:iam::123456789012:role/deployer"}
    del body["spec"]["gcp"]
    kube.put("CloudCredential", body)
    kube.on_change = listen
    await operator.settle()
    assert find(kube, "Cluster", "eu", "CredentialBound")["status"] == "True"  # not seen
    await operator.controllers.listers[0].relist()
    await operator.settle()
    condition = find(kube, "Cluster", "eu", "CredentialBound")
    assert (condition["status"], condition["reason"]) == ("False", "ProviderMismatch")

    kube.on_change = lambda *_: None
    kube.remove("CloudCredential", CRED)
    kube.on_change = listen
    await operator.controllers.listers[0].relist()
    await operator.settle()
    condition = find(kube, "Cluster", "eu", "CredentialBound")
    assert (condition["status"], condition["reason"]) == ("False", "CredentialNotFound")


@run
async def test_a_credential_lists_2000_clusters_and_counts_every_one(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status.clusters stops at MAX_LISTED_CLUSTERS, clusterCount does not, and a cluster
    beyond the list still gets its first deployment (the list is cut, not the binding)."""
    provider_calls(monkeypatch)
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    for index in range(MAX_LISTED_CLUSTERS + 1):
        cluster(kube, f"c{index:05d}", deployed=revision(kube))
    await operator.settle()
    await operator.advance(5)  # the credential's pacing
    status = kube.body("CloudCredential", CRED)["status"]
    assert status["clusterCount"] == MAX_LISTED_CLUSTERS + 1
    assert len(status["clusters"]) == MAX_LISTED_CLUSTERS
    assert status["clustersTruncated"] is True
    cluster(kube, "z-late", external=False)  # sorts after every listed one
    await operator.settle()
    await operator.advance(5)
    status = kube.body("CloudCredential", CRED)["status"]
    assert status["clusterCount"] == MAX_LISTED_CLUSTERS + 2
    assert {"namespace": NS, "name": "z-late"} not in status["clusters"]
    assert kube.body("Cluster", (NS, "z-late"))["status"]["deployedRevision"] == revision(kube)


@run
async def test_a_cluster_in_another_namespace_binds_only_where_admitted(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["allowedNamespaces"] = {"matchLabels": {"team": "platform"}}
    kube.put("CloudCredential", body)
    operator.label_namespace("other", {"team": "web"})
    kube.put("Cluster", {"metadata": {"namespace": "other", "name": "eu"},
                         "spec": {"provider": "GCP", "region": "r", "deploy": "External",
                                  "credentialRef": {"name": "prod", "namespace": NS}}})  # fmt: skip
    await operator.settle()
    bound = conditions.find(kube.body("Cluster", ("other", "eu"))["status"]["conditions"],
                            "CredentialBound")  # fmt: skip
    assert bound is not None
    assert bound["reason"] == "NamespaceNotAllowed"
    # The namespace's labels change: the cluster and the credential decide again.
    operator.label_namespace("other", {"team": "platform"})
    await operator.settle()
    bound = conditions.find(kube.body("Cluster", ("other", "eu"))["status"]["conditions"],
                            "CredentialBound")  # fmt: skip
    assert bound is not None
    assert bound["status"] == "True"
    assert kube.body("CloudCredential", CRED)["status"]["clusterCount"] == 1


# -- rollout: marks, pacing, pause, block ----------------------------------------------


@run
async def test_a_new_revision_reconciles_each_cluster_once_and_marks_within_the_limit(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    v1 = await deployed_fleet(kube, operator, "abcde", max_concurrent=2)
    assert find(kube, "CloudCredential", "prod", "RolloutComplete")["status"] == "True"
    runs = dict(operator.controllers.clusters.runs)

    new_key(kube, KEY.replace("cc@", "cc2@"))
    await operator.settle()
    v2 = revision(kube)
    assert v2 != v1
    again = {
        key: count - runs.get(key, 0) for key, count in operator.controllers.clusters.runs.items()
    }
    assert again == {(NS, name): 1 for name in "abcde"}
    assert marked(kube) == {"a": v2, "b": v2, "c": None, "d": None, "e": None}
    assert find(kube, "Cluster", "a", "RedeployPending")["message"].endswith(
        "waiting for the external deployer to redeploy"
    )
    assert "queued: at most 2" in find(kube, "Cluster", "c", "RedeployPending")["message"]
    rollout = kube.body("CloudCredential", CRED)["status"]["rollout"]
    assert rollout == {"revision": v2, "updated": 0, "total": 5}

    # The deployer redeploys a: the next in line is marked; no more than 2 at a time.
    # (The credential follows its clusters' changes at most once per pacing interval.)
    deploy(kube, "a", v2)
    await operator.settle()
    assert marked(kube)["c"] is None
    assert operator.timers()["credentials"][CRED] > 0
    await operator.advance(1)
    assert marked(kube) == {"a": v2, "b": v2, "c": v2, "d": None, "e": None}
    for name in "bcde":
        deploy(kube, name, v2)
        await operator.advance(1)
    complete = find(kube, "CloudCredential", "prod", "RolloutComplete")
    assert complete["status"] == "True"
    assert "can be deleted at the provider" in complete["message"]


@run
async def test_a_forged_complete_rollout_is_written_again_from_the_clusters(
    kube: FakeKube, clock: Clock
) -> None:
    """A tenant who may patch cloudcredentials/status writes a complete rollout (what
    tells a person rotating by hand that the old key may go): the credential's
    reconciler writes what the clusters show again, within its pacing interval."""
    operator = Operator(kube, clock)
    await deployed_fleet(kube, operator, "ab", max_concurrent=1)
    new_key(kube, KEY.replace("cc@", "cc2@"))
    await operator.settle()
    v2 = revision(kube)
    honest = kube.body("CloudCredential", CRED)["status"]["rollout"]
    assert honest == {"revision": v2, "updated": 0, "total": 2}
    body = forge_condition(kube, "RolloutComplete", status="True", reason="RolloutComplete",
                           message="forged")  # fmt: skip
    body["status"]["rollout"] = {"revision": v2, "updated": 2, "total": 2}
    kube.put("CloudCredential", body)
    await operator.settle()
    await operator.advance(1)
    assert kube.body("CloudCredential", CRED)["status"]["rollout"] == honest
    assert find(kube, "CloudCredential", "prod", "RolloutComplete")["status"] == "False"


@run
async def test_a_mark_seen_after_the_plan_still_costs_one_cluster_reconcile(
    kube: FakeKube, clock: Clock
) -> None:
    """Clusters and CloudCredentials come by different watches: the marks' echoes may
    arrive after the plan's publication. A cluster whose mark is on its way waits for
    it instead of being reconciled for the plan and again for the mark."""
    operator = Operator(kube, clock)
    await deployed_fleet(kube, operator, "abc", max_concurrent="100%")
    runs = dict(operator.controllers.clusters.runs)
    held: list[tuple[str, Any, Any]] = []
    deliver = kube.on_change

    def lagging(kind: str, key: Any, body: Any) -> None:
        if kind == "Cluster":
            held.append((kind, key, body))
        else:
            deliver(kind, key, body)

    kube.on_change = lagging
    new_key(kube, KEY.replace("cc@", "cc2@"))
    await operator.settle()
    v2 = revision(kube)
    assert kube.body("CloudCredential", CRED)["status"]["rollout"]["revision"] == v2
    assert held, "the marks' echoes are still on their way"
    kube.on_change = deliver
    for event in held:
        deliver(*event)
    await operator.settle()
    again = {key: n - runs.get(key, 0) for key, n in operator.controllers.clusters.runs.items()}
    assert again == {(NS, name): 1 for name in "abc"}
    for name in "abc":
        assert find(kube, "Cluster", name, "RedeployPending")["message"].endswith(
            "waiting for the external deployer to redeploy"
        )


@run
async def test_a_paused_rollout_marks_nothing_until_resumed(kube: FakeKube, clock: Clock) -> None:
    operator = Operator(kube, clock)
    await deployed_fleet(kube, operator, "ab", max_concurrent="100%")
    body = kube.body("CloudCredential", CRED)
    body["metadata"]["annotations"] = {ROLLOUT_PAUSED_ANNOTATION: "true"}
    kube.put("CloudCredential", body)
    new_key(kube, KEY.replace("cc@", "cc2@"))
    await operator.settle()
    assert marked(kube) == {"a": None, "b": None}
    assert "paused" in find(kube, "Cluster", "a", "RedeployPending")["message"]
    assert find(kube, "CloudCredential", "prod", "Reconciling")["reason"] == "RolloutPaused"

    body = kube.body("CloudCredential", CRED)
    body["metadata"]["annotations"] = {}
    kube.put("CloudCredential", body)
    await operator.settle()
    assert marked(kube) == {"a": revision(kube), "b": revision(kube)}


@run
async def test_a_key_that_fails_its_check_is_not_rolled_out(kube: FakeKube, clock: Clock) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    v1 = revision(kube)
    cluster(kube, "a", deployed=v1)
    await operator.settle()
    body = kube.body("CloudCredential", CRED)
    body["spec"]["verification"] = {"enabled": True}
    kube.put("CloudCredential", body)
    new_key(kube, "{not a key file")
    await operator.settle()
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert verified["status"] == "False"
    v2 = revision(kube)
    assert v2 != v1
    assert marked(kube) == {"a": None}
    pending = find(kube, "Cluster", "a", "RedeployPending")
    assert pending["reason"] == "RolloutBlocked"
    assert f"keeping the deployment of revision {v1}" in pending["message"]
    blocked = kube.body("CloudCredential", CRED)["status"]["rollout"]["blocked"]
    assert blocked.startswith(f"revision {v2} is not rolled out")


# -- verification: when it checks, and writes that cannot go back in time ---------------


@run
async def test_a_check_overtaken_by_an_edit_is_not_written_and_the_edit_is_checked(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    assert kube.body("CloudCredential", CRED)["status"]["observedGeneration"] == 1

    def edit() -> None:  # lands while the check of generation 2 is under way
        body = kube.body("CloudCredential", CRED)
        body["spec"]["description"] = "edited during the check"
        kube.put("CloudCredential", body)

    body = kube.body("CloudCredential", CRED)
    body["spec"]["rollout"] = {"maxConcurrent": 1}
    kube.put("CloudCredential", body)
    kube.before("read_credential", edit)
    writes = len(kube.recorded.of("apply_status", "CloudCredential"))
    await operator.settle()
    verifier = [w.detail[1] for w in kube.recorded.of("apply_status", "CloudCredential")[writes:]
                if w.detail[0] == "cloudcred-verifier"]  # fmt: skip
    assert [status["observedGeneration"] for status in verifier] == [3]
    assert kube.body("CloudCredential", CRED)["status"]["observedGeneration"] == 3


@run
async def test_a_conflicting_write_is_read_again_not_checked_again(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    kube.fail("apply_status", Conflict("CloudCredential acme/prod"))
    reads = []
    kube.before("read_secret_data", lambda: reads.append(1))
    kube.before("read_secret_data", lambda: reads.append(2))
    await operator.settle()
    assert reads == [1], "one check: the conflict re-reads the object, not the provider"
    assert revision(kube)


@run
async def test_checks_follow_the_interval_and_back_off_after_transient_failures(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock, retry_max_delay=300)
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["verification"]["interval"] = "10m"
    kube.put("CloudCredential", body)
    await operator.settle()
    assert 539.5 <= operator.timers()["verification"][CRED] <= 660  # 10 min ± 10 %
    # The Secret goes away: SecretNotFound, checked again after 5 s, then 60 s.
    del kube.secrets[(NS, "sa")]
    kube.on_change("Secret", (NS, "sa"), None)
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "SecretNotFound"
    assert operator.timers()["verification"][CRED] == pytest.approx(5, abs=0.1)
    await operator.advance(2)
    assert operator.timers()["verification"][CRED] == pytest.approx(3, abs=0.1), "not due yet"
    await operator.advance(3.1)
    assert operator.timers()["verification"][CRED] == pytest.approx(60, abs=0.1)
    # It comes back (unlabelled, so no watch sees it): found at the next retry, and the
    # checks go back to the interval.
    new_key(kube, KEY)
    await operator.advance(60.1)
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "VerificationDisabled"
    assert 539.5 <= operator.timers()["verification"][CRED] <= 660


@run
async def test_with_a_default_deny_a_namespace_no_boundary_selects_uses_nothing(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLOUDCRED_BOUNDARY_DEFAULT=Deny: a credential in a namespace that no
    CredentialBoundary selects is OutsideBoundary and the provider is never asked; a
    boundary that selects the namespace and allows it lets it be checked."""
    calls = provider_calls(monkeypatch)
    operator = Operator(kube, clock, boundary_default="Deny")
    credential(kube, check=True)
    await operator.settle()
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert (verified["status"], verified["reason"]) == ("False", "OutsideBoundary")
    assert f"no CredentialBoundary selects namespace {NS}" in verified["message"]
    assert "CLOUDCRED_BOUNDARY_DEFAULT=Deny" in verified["message"]
    assert "verify" not in calls

    operator.label_namespace(NS, {"team": "a"})
    operator.put_boundary("team-a", {"namespaceSelector": {"matchLabels": {"team": "a"}},
                                     "gcp": {}})  # fmt: skip
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "Verified"
    assert calls.count("verify") == 1


BROKEN = 100  # credentials pointing at a Secret that does not exist


@run
async def test_broken_credentials_cost_a_bounded_load_and_nothing_under_the_one_minute_floor(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant's credentials whose Secret is missing (one of them under automatic
    rotation, which waits for it to verify) during an hour: each is checked once 5 s
    after the first failure (a Secret applied together with its credential), then no
    more often than once a minute, backing off to CLOUDCRED_RETRY_MAX_DELAY; a check
    that changes nothing writes nothing; the rotation does not poll. The API calls and
    checks per credential-hour are printed (``-s``)."""
    calls = provider_calls(monkeypatch)
    operator = Operator(kube, clock, retry_max_delay=300)
    spec = {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {"name": "gone", "key": "k"}}}
    for index in range(BROKEN):
        kube.put("CloudCredential", {"metadata": {"namespace": NS, "name": f"broken-{index}"},
                                     "spec": copy.deepcopy(spec)})  # fmt: skip
    rotating = copy.deepcopy(spec)
    rotating["rotation"] = {"policy": "Automatic", "maxAge": "90d"}
    kube.put("CloudCredential", {"metadata": {"namespace": NS, "name": "rotating"},
                                 "spec": rotating})  # fmt: skip
    await operator.settle()
    first = find(kube, "CloudCredential", "broken-0", "Verified")
    assert first["reason"] == "SecretNotFound"
    # Due 5 s after the check (less the real time the settle took on a busy machine).
    assert 0 < operator.timers()["verification"][(NS, "broken-0")] <= 5.5
    await operator.advance(5.1)
    assert operator.timers()["verification"][(NS, "broken-0")] >= 59
    kube.calls.clear()
    kube.recorded.writes.clear()
    for _ in range(720):
        await operator.advance(5)
    hours = (BROKEN + 1) * 1.0
    per_hour = {method: round(count / hours, 1) for method, count in kube.calls.items()}
    print(f"API calls per broken credential and hour: {per_hour}")
    assert not calls, "the provider is never asked without the Secret"
    # Backing off to 300 s: at most 14 checks an hour (a Secret GET, a credential GET each).
    assert kube.calls["read_secret_data"] / hours <= 14
    assert kube.calls["read_credential"] / hours <= 14 + 12 / hours  # the rotation: 12 looks
    assert kube.calls["apply_status"] == 0, "a check that changes nothing writes nothing"
    assert kube.calls["set_secret_labels"] == 0, "nothing to label: the Secret is missing"
    assert kube.calls["read_secret_versioned"] <= 12, "the rotation waits without polling"


IDENTITY = "cc@p.iam.gserviceaccount.com"


def provider_calls(monkeypatch: pytest.MonkeyPatch, *, refuse: Reason | None = None,
                   expires_in: float | None = None) -> list[str]:  # fmt: skip
    """Google played in memory: ``verify`` accepts the key (or raises ``refuse``),
    ``check_region`` passes, ``delivery`` hands over the key file, as session
    credentials expiring ``expires_in`` seconds from the fake clock's now when given.
    Returns the calls made, by name."""
    calls: list[str] = []

    def verify(spec: Any, secrets: Any, context: Any) -> Verification:
        calls.append("verify")
        if refuse is not None:
            raise VerificationError(refuse, f"Google said no ({refuse.value})")
        return Verification(identity=IDENTITY)

    def check_region(spec: Any, secrets: Any, region: str, context: Any) -> None:
        calls.append("check_region")

    def delivery(spec: Any, secrets: Any, region: str, context: Any) -> Delivery:
        calls.append("delivery")
        expires = None
        if expires_in is not None:
            expires = conditions.now() + timedelta(seconds=expires_in)
        token = SecretStr(f"token-{len(calls)}")
        return Delivery({"credentials.json": token}, expires)

    monkeypatch.setattr(gcp, "verify", verify)
    monkeypatch.setattr(gcp, "check_region", check_region)
    monkeypatch.setattr(gcp, "delivery", delivery)
    return calls


def checked(kube: FakeKube, interval: str) -> None:
    """The credential with its check on, every ``interval``."""
    body = kube.body("CloudCredential", CRED)
    body["spec"]["verification"] = {"enabled": True, "interval": interval}
    kube.put("CloudCredential", body)


@run
async def test_a_periodic_check_posts_no_event_and_a_description_edit_keeps_the_revision(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moved from the integration suite, where it waited out the 1m interval."""
    calls = provider_calls(monkeypatch)
    operator = Operator(kube, clock)
    credential(kube)
    checked(kube, "1m")
    await operator.settle()
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert (verified["status"], verified["reason"]) == ("True", "Verified")
    first = kube.body("CloudCredential", CRED)["status"]
    assert first["identity"] == IDENTITY
    assert calls == ["verify"]
    # 1m is the shortest interval, jittered ±10 %.
    assert 53.5 <= operator.timers()["verification"][CRED] <= 66

    await operator.advance(30)
    assert calls == ["verify"], "not due yet"
    await operator.advance(36.1)
    assert calls == ["verify", "verify"], "checked again at the interval"
    again = kube.body("CloudCredential", CRED)["status"]
    assert again["lastVerifiedTime"] != first["lastVerifiedTime"]
    assert again["revision"] == first["revision"]
    assert 53.5 <= operator.timers()["verification"][CRED] <= 66
    # The same answer: no second Verified Event.
    assert [e[3] for e in kube.recorded.events] == ["Verified"]

    # A description is not an access change: checked again (a new generation), same
    # revision, nothing marked.
    cluster(kube, "a", deployed=first["revision"])
    await operator.settle()
    body = kube.body("CloudCredential", CRED)
    body["spec"]["description"] = "new words"
    kube.put("CloudCredential", body)
    await operator.settle()
    status = kube.body("CloudCredential", CRED)["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert calls.count("verify") == 3
    assert status["revision"] == first["revision"]
    assert marked(kube) == {"a": None}
    assert [e[3] for e in kube.recorded.events if e[0] == "CloudCredential"
            and e[3] in ("Verified", "RotationRecommended")] == ["Verified"]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "checks"),
    [(Reason.PROVIDER_REFUSED, 1), (Reason.PROVIDER_UNREACHABLE, 2)],
)
@run
async def test_a_provider_refusal_is_not_retried_like_an_outage(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch, reason: Reason, checks: int
) -> None:
    """A refusal (the provider answered no to the request itself) waits for the
    interval or a change; an outage is asked again after 5 s, then 60 s, 120 s (never
    under the 1-minute floor after the first retry)."""
    calls = provider_calls(monkeypatch, refuse=reason)
    operator = Operator(kube, clock, retry_max_delay=300)
    credential(kube)
    checked(kube, "1h")
    await operator.settle()
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert (verified["status"], verified["reason"]) == ("False", reason.value)
    for _ in range(36):  # 36 s, a second at a time
        await operator.advance(1)
    assert calls.count("verify") == checks
    if reason == Reason.PROVIDER_REFUSED:
        assert operator.timers()["verification"][CRED] >= 3240 - 36  # the 1h interval
    assert [e[3] for e in kube.recorded.events] == [reason.value], "one Event, not one a check"


# -- delivery: renewal, and what decides it -----------------------------------------------


@run
async def test_delivery_is_off_until_the_installation_turns_it_on(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator without CLOUDCRED_DELIVERY_ENABLED delivers nothing, whatever the
    credential says (the deploy fails, saying so); restarted with it, the same objects
    are delivered at the failed deploy's retry."""
    calls = provider_calls(monkeypatch)
    operator = Operator(kube, clock, delivery_enabled=False)
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["delivery"] = {"enabled": True}
    kube.put("CloudCredential", body)
    cluster(kube, "eu", external=False, secret="eu-creds")
    await operator.settle()
    pending = find(kube, "Cluster", "eu", "RedeployPending")
    assert pending["reason"] == "DeployFailed"
    assert "credential delivery is off in this installation" in pending["message"]
    assert (NS, "eu-creds") not in kube.secrets
    assert "delivery" not in calls
    assert "deployedRevision" not in kube.body("Cluster", (NS, "eu"))["status"]

    restarted = Operator(kube, clock, delivery_enabled=True)
    restarted.start_from(kube)
    await restarted.settle()
    await restarted.advance(5.1)  # the failed deploy's backoff, kept over the restart
    assert kube.body("Cluster", (NS, "eu"))["status"]["deployedRevision"] == revision(kube)
    assert (NS, "eu-creds") in kube.secrets
    assert calls.count("delivery") == 1


@run
async def test_a_revoked_cluster_whose_status_claims_the_binding_back_gets_no_renewal(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another namespace's cluster receives the credential while delivery allows it, its
    session credentials renewed ten seconds after each write (15-minute sessions renewed
    890 s before expiry); the namespace loses its label: the Secret is deleted; the
    tenant writes the binding back into its Cluster's status: no renewal writes it again,
    as the operator decides from its own view."""
    calls = provider_calls(monkeypatch, expires_in=900)
    operator = Operator(kube, clock, delivery_enabled=True, delivery_session_seconds=900,
                        delivery_refresh_before=890)  # fmt: skip
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    blue = {"matchLabels": {"team": "blue"}}
    body["spec"]["allowedNamespaces"] = blue
    body["spec"]["delivery"] = {"enabled": True, "allowedNamespaces": blue}
    kube.put("CloudCredential", body)
    operator.label_namespace("tenant", {"team": "blue"})
    where = ("tenant", "eu")
    kube.put("Cluster", {"metadata": {"namespace": "tenant", "name": "eu"},
                         "spec": {"provider": "GCP", "region": "europe-west1",
                                  "credentialRef": {"name": "prod", "namespace": NS},
                                  "credentialsSecret": {"name": "gcp-creds"}}})  # fmt: skip
    await operator.settle()
    cluster_status = kube.body("Cluster", where)["status"]
    assert cluster_status["deployedRevision"] == revision(kube)
    secret = kube.secrets[("tenant", "gcp-creds")]
    annotations = secret["metadata"]["annotations"]
    assert annotations[DELIVERED_REVISION_ANNOTATION] == revision(kube)
    assert EXPIRES_ANNOTATION in annotations
    # Renewed ten seconds after it was written, again and again.
    assert operator.timers()["deploy"][where] == pytest.approx(10, abs=0.5)
    await operator.advance(10.1)
    assert calls.count("delivery") == 2
    assert len(kube.recorded.of("replace", "Secret")) == 1

    operator.label_namespace("tenant", {})
    await operator.settle()
    assert ("tenant", "gcp-creds") not in kube.secrets
    assert [e[3] for e in kube.recorded.events if e[1] == where][-1] == "CredentialsRevoked"
    bound = conditions.find(kube.body("Cluster", where)["status"]["conditions"],
                            "CredentialBound")  # fmt: skip
    assert bound is not None
    assert bound["reason"] == "NamespaceNotAllowed"

    # The tenant forges its status: bound to the credential again.
    forged = kube.body("Cluster", where)
    forged["status"]["credential"] = {"namespace": NS, "name": "prod"}
    for condition in forged["status"]["conditions"]:
        if condition["type"] == "CredentialBound":
            condition.update(status="True", reason="Bound")
    kube.put("Cluster", forged)
    deliveries = calls.count("delivery")
    for _ in range(6):  # a minute: six renewals were it still delivering
        await operator.advance(10.1)
    assert ("tenant", "gcp-creds") not in kube.secrets
    assert calls.count("delivery") == deliveries
    assert not kube.recorded.of("create", "Secret")[1:], "written again after the revocation"


def aws_static_key(kube: FakeKube, monkeypatch: pytest.MonkeyPatch, account: str) -> list[str]:
    """A static AWS key of ``account`` that may be delivered, AWS played in memory (STS
    reports that account on every call); returns the provider calls made."""
    calls: list[str] = []
    identity = f"arn:aws:iam::{account}:user/deployer"

    def verify(spec: Any, secrets: Any, context: Any) -> Verification:
        calls.append("verify")
        return Verification(identity=identity, static_keys=True)

    def check_region(spec: Any, secrets: Any, region: str, context: Any) -> str:
        calls.append("check_region")
        return identity

    def delivery(spec: Any, secrets: Any, region: str, context: Any) -> Delivery:
        calls.append("delivery")
        return Delivery({"AWS_SECRET_ACCESS_KEY": SecretStr("k")})

    monkeypatch.setattr(aws, "verify", verify)
    monkeypatch.setattr(aws, "check_region", check_region)
    monkeypatch.setattr(aws, "delivery", delivery)
    monkeypatch.setattr(aws, "key_facts", lambda *_: None, raising=False)
    kube.put_secret(NS, "keys", {"secretAccessKey": base64.b64encode(b"s").decode()})
    kube.put("CloudCredential", {"metadata": {"namespace": NS, "name": "prod"}, "spec": {
        "provider": "AWS", "delivery": {"enabled": True},
        "aws": {"accessKeyId": "AKIAIOSFODNN7EXAMPLE",
                "secretAccessKeyRef": {"name": "keys", "key": "secretAccessKey"}}}})  # fmt: skip
    return calls


@run
async def test_a_forged_identity_and_verified_get_no_deployment_outside_the_boundary(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A static key of account 222222222222 where the namespace's boundary allows only
    111111111111: the check says OutsideBoundary. The tenant writes into status the
    identity of an allowed account and Verified=True: the verifier writes its last check
    back at once, and the deploy step asks STS itself besides, so nothing is deployed
    and nothing delivered."""
    operator = Operator(kube, clock, delivery_enabled=True)
    operator.label_namespace(NS, {"team": "a"})
    operator.put_boundary("team-a", {"namespaceSelector": {"matchLabels": {"team": "a"}},
                                     "aws": {"accountIds": ["111111111111"]}})  # fmt: skip
    calls = aws_static_key(kube, monkeypatch, "222222222222")
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "OutsideBoundary"

    forged = kube.body("CloudCredential", CRED)
    forged["status"]["identity"] = "arn:aws:iam::111111111111:user/deployer"
    for condition in forged["status"]["conditions"]:
        if condition["type"] == "Verified":
            condition.update(status="True", reason="Verified", message="forged")
    kube.put("CloudCredential", forged)
    cluster(kube, "eu", external=False, provider="AWS", secret="eu-creds")
    await operator.settle()
    await operator.advance(60)  # any retry of the deploy

    status = kube.body("Cluster", (NS, "eu"))["status"]
    assert "deployedRevision" not in status
    assert (NS, "eu-creds") not in kube.secrets
    assert "delivery" not in calls
    assert "identity" not in kube.body("CloudCredential", CRED)["status"]
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "OutsideBoundary"
    pending = find(kube, "Cluster", "eu", "RedeployPending")
    assert pending["status"] == "True"
    if pending["reason"] == "DeployFailed":  # the deploy step ran before the write-back
        assert "222222222222" in pending["message"]


@run
async def test_a_failed_check_keeps_only_what_the_verifier_itself_wrote(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant forges an allowed identity and Verified=True, and changes the key in
    the same moment, so the next step is a check, not a write-back. The check fails
    (OutsideBoundary) and keeps what the last check found: its kept fields come from
    the status the verifier wrote, never from the forged one."""
    operator = Operator(kube, clock, delivery_enabled=True)
    operator.label_namespace(NS, {"team": "a"})
    operator.put_boundary("team-a", {"namespaceSelector": {"matchLabels": {"team": "a"}},
                                     "aws": {"accountIds": ["111111111111"]}})  # fmt: skip
    calls = aws_static_key(kube, monkeypatch, "222222222222")
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "OutsideBoundary"
    checks = calls.count("verify")

    forged = kube.body("CloudCredential", CRED)
    forged["status"].update(
        identity="arn:aws:iam::111111111111:user/deployer",
        revision="forged",
        lastVerifiedTime="2026-01-01T00:00:00Z",
    )
    for condition in forged["status"]["conditions"]:
        if condition["type"] == "Verified":
            condition.update(status="True", reason="Verified", message="forged")
    kube.put("CloudCredential", forged)
    kube.put_secret(NS, "keys", {"secretAccessKey": base64.b64encode(b"s2").decode()})
    await operator.settle()

    assert calls.count("verify") > checks  # checked again, and refused again
    status = kube.body("CloudCredential", CRED)["status"]
    assert "111111111111" not in status.get("identity", "")
    assert status.get("revision") != "forged"
    assert "lastVerifiedTime" not in status
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "OutsideBoundary"


@run
async def test_a_forged_revision_is_written_back_at_once_without_asking_the_provider(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant who may patch cloudcredentials/status writes another status.revision
    and Verified=True over a failed check. The verifier writes back what its last
    check found at once, without asking the provider again, so the deploy step does
    not keep re-reading the Secret to find the revision differs. (A cluster the forged
    revision marked meanwhile is the tenant's own, and deploys nothing: the deploy step
    recomputes the revision.)"""
    calls = provider_calls(monkeypatch)
    operator = Operator(kube, clock)
    credential(kube, check=True)
    cluster(kube, "eu", external=False)
    await operator.settle()
    real = revision(kube)
    assert kube.body("Cluster", (NS, "eu"))["status"]["deployedRevision"] == real
    checks = calls.count("verify")
    reads: list[tuple[str, str]] = []
    read_secret_data = kube.read_secret_data

    async def counted(namespace: str, name: str) -> dict[str, str]:
        reads.append((namespace, name))
        return await read_secret_data(namespace, name)

    monkeypatch.setattr(kube, "read_secret_data", counted)
    forged = kube.body("CloudCredential", CRED)
    forged["status"]["revision"] = "forged"
    kube.put("CloudCredential", forged)
    await operator.settle()
    assert revision(kube) == real
    await operator.advance(60)
    assert revision(kube) == real
    assert calls.count("verify") == checks
    assert find(kube, "Cluster", "eu", "RedeployPending")["status"] == "False"
    assert len(reads) <= 2, reads

    def refuse(spec: Any, secrets: Any, context: Any) -> Verification:
        calls.append("verify")
        raise VerificationError(Reason.INVALID_CREDENTIALS, "Google said no")

    monkeypatch.setattr(gcp, "verify", refuse)
    new_key(kube, KEY.replace("cc@", "k2@"))  # a failed check, Verified=False ...
    await operator.settle()
    checks = calls.count("verify")
    assert find(kube, "CloudCredential", "prod", "Verified")["status"] == "False"
    forged = kube.body("CloudCredential", CRED)  # ... that the tenant marks True
    for condition in forged["status"]["conditions"]:
        if condition["type"] == "Verified":
            condition.update(status="True", reason="Verified", message="forged")
    kube.put("CloudCredential", forged)
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["status"] == "False"
    assert calls.count("verify") == checks  # written back from the check, not checked again


# -- the deploy step: failures kept in status, backoff, restart ------------------------


@run
async def test_a_failed_deploy_is_kept_in_status_and_retried_with_a_growing_delay(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock, retry_max_delay=300)
    credential(kube, key="{not a key file")  # the check is off: the deploy step finds out
    cluster(kube, "eu", external=False)
    await operator.settle()
    failure = kube.body("Cluster", (NS, "eu"))["status"]["deployFailure"]
    assert (failure["revision"], failure["attempts"]) == (revision(kube), 1)
    assert find(kube, "Cluster", "eu", "RedeployPending")["reason"] == "DeployFailed"
    assert find(kube, "Cluster", "eu", "Stalled")["status"] == "True"
    assert "failed on eu" in kube.body("CloudCredential", CRED)["status"]["rollout"]["blocked"]
    assert operator.timers()["deploy"][(NS, "eu")] == pytest.approx(5, abs=0.5)
    failed_events = [e for e in kube.recorded.events if e[3] == "DeployFailed"]
    assert len(failed_events) == 1

    # Not due yet: an event about the cluster does not hurry the retry.
    await operator.advance(2)
    assert kube.body("Cluster", (NS, "eu"))["status"]["deployFailure"]["attempts"] == 1
    await operator.advance(3.1)
    assert kube.body("Cluster", (NS, "eu"))["status"]["deployFailure"]["attempts"] == 2
    # One Event per distinct failure, not per attempt.
    assert len([e for e in kube.recorded.events if e[3] == "DeployFailed"]) == 1

    # A restart keeps the failure and its backoff: the new operator waits the 10 s.
    restarted = Operator(kube, clock, retry_max_delay=300)
    restarted.start_from(kube)
    await restarted.settle()
    assert kube.body("Cluster", (NS, "eu"))["status"]["deployFailure"]["attempts"] == 2
    assert restarted.timers()["deploy"][(NS, "eu")] == pytest.approx(10, abs=0.5)


@run
async def test_a_first_deployment_waits_until_the_credential_lists_the_cluster(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    cluster(kube, "eu", external=False)
    # Only the deploy step runs: the credential has not listed the cluster yet.
    key = await operator.controllers.deploy.queue.get()
    await operator.controllers.deploy.process(key)
    operator.controllers.deploy.queue.done(key)
    assert not kube.recorded.of("patch_status", "Cluster")
    assert operator.controllers.deploy.runs[(NS, "eu")] == 1


@run
async def test_a_first_deployment_waits_for_new_clusters_to_be_bound_a_redeploy_does_not(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    deployer = operator.controllers.deploy.reconcile.__self__  # type: ignore[attr-defined]
    waited: list[int] = []

    async def bindings_settled() -> None:  # the real one: WorkQueue.settled (test_workqueue)
        waited.append(len(operator.controllers.clusters.queue))

    deployer.bindings_settled = bindings_settled
    credential(kube, max_concurrent="100%", key="{not a key file")  # every deploy fails
    await operator.settle()
    cluster(kube, "us", external=False, deployed="v0-old")  # marked: a redeploy
    await operator.advance(1)  # the credential's pacing
    assert kube.body("Cluster", (NS, "us"))["status"]["deployFailure"]["attempts"] == 1
    assert waited == [], "a redeploy does not wait"
    cluster(kube, "eu", external=False)
    arrived = operator.controllers.clusters.queue.last_arrival
    assert arrived > 0, "a new Cluster is an arrival"
    await operator.advance(1)
    assert kube.body("Cluster", (NS, "eu"))["status"]["deployFailure"]["attempts"] == 1
    assert len(waited) == 1, "a first deployment waits for the bindings"
    assert operator.controllers.clusters.queue.last_arrival == arrived, "echoes are no arrivals"


@run
async def test_a_burst_of_new_clusters_holds_the_credentials_list_until_it_is_over(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    controllers = operator.controllers
    controllers.bindings_quiet = 0.05  # the harness turns bursts off; on, with a short quiet
    credential(kube)
    await operator.settle()
    cluster(kube, "a")
    await operator.settle()
    held = operator.timers()["credentials"][CRED]
    assert held == pytest.approx(15, abs=0.5), "listed at the burst's pace"
    assert kube.body("CloudCredential", CRED)["status"]["clusterCount"] == 0
    after = asyncio.create_task(controllers._after_bursts())
    await asyncio.sleep(0.2)  # the burst is over: no new cluster for 0.05 s, queue idle
    assert operator.timers()["credentials"].get(CRED, 0) < 1.5, "then at the usual pace"
    await operator.advance(1.5)
    assert kube.body("CloudCredential", CRED)["status"]["clusterCount"] == 1
    after.cancel()


@run
async def test_a_failed_deploy_goes_through_at_its_retry_once_the_provider_allows_it(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No edit needed: the provider refuses the region check, then allows it (a
    permission granted); the retry due after the backoff deploys."""
    calls = provider_calls(monkeypatch)
    refusals = [VerificationError(Reason.ACCESS_DENIED, "not allowed in europe-west1")]

    def check_region(spec: Any, secrets: Any, region: str, context: Any) -> None:
        calls.append("check_region")
        if refusals:
            raise refusals.pop()

    monkeypatch.setattr(gcp, "check_region", check_region)
    operator = Operator(kube, clock, retry_max_delay=300)
    credential(kube)
    cluster(kube, "eu", external=False)
    await operator.settle()
    failure = kube.body("Cluster", (NS, "eu"))["status"]["deployFailure"]
    assert failure["message"] == "not allowed in europe-west1"
    assert "deployedRevision" not in kube.body("Cluster", (NS, "eu"))["status"]
    await operator.advance(5.5)  # the deploy's first retry; the failed check is not kept
    status = kube.body("Cluster", (NS, "eu"))["status"]
    assert status["deployedRevision"] == revision(kube)
    assert "deployFailure" not in status
    assert calls.count("check_region") == 2
    assert find(kube, "Cluster", "eu", "RedeployPending")["reason"] == "UpToDate"


# -- automatic rotation ------------------------------------------------------------------


@run
async def test_a_refused_key_creation_is_shown_once_and_retried_until_it_goes_through(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider refuses a new key (AWS: the two-key limit): KeyRotation says why,
    status.rotation keeps the phase, one Warning Event; the step is tried again by
    itself after 30 s, then 60 s and, a key slot freed meanwhile, the rotation goes on."""
    provider_calls(monkeypatch)
    made: list[str] = []
    limit = [RotationError(RotationReason.KEY_LIMIT_REACHED, "the account holds two keys")]

    def create_key(spec: Any, secrets: Any, context: Any) -> NewKey:
        if limit:
            raise limit[0]
        made.append("k2")
        return NewKey(KeyFacts("k2"), {gcp.KEY_ROLE: SecretStr(KEY.replace("cc@", "k2@"))})

    monkeypatch.setattr(gcp, "list_keys", lambda spec, secrets, context: [KeyFacts("k1")])
    monkeypatch.setattr(gcp, "create_key", create_key)
    monkeypatch.setattr(gcp, "key_facts", lambda spec, secrets, context: KeyFacts("k1"),
                        raising=False)  # fmt: skip
    operator = Operator(kube, clock)
    credential(kube, check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))  # keeps the new key in its rollout
    automatic(kube, rotate_now="now", grace="3s")
    await operator.settle()
    state = kube.body("CloudCredential", CRED)["status"]["rotation"]
    assert (state["phase"], state["reason"]) == ("Creating", "KeyLimitReached")
    rotating = find(kube, "CloudCredential", "prod", "KeyRotation")
    assert (rotating["status"], rotating["reason"]) == ("True", "KeyLimitReached")
    assert "two keys" in rotating["message"]
    assert operator.timers()["rotation"][CRED] == pytest.approx(30, abs=0.5)
    await operator.advance(30.1)  # refused again: still one Event
    failed = [e for e in kube.recorded.events if e[3] == "RotationFailed"]
    assert [e[2] for e in failed] == ["Warning"]
    assert not made

    assert operator.timers()["rotation"][CRED] == pytest.approx(60, abs=0.5)  # doubled
    limit.clear()  # someone deleted the key no cluster uses
    await operator.advance(60.1)
    state = kube.body("CloudCredential", CRED)["status"]["rotation"]
    assert (state["phase"], state["keyId"], state.get("reason")) == ("RollingOut", "k2", None)
    assert made == ["k2"]
    assert find(kube, "CloudCredential", "prod", "KeyRotation")["reason"] == "RollingOut"


DELETE_AFTER = 86_400.0  # CLOUDCRED_ROTATION_DELETE_AFTER's default


def key_file(key_id: str) -> str:
    """A service-account key file that names its key (``private_key_id``)."""
    return json.dumps({"type": "service_account", "client_email": IDENTITY,
                       "private_key_id": key_id})  # fmt: skip


class ServiceAccount:
    """A GCP service account played in memory: its keys, and every call that makes,
    deactivates or deletes one (``changes``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
        self.keys = ["k1"]
        self.changes: list[tuple[str, str]] = []
        self.refuse_create: list[RotationError] = []
        self.clock = clock

        def facts(spec: Any, secrets: Any, context: Any) -> KeyFacts:
            named = json.loads(secrets[gcp.KEY_ROLE].get_secret_value())["private_key_id"]
            return KeyFacts(named, created=clock.moment)

        monkeypatch.setattr(gcp, "list_keys", lambda spec, secrets, context: [
            KeyFacts(key) for key in self.keys])  # fmt: skip
        monkeypatch.setattr(gcp, "create_key", self.create_key)
        monkeypatch.setattr(gcp, "deactivate_key", self.deactivate_key)
        monkeypatch.setattr(gcp, "delete_key", self.delete_key)
        monkeypatch.setattr(gcp, "key_facts", facts, raising=False)
        self.not_yet: set[str] = set()  # keys Google refuses for now (propagating)
        self.checks = 0
        self.create_attempts = 0  # refused ones included

        def verify(spec: Any, secrets: Any, context: Any) -> Verification:
            self.checks += 1
            named = json.loads(secrets[gcp.KEY_ROLE].get_secret_value())["private_key_id"]
            if named in self.not_yet:
                raise VerificationError(Reason.INVALID_CREDENTIALS, "invalid_grant")
            # The key's facts (status.key) are read as for GCP's static keys.
            return Verification(identity=IDENTITY, static_keys=True)

        monkeypatch.setattr(gcp, "verify", verify)

    def create_key(self, spec: Any, secrets: Any, context: Any) -> NewKey:
        self.create_attempts += 1
        if self.refuse_create:
            raise self.refuse_create[0]
        made = f"k{len([c for c in self.changes if c[0] == 'create']) + 2}"
        self.keys.append(made)
        self.changes.append(("create", made))
        return NewKey(KeyFacts(made, created=self.clock.moment),
                      {gcp.KEY_ROLE: SecretStr(key_file(made))})  # fmt: skip

    def deactivate_key(self, spec: Any, secrets: Any, context: Any, key_id: str) -> bool:
        self.changes.append(("deactivate", key_id))
        return False

    def delete_key(self, spec: Any, secrets: Any, context: Any, key_id: str) -> None:
        self.changes.append(("delete", key_id))
        if key_id in self.keys:
            self.keys.remove(key_id)

    def retired(self) -> list[str]:
        return [key for verb, key in self.changes if verb in ("deactivate", "delete")]


def automatic(kube: FakeKube, rotate_now: str | None = None, grace: str = "3s") -> None:
    body = kube.body("CloudCredential", CRED)
    body["spec"]["rotation"] = {"policy": "Automatic", "maxAge": "90d", "gracePeriod": grace}
    if rotate_now:
        body["metadata"]["annotations"] = {"cloudcred.io/rotate-now": rotate_now}
    kube.put("CloudCredential", body)


def rotation_state(kube: FakeKube, key: tuple[str, str] = CRED) -> dict[str, Any]:
    return dict(kube.body("CloudCredential", key)["status"].get("rotation") or {})


async def rotated_to_k2(kube: FakeKube, operator: Operator) -> None:
    """A whole rotation from k1 to k2, an external cluster redeploying in between."""
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["phase"] == "RollingOut"
    deploy(kube, "ext", revision(kube))
    await operator.settle()
    await operator.advance(3.1)  # every cluster uses k2
    await operator.advance(3.1)  # the grace period: k1 deactivated
    await operator.advance(DELETE_AFTER + 0.1)  # the installation's second period: deleted
    state = rotation_state(kube)
    assert (state["phase"], state["keyId"]) == ("Idle", "k2"), (state, operator.timers())


@run
async def test_a_forged_status_makes_the_operator_retire_no_key(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rotation to k2, a tenant who may patch cloudcredentials/status writes a
    rotation about to delete k2, the key in use. The operator's record says no rotation
    is under way: nothing is deactivated or deleted, and status.rotation is written
    again from the record."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    await rotated_to_k2(kube, operator)
    retired = account.retired()
    body = kube.body("CloudCredential", CRED)
    body["status"]["rotation"] = {**body["status"]["rotation"], "phase": "Deleting",
                                  "previousKeyId": "k2"}  # fmt: skip
    kube.put("CloudCredential", body)
    await operator.settle()
    await operator.advance(301)
    assert account.retired() == retired == ["k1", "k1"], account.changes
    assert account.keys == ["k2"]
    state = rotation_state(kube)
    assert (state["phase"], state["keyId"]) == ("Idle", "k2")
    assert "previousKeyId" not in state


@run
async def test_a_forged_verified_starts_no_rotation_of_a_key_whose_check_failed(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider refuses k1: its check says Verified=False. A tenant who may patch
    cloudcredentials/status writes Verified=True and asks for a rotation, and the
    verifier's write-back loses its races (409s). A rotation starts only from what the
    verifier's own check found: the provider is not even asked for the keys. Once the
    key works, the rotation the tenant asked for runs."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    listed: list[str] = []
    monkeypatch.setattr(gcp, "list_keys", lambda spec, secrets, context: [
        listed.append("list") or KeyFacts(key) for key in account.keys])  # fmt: skip
    account.not_yet.add("k1")
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    automatic(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["verification"]["interval"] = "1m"
    kube.put("CloudCredential", body)
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["status"] == "False"
    # 409s on the next status applies: the write-back's five attempts lose, and the
    # other controllers' writes retry past the rest.
    kube.fail("apply_status", Conflict("CloudCredential acme/prod"), times=10)
    body = forge_condition(kube, "Verified", status="True", reason="Verified")
    body["metadata"]["annotations"] = {"cloudcred.io/rotate-now": "now"}
    kube.put("CloudCredential", body)
    await operator.settle()
    await operator.advance(30)
    assert (
        find(kube, "CloudCredential", "prod", "Verified")["status"] == "True"
    )  # the forgery stands a while
    assert (listed, account.create_attempts) == ([], 0), account.changes

    account.not_yet.clear()
    await operator.advance(70)  # the next check (1 min ± 10 %): k1 works
    await operator.settle()
    assert listed
    assert account.create_attempts == 1, account.changes


@run
async def test_a_lost_status_or_a_credential_made_again_comes_back_to_the_rotated_key(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rotation to k2 (k1 deleted), the status is lost (a restore without
    status), then the credential is deleted and made again under its name (a GitOps
    tool): both times the credential uses k2 again, as the operator's record says."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    await rotated_to_k2(kube, operator)
    assert account.keys == ["k2"]

    body = kube.body("CloudCredential", CRED)
    body["status"] = {}
    kube.put("CloudCredential", body)
    await operator.settle()
    assert rotation_state(kube)["keyId"] == "k2"
    assert kube.body("CloudCredential", CRED)["status"]["key"]["id"] == "k2"
    assert find(kube, "CloudCredential", "prod", "Verified")["status"] == "True"

    spec = kube.body("CloudCredential", CRED)["spec"]
    kube.remove("CloudCredential", CRED)
    kube.put("CloudCredential", {"metadata": {"namespace": NS, "name": "prod"}, "spec": spec})
    await operator.settle()
    assert rotation_state(kube)["keyId"] == "k2"
    assert kube.body("CloudCredential", CRED)["status"]["key"]["id"] == "k2"
    assert "KeyReadopted" in [event[3] for event in kube.recorded.events]
    assert account.retired() == ["k1", "k1"]  # deactivated and deleted by the rotation only


@run
async def test_a_spec_pointed_back_at_the_old_key_keeps_it(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During RollingOut a person points the spec at a Secret holding the old key; that
    revision rolls out. The rotation stops, saying so; the old key is never deactivated
    nor deleted, and the key the rotation made, in no spec any more, is retired."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["phase"] == "RollingOut"

    kube.put_secret(NS, "old", {"key.json": base64.b64encode(key_file("k1").encode()).decode()})
    body = kube.body("CloudCredential", CRED)
    body["spec"]["gcp"]["serviceAccountKeyRef"]["name"] = "old"
    kube.put("CloudCredential", body)
    await operator.settle()
    deploy(kube, "ext", revision(kube))
    await operator.settle()
    stopped = [event for event in kube.recorded.events if event[3] == "RotationStopped"]
    assert len(stopped) == 1
    assert "the spec names another key" in stopped[0][4]
    for seconds in (3.1, 3.1, DELETE_AFTER + 0.1):
        await operator.advance(seconds)
    assert "k1" not in account.retired(), account.changes
    assert "k1" in account.keys
    # k2, made by the rotation and no longer in any spec, is retired once unused.
    assert account.retired() == ["k2", "k2"], account.changes
    assert rotation_state(kube)["phase"] == "Idle", rotation_state(kube)


@run
async def test_a_key_rotated_by_an_earlier_version_stays_in_use_after_the_upgrade(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator before rotation records kept the rotated key in status only: after
    the upgrade the credential keeps using it (its Secret is the one that version made
    for this object), and nothing is retired."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    account.keys = ["k2"]
    credential(kube, key=key_file("k1"), check=True)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["rotation"] = {"policy": "Automatic", "maxAge": "90d", "gracePeriod": "3s"}
    secret_name = rotation.rotated_secret_name("prod", "k2")
    body["status"] = {"rotation": {"phase": "Idle", "keyId": "k2", "secretName": secret_name,
                                   "replaces": rotation.spec_key(body["spec"]),
                                   "nextRotationTime": "2027-03-01T00:00:00Z"}}  # fmt: skip
    kube.put("CloudCredential", body)
    uid = kube.body("CloudCredential", CRED)["metadata"]["uid"]
    owner = {"apiVersion": "cloudcred.io/v1alpha1", "kind": "CloudCredential", "name": "prod",
             "uid": uid, "controller": True}  # fmt: skip
    await kube.create_secret(NS, secret_name, {"key.json": base64.b64encode(
        key_file("k2").encode()).decode()}, {"annotations": {"cloudcred.io/key-id": "k2"},
        "ownerReferences": [owner]})  # fmt: skip
    operator = Operator(kube, clock)
    operator.start_from(kube)
    await operator.settle()
    await operator.advance(301)
    state = rotation_state(kube)
    assert (state["phase"], state["keyId"]) == ("Idle", "k2")
    assert kube.body("CloudCredential", CRED)["status"]["key"]["id"] == "k2"
    assert account.changes == []


@run
async def test_a_propagating_key_is_checked_again_within_seconds_not_at_the_minute(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most new keys work within seconds: a propagating key is checked again after 5,
    10, 20 and 40 s (then every minute), so a key Google accepts 6 s after it was made
    is Verified within 20 s of the rotation, not a minute later."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    account.not_yet.add("k2")
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "Propagating"
    checks = account.checks
    await operator.advance(6)
    assert account.checks > checks  # checked again after 5 s: still refused
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "Propagating"
    account.not_yet.discard("k2")  # Google accepts the key 6 s after it was made
    await operator.advance(12)
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert verified["reason"] == "Verified", verified


@run
async def test_a_new_key_refused_within_the_propagation_window_is_propagating_not_stalled(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Google refuses the key a rotation has just made (it propagates). Within GCP's
    window (5 min) the credential says Propagating: Reconciling, not Stalled, checked
    again with a backoff. Refused past the window, the new key will not work: the
    rotation stops, the old key is in use again, and the new one is retired."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    account.not_yet.add("k2")
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["keyId"] == "k2"
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert verified["reason"] == "Propagating", verified
    assert find(kube, "CloudCredential", "prod", "Reconciling")["status"] == "True"
    assert find(kube, "CloudCredential", "prod", "Stalled")["status"] == "False"
    checks = account.checks
    await operator.advance(60)
    assert account.checks > checks  # retried with a backoff
    assert find(kube, "CloudCredential", "prod", "Verified")["reason"] == "Propagating"
    for _ in range(8):
        await operator.advance(60)
    # Past the window Google still refuses k2: the rotation stops, k1 is in use again.
    stopped = [e for e in kube.recorded.events if e[3] == "RotationStopped"]
    assert len(stopped) == 1
    assert "refuses key k2 (InvalidCredentials)" in stopped[0][4]
    state = rotation_state(kube)
    # ext never left k1's revision: back at once; k2, made by the rotation and used by
    # no cluster, is retired by the usual rules (deactivated after the 3 s grace period,
    # deleted a day later). k1 is never touched.
    assert (state["abandoned"], state["previousKeyId"]) == (True, "k2")
    assert "keyId" not in state  # the spec's key, k1, is in effect again
    verified = find(kube, "CloudCredential", "prod", "Verified")
    assert verified["reason"] == "Verified", verified
    assert account.retired() == ["k2"]
    await operator.advance(DELETE_AFTER + 0.1)
    assert account.retired() == ["k2", "k2"]
    assert account.keys == ["k1"]
    state = rotation_state(kube)
    assert state["phase"] == "Idle", state
    assert "abandoned" not in state, state


@run
async def test_keys_made_by_others_during_a_failing_create_are_reported_never_deleted(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Creating keeps failing (the key limit), a person makes a key on the same
    identity: it is reported (an Event, status.rotation.unknownKeyIds), never deleted.
    A key the operator's own create returned and that it could not save (the Secret
    refused) is cleaned up at the next attempt."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    account.refuse_create.append(RotationError(RotationReason.KEY_LIMIT_REACHED, "two keys"))
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["reason"] == "KeyLimitReached"

    account.keys.append("a-persons")
    await operator.advance(30.1)
    await operator.advance(60.1)  # the retries back off: 30 s, then 60 s
    assert "a-persons" not in account.retired()
    assert rotation_state(kube)["unknownKeyIds"] == ["a-persons"]
    reported = [e for e in kube.recorded.events if e[3] == "UnknownKeys"]
    assert len(reported) == 1
    assert "a-persons" in reported[0][4]

    account.refuse_create.clear()
    kube.fail("create_secret", RuntimeError(f"creating Secret {NS}/x failed: HTTP 403 Forbidden"))
    await operator.advance(120.1)  # k2 made, its Secret refused
    assert ("create", "k2") in account.changes
    await operator.advance(240.1)  # k2 cleaned up, k3 made and in use
    assert ("delete", "k2") in account.changes
    assert "a-persons" in account.keys
    assert "a-persons" not in account.retired()
    assert rotation_state(kube)["keyId"] == "k3"


@run
async def test_a_tenant_rewriting_status_rotation_does_not_hurry_a_refused_step(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider refuses the new key (the key limit). A tenant who may patch
    cloudcredentials/status rewrites status.rotation every second for two minutes: each
    write is answered by showing the record again, never by another call to the
    provider. The step is tried again on its own backoff (30 s, then 60 s), and at once
    when the spec or rotate-now changes."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    account.refuse_create.append(RotationError(RotationReason.KEY_LIMIT_REACHED, "two keys"))
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["reason"] == "KeyLimitReached"
    assert account.create_attempts == 1
    for second in range(120):
        body = kube.body("CloudCredential", CRED)
        body["status"]["rotation"] = {**body["status"]["rotation"], "phase": "Creating",
                                      "message": f"forged {second}"}  # fmt: skip
        kube.put("CloudCredential", body)
        await operator.settle()
        await operator.advance(1)
    # The step's own retries after 30 s and 90 s: two more attempts, not 120.
    assert account.create_attempts == 3, account.create_attempts
    assert not rotation_state(kube)["message"].startswith("forged")

    automatic(kube, rotate_now="again")  # a person asks again: no waiting for the backoff
    await operator.settle()
    assert account.create_attempts == 4


# -- revocation --------------------------------------------------------------------------


@run
async def test_a_cluster_that_loses_its_binding_loses_its_delivered_secret(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock, delivery_enabled=True)
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["delivery"] = {"enabled": True}
    kube.put("CloudCredential", body)
    await operator.settle()
    cluster(kube, "eu", external=False, secret="eu-creds", deployed=revision(kube))
    uid = kube.body("Cluster", (NS, "eu"))["metadata"]["uid"]
    await kube.create_secret(NS, "eu-creds", {"k": "dg=="}, {
        "labels": {MANAGED_BY_LABEL: "cloudcred"}, "ownerReferences": [
            {"apiVersion": "cloudcred.io/v1alpha1", "kind": "Cluster", "name": "eu", "uid": uid,
             "controller": True}]})  # fmt: skip
    await kube.create_secret(NS, "not-ours", {"k": "dg=="}, {})
    await operator.settle()
    assert (NS, "eu-creds") in kube.secrets  # bound and allowed: kept
    body = kube.body("Cluster", (NS, "eu"))
    body["spec"]["credentialRef"] = {"name": "missing"}
    kube.put("Cluster", body)
    await operator.settle()
    assert (NS, "eu-creds") not in kube.secrets
    assert (NS, "not-ours") in kube.secrets
    revoked = [e for e in kube.recorded.events if e[3] == "CredentialsRevoked"]
    assert len(revoked) == 1
    assert "not bound" in revoked[0][4]


@run
async def test_a_delivered_secret_is_revoked_when_the_cluster_stops_naming_it(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivered Secrets are found by their owner's UID, not by the name the Cluster's
    spec gives now: renaming spec.credentialsSecret revokes the old Secret; removing the
    field revokes the Secret too, delivered before the field came back under a new
    name at a new revision. Another Cluster's Secret and a Secret of nobody's stay."""
    provider_calls(monkeypatch)
    operator = Operator(kube, clock, delivery_enabled=True)
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["delivery"] = {"enabled": True}
    kube.put("CloudCredential", body)
    cluster(kube, "eu", external=False, secret="eu-creds")
    cluster(kube, "us", external=False, secret="us-creds")
    await kube.create_secret(NS, "not-ours", {"k": "dg=="}, {})
    await operator.settle()
    assert {(NS, "eu-creds"), (NS, "us-creds")} <= set(kube.secrets)

    renamed = kube.body("Cluster", (NS, "eu"))
    renamed["spec"]["credentialsSecret"] = {"name": "eu-creds-2"}
    kube.put("Cluster", renamed)
    await operator.settle()
    assert (NS, "eu-creds") not in kube.secrets
    new_key(kube, KEY.replace("cc@", "cc2@"))  # a new revision: delivered under the new name
    await operator.settle()
    assert (NS, "eu-creds-2") in kube.secrets
    # A tenant's in-use label (where the admission policy is missing) would make the
    # delete fail: the operator takes it off first.
    await kube.set_secret_labels(NS, "eu-creds-2", {IN_USE_LABEL: "true"})

    removed = kube.body("Cluster", (NS, "eu"))
    del removed["spec"]["credentialsSecret"]
    kube.put("Cluster", removed)
    await operator.settle()
    assert (NS, "eu-creds-2") not in kube.secrets
    on_it = [w for w in kube.recorded.writes if w.key == (NS, "eu-creds-2")]
    assert [(w.verb, w.detail) for w in on_it[-2:]] == [
        ("label", {IN_USE_LABEL: None}), ("delete", None)]  # fmt: skip
    assert {(NS, "us-creds"), (NS, "not-ours")} <= set(kube.secrets)
    revoked = [e[4] for e in kube.recorded.events if e[3] == "CredentialsRevoked"]
    assert len(revoked) == 2
    assert all("no longer named by spec.credentialsSecret" in message for message in revoked)
    await operator.advance(60)
    assert len([e for e in kube.recorded.events if e[3] == "CredentialsRevoked"]) == 2


@run
async def test_a_secret_in_another_namespace_claiming_a_clusters_uid_is_not_its_delivery(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant labels a Secret of its own namespace as cloudcred's, with another
    namespace's Cluster as its controller owner (an owner reference lives in its
    dependent's namespace, so it is no owner at all). It neither stands in for that
    Cluster's delivery nor gets deleted as a revoked one."""
    provider_calls(monkeypatch)
    operator = Operator(kube, clock, delivery_enabled=True)
    credential(kube)
    body = kube.body("CloudCredential", CRED)
    body["spec"]["delivery"] = {"enabled": True}
    kube.put("CloudCredential", body)
    cluster(kube, "eu", external=False, secret="eu-creds")
    uid = kube.body("Cluster", (NS, "eu"))["metadata"]["uid"]
    for name in ("eu-creds", "decoy"):
        await kube.create_secret("tenant-b", name, {"k": "dg=="}, {
            "labels": {MANAGED_BY_LABEL: "cloudcred"}, "ownerReferences": [
                {"apiVersion": "cloudcred.io/v1alpha1", "kind": "Cluster", "name": "eu",
                 "uid": uid, "controller": True}]})  # fmt: skip
    await operator.settle()
    assert (NS, "eu-creds") in kube.secrets  # delivered all the same
    assert {("tenant-b", "eu-creds"), ("tenant-b", "decoy")} <= set(kube.secrets)
    assert not [e for e in kube.recorded.events if e[3] == "CredentialsRevoked"]


# -- faults: the API refuses, the object goes away ---------------------------------------


@run
async def test_a_refused_write_is_retried_with_backoff_and_shown_once(
    kube: FakeKube, clock: Clock
) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    kube.fail("apply_status", RuntimeError("HTTP 500"), times=3)
    cluster(kube, "eu")
    await operator.settle()
    # Each failed write queues its key again after a delay that doubles with every
    # failure in a row (0.25 s, 0.5 s, ...), and success forgets the count.
    controllers = operator.controllers
    most = 0
    for _ in range(8):
        most = max(most, controllers.clusters.queue.failures((NS, "eu")),
                   controllers.credentials.queue.failures(CRED))  # fmt: skip
        await operator.advance(1.1)
    failed = [e for e in kube.recorded.events if e[3] == "ReconcileFailed"]
    assert failed, "the failure is shown on the object"
    assert len({(e[0], e[1]) for e in failed}) == len(failed), "one Event per object and error"
    assert find(kube, "Cluster", "eu", "CredentialBound")["status"] == "True"
    assert kube.body("CloudCredential", CRED)["status"]["clusterCount"] == 1
    assert most >= 2, "one key failed twice in a row: its second delay was doubled"
    assert controllers.credentials.queue.failures(CRED) == 0  # forgotten
    assert controllers.clusters.queue.failures((NS, "eu")) == 0


@run
async def test_one_refused_cluster_holds_up_no_other_and_is_retried_with_backoff(
    kube: FakeKube, clock: Clock
) -> None:
    """A policy engine refuses every write to one Cluster: the 100 others of the same
    credential are bound and listed at once; the refused one is retried with a delay
    that grows up to the cap, shown in one Event, and Bound at the first retry after
    the refusal is lifted."""
    operator = Operator(kube, clock, retry_max_delay=8)
    credential(kube)
    await operator.settle()
    queue = operator.controllers.clusters.queue
    backoffs: list[float] = []
    add_rate_limited = queue.add_rate_limited

    def rate_limited(key: Any) -> float:
        delay = add_rate_limited(key)
        if key == (NS, "frozen"):
            backoffs.append(delay)
        return delay

    queue.add_rate_limited = rate_limited  # type: ignore[method-assign]
    kube.refuse("Cluster", (NS, "frozen"), ApiException(403, "Forbidden"))
    cluster(kube, "frozen")
    names = [f"c{index:03d}" for index in range(100)]
    for name in names:
        cluster(kube, name)
    await operator.settle()
    await operator.advance(1)  # the credential's pacing
    assert all(find(kube, "Cluster", n, "CredentialBound")["status"] == "True" for n in names)
    listed = {c["name"] for c in kube.body("CloudCredential", CRED)["status"]["clusters"]}
    assert set(names) <= listed
    for _ in range(40):  # 30 s
        await operator.advance(0.75)
    assert backoffs[:7] == [0.25, 0.5, 1, 2, 4, 8, 8], "a delay that grows up to the cap"
    assert len(kube.recorded.refused) == len(backoffs)
    failed = [e for e in kube.recorded.events if e[3] == "ReconcileFailed"]
    assert [(e[0], e[1], e[2]) for e in failed] == [("Cluster", (NS, "frozen"), "Warning")]
    assert "403" in failed[0][4]

    kube.refuse("Cluster", (NS, "frozen"), None)
    await operator.advance(8.1)
    assert find(kube, "Cluster", "frozen", "CredentialBound")["status"] == "True"
    await operator.advance(1)
    status = kube.body("CloudCredential", CRED)["status"]
    assert status["clusterCount"] == 101
    assert operator.controllers.clusters.queue.failures((NS, "frozen")) == 0


@run
async def test_an_object_deleted_under_a_write_is_no_error(kube: FakeKube, clock: Clock) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    cluster(kube, "eu")
    kube.fail("apply_status", NotFound("Cluster acme/eu"))
    await operator.settle()
    assert not [e for e in kube.recorded.events if e[3] == "ReconcileFailed"]
    timers = operator.timers()
    assert not timers["clusters"], "no retry: the object is gone, which is no failure"
    assert set(timers["verification"]) == {CRED}, "the credential's next periodic check"


# -- /healthz: progress ------------------------------------------------------------------


@run
async def test_healthz_fails_once_a_watch_or_a_queue_made_no_progress_for_too_long(
    kube: FakeKube, clock: Clock
) -> None:
    """The verdict of /healthz (``Controllers.problems``): a watch silent, or a queue
    whose workers finished nothing while keys waited, for longer than twice
    CLOUDCRED_WATCH_TIMEOUT plus 30 s, and not sooner. (A watch that really goes silent,
    through a black-holed connection: tests/integration/test_holding.py in test-long.)"""
    operator = Operator(kube, clock, watch_timeout=5)
    controllers = operator.controllers
    controllers._refresh()  # every cache synced: the gate opens
    assert controllers.problems() == []
    now = time.monotonic()
    controllers.informers = [  # type: ignore[list-item]
        SimpleNamespace(name="Secret", last_progress=now - 38),
        SimpleNamespace(name="Namespace", last_progress=now - 42),
    ]
    assert controllers.problems() == ["the Namespace watch has not answered for 42s"]
    controllers.informers = []
    credential(kube)  # keys wait in the verification queue
    queue = controllers.verification.queue
    assert queue.busy
    queue.last_done = now - 38
    assert controllers.problems() == []
    queue.last_done = now - 42
    assert controllers.problems() == ["the verification queue has made no progress for 42s"]
    await operator.settle()
    assert controllers.problems() == [], "nothing waits: no progress is needed"


# -- quiet: nothing changes, nothing is written -------------------------------------------


@run
async def test_with_nothing_changing_nothing_is_written(kube: FakeKube, clock: Clock) -> None:
    operator = Operator(kube, clock)
    credential(kube)
    await operator.settle()
    for name in "abc":
        cluster(kube, name, deployed=revision(kube))
    await operator.advance(5)  # the credential's paced look at its clusters included
    writes = len(kube.recorded.writes)
    operator.controllers._queue_everything()
    reconciles = await operator.settle()
    assert reconciles >= 7  # every cluster, its deploy key and the credential
    assert kube.recorded.writes[writes:] == []


@run
async def test_the_old_key_is_deactivated_a_grace_period_after_the_rollout_and_deleted_later(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumers that read the key once at start keep working for the grace period:
    nothing is deactivated when the last cluster moves to the new key, only gracePeriod
    later; the deletion comes the installation's second period after that."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now", grace="1h")
    await operator.settle()
    deploy(kube, "ext", revision(kube))
    await operator.settle()
    await operator.advance(5.1)
    assert rotation_state(kube)["phase"] == "Retiring"
    assert account.retired() == []  # every cluster moved: not deactivated yet
    await operator.advance(3500)
    assert account.retired() == []
    await operator.advance(101)
    assert account.retired() == ["k1"]  # deactivated after the hour
    message = rotation_state(kube)["message"]
    assert message.startswith("key k1 is unused; deleted at "), message
    await operator.advance(DELETE_AFTER - 200)
    assert account.retired() == ["k1"]
    await operator.advance(300)
    assert account.retired() == ["k1", "k1"]
    assert account.keys == ["k2"]


@run
async def test_rotate_now_inside_the_interval_waits_until_it_ends(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotate-now within the hour: the second waits until an hour after the first
    began, not a second longer. With no clusters and a 0s grace period nothing loops:
    one key is made per interval."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock, rotation_delete_after=60)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    automatic(kube, rotate_now="first", grace="0s")
    await operator.settle()
    for _ in range(4):
        await operator.advance(61)
    assert rotation_state(kube)["phase"] == "Idle", rotation_state(kube)
    assert account.keys == ["k2"]
    body = kube.body("CloudCredential", CRED)
    body["metadata"]["annotations"] = {"cloudcred.io/rotate-now": "second"}
    kube.put("CloudCredential", body)
    await operator.settle()
    assert [k for verb, k in account.changes if verb == "create"] == ["k2"]
    assert operator.timers()["rotation"][CRED] == pytest.approx(3600 - 244, abs=2)
    await operator.advance(3600 - 244 + 1)
    assert [k for verb, k in account.changes if verb == "create"] == ["k2", "k3"]


@run
async def test_switching_to_manual_mid_rollout_goes_back_and_retires_only_the_new_key(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation waits for a cluster that never redeploys; the owner sets the policy back
    to Manual. The rotation stops: the old key is in use again and never touched, and the
    new key, which no cluster uses, is retired by the usual rules."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    old_revision = revision(kube)
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["keyId"] == "k2"
    await operator.advance(600)
    assert rotation_state(kube)["phase"] == "RollingOut"  # ext never redeploys

    body = kube.body("CloudCredential", CRED)
    body["spec"]["rotation"]["policy"] = "Manual"
    kube.put("CloudCredential", body)
    await operator.settle()
    stopped = [e for e in kube.recorded.events if e[3] == "RotationStopped"]
    assert len(stopped) == 1
    assert "no longer Automatic" in stopped[0][4]
    assert revision(kube) == old_revision  # k1 in effect again
    for seconds in (3.1, 3.1, DELETE_AFTER + 0.1):
        await operator.advance(seconds)
    assert account.retired() == ["k2", "k2"], account.changes
    assert account.keys == ["k1"], account.changes
    state = rotation_state(kube)
    assert state["phase"] == "Idle", state
    assert "keyId" not in state, state
    assert "k2, made by it, is deleted" in state["message"]


@run
async def test_an_old_key_used_after_the_rollout_is_kept_and_the_message_names_the_use(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the provider reports a key's last use (AWS), the old key is deactivated only
    once nothing used it since every cluster moved to the new one, or for a whole grace
    period; until then the rotation's message names the last use."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    last_used: dict[str, Any] = {}
    monkeypatch.setattr(gcp, "key_last_used", lambda spec, secrets, context, key_id:
                        last_used.get(key_id), raising=False)  # fmt: skip
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now", grace="10m")
    await operator.settle()
    deploy(kube, "ext", revision(kube))
    await operator.settle()
    await operator.advance(5.1)
    assert rotation_state(kube)["phase"] == "Retiring"
    await operator.advance(300)
    last_used["k1"] = clock.moment  # a consumer that read k1 at start still signs with it
    await operator.advance(301)
    assert account.retired() == []
    message = rotation_state(kube)["message"]
    assert message.startswith("keeping key k1: last used at "), message
    await operator.advance(290)  # the consumer stopped at its last use: 590 s ago
    assert account.retired() == []
    await operator.advance(20)  # unused for the whole grace period
    assert account.retired() == ["k1"]


@run
async def test_a_create_another_operator_may_have_in_flight_is_waited_for_not_repeated(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record shows a create attempt by another operator (a replica in a handover)
    made a second ago: its call may still land. No second key is made until the longest
    a provider call can take has passed; then one is."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    automatic(kube, rotate_now="now")
    records = operator.controllers.rotator.records
    original = records.write

    async def another_replica_first(record: Any) -> Any:
        if record.state.get("attempt"):
            state = {**record.state, "attempt": "another-replica"}
            record = dataclasses.replace(record, state=state)
            records.write = original  # type: ignore[method-assign]
            await original(record)
            raise Conflict("the record changed")
        return await original(record)

    records.write = another_replica_first  # type: ignore[method-assign]
    await operator.settle()
    assert account.changes == []
    await operator.advance(1.1)
    assert account.changes == []  # the other replica's call may still land (up to 25 s)
    await operator.advance(25)
    assert account.changes == [("create", "k2")]


@run
async def test_a_long_rotate_now_value_still_starts_a_rotation_that_status_can_show(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rotate-now` carries any annotation value (a 300-character reason): the rotation
    starts, and status.rotation stays within its schema (requested is at most 64
    characters), so the status write the CRD would refuse is never made."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    automatic(kube, rotate_now="ticket 4711: " + "x" * 300)
    await operator.settle()
    assert [k for verb, k in account.changes if verb == "create"] == ["k2"]
    RotationStatus.model_validate(rotation_state(kube))  # what the CRD's schema says
    await operator.advance(61)
    assert [k for verb, k in account.changes if verb == "create"] == ["k2"]  # asked once


@run
async def test_a_pending_key_deleted_at_the_provider_is_made_again(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key is made and saved, then the step's next write fails and, before the retry,
    a person deletes that key at the provider. The retry checks the recorded key against
    the provider's list: it makes another instead of switching to a key that is gone."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    records = operator.controllers.rotator.records
    original = records.write

    async def failing_switch(record: Any) -> Any:
        if record.state.get("phase") == "RollingOut":
            records.write = original  # type: ignore[method-assign]
            raise ApiException(status=500, reason="etcd timeout")
        return await original(record)

    records.write = failing_switch  # type: ignore[method-assign]
    automatic(kube, rotate_now="now")
    await operator.settle()
    assert rotation_state(kube)["phase"] == "Creating"
    assert account.keys == ["k1", "k2"]
    account.keys.remove("k2")  # deleted by hand at the provider
    await operator.advance(30.1)
    state = rotation_state(kube)
    assert (state["phase"], state["keyId"]) == ("Retiring", "k3"), state  # no cluster waits
    assert kube.secrets.get((NS, rotation.rotated_secret_name("prod", "k2"))) is None


def records_in(kube: FakeKube) -> list[tuple[str, str]]:
    labelled = "cloudcred.io/rotation-record"
    return [key for key, secret in kube.secrets.items()
            if labelled in (secret["metadata"].get("labels") or {})]  # fmt: skip


@run
async def test_deleting_a_credential_retires_the_keys_the_operator_made_for_it(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credential rotated to k2 (made by the operator) is deleted once its cluster is
    gone. k2 stays for the grace period (a delete and re-create would take it up again),
    then it is deleted with its Secret, and so is the operator's record."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    await rotated_to_k2(kube, operator)
    assert records_in(kube)
    kube.remove("Cluster", (NS, "ext"))
    kube.remove("CloudCredential", CRED)
    await operator.settle()
    assert account.keys == ["k2"]  # the grace period first
    await operator.advance(3.1)
    assert account.keys == []
    assert account.changes[-1] == ("delete", "k2")
    assert (NS, rotation.rotated_secret_name("prod", "k2")) not in kube.secrets
    assert records_in(kube) == []
    deleted = [e for e in kube.recorded.events if e[3] == "KeyDeleted"]
    assert "deleted key k2, made for this credential, which is deleted" in deleted[-1][4]


@run
async def test_a_credential_deleted_and_made_again_within_the_grace_period_keeps_its_key(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GitOps tool deletes and re-creates a rotated credential: the new object takes up
    k2 again, and k2 is not deleted when the grace period of the deletion ends."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    await rotated_to_k2(kube, operator)
    body = kube.body("CloudCredential", CRED)
    kube.remove("Cluster", (NS, "ext"))
    kube.remove("CloudCredential", CRED)
    await operator.settle()
    again = {"metadata": {"namespace": NS, "name": "prod"}, "spec": body["spec"]}
    kube.put("CloudCredential", again)
    await operator.settle()
    for _ in range(3):
        await operator.advance(3.1)
    assert account.keys == ["k2"]
    assert rotation_state(kube)["keyId"] == "k2"
    assert records_in(kube)


@run
async def test_a_credential_deleted_while_no_operator_ran_has_its_keys_retired_after_a_start(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletion happened while no operator ran: the next one finds the record whose
    credential is gone when it starts, and retires the key after the grace period."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    await rotated_to_k2(kube, operator)
    kube.on_change = lambda *_: None  # no operator runs
    kube.remove("Cluster", (NS, "ext"))
    kube.remove("CloudCredential", CRED)
    started = Operator(kube, clock)
    started.start_from(kube)
    await started.controllers.queue_recorded()
    await started.settle()
    await started.advance(3.1)
    assert account.keys == []
    assert records_in(kube) == []


# -- permissions: which sets, when checked, what is said ----------------------------------


def granting(monkeypatch: pytest.MonkeyPatch, granted: set[str],
             refuse: Reason | None = None) -> list[list[str]]:  # fmt: skip
    """Google's testIamPermissions played in memory: what ``granted`` holds (the test may
    change it) is allowed. Returns the permissions asked, one list per call."""
    asked: list[list[str]] = []

    def check_permissions(spec: Any, secrets: Any, context: Any, needs: Any) -> PermissionAnswer:
        asked.append(list(needs.permissions))
        if refuse is not None:
            raise VerificationError(refuse, "Permission 'resourcemanager.projects."
                                    "testIamPermissions' denied (403)")  # fmt: skip
        missing = sorted(p for p in needs.permissions if p not in granted)
        return PermissionAnswer(len(needs.permissions), tuple(missing))

    monkeypatch.setattr(gcp, "check_permissions", check_permissions, raising=False)
    return asked


def needing(kube: FakeKube, kind: str, name: str, *sets: str) -> None:
    key = CRED if kind == "CloudCredential" else (NS, name)
    body = kube.body(kind, key)
    body["spec"]["permissionSets"] = list(sets)
    kube.put(kind, body)


CREATE = ["container.clusters.create", "container.clusters.update"]
READ = ["compute.zones.list", "container.clusters.get", "iam.serviceAccounts.actAs"]


@run
async def test_a_credential_is_checked_against_its_own_sets_and_its_clusters(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_calls(monkeypatch)
    asked = granting(monkeypatch, set(READ))
    operator = Operator(kube, clock)
    operator.put_permission_set("read", {"gcp": {"permissions": READ}})
    operator.put_permission_set(
        "create", {"gcp": {"permissions": CREATE}, "aws": {"statements": [{"actions": ["eks:*"]}]}}
    )
    credential(kube)
    checked(kube, "1h")
    needing(kube, "CloudCredential", "prod", "read")
    cluster(kube, "eu")
    await operator.settle()
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert (sufficient["status"], sufficient["reason"]) == ("True", "Sufficient")
    assert asked == [READ]
    needing(kube, "Cluster", "eu", "create")  # the cluster's deployer needs more
    await operator.settle()
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert (sufficient["status"], sufficient["reason"]) == ("False", "MissingPermissions")
    assert sufficient["message"] == (
        "missing 2 of 5: container.clusters.create, "
        "container.clusters.update (PermissionSet create)"
    )
    report = kube.body("CloudCredential", CRED)["status"]["permissions"]
    assert report["revision"] == revision(kube)
    assert [(s["name"], s["sufficient"], s["checked"], s["missingCount"], s.get("missing"))
            for s in report["sets"]] == [("create", "False", 2, 2, CREATE),
                                          ("read", "True", 3, 0, None)]  # fmt: skip
    assert asked[1:] == [CREATE, READ], "only the GCP block of a set is asked for"
    warnings = [e for e in kube.recorded.events if e[3] == "MissingPermissions"]
    assert [e[2] for e in warnings] == ["Warning"]


@run
async def test_an_edit_to_a_set_checks_again_only_the_credentials_that_use_it(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_calls(monkeypatch)
    asked = granting(monkeypatch, set(READ))
    operator = Operator(kube, clock)
    operator.put_permission_set("read", {"gcp": {"permissions": READ}})
    operator.put_permission_set("other", {"gcp": {"permissions": CREATE}})
    credential(kube)
    checked(kube, "1h")
    cluster(kube, "eu")
    needing(kube, "Cluster", "eu", "read")
    await operator.settle()
    assert len(asked) == 1
    operator.put_permission_set("other", {"gcp": {"permissions": READ}})  # used by no one
    await operator.settle()
    assert len(asked) == 1
    operator.put_permission_set("read", {"gcp": {"permissions": [*READ, *CREATE]}})
    await operator.settle()
    assert asked[-1] == [*READ, *CREATE]
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert sufficient["status"] == "False"
    operator.put_permission_set("read", None)  # deleted: said, not guessed
    await operator.settle()
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert (sufficient["status"], sufficient["reason"]) == ("Unknown", "PermissionSetNotFound")
    assert len(asked) == 2
    needing(kube, "Cluster", "eu")  # no set named any more: nothing to say
    await operator.settle()
    status = kube.body("CloudCredential", CRED)["status"]
    assert "permissions" not in status
    assert conditions.find(status["conditions"], "PermissionsSufficient") is None


@pytest.mark.parametrize(
    ("refuse", "reason"),
    [
        (Reason.ACCESS_DENIED, "CheckNotAllowed"),
        (Reason.PROVIDER_UNREACHABLE, "ProviderUnreachable"),
    ],
)
@run
async def test_a_check_that_cannot_answer_is_unknown_never_true_or_false(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch, refuse: Reason, reason: str
) -> None:
    provider_calls(monkeypatch)
    asked = granting(monkeypatch, set(READ), refuse=refuse)
    operator = Operator(kube, clock, retry_max_delay=300)
    operator.put_permission_set("read", {"gcp": {"permissions": READ}})
    credential(kube)
    needing(kube, "CloudCredential", "prod", "read")
    await operator.settle()
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert (sufficient["status"], sufficient["reason"]) == ("Unknown", "CredentialNotVerified")
    assert asked == [], "no check before the credential itself verified"
    checked(kube, "1h")
    await operator.settle()
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert (sufficient["status"], sufficient["reason"]) == ("Unknown", reason)
    assert "testIamPermissions' denied" in sufficient["message"]
    delay = operator.timers()["permissions"][CRED]
    if refuse == Reason.PROVIDER_UNREACHABLE:
        assert delay == pytest.approx(5, abs=0.1), "an outage is asked again with a backoff"
    else:
        # 60 s ± 10 % jitter, measured a few milliseconds after the timer was set.
        assert 53.5 <= delay <= 66, "a refusal is asked again at the recheck interval"


@run
async def test_missing_permissions_are_checked_again_soon_then_at_the_interval(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Granted at the provider, a missing permission is seen within the recheck
    interval, with no edit anywhere; then checks go back to the verification interval,
    and nothing is written while nothing changes."""
    provider_calls(monkeypatch)
    granted = set(READ)
    asked = granting(monkeypatch, granted)
    operator = Operator(kube, clock, permissions_recheck=20)
    operator.put_permission_set("create", {"gcp": {"permissions": CREATE}})
    credential(kube)
    checked(kube, "1h")
    cluster(kube, "eu")
    needing(kube, "Cluster", "eu", "create")
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "PermissionsSufficient")["status"] == "False"
    assert 18 <= operator.timers()["permissions"][CRED] <= 22
    granted.update(CREATE)  # an admin grants them at the provider
    await operator.advance(23)
    sufficient = find(kube, "CloudCredential", "prod", "PermissionsSufficient")
    assert (sufficient["status"], sufficient["message"]) == (
        "True", "all 2 allowed (PermissionSet create)")  # fmt: skip
    assert 3240 <= operator.timers()["permissions"][CRED] <= 3960
    writes = len(kube.recorded.writes)
    await operator.advance(600)
    assert len(kube.recorded.writes) == writes
    assert len(asked) == 2


def test_the_condition_names_at_most_ten_missing_needs() -> None:
    from cloudcred import permissions

    needs = [f"eks:Action{i:02}" for i in range(41)]
    result = permissions.answered("platform", PermissionAnswer(41, tuple(needs[:12])))
    assert result["message"] == ("missing 12 of 41: " + ", ".join(needs[:10]) + ", ...")
    many = permissions.answered(
        "big", PermissionAnswer(900, tuple(f"x:A{i:03}" for i in range(900)))
    )
    assert len(many["missing"]) == 64
    assert many["missingCount"] == 900
    status, reason, message = permissions.verdict([result, many])
    assert (status, reason) == ("False", "MissingPermissions")
    assert message.startswith("missing 912 of 941: ")
    assert message.endswith(", ... (PermissionSet platform, big)")


def summary_of(kube: FakeKube, kind: str, name: str) -> str:
    key = CRED if kind == "CloudCredential" else (NS, name)
    summary = ("Ready", "Reconciling", "Stalled")
    found = [c for c in kube.body(kind, key)["status"].get("conditions") or []
             if c["type"] in summary and c["status"] == "True"]  # fmt: skip
    return f"{found[0]['type']} ({found[0]['reason']})" if found else "none"


@run
async def test_a_cluster_short_of_its_sets_is_stalled_and_neither_deployed_nor_marked(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any deployment: the operator's deploy step does not deploy it, a new
    revision marks the other clusters and not it; granted, it deploys with no edit."""
    calls = provider_calls(monkeypatch)
    granted = set(READ)
    granting(monkeypatch, granted)
    operator = Operator(kube, clock, permissions_recheck=20)
    operator.put_permission_set("create", {"gcp": {"permissions": CREATE}})
    credential(kube)
    checked(kube, "1h")
    cluster(kube, "new", external=False)  # never deployed: the deploy step's
    needing(kube, "Cluster", "new", "create")
    await operator.settle()
    first = revision(kube)
    cluster(kube, "old", deployed=first)  # deployed by an external deployer
    cluster(kube, "free", deployed=first)
    needing(kube, "Cluster", "old", "create")
    await operator.settle()
    for name in ("new", "old"):
        assert summary_of(kube, "Cluster", name) == "Stalled (MissingPermissions)"
        assert find(kube, "Cluster", name, "Stalled")["message"] == (
            "missing 2 of 2: container.clusters.create, container.clusters.update "
            "(PermissionSet create)"
        )
    assert "deployedRevision" not in kube.body("Cluster", (NS, "new"))["status"]
    assert calls.count("check_region") == 0
    new_key(kube, KEY.replace("cc@", "cc2@"))  # a new revision
    await operator.settle()
    second = revision(kube)
    assert marked(kube) == {"free": second, "new": None, "old": None}
    assert summary_of(kube, "CloudCredential", "prod") != "Stalled (MissingPermissions)", (
        "a cluster's sets do not stall the credential"
    )
    granted.update(CREATE)  # granted at the provider: no edit of any object
    await operator.advance(23)
    assert kube.body("Cluster", (NS, "new"))["status"]["deployedRevision"] == second
    assert marked(kube)["old"] is None, "one at a time (maxConcurrent 25 %): free's turn"
    deploy(kube, "free", second)
    await operator.advance(2)  # the credential's list is paced: a second
    assert marked(kube)["old"] == second
    assert summary_of(kube, "Cluster", "old") == "Ready (ExternalDeployPending)"


@run
async def test_a_credential_short_of_its_own_sets_is_stalled(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_calls(monkeypatch)
    granting(monkeypatch, set(READ))
    operator = Operator(kube, clock)
    operator.put_permission_set("create", {"gcp": {"permissions": CREATE}})
    credential(kube)
    checked(kube, "1h")
    await operator.settle()
    assert summary_of(kube, "CloudCredential", "prod") == "Ready (Ready)"
    needing(kube, "CloudCredential", "prod", "create")
    await operator.settle()
    assert summary_of(kube, "CloudCredential", "prod") == "Stalled (MissingPermissions)"
    operator.put_permission_set("create", {"gcp": {"permissions": READ}})  # the admin's fix
    await operator.settle()
    assert summary_of(kube, "CloudCredential", "prod") == "Ready (Ready)"


@run
async def test_a_check_that_cannot_answer_holds_no_deployment(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown says why; it is not a verdict against the cluster."""
    provider_calls(monkeypatch)
    granting(monkeypatch, set(), refuse=Reason.ACCESS_DENIED)
    operator = Operator(kube, clock)
    operator.put_permission_set("create", {"gcp": {"permissions": CREATE}})
    credential(kube)
    checked(kube, "1h")
    cluster(kube, "new", external=False)
    needing(kube, "Cluster", "new", "create")
    await operator.settle()
    assert find(kube, "CloudCredential", "prod", "PermissionsSufficient")["status"] == "Unknown"
    assert kube.body("Cluster", (NS, "new"))["status"]["deployedRevision"] == revision(kube)
    assert summary_of(kube, "Cluster", "new") == "Ready (Ready)"


def test_status_lists_at_most_256_missing_needs_in_all_each_count_exact() -> None:
    from cloudcred import permissions

    results = [permissions.answered(f"set-{i}", PermissionAnswer(
        100, tuple(f"svc:Action{i}{j:03}" + "x" * 600 * (j == 0) for j in range(100))))
        for i in range(5)]  # fmt: skip
    kept = permissions.bounded(results)
    assert [len(r.get("missing") or []) for r in kept] == [64, 64, 64, 64, 0]
    assert [r["missingCount"] for r in kept] == [100] * 5
    assert max(len(need) for r in kept for need in r.get("missing") or []) == 512


def test_a_cluster_waits_for_an_unchecked_set_unless_status_has_no_room_for_it() -> None:
    from cloudcred import permissions

    answered = tuple((f"set-{i:02}", "True", "all 1 allowed") for i in range(32))
    full = SimpleNamespace(
        permission_sets=(), revision="v2-a", permission_report=("v2-a", answered)
    )
    short = SimpleNamespace(permission_sets=(), revision="v2-a",
                            permission_report=("v2-a", answered[:3]))  # fmt: skip
    assert permissions.cluster_hold(short, ["set-99"])[0] == "CheckingPermissions"  # type: ignore[index]
    assert permissions.cluster_hold(full, ["set-99"]) is None
    stale = SimpleNamespace(
        permission_sets=(), revision="v2-b", permission_report=("v2-a", answered)
    )
    assert permissions.cluster_hold(stale, ["set-01"])[0] == "CheckingPermissions"  # type: ignore[index]


@run
async def test_a_rotating_key_reaches_another_namespace_only_when_the_credential_says_so(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under automatic rotation the key can make keys of its identity: another
    namespace's cluster gets no copy (DeployFailed says which field allows it, the Secret
    delivered before is revoked, in an Event that names the field) until
    spec.delivery.shareRotatingKey is true, when it is delivered again. The credential's
    own namespace is not affected."""
    provider_calls(monkeypatch)
    ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock, delivery_enabled=True)
    credential(kube, key=key_file("k1"))
    body = kube.body("CloudCredential", CRED)
    blue = {"matchLabels": {"team": "blue"}}
    body["spec"]["allowedNamespaces"] = blue
    body["spec"]["delivery"] = {"enabled": True, "allowedNamespaces": blue}
    kube.put("CloudCredential", body)
    operator.label_namespace("tenant", {"team": "blue"})
    kube.put("Cluster", {"metadata": {"namespace": "tenant", "name": "eu"},
                         "spec": {"provider": "GCP", "region": "europe-west1",
                                  "credentialRef": {"name": "prod", "namespace": NS},
                                  "credentialsSecret": {"name": "gcp-creds"}}})  # fmt: skip
    cluster(kube, "home", external=False, secret="home-creds")
    await operator.settle()
    assert ("tenant", "gcp-creds") in kube.secrets

    body = kube.body("CloudCredential", CRED)
    body["spec"]["rotation"] = {"policy": "Automatic", "maxAge": "90d", "gracePeriod": "1h"}
    kube.put("CloudCredential", body)
    await operator.settle()
    assert ("tenant", "gcp-creds") not in kube.secrets
    revoked = [e for e in kube.recorded.events if e[1] == ("tenant", "eu")
               and e[3] == "CredentialsRevoked"]  # fmt: skip
    assert "spec.delivery.shareRotatingKey" in revoked[-1][4], revoked
    assert (NS, "home-creds") in kube.secrets  # its own namespace still receives it

    body = kube.body("CloudCredential", CRED)
    body["spec"]["delivery"]["shareRotatingKey"] = True
    kube.put("CloudCredential", body)
    await operator.settle()
    assert ("tenant", "gcp-creds") in kube.secrets


@run
async def test_a_key_another_credential_uses_is_kept_and_the_rotation_ends_saying_who(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another CloudCredential (another team's, with a copy of the key file) names k1.
    The rotation of prod moves prod to k2 but never deactivates nor deletes k1: it ends
    with KeyKept naming the other credential."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    kube.put_secret(
        "team-b", "copy", {"key.json": base64.b64encode(key_file("k1").encode()).decode()}
    )
    kube.put("CloudCredential", {"metadata": {"namespace": "team-b", "name": "other"},
                                 "spec": {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {
                                     "name": "copy", "key": "key.json"}}}})  # fmt: skip
    await rotated_to_k2_or_kept(kube, operator)
    assert "k1" not in account.retired(), account.changes
    assert "k1" in account.keys
    kept = [e for e in kube.recorded.events if e[3] == "KeyKept"]
    assert kept, kube.recorded.events
    assert "CloudCredential team-b/other" in kept[-1][4]
    state = rotation_state(kube)
    assert (state["phase"], state["keyId"]) == ("Idle", "k2")


@pytest.mark.parametrize("claimed", [True, False])
@run
async def test_a_credential_whose_secrets_the_operator_may_not_read_keeps_what_it_shows(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch, claimed: bool
) -> None:
    """With per-namespace rights, another namespace's Secrets answer 403. A credential
    there that shows k1 as its key (status.key.id, written by its own installation's
    verifier) keeps k1; one that shows nothing does not stop the rotation, which ends
    rather than retrying the refused read for ever."""
    provider_calls(monkeypatch)
    account = ServiceAccount(monkeypatch, clock)
    operator = Operator(kube, clock)
    kube.unreadable_namespaces.add("team-b")
    kube.put_secret(
        "team-b", "copy", {"key.json": base64.b64encode(key_file("k1").encode()).decode()}
    )
    kube.put("CloudCredential", {"metadata": {"namespace": "team-b", "name": "other"},
                                 "spec": {"provider": "GCP", "gcp": {"serviceAccountKeyRef": {
                                     "name": "copy", "key": "key.json"}}},
                                 "status": {"key": {"id": "k1"}} if claimed else {}})  # fmt: skip
    await rotated_to_k2_or_kept(kube, operator)
    state = rotation_state(kube)
    assert (state["phase"], state["keyId"]) == ("Idle", "k2"), state
    if claimed:
        assert "k1" not in account.retired(), account.changes
        kept = [e for e in kube.recorded.events if e[3] == "KeyKept"]
        assert "CloudCredential team-b/other" in kept[-1][4]
    else:
        assert account.retired() == ["k1", "k1"], account.changes


async def rotated_to_k2_or_kept(kube: FakeKube, operator: Operator) -> None:
    """``rotated_to_k2`` without its final check: the rotation may end by keeping k1."""
    credential(kube, key=key_file("k1"), check=True)
    await operator.settle()
    cluster(kube, "ext", deployed=revision(kube))
    automatic(kube, rotate_now="now")
    await operator.settle()
    deploy(kube, "ext", revision(kube))
    await operator.settle()
    for seconds in (3.1, 3.1, DELETE_AFTER + 0.1):
        await operator.advance(seconds)


@run
async def test_scaleway_keys_rotate_only_with_a_boundarys_rotation_identity(
    kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Managing Scaleway API keys takes IAMManager, which cannot be narrowed: a key
    tenants hold never rotates itself. Without a rotation identity the rotation says so
    (RotationNotSupported) and calls nothing; once a CredentialBoundary names one, its
    key (a Secret in the operator's namespace) makes every call."""
    from cloudcred.boundary import Boundary
    from cloudcred.providers import scaleway

    seen: list[tuple[str, str | None]] = []

    def listing(spec: Any, secrets: Any, context: Any) -> list[KeyFacts]:
        identity = context.rotation_identity
        seen.append(("list", identity["accessKey"].get_secret_value() if identity else None))
        return [KeyFacts("SCWAAAAAAAAAAAAAAAAA")]

    def creating(spec: Any, secrets: Any, context: Any) -> NewKey:
        seen.append(("create", context.rotation_identity["accessKey"].get_secret_value()))
        return NewKey(KeyFacts("SCWBBBBBBBBBBBBBBBBB"),
                      {"secretKey": SecretStr("6170692e-7363-616c-6577-61792e636f6d")})  # fmt: skip

    monkeypatch.setattr(scaleway, "verify", lambda spec, secrets, context:
                        Verification(identity="application 1", static_keys=True))  # fmt: skip
    monkeypatch.setattr(scaleway, "key_facts", lambda spec, secrets, context: None)
    monkeypatch.setattr(scaleway, "list_keys", listing)
    monkeypatch.setattr(scaleway, "create_key", creating)
    operator = Operator(kube, clock)
    kube.put_secret(NS, "scw", {"secretKey": base64.b64encode(
        b"11111111-2222-4333-8444-555555555555").decode()})  # fmt: skip
    kube.put("CloudCredential", {"metadata": {"namespace": NS, "name": "scw"}, "spec": {
        "provider": "SCALEWAY", "scaleway": {
            "accessKey": "SCWAAAAAAAAAAAAAAAAA",
            "secretKeyRef": {"name": "scw", "key": "secretKey"},
            "projectId": "6170692e-7363-616c-6577-61792e636f6d"},
        "rotation": {"policy": "Automatic", "maxAge": "90d", "gracePeriod": "1h"}}})  # fmt: skip
    await operator.settle()
    state = rotation_state(kube, (NS, "scw"))
    assert state.get("reason") == "RotationNotSupported", state
    assert "rotation identity" in state["message"]
    assert seen == []

    operator.label_namespace(NS, {"team": "a"})
    kube.put_secret("default", "scw-rotator", {
        "accessKey": base64.b64encode(b"SCWADMINADMINADMINAD").decode(),
        "secretKey": base64.b64encode(b"99999999-2222-4333-8444-555555555555").decode(),
    })  # fmt: skip
    caches = operator.controllers.caches
    change = caches.boundaries.apply(("", "team-a"), Boundary.from_body({
        "metadata": {"name": "team-a"},
        "spec": {"namespaceSelector": {"matchLabels": {"team": "a"}},
                 "scaleway": {"rotationIdentitySecret": "scw-rotator"}}}))  # fmt: skip
    operator.controllers._changed("CredentialBoundary", [change])
    await operator.settle()
    assert {who for _, who in seen} == {"SCWADMINADMINADMINAD"}  # every call, the identity's
    assert ("create", "SCWADMINADMINADMINAD") in seen
    assert rotation_state(kube, (NS, "scw"))["keyId"] == "SCWBBBBBBBBBBBBBBBBB"
