"""Small helpers the tests and the local control plane share: clients and CRDs."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from cloudcred.constants import CREDENTIAL_PLURAL, GROUP, VERSION
from cloudcred.installation import INSTALLATION_SECRET

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "crds"


def api_client(kubeconfig: Path | str) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def install_crds(api: client.ApiClient, timeout: float = 60) -> list[str]:
    """Create or update every CRD in crds/ and wait until each is Established."""
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_yaml_documents(path):
            name = crd["metadata"]["name"]
            names.append(name)
            try:
                extensions.create_custom_resource_definition(crd)
            except ApiException as error:
                if error.status != 409:
                    raise
                current = extensions.read_custom_resource_definition(name)
                crd["metadata"]["resourceVersion"] = current.metadata.resource_version
                extensions.replace_custom_resource_definition(name, crd)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s")
            time.sleep(0.2)
    return names


ADMISSION_DIR = ROOT / "deploy" / "admission"


def install_admission_policies(api: client.ApiClient) -> None:
    """Create or update the ValidatingAdmissionPolicies and bindings in deploy/admission."""
    admission = client.AdmissionregistrationV1Api(api)
    for path in sorted(ADMISSION_DIR.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") not in ("ValidatingAdmissionPolicy",
                                       "ValidatingAdmissionPolicyBinding"):  # fmt: skip
                continue  # kustomization.yaml, the break-glass ClusterRole
            name = doc["metadata"]["name"]
            if doc["kind"] == "ValidatingAdmissionPolicy":
                create, read, replace = (
                    admission.create_validating_admission_policy,
                    admission.read_validating_admission_policy,
                    admission.replace_validating_admission_policy,
                )
            else:
                create, read, replace = (
                    admission.create_validating_admission_policy_binding,
                    admission.read_validating_admission_policy_binding,
                    admission.replace_validating_admission_policy_binding,
                )
            try:
                create(doc)
            except ApiException as error:
                if error.status != 409:
                    raise
                doc["metadata"]["resourceVersion"] = read(name).metadata.resource_version
                replace(name, doc)
    wait_for_admission(api)


def wait_for_admission(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Wait until the policies judge requests: right after they are created, a policy
    whose parameters are CredentialBoundaries refuses everything with "not yet synced"
    until the API server has listed that kind. Probed with a dry-run create."""
    custom = client.CustomObjectsApi(api)
    probe = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CloudCredential",
             "metadata": {"name": "admission-probe", "namespace": "default"},
             "spec": {"provider": "AWS",
                      "aws": {"roleArn": "arn:aws:iam::123456789012:role/probe"}}}  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", CREDENTIAL_PLURAL,
                                                   probe, dry_run="All")  # fmt: skip
            return
        except ApiException as error:
            if "not yet synced" not in str(error.body) or time.monotonic() > deadline:
                return  # judged (a refusal for another reason is a judgement too)
        time.sleep(0.2)


def install_installation_key(api: client.ApiClient, namespace: str = "default") -> None:
    """The installation key of the operators that share ``namespace`` (the default one,
    outside a pod), made before any of them starts, as an administrator would: several
    installations share the test namespaces, and an operator refuses to make a key of
    its own while credentials carry values derived from another one's."""
    key = base64.b64encode(os.urandom(32)).decode()
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=INSTALLATION_SECRET),
                           string_data={"key": key})  # fmt: skip
    try:
        client.CoreV1Api(api).create_namespaced_secret(namespace, body)
    except ApiException as error:
        if error.status != 409:  # made by an earlier run against the same cluster
            raise
