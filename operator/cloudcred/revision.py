"""The credential's revision: what changes exactly when access changes.

``v2-`` + the first 12 hex digits of an HMAC-SHA256, keyed with the installation key
(``installation.py``), over canonical JSON of the provider, its block in the spec and
the referenced secret values. ``description``, ``allowedNamespaces``, ``verification``
and ``rollout`` do not count. Keyed, because the revision is shown to everyone who
may read the credential or its clusters: an unkeyed hash of the secret data would let
them test guesses of a weak secret offline. A golden test pins the result: changing
this function marks every cluster for redeploy, so bump the prefix if you ever must.
"""

from __future__ import annotations

import json

from cloudcred.api.credential import CloudCredentialSpec
from cloudcred.installation import Installation
from cloudcred.providers.base import SecretValues

PREFIX = "v2-"


def compute_revision(
    spec: CloudCredentialSpec, secrets: SecretValues, installation: Installation
) -> str:
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
    return PREFIX + installation.digest("revision", canonical)[:12]
