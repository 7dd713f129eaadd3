"""The one health verdict (cloudcred.health): which summary condition is True, and why."""

from __future__ import annotations

from typing import Any

import pytest

from cloudcred import health


def cond(status: str, reason: str, message: str = "said") -> dict[str, Any]:
    return {"status": status, "reason": reason, "message": message}


VERIFIED = cond("True", "Verified", "AWS accepted the credential")
DONE = cond("True", "RolloutComplete", "all 2 cluster(s) are deployed")
MOVING = cond("False", "RolloutInProgress", "1 of 2 cluster(s) deployed")

CREDENTIALS = {
    "never checked": ((None, None), {}, ("Reconciling", "NotChecked")),
    "verified, rolled out": ((VERIFIED, DONE), {}, ("Ready", "Ready")),
    "secret missing (retried)": ((cond("False", "SecretNotFound"), None), {},
                                 ("Reconciling", "SecretNotFound")),
    "provider unreachable (retried)": ((cond("False", "ProviderUnreachable"), DONE), {},
                                       ("Reconciling", "ProviderUnreachable")),
    "unexpected error (retried)": ((cond("Unknown", "VerificationFailed"), DONE), {},
                                   ("Reconciling", "VerificationFailed")),
    "refused key": ((cond("False", "InvalidCredentials"), DONE), {},
                    ("Stalled", "InvalidCredentials")),
    "outside a boundary": ((cond("False", "OutsideBoundary"), DONE), {},
                           ("Stalled", "OutsideBoundary")),
    "provider refused": ((cond("False", "ProviderRefused"), DONE), {},
                         ("Stalled", "ProviderRefused")),
    "verification disabled": ((cond("Unknown", "VerificationDisabled"), DONE), {},
                              ("Ready", "Ready")),
    "verification unavailable": ((cond("Unknown", "VerificationUnavailable"), DONE), {},
                                 ("Ready", "Ready")),
    "no rollout status yet": ((VERIFIED, None), {}, ("Reconciling", "NotChecked")),
    "rollout moving": ((VERIFIED, MOVING), {}, ("Reconciling", "RolloutInProgress")),
    "rollout paused": ((VERIFIED, MOVING), {"paused": True}, ("Reconciling", "RolloutPaused")),
    "rollout blocked": ((VERIFIED, cond("False", "RolloutBlocked")), {"paused": True},
                        ("Stalled", "RolloutBlocked")),
    "only external deployers behind": ((VERIFIED, MOVING), {"only_external_behind": True},
                                       ("Ready", "ExternalDeployPending")),
    "paused beats external": ((VERIFIED, MOVING), {"only_external_behind": True, "paused": True},
                              ("Reconciling", "RolloutPaused")),
    "deleting beats everything": ((cond("False", "InvalidCredentials"), DONE),
                                  {"deleting": "in use by 2 clusters"},
                                  ("Reconciling", "Deleting")),
}  # fmt: skip


@pytest.mark.parametrize(("given", "options", "expected"), list(CREDENTIALS.values()),
                         ids=list(CREDENTIALS))  # fmt: skip
def test_credential_verdict(
    given: tuple[Any, Any], options: dict[str, Any], expected: tuple[str, str]
) -> None:
    verdict = health.credential_verdict(*given, **options)
    assert (verdict.state, verdict.reason) == expected
    assert verdict.message


CLUSTERS = {
    "deployed": ((True, "Bound", ""), (False, "UpToDate", "deployed"), {}, ("Ready", "Ready")),
    "dangling": ((False, "CredentialNotFound", "no such"), None, {},
                 ("Stalled", "CredentialNotFound")),
    "credential has no revision": ((True, "Bound", ""), None, {},
                                   ("Reconciling", "CredentialNotReady")),
    "deploy step working": ((True, "Bound", ""), (True, "RevisionChanged", "m"), {},
                            ("Reconciling", "RevisionChanged")),
    "external deployer's turn": ((True, "Bound", ""), (True, "NotDeployed", "m"),
                                 {"external": True}, ("Ready", "ExternalDeployPending")),
    "deploy failed": ((True, "Bound", ""), (True, "DeployFailed", "m"), {"external": True},
                      ("Stalled", "DeployFailed")),
    "credential failed verification": ((True, "Bound", ""), (True, "NotDeployed", "m"),
                                       {"stalled_by_credential": True},
                                       ("Stalled", "CredentialNotVerified")),
    "kept by a blocked rollout": ((True, "Bound", ""), (False, "RolloutBlocked", "m"), {},
                                  ("Ready", "Ready")),
}  # fmt: skip


@pytest.mark.parametrize(("bound", "redeploy", "options", "expected"), list(CLUSTERS.values()),
                         ids=list(CLUSTERS))  # fmt: skip
def test_cluster_verdict(
    bound: tuple[bool, str, str],
    redeploy: tuple[bool, str, str] | None,
    options: dict[str, Any],
    expected: tuple[str, str],
) -> None:
    options = {"external": False, "no_revision": "no revision yet", **options}
    verdict = health.cluster_verdict(bound, redeploy, **options)
    assert (verdict.state, verdict.reason) == expected


def test_exactly_one_summary_condition_is_true_and_all_say_why() -> None:
    verdict = health.Verdict("Stalled", "InvalidCredentials", "the key is wrong")
    written = verdict.conditions(None, 3)
    assert [(c["type"], c["status"]) for c in written] == [
        ("Ready", "False"), ("Reconciling", "False"), ("Stalled", "True")
    ]  # fmt: skip
    assert {(c["reason"], c["message"], c["observedGeneration"]) for c in written} == {
        ("InvalidCredentials", "the key is wrong", 3)
    }
    # The transition time of an unchanged status is kept.
    again = health.Verdict("Stalled", "InvalidCredentials", "still wrong").conditions(written, 4)
    assert [c["lastTransitionTime"] for c in again] == [c["lastTransitionTime"] for c in written]
