"""The CredentialBoundary kind: which cloud accounts and identities the credentials of
some namespaces may use. Cluster-scoped: only cluster admins write them.

In a namespace that a boundary selects, a provider whose block the boundary lacks is
not allowed at all; a present block constrains only the lists it has (``aws: {}``
allows any AWS account). A namespace selected by several boundaries must satisfy each.
The ValidatingAdmissionPolicy ``cloudcred-credential-boundary`` checks what a spec
shows; the operator checks again before every use (``cloudcred.boundary``).
"""

from __future__ import annotations

from pydantic import Field

from cloudcred.api.common import DNS_SUBDOMAIN, UUID, LabelSelector, Model

AWS_ACCOUNT_ID = r"^[0-9]{12}$"
# An exact role ARN, or a prefix of one ending in "*" (nothing else is a wildcard).
AWS_ROLE_ARN_PATTERN = (
    r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]*[*]?$"
)
GCP_PROJECT_ID = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"
# Enough for any real boundary, and small enough for the API server's CEL cost limits.
MAX_ITEMS = 256


def _ids(description: str, item: str, pattern: str, max_length: int) -> list[str] | None:
    return Field(
        default=None,
        description=description,
        min_length=1,
        max_length=MAX_ITEMS,
        json_schema_extra={
            "items": {
                "type": "string",
                "description": item,
                "maxLength": max_length,
                "pattern": pattern,
            },
            "x-kubernetes-list-type": "set",
        },
    )


class AwsBoundary(Model):
    """Which AWS accounts and roles are allowed. Empty ({}): any."""

    account_ids: list[str] | None = _ids(
        "AWS accounts (12 digits) credentials may use: the account of spec.aws.roleArn "
        "(checked at admission), and of a static key as STS GetCallerIdentity reports it "
        "(checked by the operator before the key is used).",
        "An AWS account id.",
        AWS_ACCOUNT_ID,
        12,
    )
    role_arns: list[str] | None = _ids(
        "Roles credentials may assume: each an exact role ARN, or a prefix ending in '*' "
        "(arn:aws:iam::123456789012:role/team-a-* allows every role whose ARN starts with "
        "arn:aws:iam::123456789012:role/team-a-). '*' is a wildcard only at the end. When "
        "set, static keys are not allowed (a key is not a role).",
        "A role ARN, or a prefix of one ending in '*'.",
        AWS_ROLE_ARN_PATTERN,
        2048,
    )
    rotation_identity_secret: str | None = Field(
        default=None,
        description="A Secret in the operator's namespace (keys accessKeyId and "
        "secretAccessKey) of an IAM identity the admins own that manages the keys of the "
        "selected namespaces' IAM users: automatic rotation there lists, creates, "
        "deactivates and deletes keys with it (iam:ListAccessKeys, CreateAccessKey, "
        "UpdateAccessKey, DeleteAccessKey, GetAccessKeyLastUsed on those users), so the "
        "tenants' keys need no rights over keys. Absent: each key manages its own.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class GcpBoundary(Model):
    """Which GCP projects are allowed. Empty ({}): any."""

    projects: list[str] | None = _ids(
        "Project ids: the project of spec.gcp.serviceAccountEmail "
        "(name@PROJECT.iam.gserviceaccount.com, checked at admission) or the project of "
        "a service-account key's client_email, in the same form (checked by the operator "
        "before the key is used and on the account the token exchange authenticated; the "
        "key's project_id is free text and not read).",
        "A GCP project id.",
        GCP_PROJECT_ID,
        30,
    )
    rotation_identity_secret: str | None = Field(
        default=None,
        description="A Secret in the operator's namespace (key key.json: a service-account "
        "key file) of a service account the admins own that manages the keys of the "
        "selected namespaces' service accounts: automatic rotation there lists, creates "
        "and deletes keys with it (iam.serviceAccountKeys.list, get, create, delete on "
        "those service accounts), so the tenants' keys need no rights over keys. Absent: "
        "each key manages its own.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class AzureBoundary(Model):
    """Which Entra tenants and Azure subscriptions are allowed. Empty ({}): any."""

    tenant_ids: list[str] | None = _ids(
        "Tenant ids (UUIDs) allowed in spec.azure.tenantId.", "A tenant id.", UUID, 36
    )
    subscription_ids: list[str] | None = _ids(
        "Subscription ids (UUIDs) allowed in spec.azure.subscriptionId.",
        "A subscription id.",
        UUID,
        36,
    )
    rotation_identity_secret: str | None = Field(
        default=None,
        description="A Secret in the operator's namespace (keys clientId and clientSecret) "
        "of an application the admins own, in the same tenant, allowed to manage the "
        "selected namespaces' applications (Microsoft Graph Application.ReadWrite.All, or "
        "an owner of each): automatic rotation there lists, adds and removes client "
        "secrets with it, so the tenants' applications need no rights over themselves. "
        "Absent: each application manages its own.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class ScalewayBoundary(Model):
    """Which Scaleway organizations are allowed. Empty ({}): any."""

    organization_ids: list[str] | None = _ids(
        "Organization ids (UUIDs). When set, spec.scaleway.organizationId is required and "
        "must be one of them (the operator checks that the project belongs to it).",
        "An organization id.",
        UUID,
        36,
    )
    rotation_identity_secret: str | None = Field(
        default=None,
        description="A Secret in the operator's namespace (keys accessKey and secretKey) of "
        "an API key the admins own whose bearer holds IAMManager: automatic rotation of "
        "Scaleway keys in the selected namespaces runs only with it (managing API keys "
        "takes IAMManager, administration of the whole organization, which a key tenants "
        "hold must not have). Absent: Scaleway keys there are not rotated automatically.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class CredentialBoundarySpec(Model):
    """The namespaces this boundary applies to and what their credentials may use."""

    namespace_selector: LabelSelector = Field(
        description="Namespaces this boundary applies to, as a label selector on namespaces "
        "(matchLabels and matchExpressions with In, NotIn, Exists, DoesNotExist). {}: "
        "every namespace."
    )
    aws: AwsBoundary | None = Field(
        default=None,
        description="AWS is allowed in the selected namespaces, within these lists. Absent: "
        "no AWS credential is allowed there.",
    )
    gcp: GcpBoundary | None = Field(
        default=None,
        description="GCP is allowed in the selected namespaces, within these lists. Absent: "
        "no GCP credential is allowed there.",
    )
    azure: AzureBoundary | None = Field(
        default=None,
        description="Azure is allowed in the selected namespaces, within these lists. "
        "Absent: no Azure credential is allowed there.",
    )
    scaleway: ScalewayBoundary | None = Field(
        default=None,
        description="Scaleway is allowed in the selected namespaces, within these lists. "
        "Absent: no Scaleway credential is allowed there.",
    )


class CredentialBoundary(Model):
    """What the CloudCredentials of the selected namespaces may use (admins only)."""

    api_version: str = Field(default="cloudcred.io/v1alpha1")
    kind: str = Field(default="CredentialBoundary")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: CredentialBoundarySpec
