"""The rotation record: the operator's own account of one credential's rotation.

Deleting a cloud key is the most dangerous thing the operator does, so what decides it
lives where a tenant cannot write it: one Secret per credential in the operator's own
namespace (the installation's, ``installation.operator_namespace``), named from the
credential's namespace and name, carrying the credential's UID. It holds the phase and
what the steps need (the key in use, the original key a rotation replaces, the keys the
operator made, the identity's keys before a create). ``status.rotation`` is a view
written from it; the operator never reads a rotation decision from status, so a forged
status changes nothing and a lost one is written again.

Every write is compare-and-swap on the Secret's ``resourceVersion``: two replicas, or a
step and a stale retry, never both record (``Conflict``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cloudcred.constants import GROUP, MANAGED_BY_LABEL
from cloudcred.kube import AlreadyExists, Conflict

RECORD_LABEL = f"{GROUP}/rotation-record"
CREDENTIAL_ANNOTATION = f"{GROUP}/credential"
RECORD_FIELD = "record.json"
RECORD_PREFIX = "cloudcred-rotation-"

# What the record keeps for the operator alone: never shown in status.
PRIVATE_FIELDS = ("knownKeyIds", "restore", "attempt", "attemptTime", "spec", "orphanedTime")


def record_name(namespace: str, name: str) -> str:
    """The record's Secret: a digest of namespace/name (together they exceed a name)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:20]
    return RECORD_PREFIX + digest


@dataclass(frozen=True)
class RotationRecord:
    """One credential's rotation as the operator recorded it.

    ``state`` is the rotation's phase and fields (what ``status.rotation`` shows, plus
    ``PRIVATE_FIELDS``); ``made`` the keys the operator's own create calls returned and
    that are not deleted yet (the only keys it ever cleans up); ``secret_uids`` the UID
    of the Secret it made for each of them. ``resource_version`` is the Secret's at the
    read (None: not stored yet)."""

    namespace: str
    name: str
    uid: str
    state: dict[str, Any] = field(default_factory=dict)
    made: tuple[str, ...] = ()
    secret_uids: dict[str, str] = field(default_factory=dict)
    resource_version: str | None = None
    secret_uid: str | None = None

    def view(self) -> dict[str, Any]:
        """What ``status.rotation`` shows of it."""
        return {key: value for key, value in self.state.items()
                if value is not None and key not in PRIVATE_FIELDS}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps({"namespace": self.namespace, "name": self.name, "uid": self.uid,
                           "state": self.state, "made": list(self.made),
                           "secretUids": self.secret_uids}, sort_keys=True)  # fmt: skip

    @classmethod
    def from_json(cls, text: str, resource_version: str | None,
                  secret_uid: str | None) -> RotationRecord:  # fmt: skip
        found = json.loads(text)
        return cls(
            namespace=str(found["namespace"]),
            name=str(found["name"]),
            uid=str(found.get("uid") or ""),
            state=dict(found.get("state") or {}),
            made=tuple(str(key) for key in found.get("made") or ()),
            secret_uids={str(k): str(v) for k, v in (found.get("secretUids") or {}).items()},
            resource_version=resource_version,
            secret_uid=secret_uid,
        )


class SecretStore(Protocol):
    """The Kubernetes calls the records need (``kube.Kube``)."""

    async def read_secret_versioned(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], str, str] | None: ...

    async def create_secret_versioned(
        self, namespace: str, name: str, data: dict[str, str], metadata: dict[str, Any]
    ) -> tuple[str, str]: ...

    async def swap_secret_data(
        self, namespace: str, name: str, uid: str, resource_version: str, data: dict[str, str]
    ) -> str: ...

    async def delete_secret(self, namespace: str, name: str, uid: str) -> None: ...

    async def labelled_secret_annotations(
        self, namespace: str, label: str
    ) -> list[dict[str, str]]: ...


class RecordStore:
    """The records in the operator's namespace."""

    def __init__(self, kube: SecretStore, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    async def read(self, namespace: str, name: str) -> RotationRecord | None:
        """The record of credential namespace/name; None when there is none."""
        found = await self.kube.read_secret_versioned(self.namespace, record_name(namespace, name))
        if found is None:
            return None
        data, resource_version, uid = found
        text = base64.b64decode(data.get(RECORD_FIELD, "")).decode() or "{}"
        record = RotationRecord.from_json(text, resource_version, uid) if text != "{}" else None
        if record is None or (record.namespace, record.name) != (namespace, name):
            return None  # not a record of this credential: never acted on
        return record

    async def write(self, record: RotationRecord) -> RotationRecord:
        """Store ``record`` if the stored one is still the one it was read from (or, for a
        new record, if none exists); raises Conflict otherwise. Returns it as stored."""
        name = record_name(record.namespace, record.name)
        data = {RECORD_FIELD: base64.b64encode(record.to_json().encode()).decode()}
        if record.resource_version is None or record.secret_uid is None:
            metadata = {
                "labels": {MANAGED_BY_LABEL: "cloudcred", RECORD_LABEL: "true"},
                "annotations": {CREDENTIAL_ANNOTATION: f"{record.namespace}/{record.name}"},
            }
            try:
                version, uid = await self.kube.create_secret_versioned(
                    self.namespace, name, data, metadata
                )
            except AlreadyExists:
                raise Conflict(f"rotation record {self.namespace}/{name}") from None
            return replace(record, resource_version=version, secret_uid=uid)
        version = await self.kube.swap_secret_data(self.namespace, name, record.secret_uid,
                                                   record.resource_version, data)  # fmt: skip
        return replace(record, resource_version=version)

    async def credentials(self) -> list[tuple[str, str]]:
        """The credentials (namespace, name) that have a record."""
        found = []
        for found_on in await self.kube.labelled_secret_annotations(self.namespace,
                                                                    RECORD_LABEL):  # fmt: skip
            namespace, _, name = found_on.get(CREDENTIAL_ANNOTATION, "").partition("/")
            if namespace and name:
                found.append((namespace, name))
        return found

    async def delete(self, record: RotationRecord) -> None:
        """Remove a record (its credential is gone and no key of the operator's is left)."""
        if record.secret_uid is not None:
            await self.kube.delete_secret(self.namespace, record_name(record.namespace,
                                                                      record.name),
                                          record.secret_uid)  # fmt: skip
