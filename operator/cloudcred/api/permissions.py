"""The PermissionSet kind: what a deployer needs a credential to be allowed to do, per
provider. Cluster-scoped: platform admins write them; Clusters and CloudCredentials
name the sets they need (``spec.permissionSets``), and the operator checks each
credential against the sets named for it through the provider's own API
(``cloudcred.permissions``).

A set may hold several providers' blocks (one platform, four clouds): a credential is
checked against the block of its own provider, and a set without that block asks
nothing of it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from cloudcred.api.common import DNS_SUBDOMAIN, Model

# An IAM action as policies write it: service prefix, ':', a name with optional
# wildcards (ec2:Describe*, eks:*). "*" alone is refused: it asks for everything.
AWS_ACTION = r"^[a-z0-9-]+:[A-Za-z0-9*?]+$"
# "*" or an ARN, wildcards allowed (arn:aws:s3:::qovery*).
AWS_RESOURCE = r"^(\*|arn:[a-z0-9*-]+:[a-z0-9*-]+:[a-z0-9*-]*:[0-9*]*:.+)$"
GCP_PERMISSION = r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2,}$"  # container.clusters.create
AZURE_ACTION = r"^[A-Za-z0-9.*]+(/[A-Za-z0-9.*_-]+)+$"  # Microsoft.Compute/virtualMachines/read
SCALEWAY_PERMISSION_SET = r"^[A-Za-z][A-Za-z0-9]*$"  # KubernetesFullAccess
RESOURCE_GROUP = r"^[-\w._()]{1,90}$"
MAX_ENTRIES = 256  # per list: enough for a platform's policy, small for CEL and status
MAX_STATEMENTS = 32
# How many names a credential or a Cluster may list (spec.permissionSets).
MAX_NAMED_SETS = 16


def _strings(description: str, item: str, pattern: str, max_length: int) -> list[str]:
    return Field(  # type: ignore[no-any-return]
        description=description,
        min_length=1,
        max_length=MAX_ENTRIES,
        json_schema_extra={
            "items": {"type": "string", "description": item, "maxLength": max_length,
                      "pattern": pattern},
            "x-kubernetes-list-type": "set",
        },
    )  # fmt: skip


class AwsStatement(Model):
    """Actions needed on some resources."""

    actions: list[str] = _strings(
        "IAM actions, as a policy writes them (eks:CreateCluster, ec2:Describe*, kms:*). A "
        "wildcard is sent to the simulator as written: see the README's limits.",
        "An IAM action.",
        AWS_ACTION,
        128,
    )
    resources: list[str] | None = Field(
        default=None,
        description="Resource ARNs the actions are needed on (wildcards allowed, "
        "arn:aws:s3:::qovery*). Absent: '*'.",
        min_length=1,
        max_length=MAX_ENTRIES,
        json_schema_extra={
            "items": {"type": "string", "description": "'*' or a resource ARN.",
                      "maxLength": 2048, "pattern": AWS_RESOURCE},
            "x-kubernetes-list-type": "set",
        },
    )  # fmt: skip


class AwsPermissions(Model):
    """What an AWS credential must be allowed, checked with iam:SimulatePrincipalPolicy."""

    statements: list[AwsStatement] = Field(
        description="Actions and the resources they are needed on.",
        min_length=1,
        max_length=MAX_STATEMENTS,
    )
    region: str | None = Field(
        default=None,
        description="The region the deployer works in, sent as the aws:RequestedRegion "
        "context key (policies that allow only some regions then answer for this one). "
        "Absent: no region context.",
        max_length=32,
        pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$",
    )


class GcpPermissions(Model):
    """What a GCP credential must be allowed on its project (projects.testIamPermissions)."""

    permissions: list[str] = _strings(
        "IAM permissions on the credential's project (container.clusters.create).",
        "A GCP IAM permission.",
        GCP_PERMISSION,
        256,
    )


class AzurePermissions(Model):
    """What an Azure credential must be allowed (Microsoft.Authorization permissions)."""

    actions: list[str] = _strings(
        "Azure RBAC actions (Microsoft.ContainerService/managedClusters/write; wildcards allowed).",
        "An Azure RBAC action.",
        AZURE_ACTION,
        512,
    )
    resource_group: str | None = Field(
        default=None,
        description="A resource group of the credential's subscription the actions are "
        "needed in. Absent: the subscription.",
        pattern=RESOURCE_GROUP,
        max_length=90,
    )


class ScalewayPermissions(Model):
    """What a Scaleway credential's policies must grant (permission-set names)."""

    permission_sets: list[str] = _strings(
        "Scaleway permission-set names (KubernetesFullAccess, InstancesFullAccess) the "
        "API key's bearer must hold on the credential's project.",
        "A Scaleway permission-set name.",
        SCALEWAY_PERMISSION_SET,
        128,
    )


class PermissionSetSpec(Model):
    """What a deployer needs, per provider. At least one provider block."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.aws) || has(self.gcp) || has(self.azure) || "
                    "has(self.scaleway)",
                    "message": "needs at least one of aws, gcp, azure, scaleway",
                }
            ]
        }
    )

    description: str | None = Field(
        default=None, description="Free text for people: who needs this and why.", max_length=1024
    )
    aws: AwsPermissions | None = Field(default=None, description="Needs of AWS credentials.")
    gcp: GcpPermissions | None = Field(default=None, description="Needs of GCP credentials.")
    azure: AzurePermissions | None = Field(default=None, description="Needs of Azure credentials.")
    scaleway: ScalewayPermissions | None = Field(
        default=None, description="Needs of Scaleway credentials."
    )


class PermissionSet(Model):
    """What a deployer needs a credential to be allowed to do (admins only)."""

    api_version: str = Field(default="cloudcred.io/v1alpha1")
    kind: str = Field(default="PermissionSet")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: PermissionSetSpec


SetName = Annotated[
    str,
    Field(description="The name of a PermissionSet.", max_length=253, pattern=DNS_SUBDOMAIN),
]


def permission_sets_field(whose: str) -> list[str] | None:
    """``spec.permissionSets`` of a CloudCredential or a Cluster."""
    return Field(
        default=None,
        description=f"PermissionSets (cluster-scoped) whose needs {whose}; the operator "
        "checks them with the provider (condition PermissionsSufficient on the credential). "
        "Does not change the credential's revision.",
        max_length=MAX_NAMED_SETS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


# -- what the check reports (the credential's status.permissions) ------------------------

MAX_LISTED_MISSING = 64  # per set, in status; missingCount is always exact
MAX_LISTED_MISSING_TOTAL = 256  # over every set: status stays small (each need <= 512)
MAX_NEED_LENGTH = 512
MAX_REPORTED_SETS = 2 * MAX_NAMED_SETS  # the credential's own and its clusters'


class SetResult(Model):
    """How one PermissionSet fared."""

    name: str = Field(description="The PermissionSet.", max_length=253)
    sufficient: Literal["True", "False", "Unknown"] = Field(
        description="True: every need is allowed; False: some are not (missing); Unknown: "
        "the check could not say (reason)."
    )
    reason: str = Field(description="Why, as a CamelCase word (see the README).",
                        max_length=64)  # fmt: skip
    message: str | None = Field(default=None, description="Why, in words.", max_length=1024)
    checked: int = Field(description="How many needs were checked (action and resource).", ge=0)
    missing_count: int = Field(description="How many are missing (always exact).", ge=0)
    missing: (
        list[Annotated[str, Field(max_length=MAX_NEED_LENGTH, description="A need.")]] | None
    ) = Field(
        default=None,
        description=f"What is missing, sorted: at most {MAX_LISTED_MISSING} per set and "
        f"{MAX_LISTED_MISSING_TOTAL} over all sets (missingCount has them all; a need "
        f"longer than {MAX_NEED_LENGTH} characters is cut). An AWS need on a resource "
        "reads 'ACTION on ARN'; an explicit Deny adds ' (denied)'.",
        max_length=MAX_LISTED_MISSING,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )


class PermissionsStatus(Model):
    """The last permission check of the credential."""

    revision: str | None = Field(
        default=None, description="The credential revision that was checked.", max_length=64
    )
    checked_time: datetime | None = Field(
        default=None, description="When the provider was last asked."
    )
    sets: list[SetResult] | None = Field(
        default=None,
        description="One entry per PermissionSet named by the credential or by a Cluster "
        "bound to it, sorted by name.",
        max_length=MAX_REPORTED_SETS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
