"""New key material for ``cloudcred rotate``, in the shapes the providers' own tools print.

Everything here is pure. A secret value is held in a ``SecretStr`` from the moment it is
parsed, and no message ever quotes the input: errors name the field or line that is
wrong, never its content (an access key id can be a secret pasted in the wrong place).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from cloudcred.api.common import UUID
from cloudcred.api.credential import (
    AWS_ACCESS_KEY_ID,
    GCP_SERVICE_ACCOUNT_EMAIL,
    SCALEWAY_ACCESS_KEY,
)
from cloudcred.cli.errors import UsageError

MAX_SECRET_NAME = 253
# What each provider accepts, for help texts and error messages.
AWS_FORMATS = (
    "the JSON printed by `aws iam create-access-key`, a JSON object with accessKeyId and "
    "secretAccessKey, or AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines"
)
GCP_FORMATS = 'a service-account key file (JSON with "type": "service_account")'
AZURE_FORMATS = (
    "the JSON printed by `az ad app credential reset` (appId, password, tenant), or one "
    "line holding the client secret"
)
SCALEWAY_FORMATS = (
    "the JSON printed by `scw iam api-key create -o json` (access_key, secret_key), or "
    "SCW_ACCESS_KEY=... and SCW_SECRET_KEY=... lines"
)
_KEY_VALUE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_SECRET_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no whitespace


@dataclass(frozen=True)
class Target:
    """The Secret reference of a credential that ``rotate`` switches to a new Secret."""

    namespace: str
    name: str
    provider: str
    block: str  # the spec's provider block: aws, gcp, azure, scaleway
    ref_field: str  # e.g. secretAccessKeyRef
    secret_name: str  # the Secret referenced now
    secret_key: str  # the key inside it; the new Secret uses the same one
    public_field: str | None  # spec field switched together with the ref (accessKeyId)
    public_id: str | None  # that field's current value
    settings: dict[str, Any]  # the whole provider block


@dataclass(frozen=True)
class NewKey:
    """Parsed key material: the secret half and the public fields that go with it."""

    secret: SecretStr
    public_id: str | None = None  # the new accessKeyId / accessKey
    key_id: str | None = None  # GCP private_key_id
    account: str | None = None  # GCP client_email, Azure appId


# provider -> (spec block, secret ref field, public field switched with it)
_REFS: dict[str, tuple[str, str, str | None]] = {
    "AWS": ("aws", "secretAccessKeyRef", "accessKeyId"),
    "GCP": ("gcp", "serviceAccountKeyRef", None),
    "AZURE": ("azure", "clientSecretRef", None),
    "SCALEWAY": ("scaleway", "secretKeyRef", "accessKey"),
}
_KEYLESS = {
    "AWS": "an IAM role (spec.aws.roleArn)",
    "GCP": "an IAM role through workload identity federation (spec.gcp.serviceAccountEmail)",
}


def rotation_target(namespace: str, name: str, spec: dict[str, Any]) -> Target:
    """What ``rotate`` changes in this credential's spec; UsageError when it has no key."""
    provider = str(spec.get("provider", ""))
    if provider not in _REFS:
        raise UsageError(f"{namespace}/{name}: unknown provider {provider!r}")
    block, ref_field, public_field = _REFS[provider]
    settings = spec.get(block) or {}
    ref = settings.get(ref_field)
    if not isinstance(ref, dict) or not ref.get("name") or not ref.get("key"):
        uses = _KEYLESS.get(provider, f"no secret (spec.{block}.{ref_field} is not set)")
        raise UsageError(
            f"nothing to rotate: {namespace}/{name} uses {uses}, which has no key to "
            "replace; the provider issues short-lived credentials on every use"
        )
    public_id = settings.get(public_field) if public_field else None
    return Target(
        namespace,
        name,
        provider,
        block,
        ref_field,
        str(ref["name"]),
        str(ref["key"]),
        public_field,
        public_id,
        settings,
    )


def formats(provider: str) -> str:
    return {
        "AWS": AWS_FORMATS,
        "GCP": GCP_FORMATS,
        "AZURE": AZURE_FORMATS,
        "SCALEWAY": SCALEWAY_FORMATS,
    }.get(provider, "")


def parse_key(target: Target, text: str) -> NewKey:
    """The new key for ``target``'s provider, from what the user piped in."""
    if not text.strip():
        raise UsageError(f"no key material in the input: expected {formats(target.provider)}")
    if target.provider == "AWS":
        return parse_aws(text)
    if target.provider == "GCP":
        return parse_gcp(text)
    if target.provider == "AZURE":
        return parse_azure(
            text, str(target.settings.get("tenantId", "")), str(target.settings.get("clientId", ""))
        )
    return parse_scaleway(text)


def parse_aws(text: str) -> NewKey:
    what = "AWS input"
    if _is_json(text):
        data = _json_object(text, what)
        if "AccessKey" in data:
            inner = data["AccessKey"]
            if not isinstance(inner, dict):
                raise UsageError(f"{what}: AccessKey must be a JSON object")
            fields = ("AccessKey.AccessKeyId", "AccessKey.SecretAccessKey")
            key_id = _field(inner, "AccessKeyId", what, fields[0])
            secret = _field(inner, "SecretAccessKey", what, fields[1])
        elif "accessKeyId" in data or "secretAccessKey" in data:
            fields = ("accessKeyId", "secretAccessKey")
            key_id, secret = _field(data, fields[0], what), _field(data, fields[1], what)
        else:
            raise UsageError(
                f"{what}: the JSON has neither AccessKey nor accessKeyId; expected {AWS_FORMATS}"
            )
    else:
        values = _key_values(text, what, AWS_FORMATS)
        if "AWS_SESSION_TOKEN" in values:
            raise UsageError(
                f"{what}: AWS_SESSION_TOKEN is set: temporary credentials expire; "
                "rotate to a long-lived access key (aws iam create-access-key)"
            )
        fields = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        key_id, secret = _required(values, fields[0], what), _required(values, fields[1], what)
    if not re.fullmatch(AWS_ACCESS_KEY_ID, key_id):
        raise UsageError(
            f"{what}: {fields[0]} is not an access key id (AKIA or ASIA followed "
            "by 16 upper-case letters or digits)"
        )
    return NewKey(_secret(secret, fields[1], what), public_id=key_id)


def parse_gcp(text: str) -> NewKey:
    what = "GCP input"
    if not _is_json(text):
        raise UsageError(f"{what}: expected {GCP_FORMATS}")
    data = _json_object(text, what)
    if data.get("type") != "service_account":
        raise UsageError(f'{what}: "type" is not "service_account": expected {GCP_FORMATS}')
    private_key = _field(data, "private_key", what)
    if not _PEM_KEY.search(private_key):
        raise UsageError(f"{what}: private_key is not a PEM private key")
    email = _field(data, "client_email", what)
    if not re.fullmatch(GCP_SERVICE_ACCOUNT_EMAIL, email):
        raise UsageError(
            f"{what}: client_email is not a service-account e-mail "
            "(NAME@PROJECT.iam.gserviceaccount.com)"
        )
    key_id = data.get("private_key_id")
    return NewKey(
        SecretStr(text.strip()), key_id=key_id if isinstance(key_id, str) else None, account=email
    )


def parse_azure(text: str, tenant_id: str, client_id: str) -> NewKey:
    what = "Azure input"
    if not _is_json(text):
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise UsageError(f"{what}: expected {AZURE_FORMATS}; got {len(lines)} lines")
        return NewKey(_secret(lines[0].strip(), "the client secret", what), account=client_id)
    data = _json_object(text, what)
    app_id, tenant = _field(data, "appId", what), _field(data, "tenant", what)
    password = _field(data, "password", what)
    if tenant.lower() != tenant_id.lower():
        raise UsageError(
            f"{what}: tenant {_shown(tenant, UUID)} is not the credential's "
            f"spec.azure.tenantId {tenant_id}"
        )
    if app_id.lower() != client_id.lower():
        raise UsageError(
            f"{what}: appId {_shown(app_id, UUID)} is not the credential's "
            f"spec.azure.clientId {client_id}: reset the credential of that "
            "app (az ad app credential reset --id CLIENT_ID)"
        )
    return NewKey(_secret(password, "password", what), account=client_id)


def parse_scaleway(text: str) -> NewKey:
    what = "Scaleway input"
    if _is_json(text):
        data = _json_object(text, what)
        fields = ("access_key", "secret_key")
        access_key, secret = _field(data, fields[0], what), _field(data, fields[1], what)
    else:
        values = _key_values(text, what, SCALEWAY_FORMATS)
        fields = ("SCW_ACCESS_KEY", "SCW_SECRET_KEY")
        access_key = _required(values, fields[0], what)
        secret = _required(values, fields[1], what)
    if not re.fullmatch(SCALEWAY_ACCESS_KEY, access_key):
        raise UsageError(
            f"{what}: {fields[0]} is not a Scaleway access key (SCW followed by "
            "17 upper-case letters or digits)"
        )
    if not re.fullmatch(UUID, secret):
        raise UsageError(f"{what}: {fields[1]} is not a Scaleway secret key (a UUID)")
    return NewKey(SecretStr(secret), public_id=access_key)


def new_secret_name(credential: str, now: datetime) -> str:
    """``<credential>-<UTC yyyymmddhhmmss>``, the credential part cut so that the whole
    stays a DNS subdomain of at most 253 characters."""
    suffix = now.astimezone(UTC).strftime("-%Y%m%d%H%M%S")
    return credential[: MAX_SECRET_NAME - len(suffix)].rstrip(".-") + suffix


def _is_json(text: str) -> bool:
    return text.lstrip().startswith("{")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:  # its message has a position, never the text
        raise UsageError(
            f"{what}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"{what}: expected a JSON object")
    return data


def _field(data: dict[str, Any], field: str, what: str, shown: str | None = None) -> str:
    value = data.get(field)
    if value is None or value == "":
        raise UsageError(f"{what}: {shown or field} is missing")
    if not isinstance(value, str):
        raise UsageError(f"{what}: {shown or field} must be a string")
    return value


def _key_values(text: str, what: str, expected: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (optionally ``export KEY=VALUE``, values optionally quoted)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _KEY_VALUE.match(stripped)
        if not match:
            raise UsageError(f"{what}: line {number} is not KEY=VALUE; expected {expected}")
        key, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key in values:
            raise UsageError(f"{what}: {key} is set twice (line {number})")
        values[key] = value
    return values


def _required(values: dict[str, str], key: str, what: str) -> str:
    if not values.get(key):
        raise UsageError(f"{what}: {key} is missing")
    return values[key]


def _secret(value: str, field: str, what: str) -> SecretStr:
    if not _SECRET_CHARS.fullmatch(value):
        raise UsageError(
            f"{what}: {field} contains spaces or characters that are not printable ASCII"
        )
    return SecretStr(value)


def _shown(value: str, pattern: str) -> str:
    """A public id is quoted in messages only when it has its expected shape (a value of
    another shape could be a secret pasted in the wrong place)."""
    return value if re.fullmatch(pattern, value) else "(not shown: not a UUID)"
