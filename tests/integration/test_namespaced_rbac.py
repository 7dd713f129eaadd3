"""Per-namespace Secret rights on the real API server, as the chart renders them for
plain namespace names and as the kustomize component deploy/namespaced grants them:
the operator's ServiceAccount reads Secrets in the namespaces it watches and in its
own, is refused (403) everywhere else, and the real operator does all its Secret work
(check, label, deliver, revoke, rotate) with those rights and is never refused.

The rendering rules themselves (which values give which Roles) are in
tests/unit/test_chart_rbac.py and tests/unit/test_kustomize_rbac.py.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.aws import Moto
from tests.conftest import Kube
from tests.integration.test_install import (
    CHART,
    HELM,
    documents,
    kubectl,
    refusals,
    token_kubeconfig,
)
from tests.kube import api_client
from tests.operator import Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    get_cluster,
    get_credential,
    secret,
    static_key_credential,
)
from tests.unit.test_kustomize_rbac import EXAMPLE_NAMESPACES, namespaced_overlay

pytestmark = pytest.mark.integration

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


@dataclass
class Installed:
    """The ServiceAccount and RBAC of the chart or of deploy/namespaced, installed for
    real for plain names."""

    namespace: str  # the release's: the ServiceAccount, the installation Secret
    account: str
    watched: list[str]
    other: str  # a namespace it does not watch
    rbac: list[dict[str, Any]]


def new_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"  # not t-*: the shared test operator stays out
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def helm_rbac(release: str, namespace: str, watched: list[str], version: str) -> list[Any]:
    """`helm template` with the watched plain names, delivery and rotation on: its
    ServiceAccount, ClusterRole, Roles and bindings (named after the release)."""
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` (it builds {HELM})")
    rendered = subprocess.run(
        [str(HELM), "template", release, str(CHART), "--namespace", namespace, "--kube-version",
         version, "--skip-tests", "--set", "namespaces={" + ",".join(watched) + "}",
         "--set", "delivery.enabled=true", "--set", "rotation.enabled=true"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return [doc for doc in documents(rendered) if doc["kind"] in RBAC_KINDS
            and doc["metadata"]["name"].startswith(f"{release}-cloudcred")]  # fmt: skip


def kustomize_rbac(
    kube: Kube, release: str, namespace: str, watched: list[str], folder: Path
) -> list[Any]:
    """deploy/ with the components deploy/namespaced, delivery and rotation, rendered by
    `kubectl kustomize`: its ServiceAccount, ClusterRole, Roles and bindings, moved from
    cloudcred-system, team-a and team-b to the test's namespaces and named as the chart
    names them for ``release`` (release-cloudcred, release-cloudcred-secrets, ...)."""
    overlay = namespaced_overlay(folder, delivery=True, rotation=True)
    docs = documents(kubectl(kube, "kustomize", str(overlay)).stdout)
    moved = {"cloudcred-system": namespace, **dict(zip(EXAMPLE_NAMESPACES, watched, strict=True))}
    rbac = [doc for doc in docs if doc["kind"] in RBAC_KINDS
            and doc["metadata"]["name"] != "cloudcred-break-glass"]  # fmt: skip
    for doc in rbac:
        references = [doc["metadata"], *([doc["roleRef"]] if "roleRef" in doc else []),
                      *doc.get("subjects", [])]  # fmt: skip
        for reference in references:
            reference["name"] = f"{release}-{reference['name']}"
            if "namespace" in reference:
                reference["namespace"] = moved[reference["namespace"]]
    return rbac


@pytest.fixture(params=["helm", "kustomize"])
def installed(kube: Kube, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installed]:
    """The chart's (or deploy/namespaced's) ServiceAccount and RBAC for two plain watched
    namespaces, delivery and rotation on, applied under a release name of their own (the
    other objects, CRDs and policies, are the suite's)."""
    release = f"nsr{uuid.uuid4().hex[:8]}"
    namespace, other = new_namespace(kube, "nsr-op"), new_namespace(kube, "nsr-other")
    watched = [new_namespace(kube, "nsr-a"), new_namespace(kube, "nsr-b")]
    if request.param == "helm":
        version = str(client.VersionApi(kube.api).get_code().git_version)
        rbac = helm_rbac(release, namespace, watched, version)
    else:
        (tmp_path / "overlay").mkdir()
        rbac = kustomize_rbac(kube, release, namespace, watched, tmp_path / "overlay")
    fullname = f"{release}-cloudcred"
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    try:
        yield Installed(namespace, fullname, watched, other, rbac)
    finally:
        rbacs = client.RbacAuthorizationV1Api(kube.api)
        rbacs.delete_cluster_role_binding(fullname)
        rbacs.delete_cluster_role(fullname)


def status_of(call: Any) -> int:
    """The HTTP status of an API call: 200 when it went through."""
    try:
        call()
    except client.ApiException as error:
        return int(error.status)
    return 200


def test_plain_names_let_the_operator_read_secrets_where_it_watches_and_nowhere_else(
    kube: Kube, installed: Installed, tmp_path: Path
) -> None:
    """As the operator's ServiceAccount (a real token): Secrets of a watched namespace and
    of its own can be read and listed (and watched where it watches); another
    namespace's, kube-system's and a cluster-wide list are 403, and it cannot create or
    patch a Secret there either."""
    rbac = installed.rbac
    assert [d for d in rbac if d["kind"] == "Role"], "no per-namespace Role rendered"
    kubeconfig = token_kubeconfig(kube, installed.namespace, installed.account,
                                  tmp_path / "kubeconfig")  # fmt: skip
    operator = client.CoreV1Api(api_client(kubeconfig))
    for namespace in (*installed.watched, installed.other, installed.namespace):
        secret(kube, namespace, "tenant-keys", {"secretAccessKey": "not-for-everyone"})

    for namespace in (*installed.watched, installed.namespace):
        read = operator.read_namespaced_secret("tenant-keys", namespace)
        assert base64.b64decode(read.data["secretAccessKey"]) == b"not-for-everyone"
        assert status_of(lambda ns=namespace: operator.list_namespaced_secret(
            ns, label_selector="cloudcred.io/credential-secret=true")) == 200  # fmt: skip
        # A watch where the operator watches, and in its own namespace (the installation
        # key's Secret is watched while the operator runs).
        watch = partial(operator.list_namespaced_secret, namespace, watch=True,
                        timeout_seconds=1, _preload_content=False)  # fmt: skip
        assert status_of(lambda watch=watch: watch().close()) == 200

    ours = client.V1Secret(metadata=client.V1ObjectMeta(
        name="made", labels={"app.kubernetes.io/managed-by": "cloudcred"}))  # fmt: skip
    for namespace in (installed.other, "kube-system"):
        assert status_of(lambda ns=namespace: operator.read_namespaced_secret(
            "tenant-keys", ns)) == 403  # fmt: skip
        assert status_of(lambda ns=namespace: operator.list_namespaced_secret(ns)) == 403
        assert status_of(lambda ns=namespace: operator.patch_namespaced_secret(
            "tenant-keys", ns, {"metadata": {"labels": {"x": "y"}}})) == 403  # fmt: skip
        assert status_of(lambda ns=namespace: operator.create_namespaced_secret(ns, ours)) == 403
    assert status_of(lambda: operator.list_secret_for_all_namespaces()) == 403
    assert status_of(lambda: operator.list_secret_for_all_namespaces(
        watch=True, timeout_seconds=1, _preload_content=False).close()) == 403  # fmt: skip
    # The same ServiceAccount's other rights are untouched: it still lists Clusters and
    # namespaces everywhere (the deletion guard, allowedNamespaces).
    assert status_of(lambda: operator.list_namespace()) == 200


def test_the_operator_does_its_secret_work_with_per_namespace_rights(
    kube: Kube, moto: Moto, installed: Installed, tmp_path: Path, operators: Operators
) -> None:
    """The real operator, authenticated as the ServiceAccount with per-namespace
    Secret rights, watching the two plain names: it creates its installation Secret,
    checks an AWS key (Secret read and labelled), delivers it into a new Secret,
    rotates the key (a Secret for the new key, a rotation record in its own namespace),
    revokes the delivery when its Cluster stops asking for it, releases the key's Secret
    when the Cluster goes -- and is never refused anything."""
    kubeconfig = token_kubeconfig(kube, installed.namespace, installed.account,
                                  tmp_path / "kubeconfig")  # fmt: skip
    watched = installed.watched[0]
    own = {"CLOUDCRED_OPERATOR_NAMESPACE": installed.namespace}
    operator = operators.start(*installed.watched, kubeconfig=kubeconfig, env=own)
    try:
        user = moto.create_user(f"nsr-{uuid.uuid4().hex[:8]}")
        secret(kube, watched, "aws-keys", {"secretAccessKey": user.secret_access_key})
        static_key_credential(kube, watched, "aws", user.access_key_id, "aws-keys",
                              delivery={"enabled": True},
                              rotation={"policy": "Automatic", "maxAge": "90d",
                                        "gracePeriod": "2s"})  # fmt: skip
        create_cluster(kube, watched, "prod", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "aws"},
                       credentialsSecret={"name": "prod-aws"})  # fmt: skip

        def deployed() -> str | None:
            credential = get_credential(kube, watched, "aws") or {}
            revision = (credential.get("status") or {}).get("revision")
            verified = (condition(credential, "Verified") or {}).get("status") == "True"
            cluster = get_cluster(kube, watched, "prod").get("status") or {}
            return str(revision) if verified and revision and \
                cluster.get("deployedRevision") == revision else None  # fmt: skip

        try:
            wait_for(deployed, timeout=90, what="verified and deployed")
        except AssertionError as error:  # say which request was refused, if one was
            raise AssertionError(f"{error}\nrefused:\n{refusals(operator.log())}") from None
        assert kube.core.read_namespaced_secret("cloudcred-installation", installed.namespace)
        labels = kube.core.read_namespaced_secret("aws-keys", watched).metadata.labels or {}
        assert labels.get("cloudcred.io/credential-secret") == "true"
        assert kube.core.read_namespaced_secret("prod-aws", watched).data

        # A rotation now (the user's command, as the admin): the new key goes into a
        # Secret the operator creates, the record into its own namespace.
        rotate = subprocess.run(
            [sys.executable, "-m", "cloudcred", "rotate", "aws", "-n", watched,
             "--kubeconfig", str(kube.kubeconfig), "--now", "--timeout", "2m"],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert rotate.returncode == 0, (rotate.stderr, refusals(operator.log()))
        state = (get_credential(kube, watched, "aws") or {})["status"]["rotation"]
        assert state["keyId"] != user.access_key_id
        assert kube.core.read_namespaced_secret(state["secretName"], watched).data
        records = kube.core.list_namespaced_secret(installed.namespace).items
        assert any(s.metadata.name.startswith("cloudcred-rotation-") for s in records)

        # Revocation: the Cluster stops naming the Secret, which the operator deletes
        # (found by its owner's UID; unlabelled first, the in-use label's verb).
        unnamed = {"spec": {"credentialsSecret": None}}
        client.CustomObjectsApi(kube.api).patch_namespaced_custom_object(
            "cloudcred.io", "v1alpha1", watched, "clusters", "prod", unnamed
        )

        def revoked() -> bool:
            names = {s.metadata.name for s in kube.core.list_namespaced_secret(watched).items}
            return "prod-aws" not in names

        wait_for(revoked, timeout=30, what="the delivered Secret revoked")

        # Release: with the Cluster gone, the key's Secret loses cloudcred.io/in-use,
        # which the policy allows only with the verb unlabel-in-use in that namespace.
        def in_use() -> set[str]:
            listed = kube.core.list_namespaced_secret(
                watched, label_selector="cloudcred.io/in-use=true"
            )
            return {s.metadata.name for s in listed.items}

        assert in_use(), "no Secret labelled in use while a cluster uses the credential"
        client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(
            "cloudcred.io", "v1alpha1", watched, "clusters", "prod"
        )
        wait_for(lambda: not in_use(), timeout=30, what="the in-use label released")
    finally:
        operator.stop()
    log = operator.log()
    assert "cloudcred settings" in log
    assert not refusals(log), refusals(log)


def test_two_replicas_keep_their_peering_with_the_charts_rights_and_touch_no_other(
    kube: Kube, tmp_path: Path, operators: Operators
) -> None:
    """With two replicas the chart grants get and patch on its own peering object only.
    The real operator, authenticated as the chart's ServiceAccount, joins its KopfPeering
    and keeps it alive without a refusal; another peering object is out of its reach."""
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` (it builds {HELM})")
    release = f"nsp{uuid.uuid4().hex[:8]}"
    namespace, watched = new_namespace(kube, "nsp-op"), new_namespace(kube, "nsp-a")
    version = str(client.VersionApi(kube.api).get_code().git_version)
    rendered = subprocess.run(
        [str(HELM), "template", release, str(CHART), "--namespace", namespace, "--kube-version",
         version, "--skip-tests", "--set", "namespaces={" + watched + "}",
         "--set", "replicaCount=2"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    docs = [doc for doc in documents(rendered)
            if (doc["kind"] in RBAC_KINDS and doc["metadata"]["name"].startswith(release))
            or doc["kind"] == "KopfPeering"]  # fmt: skip
    kubectl(kube, "apply", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    kubectl(kube, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")  # fmt: skip
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    fullname = f"{release}-cloudcred"
    other = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "other"}}
    kube.custom.create_namespaced_custom_object("kopf.dev", "v1", watched, "kopfpeerings", other)
    kubeconfig = token_kubeconfig(kube, namespace, fullname, tmp_path / "kubeconfig")
    try:
        operator = operators.start(
            watched, kubeconfig=kubeconfig, standalone=False,
            env={"CLOUDCRED_OPERATOR_NAMESPACE": namespace},
            args=["--peering", fullname, "--priority", "100"],
        )  # fmt: skip

        def keep_alives() -> dict[str, Any]:
            body = kube.custom.get_namespaced_custom_object(
                "kopf.dev", "v1", watched, "kopfpeerings", fullname)  # fmt: skip
            return dict(body.get("status") or {})

        wait_for(lambda: keep_alives(), timeout=30, what="the replica's keep-alive")
        assert not refusals(operator.log()), refusals(operator.log())
        account = client.CustomObjectsApi(api_client(kubeconfig))
        touch = {"status": {"someone": {"priority": 1}}}
        assert status_of(partial(account.patch_namespaced_custom_object, "kopf.dev", "v1",
                                 watched, "kopfpeerings", "other", touch)) == 403  # fmt: skip
    finally:
        rbacs = client.RbacAuthorizationV1Api(kube.api)
        rbacs.delete_cluster_role_binding(fullname)
        rbacs.delete_cluster_role(fullname)
