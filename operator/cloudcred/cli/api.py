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

from cloudcred.cli.errors import ApiError, CliError, NotFoundError, UsageError
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


@dataclass(frozen=True)
class Access:
    """Which cluster, as whom: the kubectl flags every command takes."""

    kubeconfig: str | None = None
    context: str | None = None
    as_user: str | None = None  # --as: impersonate this user
    as_groups: tuple[str, ...] = ()  # --as-group, repeatable


class _Impersonating(client.ApiClient):  # type: ignore[misc]
    """Adds the Impersonate-User and Impersonate-Group headers to every request, as
    kubectl --as/--as-group do. One header per group: a plain dict holds one value per
    name, urllib3's HTTPHeaderDict sends each value as a header of its own."""

    def __init__(self, configuration: client.Configuration, user: str, groups: tuple[str, ...]):
        super().__init__(configuration=configuration)
        self.impersonation = [("Impersonate-User", user)]
        self.impersonation += [("Impersonate-Group", group) for group in groups]

    def request(self, method: str, url: str, query_params: Any = None, headers: Any = None,
                *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        merged = urllib3.HTTPHeaderDict(headers or {})
        for name, value in self.impersonation:
            merged.add(name, value)
        return super().request(method, url, query_params, merged, *args, **kwargs)


def connect(access: Access) -> Kube:
    """A client for ``access.context`` (default: the current one) of the kubeconfig named
    by the flag, $KUBECONFIG (paths joined with ':' are merged) or ~/.kube/config,
    impersonating ``access.as_user`` when set."""
    kubeconfig = access.kubeconfig
    path = kubeconfig_path(kubeconfig)
    if access.as_groups and not access.as_user:
        raise UsageError("--as-group needs --as: impersonating groups needs a user, as in kubectl")
    if kubeconfig and not os.path.exists(kubeconfig):
        raise CliError(f"kubeconfig {kubeconfig} does not exist")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except ConfigException as error:
        raise CliError(
            f"no usable kubeconfig at {path} ({error}): set $KUBECONFIG or pass --kubeconfig"
        ) from None
    chosen = _context(contexts or [], current, access.context, path)
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=path,
            context=chosen["name"],
            client_configuration=configuration,
            persist_config=False,
        )
    except ConfigException as error:
        raise CliError(f"cannot use context {chosen['name']} of {path}: {error}") from None
    if access.as_user:
        api: client.ApiClient = _Impersonating(configuration, access.as_user, access.as_groups)
    else:
        api = client.ApiClient(configuration=configuration)
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Kube(api=api, namespace=str(namespace))


def contexts(kubeconfig: str | None) -> list[str]:
    """The context names of the kubeconfig (for shell completion); none when unreadable."""
    try:
        found, _ = config.list_kube_config_contexts(config_file=kubeconfig_path(kubeconfig))
    except (ConfigException, OSError):
        return []
    return [str(item.get("name")) for item in found or [] if item.get("name")]


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
        raise ApiError(f"{what}: {describe_api_error(error)}", status=error.status) from None
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
            f"reading CloudCredential {namespace}/{name}: {describe_api_error(error)}",
            status=error.status,
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


def clusters_using(kube: Kube, name: str, namespace: str | None) -> list[dict[str, Any]]:
    """Clusters of ``namespace`` (of every namespace when None) whose
    spec.credentialRef.name is ``name``: a field selector the Cluster CRD declares
    (selectable fields, Kubernetes 1.31+); an API server that does not know it gets a
    plain list, filtered here."""
    where = f" in {namespace}" if namespace else " in every namespace"
    what = f"listing Clusters that reference {name}{where}"
    custom = kube.custom

    def listing(**selector: str) -> list[dict[str, Any]]:
        if namespace is None:
            found = call(what, custom.list_cluster_custom_object, GROUP, VERSION, CLUSTER_PLURAL,
                         **selector)  # fmt: skip
        else:
            found = call(what, custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                         CLUSTER_PLURAL, **selector)  # fmt: skip
        return list(found.get("items") or [])

    try:
        return listing(field_selector=f"spec.credentialRef.name={name}")
    except ApiError as error:
        if error.status != 400 or "field label not supported" not in error.message:
            raise
    return referencing_clusters(listing(), name)


def referencing_clusters(items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """What the field selector spec.credentialRef.name=``name`` selects."""
    return [
        c for c in items if ((c.get("spec") or {}).get("credentialRef") or {}).get("name") == name
    ]


def annotate(kube: Kube, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
    """Set (or, with None, remove) annotations of a CloudCredential: one merge patch."""
    api_call = kube.custom.patch_namespaced_custom_object
    call(f"annotating CloudCredential {namespace}/{name}", api_call, GROUP, VERSION, namespace,
         CREDENTIAL_PLURAL, name, {"metadata": {"annotations": annotations}})  # fmt: skip


def delete_credential(kube: Kube, namespace: str, name: str) -> None:
    """Delete a CloudCredential; a refusal (the admission policy naming the clusters that
    use it, RBAC) is an ``ApiError`` in the API server's words."""
    call(f"deleting CloudCredential {namespace}/{name}",
         kube.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace,
         CREDENTIAL_PLURAL, name)  # fmt: skip


def can_i(kube: Kube, verb: str, resource: str, namespace: str, group: str = GROUP) -> bool:
    """What ``kubectl auth can-i VERB RESOURCE -n NAMESPACE`` says, for this identity (a
    SelfSubjectAccessReview); False when the review itself cannot be made."""
    review = {"spec": {"resourceAttributes": {
        "group": group, "resource": resource, "verb": verb, "namespace": namespace}}}  # fmt: skip
    try:
        answer = call(f"asking whether {verb} {resource} is allowed",
                      client.AuthorizationV1Api(kube.api).create_self_subject_access_review,
                      review)  # fmt: skip
    except ApiError:
        return False
    return bool(answer.status and answer.status.allowed)


def whoami(kube: Kube) -> str:
    """The user name the API server sees (``kubectl auth whoami``): a SelfSubjectReview."""
    review = client.AuthenticationV1Api(kube.api).create_self_subject_review
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    answer = call("asking who I am", review, body)
    return str(answer.status.user_info.username)
