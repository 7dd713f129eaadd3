"""The credential's revision: what changes exactly when access changes.

``v1-`` + the first 12 hex digits of SHA-256 over canonical JSON of the provider, its
block in the spec and the referenced secret values. ``description``,
``allowedNamespaces`` and ``verification`` do not count. A golden test pins the
result: changing this function marks every cluster for redeploy, so bump the prefix
if you ever must.
"""

from __future__ import annotations

import hashlib
import json

from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.providers.base import SecretValues

PREFIX = "v1-"


def compute_revision(spec: CloudCredentialSpec, secrets: SecretValues) -> str:
    block_name = str(spec.provider).lower()
    block = getattr(spec, block_name)
    canonical = json.dumps(
        {
            "provider": str(spec.provider),
            block_name: block.to_api() if block is not None else None,
            "secrets": {role: value.get_secret_value() for role, value in secrets.items()},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:12]
