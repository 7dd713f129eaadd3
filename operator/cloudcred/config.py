"""Typed operator settings, read from ``CLOUDCRED_*`` environment variables.

Every setting is logged at start (none of them is a secret). Provider endpoints are
set here and only here: a credential's spec or secret data never chooses where the
operator connects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudcred.providers.base import ProviderSettings

ENV_PREFIX = "CLOUDCRED_"


class SettingsError(ValueError):
    """A CLOUDCRED_* variable has a bad value; the message names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (or glob patterns) to watch, comma-separated; empty: all.",
    )
    log_format: Literal["plain", "full", "json"] = Field(
        default="full", description="Log line format."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    liveness_endpoint: str = Field(
        default="http://0.0.0.0:8080/healthz", description="kopf's liveness probe URL."
    )
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint (all interfaces); 0: off.",
    )
    worker_limit: int = Field(
        default=500,
        ge=1,
        description="Objects kopf handles at the same time (one worker per object, kept "
        "for a second after its last event).",
    )
    watch_timeout: int = Field(
        default=120,
        ge=5,
        le=1800,
        description="Seconds after which the API server ends each watch (it is then "
        "resumed); a watch silent for longer is given up, and /healthz fails when a watch "
        "or a work queue made no progress for twice this plus 30 seconds.",
    )
    relist_interval: float = Field(
        default=300.0,
        ge=10,
        description="Seconds between full LISTs of CloudCredentials, Clusters, labelled "
        "Secrets and Namespaces (they repair what a watch missed) and between looks at "
        "every referenced Secret's labels.",
    )
    permissions_recheck: float = Field(
        default=60.0,
        ge=1,
        description="Seconds between permission checks of a credential that lacks a "
        "permission, or whose check could not say (instead of its verification interval): "
        "a permission granted at the provider is seen within this time.",
    )
    propagation_aws: float = Field(
        default=120.0,
        ge=0,
        description="Seconds a new AWS access key may be refused as "
        "invalid after a rotation made it (IAM is eventually consistent): Propagating, "
        "retried, then InvalidCredentials.",
    )
    propagation_gcp: float = Field(
        default=300.0, ge=0, description="The same for a new GCP service-account key."
    )
    propagation_azure: float = Field(
        default=600.0, ge=0, description="The same for a new Entra ID client secret."
    )
    propagation_scaleway: float = Field(
        default=60.0, ge=0, description="The same for a new Scaleway API key."
    )
    rotation_delete_after: float = Field(
        default=86400.0,
        ge=0,
        description="Seconds an old key stays deactivated (where the provider cannot "
        "deactivate: unused) before automatic rotation deletes it; the grace period "
        "(spec.rotation.gracePeriod) comes before the deactivation.",
    )
    rotation_min_interval: float = Field(
        default=3600.0,
        ge=0,
        description="Least time between the starts of two rotations of one credential, "
        "cloudcred rotate --now included.",
    )
    verification_timeout: float = Field(
        default=10.0, gt=0, description="Seconds one provider check may take."
    )
    verification_concurrency: int = Field(
        default=4, ge=1, description="Provider checks running at the same time."
    )
    retry_max_delay: float = Field(
        default=300.0, gt=0, description="Longest wait between retries of a failed check."
    )
    key_age_limit_days: int = Field(
        default=90, ge=1, description="Static keys older than this get RotationRecommended."
    )
    key_expiry_warning_days: int = Field(
        default=30,
        ge=1,
        description="A static key the provider stops accepting within this many days gets "
        "RotationRecommended with reason ExpiringSoon.",
    )
    aws_region: str = Field(default="us-east-1", description="Region for STS and IAM calls.")
    boundary_default: Literal["Allow", "Deny"] = Field(
        default="Allow",
        description="For a namespace that no CredentialBoundary selects: Allow (any "
        "account, as without boundaries) or Deny (its credentials are OutsideBoundary "
        "and never used until a boundary selects the namespace).",
    )
    operator_namespace: str | None = Field(
        default=None,
        description="Namespace of the installation Secret (cloudcred-installation); "
        "default: the pod's namespace, or default outside a pod.",
    )
    aws_principal_arn: str | None = Field(
        default=None,
        description="The operator's own AWS principal as role trust policies name it "
        "(status.operatorPrincipal, cloudcred trust-policy); default: derived from STS "
        "GetCallerIdentity (an assumed role's ARN without its path).",
        pattern=r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:(iam|sts)::[0-9]{12}:[A-Za-z0-9+=,.@_/-]+$",
    )
    delivery_enabled: bool = Field(
        default=False,
        description="Credential delivery (spec.credentialsSecret of Clusters) in this "
        "installation: off by default; each credential must also opt in "
        "(spec.delivery.enabled).",
    )
    delivery_session_seconds: int = Field(
        default=3600,
        ge=900,
        le=43200,
        description="Lifetime of the AWS session credentials delivered for a role "
        "(spec.credentialsSecret of a Cluster).",
    )
    delivery_refresh_before: int | None = Field(
        default=None,
        ge=60,
        description="Seconds before expiry at which delivered session credentials are "
        "renewed; default: a third of their lifetime.",
    )
    gcp_token_uri: str = Field(
        default="https://oauth2.googleapis.com/token",
        description="The only OAuth token endpoint GCP keys may use.",
    )
    gcp_iam_url: str = Field(
        default="https://iam.googleapis.com",
        description="The GCP IAM API that rotates service-account keys.",
    )
    gcp_resource_manager_url: str = Field(
        default="https://cloudresourcemanager.googleapis.com",
        description="The GCP Cloud Resource Manager API that answers "
        "projects.testIamPermissions (permission checks).",
    )
    azure_authority_host: str | None = Field(
        default=None, description="Microsoft Entra authority host; default: the library's."
    )
    azure_graph_url: str = Field(
        default="https://graph.microsoft.com",
        description="Microsoft Graph URL for rotating Azure client secrets (its token "
        "scope is this URL's /.default).",
        pattern=r"^https://[^/?#\s]+/?$",
    )
    azure_management_url: str = Field(
        default="https://management.azure.com",
        description="Azure Resource Manager URL for permission checks (its token scope is "
        "this URL's /.default).",
        pattern=r"^https://[^/?#\s]+/?$",
    )
    scaleway_api_url: str | None = Field(
        default=None, description="Scaleway API URL; default: the library's."
    )
    scaleway_s3_url: str = Field(
        default="https://s3.fr-par.scw.cloud",
        description="Scaleway Object Storage (S3) URL, where the operator proves that a "
        "Scaleway secret key belongs to its access key (a request signed with both).",
        pattern=r"^https?://[^/?#\s]+/?$",
    )
    scaleway_s3_region: str = Field(
        default="fr-par",
        description="The region of CLOUDCRED_SCALEWAY_S3_URL, which its signatures name.",
        pattern=r"^[a-z]{2}-[a-z]{3}$",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if field.annotation == list[str]:
                values[name] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(issue['loc'][0]).upper()}: {issue['msg']}"
                for issue in error.errors()
            )
            raise SettingsError(problems) from None

    def propagation_window(self, provider: str) -> float:
        """Seconds a key a rotation has just made may be refused while it propagates."""
        return float(getattr(self, f"propagation_{provider.lower()}", 0.0))

    def provider_settings(self) -> ProviderSettings:
        return ProviderSettings(
            timeout_seconds=self.verification_timeout,
            aws_region=self.aws_region,
            gcp_token_uri=self.gcp_token_uri,
            gcp_iam_url=self.gcp_iam_url,
            gcp_resource_manager_url=self.gcp_resource_manager_url,
            azure_management_url=self.azure_management_url,
            azure_authority_host=self.azure_authority_host,
            azure_graph_url=self.azure_graph_url,
            scaleway_api_url=self.scaleway_api_url,
            scaleway_s3_url=self.scaleway_s3_url,
            scaleway_s3_region=self.scaleway_s3_region,
            session_seconds=self.delivery_session_seconds,
            aws_principal_arn=self.aws_principal_arn,
        )

    @property
    def refresh_before(self) -> float:
        """Seconds before expiry to renew delivered session credentials."""
        if self.delivery_refresh_before is not None:
            return float(min(self.delivery_refresh_before, self.delivery_session_seconds - 10))
        return self.delivery_session_seconds / 3
