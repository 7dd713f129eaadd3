"""The rotation reconciler: automatic rotation of one credential's key.

Runs ``Rotator.step`` for a credential with ``spec.rotation.policy: Automatic`` or a
rotation under way (a switch to Manual completes it), and looks again when the step
says (``requeue_after``). A change of ``cloudcred.io/rotate-now``, of
``spec.rotation``, of the rotation's state or of the rollout it waits for queues it at
once (the wiring). A credential's steps run one at a time (the queue holds its key
for one worker); several credentials rotate at once, as their provider calls may take
seconds each.
"""

from __future__ import annotations

from cloudcred import conditions
from cloudcred.bindings import CREDENTIAL_BOUND, CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.controllers.controller import DONE, Result
from cloudcred.rotator import Rotator

ROTATION_WORKERS = 4


def rotating(credential: CredentialInfo) -> bool:
    """Automatic, or a ``status.rotation`` to compare with the operator's record (a
    rotation not finished, a rotated key in effect, or a status someone else wrote):
    the record, not the status, says what is done about it."""
    automatic = (credential.raw_spec.get("rotation") or {}).get("policy") == "Automatic"
    return automatic or bool(credential.status.get("rotation"))


def clusters_behind(caches: Caches, key: Key, revision: str) -> list[str]:
    """The clusters bound to a credential that report a deployment of a revision other
    than ``revision`` (from the operator's caches: a rotation never retires a key on the
    word of the credential's own status alone). A cluster never deployed uses no key."""
    behind = []
    for cluster_key in caches.clusters.by("credential", key):
        cluster = caches.clusters.get(cluster_key)
        if cluster is None or not cluster.deployed_revision:
            continue
        bound = conditions.find(cluster.status.get("conditions"), CREDENTIAL_BOUND) or {}
        if bound.get("status") == conditions.TRUE and cluster.deployed_revision != revision:
            behind.append(f"{cluster.namespace}/{cluster.name}")
    return behind


class RotationReconciler:
    def __init__(self, rotator: Rotator, caches: Caches) -> None:
        self.rotator = rotator
        self.caches = caches

    async def reconcile(self, key: Key) -> Result:
        credential = self.caches.credentials.get(key)
        if credential is None:  # deleted: the keys the operator made for it are retired
            self.rotator.forget(key)
            wait = await self.rotator.retire_orphaned(*key)
            return DONE if wait is None else Result(requeue_after=wait)
        if credential.deleting or not rotating(credential):
            self.rotator.forget(key)
            return DONE
        return Result(requeue_after=await self.rotator.step(*key))
