"""``cloudcred trust-policy``: what an AWS role must trust for a role credential.

The operator determines each role credential's ExternalId from the installation key and
the credential's namespace UID and name, and records its own principal on the
installation Secret. This command derives both from there, never from the credential's
status (a tenant who may patch ``cloudcredentials/status`` could put an account of their
own there), and turns them into the role's trust policy, or into a CloudFormation
template that creates such a role (the role's name and path are those of
``spec.aws.roleArn``; attach its permissions separately). Two statements:
``sts:AssumeRole`` only with the ExternalId, and ``sts:TagSession`` only with the
credential's own namespace and name as session tags, so the role cannot be assumed for
another tenant's credential.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from cloudcred.cli import api
from cloudcred.cli.errors import CliError, UsageError
from cloudcred.installation import (
    INSTALLATION_SECRET,
    PRINCIPAL_ANNOTATION,
    Installation,
    InstallationError,
    key_from_data,
)

FORMATS = ("json", "cloudformation")
ROLE_ARN = re.compile(
    r"arn:[\w-]+:iam::(?P<account>[0-9]{12}):role(?P<path>/(?:.*/)?)(?P<name>[^/]+)"
)


def trust_policy(principal: str, external_id: str, namespace: str, name: str) -> dict[str, Any]:
    """The trust policy document for the role of credential ``namespace/name``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CloudcredAssumeRole",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
            },
            {
                "Sid": "CloudcredTagSession",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "sts:TagSession",
                "Condition": {
                    "StringEquals": {
                        "aws:RequestTag/cloudcred:namespace": namespace,
                        "aws:RequestTag/cloudcred:name": name,
                    }
                },
            },
        ],
    }


def cloudformation_template(
    role_arn: str, policy: dict[str, Any], credential: str
) -> dict[str, Any]:
    """A template that creates the role named by ``role_arn`` with ``policy``."""
    match = ROLE_ARN.fullmatch(role_arn)
    if match is None:
        raise CliError(f"spec.aws.roleArn {role_arn!r} is not an IAM role ARN")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"IAM role for the cloudcred CloudCredential {credential}",
        "Parameters": {
            "MaxSessionDuration": {
                "Type": "Number",
                "Default": 3600,
                "MinValue": 3600,
                "MaxValue": 43200,
                "Description": "Longest session, in seconds (CLOUDCRED_DELIVERY_SESSION_SECONDS "
                "must not exceed it)",
            }
        },
        "Resources": {
            "Role": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": match["name"],
                    "Path": match["path"],
                    "AssumeRolePolicyDocument": policy,
                    "MaxSessionDuration": {"Ref": "MaxSessionDuration"},
                    "Description": f"Assumed by cloudcred for CloudCredential {credential}",
                },
            }
        },
        "Outputs": {"RoleArn": {"Value": {"Fn::GetAtt": ["Role", "Arn"]}}},
    }


def trusted_values(
    kube: api.Kube, operator_namespace: str, namespace: str, name: str
) -> tuple[str, str | None]:
    """The credential's ExternalId, derived as the operator derives it, and the principal
    the operator recorded on the installation Secret (None when it has recorded none)."""
    secret = api.call(
        f"reading Secret {operator_namespace}/{INSTALLATION_SECRET} (the installation key; "
        "pass --operator-namespace where the operator runs)",
        kube.core.read_namespaced_secret, INSTALLATION_SECRET, operator_namespace,
    )  # fmt: skip
    try:
        key = key_from_data(operator_namespace, dict(secret.data or {}))
    except InstallationError as error:
        raise CliError(str(error)) from None
    found = api.call(f"reading namespace {namespace}", kube.core.read_namespace, namespace)
    external_id = Installation(key).external_id(str(found.metadata.uid), name)
    principal = (secret.metadata.annotations or {}).get(PRINCIPAL_ANNOTATION)
    return external_id, principal


def trust_policy_command(
    kube: api.Kube, namespace: str, name: str, output: str, principal: str | None,
    operator_namespace: str,
) -> int:  # fmt: skip
    if output not in FORMATS:
        raise UsageError(f"-o {output}: choose one of {', '.join(FORMATS)}")
    credential = api.get_credential(kube, namespace, name)
    aws = (credential.get("spec") or {}).get("aws") or {}
    role_arn = aws.get("roleArn")
    if not role_arn:
        raise UsageError(f"CloudCredential {namespace}/{name} has no spec.aws.roleArn: only an "
                         "AWS role has a trust policy")  # fmt: skip
    external_id, recorded = trusted_values(kube, operator_namespace, namespace, name)
    principal = principal or recorded
    if not principal:
        raise CliError(f"the operator has not recorded its AWS principal (annotation "
                       f"{PRINCIPAL_ANNOTATION} of Secret {operator_namespace}/"
                       f"{INSTALLATION_SECRET}): pass --principal ARN")  # fmt: skip
    status = credential.get("status") or {}
    if status.get("externalId") not in (None, external_id):
        # Status is shown, not trusted: say so, the policy printed is the derived one.
        print(f"warning: status.externalId of CloudCredential {namespace}/{name} differs "
              "from the one the installation key gives; printing the derived one",
              file=sys.stderr)  # fmt: skip
    policy = trust_policy(principal, external_id, namespace, name)
    if output == "cloudformation":
        document = cloudformation_template(role_arn, policy, f"{namespace}/{name}")
    else:
        document = policy
    print(json.dumps(document, indent=2))
    return 0
