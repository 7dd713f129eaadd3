"""The Helm chart as users meet it: packaged the way Flux packages it (symbolic links
not followed), its values checked by values.schema.json, the HA settings
(replicaCount > 1) rendered and run, the monitors, the image digest, NOTES.txt and the
`helm test` pod.

The HA test runs two real operator processes out of cluster with the arguments and
environment of the rendered Deployment, authenticated as the chart's ServiceAccount
(a token of its ClusterRole), against the local control plane: one acts, the other
waits, and the waiting one takes over when the active one stops (``make test``) or is
killed (``make test-long``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
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
from tests.envtest.controlplane import free_port
from tests.integration.conftest import operator_env
from tests.integration.test_install import (
    CHART,
    HELM,
    documents,
    dry_run,
    kubectl,
    kubectl_path,
    one,
    restricted_namespace,
    run,
    token_kubeconfig,
)
from tests.kube import ROOT, load_yaml_documents
from tests.operator import OperatorProcess, Operators, wait_for
from tests.resources import condition, create_credential, get_credential, secret

pytestmark = pytest.mark.integration

PEERING_CRDS = ROOT / "deploy" / "peering" / "crds.yaml"
# How the active replica goes away in the HA test: stop (SIGTERM) or kill (SIGKILL).
TAKEOVER = os.environ.get("CLOUDCRED_FAULT_TAKEOVER", "stop")


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    if not HELM.exists():
        pytest.skip(f"helm is not built: run `make helm` (it builds {HELM.relative_to(ROOT)})")
    return HELM


@pytest.fixture(scope="module")
def kube_version(kube: Kube) -> str:
    """The API server's gitVersion: Helm checks the chart's kubeVersion against it."""
    return str(client.VersionApi(kube.api).get_code().git_version)


def render(
    helm_bin: Path, version: str, *settings: str, chart: Path | str = CHART,
    release: str = "cloudcred", namespace: str = "cloudcred-system",
) -> list[dict[str, Any]]:  # fmt: skip
    """`helm template`; settings are "key=value" for --set, or whole flags."""
    args: list[str | Path] = [helm_bin, "template", release, chart, "--namespace", namespace,
                              "--kube-version", version]  # fmt: skip
    for setting in settings:
        args += [setting] if setting.startswith("--") else ["--set", setting]
    return documents(run(*args).stdout)


def refused(helm_bin: Path, version: str, *settings: str) -> str:
    """The error of a `helm template` that must fail."""
    args = [str(helm_bin), "template", "cloudcred", str(CHART), "--kube-version", version]
    for setting in settings:
        args += [setting] if setting.startswith("--") else ["--set", setting]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0, f"{settings} was accepted"
    return result.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(docs, "Deployment")["spec"]["template"]["spec"])


# --- packaged as Flux packages it ------------------------------------------------------


def shipped(kinds: tuple[str, ...], *sources: Path) -> set[tuple[str, str]]:
    """(kind, name) of every object of these kinds in the source manifests."""
    return {
        (doc["kind"], doc["metadata"]["name"])
        for source in sources
        for path in ([source] if source.is_file() else sorted(source.glob("*.yaml")))
        for doc in load_yaml_documents(path)
        if doc.get("kind") in kinds
    }


def test_chart_packaged_without_following_links_has_every_crd_and_policy(
    helm_bin: Path, kube_version: str, tmp_path: Path
) -> None:
    """Flux's source-controller copies the chart from Git without following symbolic
    links, then packages it: the copy made here does the same (symlinks=True keeps a
    link as a link, dangling outside the repository), `helm package` makes the .tgz, and
    its rendering holds every CRD of crds/ and deploy/peering/ and every admission
    policy, binding and ClusterRole of deploy/admission/."""
    copy = tmp_path / "source" / "cloudcred"
    shutil.copytree(CHART, copy, symlinks=True)
    run(helm_bin, "package", copy, "--destination", tmp_path)
    (package,) = tmp_path.glob("cloudcred-*.tgz")
    with tarfile.open(package) as archive:
        names = archive.getnames()
    assert "cloudcred/files/crds/cloudcred.io_clusters.yaml" in names
    assert "cloudcred/crds/kopf-peering.yaml" in names
    docs = render(helm_bin, kube_version, "--include-crds", "replicaCount=2", chart=package)
    found = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    crds = shipped(("CustomResourceDefinition",), ROOT / "crds", PEERING_CRDS)
    assert {name for _, name in crds} >= {"cloudcredentials.cloudcred.io",
                                          "clusters.cloudcred.io",
                                          "clusterkopfpeerings.kopf.dev"}  # fmt: skip
    assert crds <= found, crds - found
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole")
    policies = shipped(kinds, ROOT / "deploy" / "admission")
    assert len([kind for kind, _ in policies if kind == "ValidatingAdmissionPolicy"]) >= 5
    assert policies <= found, policies - found


# --- values.schema.json ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (["replicaCont=2"], "replicaCont"),
        (["image.digst=sha256:0"], "digst"),
        (["metrics.podMonitor.enabeld=true"], "enabeld"),
        (["prometheusRule.lables.release=x"], "lables"),
        (["logLevel=debug"], "logLevel"),
        (["boundaryDefault=deny"], "boundaryDefault"),
        (["replicaCount=0"], "replicaCount"),
        (["image.digest=latest"], "digest"),
        (["--set-string=pdb.maxUnavailable=one"], "maxUnavailable"),
    ],
)
def test_schema_refuses_a_misspelt_or_wrong_value_by_name(
    helm_bin: Path, kube_version: str, settings: list[str], named: str
) -> None:
    error = refused(helm_bin, kube_version, *settings)
    assert "schema" in error, error
    assert named in error, error


def test_schema_accepts_what_values_yaml_documents(helm_bin: Path, kube_version: str) -> None:
    docs = render(
        helm_bin, kube_version, "replicaCount=3", "pdb.minAvailable=2",
        "--set-string=pdb.maxUnavailable=50%", "image.digest=sha256:" + "a" * 64,
        "metrics.podMonitor.enabled=true", "metrics.podMonitor.labels.release=prom",
        "prometheusRule.enabled=true", "prometheusRule.labels.release=prom",
        "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
        "tests.image=busybox:1.37", "peering.name=ops",
    )  # fmt: skip
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "prom"


def test_boundary_default_becomes_the_operators_setting(helm_bin: Path, kube_version: str) -> None:
    """boundaryDefault is CLOUDCRED_BOUNDARY_DEFAULT: Allow unless set to Deny."""

    def setting(*settings: str) -> str:
        env = pod_spec(render(helm_bin, kube_version, *settings))["containers"][0]["env"]
        (value,) = [e["value"] for e in env if e["name"] == "CLOUDCRED_BOUNDARY_DEFAULT"]
        return str(value)

    assert setting() == "Allow"
    assert setting("boundaryDefault=Deny") == "Deny"


def test_kube_version_below_131_is_refused(helm_bin: Path) -> None:
    error = refused(helm_bin, "v1.30.9")
    assert "kubeVersion" in error or "incompatible" in error, error


# --- HA --------------------------------------------------------------------------------


def test_one_replica_is_standalone_without_budget_or_peering(
    helm_bin: Path, kube_version: str
) -> None:
    docs = render(helm_bin, kube_version, "--include-crds")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(docs)
    assert spec["containers"][0]["args"] == ["run", "--standalone"]
    assert "topologySpreadConstraints" not in spec
    assert not of_kind(docs, "PodDisruptionBudget")
    assert not of_kind(docs, "ClusterKopfPeering")
    assert not [rule for role in of_kind(docs, "ClusterRole") for rule in role["rules"]
                if "kopf.dev" in rule["apiGroups"]]  # fmt: skip
    # The budget on request (a drain may still take the one replica).
    (budget,) = of_kind(render(helm_bin, kube_version, "pdb.enabled=true"), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1


def test_two_replicas_render_peering_budget_and_spread(
    kube: Kube, helm_bin: Path, kube_version: str
) -> None:
    namespace = restricted_namespace(kube)
    docs = render(helm_bin, kube_version, "replicaCount=2", "--skip-tests",
                  "extraArgs={--liveness,http://0.0.0.0:8080/healthz}",
                  namespace=namespace)  # fmt: skip
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
    }  # fmt: skip
    container = pod_spec(docs)["containers"][0]
    # Peering by the chart's own settings, extraArgs still after them.
    assert container["args"] == ["run", "--peering", "cloudcred", "--priority", "auto",
                                 "--liveness", "http://0.0.0.0:8080/healthz"]  # fmt: skip
    pod_id = {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert pod_id in container["env"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    spread = pod_spec(docs)["topologySpreadConstraints"]
    assert [item["topologyKey"] for item in spread] == [
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"
    ]  # fmt: skip
    for item in spread:
        assert item["labelSelector"] == {"matchLabels": selector}
        assert item["whenUnsatisfiable"] == "ScheduleAnyway"
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "cloudcred"
    (role,) = [r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"] == "cloudcred"]
    peering_rules = [rule for rule in role["rules"] if rule["apiGroups"] == ["kopf.dev"]]
    assert peering_rules == [
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"],
         "resourceNames": ["cloudcred"], "verbs": ["get", "patch"]},
    ]  # fmt: skip
    # The API server takes all of it (the peering CRDs installed for real first: the
    # chart's crds/ folder, which helm installs before the templates).
    kubectl(kube, "apply", "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    kubectl(kube, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")  # fmt: skip
    result = dry_run(kube, yaml.safe_dump_all(docs))
    assert "poddisruptionbudget.policy/cloudcred created (server dry run)" in result.stdout
    assert "clusterkopfpeering.kopf.dev/cloudcred created (server dry run)" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr


def test_two_replicas_in_named_namespaces_get_a_peering_object_in_each(
    helm_bin: Path, kube_version: str
) -> None:
    docs = render(helm_bin, kube_version, "replicaCount=2", "namespaces={acme,beta}",
                  "peering.name=ops")  # fmt: skip
    assert not of_kind(docs, "ClusterKopfPeering")
    peerings = {(doc["metadata"]["namespace"], doc["metadata"]["name"])
                for doc in of_kind(docs, "KopfPeering")}  # fmt: skip
    assert peerings == {("acme", "ops"), ("beta", "ops")}
    assert pod_spec(docs)["containers"][0]["args"][:3] == ["run", "--peering", "ops"]
    # kopf would pause for ever in a namespace without its peering object: patterns,
    # which the chart cannot create one for, are refused.
    error = refused(helm_bin, kube_version, "replicaCount=2", "namespaces={team-*}")
    assert "namespaces must be names, not patterns" in error, error
    # Own constraints replace the default spread and get the pods' selector.
    docs = render(
        helm_bin, kube_version, "replicaCount=2",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
    )  # fmt: skip
    (spread,) = pod_spec(docs)["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["labelSelector"] == one(docs, "Deployment")["spec"]["selector"]


def test_helm_install_with_two_replicas_on_the_control_plane(kube: Kube, helm_bin: Path) -> None:
    """A real `helm install` (no Pods run here: there is no kubelet): kopf's peering CRDs
    come from the chart's crds/ folder before the templates, so the ClusterKopfPeering
    of the same install is created; the Deployment is what was rendered. (CRDs and
    policies of cloudcred.io are left out: the test session installed them already.)"""
    if kube.plane is None:
        pytest.skip("deletes kopf's peering CRDs: only on the tests' own control plane")
    extensions = client.ApiextensionsV1Api(kube.api)
    for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        try:
            extensions.delete_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise

    def gone() -> bool:
        listed = extensions.list_custom_resource_definition().items
        return not [crd for crd in listed if crd.spec.group == "kopf.dev"]

    wait_for(gone, timeout=60, what="kopf's CRDs deleted")
    suffix = uuid.uuid4().hex[:8]
    namespace, release = f"helm-{suffix}", f"ha{suffix}"
    result = run(helm_bin, "install", release, CHART, "--kubeconfig", kube.kubeconfig,
                 "--namespace", namespace, "--create-namespace", "--set", "replicaCount=2",
                 "--set", "crds.install=false",
                 "--set", "admissionPolicy.enabled=false")  # fmt: skip
    try:
        assert "STATUS: deployed" in result.stdout
        peering = kube.custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", f"{release}-cloudcred"
        )
        assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == release
        deployment = client.AppsV1Api(kube.api).read_namespaced_deployment(
            f"{release}-cloudcred", namespace
        )
        assert deployment.spec.replicas == 2
        assert deployment.spec.strategy.type == "RollingUpdate"
        budget = client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(
            f"{release}-cloudcred", namespace
        )
        assert budget.spec.max_unavailable == 1
    finally:
        run(helm_bin, "uninstall", release, "--kubeconfig", kube.kubeconfig, "-n", namespace)


# --- monitors, digest, NOTES, helm test --------------------------------------------------


def test_pod_monitor_and_service_monitor_are_off_by_default(
    helm_bin: Path, kube_version: str
) -> None:
    assert not of_kind(render(helm_bin, kube_version), "PodMonitor")
    assert not of_kind(render(helm_bin, kube_version), "ServiceMonitor")
    docs = render(helm_bin, kube_version, "metrics.podMonitor.enabled=true",
                  "metrics.podMonitor.labels.release=prometheus",
                  "metrics.podMonitor.interval=15s")  # fmt: skip
    monitor = one(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"]
        == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s",
                        "scrapeTimeout": "10s"}  # fmt: skip
    names = [port["name"] for port in pod_spec(docs)["containers"][0]["ports"]]
    assert endpoint["port"] in names


def test_image_digest_pins_the_image(helm_bin: Path, kube_version: str) -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    docs = render(helm_bin, kube_version, f"image.digest={digest}", "image.tag=0.2.0")
    image = pod_spec(docs)["containers"][0]["image"]
    assert image == f"ghcr.io/cloudcred/cloudcred@{digest}"
    assert one(docs, "Pod")["spec"]["containers"][0]["image"] == image  # the helm test pod


def notes(helm_bin: Path, *settings: str) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run: no cluster)."""
    args: list[str | Path] = [helm_bin, "install", "cloudcred", CHART, "-n", "cloudcred-system",
                              "--dry-run=client"]  # fmt: skip
    for setting in settings:
        args += ["--set", setting]
    output = run(*args).stdout
    return output[output.index("NOTES:") :]


def test_notes_work_for_a_chart_user(kube: Kube, helm_bin: Path, namespace: str) -> None:
    """No path of the source tree; the example it prints is accepted by the API server."""
    text = notes(helm_bin)
    assert "deploy/" not in text
    assert "kubectl explain cloudcredential.spec" in text
    assert "helm test cloudcred -n cloudcred-system" in text
    # Pasted into a shell as printed (the namespace filled in, a server-side dry run).
    start = text.index("kubectl -n NAMESPACE apply -f - <<'YAML'\n")
    pasted = text[start : text.index("\nYAML\n", start) + len("\nYAML\n")]
    assert pasted.count("\nkind: ") == 2
    command = pasted.replace("NAMESPACE", namespace, 1).replace(
        "kubectl ", f"{kubectl_path()} --kubeconfig {kube.kubeconfig} --dry-run=server ", 1
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cloudcredential.cloudcred.io/aws created (server dry run)" in result.stdout
    assert "cluster.cloudcred.io/prod-eu created (server dry run)" in result.stdout
    ha = notes(helm_bin, "replicaCount=2")
    assert "kubectl get clusterkopfpeering cloudcred -o yaml" in ha


def test_helm_test_pod(kube: Kube, helm_bin: Path, kube_version: str) -> None:
    """A `helm test` hook, restricted like the operator, not selected by the operator's
    Service, budget or monitors; left out when there is no metrics Service."""
    namespace = restricted_namespace(kube)
    docs = render(helm_bin, kube_version, "replicaCount=2", namespace=namespace)
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "helm-test"
    env = {item["name"]: item["value"] for item in pod["spec"]["containers"][0]["env"]}
    assert env["METRICS_URL"] == f"http://cloudcred-metrics.{namespace}.svc:9090/metrics"
    # The ServiceAccount "default" (the controller manager, absent here, makes it).
    kube.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )
    result = dry_run(kube, yaml.safe_dump(pod))
    assert "PodSecurity" not in result.stderr, result.stderr
    assert "pod/cloudcred-test-metrics created (server dry run)" in result.stdout
    assert not of_kind(render(helm_bin, kube_version, "metrics.service.enabled=false"), "Pod")


def helm_test_check(pod: dict[str, Any], url: str) -> subprocess.CompletedProcess[str]:
    """The `helm test` pod's own command, run here against ``url``."""
    container = pod["spec"]["containers"][0]
    command = [sys.executable if part == "python" else part for part in container["command"]]
    return subprocess.run(command, env={"METRICS_URL": url}, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


# --- HA for real: two operators, one acts --------------------------------------------------


@pytest.fixture
def ha_release(kube: Kube, helm_bin: Path, kube_version: str) -> Iterator[dict[str, Any]]:
    """The chart rendered with replicaCount=2 for a fresh namespace, its peering CRDs,
    peering object, ServiceAccount and RBAC created for real (unique names); the
    Deployment is left for the test to run out of cluster."""
    suffix = uuid.uuid4().hex[:8]
    namespace, release = f"ha-{suffix}", f"ha{suffix}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    docs = render(helm_bin, kube_version, "replicaCount=2", f"namespaces={{{namespace}}}",
                  "--include-crds", release=release, namespace=namespace)  # fmt: skip
    crds = [doc for doc in of_kind(docs, "CustomResourceDefinition")
            if doc["spec"]["group"] == "kopf.dev"]  # fmt: skip
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(crds))
    kubectl(kube, "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{crd['metadata']['name']}" for crd in crds])  # fmt: skip
    mine = [doc for doc in docs if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding",
            "ClusterRoleBinding", "KopfPeering") or (doc["kind"] == "ClusterRole"
            and doc["metadata"]["name"] == f"{release}-cloudcred")]  # fmt: skip
    assert {doc["kind"] for doc in mine} == {
        "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "KopfPeering"
    }  # fmt: skip
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(mine))
    try:
        yield {"namespace": namespace, "release": release, "docs": docs}
    finally:
        rbac = client.RbacAuthorizationV1Api(kube.api)
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                delete(f"{release}-cloudcred")
            except ApiException as error:
                if error.status != 404:
                    raise


def chart_replica(operators: Operators, deployment: dict[str, Any], pod: str, kubeconfig: Path,
                  extra: dict[str, str]) -> OperatorProcess:  # fmt: skip
    """One replica of the rendered Deployment as a process: its args and env (POD_ID,
    from the downward API in a pod, is the pod name given here; ports are free ones, as
    each pod has its own network)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "run"
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, item
            env[item["name"]] = pod
    health, metrics = free_port(), free_port()
    env.update(CLOUDCRED_LIVENESS_ENDPOINT=f"http://127.0.0.1:{health}/healthz",
               CLOUDCRED_METRICS_PORT=str(metrics))  # fmt: skip
    return operators.start(kubeconfig=kubeconfig, env={**extra, **env}, base_env=False,
                           args=container["args"][1:], standalone=False, name=pod,
                           liveness_port=health, metrics_port=metrics)  # fmt: skip


@pytest.mark.faults
def test_two_replicas_one_active_and_the_standby_takes_over(
    kube: Kube, moto: Moto, ha_release: dict[str, Any], tmp_path: Path, operators: Operators
) -> None:
    """The active replica goes away as CLOUDCRED_FAULT_TAKEOVER says (test_faults.py):
    SIGTERM in ``make test`` (kopf takes it out of the peering on its way out), SIGKILL in
    ``make test-long`` (no goodbye: the standby waits for kopf's peering lifetime, 60 s)."""
    namespace, release = ha_release["namespace"], ha_release["release"]
    docs = ha_release["docs"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    kubeconfig = token_kubeconfig(kube, namespace, account, tmp_path / "kubeconfig")
    deployment = one(docs, "Deployment")
    extra = {**operator_env(moto), "CLOUDCRED_OPERATOR_NAMESPACE": namespace}
    extra.pop("CLOUDCRED_DELIVERY_ENABLED")  # the chart's default: off
    peering = one(docs, "KopfPeering")["metadata"]["name"]
    assert peering == f"{release}-cloudcred"

    def peers() -> dict[str, Any]:
        body = kube.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", peering
        )
        return dict(body.get("status") or {})

    first = chart_replica(operators, deployment, "cloudcred-a", kubeconfig, extra)
    wait_for(lambda: "cloudcred-a" in peers() and "Resuming operations" in first.log(),
             timeout=60, what="the first replica to join the peering and act")  # fmt: skip
    second = chart_replica(operators, deployment, "cloudcred-b", kubeconfig, extra)
    wait_for(lambda: "cloudcred-b" in peers() and "cloudcred settings" in second.log(),
             timeout=60, what="the second replica to join the peering")  # fmt: skip
    listed = peers()
    print(f"\npeering {peering}: {listed}")
    # The earlier replica has the higher priority: it acts, the other one waits.
    assert listed["cloudcred-a"]["priority"] > listed["cloudcred-b"]["priority"]

    def verified(name: str) -> bool:
        found = condition(get_credential(kube, namespace, name), "Verified") or {}
        return found.get("status") == "True"

    def handled(process: OperatorProcess, name: str) -> bool:
        """The verification controller's line for a CloudCredential checked."""
        return f"checked {namespace}/{name}: " in process.log()

    key = moto.create_user(f"ha-{uuid.uuid4().hex[:8]}")
    secret(kube, namespace, "aws-keys", {"secretAccessKey": key.secret_access_key})
    aws = {"accessKeyId": key.access_key_id,
           "secretAccessKeyRef": {"name": "aws-keys", "key": "secretAccessKey"}}  # fmt: skip
    create_credential(kube, namespace, "before", provider="AWS", aws=aws)
    wait_for(lambda: verified("before"), timeout=60, what="the active replica to verify")
    time.sleep(2)  # anything the standby would do lands now
    assert handled(first, "before"), first.log()[-3000:]
    assert not handled(second, "before"), second.log()[-3000:]
    assert "Resuming operations" not in second.log()
    assert first.alive
    assert second.alive

    # The `helm test` pod's check, against the active replica's metrics port.
    check = helm_test_check(one(docs, "Pod"), f"http://127.0.0.1:{first.metrics_port}/metrics")
    assert check.returncode == 0, check.stderr
    assert "the operator answers" in check.stdout

    # The active replica goes away; the standby takes over (after a SIGKILL, once the
    # keep-alive expires: kopf's peering lifetime, 60 s) and handles what comes next.
    killed = time.monotonic()
    if TAKEOVER == "kill":
        first.kill()
    else:
        first.stop()
    create_credential(kube, namespace, "after", provider="AWS", aws=aws)
    wait_for(lambda: verified("after"), timeout=150, what="the standby to take over")
    took = time.monotonic() - killed
    print(f"standby took over and verified a new credential {took:.1f}s after the "
          f"{TAKEOVER}")  # fmt: skip
    assert "Resuming operations" in second.log()
    wait_for(lambda: handled(second, "after"), timeout=30, what="the standby's handler")
    # The dead replica's keep-alive is cleaned out of the peering object.
    wait_for(lambda: "cloudcred-a" not in peers(), timeout=30, what="the dead peer removed")
    assert "Traceback" not in second.log()
