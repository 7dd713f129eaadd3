"""The one health verdict of each object, in the kstatus convention.

Every object carries three summary conditions, always all three:

- ``Ready``: True when the operator's part is done and the object works;
- ``Reconciling``: True while work is under way that will finish without anyone acting
  (a check being retried, a rollout moving, a deletion waiting for its clusters);
- ``Stalled``: True when only a person can move it on (credentials the provider refuses,
  a blocked rollout, a Cluster naming a credential that does not exist).

At most one of them is True. kstatus (Flux, kpt) reads ``Reconciling``/``Stalled``
first, then ``Ready``; the Argo CD scripts under ``deploy/argocd`` read the same three;
``kubectl wait --for=condition=Ready`` reads ``Ready``: the tools cannot disagree. The
detailed conditions (``Verified``, ``RolloutComplete``, ``CredentialBound``,
``RedeployPending``) stay as they are and say why.

A cluster whose only missing step is its external deployer's is Ready: the operator
has done its part, and an Argo CD sync wave that waited for it would never reach the
deployer. ``RedeployPending`` says whether the deployer has caught up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloudcred import conditions
from cloudcred.bindings import NO_REVISION
from cloudcred.providers.base import TRANSIENT_REASONS, Reason

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
MISSING_PERMISSIONS = "MissingPermissions"  # permissions.MISSING
SUMMARY_CONDITIONS = (READY, RECONCILING, STALLED)

# Reasons of the summary conditions not taken from a detailed condition.
DELETING = "Deleting"
NOT_CHECKED = "NotChecked"
ROLLOUT_PAUSED = "RolloutPaused"
EXTERNAL_DEPLOY_PENDING = "ExternalDeployPending"

# Verified reasons under which the operator keeps trying by itself (the rest need a person,
# or, for disabled or unavailable checks, nothing at all).
_RETRIED = {*TRANSIENT_REASONS, Reason.VERIFICATION_FAILED}
_NOT_NEEDED = {Reason.VERIFICATION_DISABLED, Reason.VERIFICATION_UNAVAILABLE}


@dataclass(frozen=True)
class Verdict:
    """Which summary condition is True, with the reason and message all three carry."""

    state: str  # READY, RECONCILING or STALLED
    reason: str
    message: str

    def conditions(
        self, previous: list[dict[str, Any]] | None, generation: int | None
    ) -> list[dict[str, Any]]:
        """``Ready``, ``Reconciling`` and ``Stalled``: the verdict's one True, the others False
        with the same reason and message (so each one read alone still says why)."""
        return [
            conditions.condition(
                previous,
                type_,
                conditions.TRUE if type_ == self.state else conditions.FALSE,
                self.reason,
                self.message,
                generation,
            )
            for type_ in SUMMARY_CONDITIONS
        ]


def credential_verdict(
    verified: dict[str, Any] | None,
    rollout_complete: dict[str, Any] | None,
    *,
    deleting: str | None = None,
    paused: bool = False,
    only_external_behind: bool = False,
    missing_permissions: str | None = None,
) -> Verdict:
    """A CloudCredential's verdict from its ``Verified`` and ``RolloutComplete`` conditions.

    ``deleting`` is why a deletion waits (None when not being deleted);
    ``only_external_behind``: every cluster not yet on the current revision is deployed by
    an external deployer and none failed."""
    if deleting is not None:
        return Verdict(RECONCILING, DELETING, deleting)
    if verified is None:
        return Verdict(RECONCILING, NOT_CHECKED, "waiting for the operator to check the credential")
    reason, message = str(verified.get("reason", "")), str(verified.get("message", ""))
    if verified.get("status") != conditions.TRUE and reason not in _NOT_NEEDED:
        if reason in _RETRIED:
            return Verdict(RECONCILING, reason, f"{message} (the operator retries)")
        return Verdict(STALLED, reason, message)
    if missing_permissions:
        # Its own PermissionSets (spec.permissionSets) are not met: no cluster would deploy.
        return Verdict(STALLED, MISSING_PERMISSIONS, missing_permissions)
    if rollout_complete is None:
        return Verdict(RECONCILING, NOT_CHECKED, "waiting for the operator to plan the rollout")
    progress = str(rollout_complete.get("message", ""))
    if rollout_complete.get("status") == conditions.TRUE:
        if reason in _NOT_NEEDED:
            return Verdict(READY, READY, f"not verified ({reason}: {message}); {progress}")
        return Verdict(READY, READY, progress)
    if rollout_complete.get("reason") == "RolloutBlocked":
        return Verdict(STALLED, "RolloutBlocked", progress)
    if paused:
        return Verdict(RECONCILING, ROLLOUT_PAUSED, progress)
    if only_external_behind:
        return Verdict(READY, EXTERNAL_DEPLOY_PENDING,
                       f"only external deployers have work left: {progress}")  # fmt: skip
    return Verdict(RECONCILING, str(rollout_complete.get("reason", "")), progress)


def cluster_verdict(
    bound: tuple[bool, str, str],
    redeploy: tuple[bool, str, str] | None,
    *,
    external: bool,
    no_revision: str,
    stalled_by_credential: bool = False,
    permissions: tuple[str, str] | None = None,
) -> Verdict:
    """A Cluster's verdict from its binding (bound, reason, message) and its
    ``RedeployPending`` state (pending, reason, message; None while the credential has no
    revision, explained by ``no_revision``). ``stalled_by_credential``: the credential's revision
    may not roll out (it failed verification), so the cluster waits for a person too."""
    is_bound, bind_reason, bind_message = bound
    if not is_bound:
        # No credential of that name, another provider's, a namespace not admitted, or one
        # being deleted: nothing the operator can do until someone changes an object.
        return Verdict(STALLED, bind_reason, bind_message)
    if permissions is not None and permissions[0] == MISSING_PERMISSIONS:
        # Its deployer would fail: a person grants the permission or changes the set.
        return Verdict(STALLED, *permissions)
    if redeploy is None:
        return Verdict(RECONCILING, NO_REVISION, no_revision)
    pending, reason, message = redeploy
    if pending and permissions is not None and reason != "DeployFailed":
        return Verdict(RECONCILING, *permissions)  # its sets are being checked
    if reason == "DeployFailed":
        return Verdict(STALLED, reason, message)
    if pending and stalled_by_credential:
        return Verdict(STALLED, "CredentialNotVerified", message)
    if not pending:
        return Verdict(READY, READY, message)
    if external:
        return Verdict(READY, EXTERNAL_DEPLOY_PENDING, message)
    return Verdict(RECONCILING, reason, message)
