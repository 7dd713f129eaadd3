"""Kubernetes access for the command-line companion: kubeconfig loading and the few
calls it makes, with every failure turned into a one-line ``CliError``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from cloudcred.cli.errors import ApiError, CliError, NotFoundError
from cloudcred.constants import CLUSTER_PLURAL, CREDENTIAL_PLURAL, GROUP, VERSION

REQUEST_TIMEOUT = 30.0
_T = TypeVar("_T")


@dataclass
class Kube:
    api: client.ApiClient
    namespace: str  # the context's namespace, or "default"

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def kubeconfig_path(flag: str | None) -> str:
    return flag or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def connect(kubeconfig: str | None, context: str | None) -> Kube:
    """A client for ``context`` (default: the current one) of the kubeconfig named by the
    flag, $KUBECONFIG (paths joined with ':' are merged) or ~/.kube/config."""
    path = kubeconfig_path(kubeconfig)
    if kubeconfig and not os.path.exists(kubeconfig):
        raise CliError(f"kubeconfig {kubeconfig} does not exist")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except ConfigException as error:
        raise CliError(
            f"no usable kubeconfig at {path} ({error}): set $KUBECONFIG or pass --kubeconfig"
        ) from None
    chosen = _context(contexts or [], current, context, path)
    try:
        api = config.new_client_from_config(config_file=path, context=chosen["name"])
    except ConfigException as error:
        raise CliError(f"cannot use context {chosen['name']} of {path}: {error}") from None
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Kube(api=api, namespace=str(namespace))


def _context(
    contexts: list[dict[str, Any]], current: dict[str, Any] | None, name: str | None, path: str
) -> dict[str, Any]:
    if name is None:
        if not current:
            raise CliError(f"{path} has no current context: pass --context")
        return current
    for item in contexts:
        if item.get("name") == name:
            return item
    known = ", ".join(str(item.get("name")) for item in contexts) or "none"
    raise CliError(f"context {name} is not in {path} (contexts: {known})")


def call(what: str, request: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``request(*args, **kwargs)``; API and connection failures become ``CliError``s
    that start with ``what``."""
    try:
        return request(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    except ApiException as error:
        raise ApiError(f"{what}: {describe_api_error(error)}") from None
    except urllib3.exceptions.HTTPError as error:
        raise ApiError(f"{what}: cannot reach the API server: {_reason(error)}") from None


def describe_api_error(error: ApiException) -> str:
    """``HTTP 403 Forbidden: <the server's message>`` (the message names objects and
    fields, never Secret data)."""
    message = ""
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(error.body or "{}").get("message") or "")
    head = f"HTTP {error.status} {error.reason or ''}".rstrip()
    return f"{head}: {message}" if message else head


def _reason(error: urllib3.exceptions.HTTPError) -> str:
    reason = getattr(error, "reason", None)
    return f"{type(reason or error).__name__}: {reason or error}"


def get_credential(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    try:
        return dict(
            kube.custom.get_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                CREDENTIAL_PLURAL,
                name,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )
    except ApiException as error:
        if error.status == 404:
            raise NotFoundError(f"CloudCredential {namespace}/{name} not found") from None
        raise ApiError(
            f"reading CloudCredential {namespace}/{name}: {describe_api_error(error)}"
        ) from None
    except urllib3.exceptions.HTTPError as error:
        raise ApiError(f"reading CloudCredential {namespace}/{name}: cannot reach the API "
                       f"server: {_reason(error)}") from None  # fmt: skip


def list_credentials(kube: Kube, namespace: str | None) -> list[dict[str, Any]]:
    """The CloudCredentials of ``namespace``, or of every namespace when it is None."""
    what = "listing CloudCredentials" + (f" in {namespace}" if namespace else "")
    custom = kube.custom
    if namespace is None:
        listing = call(what, custom.list_cluster_custom_object, GROUP, VERSION, CREDENTIAL_PLURAL)
    else:
        listing = call(
            what, custom.list_namespaced_custom_object, GROUP, VERSION, namespace, CREDENTIAL_PLURAL
        )
    return list(listing.get("items") or [])


def clusters_using(kube: Kube, name: str) -> list[dict[str, Any]]:
    """Clusters of every namespace whose spec.credentialRef.name is ``name`` (a field
    selector the Cluster CRD declares)."""
    listing = call(
        f"listing Clusters that reference {name}",
        kube.custom.list_cluster_custom_object,
        GROUP,
        VERSION,
        CLUSTER_PLURAL,
        field_selector=f"spec.credentialRef.name={name}",
    )
    return list(listing.get("items") or [])
