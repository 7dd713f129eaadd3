"""The installation key Secret while the operator runs: the key stays the one loaded at
start (``installation.load_installation``), whatever happens to the Secret.

- Deleted: written back from memory with the same key (and the principal annotation
  ``cloudcred trust-policy`` reads), a Warning Event ``InstallationKeyDeleted`` and a
  warning in the log; ``cloudcred_installation_key_restores_total`` counts it. Nothing
  derived from the key changes.
- Holding another key, or none that is valid: the operator keeps its key, never
  rewrites the Secret (the new key may be a re-key on purpose), and says so loudly: a
  Warning Event ``InstallationKeyChanged`` per distinct change, an error in the log and
  ``cloudcred_installation_key_changed`` 1 (an alert in the chart). The new key takes
  effect only when the operator restarts, where the start check governs it.
- Holding the key in use again (restored from the backup): a Normal Event
  ``InstallationKeyRestored``; the gauge is back to 0.

No message names the key or anything computed from it.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from cloudcred import metrics
from cloudcred.bindings import Key, object_reference
from cloudcred.cache import Caches
from cloudcred.installation import (
    KEY_SECRET_LABELS,
    PRINCIPAL_ANNOTATION,
    Installation,
    changed_key_message,
    deleted_key_message,
    recorded_principal,
    secret_data,
)
from cloudcred.kube import AlreadyExists, Kube

logger = logging.getLogger("cloudcred.installation")

RESTORES = Counter(
    "cloudcred_installation_key_restores",
    "Times the operator wrote the installation Secret back (with the key it uses) after "
    "it was deleted while it ran.",
    registry=metrics.REGISTRY,
)


class InstallationKeyReconciler:
    def __init__(self, kube: Kube, caches: Caches, installation: Installation) -> None:
        self.kube = kube
        self.caches = caches
        self.installation = installation
        self._reported: str | None = None  # digest of the changed data last reported

    async def reconcile(self, key: Key) -> None:
        namespace = key[0]
        info = self.caches.installation_key.get(key)
        reference = object_reference("Secret", key, info.uid if info else None)
        reference["apiVersion"] = "v1"
        if info is None:
            await self._write_back(key)
        elif not info.holds_key_in_use:
            if self._reported == info.digest:
                return
            message = changed_key_message(namespace)
            logger.error("%s", message)
            await self.kube.post_event(reference, "Warning", "InstallationKeyChanged", message)
            self._reported = info.digest
        elif self._reported is not None:
            self._reported = None
            message = (f"Secret {namespace}/{key[1]} holds the installation key in use "
                       "again")  # fmt: skip
            logger.info("%s", message)
            await self.kube.post_event(reference, "Normal", "InstallationKeyRestored", message)

    async def _write_back(self, key: Key) -> None:
        """The same key, by a create (never over a Secret someone made meanwhile: its
        watch event brings it here again)."""
        namespace, name = key
        metadata: dict[str, object] = {"labels": dict(KEY_SECRET_LABELS)}
        if (principal := recorded_principal(namespace)) is not None:
            metadata["annotations"] = {PRINCIPAL_ANNOTATION: principal}
        try:
            await self.kube.create_secret(namespace, name, secret_data(self.installation.key),
                                          metadata)  # fmt: skip
        except AlreadyExists:
            return
        RESTORES.inc()
        message = deleted_key_message(namespace)
        logger.warning("%s", message)
        reference = object_reference("Secret", key, None)
        reference["apiVersion"] = "v1"
        await self.kube.post_event(reference, "Warning", "InstallationKeyDeleted", message)
