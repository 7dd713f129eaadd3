"""The Secret reconciler: the labels of one Secret that credentials reference.

- ``cloudcred.io/credential-secret`` while any credential references the Secret: the
  operator watches exactly the Secrets with this label for data changes;
- ``cloudcred.io/in-use`` while any of those credentials has a bound cluster: the
  admission policy refuses to delete a Secret with this label.

Both are computed from the caches and released when no credential references the
Secret any more (a credential switched to another Secret, or deleted), so the old
Secret can be deleted. A Secret the operator delivered to a Cluster (its controller
owner) never gets ``in-use``: the label would block the operator's own delete when the
delivery is revoked. A Secret whose labels were dropped (``kubectl replace``, any
full update) leaves the watch's selection and is labelled again. Only the labels are
patched: the operator neither reads nor writes the data here.
"""

from __future__ import annotations

from cloudcred.bindings import Key
from cloudcred.cache import Caches
from cloudcred.constants import IN_USE_LABEL, REFERENCED_LABEL
from cloudcred.kube import Kube


class SecretReconciler:
    def __init__(self, kube: Kube, caches: Caches) -> None:
        self.kube = kube
        self.caches = caches

    async def reconcile(self, key: Key) -> None:
        users = self.caches.credentials_using_secret(key)
        referenced = bool(users)
        delivered = self.caches.delivered.get(key)
        in_use = any(self.caches.in_use(credential.key) for credential in users) and not (
            delivered is not None and delivered.owner_uid
        )
        current = self.caches.secrets.get(key)
        if current is None and not referenced:
            return  # not labelled, not wanted
        if current is not None and (current.referenced, current.in_use) == (referenced, in_use):
            return
        labels = {REFERENCED_LABEL: "true" if referenced else None,
                  IN_USE_LABEL: "true" if in_use else None}  # fmt: skip
        # False when the Secret does not exist: nothing to label (the credential's check
        # says SecretNotFound, and its next check queues this Secret again).
        await self.kube.set_secret_labels(*key, labels)
