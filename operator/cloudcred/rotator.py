"""Automatic rotation: the steps, with their provider calls and writes.

``Rotator.step`` advances one credential's rotation as far as it can go now and says
when to look again. Every step re-reads the credential from the API server and records
its phase in ``status.rotation`` (server-side apply, manager ``cloudcred-rotator``)
*before* the provider call it guards; the decisions are in ``cloudcred.rotation``.
The provider calls use the credential's own key: the old one to make the new key, the
new one (then in effect) to retire the old.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from kubernetes.client.rest import ApiException

from cloudcred import conditions, rotation
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.config import Settings
from cloudcred.constants import API_VERSION, CREDENTIAL_PLURAL
from cloudcred.kube import AlreadyExists, Kube, NotFound
from cloudcred.providers import provider_module
from cloudcred.providers.base import (
    NewKey,
    RotationError,
    RotationReason,
    VerificationError,
    VerifyContext,
)
from cloudcred.tasks import in_thread
from cloudcred.verification import read_secrets

logger = logging.getLogger(__name__)

MANAGER = "cloudcred-rotator"
KEY_ROTATION = "KeyRotation"  # the condition: True while a rotation is under way
IDLE_RECHECK = 300.0  # seconds between looks when nothing is due
ROLLOUT_RECHECK = 5.0
FAILURE_RETRY = 30.0

_T = TypeVar("_T")


def _stamp(moment: datetime | None) -> str | None:
    return conditions.timestamp(moment) if moment else None


class Rotator:
    """One operator's rotations (one at a time: see ``controllers/rotation.py``). The
    key a switch puts in effect is checked by the verification controller, which sees
    the credential's effective spec change."""

    def __init__(self, kube: Kube, settings: Settings, slots: asyncio.Semaphore) -> None:
        self.kube = kube
        self.settings = settings
        self.slots = slots
        self.reported: dict[tuple[str, str], str] = {}  # the last failure Event, per credential
        # Per credential: the status read last shows a failed step (steps of several
        # credentials run at once, one at a time per credential).
        self.failure_shown: dict[tuple[str, str], bool] = {}

    def forget(self, key: tuple[str, str]) -> None:
        self.reported.pop(key, None)
        self.failure_shown.pop(key, None)

    def _failure_shown(self, body: dict[str, Any]) -> bool:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        return self.failure_shown.get(key, False)

    async def step(self, namespace: str, name: str) -> float:
        """Advance the rotation of one credential; seconds until it should look again."""
        try:
            return await self._advance(namespace, name)
        except RotationError as error:
            await self._failed(namespace, name, error)
            return FAILURE_RETRY
        except ApiException as error:
            # The API server refused or failed a write: the phase recorded last stands,
            # and the step is tried again from it.
            logger.warning("rotating %s/%s: the API server answered HTTP %s; retrying",
                           namespace, name, error.status)  # fmt: skip
            return FAILURE_RETRY

    async def _advance(self, namespace: str, name: str) -> float:
        while True:
            body = await self.kube.read_credential(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return IDLE_RECHECK
            state = dict((body.get("status") or {}).get("rotation") or {})
            # A failure shown is cleared by the next record (each step writes one).
            self.failure_shown[(namespace, name)] = bool(state.pop("reason", None))
            phase = state.get("phase", rotation.IDLE)
            logger.debug("rotation of %s/%s: %s", namespace, name, phase)
            if phase == rotation.IDLE:
                wait = await self._maybe_start(body, state)
                if wait is not None:
                    return wait
            elif phase == rotation.CREATING:
                await self._create(body, state)
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

    # -- the steps ----------------------------------------------------------------------

    async def _maybe_start(self, body: dict[str, Any], state: dict[str, Any]) -> float | None:
        """Idle: start when the key is maxAge old, or when ``rotate --now`` asked."""
        spec = body["spec"]
        policy = spec.get("rotation") or {}
        if policy.get("policy") != "Automatic":
            return IDLE_RECHECK
        verified = conditions.find((body.get("status") or {}).get("conditions"), "Verified")
        if not verified or verified.get("status") != conditions.TRUE:
            # The new key is made with the credential's own: it must work first (and its
            # age be read by the check).
            return ROLLOUT_RECHECK
        age = rotation.max_age(policy["maxAge"])
        requested = (body["metadata"].get("annotations") or {}).get(rotation.ROTATE_NOW_ANNOTATION)
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
        keys = await self._provider(body, lambda module, spec, secrets, context:
                                    module.list_keys(spec, secrets, context))  # fmt: skip
        await self._write(body, {
            **state, "phase": rotation.CREATING, "startedTime": _stamp(now),
            "knownKeyIds": [key.key_id for key in keys], "requested": requested or None,
            "reason": None, "message": f"creating a new key ({why})",
        })  # fmt: skip
        await self._event(body, "Normal", "RotationStarted", f"rotating the key: {why}")
        return None

    async def _create(self, body: dict[str, Any], state: dict[str, Any]) -> None:
        """Creating: delete what an unfinished create left, make the key (unless one is
        recorded), save it in the Secret the operator owns, then switch to it."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        pending = state.get("pendingKeyId")
        if pending and await self._saved_key(namespace, rotation.rotated_secret_name(
                name, pending)) != pending:  # fmt: skip
            pending = None  # recorded, but its Secret does not hold it: start over
        keys = await self._provider(body, lambda module, spec, secrets, context:
                                    module.list_keys(spec, secrets, context))  # fmt: skip
        current = self._current_key_id(body)
        for stray in rotation.strays([k.key_id for k in keys], state.get("knownKeyIds"),
                                     (current, pending)):  # fmt: skip
            await self._provider(body, lambda module, spec, secrets, context, key=stray:
                                 module.delete_key(spec, secrets, context, key))  # fmt: skip
            await self._delete_secret(body, rotation.rotated_secret_name(name, stray))
            await self._event(
                body,
                "Normal",
                "KeyDeleted",
                f"deleted key {stray}: made by a step that did not finish",
            )
        if not pending:
            made: NewKey = await self._provider(
                body,
                lambda module, spec, secrets, context: module.create_key(spec, secrets, context),
            )
            pending = made.facts.key_id
            await self._save(body, rotation.rotated_secret_name(name, pending), made)
            await self._write(body, {**state, "pendingKeyId": pending,
                                     "message": f"made key {pending}"})  # fmt: skip
            await self._event(body, "Normal", "KeyCreated", f"made key {pending}")
            created = made.facts.created or conditions.now()
        else:
            created = next((k.created for k in keys if k.key_id == pending), None) or (
                conditions.now()
            )
        age = rotation.max_age((body["spec"].get("rotation") or {}).get("maxAge") or "90d")
        secret_name = rotation.rotated_secret_name(name, pending)
        await self._write(body, {
            **state, "phase": rotation.ROLLING_OUT, "keyId": pending, "secretName": secret_name,
            "pendingKeyId": None, "knownKeyIds": None, "previousKeyId": current,
            "replaces": rotation.spec_key(body["spec"]),
            "fromRevision": (body.get("status") or {}).get("revision"),
            "nextRotationTime": _stamp(rotation.next_rotation(created, age)),
            "message": f"key {pending} is in use: rolling it out",
        })  # fmt: skip
        await self._event(body, "Normal", "KeyInUse",
                          f"the credential now uses key {pending}: rolling it out")  # fmt: skip

    async def _wait_for_rollout(self, body: dict[str, Any], state: dict[str, Any]) -> float | None:
        """RollingOut: nothing is retired until every cluster uses the new key."""
        progress = rotation.rollout_state(body.get("status") or {}, state.get("fromRevision"))
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
        """Retiring: deactivate the old key (where the provider can), keep it gracePeriod."""
        previous = state.get("previousKeyId")
        if previous and not state.get("deactivatedTime"):
            deactivated = await self._provider(
                body, lambda module, spec, secrets, context:
                module.deactivate_key(spec, secrets, context, previous),
            )  # fmt: skip
            grace = (body["spec"].get("rotation") or {}).get("gracePeriod", "24h")
            await self._write(body, {**state, "deactivatedTime": _stamp(conditions.now()),
                                     "message": f"key {previous} is "
                                     f"{'inactive' if deactivated else 'unused'}; deleted "
                                     f"after the grace period ({grace})"})  # fmt: skip
            if deactivated:
                await self._event(
                    body,
                    "Normal",
                    "KeyDeactivated",
                    f"deactivated key {previous}: every cluster uses the new key",
                )
            return None
        grace = rotation.grace_period((body["spec"].get("rotation") or {}).get("gracePeriod")
                                      or "24h")  # fmt: skip
        since = conditions.parse_time(state.get("rolledOutTime")) or conditions.now()
        left = (since + grace - conditions.now()).total_seconds()
        if left > 0:
            return min(left, IDLE_RECHECK)
        await self._write(body, {**state, "phase": rotation.DELETING,
                                 "message": f"deleting key {previous}"})  # fmt: skip
        return None

    async def _delete(self, body: dict[str, Any], state: dict[str, Any]) -> None:
        """Deleting: delete the old key; the rotation is done."""
        previous = state.get("previousKeyId")
        if previous:
            await self._provider(body, lambda module, spec, secrets, context:
                                 module.delete_key(spec, secrets, context, previous))  # fmt: skip
            # The Secret the operator made for it (none when it was the spec's own key).
            await self._delete_secret(
                body, rotation.rotated_secret_name(body["metadata"]["name"], previous)
            )
            await self._event(body, "Normal", "KeyDeleted", f"deleted key {previous}")
        done = {key: state.get(key) for key in ("keyId", "secretName", "replaces",
                                                "nextRotationTime", "requested")}  # fmt: skip
        await self._write(body, {**done, "phase": rotation.IDLE,
                                 "lastRotationTime": _stamp(conditions.now()),
                                 "message": f"rotated to key {state.get('keyId')}"})  # fmt: skip
        await self._event(
            body,
            "Normal",
            "RotationComplete",
            f"rotated to key {state.get('keyId')}; key {previous} is deleted",
        )

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

    @staticmethod
    def _current_key_id(body: dict[str, Any]) -> str | None:
        """The public id of the key in use (the provider's facts where the spec has none)."""
        status = body.get("status") or {}
        effective = rotation.effective_spec(body["spec"], status)
        provider = str(effective.get("provider"))
        id_field = rotation.KEY_FIELDS.get(provider, (None, ""))[0]
        block = effective.get(provider.lower()) or {}
        found = (block.get(id_field) if id_field else None) or (status.get("key") or {}).get("id")
        return str(found) if found else None

    async def _provider(self, body: dict[str, Any], call: Callable[..., _T]) -> _T:
        """Run ``call(module, spec, secrets, context)`` with the credential's key in effect,
        in a worker thread; every failure becomes a RotationError without secret text."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        spec = CloudCredentialSpec.model_validate(
            rotation.effective_spec(body["spec"], body.get("status"))
        )
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
        context = VerifyContext(namespace, name, self.settings.provider_settings())
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

    async def _delete_secret(self, body: dict[str, Any], secret_name: str) -> None:
        """Delete a Secret the operator made for a key of this credential, if there is one."""
        namespace = body["metadata"]["namespace"]
        found = await self.kube.secret_metadata(namespace, secret_name)
        if found is not None and any(
            o.controller and o.uid == body["metadata"]["uid"] for o in found.owner_references or []
        ):
            try:
                await self.kube.delete_secret(namespace, secret_name, found.uid)
            except RuntimeError as error:  # its key is gone; the Secret goes with the credential
                logger.warning("rotation of %s: %s", body["metadata"]["name"], error)

    async def _saved_key(self, namespace: str, secret_name: str) -> str | None:
        metadata = await self.kube.secret_metadata(namespace, secret_name)
        return (metadata.annotations or {}).get(rotation.KEY_ID_ANNOTATION) if metadata else None

    async def _save(self, body: dict[str, Any], secret_name: str, made: NewKey) -> None:
        """Write the new key into the Secret the operator owns (created with the
        credential as its controller owner; an existing Secret is used only when it is
        that one: another object under the name could be a tenant's trap)."""
        namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
        spec = CloudCredentialSpec.model_validate(body["spec"])
        refs = provider_module(spec.provider).secret_refs(spec)
        data = {
            refs[role].key: base64.b64encode(value.get_secret_value().encode()).decode()
            for role, value in made.secret_data.items()
        }
        annotations = {rotation.KEY_ID_ANNOTATION: made.facts.key_id}
        owner = {"apiVersion": API_VERSION, "kind": "CloudCredential", "uid": uid,
                 "name": body["metadata"]["name"], "controller": True,
                 "blockOwnerDeletion": True}  # fmt: skip
        try:
            await self.kube.create_secret(namespace, secret_name, data, {
                "annotations": annotations, "ownerReferences": [owner],
                "labels": {"app.kubernetes.io/managed-by": "cloudcred"},
            })  # fmt: skip
            return
        except AlreadyExists:
            pass
        except RuntimeError as error:  # its text names the HTTP status only
            # The key just made is not recorded: the next attempt deletes it.
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
        owners = (found.owner_references or []) if found else []
        if found is None or not any(o.controller and o.uid == uid for o in owners):
            raise RotationError(
                RotationReason.PROVIDER_REFUSED,
                f"Secret {namespace}/{secret_name} exists and is not this credential's: "
                "rename or delete it",
            )
        await self.kube.replace_secret_data(namespace, secret_name, found.uid,
                                            found.resource_version, data, annotations)  # fmt: skip

    async def _write(self, body: dict[str, Any], state: dict[str, Any]) -> None:
        """Record the rotation (and the KeyRotation condition) before what comes next."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        record = {key: value for key, value in state.items() if value is not None}
        phase = record.get("phase", rotation.IDLE)
        previous = (body.get("status") or {}).get("conditions")
        if record.get("reason"):
            condition = conditions.condition(
                previous,
                KEY_ROTATION,
                conditions.TRUE,
                record["reason"],
                record.get("message", ""),
                None,
            )
        else:
            condition = conditions.condition(
                previous, KEY_ROTATION,
                conditions.FALSE if phase == rotation.IDLE else conditions.TRUE,
                phase, record.get("message") or "no rotation under way", None,
            )  # fmt: skip
        try:
            await self.kube.apply_status(CREDENTIAL_PLURAL, "CloudCredential", namespace, name,
                                         {"rotation": record, "conditions": [condition]},
                                         MANAGER)  # fmt: skip
        except NotFound:
            return
        body.setdefault("status", {})["rotation"] = record

    async def _failed(self, namespace: str, name: str, error: RotationError) -> None:
        """A step failed: say why (status, condition, one Warning Event per reason)."""
        body = await self.kube.read_credential(namespace, name)
        if body is None:
            return
        state = dict((body.get("status") or {}).get("rotation") or {})
        await self._write(body, {**state, "reason": error.reason.value,
                                 "message": f"{error.message}; retried"})  # fmt: skip
        if self.reported.get((namespace, name)) != error.message:
            self.reported[(namespace, name)] = error.message
            await self._event(body, "Warning", "RotationFailed",
                              f"{error.reason.value}: {error.message}")  # fmt: skip

    async def _event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        if kind == "Normal":
            self.reported.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)
        await self.kube.post_event(body, kind, reason, message)
