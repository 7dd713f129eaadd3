"""Break glass needs a real permission: the admission policies of
deploy/admission/force-delete-permission.yaml, secret-in-use-label.yaml and
installation-key.yaml, checked
against the real API server (RBAC authorization) with impersonated users, the running
operator naming who force-deleted, and putting back a removed in-use label at once.
The operator itself releases labels with nothing but its shipped ClusterRole.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from cloudcred.constants import (
    CREDENTIAL_PLURAL,
    FORCE_DELETE_ANNOTATION,
    FORCE_DELETE_BY_ANNOTATION,
    GROUP,
    IN_USE_LABEL,
    MANAGED_BY_LABEL,
    REFERENCED_LABEL,
    VERSION,
)
from cloudcred.installation import INSTALLATION_SECRET, PRINCIPAL_ANNOTATION, secret_data
from tests.aws import Moto
from tests.conftest import Kube
from tests.integration.test_install import (  # fixtures: helm, deploy/'s RBAC for real
    documents,
    dry_run,
    helm,  # noqa: F401
    helm_template,
    kustomize,
    refusals,
    server_version,  # noqa: F401
    shipped_identity,  # noqa: F401
    system_namespace,  # noqa: F401
    token_kubeconfig,
)
from tests.kube import ROOT, api_client, load_yaml_documents
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import (
    create_cluster,
    events_for,
    get_credential,
    patch_credential,
    refusal,
    secret,
    static_key_credential,
)

pytestmark = pytest.mark.integration

BREAK_GLASS = "cloudcred-break-glass"
EDITOR_RULES = [
    {"apiGroups": [GROUP], "resources": [CREDENTIAL_PLURAL, "clusters"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete",
               "deletecollection"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def break_glass_role(kube: Kube) -> str:
    """The shipped ClusterRole cloudcred-break-glass (deploy/admission/break-glass.yaml)."""
    (role,) = load_yaml_documents(ROOT / "deploy" / "admission" / "break-glass.yaml")
    try:
        client.RbacAuthorizationV1Api(kube.api).create_cluster_role(role)
    except ApiException as error:
        if error.status != 409:
            raise
    return str(role["metadata"]["name"])


def grant(kube: Kube, namespace: str, user: str, cluster_role: str) -> None:
    """A RoleBinding of ``cluster_role`` to ``user`` in ``namespace``."""
    binding = {
        "metadata": {"name": f"{user}-{cluster_role}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": cluster_role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }  # fmt: skip
    client.RbacAuthorizationV1Api(kube.api).create_namespaced_role_binding(namespace, binding)


def editors(kube: Kube, namespace: str, *users: str) -> None:
    """Users who may create, patch and delete credentials, clusters and Secrets in
    ``namespace`` -- everything but the two break-glass verbs."""
    rbac = client.RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "editor"}, "rules": EDITOR_RULES})
    for user in users:
        binding = {
            "metadata": {"name": f"{user}-editor"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "editor"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }  # fmt: skip
        rbac.create_namespaced_role_binding(namespace, binding)


def annotate(
    kube: Kube, namespace: str, name: str, annotations: dict[str, Any], dry_run: bool = False
) -> None:
    """A merge patch of the credential's annotations (None removes one). A dry run goes
    through admission too: tests wait with dry runs until a policy or a grant takes
    effect, so that no real change slips through before."""
    kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, name,
        {"metadata": {"annotations": annotations}}, **({"dry_run": "All"} if dry_run else {}),
    )  # fmt: skip


def refused_with(action: Callable[[], object], text: str) -> str | None:
    """The refusal's message if ``action()`` is refused with ``text`` in it."""
    message = refusal(action)
    return message if message and text in message else None


def in_use_label(kube: Kube, namespace: str, name: str) -> str | None:
    labels = kube.core.read_namespaced_secret(name, namespace).metadata.labels or {}
    return labels.get(IN_USE_LABEL)


def used_credential(kube: Kube, moto: Moto, namespace: str, name: str, secret_name: str) -> None:
    """An AWS static-key credential with a bound cluster: its Secret is labelled in-use."""
    key = moto.create_user(f"{name}-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, secret_name, {"secretAccessKey": key.secret_access_key})
    static_key_credential(kube, namespace, name, key.access_key_id, secret_name)
    create_cluster(kube, namespace, f"{name}-cluster", provider="AWS", region="eu-west-3",
                   credentialRef={"name": name})  # fmt: skip
    wait_for(lambda: ((get_credential(kube, namespace, name) or {}).get("status") or {})
             .get("clusterCount") == 1, what="bound")  # fmt: skip
    wait_for(lambda: in_use_label(kube, namespace, secret_name) == "true", what="Secret in use")
    # kopf's finalizer too: a delete before it is in place is not the operator's to see.
    wait_for(lambda: (get_credential(kube, namespace, name) or {}).get("metadata", {})
             .get("finalizers"), what="the finalizer")  # fmt: skip


# --- cloudcred.io/force-delete ----------------------------------------------------------


def test_force_delete_needs_the_permission_and_names_who(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess,
    impersonate: Callable[[str], Kube], break_glass_role: str,
) -> None:  # fmt: skip
    used_credential(kube, moto, namespace, "leaked", "keys")
    editors(kube, namespace, "alice", "bob")
    alice, bob = impersonate("alice"), impersonate("bob")
    reason = "key published in a public repository"

    # patch on cloudcredentials is not enough, whatever force-delete-by says.
    denied = wait_for(lambda: refused_with(lambda: annotate(alice, namespace, "leaked", {
        FORCE_DELETE_ANNOTATION: reason, FORCE_DELETE_BY_ANNOTATION: "alice"}, dry_run=True),
        "force-delete"), what="the policy to refuse")  # fmt: skip
    assert denied == refusal(lambda: annotate(alice, namespace, "leaked", {
        FORCE_DELETE_ANNOTATION: reason, FORCE_DELETE_BY_ANNOTATION: "alice"}))  # fmt: skip
    print(f"alice without the permission: {denied}")
    assert 'user "alice" may not set the cloudcred.io/force-delete annotation' in denied
    assert 'verb "force-delete" on cloudcredentials.cloudcred.io' in denied
    assert BREAK_GLASS in denied
    assert refusal(lambda: annotate(alice, namespace, "leaked", {FORCE_DELETE_ANNOTATION: reason}))

    grant(kube, namespace, "alice", break_glass_role)
    # With the permission, the annotation must name alice herself: missing, then forged.
    missing = wait_for(lambda: refused_with(lambda: annotate(
        alice, namespace, "leaked", {FORCE_DELETE_ANNOTATION: reason}), "force-delete-by"),
        what="the permission to take effect")  # fmt: skip
    print(f"alice without force-delete-by: {missing}")
    assert "force-delete-by" in missing
    assert 'set the annotation cloudcred.io/force-delete-by: "alice"' in missing
    assert "it was missing" in missing
    forged = refusal(lambda: annotate(alice, namespace, "leaked", {
        FORCE_DELETE_ANNOTATION: reason, FORCE_DELETE_BY_ANNOTATION: "carol"}))  # fmt: skip
    assert forged
    assert 'set the annotation cloudcred.io/force-delete-by: "alice"' in forged
    assert 'it was "carol"' in forged
    assert refusal(lambda: annotate(alice, namespace, "leaked", {
        FORCE_DELETE_ANNOTATION: reason, FORCE_DELETE_BY_ANNOTATION: "alice"})) is None  # fmt: skip

    # bob cannot take it over (claim it, or change the reason), but may withdraw it.
    takeovers: list[dict[str, Any]] = [
        {FORCE_DELETE_BY_ANNOTATION: "bob"},
        {FORCE_DELETE_ANNOTATION: "other", FORCE_DELETE_BY_ANNOTATION: "alice"},
    ]
    for change in takeovers:
        message = refusal(lambda c=change: annotate(bob, namespace, "leaked", c))
        assert 'user "bob" may not set' in (message or "")
    assert refusal(lambda: annotate(bob, namespace, "leaked", {
        FORCE_DELETE_ANNOTATION: None, FORCE_DELETE_BY_ANNOTATION: None})) is None  # fmt: skip
    annotations = (get_credential(kube, namespace, "leaked") or {})["metadata"].get("annotations")
    assert FORCE_DELETE_ANNOTATION not in (annotations or {})

    # alice again, then the delete: the operator's Warning Events name her.
    annotate(alice, namespace, "leaked",
             {FORCE_DELETE_ANNOTATION: reason, FORCE_DELETE_BY_ANNOTATION: "alice"})  # fmt: skip
    wait_for(lambda: refusal(lambda: alice.custom.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, "leaked")) is None,
        timeout=20, what="the delete to be admitted")  # fmt: skip
    wait_for(lambda: get_credential(kube, namespace, "leaked") is None, timeout=30,
             what="the credential to be gone")  # fmt: skip

    def messages(name: str, event_reason: str) -> list[str]:
        return [str(event.message) for event in events_for(kube, namespace, name)
                if event.reason == event_reason and event.type == "Warning"]  # fmt: skip

    forced = wait_for(lambda: messages("leaked", "ForceDeleted"), what="ForceDeleted")
    assert f"force-deleted by alice: {reason}" in forced[0]
    lost = wait_for(lambda: messages("leaked-cluster", "CredentialForceDeleted"),
                    what="CredentialForceDeleted")  # fmt: skip
    assert f"CloudCredential {namespace}/leaked" in lost[0]
    assert f"force-deleted by alice: {reason}" in lost[0]


def test_creating_a_credential_with_force_delete_is_checked_too(
    kube: Kube, namespace: str, impersonate: Callable[[str], Kube],
) -> None:  # fmt: skip
    """CREATE is matched as well: a manifest cannot arrive pre-armed."""
    editors(kube, namespace, "dave")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CloudCredential",
        "metadata": {"name": "armed", "annotations": {
            FORCE_DELETE_ANNOTATION: "why not", FORCE_DELETE_BY_ANNOTATION: "dave"}},
        "spec": {"provider": "AWS", "aws": {"roleArn": "arn:aws:iam::123456789012:role/x"}},
    }  # fmt: skip
    dave = impersonate("dave")
    denied = wait_for(lambda: refused_with(lambda: dave.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, body, dry_run="All"), "force-delete"),
        what="the policy to refuse")  # fmt: skip
    assert denied == refusal(lambda: dave.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, body))  # fmt: skip
    assert 'user "dave" may not set the cloudcred.io/force-delete annotation' in denied
    plain = {**body, "metadata": {"name": "armed"}}
    dave.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CREDENTIAL_PLURAL,
                                                plain)  # fmt: skip


# --- cloudcred.io/in-use on Secrets -----------------------------------------------------


def test_removing_the_in_use_label_needs_the_permission(
    kube: Kube, namespace: str, moto: Moto, operator: OperatorProcess,
    impersonate: Callable[[str], Kube], break_glass_role: str,
) -> None:  # fmt: skip
    used_credential(kube, moto, namespace, "aws", "keys")
    editors(kube, namespace, "carol")
    carol = impersonate("carol")

    def unlabel(labels: dict[str, Any], dry_run: bool = False) -> None:
        carol.core.patch_namespaced_secret("keys", namespace, {"metadata": {"labels": labels}},
                                           **({"dry_run": "All"} if dry_run else {}))  # fmt: skip

    def replace_without_labels() -> None:  # what `kubectl replace -f` of the old manifest does
        current = carol.core.read_namespaced_secret("keys", namespace)
        current.metadata.labels = None
        carol.core.replace_namespaced_secret("keys", namespace, current)

    denied = wait_for(lambda: refused_with(lambda: unlabel({IN_USE_LABEL: None}, dry_run=True),
                                           "in-use"), what="the policy to refuse")  # fmt: skip
    assert denied == refusal(lambda: unlabel({IN_USE_LABEL: None}))
    print(f"carol without the permission: {denied}")
    assert f"secret {namespace}/keys is labelled cloudcred.io/in-use=true" in denied
    assert "keep it in the manifest" in denied
    assert 'verb "unlabel-in-use" on secrets' in denied
    assert refusal(lambda: unlabel({IN_USE_LABEL: "false"}))
    assert "keep it in the manifest" in (refusal(replace_without_labels) or "")
    # Everything else stays allowed, and so does keeping the label in a full update.
    carol.core.patch_namespaced_secret("keys", namespace,
                                       {"metadata": {"annotations": {"team": "red"}}})  # fmt: skip
    current = carol.core.read_namespaced_secret("keys", namespace)
    current.string_data = {"note": "kept"}
    carol.core.replace_namespaced_secret("keys", namespace, current)
    assert in_use_label(kube, namespace, "keys") == "true"

    # With the permission the label comes off -- and the running operator puts it back
    # at once (the watch's change, not its re-list every 300 s), since the credential is
    # still in use: break glass for the label is meant for Secrets the operator forgot.
    grant(kube, namespace, "carol", break_glass_role)
    wait_for(lambda: refusal(lambda: unlabel({IN_USE_LABEL: None}, dry_run=True)) is None,
             what="the permission to take effect")  # fmt: skip
    unlabel({IN_USE_LABEL: None})
    removed = time.monotonic()
    wait_for(lambda: in_use_label(kube, namespace, "keys") == "true", timeout=10,
             interval=0.05, what="the in-use label put back")  # fmt: skip
    print(f"in-use label put back {time.monotonic() - removed:.2f}s after its removal")
    # Both labels gone (the Secret leaves the watch's label selection): back as fast.
    replace_without_labels()
    removed = time.monotonic()
    wait_for(lambda: in_use_label(kube, namespace, "keys") == "true", timeout=10,
             interval=0.05, what="both labels put back")  # fmt: skip
    print(f"both labels put back {time.monotonic() - removed:.2f}s after a replace without them")
    labels = kube.core.read_namespaced_secret("keys", namespace).metadata.labels
    assert labels[REFERENCED_LABEL] == "true"


# --- the operator releases labels with its own ClusterRole --------------------------------


def test_operator_releases_labels_with_its_own_cluster_role(
    kube: Kube, moto: Moto, shipped_identity: tuple[str, str], tmp_path: Path,  # noqa: F811
    operators: Operators,
) -> None:  # fmt: skip
    """The policy checks the operator too: its ClusterRole's `unlabel-in-use` lets it
    release a Secret that its credential stopped referencing, and one whose credential
    stopped being in use. Nothing it asks is refused."""
    account_namespace, account = shipped_identity
    kubeconfig = token_kubeconfig(kube, account_namespace, account, tmp_path / "kubeconfig")
    watched = f"glass-{uuid.uuid4().hex[:10]}"  # not t-*: the shared operator stays out
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=watched)))
    operator = operators.start(watched, kubeconfig=kubeconfig,
                               env={"CLOUDCRED_OPERATOR_NAMESPACE": account_namespace})  # fmt: skip
    try:
        used_credential(kube, moto, watched, "aws", "old-keys")
        key = moto.create_user(f"new-{uuid.uuid4().hex[:8]}")
        secret(kube, watched, "new-keys", {"secretAccessKey": key.secret_access_key})
        patch_credential(kube, watched, "aws", {"spec": {"aws": {
            "accessKeyId": key.access_key_id,
            "secretAccessKeyRef": {"name": "new-keys", "key": "secretAccessKey"}}}})  # fmt: skip

        def labels(name: str) -> dict[str, str]:
            return kube.core.read_namespaced_secret(name, watched).metadata.labels or {}

        try:
            wait_for(lambda: in_use_label(kube, watched, "new-keys") == "true", timeout=30,
                     what="the new Secret in use")  # fmt: skip
            wait_for(lambda: not labels("old-keys"), timeout=30, what="the old Secret released")
            kube.custom.delete_namespaced_custom_object(GROUP, VERSION, watched, "clusters",
                                                        "aws-cluster")  # fmt: skip
            wait_for(lambda: IN_USE_LABEL not in labels("new-keys"), timeout=30,
                     what="the new Secret released once unused")  # fmt: skip
        except AssertionError as error:
            raise AssertionError(f"{error}\nrefused:\n{refusals(operator.log())}") from None
        assert labels("new-keys")[REFERENCED_LABEL] == "true"  # still referenced
        kube.core.delete_namespaced_secret("old-keys", watched)  # no longer protected
    finally:
        operator.stop()
    assert not refusals(operator.log()), refusals(operator.log())


# --- the operator pod's NetworkPolicy ------------------------------------------------------


@pytest.mark.parametrize("settings", [[], ["networkPolicy.blockMetadataService=false"], [
    "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=observability",
    "networkPolicy.extraIngress[0].ports[0].port=health",
    "networkPolicy.extraIngress[0].from[0].ipBlock.cidr=10.0.0.0/8",
]], ids=["defaults", "metadata-service-allowed", "custom-peers"])  # fmt: skip
def test_network_policy_passes_server_side_dry_run(
    kube: Kube, helm: Path, server_version: str, system_namespace: str,  # noqa: F811
    settings: list[str],
) -> None:  # fmt: skip
    """The real API server validates the chart's NetworkPolicy (values on and off) and
    the kustomize base's: no CNI runs here, so what they do is in the unit tests."""
    rendered = helm_template(helm, server_version, system_namespace, *settings)
    policies = [doc for doc in documents(rendered) if doc["kind"] == "NetworkPolicy"]
    assert len(policies) == 1
    result = dry_run(kube, yaml.safe_dump_all(policies))
    assert "networkpolicy.networking.k8s.io/cloudcred created (server dry run)" in result.stdout
    blocked = "169.254.169.254/32" in rendered
    assert blocked == ("networkPolicy.blockMetadataService=false" not in settings)
    shipped = [doc for doc in documents(kustomize(kube)) if doc["kind"] == "NetworkPolicy"]
    assert len(shipped) == 1
    assert "created (server dry run)" in dry_run(kube, yaml.safe_dump_all(shipped)).stdout


# --- a minimum grace period for automatic rotation ---------------------------------------


def test_a_grace_period_under_an_hour_needs_its_own_verb(
    kube: Kube, namespace: str, impersonate: Callable[[str], Kube]
) -> None:
    """An editor may not set an automatic rotation's gracePeriod under an hour (days,
    hours, minutes and seconds added up by the policy); an hour or more goes through.
    cluster-admin, or a user granted the verb short-grace-period, may; an existing short
    one does not block other updates."""
    editors(kube, namespace, "erin")
    erin = impersonate("erin")

    def create(who: Kube, name: str, grace: str, dry_run: bool = False) -> None:
        rotation = {"policy": "Automatic", "maxAge": "90d", "gracePeriod": grace}
        ref = {"name": "keys", "key": "secret"}
        aws = {"accessKeyId": "AKIAIOSFODNN7EXAMPLE", "secretAccessKeyRef": ref}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CloudCredential",
                "metadata": {"name": name},
                "spec": {"provider": "AWS", "rotation": rotation, "aws": aws}}  # fmt: skip
        options = {"dry_run": "All"} if dry_run else {}
        who.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CREDENTIAL_PLURAL,
                                                   body, **options)  # fmt: skip

    denied = wait_for(lambda: refused_with(lambda: create(erin, "short", "5m", dry_run=True),
                                           "gracePeriod"), what="the policy in effect")  # fmt: skip
    assert "spec.rotation.gracePeriod: 5m is shorter than 1h" in denied
    assert "short-grace-period" in denied
    for grace in ("59m59s", "0s", "3599s", "0d59m"):
        assert refusal(lambda grace=grace: create(erin, "short", grace, dry_run=True)), grace
    for grace in ("1h", "60m", "3600s", "1d", "0d1h", "24h"):
        assert refusal(lambda grace=grace: create(erin, "long", grace, dry_run=True)) is None, grace

    create(kube, "admins", "3s")  # cluster-admin holds every verb
    erin_patch = {"metadata": {"annotations": {"cloudcred.io/rotate-now": "now"}}}
    erin.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, CREDENTIAL_PLURAL,
                                               "admins", erin_patch)  # fmt: skip
    shorter = {"spec": {"rotation": {"gracePeriod": "2s"}}}
    assert "shorter than 1h" in (refusal(lambda: erin.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CREDENTIAL_PLURAL, "admins", shorter)) or "")  # fmt: skip

    rbac = client.RbacAuthorizationV1Api(kube.api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "short-grace"}, "rules": [
        {"apiGroups": [GROUP], "resources": [CREDENTIAL_PLURAL],
         "verbs": ["short-grace-period"]}]})  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "erin-short-grace"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "short-grace"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "erin"}],
    })  # fmt: skip
    wait_for(lambda: refusal(lambda: create(erin, "short", "5m", dry_run=True)) is None,
             what="the grant in effect")  # fmt: skip


# --- the installation key ---------------------------------------------------------------


def installation_secret(who: client.CoreV1Api, namespace: str) -> None:
    """An installation Secret as the operator creates it (labelled as its own)."""
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=INSTALLATION_SECRET,
                                     labels={MANAGED_BY_LABEL: "cloudcred"}),
        data=secret_data(bytes(range(32))),
    )  # fmt: skip
    who.create_namespaced_secret(namespace, body)


NEW_KEY = {"data": secret_data(bytes(range(40, 72)))}
UNLABELLED = {"metadata": {"labels": {MANAGED_BY_LABEL: None}}}
PRINCIPAL = {"metadata": {"annotations": {PRINCIPAL_ANNOTATION: "arn:aws:iam::1:role/op"}}}


def test_the_installation_key_is_deleted_or_changed_only_with_break_glass(
    kube: Kube, namespace: str, impersonate: Callable[[str], Kube], break_glass_role: str
) -> None:
    """An admin of the operator's namespace (every verb on Secrets) may not delete the
    installation Secret, change its key or drop its label; the refusal says how to back
    it up and what to ask for. Annotations go through, and so does everything on other
    Secrets. Bound cloudcred-break-glass there, the admin may; cluster-admin may."""
    installation_secret(kube.core, namespace)
    editors(kube, namespace, "olga")
    olga = impersonate("olga").core

    def delete(who: client.CoreV1Api, name: str = INSTALLATION_SECRET) -> Callable[[], object]:
        return lambda: who.delete_namespaced_secret(name, namespace, dry_run="All")

    def patch(who: client.CoreV1Api, body: dict[str, Any]) -> Callable[[], object]:
        return lambda: who.patch_namespaced_secret(INSTALLATION_SECRET, namespace, body,
                                                   dry_run="All")  # fmt: skip

    denied = wait_for(lambda: refused_with(delete(olga), "installation key"),
                      what="the policy in effect")  # fmt: skip
    assert f"Secret {namespace}/cloudcred-installation holds the installation key" in denied
    assert "deleting it is refused" in denied
    assert f"kubectl get secret cloudcred-installation -n {namespace} -o yaml" in denied
    assert 'the verb "replace-installation-key" on secrets in ' + namespace in denied
    assert "cloudcred-break-glass" in denied
    changed = refusal(patch(olga, NEW_KEY)) or ""
    assert "changing its key or its label is refused" in changed
    assert refusal(patch(olga, UNLABELLED))
    assert refusal(patch(olga, PRINCIPAL)) is None
    secret(kube, namespace, "other", {"key": "value"})
    assert refusal(delete(olga, "other")) is None
    assert refusal(delete(kube.core)) is None  # cluster-admin holds every verb
    # A collection delete (the namespace controller's, at an uninstall) is judged Secret
    # by Secret: cloudcred's other Secrets go, the installation key only with the verb.
    kube.core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "delivered",
                "labels": {"app.kubernetes.io/managed-by": "cloudcred"},
            }
        },
    )
    ours = "app.kubernetes.io/managed-by=cloudcred"

    def delete_all(who: client.CoreV1Api, fields: str | None = None) -> Callable[[], object]:
        return lambda: who.delete_collection_namespaced_secret(
            namespace, label_selector=ours, field_selector=fields, dry_run="All"
        )

    assert refusal(delete_all(kube.core, "metadata.name=delivered")) is None
    assert refusal(delete_all(olga, "metadata.name=delivered")) is None
    assert refused_with(delete_all(olga), "holds the installation key")
    assert refusal(delete_all(kube.core)) is None

    grant(kube, namespace, "olga", break_glass_role)
    wait_for(lambda: refusal(delete(olga)) is None, what="the grant in effect")
    olga.patch_namespaced_secret(INSTALLATION_SECRET, namespace, NEW_KEY)
    olga.delete_namespaced_secret(INSTALLATION_SECRET, namespace)


def test_the_operator_may_write_back_and_annotate_the_installation_key_but_not_replace_it(
    kube: Kube,
    shipped_identity: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """As the operator's ServiceAccount (the shipped ClusterRoles, delivery's create and
    delete on Secrets included), in its own namespace: it creates the Secret (its first
    start, or writing it back from memory) and records its principal on it; deleting it
    or changing its key is refused like anyone's, since its work needs neither."""
    account_namespace, account = shipped_identity
    kubeconfig = token_kubeconfig(kube, account_namespace, account, tmp_path / "kubeconfig")
    operator = client.CoreV1Api(api_client(kubeconfig))
    installation_secret(operator, account_namespace)
    denied = wait_for(lambda: refused_with(lambda: operator.delete_namespaced_secret(
        INSTALLATION_SECRET, account_namespace, dry_run="All"), "installation key"),
        what="the policy in effect")  # fmt: skip
    assert "replace-installation-key" in denied
    assert refusal(lambda: operator.patch_namespaced_secret(
        INSTALLATION_SECRET, account_namespace, NEW_KEY)) is not None  # fmt: skip
    assert refusal(lambda: operator.patch_namespaced_secret(
        INSTALLATION_SECRET, account_namespace, PRINCIPAL)) is None  # fmt: skip
    read = kube.core.read_namespaced_secret(INSTALLATION_SECRET, account_namespace)
    assert read.data == secret_data(bytes(range(32)))
    assert read.metadata.annotations[PRINCIPAL_ANNOTATION] == "arn:aws:iam::1:role/op"
