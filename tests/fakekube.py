"""A fake Kubernetes for reconciler tests: the operator's ``Kube`` interface over
objects in memory, driving the real ``Controllers`` (wiring, queues, reconcilers).

- Every write is recorded (``writes``) and applied to the object the way the API
  server would for the parts the reconcilers rely on: server-side apply merges
  ``conditions`` by type, JSON patches honour ``test`` (UID preconditions), merge
  patches of annotations drop ``None``; each write bumps ``resourceVersion``.
- Each write comes back as a watch event into the caches and through the wiring,
  as kopf's and the informers' events do in the operator.
- ``fail(method, error, times)`` makes the next calls of a method raise (a 404, a
  409, a 422, a timeout), so a test can put a fault at any write; ``refuse(kind, key,
  error)`` refuses every write to one object until ``refuse(kind, key, None)`` (a
  policy engine's admission rule on it).
- ``Clock`` moves the wall clock the reconcilers read and fires the queues' timers
  that fall due, so a test of backoff or a periodic check takes milliseconds.

What only a real API server can show (CEL, admission, SSA field ownership, RBAC,
watch semantics) stays in ``tests/integration``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from kubernetes import client

from cloudcred import conditions
from cloudcred.bindings import ClusterInfo, CredentialInfo, Key
from cloudcred.cache import DeliveredInfo, SecretInfo
from cloudcred.cache.boundaries import boundary_info
from cloudcred.cache.informers import data_digest
from cloudcred.config import Settings
from cloudcred.constants import (
    API_VERSION,
    FINALIZER,
    IN_USE_LABEL,
    MANAGED_BY_LABEL,
    REFERENCED_LABEL,
)
from cloudcred.controllers import deploy
from cloudcred.controllers.runner import Controllers
from cloudcred.installation import INSTALLATION_SECRET, Installation, key_secret_info
from cloudcred.kube import AlreadyExists, Conflict, Forbidden, NotFound, PreconditionFailed
from cloudcred.permissions import PermissionSetInfo

KINDS = {"cloudcredentials": "CloudCredential", "clusters": "Cluster"}


@dataclass
class Write:
    verb: str
    kind: str
    key: Key
    detail: Any = None


@dataclass
class Recorded:
    writes: list[Write] = field(default_factory=list)
    events: list[tuple[str, Key, str, str, str]] = field(default_factory=list)
    refused: list[Write] = field(default_factory=list)  # writes ``refuse`` turned away

    def of(self, verb: str, kind: str | None = None) -> list[Write]:
        return [w for w in self.writes if w.verb == verb and kind in (None, w.kind)]


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, Key], dict[str, Any]] = {}  # (kind, key) -> body
        self.secrets: dict[Key, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.recorded = Recorded()
        self.on_change: Callable[[str, Key, dict[str, Any] | None], None] = lambda *_: None
        self._faults: dict[str, list[Exception]] = {}
        self._actions: dict[str, list[Callable[[], None]]] = {}
        self._refused: dict[tuple[str, Key], Exception] = {}
        # Namespaces whose Secrets RBAC keeps from the operator (per-namespace rights).
        self.unreadable_namespaces: set[str] = set()
        # Server-side apply: the status fields and condition types each manager applied.
        self._owned: dict[tuple[str, Key, str], tuple[set[str], set[str]]] = {}
        self._versions = itertools.count(1)
        self.calls: Counter[str] = Counter()  # every Kube method called, by name

    # -- test controls ----------------------------------------------------------------

    def fail(self, method: str, error: Exception, times: int = 1) -> None:
        self._faults.setdefault(method, []).extend([error] * times)

    def refuse(self, kind: str, key: Key, error: Exception | None) -> None:
        """Refuse every write to one object with ``error`` (None: admit them again)."""
        if error is None:
            self._refused.pop((kind, key), None)
        else:
            self._refused[(kind, key)] = error

    def before(self, method: str, action: Callable[[], None]) -> None:
        """Run ``action`` once, just before the next call of ``method`` (a user's edit
        that lands while a reconcile is under way)."""
        self._actions.setdefault(method, []).append(action)

    def _fault(self, method: str) -> None:
        self.calls[method] += 1
        actions = self._actions.get(method)
        if actions:
            actions.pop(0)()
        pending = self._faults.get(method)
        if pending:
            raise pending.pop(0)

    def put(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a user would (kubectl apply)."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        body.setdefault("apiVersion", API_VERSION)
        body.setdefault("kind", kind)
        old = self.objects.get((kind, key))
        metadata.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
        generation = (old or {}).get("metadata", {}).get("generation", 0)
        if old is None or old.get("spec") != body.get("spec"):
            generation += 1
        metadata["generation"] = generation
        metadata.setdefault("creationTimestamp", "2026-12-01T00:00:00Z")
        if kind == "CloudCredential":  # as kopf adds it when it first handles one
            metadata.setdefault("finalizers", [FINALIZER])
        body.setdefault("status", copy.deepcopy((old or {}).get("status") or {}))
        self._store(kind, key, body)
        return body

    def remove(self, kind: str, key: Key) -> None:
        self.objects.pop((kind, key), None)
        self.on_change(kind, key, None)

    def put_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        existing = self.secrets.get((namespace, name))
        metadata = existing["metadata"] if existing else {
            "name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": {},
            "annotations": {}, "ownerReferences": []}  # fmt: skip
        self.secrets[(namespace, name)] = {"metadata": metadata, "data": dict(data)}
        self._secret_changed((namespace, name))

    def remove_secret(self, namespace: str, name: str) -> None:
        """A user deletes a Secret (kubectl delete)."""
        self.secrets.pop((namespace, name), None)
        self.on_change("Secret", (namespace, name), None)

    def _store(self, kind: str, key: Key, body: dict[str, Any]) -> None:
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[(kind, key)] = body
        self.on_change(kind, key, copy.deepcopy(body))

    def _secret_changed(self, key: Key) -> None:
        secret = self.secrets.get(key)
        self.secrets_version = next(self._versions)
        self.on_change("Secret", key, secret)

    def body(self, kind: str, key: Key) -> dict[str, Any]:
        """A copy of the object as stored (edit it and ``put`` it back)."""
        return copy.deepcopy(self.objects[(kind, key)])

    # -- the Kube interface -----------------------------------------------------------

    def _object(self, plural: str, namespace: str, name: str) -> tuple[str, Key, dict[str, Any]]:
        kind, key = KINDS[plural], (namespace, name)
        found = self.objects.get((kind, key))
        if found is None:
            raise NotFound(f"{kind} {namespace}/{name}")
        return kind, key, copy.deepcopy(found)

    def _written(self, plural: str, namespace: str, name: str) -> tuple[str, Key, dict[str, Any]]:
        """The object a write goes to; raises what ``refuse`` set for it."""
        kind, key, body = self._object(plural, namespace, name)
        refused = self._refused.get((kind, key))
        if refused is not None:
            self.recorded.refused.append(Write("refused", kind, key))
            raise refused
        return kind, key, body

    async def apply_status(
        self, plural: str, kind: str, namespace: str, name: str, status: dict[str, Any],
        manager: str, resource_version: str | None = None,
    ) -> None:  # fmt: skip
        self._fault("apply_status")
        kind, key, body = self._written(plural, namespace, name)
        if resource_version and body["metadata"]["resourceVersion"] != resource_version:
            raise Conflict(f"{kind} {namespace}/{name}")
        current = body.setdefault("status", {})
        # What this manager applied before and leaves out now is removed, as server-side
        # apply removes the fields a manager stops applying.
        fields, types = self._owned.get((kind, key, manager), (set(), set()))
        applied_types = {c["type"] for c in status.get("conditions") or []}
        for dropped in fields - set(status):
            current.pop(dropped, None)
        by_type = {c["type"]: c for c in current.get("conditions") or []}
        for dropped in types - applied_types:
            by_type.pop(dropped, None)
        for field_name, value in status.items():
            if field_name == "conditions":
                by_type.update({c["type"]: copy.deepcopy(c) for c in value})
            else:
                current[field_name] = copy.deepcopy(value)
        current["conditions"] = list(by_type.values())
        self._owned[(kind, key, manager)] = (set(status) - {"conditions"}, applied_types)
        self.recorded.writes.append(Write("apply_status", kind, key, (manager, status)))
        self._store(kind, key, body)

    async def patch_status_guarded(
        self, plural: str, namespace: str, name: str, uid: str, operations: list[dict[str, Any]],
        manager: str,
    ) -> None:  # fmt: skip
        self._fault("patch_status_guarded")
        kind, key, body = self._written(plural, namespace, name)
        if body["metadata"]["uid"] != uid:
            raise PreconditionFailed(f"{kind} {namespace}/{name}")
        status = body.setdefault("status", {})
        for operation in operations:
            path = operation["path"].split("/")[1:]
            assert path[0] == "status", operation
            # The parent of the last step: a status field, or an item of a list in one
            # (``/status/conditions/2``); a missing one fails the patch, as JSON patch does.
            parent: Any = status
            for step in path[1:-1]:
                try:
                    parent = parent[int(step)] if isinstance(parent, list) else parent[step]
                except (IndexError, KeyError, ValueError):
                    raise PreconditionFailed(f"{kind} {namespace}/{name}: no {step}") from None
            last: Any = int(path[-1]) if isinstance(parent, list) else path[-1]
            present = last < len(parent) if isinstance(parent, list) else last in parent
            if operation["op"] == "test":
                if not present or parent[last] != operation["value"]:
                    raise PreconditionFailed(f"{kind} {namespace}/{name}: test failed")
            elif operation["op"] == "remove":
                if not present:
                    raise PreconditionFailed(f"{kind} {namespace}/{name}: no {path[-1]}")
                del parent[last]
            else:
                parent[last] = copy.deepcopy(operation["value"])
        self.recorded.writes.append(Write("patch_status", kind, key, operations))
        self._store(kind, key, body)

    async def annotate(
        self, plural: str, namespace: str, name: str, annotations: dict[str, str | None],
        uid: str | None = None,
    ) -> None:  # fmt: skip
        self._fault("annotate")
        kind, key, body = self._written(plural, namespace, name)
        if uid is not None and body["metadata"]["uid"] != uid:
            raise NotFound(f"{kind} {namespace}/{name}")
        current = body["metadata"].setdefault("annotations", {})
        for name_, value in annotations.items():
            if value is None:
                current.pop(name_, None)
            else:
                current[name_] = value
        self.recorded.writes.append(Write("annotate", kind, key, annotations))
        self._store(kind, key, body)

    async def post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str
    ) -> None:
        metadata = involved["metadata"]
        key = (metadata["namespace"], metadata["name"])
        self.recorded.events.append((involved["kind"], key, type_, reason, message))

    async def set_secret_labels(
        self, namespace: str, name: str, labels: dict[str, str | None]
    ) -> bool:
        self._fault("set_secret_labels")
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return False
        current = secret["metadata"]["labels"]
        for label, value in labels.items():
            if value is None:
                current.pop(label, None)
            else:
                current[label] = value
        self.recorded.writes.append(Write("label", "Secret", (namespace, name), labels))
        self._secret_changed((namespace, name))
        return True

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        self._fault("read_secret_data")
        if namespace in self.unreadable_namespaces:
            raise Forbidden(f"reading Secret {namespace}/{name} failed: HTTP 403 Forbidden")
        secret = self.secrets.get((namespace, name))
        if secret is None:
            raise NotFound(f"Secret {namespace}/{name}")
        return dict(secret["data"])

    async def secret_metadata(self, namespace: str, name: str) -> Any:
        self._fault("secret_metadata")
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        metadata = secret["metadata"]
        references = [SimpleNamespace(**r) for r in metadata["ownerReferences"]]
        return SimpleNamespace(uid=metadata["uid"], labels=dict(metadata["labels"]),
                               annotations=dict(metadata["annotations"]),
                               owner_references=references,
                               resource_version=str(self.secrets_version))  # fmt: skip

    async def create_secret(
        self, namespace: str, name: str, data: dict[str, str], metadata: dict[str, Any]
    ) -> None:
        self._fault("create_secret")
        if (namespace, name) in self.secrets:
            raise AlreadyExists(f"Secret {namespace}/{name} already exists")
        self.secrets[(namespace, name)] = {"metadata": {
            "name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
            "labels": dict(metadata.get("labels") or {}),
            "annotations": dict(metadata.get("annotations") or {}),
            "ownerReferences": list(metadata.get("ownerReferences") or []),
        }, "data": data}  # fmt: skip
        self.recorded.writes.append(Write("create", "Secret", (namespace, name)))
        self._secret_changed((namespace, name))

    async def replace_secret_data(
        self, namespace: str, name: str, uid: str, resource_version: str,
        data: dict[str, str], annotations: dict[str, str],
    ) -> None:  # fmt: skip
        self._fault("replace_secret_data")
        secret = self.secrets[(namespace, name)]
        if secret["metadata"]["uid"] != uid:
            raise RuntimeError(f"writing Secret {namespace}/{name} failed: HTTP 422")
        secret["data"] = data
        secret["metadata"]["annotations"].update(annotations)
        self.recorded.writes.append(Write("replace", "Secret", (namespace, name)))
        self._secret_changed((namespace, name))

    async def annotate_secret(
        self, namespace: str, name: str, uid: str, annotations: dict[str, str]
    ) -> None:
        self._fault("annotate_secret")
        secret = self.secrets[(namespace, name)]
        secret["metadata"]["annotations"].update(annotations)
        self.recorded.writes.append(Write("annotate", "Secret", (namespace, name), annotations))
        self._secret_changed((namespace, name))

    async def labelled_secret_annotations(self, namespace: str, label: str) -> list[dict[str, str]]:
        return [
            dict(secret["metadata"].get("annotations") or {})
            for (ns, _), secret in self.secrets.items()
            if ns == namespace and label in (secret["metadata"].get("labels") or {})
        ]

    async def read_secret_versioned(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], str, str] | None:
        self._fault("read_secret_versioned")
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        metadata = secret["metadata"]
        return dict(secret["data"]), metadata.setdefault("resourceVersion", "0"), metadata["uid"]

    async def create_secret_versioned(
        self, namespace: str, name: str, data: dict[str, str], metadata: dict[str, Any]
    ) -> tuple[str, str]:
        await self.create_secret(namespace, name, data, metadata)
        made = self.secrets[(namespace, name)]["metadata"]
        made["resourceVersion"] = str(next(self._versions))
        return made["resourceVersion"], made["uid"]

    async def swap_secret_data(
        self, namespace: str, name: str, uid: str, resource_version: str, data: dict[str, str]
    ) -> str:
        self._fault("swap_secret_data")
        secret = self.secrets.get((namespace, name))
        if secret is None:
            raise NotFound(f"Secret {namespace}/{name}")
        metadata = secret["metadata"]
        if (metadata["uid"], metadata.get("resourceVersion", "0")) != (uid, resource_version):
            raise Conflict(f"Secret {namespace}/{name} changed")
        secret["data"] = dict(data)
        metadata["resourceVersion"] = str(next(self._versions))
        self.recorded.writes.append(Write("swap", "Secret", (namespace, name)))
        self._secret_changed((namespace, name))
        return str(metadata["resourceVersion"])

    async def delete_secret(self, namespace: str, name: str, uid: str) -> None:
        self._fault("delete_secret")
        secret = self.secrets.get((namespace, name))
        if secret is None or secret["metadata"]["uid"] != uid:
            return
        del self.secrets[(namespace, name)]
        self.recorded.writes.append(Write("delete", "Secret", (namespace, name)))
        self.on_change("Secret", (namespace, name), None)

    async def read_namespace(self, namespace: str) -> Any:
        self._fault("read_namespace")
        labels = self.namespaces.get(namespace)
        return None if labels is None else SimpleNamespace(labels=labels, uid=namespace)

    async def list_pages(
        self,
        plural: str,
        field_selector: str | None = None,
        page_size: int = 500,
        namespace: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        for (kind, key), body in list(self.objects.items()):
            if kind == KINDS[plural] and namespace in (None, key[0]):
                yield copy.deepcopy(body)

    async def read_credential(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._fault("read_credential")
        found = self.objects.get(("CloudCredential", (namespace, name)))
        return copy.deepcopy(found) if found else None


class Clock:
    """The wall clock the reconcilers read (``conditions.now``) and the event loop's
    clock the queues' timers run on, moved together by hand."""

    def __init__(self, monkeypatch: Any) -> None:
        self.moment = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
        self.offset = 0.0  # seconds moved so far
        monkeypatch.setattr(conditions, "now", lambda: self.moment)
        # The deploy step remembers provider checks on the monotonic clock.
        monotonic = time.monotonic
        monkeypatch.setattr(deploy, "time", SimpleNamespace(
            monotonic=lambda: monotonic() + self.offset))  # fmt: skip

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run this loop's timers on the fake clock."""
        loop.time = lambda: time.monotonic() + self.offset  # type: ignore[method-assign]

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self.offset += seconds


class Operator:
    """The real ``Controllers`` over a ``FakeKube``: caches fed by its writes, keys
    through the wiring, workers replaced by ``settle()`` (every queued key, one at a
    time, until nothing is left)."""

    def __init__(
        self, kube: FakeKube, clock: Clock, installation: Installation | None = None,
        **settings: Any,
    ) -> None:  # fmt: skip
        """``installation``: with a namespace, its Secret is followed as the operator's
        own watch does (default: a bare key, nothing to follow)."""
        self.kube = kube
        self.clock = clock
        self.installation = installation or Installation(b"k" * 32)
        self.controllers = Controllers(
            kube,  # type: ignore[arg-type]
            Settings(**settings),
            asyncio.Semaphore(4),
            [],
            self.installation,
            bindings_quiet=0.0,  # settle() runs one key at a time: nothing is ever quiet
        )
        caches = self.controllers.caches
        for store in caches.stores:
            store.synced = True
        kube.on_change = self._event
        clock.attach(asyncio.get_running_loop())

    def _event(self, kind: str, key: Key, body: dict[str, Any] | None) -> None:
        caches = self.controllers.caches
        if kind == "Secret":
            self._delivered_event(key, body)
            if key == (self.installation.namespace, INSTALLATION_SECRET):
                self._installation_event(key, body)
            store: Any = caches.secrets
            labels = (body or {}).get("metadata", {}).get("labels") or {}
            if body is None or REFERENCED_LABEL not in labels:
                change = store.delete(key)
            else:
                info = SecretInfo(True, labels.get(IN_USE_LABEL) == "true",
                                  data_digest(body["data"]))  # fmt: skip
                change = store.apply(key, info)
        else:
            store = caches.credentials if kind == "CloudCredential" else caches.clusters
            parse = CredentialInfo.from_body if kind == "CloudCredential" else ClusterInfo.from_body
            change = store.delete(key) if body is None else store.apply(key, parse(body))
        self.controllers._changed(kind, [change])

    def _delivered_event(self, key: Key, body: dict[str, Any] | None) -> None:
        """The delivered-Secrets watch: Secrets labelled as the operator's."""
        store = self.controllers.caches.delivered
        metadata = (body or {}).get("metadata") or {}
        if (metadata.get("labels") or {}).get(MANAGED_BY_LABEL) != "cloudcred":
            if key not in store.objects:
                return
            change = store.delete(key)
        else:
            owner = next((r["uid"] for r in metadata.get("ownerReferences") or []
                          if r.get("controller") and r.get("kind") == "Cluster"), None)  # fmt: skip
            in_use = (metadata.get("labels") or {}).get(IN_USE_LABEL) == "true"
            change = store.apply(key, DeliveredInfo(metadata["uid"], owner, in_use))
        self.controllers._changed("DeliveredSecret", [change])

    def _installation_event(self, key: Key, body: dict[str, Any] | None) -> None:
        """The installation Secret's own watch (one name in the operator's namespace)."""
        store = self.controllers.caches.installation_key
        if body is None:
            change = store.delete(key)
        else:
            item = client.V1Secret(metadata=client.V1ObjectMeta(uid=body["metadata"]["uid"]),
                                   data=dict(body["data"]))  # fmt: skip
            change = store.apply(key, key_secret_info(self.installation, item))
        if change.old != change.new:
            self.controllers._changed("InstallationKey", [change])

    def start_from(self, kube: FakeKube) -> None:
        """A restart: the caches take in everything the API server holds."""
        for (kind, key), body in list(kube.objects.items()):
            self._event(kind, key, copy.deepcopy(body))
        for key, secret in list(kube.secrets.items()):
            self._event("Secret", key, secret)

    def put_permission_set(self, name: str, spec: dict[str, Any] | None) -> None:
        """An admin writes (``None``: deletes) a PermissionSet, as its informer sees it."""
        store = self.controllers.caches.permission_sets
        if spec is None:
            change = store.delete(("", name))
        else:
            body = {"metadata": {"name": name}, "spec": spec}
            change = store.apply(("", name), PermissionSetInfo.from_body(body))
        self.controllers._changed("PermissionSet", [change])

    def label_namespace(self, name: str, labels: dict[str, str]) -> None:
        self.kube.namespaces[name] = labels
        change = self.controllers.caches.namespaces.apply(("", name), labels)
        self.controllers._changed("Namespace", [change])

    def put_boundary(self, name: str, spec: dict[str, Any]) -> None:
        """A CredentialBoundary as a cluster admin writes it."""
        body = {"metadata": {"name": name}, "spec": spec}
        change = self.controllers.caches.boundaries.apply(("", name), boundary_info(body))
        self.controllers._changed("CredentialBoundary", [change])

    async def settle(self, limit: int = 10_000) -> int:
        """Reconcile every queued key until none is left; return how many reconciles."""
        done = 0
        while True:
            ready = [c for c in self.controllers.controllers if len(c.queue)]
            if not ready:
                return done
            for controller in ready:
                key = await controller.queue.get()
                try:
                    await controller.process(key)
                finally:
                    controller.queue.done(key)
                done += 1
                assert done < limit, "the controllers never settle: a hot loop"

    def timers(self) -> dict[str, dict[Key, float]]:
        """Each queue's timers: key -> seconds from the fake clock's now."""
        loop = asyncio.get_running_loop()
        return {
            c.name: {k: h.when() - loop.time() for k, h in c.queue._timers.items()}
            for c in self.controllers.controllers
        }

    async def advance(self, seconds: float) -> int:
        """Move the clock; let the loop fire the timers that fall due; settle."""
        self.clock.advance(seconds)
        for _ in range(3):
            await asyncio.sleep(0)
        return await self.settle()
