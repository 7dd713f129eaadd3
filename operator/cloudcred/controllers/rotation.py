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

from cloudcred import rotation
from cloudcred.bindings import CredentialInfo, Key
from cloudcred.cache import Caches
from cloudcred.controllers.controller import DONE, Result
from cloudcred.rotator import Rotator

ROTATION_WORKERS = 4


def rotating(credential: CredentialInfo) -> bool:
    """Automatic, or a rotation not finished."""
    automatic = (credential.raw_spec.get("rotation") or {}).get("policy") == "Automatic"
    phase = (credential.status.get("rotation") or {}).get("phase", rotation.IDLE)
    return automatic or phase != rotation.IDLE


class RotationReconciler:
    def __init__(self, rotator: Rotator, caches: Caches) -> None:
        self.rotator = rotator
        self.caches = caches

    async def reconcile(self, key: Key) -> Result:
        credential = self.caches.credentials.get(key)
        if credential is None or credential.deleting or not rotating(credential):
            self.rotator.forget(key)
            return DONE
        return Result(requeue_after=await self.rotator.step(*key))
