"""The CloudCredential kind: one set of credentials for one cloud provider.

Secret values never live in the spec: the spec names Secret keys, and the
``x-kubernetes-validations`` rules below (CEL, checked by the API server) make sure
the provider block is complete and consistent before the object is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic.config import JsonDict

from cloudcred.api.common import (
    UUID,
    Condition,
    LabelSelector,
    Model,
    ObjectRef,
    Provider,
    SecretKeyRef,
)
from cloudcred.api.permissions import PermissionsStatus, SetName, permission_sets_field

# AWS's rules: a path of "/" or "/segment/.../" (segments of [\w+=,.@-]), then a role
# name of 1-64 of [\w+=,.@-]. "role//" and "role/a//b" are refused here, not retried
# forever against STS.
AWS_ROLE_ARN = (
    r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::[0-9]{12}:role"
    r"(/[A-Za-z0-9_+=,.@-]+)*/[A-Za-z0-9_+=,.@-]{1,64}$"
)
AWS_ACCESS_KEY_ID = r"^(AKIA|ASIA)[A-Z0-9]{16}$"
GCP_SERVICE_ACCOUNT_EMAIL = r"^[a-z0-9-]{1,63}@[a-z0-9.-]{1,190}\.gserviceaccount\.com$"
GCP_WORKLOAD_IDENTITY_PROVIDER = (
    r"^(//iam\.googleapis\.com/)?projects/[0-9]{1,20}/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}$"
)
SCALEWAY_ACCESS_KEY = r"^SCW[A-Z0-9]{17}$"
# A Go-style duration ("90s", "30m", "1h30m") or "0" for "never".
DURATION = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"
# Rotation ages in days ("90d"), at least one; grace periods in days, hours, minutes and
# seconds ("24h", "7d", "1d12h", "0s").
MAX_AGE = r"^[1-9][0-9]{0,3}d$"
GRACE_PERIOD = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"

# How many clusters status.clusters lists; clusterCount stays exact beyond it.
MAX_LISTED_CLUSTERS = 2000


def _rule(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """A CEL validation rule (x-kubernetes-validations) for the CRD schema."""
    validation: JsonDict = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


class AwsSpec(Model):
    """AWS: an IAM role to assume (preferred) or a static access key."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "has(self.roleArn) != (has(self.accessKeyId) || has(self.secretAccessKeyRef))",
                    "set either roleArn, or accessKeyId with secretAccessKeyRef "
                    "(not both, not neither)",
                ),
                _rule(
                    "!has(self.accessKeyId) || has(self.secretAccessKeyRef)",
                    "required with accessKeyId",
                    ".secretAccessKeyRef",
                ),
            ]
        }
    )

    role_arn: str | None = Field(
        default=None,
        description="IAM role the operator assumes with STS AssumeRole, e.g. "
        "arn:aws:iam::123456789012:role/cloudcred. Preferred over static keys: nothing "
        "long-lived to leak or rotate. The role's trust policy must require the "
        "ExternalId in status.externalId, which the operator determines (cloudcred "
        "trust-policy prints the policy).",
        max_length=2048,
        pattern=AWS_ROLE_ARN,
    )
    access_key_id: str | None = Field(
        default=None,
        description="Access key id of a static key (AKIA... or ASIA...). The public half "
        "only; the secret half is read from secretAccessKeyRef. Optional with "
        "spec.rotation.policy Automatic: the same Secret then holds it under the key "
        "accessKeyId (a spec that names no key id never goes stale as keys rotate).",
        max_length=20,
        pattern=AWS_ACCESS_KEY_ID,
    )
    secret_access_key_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the secret access key that goes with accessKeyId.",
    )


class GcpSpec(Model):
    """GCP: a service-account JSON key, or workload identity federation."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "has(self.serviceAccountKeyRef) != has(self.serviceAccountEmail)",
                    "set either serviceAccountKeyRef, or serviceAccountEmail with "
                    "workloadIdentityProvider (not both, not neither)",
                ),
                _rule(
                    "has(self.serviceAccountEmail) == has(self.workloadIdentityProvider)",
                    "required with serviceAccountEmail, and only with it",
                    ".workloadIdentityProvider",
                ),
            ]
        }
    )

    service_account_key_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a service-account JSON key file.",
    )
    service_account_email: str | None = Field(
        default=None,
        description="Service account to impersonate through workload identity federation, "
        "e.g. deployer@my-project.iam.gserviceaccount.com.",
        max_length=254,
        pattern=GCP_SERVICE_ACCOUNT_EMAIL,
    )
    workload_identity_provider: str | None = Field(
        default=None,
        description="Full resource name of the workload identity pool provider: "
        "projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER.",
        max_length=300,
        pattern=GCP_WORKLOAD_IDENTITY_PROVIDER,
    )


class AzureSpec(Model):
    """Azure: a service principal with a client secret."""

    tenant_id: str = Field(
        description="Microsoft Entra tenant (directory) id, a UUID.", max_length=36, pattern=UUID
    )
    subscription_id: str = Field(
        description="Subscription the clusters are deployed in, a UUID.",
        max_length=36,
        pattern=UUID,
    )
    client_id: str = Field(
        description="Application (client) id of the service principal, a UUID.",
        max_length=36,
        pattern=UUID,
    )
    client_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the service principal's client secret."
    )


class ScalewaySpec(Model):
    """Scaleway: an API key (access key + secret key) scoped to a project."""

    access_key: str = Field(
        description="Access key of the API key: SCW followed by 17 upper-case letters or digits.",
        max_length=20,
        pattern=SCALEWAY_ACCESS_KEY,
    )
    secret_key_ref: SecretKeyRef = Field(
        description="Secret key holding the API key's secret key (a UUID)."
    )
    project_id: str = Field(
        description="Project the clusters are deployed in, a UUID.", max_length=36, pattern=UUID
    )
    organization_id: str | None = Field(
        default=None,
        description="Organization that owns the project, a UUID. Checked when set.",
        max_length=36,
        pattern=UUID,
    )


class VerificationSpec(Model):
    """How the operator checks the credential with its provider."""

    enabled: bool = Field(
        default=True,
        description="Check the credential with its provider. false: no check at all "
        "(Verified is Unknown with reason VerificationDisabled).",
    )
    interval: str = Field(
        default="1h",
        description="How often to check again, as a duration (90s, 30m, 1h), at least 1m; "
        "0 turns periodic checks off (the credential is still checked when it changes).",
        max_length=32,
        pattern=DURATION,
        json_schema_extra={
            "x-kubernetes-validations": [
                # CEL's duration() parses Go durations, like the operator does; a check
                # more often than once a minute would only load the provider.
                _rule(
                    "self == '0' || duration(self) >= duration('1m')",
                    "must be 0 or at least 1m",
                )
            ]
        },
    )


class DeliverySpec(Model):
    """Whether the operator may write this credential into Secrets that Clusters ask
    for (``spec.credentialsSecret``), and for which namespaces."""

    enabled: bool = Field(
        default=False,
        description="Allow delivery: the operator writes the credential (an AWS role: "
        "short-lived session credentials) into the Secret a bound Cluster names in "
        "spec.credentialsSecret. Off by default; the operator's own switch "
        "(CLOUDCRED_DELIVERY_ENABLED) must be on too.",
    )
    allowed_namespaces: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose Clusters may receive the credential, as a label "
        "selector on namespaces (within spec.allowedNamespaces). Absent: only this "
        "credential's own namespace.",
    )
    share_rotating_key: bool = Field(
        default=False,
        description="Under automatic rotation the key may make new keys of its own "
        "identity (it must, to rotate itself): a copy delivered to another namespace "
        "lets that namespace's deployer make long-lived keys no one tracks. Clusters in "
        "other namespaces receive an automatically rotated key only when this is true.",
    )


# An integer, or a percentage of the bound clusters (Kubernetes' int-or-string).
IntOrPercent = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]


class RolloutSpec(Model):
    """How a new revision reaches the bound clusters."""

    max_concurrent: IntOrPercent = Field(
        default="25%",
        description="How many bound clusters may be marked for redeploy and not yet "
        "redeployed at a time: a number (2) or a percentage of the bound clusters (25%, "
        "rounded down, at least 1). The next ones are marked as earlier ones report the "
        "new revision in status.deployedRevision.",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "type(self) == int ? self >= 1 : self.matches('^(100|[1-9][0-9]?)%$')",
                    "must be an integer of at least 1 or a percentage from 1% to 100%",
                )
            ]
        },
    )


class RotationSpec(Model):
    """Who rotates the credential's static key: a person (Manual) or the operator."""

    policy: Literal["Manual", "Automatic"] = Field(
        default="Manual",
        description="Manual: people rotate the key (cloudcred rotate); the operator says "
        "when it is old (RotationRecommended). Automatic: the operator creates a new key "
        "with the credential's own identity when the key is maxAge old (or on `cloudcred "
        "rotate --now`, at most once an hour by default), rolls it out, deactivates the "
        "old key gracePeriod after every cluster uses the new one, and deletes it a second "
        "period later. Static keys only.",
    )
    max_age: str | None = Field(
        default=None,
        description="With Automatic (required there): the key's age at which the operator "
        "rotates it, in days, at least 1d (for example 90d).",
        max_length=5,
        pattern=MAX_AGE,
    )
    grace_period: str = Field(
        default="24h",
        description="How long the old key stays active after every cluster uses the new "
        "one, before it is deactivated (AWS) and, the installation's second period later, "
        "deleted: days, hours, minutes, seconds (24h, 7d, 0s).",
        max_length=32,
        pattern=GRACE_PERIOD,
        json_schema_extra={
            "x-kubernetes-validations": [_rule("self != ''", "must not be empty (0s: none)")]
        },
    )


def _rotation_rules() -> list[JsonValue]:
    """Automatic rotation needs an age, and a static key to rotate."""
    static_key = (
        "(self.provider == 'AWS' && has(self.aws) && has(self.aws.secretAccessKeyRef)) || "
        "(self.provider == 'GCP' && has(self.gcp) && has(self.gcp.serviceAccountKeyRef)) || "
        "self.provider == 'AZURE' || self.provider == 'SCALEWAY'"
    )
    automatic = "has(self.rotation) && self.rotation.policy == 'Automatic'"
    key_id_in_spec = (
        "self.provider != 'AWS' || !has(self.aws) || !has(self.aws.secretAccessKeyRef) || "
        "has(self.aws.accessKeyId)"
    )
    return [
        _rule(f"({key_id_in_spec}) || ({automatic})",
              "is required unless spec.rotation.policy is Automatic (then the Secret of "
              "secretAccessKeyRef holds it under the key accessKeyId)", ".aws.accessKeyId"),
        _rule(f"!({automatic}) || has(self.rotation.maxAge)",
              "is required when spec.rotation.policy is Automatic", ".rotation.maxAge"),
        _rule(f"!({automatic}) || {static_key}",
              "Automatic rotates static keys only: an AWS role, GCP workload identity or "
              "another identity without a key needs no rotation", ".rotation.policy"),
    ]  # fmt: skip


def _provider_block_rules() -> list[JsonValue]:
    """One rule per provider: its block is present exactly when it is the provider."""
    rules: list[JsonValue] = []
    for provider, block in (
        (Provider.AWS, "aws"),
        (Provider.GCP, "gcp"),
        (Provider.AZURE, "azure"),
        (Provider.SCALEWAY, "scaleway"),
    ):
        rules.append(
            _rule(
                f"has(self.{block}) == (self.provider == '{provider}')",
                f"required when spec.provider is {provider}, and not allowed otherwise",
                f".{block}",
            )
        )
    return rules


class CloudCredentialSpec(Model):
    """The desired credential: which provider, how to authenticate, who may use it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [*_provider_block_rules(), *_rotation_rules()]
        }
    )

    provider: Provider = Field(
        description="Cloud provider: AWS, GCP, AZURE or SCALEWAY. Immutable: create a new "
        "CloudCredential to change it.",
        json_schema_extra={
            "x-kubernetes-validations": [
                _rule(
                    "self == oldSelf",
                    "is immutable; create a new CloudCredential instead",
                )
            ]
        },
    )
    description: str | None = Field(
        default=None,
        description="Free text for people, e.g. 'Production account'. Does not change the "
        "credential's revision.",
        max_length=1024,
    )
    aws: AwsSpec | None = Field(default=None, description="AWS settings (provider AWS).")
    gcp: GcpSpec | None = Field(default=None, description="GCP settings (provider GCP).")
    azure: AzureSpec | None = Field(default=None, description="Azure settings (provider AZURE).")
    scaleway: ScalewaySpec | None = Field(
        default=None, description="Scaleway settings (provider SCALEWAY)."
    )
    allowed_namespaces: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose Clusters may use this credential, as a label selector "
        "on namespaces. Absent: only this credential's own namespace. {}: every namespace.",
    )
    verification: VerificationSpec | None = Field(
        default=None, description="How and how often the operator checks the credential."
    )
    delivery: DeliverySpec | None = Field(
        default=None,
        description="Whether bound Clusters may receive the credential's secret values in a "
        "Secret of their own (spec.credentialsSecret). Absent: never. Does not change the "
        "credential's revision.",
    )
    rollout: RolloutSpec | None = Field(
        default=None,
        description="How a new revision is rolled out to the bound clusters (pacing). "
        "Does not change the credential's revision.",
    )
    rotation: RotationSpec | None = Field(
        default=None,
        description="Who rotates the static key (absent: Manual). Does not change the "
        "credential's revision; a rotation does.",
    )
    permission_sets: list[SetName] | None = permission_sets_field(
        "every Cluster using this credential has"
    )


class RolloutStatus(Model):
    """How far the current revision has reached the bound clusters."""

    revision: str = Field(description="The revision being rolled out.", max_length=64)
    updated: int = Field(description="Bound clusters deployed with this revision.", ge=0)
    total: int = Field(description="Bound clusters in all.", ge=0)
    blocked: str | None = Field(
        default=None,
        description="Why no more clusters are marked for this revision (it failed "
        "verification, or a deployment failed). Each bound cluster reads it.",
        max_length=2048,
    )


class KeyStatus(Model):
    """What the provider says about the static key in use (manual or automatic)."""

    id: str | None = Field(default=None, description="The key's public id.", max_length=256)
    created_time: datetime | None = Field(
        default=None, description="When the provider created the key."
    )
    last_used_time: datetime | None = Field(
        default=None,
        description="When the provider last saw the key used (AWS; absent where the "
        "provider does not say, or it was never used).",
    )
    expiry_time: datetime | None = Field(
        default=None,
        description="When the provider stops accepting the key (GCP key validity, Azure "
        "secret end date, Scaleway expiry); absent: no expiry.",
    )
    never_used_days: int | None = Field(
        default=None,
        description="Days since the key was created without the provider seeing it used "
        "(AWS); absent once used.",
        ge=0,
    )


class RotationStatus(Model):
    """Where an automatic rotation stands. The phase is written before each provider
    call, so that an operator stopped between two steps resumes without making a second
    key, losing the new one or retiring a key still in use."""

    phase: Literal["Idle", "Creating", "RollingOut", "Retiring", "Deleting", "Failed"] = Field(
        default="Idle",
        description="Idle; Creating (a new key is being made); RollingOut (the new key is "
        "in use, waiting for every cluster); Retiring (every cluster uses it: gracePeriod "
        "later the old key is deactivated where the provider can, and deleted after the "
        "installation's second period); Deleting (the old key is being deleted); Failed (a "
        "step failed: see message; retried).",
    )
    key_id: str | None = Field(
        default=None,
        description="The key the operator made and the credential now uses, held in "
        "secretName (the spec's key is used until the first rotation).",
        max_length=256,
    )
    secret_name: str | None = Field(
        default=None,
        description="The Secret the operator owns that holds keyId.",
        max_length=253,
    )
    pending_key_id: str | None = Field(
        default=None,
        description="A key made and saved, not yet in use (Creating).",
        max_length=256,
    )
    previous_key_id: str | None = Field(
        default=None, description="The key being retired.", max_length=256
    )
    replaces: str | None = Field(
        default=None,
        description="The spec's own key (public id|Secret name) that keyId replaces: when "
        "the spec names another key (rotated by hand), the spec's key is used again.",
        max_length=512,
    )
    from_revision: str | None = Field(
        default=None,
        description="The credential's revision before the switch to the new key.",
        max_length=64,
    )
    known_key_ids: list[Annotated[str, Field(max_length=256, description="A key id.")]] | None = (
        Field(
            default=None,
            description="No longer written: the operator keeps the identity's keys before a "
            "create in its own record (in its namespace), not in status.",
            max_length=16,
        )
    )
    unknown_key_ids: list[Annotated[str, Field(max_length=256, description="A key id.")]] | None = (
        Field(
            default=None,
            description="Keys of the identity made since this rotation began that no "
            "recorded create of the operator returned (someone else's, or the key of a "
            "create whose answer was lost): reported, never deactivated or deleted.",
            max_length=16,
        )
    )
    reason: str | None = Field(default=None, description="Why the last step failed.", max_length=64)
    message: str | None = Field(default=None, description="Where the rotation stands, in words.",
                                max_length=1024)  # fmt: skip
    started_time: datetime | None = Field(default=None, description="When this rotation began.")
    rolled_out_time: datetime | None = Field(
        default=None, description="When every cluster used the new key (Retiring began)."
    )
    deactivated_time: datetime | None = Field(
        default=None,
        description="When the old key was deactivated (or, where the provider cannot, "
        "found unused), gracePeriod after rolledOutTime; it is deleted the installation's "
        "second period later.",
    )
    last_rotation_time: datetime | None = Field(
        default=None, description="When the last rotation finished (the old key deleted)."
    )
    next_rotation_time: datetime | None = Field(
        default=None, description="When the key will be maxAge old (Automatic)."
    )
    requested: str | None = Field(
        default=None,
        description="The last cloudcred.io/rotate-now value acted on.",
        max_length=64,
    )
    abandoned: bool | None = Field(
        default=None,
        description="True while a stopped rotation goes back to the key in use before it "
        "(policy no longer Automatic, the spec names another key, the new key refused for "
        "good): the key it made is retired once no cluster uses it; the old key is never "
        "touched.",
    )


class CloudCredentialStatus(Model):
    """What the operator observed. Never holds secret values."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes.", ge=0
    )
    public_id: str | None = Field(
        default=None,
        description="The public part of the credential: access key id, role ARN, "
        "client id or service-account e-mail.",
        max_length=2048,
    )
    identity: str | None = Field(
        default=None,
        description="Who the provider says the credential is (e.g. the caller ARN).",
        max_length=2048,
    )
    revision: str | None = Field(
        default=None,
        description="v1- and 12 hex digits of a hash over the provider block and the "
        "referenced secret values. Changes when access changes; reveals nothing.",
        max_length=64,
    )
    external_id: str | None = Field(
        default=None,
        description="AWS roles: the ExternalId the operator sends when it assumes the role, "
        "derived from the namespace's UID and the credential's name with the installation's "
        "key. The role's trust policy must require it (cloudcred trust-policy).",
        max_length=64,
    )
    operator_principal: str | None = Field(
        default=None,
        description="AWS roles: the operator's own AWS principal, which the role's trust "
        "policy must allow to call sts:AssumeRole and sts:TagSession.",
        max_length=2048,
    )
    last_verified_time: datetime | None = Field(
        default=None, description="When the provider last confirmed the credential."
    )
    key: KeyStatus | None = Field(
        default=None, description="What the provider says about the static key in use."
    )
    rotation: RotationStatus | None = Field(
        default=None, description="Automatic rotation (spec.rotation.policy: Automatic)."
    )
    key_created_time: datetime | None = Field(
        default=None, description="When the static key was created (AWS, when readable)."
    )
    clusters: list[ObjectRef] | None = Field(
        default=None,
        description="Clusters bound to this credential, sorted by namespace and name. "
        f"At most {MAX_LISTED_CLUSTERS}; see clustersTruncated.",
        max_length=MAX_LISTED_CLUSTERS,
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    clusters_truncated: bool | None = Field(
        default=None,
        description="True when more clusters are bound than status.clusters can list.",
    )
    cluster_count: int | None = Field(
        default=None, description="How many clusters are bound (always exact).", ge=0
    )
    unused_since: datetime | None = Field(
        default=None, description="When the last bound cluster went away; empty while in use."
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="Progress of the current revision across bound clusters."
    )
    permissions: PermissionsStatus | None = Field(
        default=None,
        description="The last check of the PermissionSets named by the credential and its "
        "bound Clusters (condition PermissionsSufficient).",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="The summary in the kstatus convention, exactly one True: Ready (Ready, "
        "ExternalDeployPending), Reconciling (work under way: NotChecked, SecretNotFound, "
        "ProviderUnreachable, VerificationFailed, RolloutInProgress, RolloutPaused, Deleting), "
        "Stalled (needs a person: a Verified reason such as InvalidCredentials, or "
        "RolloutBlocked). The details: Verified, InUse, RotationRecommended, DeletionBlocked, "
        "RolloutComplete.",
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class CloudCredential(Model):
    """Cloud-provider credentials that Clusters reference."""

    api_version: str = Field(default="cloudcred.io/v1alpha1")
    kind: str = Field(default="CloudCredential")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: CloudCredentialSpec
    status: CloudCredentialStatus | None = None
