"""Builders and readers for the test objects."""

from __future__ import annotations

import json
import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from cloudcred.constants import (
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    GROUP,
    REDEPLOY_ANNOTATION,
    VERSION,
)
from tests.conftest import Kube
from tests.operator import wait_for


def new_namespace(kube: Kube, prefix: str, labels: dict[str, str] | None = None) -> str:
    """A fresh namespace named ``prefix-<random>`` (the local control plane never finishes
    deleting one). The shared operator watches ``t-*``: any other prefix is a test's own."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(
        metadata=client.V1ObjectMeta(name=name, labels=labels)))  # fmt: skip
    return name


def secret(kube: Kube, namespace: str, name: str, data: dict[str, str]) -> None:
    kube.core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data),
    )


def _create(kube: Kube, namespace: str, kind: str, plural: str, name: str,
            spec: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name},
            "spec": spec}  # fmt: skip
    return dict(
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    )


def create_credential(kube: Kube, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return _create(kube, namespace, "CloudCredential", CREDENTIAL_PLURAL, name, spec)


def get_credential(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(
            kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name
            )
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def patch_credential(kube: Kube, namespace: str, name: str, patch: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name, patch
    )


def create_cluster(kube: Kube, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return _create(kube, namespace, "Cluster", CLUSTER_PLURAL, name, spec)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def credential_ready(kube: Kube, namespace: str, name: str, status: str) -> dict[str, Any]:
    """The credential's Ready condition once it has this status. Ready is the summary the
    binder writes from Verified and the rollout, a moment after Verified."""

    def check() -> dict[str, Any] | None:
        found = condition(get_credential(kube, namespace, name), "Ready")
        return found if found and found["status"] == status else None

    ready: dict[str, Any] = wait_for(check, timeout=30, what=f"{namespace}/{name} Ready={status}")
    return ready


def events_for(kube: Kube, namespace: str, name: str) -> list[client.CoreV1Event]:
    events = kube.core.list_namespaced_event(namespace).items
    return [event for event in events if event.involved_object.name == name]


def refusal(action: Any) -> str | None:
    """The API server's message if ``action()`` is refused, None if it went through."""
    try:
        action()
    except ApiException as error:
        return str(json.loads(error.body)["message"])
    return None


def get_cluster(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTER_PLURAL, name)
    )


def list_clusters(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    found = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTER_PLURAL)
    return list(found["items"])


def patch_cluster_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> None:
    """What an external deployer does to report back."""
    kube.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CLUSTER_PLURAL, name, {"status": status}
    )


def static_key_credential(
    kube: Kube, namespace: str, name: str, key_id: str, secret_name: str, **extra: Any
) -> None:
    """An AWS static-key credential whose secret is in ``secret_name``."""
    ref = {"name": secret_name, "key": "secretAccessKey"}
    create_credential(kube, namespace, name, provider="AWS",
                      aws={"accessKeyId": key_id, "secretAccessKeyRef": ref}, **extra)  # fmt: skip


def credential_revision(kube: Kube, namespace: str, name: str) -> str | None:
    status = (get_credential(kube, namespace, name) or {}).get("status") or {}
    return status.get("revision")


def new_revision(kube: Kube, namespace: str, name: str, old: str | None) -> str:
    """Wait for the credential's revision to be set and differ from ``old``."""
    found: str = wait_for(
        lambda: (r := credential_revision(kube, namespace, name)) and r != old and r,
        timeout=30, what=f"a revision of {name} other than {old}",
    )  # fmt: skip
    return found


def deployed(cluster: dict[str, Any]) -> str | None:
    """The cluster's status.deployedRevision."""
    return (cluster.get("status") or {}).get("deployedRevision")


def marked(cluster: dict[str, Any]) -> str | None:
    """The cluster's cloudcred.io/redeploy-revision annotation."""
    return (cluster["metadata"].get("annotations") or {}).get(REDEPLOY_ANNOTATION)


def ask_rotation(kube: Kube, namespace: str, name: str, value: str) -> None:
    """What ``cloudcred rotate --now`` does: a new ``cloudcred.io/rotate-now`` value."""
    patch_credential(kube, namespace, name,
                     {"metadata": {"annotations": {"cloudcred.io/rotate-now": value}}})  # fmt: skip


def write_rotation_status(
    kube: Kube, namespace: str, name: str, view: dict[str, Any] | None
) -> None:
    """Write ``status.rotation`` as anyone who may patch the status can (None removes it,
    as a restore without status does)."""
    kube.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name, {"status": {"rotation": view}}
    )


def event_reasons(kube: Kube, namespace: str, name: str) -> list[str]:
    return [event.reason for event in events_for(kube, namespace, name)]


def verified_noting_stalled(
    kube: Kube, namespace: str, name: str, stalled: list[str]
) -> dict[str, Any]:
    """The credential's Verified condition ({} before any) and its revision; the Stalled
    status read with them goes to ``stalled``, so that a wait shows it was never True."""
    body = get_credential(kube, namespace, name)
    stalled.append(str((condition(body, "Stalled") or {}).get("status")))
    return {**(condition(body, "Verified") or {}),
            "revision": ((body or {}).get("status") or {}).get("revision")}  # fmt: skip
