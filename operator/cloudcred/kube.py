"""The operator's own Kubernetes calls, off the event loop.

kopf owns watching and its own patches; everything else (reading referenced Secrets,
server-side apply of status) goes through the official client here, in worker
threads. Status is written with server-side apply under a field manager per concern,
so that independent writers (verification, bindings) own their own fields and
conditions (``listType: map`` on ``type``) and never erase each other's.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from cloudcred import __version__
from cloudcred.constants import API_VERSION, CREDENTIAL_PLURAL, GROUP, VERSION

# The client logs whole response bodies at DEBUG, Secret data included.
logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)

APPLY = "application/apply-patch+yaml"
# (connect, read) seconds: no call may hang forever and hold one of the few slots. 30 s:
# after a network partition, a write sent on a dead pooled connection is given up
# within that (an answer normally takes well under a second).
REQUEST_TIMEOUT = (10, 30)


class NotFound(Exception):
    """The object does not exist (or, with a UID, this object no longer does)."""


class Forbidden(RuntimeError):
    """RBAC refused the request (HTTP 403): with per-namespace rights, a Secret of a
    namespace the installation does not watch."""


class AlreadyExists(RuntimeError):
    """A create found an object of that name."""


class Conflict(Exception):
    """The object changed since the ``resourceVersion`` a write was computed from."""


class PreconditionFailed(Exception):
    """A guarded write found the object other than expected (another UID, a list
    reordered): nothing was written."""


def describe_error(error: BaseException) -> str:
    """An API failure in a few words, never a response body (it may hold data)."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    if isinstance(error, (NotFound, RuntimeError)):  # this module's messages hold no data
        return str(error)
    return type(error).__name__


def _metadata(namespace: str, name: str, uid: str | None) -> dict[str, Any]:
    """An object's identity in a write to its main resource; with its UID, the API
    server refuses the write (422, "metadata.uid ... immutable") when the object was
    deleted and re-created under the same name."""
    metadata = {"name": name, "namespace": namespace}
    if uid:
        metadata["uid"] = uid
    return metadata


def load_client_configuration() -> client.ApiClient:
    """In a pod: its service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    # Tells the operator's requests apart in audit logs and API server metrics.
    api.user_agent = f"cloudcred/{__version__}"
    return api


class Kube:
    """Async wrappers over the blocking client, at most ``concurrency`` at a time."""

    def __init__(self, api: client.ApiClient, concurrency: int = 8) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._slots = asyncio.Semaphore(concurrency)

    async def _write(self, function: Any, *args: Any, **kwargs: Any) -> None:
        """A write whose answer is not needed: the body is read but not decoded into
        objects (which costs more CPU than the request itself for large objects)."""

        def call() -> None:
            response = function(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
                                **kwargs)  # fmt: skip
            response.data  # noqa: B018 - drains the answer, so the connection is reused

        async with self._slots:
            await asyncio.to_thread(call)

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        async with self._slots:
            return await asyncio.to_thread(
                function, *args, _request_timeout=REQUEST_TIMEOUT, **kwargs
            )

    async def _read_secret(self, namespace: str, name: str) -> client.V1Secret:
        """The Secret. Raises NotFound. Errors never carry the body."""
        try:
            secret: client.V1Secret = await self._call(
                self.core.read_namespaced_secret, name, namespace
            )
        except ApiException as error:
            if error.status == 404:
                raise NotFound(f"Secret {namespace}/{name}") from None
            failed = Forbidden if error.status == 403 else RuntimeError
            raise failed(
                f"reading Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None
        return secret

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """The Secret's base64 data. Raises NotFound, Forbidden."""
        return dict((await self._read_secret(namespace, name)).data or {})

    async def apply_status(
        self, plural: str, kind: str, namespace: str, name: str, status: dict[str, Any],
        manager: str, resource_version: str | None = None,
    ) -> None:  # fmt: skip
        """Server-side apply of this manager's part of the status. Raises NotFound when
        it is gone; with ``resource_version``, Conflict when the object changed since
        (the API server checks it on the status subresource too). (The status
        subresource ignores ``uid``: ``patch_status_guarded`` is the write that only
        lands on one object.)"""
        metadata = {"name": name, "namespace": namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "status": status}
        try:
            await self._write(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, plural, name, body,
                field_manager=manager, force=True, _content_type=APPLY,
            )  # fmt: skip
        except ApiException as error:
            if error.status == 404:
                raise NotFound(f"{kind} {namespace}/{name}") from None
            if error.status == 409 and resource_version:
                raise Conflict(f"{kind} {namespace}/{name}") from None
            raise

    async def patch_status_guarded(
        self, plural: str, namespace: str, name: str, uid: str, operations: list[dict[str, Any]],
        manager: str,
    ) -> None:  # fmt: skip
        """A JSON patch of the status of the object with this UID, and only that one.

        The status subresource ignores metadata in server-side apply and merge patches,
        so a UID there guards nothing; a JSON patch's ``test`` operation is checked
        against the whole object. Raises NotFound (no object by that name) or
        PreconditionFailed (a ``test`` failed: another UID, or the list moved)."""
        patch = [{"op": "test", "path": "/metadata/uid", "value": uid}, *operations]
        try:
            await self._write(
                self.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, plural, name, patch,
                field_manager=manager, _content_type="application/json-patch+json",
            )  # fmt: skip
        except ApiException as error:
            if error.status == 404:
                raise NotFound(f"{plural} {namespace}/{name}") from None
            if error.status == 422:
                raise PreconditionFailed(f"{plural} {namespace}/{name}") from None
            raise

    async def list_pages(
        self,
        plural: str,
        field_selector: str | None = None,
        page_size: int = 500,
        namespace: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object of one of our kinds in every namespace (or in ``namespace``),
        fresh from the API server, a page at a time (a fleet of ten thousand is never
        one answer)."""
        token = None
        selection = {"field_selector": field_selector} if field_selector else {}
        while True:
            if namespace is None:
                page = await self._call(self.custom.list_cluster_custom_object, GROUP, VERSION,
                                        plural, limit=page_size, _continue=token,
                                        **selection)  # fmt: skip
            else:
                page = await self._call(self.custom.list_namespaced_custom_object, GROUP,
                                        VERSION, namespace, plural, limit=page_size,
                                        _continue=token, **selection)  # fmt: skip
            for item in page.get("items") or []:
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    async def read_namespace(self, namespace: str) -> client.V1ObjectMeta | None:
        """The namespace's metadata (labels, UID); None when it does not exist."""
        try:
            found = await self._call(self.core.read_namespace, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        metadata: client.V1ObjectMeta = found.metadata
        return metadata

    async def set_secret_labels(
        self, namespace: str, name: str, labels: dict[str, str | None]
    ) -> bool:
        """Set (or with None remove) labels on a Secret; False if it does not exist.
        A merge patch of metadata only: the data is neither read nor written."""
        patch = {"metadata": {"labels": labels}}
        try:
            await self._write(self.core.patch_namespaced_secret, name, namespace, patch)
        except ApiException as error:
            if error.status == 404:
                return False
            raise RuntimeError(
                f"labelling Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None
        return True

    async def annotate(
        self, plural: str, namespace: str, name: str, annotations: dict[str, str | None],
        uid: str | None = None,
    ) -> None:  # fmt: skip
        """Merge-patch annotations on one of our objects (None removes one), the one
        with this UID when given."""
        patch = {"metadata": {**_metadata(namespace, name, uid), "annotations": annotations}}
        try:
            await self._write(
                self.custom.patch_namespaced_custom_object,
                GROUP, VERSION, namespace, plural, name, patch,
            )  # fmt: skip
        except ApiException as error:
            _raise_gone(error, f"{plural} {namespace}/{name}", uid)
            raise

    async def annotate_secret(
        self, namespace: str, name: str, uid: str, annotations: dict[str, str]
    ) -> None:
        """Merge-patch annotations on the Secret with this UID."""
        patch = {"metadata": {**_metadata(namespace, name, uid), "annotations": annotations}}
        try:
            await self._write(self.core.patch_namespaced_secret, name, namespace, patch)
        except ApiException as error:
            raise RuntimeError(
                f"annotating Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None

    async def post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event about one object. Best effort: a failed post is logged,
        never raised (an Event is a courtesy, the status is the record)."""
        metadata = involved["metadata"]
        moment = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        # A plain body: the client's model classes copy its whole configuration per
        # object, which costs more CPU than the request during a rollout.
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion", API_VERSION),
                               "kind": involved["kind"], "name": metadata["name"],
                               "namespace": metadata["namespace"]},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "cloudcred"},
            "reportingComponent": "cloudcred",
            "reportingInstance": "cloudcred",
            "firstTimestamp": moment,
            "lastTimestamp": moment,
            "count": 1,
        }  # fmt: skip
        if metadata.get("uid"):
            event["involvedObject"]["uid"] = metadata["uid"]
        try:
            await self._write(self.core.create_namespaced_event, metadata["namespace"], event)
        except Exception as error:  # the API is away, or refused: the Event is dropped
            detail = f"HTTP {error.status}" if isinstance(error, ApiException) else \
                type(error).__name__  # fmt: skip
            logging.getLogger("cloudcred").warning(
                "could not post event %s on %s/%s: %s", reason, metadata["namespace"],
                metadata["name"], detail,
            )  # fmt: skip

    async def read_credential(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The CloudCredential as the API server has it now; None when it is gone."""
        try:
            found: dict[str, Any] = await self._call(
                self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                CREDENTIAL_PLURAL, name,
            )  # fmt: skip
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def secret_metadata(self, namespace: str, name: str) -> client.V1ObjectMeta | None:
        """A Secret's metadata (labels, annotations), None when it does not exist. The
        data comes along in the response and is dropped here."""
        try:
            metadata: client.V1ObjectMeta = (await self._read_secret(namespace, name)).metadata
        except NotFound:
            return None
        return metadata

    async def create_secret(
        self, namespace: str, name: str, data: dict[str, str], metadata: dict[str, Any]
    ) -> None:
        """Create a Secret the operator owns (``data`` base64-encoded): a create, never an
        apply, so an existing Secret is never taken over (AlreadyExists). Errors carry
        the HTTP status only, never the request body."""
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, **metadata},
                "data": data}  # fmt: skip
        try:
            await self._write(self.core.create_namespaced_secret, namespace, body)
        except ApiException as error:
            if error.status == 409:
                raise AlreadyExists(f"Secret {namespace}/{name} already exists") from None
            raise RuntimeError(
                f"creating Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None

    async def replace_secret_data(
        self, namespace: str, name: str, uid: str, resource_version: str,
        data: dict[str, str], annotations: dict[str, str],
    ) -> None:  # fmt: skip
        """Replace the data and cloudcred.io annotations of a Secret the operator owns,
        only if it is still the object read (UID) and unchanged since (resourceVersion):
        a JSON patch whose first operations are tests."""
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "add", "path": "/data", "value": data},
        ]
        for key, value in annotations.items():
            path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
            operations.append({"op": "add", "path": path, "value": value})
        try:
            await self._write(self.core.patch_namespaced_secret, name, namespace, operations,
                              _content_type="application/json-patch+json")  # fmt: skip
        except ApiException as error:
            raise RuntimeError(
                f"writing Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None

    async def labelled_secret_annotations(self, namespace: str, label: str) -> list[dict[str, str]]:
        """The annotations of each Secret in ``namespace`` that carries ``label``."""
        found = await self._call(self.core.list_namespaced_secret, namespace,
                                 label_selector=label)  # fmt: skip
        return [dict(secret.metadata.annotations or {}) for secret in found.items]

    async def read_secret_versioned(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], str, str] | None:
        """A Secret's base64 data, resourceVersion and UID; None when it does not exist."""
        try:
            secret = await self._read_secret(namespace, name)
        except NotFound:
            return None
        return dict(secret.data or {}), secret.metadata.resource_version, secret.metadata.uid

    async def create_secret_versioned(
        self, namespace: str, name: str, data: dict[str, str], metadata: dict[str, Any]
    ) -> tuple[str, str]:
        """As ``create_secret``; returns the new Secret's resourceVersion and UID."""
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, **metadata},
                "data": data}  # fmt: skip
        try:
            made: client.V1Secret = await self._call(
                self.core.create_namespaced_secret, namespace, body
            )
        except ApiException as error:
            if error.status == 409:
                raise AlreadyExists(f"Secret {namespace}/{name} already exists") from None
            raise RuntimeError(
                f"creating Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None
        return made.metadata.resource_version, made.metadata.uid

    async def swap_secret_data(
        self, namespace: str, name: str, uid: str, resource_version: str, data: dict[str, str]
    ) -> str:
        """Compare-and-swap of a Secret's data: written only if it is still the object read
        (UID) and unchanged since (resourceVersion), else Conflict (NotFound when gone).
        Returns the new resourceVersion. Errors never carry the body."""
        patch = {"metadata": {"uid": uid, "resourceVersion": resource_version}, "data": data}
        try:
            written: client.V1Secret = await self._call(
                self.core.patch_namespaced_secret,
                name,
                namespace,
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 404:
                raise NotFound(f"Secret {namespace}/{name}") from None
            if error.status in (409, 422):
                raise Conflict(f"Secret {namespace}/{name} changed") from None
            raise RuntimeError(
                f"writing Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None
        return str(written.metadata.resource_version)

    async def delete_secret(self, namespace: str, name: str, uid: str) -> None:
        """Delete this Secret object (a precondition on its UID); gone already is fine."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            await self._write(self.core.delete_namespaced_secret, name, namespace, body=options)
        except ApiException as error:
            if error.status in (404, 409):  # gone, or another object under the name now
                return
            raise RuntimeError(
                f"deleting Secret {namespace}/{name} failed: HTTP {error.status} {error.reason}"
            ) from None


def _raise_gone(error: ApiException, what: str, uid: str | None) -> None:
    """404, or a refused UID (the object was re-created under its name): it is gone."""
    refused_uid = error.status in (409, 422) and "metadata.uid" in str(error.body)
    if error.status == 404 or (uid and refused_uid):
        raise NotFound(what) from None
