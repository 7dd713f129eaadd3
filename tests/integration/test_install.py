"""Installing the operator: the kustomize base (deploy/) and the Helm chart
(charts/cloudcred) pass the real API server's validation (server-side dry-run), ask for
the same permissions, and those permissions are enough for the operator and no more
than it uses -- shown by running the real operator with a token of the shipped
ClusterRole.

helm comes from `make helm` (.local/bin/helm; `make test` builds it first), kubectl is
the one built with the local control plane.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.aws import Moto
from tests.conftest import Kube
from tests.envtest.controlplane import cache_dir, ensure_binaries
from tests.kube import ROOT, api_client
from tests.operator import Operators, wait_for
from tests.resources import (
    condition,
    create_cluster,
    create_credential,
    get_cluster,
    get_credential,
    secret,
)

pytestmark = pytest.mark.integration

HELM = ROOT / ".local" / "bin" / "helm"
CHART = ROOT / "charts" / "cloudcred"
DEPLOY = ROOT / "deploy"
SYSTEM_NAMESPACE = "cloudcred-system"
# What the API server says when a request is refused for lack of permission, and what
# kopf logs when it cannot list or watch something.
# (A bare "403" would also match a log timestamp's milliseconds, ",403"; every refusal
# says "Forbidden" or "HTTP 403".)
FORBIDDEN = re.compile(r"Forbidden|HTTP 403|\(403\)|status=403|[Nn]ot enough permissions")


def kubectl_path() -> str:
    """The kubectl built with the local control plane; against an existing cluster
    (CLOUDCRED_TEST_KUBECONFIG, e.g. kind in CI) a kubectl on PATH will do."""
    cached = cache_dir() / "kubectl"
    if cached.exists():
        return str(cached)
    if os.environ.get("CLOUDCRED_TEST_KUBECONFIG") and shutil.which("kubectl"):
        return str(shutil.which("kubectl"))
    return str(ensure_binaries()["kubectl"])


def run(*command: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command], cwd=ROOT, input=stdin, capture_output=True,
        text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def kubectl(kube: Kube, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(kubectl_path(), "--kubeconfig", kube.kubeconfig, *args, stdin=stdin)


@pytest.fixture(scope="module")
def helm() -> Path:
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` (it builds {HELM.relative_to(ROOT)})")
    return HELM


@pytest.fixture(scope="module")
def server_version(kube: Kube) -> str:
    """The API server's gitVersion (v1.36.3 on the local control plane): Helm checks the
    chart's kubeVersion against it."""
    return str(client.VersionApi(kube.api).get_code().git_version)


@pytest.fixture(scope="module")
def system_namespace(kube: Kube) -> str:
    """deploy/ puts the operator in cloudcred-system: server-side dry-run of namespaced
    objects needs their namespace to exist, so it is created for real."""
    try:
        kube.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=SYSTEM_NAMESPACE))
        )
    except ApiException as error:
        if error.status != 409:
            raise
    return SYSTEM_NAMESPACE


def restricted_namespace(kube: Kube) -> str:
    """A fresh namespace that warns about anything the "restricted" Pod Security
    Standard would refuse (the API server checks Deployments' pod templates)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/warn": "restricted"}  # fmt: skip
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    return name


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kustomize(kube: Kube, folder: Path = DEPLOY) -> str:
    return kubectl(kube, "kustomize", str(folder)).stdout


def helm_template(helm: Path, version: str, namespace: str, *settings: str) -> str:
    """What `helm install` creates (the `helm test` pod left out: it runs on `helm test`)."""
    args: list[str | Path] = [helm, "template", "cloudcred", CHART, "--namespace", namespace,
                              "--kube-version", version, "--skip-tests"]  # fmt: skip
    for setting in settings:  # "key=value" for --set, or a whole "--set-string=..." flag
        args += [setting] if setting.startswith("--") else ["--set", setting]
    return run(*args).stdout


def dry_run(kube: Kube, manifests: str) -> subprocess.CompletedProcess[str]:
    return kubectl(kube, "apply", "--dry-run=server", "-f", "-", stdin=manifests)


def refusals(log: str) -> str:
    return "\n".join([line for line in log.splitlines() if FORBIDDEN.search(line)][:20])


def granted(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) the ClusterRoles in ``docs`` grant."""
    return {
        (group, resource, verb)
        for role in docs if role["kind"] == "ClusterRole"
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }  # fmt: skip


# --- Helm chart ------------------------------------------------------------------------


def test_helm_lint(helm: Path) -> None:
    result = run(helm, "lint", "--strict", CHART)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


IDENTITY = [
    "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn="
    "arn:aws:iam::123456789012:role/cloudcred-operator",
    "serviceAccount.annotations.iam\\.gke\\.io/gcp-service-account="
    "cloudcred@acme-prod.iam.gserviceaccount.com",
    "serviceAccount.annotations.azure\\.workload\\.identity/client-id="
    "4b8e2f1a-9c3d-4e5f-8a7b-6c5d4e3f2a1b",
    "--set-string=podLabels.azure\\.workload\\.identity/use=true",
    "metrics.serviceMonitor.enabled=false",
    "namespaces={acme,team-*}",
    "extraEnv[0].name=CLOUDCRED_AWS_REGION",
    "extraEnv[0].value=eu-west-3",
    "image.pullSecrets[0].name=regcred",
    "nodeSelector.kubernetes\\.io/os=linux",
    "podAnnotations.example\\.com/team=platform",
]


@pytest.mark.parametrize("settings", [[], IDENTITY], ids=["defaults", "cloud-identity"])
def test_chart_passes_server_side_dry_run(
    kube: Kube, helm: Path, server_version: str, settings: list[str]
) -> None:
    namespace = restricted_namespace(kube)
    manifests = helm_template(helm, server_version, namespace, *settings)
    docs = documents(manifests)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted([
        "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
        "CustomResourceDefinition", "Deployment", "Service", "ServiceAccount",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding",
        # break glass: its two policies and the ClusterRole cloudcred-break-glass
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding", "ClusterRole",
        "NetworkPolicy",
        # boundaries: the CredentialBoundary CRD, its policy and binding
        "CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        # the installation Secret: create in the operator's own namespace only
        "Role", "RoleBinding",
        # the PermissionSet CRD; the rotation grace period's policy and binding
        "CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        # no in-use label on delivered Secrets; the operator's own Secret writes
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        # the installation key kept
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    ])  # fmt: skip
    result = dry_run(kube, manifests)
    assert "server dry run" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr
    for crd in (doc for doc in docs if doc["kind"] == "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    if settings:
        account = one(docs, "ServiceAccount")["metadata"]["annotations"]
        assert account["eks.amazonaws.com/role-arn"].endswith(":role/cloudcred-operator")
        assert "iam.gke.io/gcp-service-account" in account
        assert "azure.workload.identity/client-id" in account
        pod = one(docs, "Deployment")["spec"]["template"]
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        env = {item["name"]: item["value"] for item in pod["spec"]["containers"][0]["env"]}
        assert env["CLOUDCRED_NAMESPACES"] == "acme,team-*"
        assert env["CLOUDCRED_AWS_REGION"] == "eu-west-3"


def test_chart_switches(kube: Kube, helm: Path, server_version: str) -> None:
    """CRDs, admission policy, RBAC and Service can be left out; the ServiceMonitor is
    only rendered when asked for (it needs the Prometheus Operator's CRD)."""
    bare = documents(helm_template(
        helm, server_version, "x", "crds.install=false", "admissionPolicy.enabled=false",
        "rbac.create=false", "metrics.service.enabled=false",
        "serviceAccount.create=false", "networkPolicy.enabled=false",
    ))  # fmt: skip
    assert sorted(doc["kind"] for doc in bare) == ["Deployment"]
    assert one(bare, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"
    kept = documents(helm_template(helm, server_version, "x", "crds.keep=false"))
    crds = [doc for doc in kept if doc["kind"] == "CustomResourceDefinition"]
    assert crds
    assert all("annotations" not in crd["metadata"] for crd in crds)
    monitored = documents(helm_template(
        helm, server_version, "x", "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
    ))  # fmt: skip
    monitor = one(monitored, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert one(monitored, "Service")["spec"]["ports"][0]["name"] == "metrics"


def test_pod_security_warnings_are_real(kube: Kube, helm: Path, server_version: str) -> None:
    """The dry-run check above is not vacuous: a pod template that breaks "restricted"
    does get the API server's PodSecurity warning in such a namespace."""
    namespace = restricted_namespace(kube)
    manifests = helm_template(
        helm, server_version, namespace, "securityContext.allowPrivilegeEscalation=true"
    )
    deployment = [doc for doc in documents(manifests) if doc["kind"] == "Deployment"]
    result = dry_run(kube, yaml.safe_dump_all(deployment))
    assert "would violate PodSecurity" in result.stderr


def test_chart_image_tag_defaults_to_app_version(helm: Path, server_version: str) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    docs = documents(helm_template(helm, server_version, "x"))
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/cloudcred/cloudcred:{chart['appVersion']}"
    docs = documents(helm_template(helm, server_version, "x", "image.tag=0.2.0-rc.1"))
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":0.2.0-rc.1")


# --- kustomize base ------------------------------------------------------------------


def test_kustomize_base_passes_server_side_dry_run(kube: Kube, system_namespace: str) -> None:
    manifests = kustomize(kube)
    docs = documents(manifests)
    assert {doc["kind"] for doc in docs} == {
        "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "Deployment", "Service", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding", "NetworkPolicy", "Role", "RoleBinding",
    }  # fmt: skip
    result = dry_run(kube, manifests)
    assert "deployment.apps/cloudcred created (server dry run)" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr


def test_deployment_is_hardened(kube: Kube, helm: Path, server_version: str) -> None:
    """Both installs run one non-root, read-only, capability-less replica with probes."""
    rendered = {
        "kustomize": documents(kustomize(kube)),
        "helm": documents(helm_template(helm, server_version, SYSTEM_NAMESPACE)),
    }
    for source, docs in rendered.items():
        deployment = one(docs, "Deployment")
        spec = deployment["spec"]
        assert spec["replicas"] == 1, source
        assert spec["strategy"] == {"type": "Recreate"}, source
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, source
        assert pod["securityContext"]["runAsUser"] == 10001, source
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, source
        container = pod["containers"][0]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, source
        assert security["allowPrivilegeEscalation"] is False, source
        assert security["capabilities"] == {"drop": ["ALL"]}, source
        assert container["args"] == ["run", "--standalone"], source
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", source
        assert container["readinessProbe"]["httpGet"]["port"] == "health", source
        assert {"requests", "limits"} <= set(container["resources"]), source
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"health": 8080, "metrics": 9090}, source
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], source
        service = one(docs, "Service")
        assert service["spec"]["ports"][0]["targetPort"] == "metrics", source


def test_chart_and_kustomize_grant_the_same_rules(
    kube: Kube, helm: Path, server_version: str
) -> None:
    base = granted(documents(kustomize(kube)))
    assert granted(documents(helm_template(helm, server_version, "x"))) == base
    assert ("", "secrets", "create") not in base  # delivery is opt-in
    delivery = granted(documents(kustomize(kube, DEPLOY / "delivery")))
    assert delivery == {("", "secrets", "create"), ("", "secrets", "delete")}
    with_delivery = helm_template(helm, server_version, "x", "delivery.enabled=true")
    assert granted(documents(with_delivery)) == base | delivery
    switch = {"name": "CLOUDCRED_DELIVERY_ENABLED", "value": "true"}
    container = one(documents(with_delivery), "Deployment")["spec"]["template"]["spec"]
    assert switch in container["containers"][0]["env"]
    plain = one(documents(helm_template(helm, server_version, "x")), "Deployment")
    assert switch not in plain["spec"]["template"]["spec"]["containers"][0]["env"]


# --- the ClusterRole in practice ----------------------------------------------------------


@pytest.fixture
def shipped_identity(kube: Kube) -> Iterator[tuple[str, str]]:
    """The ServiceAccount, ClusterRoles and bindings of deploy/ and deploy/delivery,
    created for real under unique names (in a fresh namespace, so nothing else in the
    cluster is touched). Yields (namespace, service account)."""
    docs = documents(kustomize(kube))
    delivery = documents(kustomize(kube, DEPLOY / "delivery"))
    suffix = uuid.uuid4().hex[:8]
    namespace = f"rbac-{suffix}"
    name = f"cloudcred-{suffix}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    account = one(docs, "ServiceAccount")
    account["metadata"].update(name=name, namespace=namespace)
    (role,) = [doc for doc in docs if doc["kind"] == "ClusterRole"
               and doc["metadata"]["name"] == "cloudcred"]  # not cloudcred-break-glass  # fmt: skip
    role["metadata"]["name"] = name
    binding = one(docs, "ClusterRoleBinding")
    binding["metadata"]["name"] = name
    binding["roleRef"]["name"] = name
    binding["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    delivery_role = one(delivery, "ClusterRole")
    delivery_role["metadata"]["name"] = f"{name}-delivery"
    delivery_binding = one(delivery, "ClusterRoleBinding")
    delivery_binding["metadata"]["name"] = f"{name}-delivery"
    delivery_binding["roleRef"]["name"] = f"{name}-delivery"
    delivery_binding["subjects"] = binding["subjects"]
    rbac = client.RbacAuthorizationV1Api(kube.api)
    kube.core.create_namespaced_service_account(namespace, account)
    for role_doc, binding_doc in ((role, binding), (delivery_role, delivery_binding)):
        rbac.create_cluster_role(role_doc)
        rbac.create_cluster_role_binding(binding_doc)
    # The Role in the operator's own namespace (the installation Secret).
    own_role, own_binding = one(docs, "Role"), one(docs, "RoleBinding")
    own_role["metadata"]["namespace"] = own_binding["metadata"]["namespace"] = namespace
    own_binding["subjects"] = binding["subjects"]
    rbac.create_namespaced_role(namespace, own_role)
    rbac.create_namespaced_role_binding(namespace, own_binding)
    try:
        yield namespace, name
    finally:
        for created in (name, f"{name}-delivery"):
            rbac.delete_cluster_role_binding(created)
            rbac.delete_cluster_role(created)


def token_kubeconfig(kube: Kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the admin's server, authenticating with a ServiceAccount token
    from the TokenRequest API (what a pod's projected token is)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = kube.core.create_namespaced_service_account_token(account, namespace, request)
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    server = dict(cluster["cluster"])
    if "certificate-authority" in server:  # inline the CA: the file path is relative
        ca = (kube.kubeconfig.parent / server.pop("certificate-authority")).read_bytes()
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_operator_works_with_the_shipped_cluster_role_and_nothing_more(
    kube: Kube,
    moto: Moto,
    shipped_identity: tuple[str, str],
    tmp_path: Path,
    operators: Operators,
) -> None:
    """The real operator, authenticated as the deploy/ ServiceAccount: it verifies an AWS
    key (Secret read and labelled), binds two clusters, deploys them (one with its
    credentials delivered into a new Secret), posts Events, releases its finalizer on
    delete -- and is never refused anything."""
    account_namespace, account = shipped_identity
    kubeconfig = token_kubeconfig(kube, account_namespace, account, tmp_path / "kubeconfig")
    watched = f"rbac-{uuid.uuid4().hex[:10]}"  # not t-*: the shared test operator stays out
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=watched)))
    operator = operators.start(watched, kubeconfig=kubeconfig,
                               env={"CLOUDCRED_OPERATOR_NAMESPACE": account_namespace})  # fmt: skip
    try:
        key = moto.create_user(f"rbac-{uuid.uuid4().hex[:8]}")
        secret(kube, watched, "aws-keys", {"secretAccessKey": key.secret_access_key})
        create_credential(kube, watched, "aws", provider="AWS", aws={
            "accessKeyId": key.access_key_id,
            "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"},
        }, delivery={"enabled": True})  # fmt: skip
        create_cluster(kube, watched, "prod-eu", provider="AWS", region="eu-west-3",
                       credentialRef={"name": "aws"})  # fmt: skip
        create_cluster(kube, watched, "prod-us", provider="AWS", region="us-east-1",
                       credentialRef={"name": "aws"},
                       credentialsSecret={"name": "prod-us-aws"})  # fmt: skip

        def deployed() -> str | None:
            credential = get_credential(kube, watched, "aws") or {}
            status = credential.get("status") or {}
            verified = (condition(credential, "Verified") or {}).get("status") == "True"
            revision = status.get("revision")
            clusters = [get_cluster(kube, watched, name).get("status") or {}
                        for name in ("prod-eu", "prod-us")]  # fmt: skip
            deployed = all(cluster.get("deployedRevision") == revision for cluster in clusters)
            if verified and status.get("clusterCount") == 2 and revision and deployed:
                return str(revision)
            return None

        try:
            wait_for(deployed, timeout=90, what="verified, bound and deployed")
        except AssertionError as error:  # say which request was refused, if one was
            raise AssertionError(f"{error}\nrefused:\n{refusals(operator.log())}") from None
        labels = kube.core.read_namespaced_secret("aws-keys", watched).metadata.labels or {}
        assert labels.get("cloudcred.io/credential-secret") == "true"
        delivered = kube.core.read_namespaced_secret("prod-us-aws", watched)
        assert delivered.data
        reasons = {event.reason for event in kube.core.list_namespaced_event(watched).items}
        assert "Deployed" in reasons, reasons

        # Deleting: the cluster first, then the credential, whose finalizer the
        # operator removes (a patch) once no cluster is bound.
        for name in ("prod-eu", "prod-us"):
            client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(
                "cloudcred.io", "v1alpha1", watched, "clusters", name
            )
        wait_for(
            lambda: ((get_credential(kube, watched, "aws") or {}).get("status") or {}).get(
                "clusterCount"
            ) == 0,
            timeout=30, what="cluster unbound",
        )  # fmt: skip
        client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(
            "cloudcred.io", "v1alpha1", watched, "cloudcredentials", "aws"
        )
        wait_for(lambda: get_credential(kube, watched, "aws") is None, timeout=30,
                 what="credential deleted")  # fmt: skip
    finally:
        operator.stop()
    log = operator.log()
    assert "cloudcred settings" in log
    assert not refusals(log), refusals(log)


def test_the_operators_secret_writes_are_limited_to_its_own(
    kube: Kube, shipped_identity: tuple[str, str], tmp_path: Path
) -> None:
    """As the operator's ServiceAccount (the shipped ClusterRoles, delivery's included):
    a ServiceAccount token Secret for kube-system's admin account, or any Secret not
    labelled as cloudcred's, is refused, and so is deleting a Secret not labelled as
    cloudcred's; its own Opaque Secrets and label changes on others go through. A cluster
    admin is not limited."""
    account_namespace, account = shipped_identity
    kubeconfig = token_kubeconfig(kube, account_namespace, account, tmp_path / "kubeconfig")
    operator = client.CoreV1Api(api_client(kubeconfig))
    target = f"writes-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=target)))
    token = client.V1Secret(
        metadata=client.V1ObjectMeta(name="admin-token", annotations={
            "kubernetes.io/service-account.name": "clusterrole-aggregation-controller"}),
        type="kubernetes.io/service-account-token",
    )  # fmt: skip

    def refusal(write: Any) -> str | None:
        try:
            write()
        except client.ApiException as error:
            if error.status == 403 and "cloudcred may write only" in (error.body or ""):
                return str(json.loads(error.body)["message"])
            raise
        return None

    # The policy loads asynchronously: wait until it refuses the token Secret.
    message = wait_for(lambda: refusal(lambda: operator.create_namespaced_secret(
        "kube-system", token)), what="the token Secret refused")  # fmt: skip
    assert "CREATE of Secret kube-system/admin-token (type kubernetes.io/service-account-token)" \
        in message  # fmt: skip
    plain = client.V1Secret(metadata=client.V1ObjectMeta(name="plain"), string_data={"a": "b"})
    assert refusal(lambda: operator.create_namespaced_secret(target, plain))

    labelled = client.V1ObjectMeta(
        name="ours", labels={"app.kubernetes.io/managed-by": "cloudcred"}
    )
    ours = client.V1Secret(metadata=labelled, string_data={"a": "b"})
    assert refusal(lambda: operator.create_namespaced_secret(target, ours)) is None
    kube.core.create_namespaced_secret(target, plain)  # a tenant's Secret
    labels = {"metadata": {"labels": {"cloudcred.io/credential-secret": "true"}}}
    assert refusal(lambda: operator.patch_namespaced_secret("plain", target, labels)) is None
    data = {"data": {"a": base64.b64encode(b"changed").decode()}}
    assert refusal(lambda: operator.patch_namespaced_secret("plain", target, data))
    owner = {"metadata": {"annotations": {"kubernetes.io/service-account.name": "default"}}}
    assert refusal(lambda: operator.patch_namespaced_secret("plain", target, owner))
    # Nor by labelling it as cloudcred's in the same write, nor in a write of its own.
    claimed = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "cloudcred"}},
               "data": data["data"]}  # fmt: skip
    assert refusal(lambda: operator.patch_namespaced_secret("plain", target, claimed))
    label = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "cloudcred"}}}
    assert refusal(lambda: operator.patch_namespaced_secret("plain", target, label))
    assert kube.core.read_namespaced_secret("plain", target).data == {"a": "Yg=="}
    # Deletes too: only its own Secrets (its delete right covers every namespace's).
    message = refusal(lambda: operator.delete_namespaced_secret("plain", target))
    assert message
    assert f"DELETE of Secret {target}/plain (type Opaque)" in message
    assert refusal(lambda: operator.delete_namespaced_secret("ours", target)) is None
    # A cluster admin holds every verb: not the operator, not limited.
    kube.core.patch_namespaced_secret("plain", target, data)
    kube.core.delete_namespaced_secret("plain", target)
