"""Whether a credential stays inside the CredentialBoundaries of its namespace: plain
functions, no I/O.

The admission policy ``cloudcred-credential-boundary`` checks what a spec shows; the
operator asks ``violation`` again before every use of a credential (a check, a
deployment, a delivery), also with what only the provider or the Secret tells: the
account a static AWS key belongs to, the project of a GCP key. Both sides follow the
same rules:

- a boundary applies to the namespaces its ``namespaceSelector`` selects;
- there, a provider whose block the boundary lacks is not allowed at all, and a present
  block constrains only the lists it has;
- a namespace selected by several boundaries must satisfy each of them;
- no boundary selects the namespace: nothing is constrained.

Messages name the boundary, the field and what is allowed; they carry only public
identifiers (account ids, ARNs, project and tenant ids), never a secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from cloudcred.api.boundary import CredentialBoundarySpec
from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.bindings import selector_matches

GCP_EMAIL_SUFFIX = ".iam.gserviceaccount.com"
_LISTED = 10  # allowed values named in one message


@dataclass(frozen=True)
class Boundary:
    """A CredentialBoundary as the operator keeps it."""

    name: str
    spec: CredentialBoundarySpec

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Boundary:
        return cls(
            name=str(body["metadata"]["name"]),
            spec=CredentialBoundarySpec.model_validate(body.get("spec") or {}),
        )

    def selects(self, namespace_labels: Mapping[str, str]) -> bool:
        selector = self.spec.namespace_selector.model_dump(by_alias=True, exclude_none=True)
        return selector_matches(selector, dict(namespace_labels))


def role_arn_allowed(role_arn: str, patterns: Iterable[str]) -> bool:
    """An exact ARN, or a prefix ending in '*' (the only wildcard, as in the policy's CEL
    ``startsWith``)."""
    return any(
        role_arn.startswith(pattern[:-1]) if pattern.endswith("*") else role_arn == pattern
        for pattern in patterns
    )


def arn_account(arn: str) -> str | None:
    """The account of an IAM or STS ARN (arn:aws:iam::123456789012:user/x)."""
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4] else None


def gcp_email_project(email: str) -> str | None:
    """The project of a user-managed service account (name@PROJECT.iam.gserviceaccount.com)."""
    name, _, domain = email.partition("@")
    if not name or not domain.endswith(GCP_EMAIL_SUFFIX):
        return None
    return domain[: -len(GCP_EMAIL_SUFFIX)] or None


def gcp_key_email(key: SecretStr | None) -> str | None:
    """The ``client_email`` of a service-account JSON key, the identity Google
    authenticates with the key's signature (its ``project_id`` is free text anyone may
    edit): "" when it names none (outside any list of projects), None when it is not a
    JSON object (the provider check says what is wrong with it, before sending
    anything)."""
    if key is None:
        return None
    try:
        info = json.loads(key.get_secret_value())
    except (ValueError, RecursionError):  # RecursionError: "[[[[...", nested too deeply
        return None
    if not isinstance(info, dict):
        return None
    email = info.get("client_email")
    return email if isinstance(email, str) else ""


def _allowed(values: Iterable[str]) -> str:
    items = sorted(values)
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _same_uuid(value: str, allowed: Iterable[str]) -> bool:
    return value.lower() in {item.lower() for item in allowed}


def _check_one(
    boundary: Boundary,
    spec: CloudCredentialSpec,
    namespace: str,
    reported_account: str | None,
    gcp_email: str | None,
) -> str | None:
    where = f"CredentialBoundary {boundary.name} (namespace {namespace})"
    rules = boundary.spec
    provider = str(spec.provider)
    if provider == "AWS" and spec.aws is not None:
        if rules.aws is None:
            return f"spec.provider: AWS is not allowed by {where}"
        aws = spec.aws
        accounts, roles = rules.aws.account_ids, rules.aws.role_arns
        if aws.role_arn:
            account = arn_account(aws.role_arn)
            if accounts is not None and account not in accounts:
                return (f"spec.aws.roleArn: account {account} is not allowed by {where}; "
                        f"allowed accounts: {_allowed(accounts)}")  # fmt: skip
            if roles is not None and not role_arn_allowed(aws.role_arn, roles):
                return (f"spec.aws.roleArn: {aws.role_arn} is not allowed by {where}; "
                        f"allowed roles: {_allowed(roles)}")  # fmt: skip
        else:
            if roles is not None:
                return (f"spec.aws.accessKeyId: static keys are not allowed by {where}, only "
                        f"roles: {_allowed(roles)}")  # fmt: skip
            known = reported_account is not None
            if accounts is not None and known and reported_account not in accounts:
                return (f"spec.aws.accessKeyId: the key belongs to account "
                        f"{reported_account}, which is not allowed by {where}; allowed "
                        f"accounts: {_allowed(accounts)}")  # fmt: skip
    elif provider == "GCP" and spec.gcp is not None:
        if rules.gcp is None:
            return f"spec.provider: GCP is not allowed by {where}"
        projects = rules.gcp.projects
        if projects is not None:
            if spec.gcp.service_account_email:
                project = gcp_email_project(spec.gcp.service_account_email)
                if project not in projects:
                    return (f"spec.gcp.serviceAccountEmail: project {project or '(none)'} is "
                            f"not allowed by {where}; allowed projects: "
                            f"{_allowed(projects)}")  # fmt: skip
            elif gcp_email is not None:
                # The project of the service account, never the key's project_id.
                project = gcp_email_project(gcp_email)
                if project not in projects:
                    return (f"spec.gcp.serviceAccountKeyRef: the key's service account "
                            f"{gcp_email or '(none)'} is of project {project or '(none)'}, "
                            f"which is not allowed by {where}; allowed projects: "
                            f"{_allowed(projects)}")  # fmt: skip
    elif provider == "AZURE" and spec.azure is not None:
        if rules.azure is None:
            return f"spec.provider: AZURE is not allowed by {where}"
        tenants, subscriptions = rules.azure.tenant_ids, rules.azure.subscription_ids
        if tenants is not None and not _same_uuid(spec.azure.tenant_id, tenants):
            return (f"spec.azure.tenantId: {spec.azure.tenant_id} is not allowed by {where}; "
                    f"allowed tenants: {_allowed(tenants)}")  # fmt: skip
        if subscriptions is not None and not _same_uuid(spec.azure.subscription_id,
                                                        subscriptions):  # fmt: skip
            return (f"spec.azure.subscriptionId: {spec.azure.subscription_id} is not allowed "
                    f"by {where}; allowed subscriptions: {_allowed(subscriptions)}")  # fmt: skip
    elif provider == "SCALEWAY" and spec.scaleway is not None:
        if rules.scaleway is None:
            return f"spec.provider: SCALEWAY is not allowed by {where}"
        organizations = rules.scaleway.organization_ids
        organization = spec.scaleway.organization_id
        if organizations is not None and (
            organization is None or not _same_uuid(organization, organizations)
        ):
            found = "is required" if organization is None else f"{organization} is not allowed"
            return (f"spec.scaleway.organizationId: {found} by {where}; allowed "
                    f"organizations: {_allowed(organizations)}")  # fmt: skip
    return None


def violation(
    spec: CloudCredentialSpec,
    namespace: str,
    namespace_labels: Mapping[str, str],
    boundaries: Iterable[Boundary],
    reported_account: str | None = None,
    gcp_email: str | None = None,
    default_deny: bool = False,
) -> str | None:
    """Why the credential is outside a boundary of its namespace (a message for users),
    or None when every boundary that selects the namespace allows it.

    ``reported_account``: the AWS account of a static key, as STS reported it;
    ``gcp_email``: the service account of a GCP key (its ``client_email``, or the
    identity the token exchange authenticated). Without them, only what the spec shows
    is checked (as at admission). ``default_deny``: a namespace that no boundary selects
    allows nothing (the installation's ``boundary_default``). Boundaries are checked in
    name order, so the message does not change from one check to the next.
    """
    selected = False
    for boundary in sorted(boundaries, key=lambda b: b.name):
        if boundary.selects(namespace_labels):
            selected = True
            found = _check_one(boundary, spec, namespace, reported_account, gcp_email)
            if found:
                return found
    if default_deny and not selected:
        return (f"no CredentialBoundary selects namespace {namespace}, and this "
                "installation denies what no boundary allows "
                "(CLOUDCRED_BOUNDARY_DEFAULT=Deny)")  # fmt: skip
    return None
