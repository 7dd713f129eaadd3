"""The Cluster kind: a cluster deployed with one CloudCredential.

Cluster API also has a ``Cluster`` kind: use ``clusters.cloudcred.io`` in kubectl and
in code.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict, Field, JsonValue

from cloudcred.api.common import DNS_LABEL, DNS_SUBDOMAIN, Condition, Model, Provider
from cloudcred.api.permissions import SetName, permission_sets_field

# What a region name looks like for each provider, e.g. us-east-1, europe-west1,
# westeurope, fr-par.
REGION_PATTERNS: dict[Provider, tuple[str, str]] = {
    Provider.AWS: (r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$", "us-east-1"),
    Provider.GCP: (r"^[a-z]+-[a-z]+[0-9]{1,2}$", "europe-west1"),
    Provider.AZURE: (r"^[a-z]+[0-9]?$", "westeurope"),
    Provider.SCALEWAY: (r"^[a-z]{2}-[a-z]{3}$", "fr-par"),
}


class DeployMode(StrEnum):
    OPERATOR = "Operator"
    EXTERNAL = "External"


class CredentialRef(Model):
    """Which CloudCredential the cluster uses."""

    name: str = Field(
        description="Name of the CloudCredential.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the CloudCredential; defaults to the Cluster's own. "
        "Another namespace works only where the credential's spec.allowedNamespaces "
        "admits this Cluster's namespace.",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )


def _spec_rules() -> list[JsonValue]:
    delivery: JsonValue = {
        "rule": "!has(self.credentialsSecret) || !has(self.deploy) || self.deploy == 'Operator'",
        "message": "is written by the operator's deploy step: it needs deploy: Operator",
        "fieldPath": ".credentialsSecret",
    }
    return [*_region_rules(), delivery]


def _region_rules() -> list[JsonValue]:
    return [
        {
            "rule": f"self.provider != '{provider}' || self.region.matches('{pattern}')",
            "message": f"not a region name of {provider} (for example {example})",
            "fieldPath": ".region",
        }
        for provider, (pattern, example) in REGION_PATTERNS.items()
    ]


class ClusterSpec(Model):
    """The desired cluster, as far as its credentials are concerned."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _spec_rules()})

    provider: Provider = Field(
        description="Cloud provider of the cluster: AWS, GCP, AZURE or SCALEWAY. Must match "
        "the credential's provider."
    )
    region: str = Field(
        description="Region the cluster runs in, in the provider's naming "
        "(us-east-1, europe-west1, westeurope, fr-par).",
        min_length=2,
        max_length=32,
        pattern=r"^[a-z0-9-]+$",
    )
    credential_ref: CredentialRef = Field(description="The CloudCredential this cluster uses.")
    deploy: DeployMode = Field(
        default=DeployMode.OPERATOR,
        description="Who deploys the cluster when its credential changes. Operator: "
        "cloudcred's own deploy step. External: another system (Cluster API, a Terraform "
        "runner, Argo CD) reads the cloudcred.io/redeploy-revision annotation and reports "
        "back in status.deployedRevision.",
    )
    credentials_secret: CredentialsSecret | None = Field(
        default=None,
        description="Opt-in: keep a Secret of this name in the Cluster's namespace with the "
        "credential in the provider's standard form (AWS credentials/config files and "
        "AWS_* variables, GCP credentials.json, AZURE_*/ARM_* or SCW_* variables), "
        "annotated with its revision. Written by the operator's deploy step only, so it "
        "changes exactly at the cluster's next deployment; an AWS role is delivered as "
        "short-lived session credentials, renewed before they expire.",
    )
    permission_sets: list[SetName] | None = permission_sets_field("this cluster's deployer has")


class CredentialsSecret(Model):
    """Where the operator delivers the credential for the cluster's deployer."""

    name: str = Field(
        description="Name of the Secret, in the Cluster's namespace, that the operator "
        "keeps (and owns): the credential in the provider's standard form, written at "
        "each deployment.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class BoundCredential(Model):
    """The credential a cluster is bound to, with its revision at binding time."""

    namespace: str = Field(description="Namespace of the CloudCredential.", max_length=63)
    name: str = Field(description="Name of the CloudCredential.", max_length=253)
    revision: str | None = Field(
        default=None, description="The credential's current revision.", max_length=64
    )


class DeployFailure(Model):
    """The operator's deploy step could not deploy a revision (kept across restarts)."""

    revision: str = Field(description="The credential revision that failed.", max_length=64)
    message: str = Field(description="Why, in words.", max_length=2048)
    attempts: int = Field(description="Failed attempts at this revision.", ge=1)
    last_attempt_time: datetime = Field(description="When the last attempt failed.")


class ClusterStatus(Model):
    """What the operator observed about the cluster's credential."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes.", ge=0
    )
    credential: BoundCredential | None = Field(
        default=None, description="The credential the cluster is bound to."
    )
    deployed_revision: str | None = Field(
        default=None,
        description="Credential revision of the cluster's last deployment. Written by the "
        "operator's deploy step, or by an external deployer (spec.deploy: External).",
        max_length=64,
    )
    last_deployed_time: datetime | None = Field(
        default=None, description="When the cluster was last deployed."
    )
    deploy_failure: DeployFailure | None = Field(
        default=None,
        description="Set by the operator's deploy step (spec.deploy: Operator) while "
        "deploying the current revision fails; retried with a growing delay from "
        "lastAttemptTime, and removed by the next deployment.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="The summary in the kstatus convention, exactly one True: Ready (Ready, "
        "ExternalDeployPending), Reconciling (work under way: CredentialNotReady, "
        "RevisionChanged, NotDeployed), Stalled (needs a person: CredentialNotFound, "
        "ProviderMismatch, NamespaceNotAllowed, CredentialDeleting, DeployFailed, "
        "CredentialNotVerified). The details: CredentialBound (Bound, CredentialNotFound, "
        "ProviderMismatch, NamespaceNotAllowed, CredentialDeleting); RedeployPending "
        "(RevisionChanged, NotDeployed, DeployFailed, UpToDate, RolloutBlocked).",
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class Cluster(Model):
    """A cluster and the credential it is deployed with."""

    api_version: str = Field(default="cloudcred.io/v1alpha1")
    kind: str = Field(default="Cluster")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: ClusterSpec
    status: ClusterStatus | None = None
