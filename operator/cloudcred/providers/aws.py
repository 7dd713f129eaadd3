"""AWS: STS GetCallerIdentity for static keys, STS AssumeRole for roles (boto3).

Endpoints are boto3's: the real AWS ones, or whatever boto3's standard settings say
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_STS``, ...). The operator's own AWS identity,
used to assume roles, comes from boto3's default chain (IRSA, instance profile, env).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from pydantic import SecretStr

from cloudcred.api.common import SecretKeyRef
from cloudcred.api.credential import AWS_ACCESS_KEY_ID, AwsSpec, CloudCredentialSpec
from cloudcred.api.permissions import AwsPermissions
from cloudcred.providers.base import (
    Delivery,
    KeyFacts,
    NewKey,
    PermissionAnswer,
    Reason,
    RotationError,
    RotationReason,
    SecretValues,
    Verification,
    VerificationError,
    VerifyContext,
)

SECRET_ACCESS_KEY = "secretAccessKey"
ACCESS_KEY_ID = "accessKeyId"  # the Secret's key for the id, when the spec names none

_INVALID_CREDENTIAL_CODES = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "InvalidToken",
}
# Answers that clear by themselves: throttling and AWS's own trouble (with 5xx).
_TRANSIENT_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalError",
    "IDPCommunicationError",
}
_T = TypeVar("_T")
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                ConnectionClosedError)  # fmt: skip


def _aws(spec: CloudCredentialSpec) -> AwsSpec:
    assert spec.aws is not None  # the CRD guarantees the block matching the provider
    return spec.aws


def public_id(spec: CloudCredentialSpec) -> str:
    aws = _aws(spec)
    return aws.role_arn or aws.access_key_id or ""


def secret_refs(spec: CloudCredentialSpec) -> dict[str, SecretKeyRef]:
    """The secret access key; and the access key id from the same Secret when the spec
    names none (allowed under automatic rotation)."""
    aws = _aws(spec)
    if not aws.secret_access_key_ref:
        return {}
    refs = {SECRET_ACCESS_KEY: aws.secret_access_key_ref}
    if not aws.access_key_id:
        refs[ACCESS_KEY_ID] = SecretKeyRef(name=aws.secret_access_key_ref.name, key=ACCESS_KEY_ID)
    return refs


def _key_id(aws: AwsSpec, secrets: SecretValues) -> str:
    """The static key's access key id: the spec's, else the Secret's."""
    if aws.access_key_id:
        return aws.access_key_id
    found = secrets.get(ACCESS_KEY_ID)
    value = found.get_secret_value().strip() if found else ""
    if value and not re.fullmatch(AWS_ACCESS_KEY_ID, value):
        ref = aws.secret_access_key_ref
        raise VerificationError(
            Reason.INVALID_SECRET_DATA,
            f"key {ACCESS_KEY_ID!r} of Secret {ref.name if ref else '?'} is not an AWS access "
            "key id (AKIA... or ASIA..., 20 characters)",
        )
    return value


SESSION_NAME_LIMIT = 64  # STS: 2 to 64 characters of [\w+=,.@-]


def session_name(namespace: str, name: str, kind: str = "cloudcred") -> str:
    """An STS session name that says who asked and cannot be claimed by anyone else:
    ``<kind>+<namespace>+<name>``. Kubernetes names never hold ``+`` or ``=``, so two
    (namespace, name) pairs never join to the same text; a name over 64 characters is
    cut and ends with ``=`` and 16 hex digits of a hash of the whole (no uncut name
    holds ``=``)."""
    full = f"{kind}+{namespace}+{name}"
    if len(full) <= SESSION_NAME_LIMIT:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:16]
    return f"{full[: SESSION_NAME_LIMIT - 17]}={digest}"


def session_tags(context: VerifyContext) -> list[dict[str, str]]:
    """Session tags that let trust and permission policies tell tenants apart
    (``aws:PrincipalTag/cloudcred:namespace``); the trust policy must allow
    ``sts:TagSession``."""
    tags = [{"Key": "cloudcred:namespace", "Value": context.namespace},
            {"Key": "cloudcred:name", "Value": context.name}]  # fmt: skip
    if context.cluster:
        tags.append({"Key": "cloudcred:cluster", "Value": "/".join(context.cluster)})
    return tags


_OPERATOR_PRINCIPAL: dict[str, str] = {}  # region -> the operator's own principal ARN


def operator_principal(context: VerifyContext) -> str | None:
    """The operator's own AWS principal, as a role's trust policy names it: an assumed
    role's ARN becomes its role's ARN (without a path: set CLOUDCRED_AWS_PRINCIPAL_ARN
    when the role has one). None when the operator has no AWS identity."""
    region = context.settings.aws_region
    if context.settings.aws_principal_arn:
        return context.settings.aws_principal_arn
    if region not in _OPERATOR_PRINCIPAL:
        try:
            sts = _client("sts", region, _Caller(), _config(context))
            arn = str(sts.get_caller_identity()["Arn"])
        except (ClientError, BotoCoreError):
            return None
        _OPERATOR_PRINCIPAL[region] = principal_of(arn)
    return _OPERATOR_PRINCIPAL[region]


def principal_of(caller_arn: str) -> str:
    """arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION -> arn:aws:iam::ACCOUNT:role/ROLE."""
    match = re.fullmatch(r"arn:([\w-]+):sts::([0-9]{12}):assumed-role/([^/]+)/.+", caller_arn)
    if match:
        partition, account, role = match.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return caller_arn


def _config(context: VerifyContext) -> Config:
    timeout = context.settings.timeout_seconds
    return Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 1, "mode": "standard"},
    )


def _calling(aws: AwsSpec, context: VerifyContext, call: Callable[[], _T]) -> _T:
    """Run AWS calls, turning every failure into a VerificationError that carries error
    codes only (botocore's texts can quote request parameters)."""
    try:
        return call()
    except _UNREACHABLE:
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE,
            f"AWS did not answer within {context.settings.timeout_seconds:g}s",
        ) from None
    except NoCredentialsError:
        raise VerificationError(
            Reason.ACCESS_DENIED,
            "the operator has no AWS identity of its own to assume the role with "
            "(IRSA, instance profile or AWS_* environment variables)",
        ) from None
    except ClientError as error:
        raise _client_error(error, aws) from None
    except ParamValidationError:
        # botocore refused the request before sending it (a length AWS would refuse too).
        raise VerificationError(
            Reason.PROVIDER_REFUSED, "the AWS request's parameters are not valid"
        ) from None
    except (BotoCoreError, ResponseParserError) as error:
        # The class name says what failed; the text could quote request parameters.
        raise VerificationError(
            Reason.PROVIDER_UNREACHABLE, f"AWS call failed: {type(error).__name__}"
        ) from None


def verify(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> Verification:
    aws = _aws(spec)
    config = _config(context)
    region = context.settings.aws_region

    def check() -> Verification:
        caller = _caller(aws, secrets, context, config, region)
        identity = _client("sts", region, caller, config).get_caller_identity()
        if aws.role_arn:
            return Verification(identity=str(identity["Arn"]))
        return Verification(
            identity=str(identity["Arn"]),
            key_created_time=_key_created_time(caller, config, region, _key_id(aws, secrets)),
            static_keys=True,
        )

    return _calling(aws, context, check)


def check_region(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> str:
    """The deploy step's check: the credential works in the cluster's region -- the
    regional STS endpoint, then a read-only call there, EC2 Auto Scaling
    DescribeAutoScalingGroups (the node groups of a cluster; botocore >= 1.36, pinned
    in pyproject, uses regional STS endpoints by default). Auto Scaling rather than
    EC2 DescribeAvailabilityZones: the same proof, and its API model costs 1 MB of
    memory where EC2's costs 24 MB. Returns the ARN STS reported."""
    aws = _aws(spec)
    config = _config(context)

    def check() -> str:
        caller = _caller(aws, secrets, context, config, region)
        identity = _client("sts", region, caller, config).get_caller_identity()
        _client("autoscaling", region, caller, config).describe_auto_scaling_groups(MaxRecords=1)
        return str(identity["Arn"])  # the account a boundary checks

    return _calling(aws, context, check)


def check_permissions(
    spec: CloudCredentialSpec,
    secrets: SecretValues,
    context: VerifyContext,
    needs: AwsPermissions,
) -> PermissionAnswer:
    """iam:SimulatePrincipalPolicy, asked with the credential's own identity, about its
    principal: for a role the role's ARN (its policies, not the session's), for a
    static key the IAM user STS GetCallerIdentity names. One simulation per statement
    (its actions on its resources, with the region as aws:RequestedRegion), every page.
    A need reads ``ACTION`` (resource '*') or ``ACTION on ARN``; a missing one
    denied by an explicit Deny ends in `` (denied)``."""
    aws = _aws(spec)
    config = _config(context)
    region = context.settings.aws_region

    def check() -> PermissionAnswer:
        caller = _caller(aws, secrets, context, config, region)
        source = aws.role_arn or str(
            _client("sts", region, caller, config).get_caller_identity()["Arn"]
        )
        if ":user/" not in source and ":role/" not in source:
            raise VerificationError(
                Reason.PROVIDER_REFUSED,
                f"{source} is neither an IAM user nor a role: IAM simulates only those",
            )
        iam = _client("iam", region, caller, config)
        pages = iam.get_paginator("simulate_principal_policy")
        extra: dict[str, Any] = {}
        if needs.region:
            extra["ContextEntries"] = [{"ContextKeyName": "aws:RequestedRegion",
                                        "ContextKeyValues": [needs.region],
                                        "ContextKeyType": "string"}]  # fmt: skip
        checked: set[str] = set()
        missing: set[str] = set()
        for statement in needs.statements:
            resources = [r for r in statement.resources or () if r != "*"]
            request = {"PolicySourceArn": source, "ActionNames": statement.actions, **extra}
            if resources:
                request["ResourceArns"] = resources
            for page in pages.paginate(**request):
                for result in page.get("EvaluationResults") or ():
                    for need, decision in _decisions(result):
                        checked.add(need)
                        if decision != "allowed":
                            missing.add(f"{need} (denied)" if decision == "explicitDeny" else need)
        return PermissionAnswer(len(checked), tuple(sorted(missing)))

    return _calling(aws, context, check)


def _decisions(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(need, decision) of one simulation result: per resource where the answer has
    resource-specific results, else the result's own."""
    action = str(result["EvalActionName"])
    found = [(str(r.get("EvalResourceName") or "*"), str(r.get("EvalResourceDecision")))
             for r in result.get("ResourceSpecificResults") or ()]  # fmt: skip
    if not found:
        found = [(str(result.get("EvalResourceName") or "*"), str(result["EvalDecision"]))]
    return [(action if resource == "*" else f"{action} on {resource}", decision)
            for resource, decision in found]  # fmt: skip


def _client_error(error: ClientError, aws: AwsSpec) -> VerificationError:
    code = str(error.response.get("Error", {}).get("Code", "Unknown"))
    operation = error.operation_name
    if code in _INVALID_CREDENTIAL_CODES:
        return VerificationError(
            Reason.INVALID_CREDENTIALS, f"AWS rejected the credentials ({code} on {operation})"
        )
    if code.startswith("AccessDenied") or code in ("UnauthorizedOperation", "Forbidden"):
        if operation == "AssumeRole":
            return VerificationError(
                Reason.ACCESS_DENIED,
                f"the operator's AWS identity may not assume {aws.role_arn} ({code}): check "
                "the role's trust policy and externalId",
            )
        return VerificationError(Reason.ACCESS_DENIED, f"AWS denied {operation} ({code})")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _TRANSIENT_CODES or not isinstance(status, int) or not 400 <= status < 500:
        return VerificationError(Reason.PROVIDER_UNREACHABLE, f"AWS answered {code} to {operation}")
    # ValidationError, MalformedPolicyDocument, InvalidParameterValue, RegionDisabled...:
    # the same request gets the same answer, until the spec or the Secret changes.
    return VerificationError(
        Reason.PROVIDER_REFUSED, f"AWS refused {operation} ({code}, HTTP {status})"
    )


# One boto3 session for every client: it loads each service's model once (a session
# per call would parse the large EC2 model again each time). Sessions are not
# thread-safe, so clients are made under a lock; the clients themselves are.
_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Caller:
    """Whose credentials a client signs with; None fields: the operator's own."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


def _client(service: str, region: str, caller: _Caller, config: Config) -> Any:
    with _SESSION_LOCK:
        return _SESSION.client(
            service, region_name=region, config=config,
            aws_access_key_id=caller.access_key_id,
            aws_secret_access_key=caller.secret_access_key,
            aws_session_token=caller.session_token,
        )  # fmt: skip


def _assume_role(
    aws: AwsSpec, context: VerifyContext, config: Config, region: str, seconds: int = 900
) -> dict[str, Any]:
    """The role's temporary credentials (STS AssumeRole's ``Credentials``), assumed
    with the operator's own identity (boto3's default chain). 900 s, the shortest,
    when the operator only looks."""
    if context.cluster:  # a delivery: the session is named after the cluster
        name = session_name(*context.cluster, kind="cloudcred-cluster")
    else:
        name = session_name(context.namespace, context.name)
    request: dict[str, Any] = {
        "RoleArn": aws.role_arn,
        "RoleSessionName": name,
        "DurationSeconds": seconds,
        "Tags": session_tags(context),
    }
    if context.external_id:
        request["ExternalId"] = context.external_id
    sts = _client("sts", region, _Caller(), config)
    credentials: dict[str, Any] = sts.assume_role(**request)["Credentials"]
    return credentials


def _caller(
    aws: AwsSpec, secrets: SecretValues, context: VerifyContext, config: Config, region: str
) -> _Caller:
    """The credential as a caller: the role's session, or the static key."""
    if aws.role_arn:
        credentials = _assume_role(aws, context, config, region)
        return _Caller(credentials["AccessKeyId"], credentials["SecretAccessKey"],
                       credentials["SessionToken"])  # fmt: skip
    return _Caller(_key_id(aws, secrets), secrets[SECRET_ACCESS_KEY].get_secret_value())


def _key_created_time(
    caller: _Caller, config: Config, region: str, access_key_id: str
) -> datetime | None:
    """When the key was created, if the key may read it (iam:ListAccessKeys on itself)."""
    try:
        iam = _client("iam", region, caller, config)
        keys = iam.list_access_keys()["AccessKeyMetadata"]
    except ClientError:
        return None  # not allowed: the age stays unknown, which is not an error
    for key in keys:
        if key.get("AccessKeyId") == access_key_id:
            created = key.get("CreateDate")
            return created if isinstance(created, datetime) else None
    return None


def delivery(
    spec: CloudCredentialSpec, secrets: SecretValues, region: str, context: VerifyContext
) -> Delivery:
    """The AWS SDKs' and CLI's standard form: the environment variables and the shared
    credentials and config files. A role is delivered as session credentials from
    AssumeRole (``ProviderSettings.session_seconds``), never as a long-lived key."""
    aws = _aws(spec)
    config = _config(context)
    expires = None
    if aws.role_arn:
        seconds = context.settings.session_seconds
        assume = partial(_assume_role, aws, context, config, region, seconds)
        credentials = _calling(aws, context, assume)
        key_id, secret, token = (credentials["AccessKeyId"], credentials["SecretAccessKey"],
                                 credentials["SessionToken"])  # fmt: skip
        expires = credentials["Expiration"]
    else:
        key_id, secret, token = (_key_id(aws, secrets),
                                 secrets[SECRET_ACCESS_KEY].get_secret_value(), None)  # fmt: skip
    shared = f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
    values = {
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "config": f"[default]\nregion = {region}\n",
    }
    if token:
        values["AWS_SESSION_TOKEN"] = token
        shared += f"aws_session_token = {token}\n"
    values["credentials"] = shared
    return Delivery({k: SecretStr(v) for k, v in values.items()}, expires)


# -- self-rotation (spec.rotation): the static key's own IAM user manages its keys ---------


def _rotating(aws: AwsSpec, context: VerifyContext, call: Callable[[], _T]) -> _T:
    """Run rotation calls; failures become RotationErrors carrying error codes only."""
    try:
        return _calling(aws, context, call)
    except VerificationError as error:
        if "LimitExceeded" in error.message:
            raise RotationError(
                RotationReason.KEY_LIMIT_REACHED,
                "the IAM user already has two access keys (AWS's limit): delete the one "
                "no cluster uses, and the rotation continues",
            ) from None
        reason = {
            Reason.PROVIDER_UNREACHABLE: RotationReason.PROVIDER_UNREACHABLE,
            Reason.PROVIDER_REFUSED: RotationReason.PROVIDER_REFUSED,
        }.get(error.reason, RotationReason.ACCESS_DENIED)
        raise RotationError(reason, error.message) from None


def _iam(aws: AwsSpec, secrets: SecretValues, context: VerifyContext) -> Any:
    if aws.role_arn or not _key_id(aws, secrets):
        raise RotationError(RotationReason.NOT_SUPPORTED, "only a static access key rotates")
    config = _config(context)
    region = context.settings.aws_region
    return _client("iam", region, _caller(aws, secrets, context, config, region), config)


# The keys of a rotation identity's Secret (CredentialBoundary.spec.aws), by role.
ROTATION_IDENTITY_KEYS = {ACCESS_KEY_ID: "accessKeyId", SECRET_ACCESS_KEY: "secretAccessKey"}


def _key_admin(aws: AwsSpec, secrets: SecretValues, context: VerifyContext
               ) -> tuple[Any, dict[str, str]]:  # fmt: skip
    """The IAM client that manages the key's keys, and the arguments that name its user:
    the key itself on its own user, or the admin-owned rotation identity of a
    CredentialBoundary on the key's user (found with iam:GetAccessKeyLastUsed).

    IAM names the user of any access key id in the identity's account, whoever asks; only
    the key's secret proves that the credential holds that key. So before the identity
    acts, the credential's own pair asks STS who it is, and that must be the same user:
    a tenant who names another user's access key id with a secret of its own gets
    AccessDenied, and no key is listed, made, deactivated or deleted for that user."""
    identity = context.rotation_identity
    if identity is None:
        return _iam(aws, secrets, context), {}
    key_id = _key_id(aws, secrets)
    if aws.role_arn or not key_id:
        raise RotationError(RotationReason.NOT_SUPPORTED, "only a static access key rotates")
    config = _config(context)
    region = context.settings.aws_region
    caller = _Caller(identity[ACCESS_KEY_ID].get_secret_value(),
                     identity[SECRET_ACCESS_KEY].get_secret_value())  # fmt: skip
    client = _client("iam", region, caller, config)
    user = str(client.get_access_key_last_used(AccessKeyId=key_id)["UserName"])
    own = _client("sts", region, _caller(aws, secrets, context, config, region), config)
    arn = str(own.get_caller_identity()["Arn"])
    if ":user/" not in arn or arn.rsplit("/", 1)[-1] != user:
        raise RotationError(
            RotationReason.ACCESS_DENIED,
            f"access key {key_id} belongs to IAM user {user}, but the credential's secret "
            f"access key authenticates as {arn}: the rotation identity acts only for the "
            "user whose key the credential holds",
        )
    return client, {"UserName": user}


def _facts(key: dict[str, Any]) -> KeyFacts:
    created = key.get("CreateDate")
    return KeyFacts(
        key_id=str(key["AccessKeyId"]),
        created=created if isinstance(created, datetime) else None,
        active=key.get("Status", "Active") == "Active",
    )


def list_keys(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> list[KeyFacts]:
    """The access keys of the key's IAM user (iam:ListAccessKeys)."""
    aws = _aws(spec)

    def listed() -> list[KeyFacts]:
        iam, user = _key_admin(aws, secrets, context)
        return [_facts(key) for key in iam.list_access_keys(**user)["AccessKeyMetadata"]]

    return _rotating(aws, context, listed)


def create_key(spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext) -> NewKey:
    """A new access key for the key's IAM user (iam:CreateAccessKey)."""
    aws = _aws(spec)

    def create() -> NewKey:
        iam, user = _key_admin(aws, secrets, context)
        made = iam.create_access_key(**user)["AccessKey"]
        return NewKey(_facts(made), {SECRET_ACCESS_KEY: SecretStr(made["SecretAccessKey"])})

    return _rotating(aws, context, create)


def deactivate_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> bool:
    """Make ``key_id`` Inactive (iam:UpdateAccessKey): AWS refuses it from then on, and it
    can still be made Active again by hand during the grace period."""
    aws = _aws(spec)

    def deactivate() -> bool:
        iam, user = _key_admin(aws, secrets, context)
        try:
            iam.update_access_key(AccessKeyId=key_id, Status="Inactive", **user)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise
        return True

    return _rotating(aws, context, deactivate)


def delete_key(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> None:
    """Delete ``key_id`` (iam:DeleteAccessKey); a key already gone is fine."""
    aws = _aws(spec)

    def delete() -> None:
        iam, user = _key_admin(aws, secrets, context)
        try:
            iam.delete_access_key(AccessKeyId=key_id, **user)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise

    _rotating(aws, context, delete)


def key_last_used(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext, key_id: str
) -> datetime | None:
    """When AWS last saw ``key_id`` sign a request (iam:GetAccessKeyLastUsed, asked with
    the key in effect); None when it was never used. AWS fills it in with some delay
    (hours at most), which the grace period covers."""
    aws = _aws(spec)

    def read() -> datetime | None:
        iam, _ = _key_admin(aws, secrets, context)
        used = iam.get_access_key_last_used(AccessKeyId=key_id)
        last = (used.get("AccessKeyLastUsed") or {}).get("LastUsedDate")
        return last if isinstance(last, datetime) else None

    return _rotating(aws, context, read)


def key_facts(
    spec: CloudCredentialSpec, secrets: SecretValues, context: VerifyContext
) -> KeyFacts | None:
    """The key in use: created (iam:ListAccessKeys) and last used
    (iam:GetAccessKeyLastUsed); None when the key may not read them."""
    aws = _aws(spec)
    key_id = _key_id(aws, secrets)
    if aws.role_arn or not key_id:
        return None

    def read() -> KeyFacts | None:
        iam = _iam(aws, secrets, context)
        try:
            keys = iam.list_access_keys()["AccessKeyMetadata"]
        except ClientError:
            return None  # not allowed: the facts stay unknown, which is not an error
        found = next((k for k in keys if k.get("AccessKeyId") == key_id), None)
        if found is None:
            return None
        facts = _facts(found)
        try:
            used = iam.get_access_key_last_used(AccessKeyId=key_id)
            last = (used.get("AccessKeyLastUsed") or {}).get("LastUsedDate")
        except ClientError:
            last = None
        return KeyFacts(facts.key_id, facts.created, last if isinstance(last, datetime) else None,
                        None, facts.active)  # fmt: skip

    try:
        return _rotating(aws, context, read)
    except RotationError:
        return None
