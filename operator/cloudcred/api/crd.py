"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the one source of truth; ``crds/*.yaml`` are generated from them
(``make crds``) and a unit test fails when the committed files drift.

Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. The
conversion inlines ``$ref``s, turns ``X | None`` into an optional ``X``, and drops what
structural schemas forbid (titles, ``additionalProperties: false``, null defaults).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cloudcred.api.boundary import CredentialBoundarySpec
from cloudcred.api.cluster import ClusterSpec, ClusterStatus
from cloudcred.api.credential import CloudCredentialSpec, CloudCredentialStatus
from cloudcred.api.permissions import PermissionSetSpec
from cloudcred.constants import (
    BOUNDARY_KIND,
    BOUNDARY_PLURAL,
    CLUSTER_PLURAL,
    CREDENTIAL_PLURAL,
    GROUP,
    PERMISSION_SET_KIND,
    PERMISSION_SET_PLURAL,
    VERSION,
)

Schema = dict[str, Any]

_DROPPED_KEYS = {"title", "$defs"}


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema as a structural OpenAPI v3 schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}))


# Keys of a schema in the order a reader of the YAML wants them.
_KEY_ORDER = ["type", "description", "required"]


def _convert(schema: Schema, defs: dict[str, Schema]) -> Schema:
    schema = _flatten(schema, defs)
    ordered = sorted(schema, key=lambda k: _KEY_ORDER.index(k) if k in _KEY_ORDER else 99)
    result: Schema = {}
    for key in ordered:
        value = schema[key]
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue  # unknown fields are pruned, or refused with strict field validation
        if key == "properties":
            result[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            result[key] = _convert(value, defs)
        else:
            result[key] = value
    return result


def _flatten(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a $ref and unwrap ``anyOf: [X, null]`` / single ``allOf``, keeping the
    outer keys (such as the field's own description) over the referenced ones."""
    schema = dict(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**_flatten(target, defs), **schema}
    for combinator in ("anyOf", "allOf"):
        if combinator in schema:
            options = [s for s in schema.pop(combinator) if s.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express {combinator} with {len(options)} options")
            inner = _flatten(options[0], defs)
            inner_rules = inner.pop("x-kubernetes-validations", [])
            schema = {**inner, **schema}
            rules = inner_rules + schema.get("x-kubernetes-validations", [])
            if rules:
                schema["x-kubernetes-validations"] = rules
    return schema


def _reason_column(condition: str, priority: int = 0) -> Schema:
    """The reason of a condition, for ``-o wide``: why it is (not) Ready."""
    column = _condition_column("Reason", condition, priority)
    column["jsonPath"] = f'.status.conditions[?(@.type=="{condition}")].reason'
    return column


def _condition_column(name: str, condition: str, priority: int = 0) -> Schema:
    column: Schema = {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition}")].status',
    }
    if priority:
        column["priority"] = priority
    return column


def _crd(
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: type[BaseModel],
    status: type[BaseModel] | None,
    columns: list[Schema],
    selectable_fields: list[str],
    scope: str = "Namespaced",
    categories: tuple[str, ...] = ("cloud",),
) -> Schema:
    properties: Schema = {
        "apiVersion": {"type": "string", "description": "API version of the object."},
        "kind": {"type": "string", "description": "Kind of the object."},
        "metadata": {"type": "object"},
        "spec": structural_schema(spec),
    }
    if status is not None:
        properties["status"] = structural_schema(status)
        # An object the operator has not looked at yet reads as not observed (generation
        # 0): kstatus then says InProgress, not Current, and Flux waits for the operator.
        properties["status"]["default"] = {"observedGeneration": 0}
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": properties,
    }
    version: Schema = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
    }
    if status is not None:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    if selectable_fields:
        version["selectableFields"] = [{"jsonPath": path} for path in selectable_fields]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                **({"categories": list(categories)} if categories else {}),
            },
            "versions": [version],
        },
    }


def credential_crd() -> Schema:
    return _crd(
        kind="CloudCredential",
        plural=CREDENTIAL_PLURAL,
        short_names=["ccred", "cloudcred"],
        description="Credentials for one cloud provider (AWS, GCP, Azure, Scaleway), checked "
        "by the operator, with the list of Clusters that use them.",
        spec=CloudCredentialSpec,
        status=CloudCredentialStatus,
        columns=[
            {"name": "Provider", "type": "string", "jsonPath": ".spec.provider"},
            {"name": "Key-or-Role", "type": "string", "jsonPath": ".status.publicId"},
            {"name": "Clusters", "type": "integer", "jsonPath": ".status.clusterCount"},
            _condition_column("Verified", "Verified"),
            _condition_column("Ready", "Ready"),
            _reason_column("Ready", priority=1),
            {"name": "Revision", "type": "string", "jsonPath": ".status.revision", "priority": 1},
            {
                "name": "Updated",
                "type": "integer",
                "jsonPath": ".status.rollout.updated",
                "priority": 1,
            },
            _condition_column("Rolled-Out", "RolloutComplete", priority=1),
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        selectable_fields=[".spec.provider"],
    )


def cluster_crd() -> Schema:
    return _crd(
        kind="Cluster",
        plural=CLUSTER_PLURAL,
        short_names=["ccluster"],
        description="A cluster and the CloudCredential it is deployed with. Cluster API also "
        "has a Cluster kind: name this one clusters.cloudcred.io.",
        spec=ClusterSpec,
        status=ClusterStatus,
        columns=[
            {"name": "Provider", "type": "string", "jsonPath": ".spec.provider"},
            {"name": "Region", "type": "string", "jsonPath": ".spec.region"},
            {"name": "Credential", "type": "string", "jsonPath": ".spec.credentialRef.name"},
            _condition_column("Bound", "CredentialBound"),
            _condition_column("Pending", "RedeployPending"),
            _condition_column("Ready", "Ready"),
            _reason_column("Ready", priority=1),
            {
                "name": "Deployed",
                "type": "string",
                "jsonPath": ".status.deployedRevision",
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        selectable_fields=[
            ".spec.provider",
            ".spec.credentialRef.name",
            ".spec.credentialRef.namespace",
        ],
    )


def boundary_crd() -> Schema:
    return _crd(
        kind=BOUNDARY_KIND,
        plural=BOUNDARY_PLURAL,
        short_names=["ccb"],
        description="Which cloud accounts and identities the CloudCredentials of the selected "
        "namespaces may use; checked at admission and by the operator before every use. "
        "Cluster-scoped: written by cluster admins.",
        spec=CredentialBoundarySpec,
        status=None,
        columns=[
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        selectable_fields=[],
        scope="Cluster",
        # Not in "cloud": `kubectl get cloud` lists what tenants own.
        categories=(),
    )


def permission_set_crd() -> Schema:
    return _crd(
        kind=PERMISSION_SET_KIND,
        plural=PERMISSION_SET_PLURAL,
        short_names=["ccps"],
        description="What a deployer needs a credential to be allowed to do, per provider. "
        "Clusters and CloudCredentials name the sets they need (spec.permissionSets); the "
        "operator checks each credential with its provider (PermissionsSufficient). "
        "Cluster-scoped: written by cluster admins.",
        spec=PermissionSetSpec,
        status=None,
        columns=[
            {"name": "Description", "type": "string", "jsonPath": ".spec.description"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        selectable_fields=[],
        scope="Cluster",
        categories=(),
    )


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated lists in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: Schema) -> str:
    header = "# Generated from operator/cloudcred/api by `make crds`. Do not edit.\n"
    return header + yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, width=100)


CRD_FILES = {
    f"{GROUP}_{CREDENTIAL_PLURAL}.yaml": credential_crd,
    f"{GROUP}_{CLUSTER_PLURAL}.yaml": cluster_crd,
    f"{GROUP}_{BOUNDARY_PLURAL}.yaml": boundary_crd,
    f"{GROUP}_{PERMISSION_SET_PLURAL}.yaml": permission_set_crd,
}


def main(argv: list[str]) -> None:
    """Write every CRD into the folder given as the only argument."""
    folder = Path(argv[0]) if argv else Path("crds")
    for filename, build in CRD_FILES.items():
        (folder / filename).write_text(render(build()))


if __name__ == "__main__":
    main(sys.argv[1:])
