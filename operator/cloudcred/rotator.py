"""Automatic rotation: the steps, with their provider calls and writes.

``Rotator.step`` advances one credential's rotation as far as it can go now and says
when to look again. Every step re-reads the credential from the API server and its
rotation record (``rotation_record.py``: a Secret in the operator's namespace, which
tenants cannot write), records its phase there (compare-and-swap) *before* the
provider call it guards, and writes ``status.rotation`` as a view of the record
(server-side apply, manager ``cloudcred-rotator``); the decisions are in
``cloudcred.rotation``. Nothing in status decides what is deactivated or deleted, and
before each such call every CloudCredential is listed afresh: a key any of them names
now is kept.
The provider calls use the credential's own key: the old one to make the new key, the
new one (then in effect) to retire the old.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException
from pydantic import SecretStr

from cloudcred import conditions, rotation
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.config import Settings
from cloudcred.constants import API_VERSION, CREDENTIAL_PLURAL, MANAGED_BY_LABEL
from cloudcred.kube import AlreadyExists, Conflict, Forbidden, Kube, NotFound, PreconditionFailed
from cloudcred.providers import provider_module
from cloudcred.providers.base import (
    NewKey,
    RotationError,
    RotationReason,
    VerificationError,
    VerifyContext,
)
from cloudcred.rotation_record import RecordStore, RotationRecord
from cloudcred.tasks import in_thread
from cloudcred.verification import read_secrets

logger = logging.getLogger(__name__)

MANAGER = "cloudcred-rotator"
KEY_ROTATION = "KeyRotation"  # the condition: True while a rotation is under way
IDLE_RECHECK = 300.0  # seconds between looks when nothing is due
ROLLOUT_RECHECK = 5.0
# A failed step is tried again after 30 s, doubling up to CLOUDCRED_RETRY_MAX_DELAY, and
# no sooner whatever queues it (a status write, another replica's event): only a person
# asking (the spec, rotate-now) hurries it.
FAILURE_RETRY = 30.0
CONFLICT_RETRY = 1.0  # the record changed under a step: read it again soon
MAX_REPORTED_KEYS = 16
# A use of the old key this soon after the rollout completed is the operator's own last
# check with it (rolledOutTime has whole seconds), not a consumer's.
LAST_USE_MARGIN = timedelta(minutes=1)

Key = tuple[str, str]
# The record's fields that say which key is in effect (and when it is due): what an
# abandoned rotation puts back.
RESTORED = ("keyId", "secretName", "replaces", "nextRotationTime")
# The bound clusters of a credential that report a deployed revision other than the one
# given (the operator's caches: see controllers/rotation.py).
ClustersBehind = Callable[[Key, str], list[str]]
# For a credential's namespace and provider: the CredentialBoundary that names a rotation
# identity and the name of its Secret in the operator's namespace, or None.
RotationIdentity = Callable[[str, str], tuple[str, str] | None]

_T = TypeVar("_T")


def _stamp(moment: datetime | None) -> str | None:
    return conditions.timestamp(moment) if moment else None


def _decoded(value: str | None) -> str:
    """A Secret's base64 value as text (empty when absent)."""
    return base64.b64decode(value or "").decode(errors="replace").strip()


def _key(body: dict[str, Any]) -> Key:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


def _asked(body: dict[str, Any]) -> tuple[Any, ...]:
    """What a person asks of a rotation: the spec (its generation) and rotate-now."""
    metadata = body["metadata"]
    annotations = metadata.get("annotations") or {}
    return (metadata.get("generation"), annotations.get(rotation.ROTATE_NOW_ANNOTATION))


@dataclass(frozen=True)
class Backoff:
    """Failed steps of one credential in a row, and when the next may run."""

    failures: int
    until: datetime
    asked: tuple[Any, ...] | None  # what was asked when it failed (see _asked)


class Rotator:
    """One operator's rotations (one at a time per credential: see
    ``controllers/rotation.py``). The key a switch puts in effect is checked by the
    verification controller, which sees the credential's effective spec change."""

    def __init__(self, kube: Kube, settings: Settings, slots: asyncio.Semaphore,
                 records: RecordStore,
                 clusters_behind: ClustersBehind = lambda key, revision: [],
                 rotation_identity: RotationIdentity = lambda namespace, provider: None,
                 verified: Callable[[Key], bool] = lambda key: False,
                 ) -> None:  # fmt: skip
        self.kube = kube
        self.settings = settings
        self.slots = slots
        self.records = records
        self.clusters_behind = clusters_behind
        self.rotation_identity = rotation_identity
        self.verified = verified  # the verifier's own verdict (never the condition)
        self.reported: dict[Key, str] = {}  # the last failure Event, per credential
        # Per credential: the record read last shows a failed step (steps of several
        # credentials run at once, one at a time per credential).
        self.failure_shown: dict[Key, bool] = {}
        # Per credential: the record as read or written last (its resourceVersion is
        # what the next write swaps against), and the view last written from it.
        self.current: dict[Key, RotationRecord] = {}
        self.shown: dict[Key, dict[str, Any]] = {}
        self.unknown_reported: dict[Key, tuple[str, ...]] = {}
        self._users: dict[Key, list[str]] = {}  # who uses a key a step would retire
        # This operator's create attempts, as its record shows them (see _fenced).
        self.attempt_id = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.backoffs: dict[Key, Backoff] = {}  # per credential, after failed steps
        self.asked: dict[Key, tuple[Any, ...]] = {}  # per credential, as last read

    def forget(self, key: Key) -> None:
        self.backoffs.pop(key, None)
        self.asked.pop(key, None)
        self.reported.pop(key, None)
        self.failure_shown.pop(key, None)
        self.current.pop(key, None)
        self.unknown_reported.pop(key, None)

    def view_moved(self, key: Key, view: dict[str, Any] | None) -> bool:
        """Whether ``status.rotation`` is other than the view last written from the
        record (a forged or lost status): the rotation controller looks again."""
        return key in self.shown and (view or {}) != self.shown[key]

    def _failure_shown(self, body: dict[str, Any]) -> bool:
        return self.failure_shown.get(_key(body), False)

    async def step(self, namespace: str, name: str) -> float:
        """Advance the rotation of one credential; seconds until it should look again."""
        key = (namespace, name)
        try:
            wait = await self._advance(namespace, name)
        except RotationError as error:
            await self._failed(namespace, name, error)
            # Not supported: nothing changes by itself (a boundary's identity, a policy
            # change queue the step at once).
            if error.reason == RotationReason.NOT_SUPPORTED:
                return IDLE_RECHECK
            return self._back_off(key)
        except Conflict:
            # Another writer (a replica in a handover, a step's stale retry) recorded
            # first: nothing was done on the old record; read it again.
            logger.info("rotation of %s/%s: its record changed; reading it again",
                        namespace, name)  # fmt: skip
            self.current.pop(key, None)
            return CONFLICT_RETRY
        except ApiException as error:
            # The API server refused or failed a write: the phase recorded last stands,
            # and the step is tried again from it.
            logger.warning("rotating %s/%s: the API server answered HTTP %s; retrying",
                           namespace, name, error.status)  # fmt: skip
            return self._back_off(key)
        except (RuntimeError, PreconditionFailed) as error:  # kube.py's: no data in the text
            logger.warning("rotating %s/%s: %s; retrying", namespace, name, error)
            return self._back_off(key)
        if self._backoff_left(key) is None:  # the step ran (not held back): it went through
            self.backoffs.pop(key, None)
        return wait

    def _back_off(self, key: Key) -> float:
        """A step failed: seconds until it may run again (``FAILURE_RETRY`` doubling)."""
        failures = self.backoffs[key].failures + 1 if key in self.backoffs else 1
        delay = min(FAILURE_RETRY * 2.0 ** (failures - 1), self.settings.retry_max_delay)
        asked = self.asked.get(key)
        self.backoffs[key] = Backoff(failures, conditions.now() + timedelta(seconds=delay), asked)
        return delay

    def _backoff_left(self, key: Key) -> float | None:
        """Seconds a failed step still waits, or None: it may run. What a person asks
        (the spec, rotate-now) since the failure ends the wait."""
        backoff = self.backoffs.get(key)
        if backoff is None or backoff.asked != self.asked.get(key):
            return None
        left = (backoff.until - conditions.now()).total_seconds()
        return left if left > 0 else None

    async def retire_orphaned(self, namespace: str, name: str) -> float | None:
        """A credential that is gone: retire the keys the operator made for it, by the
        same rules as a rotation (no credential names the key, no cluster uses it: a
        credential with clusters cannot be deleted). Keys it no longer used go at once;
        the key in use waits gracePeriod from the deletion, so that a delete and re-create
        under the same name (a GitOps tool, a restore) takes it up again meanwhile. Then
        the record goes. Seconds until it should look again; None: nothing left."""
        try:
            return await self._retire_orphaned(namespace, name)
        except RotationError as error:
            logger.warning("retiring the keys of deleted %s/%s: %s: %s; retrying", namespace,
                           name, error.reason.value, error.message)  # fmt: skip
            return FAILURE_RETRY
        except Conflict:
            return CONFLICT_RETRY
        except (ApiException, RuntimeError, PreconditionFailed) as error:
            logger.warning("retiring the keys of deleted %s/%s: %s; retrying", namespace, name,
                           getattr(error, "status", None) or error)  # fmt: skip
            return FAILURE_RETRY

    async def _retire_orphaned(self, namespace: str, name: str) -> float | None:
        body = await self.kube.read_credential(namespace, name)
        if body is not None:  # still there (its finalizer), or made again: its own steps
            return ROLLOUT_RECHECK if body["metadata"].get("deletionTimestamp") else None
        record = await self.records.read(namespace, name)
        if record is None:
            return None
        key = (namespace, name)
        self.current[key] = record
        state, spec, now = dict(record.state), record.state.get("spec"), conditions.now()
        if not record.made or not spec:
            await self.records.delete(record)
            return None
        if not state.get("orphanedTime"):
            state["orphanedTime"] = _stamp(now)
            await self._store(key, state)
        gone = {"apiVersion": API_VERSION, "kind": "CloudCredential",
                "metadata": {"namespace": namespace, "name": name, "uid": record.uid},
                "spec": spec}  # fmt: skip
        in_use = state.get("keyId") if rotation.in_effect(spec, state) else None
        grace = rotation.grace_period((spec.get("rotation") or {}).get("gracePeriod") or "24h")
        due = (conditions.parse_time(state["orphanedTime"]) or now) + grace
        for key_id in sorted(record.made, key=lambda made: made == in_use):  # in use last
            if key_id == in_use and now < due:
                return min(IDLE_RECHECK, max((due - now).total_seconds(), 1.0))
            if await self._may_retire(gone, state, key_id):
                await self._provider(gone, lambda module, spec, secrets, context, key=key_id:
                                     module.delete_key(spec, secrets, context, key))  # fmt: skip
                await self._delete_secret(gone, key_id)
                await self._event(gone, "Normal", "KeyDeleted",
                                  f"deleted key {key_id}, made for this credential, which is "
                                  "deleted")  # fmt: skip
            made = tuple(k for k in self.current[key].made if k != key_id)
            await self._store(key, state, made=made)  # kept when another credential names it
        await self.records.delete(self.current.pop(key))
        return None

    async def _store(self, key: Key, state: dict[str, Any], made: tuple[str, ...] | None = None,
                     secret_uids: dict[str, str] | None = None) -> None:  # fmt: skip
        """Record (compare-and-swap on the record read), without showing it: ``_write``
        shows it too; the credential of ``retire_orphaned`` is gone."""
        record = self.current[key]
        self.current[key] = await self.records.write(replace(
            record, state={k: v for k, v in state.items() if v is not None},
            made=record.made if made is None else made,
            secret_uids=record.secret_uids if secret_uids is None else secret_uids,
        ))  # fmt: skip

    async def _advance(self, namespace: str, name: str) -> float:
        while True:
            body = await self.kube.read_credential(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return IDLE_RECHECK
            record = await self._record(body)
            state = dict(record.state)
            # A failure shown is cleared by the next record (each step writes one).
            self.failure_shown[(namespace, name)] = bool(state.pop("reason", None))
            await self._show(body, record)
            self.asked[(namespace, name)] = _asked(body)
            held = self._backoff_left((namespace, name))
            if held is not None:  # a failed step's retry is not due: shown, not tried
                return held
            phase = state.get("phase", rotation.IDLE)
            logger.debug("rotation of %s/%s: %s", namespace, name, phase)
            why = rotation.stop_reason(body["spec"], state, body.get("status") or {})
            if why:
                await self._abandon(body, state, why)
            elif phase == rotation.IDLE:
                wait = await self._maybe_start(body, state)
                if wait is not None:
                    return wait
            elif phase == rotation.CREATING:
                wait = await self._create(body, state)
                if wait is not None:
                    return wait
            elif phase == rotation.ROLLING_OUT:
                wait = await self._wait_for_rollout(body, state)
                if wait is not None:
                    return wait
            elif phase == rotation.RETIRING:
                wait = await self._retire(body, state)
                if wait is not None:
                    return wait
            elif phase == rotation.DELETING:
                await self._delete(body, state)
            else:  # not a phase this operator writes: a record it does not understand
                return IDLE_RECHECK

    # -- the record ---------------------------------------------------------------------

    async def _record(self, body: dict[str, Any]) -> RotationRecord:
        """The credential's record (a new, unsaved one when it has none). A record of an
        earlier object under the same name (deleted and made again, as a GitOps tool or
        a restore does) is adopted: the key it put in effect stays in effect when the new
        spec names the same key it replaced; a rotation under way there is not resumed
        (its original key is left alone)."""
        namespace, name, uid = (body["metadata"]["namespace"], body["metadata"]["name"],
                                body["metadata"]["uid"])  # fmt: skip
        record = await self.records.read(namespace, name)
        if record is None:
            record = await self._from_earlier_version(body)
        elif record.uid != uid:
            state = record.state
            adopted: dict[str, Any] = {"phase": rotation.IDLE}
            if rotation.in_effect(body["spec"], state):
                adopted.update({field: state.get(field) for field in (
                    "keyId", "secretName", "replaces", "nextRotationTime", "lastRotationTime",
                    "requested")})  # fmt: skip
                adopted["message"] = (f"key {state.get('keyId')} re-adopted from the record "
                                      "of the credential of the same name")  # fmt: skip
            record = await self.records.write(RotationRecord(
                namespace, name, uid, {k: v for k, v in adopted.items() if v is not None},
                record.made, record.secret_uids, record.resource_version, record.secret_uid,
            ))  # fmt: skip
            if adopted.get("keyId"):
                await self._event(body, "Normal", "KeyReadopted",
                                  f"the credential uses key {adopted['keyId']} again, as "
                                  "the operator's record of this name says")  # fmt: skip
        self.current[(namespace, name)] = record
        return record

    async def _from_earlier_version(self, body: dict[str, Any]) -> RotationRecord:
        """A credential without a record. An operator before records kept the rotated key
        in status only: a key in effect there is taken up (so an upgrade does not fall
        back to a spec key the rotation deleted) when its Secret is the one that version
        made for this very object (controller owner with its UID, the key's id
        annotated). Only the key in use is taken, never a phase or a key to retire: a
        rotation under way then ends, its original key left alone."""
        namespace, name, uid = (body["metadata"]["namespace"], body["metadata"]["name"],
                                body["metadata"]["uid"])  # fmt: skip
        record = RotationRecord(namespace, name, uid)
        shown = (body.get("status") or {}).get("rotation") or {}
        if not rotation.in_effect(body["spec"], shown):
            return record
        found = await self.kube.secret_metadata(namespace, str(shown["secretName"]))
        if found is None or (found.annotations or {}).get(
            rotation.KEY_ID_ANNOTATION
        ) != shown["keyId"] or not any(
            o.controller and o.uid == uid for o in found.owner_references or []
        ):  # fmt: skip
            return record
        taken = {field: shown.get(field) for field in (
            "keyId", "secretName", "replaces", "nextRotationTime", "lastRotationTime",
            "requested")}  # fmt: skip
        message = f"key {shown['keyId']} in use, taken up from status.rotation"
        state = {**{k: v for k, v in taken.items() if v is not None}, "phase": rotation.IDLE,
                 "message": message}  # fmt: skip
        logger.info("rotation of %s/%s: key %s taken up from the status of an earlier "
                    "version", namespace, name, shown["keyId"])  # fmt: skip
        return await self.records.write(replace(record, state=state))

    async def _show(self, body: dict[str, Any], record: RotationRecord) -> None:
        """Write ``status.rotation`` from the record when it shows anything else (a
        forged or lost status); fields another writer put there are removed."""
        shown = (body.get("status") or {}).get("rotation") or {}
        view = record.view()
        if shown == view:
            self.shown[_key(body)] = view
            return
        if set(shown) - set(view):
            operation = ({"op": "add", "path": "/status/rotation", "value": view} if view
                         else {"op": "remove", "path": "/status/rotation"})  # fmt: skip
            try:
                await self.kube.patch_status_guarded(CREDENTIAL_PLURAL, *_key(body),
                                                     body["metadata"]["uid"], [operation],
                                                     MANAGER)  # fmt: skip
            except NotFound:
                return
            body.setdefault("status", {})["rotation"] = view
        self.shown[_key(body)] = view
        if view:
            await self._publish(body, view)
        if shown:
            logger.info("rotation of %s/%s: status.rotation differed from the record; "
                        "written again from it", *_key(body))  # fmt: skip

    # -- the steps ----------------------------------------------------------------------

    async def _maybe_start(self, body: dict[str, Any], state: dict[str, Any]) -> float | None:
        """Idle: start when the key is maxAge old, or when ``rotate --now`` asked."""
        spec = body["spec"]
        policy = spec.get("rotation") or {}
        if policy.get("policy") != "Automatic":
            return IDLE_RECHECK
        if not self.verified(_key(body)):
            # The new key is made with the credential's own: it must work first (and its
            # age be read by the check), as this operator's own check found, not as the
            # Verified condition says (a tenant may write it). A change of that verdict
            # queues this step at once (the wiring): no polling meanwhile.
            return IDLE_RECHECK
        age = rotation.max_age(policy["maxAge"])
        requested = rotation.request_mark(
            (body["metadata"].get("annotations") or {}).get(rotation.ROTATE_NOW_ANNOTATION)
        )
        now = conditions.now()
        created = self._key_created(body, state)
        asked = bool(requested) and requested != state.get("requested")
        if not asked and not rotation.is_due(created, age, now):
            due = rotation.next_rotation(created, age) if created else now
            if state.get("nextRotationTime") != _stamp(due) or self._failure_shown(body):
                await self._write(body, {**state, "phase": rotation.IDLE,
                                         "nextRotationTime": _stamp(due)})  # fmt: skip
            return min(IDLE_RECHECK, max((due - now).total_seconds(), 1.0))
        why = "asked by cloudcred.io/rotate-now" if asked else f"the key is {policy['maxAge']} old"
        last = conditions.parse_time(state.get("startedTime"))
        allowed = last + timedelta(seconds=self.settings.rotation_min_interval) if last else now
        if now < allowed:
            message = (f"rotation due ({why}); the last one began at {_stamp(last)}: the next "
                       f"may begin at {_stamp(allowed)}")  # fmt: skip
            if state.get("message") != message or self._failure_shown(body):
                await self._write(body, {**state, "message": message})
            return max((allowed - now).total_seconds(), 1.0)
        keys = await self._provider(body, lambda module, spec, secrets, context:
                                    module.list_keys(spec, secrets, context))  # fmt: skip
        await self._write(body, {
            **state, "phase": rotation.CREATING, "startedTime": _stamp(now), "spec": body["spec"],
            "knownKeyIds": [key.key_id for key in keys], "requested": requested or None,
            "unknownKeyIds": None, "reason": None, "message": f"creating a new key ({why})",
        })  # fmt: skip
        await self._event(body, "Normal", "RotationStarted", f"rotating the key: {why}")
        return None

    def _fenced(self, state: dict[str, Any]) -> float | None:
        """Seconds to wait while another operator's create call may still be in flight
        (its attempt recorded less than a provider call's longest time ago); None: go."""
        attempt, since = state.get("attempt"), conditions.parse_time(state.get("attemptTime"))
        if not attempt or attempt == self.attempt_id or since is None:
            return None
        longest = self.settings.verification_timeout * 2 + 5  # _provider's bound on a call
        left = (since - conditions.now()).total_seconds() + longest
        return left if left > 0 else None

    async def _create(self, body: dict[str, Any], state: dict[str, Any]) -> float | None:
        """Creating: clean up what the operator's own unfinished creates left, report keys
        made by anyone else, make the key (unless one is recorded), save it in the
        Secret the operator owns, then switch to it."""
        namespace, name = _key(body)
        pending = state.get("pendingKeyId")
        if pending and await self._saved_key(namespace, rotation.rotated_secret_name(
                name, pending)) != pending:  # fmt: skip
            pending = None  # recorded, but its Secret does not hold it: start over
        keys = await self._provider(body, lambda module, spec, secrets, context:
                                    module.list_keys(spec, secrets, context))  # fmt: skip
        if pending and pending not in {key.key_id for key in keys}:
            # Made and saved, then deleted at the provider (by hand): start over.
            record = self.current[(namespace, name)]
            await self._delete_secret(body, pending)
            gone = f"key {pending} is gone at the provider: making another"
            state = {**state, "pendingKeyId": None, "message": gone}
            await self._write(body, state, made=tuple(k for k in record.made if k != pending))
            pending = None
        current = await self._key_in_use(body, state)
        record = self.current[(namespace, name)]
        found = rotation.sweep([k.key_id for k in keys], record.made, state.get("knownKeyIds"),
                               (current, pending))  # fmt: skip
        for leftover in found.ours:
            if not await self._may_retire(body, state, leftover):
                continue
            await self._provider(body, lambda module, spec, secrets, context, key=leftover:
                                 module.delete_key(spec, secrets, context, key))  # fmt: skip
            await self._delete_secret(body, leftover)
            await self._write(body, state, made=tuple(k for k in self.current[
                (namespace, name)].made if k != leftover))  # fmt: skip
            await self._event(body, "Normal", "KeyDeleted",
                              f"deleted key {leftover}: made by a step of this rotation that "
                              "did not finish")  # fmt: skip
        state = await self._report_unknown(body, state, found.unknown)
        if not pending:
            wait = self._fenced(state)
            if wait is not None:
                return wait
            # The attempt is recorded (compare-and-swap) before the create call: of two
            # replicas in a handover, only the one whose record write went through creates.
            state = {**state, "attempt": self.attempt_id, "attemptTime": _stamp(conditions.now())}
            await self._write(body, state)
            made: NewKey = await self._provider(
                body,
                lambda module, spec, secrets, context: module.create_key(spec, secrets, context),
            )
            pending = made.facts.key_id
            # Recorded at once as the operator's, before anything else can fail.
            record = self.current[(namespace, name)]
            state = {**state, "attempt": None, "attemptTime": None}
            await self._write(body, {**state, "pendingKeyId": pending,
                                     "message": f"made key {pending}"},
                              made=(*record.made, pending))  # fmt: skip
            secret_uid = await self._save(body, rotation.rotated_secret_name(name, pending), made)
            record = self.current[(namespace, name)]
            await self._write(body, {**state, "pendingKeyId": pending,
                                     "message": f"made key {pending}"},
                              secret_uids={**record.secret_uids, pending: secret_uid})  # fmt: skip
            await self._event(body, "Normal", "KeyCreated", f"made key {pending}")
            created = made.facts.created or conditions.now()
        else:
            created = next((k.created for k in keys if k.key_id == pending), None) or (
                conditions.now()
            )
        age = rotation.max_age((body["spec"].get("rotation") or {}).get("maxAge") or "90d")
        secret_name = rotation.rotated_secret_name(name, pending)
        # What goes back into effect if this rotation is abandoned: the key in use now.
        restore = (
            {field: state.get(field) for field in RESTORED}
            if rotation.in_effect(body["spec"], state)
            else {"nextRotationTime": state.get("nextRotationTime")}
        )
        await self._write(body, {
            **state, "restore": restore, "spec": body["spec"],
            "phase": rotation.ROLLING_OUT, "keyId": pending, "secretName": secret_name,
            "pendingKeyId": None, "knownKeyIds": None, "previousKeyId": current,
            "replaces": rotation.spec_key(body["spec"]),
            "fromRevision": (body.get("status") or {}).get("revision"),
            "nextRotationTime": _stamp(rotation.next_rotation(created, age)),
            "message": f"key {pending} is in use: rolling it out",
        })  # fmt: skip
        await self._event(body, "Normal", "KeyInUse",
                          f"the credential now uses key {pending}: rolling it out")  # fmt: skip
        return None

    async def _report_unknown(self, body: dict[str, Any], state: dict[str, Any],
                              unknown: list[str]) -> dict[str, Any]:  # fmt: skip
        """Keys of the identity that no recorded create of the operator returned and
        that were not there when the rotation began: someone else's, or the key of a
        create whose answer was lost (an attempt recorded and never finished: the
        operator died, or the call timed out, after the provider made it), which nothing
        tells apart. Shown in ``status.rotation.unknownKeyIds`` and in one Warning Event
        that names them; never touched."""
        shown = tuple(sorted(unknown)[:MAX_REPORTED_KEYS])
        if tuple(state.get("unknownKeyIds") or ()) == shown:
            return state
        state = {**state, "unknownKeyIds": list(shown) or None}
        await self._write(body, state)
        if shown and self.unknown_reported.get(_key(body)) != shown:
            self.unknown_reported[_key(body)] = shown
            if state.get("attempt"):
                whose = (f"no recorded create of the operator returned: {', '.join(shown)}; "
                         f"its create call of {state.get('attemptTime')}, whose answer was "
                         "lost, may have made one of them")  # fmt: skip
            else:
                whose = f"the operator did not make: {', '.join(shown)}"
            await self._event(body, "Warning", "UnknownKeys",
                              f"the identity has keys {whose}; they are kept (delete them "
                              "by hand if they are unused)")  # fmt: skip
        return state

    async def _wait_for_rollout(self, body: dict[str, Any], state: dict[str, Any]) -> float | None:
        """RollingOut: nothing is retired until every cluster uses the new key."""
        status = body.get("status") or {}
        revision = status.get("revision")
        behind = self.clusters_behind(_key(body), revision) if revision else []
        progress = rotation.rollout_state(status, state.get("fromRevision"), behind,
                                          body["metadata"].get("generation"))  # fmt: skip
        if not progress.done:
            logger.debug("rotation of %s: %s", body["metadata"]["name"], progress.why)
            message = f"keeping key {state.get('previousKeyId')}: {progress.why}"
            if state.get("message") != message or self._failure_shown(body):
                await self._write(body, {**state, "message": message})
            return ROLLOUT_RECHECK
        await self._write(body, {**state, "phase": rotation.RETIRING,
                                 "rolledOutTime": _stamp(conditions.now()),
                                 "message": progress.why})  # fmt: skip
        return None

    async def _retire(self, body: dict[str, Any], state: dict[str, Any]) -> float | None:
        """Retiring: gracePeriod after every cluster uses the new key, deactivate the old
        one (where the provider can; where it reports last use, only once unused since
        the rollout or for a whole grace period); a second period later
        (CLOUDCRED_ROTATION_DELETE_AFTER), delete it."""
        previous = state.get("previousKeyId")
        now = conditions.now()
        if previous and not state.get("deactivatedTime"):
            grace_text = (body["spec"].get("rotation") or {}).get("gracePeriod") or "24h"
            rolled_out = conditions.parse_time(state.get("rolledOutTime")) or now
            left = (rolled_out + rotation.grace_period(grace_text) - now).total_seconds()
            if left > 0:
                return min(left, IDLE_RECHECK)
            used = await self._last_used(body, previous)
            grace = rotation.grace_period(grace_text)
            if used is not None and used > max(rolled_out + LAST_USE_MARGIN, now - grace):
                message = (f"keeping key {previous}: last used at {_stamp(used)}, after every "
                           f"cluster moved to the new key ({_stamp(rolled_out)}); deactivated "
                           f"once unused for the grace period ({grace_text})")  # fmt: skip
                if state.get("message") != message or self._failure_shown(body):
                    await self._write(body, {**state, "message": message})
                return min(IDLE_RECHECK, max((used + grace - now).total_seconds(), 1.0))
            if not await self._may_retire(body, state, previous):
                await self._kept(body, state, previous)
                return None
            deactivated = await self._provider(
                body, lambda module, spec, secrets, context:
                module.deactivate_key(spec, secrets, context, previous),
            )  # fmt: skip
            after = timedelta(seconds=self.settings.rotation_delete_after)
            await self._write(body, {**state, "deactivatedTime": _stamp(now),
                                     "message": f"key {previous} is "
                                     f"{'inactive' if deactivated else 'unused'}; deleted "
                                     f"at {_stamp(now + after)}"})  # fmt: skip
            if deactivated:
                await self._event(body, "Normal", "KeyDeactivated",
                                  f"deactivated key {previous}: every cluster has used the "
                                  f"new key for the grace period ({grace_text})")  # fmt: skip
            return None
        since = conditions.parse_time(state.get("deactivatedTime")) or now
        left = (
            since + timedelta(seconds=self.settings.rotation_delete_after) - now
        ).total_seconds()
        if left > 0:
            return min(left, IDLE_RECHECK)
        await self._write(body, {**state, "phase": rotation.DELETING,
                                 "message": f"deleting key {previous}"})  # fmt: skip
        return None

    async def _last_used(self, body: dict[str, Any], key_id: str) -> datetime | None:
        """When the provider last saw ``key_id`` used, where it reports it (AWS); None
        where it does not, or may not say."""
        module = provider_module(str(body["spec"].get("provider")))
        if not hasattr(module, "key_last_used"):
            return None
        return await self._provider(
            body, lambda module, spec, secrets, context:
            module.key_last_used(spec, secrets, context, key_id),
        )  # fmt: skip

    async def _abandon(self, body: dict[str, Any], state: dict[str, Any], why: str) -> None:
        """Stop a rotation under way: the key in use before it goes back into effect, and
        the key it made is retired by the same rules (RollingOut, Retiring, Deleting)
        once no cluster uses it. The old key is never touched: once deactivated, the new
        key stays in use and the old one is left as it is."""
        namespace, name = _key(body)
        new, old = state.get("keyId"), state.get("previousKeyId")
        status = body.get("status") or {}
        if state.get("phase") == rotation.CREATING:
            pending = state.get("pendingKeyId")
            made = self.current[(namespace, name)].made
            if pending and pending in made and await self._may_retire(body, state, pending):
                await self._provider(
                    body, lambda module, spec, secrets, context:
                    module.delete_key(spec, secrets, context, pending),
                )  # fmt: skip
                await self._delete_secret(body, pending)
                made = tuple(key for key in made if key != pending)
            message = f"rotation stopped before a new key was in use: {why}"
            await self._write(body, {**self._done(state), "message": message}, made=made)
        elif state.get("deactivatedTime") and state.get("replaces") == rotation.spec_key(
                body["spec"]):  # fmt: skip
            message = (f"rotation stopped: {why}; key {new} stays in use, key {old} is "
                       "inactive and left as it is")  # fmt: skip
            await self._write(body, {**self._done(state), "message": message})
        else:
            spec_moved = state.get("replaces") != rotation.spec_key(body["spec"])
            restore = {} if spec_moved else dict(state.get("restore") or {})
            going_back = restore.get("keyId") or "the spec's key"
            message = (f"rotation stopped: {why}; the credential uses {going_back}, and key "
                       f"{new} is retired once no cluster uses it")  # fmt: skip
            fresh = status.get("revision") != state.get("fromRevision")
            await self._write(body, {
                "phase": rotation.ROLLING_OUT, "abandoned": True, "previousKeyId": new,
                **{field: restore.get(field) for field in RESTORED},
                "fromRevision": status.get("revision") if fresh and not spec_moved else None,
                **{field: state.get(field) for field in ("startedTime", "requested",
                                                         "lastRotationTime")},
                "message": message,
            })  # fmt: skip
        await self._event(body, "Warning", "RotationStopped", message)

    async def _delete(self, body: dict[str, Any], state: dict[str, Any]) -> None:
        """Deleting: delete the old key; the rotation is done."""
        previous = state.get("previousKeyId")
        if previous:
            if not await self._may_retire(body, state, previous):
                await self._kept(body, state, previous)
                return
            await self._provider(body, lambda module, spec, secrets, context:
                                 module.delete_key(spec, secrets, context, previous))  # fmt: skip
            # The Secret the operator made for it (none when it was the spec's own key).
            await self._delete_secret(body, previous)
            await self._event(body, "Normal", "KeyDeleted", f"deleted key {previous}")
        record = self.current[_key(body)]
        made = tuple(key for key in record.made if key != previous)
        if state.get("abandoned"):
            message = f"rotation stopped; key {previous}, made by it, is deleted"
            await self._write(body, {**self._done(state), "message": message}, made=made)
            await self._event(body, "Normal", "KeyDeleted", message)
            return
        await self._write(body, {**self._done(state), "lastRotationTime": _stamp(conditions.now()),
                                 "message": f"rotated to key {state.get('keyId')}"},
                          made=made)  # fmt: skip
        await self._event(
            body,
            "Normal",
            "RotationComplete",
            f"rotated to key {state.get('keyId')}; key {previous} is deleted",
        )

    @staticmethod
    def _done(state: dict[str, Any]) -> dict[str, Any]:
        """What a finished rotation keeps: the key in effect and the schedule."""
        kept = ("keyId", "secretName", "replaces", "nextRotationTime", "requested",
                "lastRotationTime", "startedTime", "spec")  # fmt: skip
        return {**{key: state.get(key) for key in kept}, "phase": rotation.IDLE}

    async def _kept(self, body: dict[str, Any], state: dict[str, Any], key_id: str) -> None:
        """The key this rotation would retire is in use again (a person pointed a spec
        back at it, or another credential names it): it is kept, and the rotation ends."""
        users = self._users.get(_key(body), [])
        message = f"kept key {key_id}: {', '.join(users)} uses it"
        await self._write(body, {**self._done(state), "message": message})
        await self._event(body, "Warning", "KeyKept", message)

    # -- helpers ------------------------------------------------------------------------

    def _key_created(self, body: dict[str, Any], state: dict[str, Any]) -> datetime | None:
        """When the key in use was made: the rotation's record, else the provider's."""
        status = body.get("status") or {}
        if rotation.in_effect(body["spec"], state) and state.get("nextRotationTime"):
            age = rotation.max_age(body["spec"]["rotation"]["maxAge"])
            due = conditions.parse_time(state["nextRotationTime"])
            return due - age if due else None
        created = (status.get("key") or {}).get("createdTime") or status.get("keyCreatedTime")
        return conditions.parse_time(created)

    def _effective(self, body: dict[str, Any]) -> dict[str, Any]:
        """The credential's spec with the key the record puts in effect (never status)."""
        record = self.current.get(_key(body))
        return rotation.effective_spec(body["spec"], {"rotation": record.state if record else {}})

    async def _secret_data(self, namespace: str, spec: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The base64 data of the Secrets ``spec`` references, by name (absent ones left out)."""
        found: dict[str, dict[str, str]] = {}
        for secret_name in rotation.secrets_named(spec):
            try:
                found[secret_name] = await self.kube.read_secret_data(namespace, secret_name)
            except NotFound:
                continue
        return found

    async def _key_in_use(self, body: dict[str, Any], state: dict[str, Any]) -> str | None:
        """The public id of the key the credential uses now, from its effective spec and
        the key material itself (the provider's facts where the material names no id:
        Azure); never from status, which a tenant can write."""
        spec = self._effective(body)
        named = rotation.key_ids_named(spec, await self._secret_data(_key(body)[0], spec))
        if named:
            return sorted(named)[0]
        module = provider_module(str(spec.get("provider")))
        if not hasattr(module, "key_facts"):
            return None
        facts = await self._provider(body, lambda module, spec, secrets, context:
                                     module.key_facts(spec, secrets, context))  # fmt: skip
        return facts.key_id if facts else None

    async def _may_retire(self, body: dict[str, Any], state: dict[str, Any], key_id: str) -> bool:
        """Whether no CloudCredential (any namespace, listed afresh) resolves to ``key_id``
        now: through its spec, the key the operator put in effect for it, its Secrets,
        or what its status says (status can only keep a key here, never retire one).
        Asked immediately before every deactivation or deletion."""
        namespace, name = _key(body)
        provider = body["spec"].get("provider")
        rotated_secret = rotation.rotated_secret_name(name, key_id)
        users: list[str] = []
        async for other in self.kube.list_pages(CREDENTIAL_PLURAL):
            metadata = other.get("metadata") or {}
            spec, status = other.get("spec") or {}, other.get("status") or {}
            if spec.get("provider") != provider:
                continue
            other_key = (metadata.get("namespace", ""), metadata.get("name", ""))
            if other_key == (namespace, name) and metadata.get("uid") == body["metadata"]["uid"]:
                specs = [self._effective(other)]  # its own: the record says which key
                claimed: set[str] = set()
            else:
                specs = [spec, rotation.effective_spec(spec, status)]
                claimed = {str(value) for value in (
                    (status.get("key") or {}).get("id"), status.get("publicId"),
                    (status.get("rotation") or {}).get("keyId")) if value}  # fmt: skip
            named: set[str] = set()
            for each in specs:
                try:
                    data = await self._secret_data(other_key[0], each)
                except Forbidden:
                    # Per-namespace rights: a namespace this installation does not watch
                    # keeps its Secrets from it. What its spec and status name still
                    # keeps a key (its own installation's verifier writes publicId and
                    # key.id); a key id only inside such a Secret is not seen.
                    data = {}
                named |= rotation.key_ids_named(each, data)
                if other_key[0] == namespace and rotated_secret in rotation.secrets_named(each):
                    named.add(key_id)
            if key_id in named | claimed:
                users.append(f"CloudCredential {other_key[0]}/{other_key[1]}")
        self._users[(namespace, name)] = users
        if users:
            logger.warning("rotation of %s/%s: key %s is in use (%s): not retired",
                           namespace, name, key_id, ", ".join(users))  # fmt: skip
        return not users

    async def _provider(self, body: dict[str, Any], call: Callable[..., _T]) -> _T:
        """Run ``call(module, spec, secrets, context)`` with the credential's key in effect,
        in a worker thread; every failure becomes a RotationError without secret text."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        spec = CloudCredentialSpec.model_validate(self._effective(body))
        module = provider_module(spec.provider)
        if not hasattr(module, "create_key"):
            raise RotationError(
                RotationReason.NOT_SUPPORTED,
                f"{spec.provider} keys cannot be rotated by the operator",
            )
        try:
            secrets = await read_secrets(self.kube, namespace, module.secret_refs(spec))
        except VerificationError as error:
            raise RotationError(RotationReason.PROVIDER_REFUSED, error.message) from None
        identity = await self._identity(namespace, spec)
        if identity is None and getattr(module, "ROTATION_IDENTITY_REQUIRED", False):
            raise RotationError(
                RotationReason.NOT_SUPPORTED,
                f"{spec.provider} keys are rotated only with a rotation identity (a "
                "CredentialBoundary's rotationIdentitySecret): managing keys there takes "
                "rights over the whole organization, which a key tenants hold must not have",
            )
        context = VerifyContext(namespace, name, self.settings.provider_settings(),
                                rotation_identity=identity)  # fmt: skip
        timeout = self.settings.verification_timeout
        async with self.slots:
            try:
                return await in_thread(partial(call, module, spec, secrets, context),
                                       timeout * 2 + 5)  # fmt: skip
            except TimeoutError:
                raise RotationError(
                    RotationReason.PROVIDER_UNREACHABLE,
                    f"{spec.provider} did not answer within {timeout:g}s",
                ) from None
            except RotationError:
                raise
            except Exception as error:  # the text could quote secret data: the class only
                logger.error("a %s rotation call failed unexpectedly (%s)", spec.provider,
                             type(error).__name__)  # fmt: skip
                raise RotationError(
                    RotationReason.PROVIDER_REFUSED,
                    f"the call failed unexpectedly ({type(error).__name__})",
                ) from None

    async def _identity(self, namespace: str, spec: CloudCredentialSpec
                        ) -> dict[str, SecretStr] | None:  # fmt: skip
        """The admin-owned identity that manages this credential's keys (a boundary's
        rotation identity, its Secret in the operator's namespace), or None: the key
        manages its own."""
        named = self.rotation_identity(namespace, spec.provider)
        if named is None:
            return None
        boundary, secret_name = named
        try:
            data = await self.kube.read_secret_data(self.records.namespace, secret_name)
        except NotFound:
            raise RotationError(
                RotationReason.ACCESS_DENIED,
                f"CredentialBoundary {boundary} names the rotation identity Secret "
                f"{self.records.namespace}/{secret_name}, which does not exist",
            ) from None
        wanted: dict[str, str] = getattr(provider_module(spec.provider),
                                         "ROTATION_IDENTITY_KEYS", {})  # fmt: skip
        values = {role: _decoded(data.get(key)) for role, key in wanted.items()}
        if not wanted:
            raise RotationError(RotationReason.NOT_SUPPORTED,
                                f"CredentialBoundary {boundary}: {spec.provider} keys have no "
                                "rotation identity")  # fmt: skip
        if not all(values.values()):
            raise RotationError(
                RotationReason.ACCESS_DENIED,
                f"the rotation identity Secret {self.records.namespace}/{secret_name} "
                f"(CredentialBoundary {boundary}) needs the keys {', '.join(wanted.values())}",
            )
        return {role: SecretStr(value) for role, value in values.items()}

    async def _delete_secret(self, body: dict[str, Any], key_id: str) -> None:
        """Delete the Secret the operator made for a key of this credential once the key
        is gone at the provider: the one under its name that holds that key (its
        ``cloudcred.io/key-id``), with a precondition on the UID read."""
        namespace, name = _key(body)
        secret_name = rotation.rotated_secret_name(name, key_id)
        found = await self.kube.secret_metadata(namespace, secret_name)
        if found is None or (found.annotations or {}).get(rotation.KEY_ID_ANNOTATION) != key_id:
            return
        try:
            await self.kube.delete_secret(namespace, secret_name, found.uid)
        except RuntimeError as error:  # its key is gone: a Secret left over does no harm
            logger.warning("rotation of %s: %s", name, error)

    async def _saved_key(self, namespace: str, secret_name: str) -> str | None:
        metadata = await self.kube.secret_metadata(namespace, secret_name)
        return (metadata.annotations or {}).get(rotation.KEY_ID_ANNOTATION) if metadata else None

    async def _save(self, body: dict[str, Any], secret_name: str, made: NewKey) -> str:
        """Write the new key into a Secret of the operator's; returns its UID. No owner
        reference: the Secret outlives a delete and re-create of the credential under
        its name, which re-adopts the key (the record names it). An existing Secret under
        the name is used only when it already holds this key (the name comes from an id
        the provider has just returned, so no one could prepare it)."""
        namespace = body["metadata"]["namespace"]
        spec = CloudCredentialSpec.model_validate(body["spec"])
        refs = provider_module(spec.provider).secret_refs(spec)
        data = {
            refs[role].key: base64.b64encode(value.get_secret_value().encode()).decode()
            for role, value in made.secret_data.items()
        }
        annotations = {rotation.KEY_ID_ANNOTATION: made.facts.key_id}
        try:
            await self.kube.create_secret(namespace, secret_name, data, {
                "annotations": annotations, "labels": {MANAGED_BY_LABEL: "cloudcred"},
            })  # fmt: skip
        except AlreadyExists:
            pass
        except RuntimeError as error:  # its text names the HTTP status only
            # The key just made is recorded as the operator's: the next attempt deletes it.
            denied = "HTTP 403" in str(error)
            raise RotationError(
                RotationReason.ACCESS_DENIED if denied else RotationReason.PROVIDER_UNREACHABLE,
                f"{error}"
                + (
                    "; the operator may not create Secrets: install deploy/rotation "
                    "(Helm: rotation.enabled=true)"
                    if denied
                    else ""
                ),
            ) from None
        found = await self.kube.secret_metadata(namespace, secret_name)
        if found is None or (found.annotations or {}).get(
            rotation.KEY_ID_ANNOTATION
        ) != made.facts.key_id:  # fmt: skip
            raise RotationError(
                RotationReason.PROVIDER_REFUSED,
                f"Secret {namespace}/{secret_name} exists and is not this credential's: "
                "rename or delete it",
            )
        return str(found.uid)

    async def _write(self, body: dict[str, Any], state: dict[str, Any], *,
                     made: tuple[str, ...] | None = None,
                     secret_uids: dict[str, str] | None = None) -> None:  # fmt: skip
        """Record the rotation (compare-and-swap on the record read), then show it in
        ``status.rotation`` (and the KeyRotation condition), before what comes next."""
        key = _key(body)
        await self._store(key, state, made, secret_uids)
        view = self.current[key].view()
        self.shown[key] = view  # before the write: its own watch event is not a change
        await self._publish(body, view)

    async def _publish(self, body: dict[str, Any], view: dict[str, Any]) -> None:
        """Apply ``status.rotation`` and the KeyRotation condition from the record's view."""
        namespace, name = _key(body)
        phase = view.get("phase", rotation.IDLE)
        previous = (body.get("status") or {}).get("conditions")
        if view.get("reason"):
            condition = conditions.condition(
                previous,
                KEY_ROTATION,
                conditions.TRUE,
                view["reason"],
                view.get("message", ""),
                None,
            )
        else:
            condition = conditions.condition(
                previous, KEY_ROTATION,
                conditions.FALSE if phase == rotation.IDLE else conditions.TRUE,
                phase, view.get("message") or "no rotation under way", None,
            )  # fmt: skip
        try:
            await self.kube.apply_status(CREDENTIAL_PLURAL, "CloudCredential", namespace, name,
                                         {"rotation": view, "conditions": [condition]},
                                         MANAGER)  # fmt: skip
        except NotFound:
            return
        body.setdefault("status", {})["rotation"] = view

    async def _failed(self, namespace: str, name: str, error: RotationError) -> None:
        """A step failed: say why (record, status, condition, one Warning Event per reason)."""
        body = await self.kube.read_credential(namespace, name)
        if body is None:
            return
        try:
            record = await self._record(body)
            await self._write(body, {**record.state, "reason": error.reason.value,
                                     "message": f"{error.message}; retried"})  # fmt: skip
        except Conflict:
            self.current.pop((namespace, name), None)
        if self.reported.get((namespace, name)) != error.message:
            self.reported[(namespace, name)] = error.message
            await self._event(body, "Warning", "RotationFailed",
                              f"{error.reason.value}: {error.message}")  # fmt: skip

    async def _event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        if kind == "Normal":
            self.reported.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)
        await self.kube.post_event(body, kind, reason, message)
