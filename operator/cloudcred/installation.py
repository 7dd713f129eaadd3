"""The installation's own secret key, and what the operator derives from it.

One random 32-byte key per installation, kept in the Secret ``cloudcred-installation``
in the operator's namespace. The operator creates it on its first start and reads it
on every later one (replicas and upgrades share it). It keys two things tenants must
not be able to compute or choose:

- the credential revision (an HMAC of the referenced secret values, so the revision
  in status is no offline oracle for a weak secret: ``revision.py``);
- the AWS ExternalId of a role credential, derived from the credential's namespace UID
  and name: a tenant cannot pick another tenant's ExternalId, and a namespace deleted
  and created again under the same name gets new ones (AWS's answer to the confused
  deputy, where the third party, not the customer, determines the ExternalId).

Deleting the Secret would change every revision (every bound cluster redeployed once)
and every ExternalId (every role's trust policy to update): the operator refuses to
make a new key while credentials carry values derived from the old one, and says how
to restore it or make a new one on purpose. Back it up with the cluster's other
Secrets.

While it runs, the operator keeps the key it loaded at start and never switches
silently (``controllers/installation.py``): a deleted Secret is written back from
memory, a Secret that holds another key is reported (Warning Event, error log, the
metric ``cloudcred_installation_key_changed``) and takes effect only at the next start,
where the check above governs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from cloudcred.cache import KeySecretInfo
from cloudcred.cache.informers import data_digest, namespace_matcher, plain_namespaces
from cloudcred.constants import CREDENTIAL_PLURAL
from cloudcred.kube import AlreadyExists, Kube, NotFound

INSTALLATION_SECRET = "cloudcred-installation"
KEY_FIELD = "key"
# The operator's own AWS principal, recorded on the installation Secret (a place only
# the installation's administrators write) for ``cloudcred trust-policy``.
PRINCIPAL_ANNOTATION = "cloudcred.io/aws-principal"
KEY_BYTES = 32
# Inside a pod, the namespace of its ServiceAccount.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EXTERNAL_ID_PREFIX = "cloudcred-"

logger = logging.getLogger("cloudcred.installation")


@dataclass(frozen=True)
class Installation:
    key: bytes = field(repr=False)
    # Where the key's Secret lives; None for an installation made from a bare key.
    namespace: str | None = None

    def digest(self, purpose: str, *parts: str) -> str:
        """HMAC-SHA256 (hex) over ``purpose`` and ``parts``, each NUL-terminated, so no
        two different inputs join to the same text."""
        message = "".join(part + "\0" for part in (purpose, *parts)).encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def external_id(self, namespace_uid: str, name: str) -> str:
        """The ExternalId the operator sends when it assumes a credential's role."""
        return EXTERNAL_ID_PREFIX + self.digest("aws-external-id", namespace_uid, name)[:32]


def operator_namespace(configured: str | None) -> str:
    """Where the installation Secret lives: the setting, else the pod's namespace,
    else ``default`` (the operator run from a checkout)."""
    if configured:
        return configured
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class InstallationError(RuntimeError):
    """The key cannot be read or created; the message says what to fix."""


async def derived_from_a_key(kube: Kube, watched: list[str]) -> str | None:
    """A credential of the watched namespaces (kopf's patterns; none: all) whose status
    carries a value derived from an installation key (a revision, an ExternalId), as
    ``namespace/name``; None when there is none."""
    plain = plain_namespaces(watched)
    matches = namespace_matcher(watched)
    for namespace in plain if plain is not None else [None]:
        async for item in kube.list_pages(CREDENTIAL_PLURAL, page_size=100,
                                          namespace=namespace):  # fmt: skip
            metadata, status = item["metadata"], item.get("status") or {}
            if matches(metadata["namespace"]) and (
                status.get("revision") or status.get("externalId")
            ):
                return f"{metadata['namespace']}/{metadata['name']}"
    return None


def missing_key_message(namespace: str, credential: str) -> str:
    """What to do when the key is gone while credentials carry values derived from it."""
    return (
        f"Secret {namespace}/{INSTALLATION_SECRET} is missing, but CloudCredential "
        f"{credential} (and maybe others) carries a revision or ExternalId derived from "
        "the installation key it held: a new key would change every revision (every "
        "cluster redeployed) and every AWS ExternalId (every role refused). Either "
        f"restore it from your backup (kubectl apply -n {namespace} -f "
        f"{INSTALLATION_SECRET}.yaml), or make a new key on purpose: kubectl create "
        f"secret generic {INSTALLATION_SECRET} -n {namespace} "
        '--from-literal=key="$(head -c 32 /dev/urandom | base64 -w0)", then update every '
        "role's trust policy (cloudcred trust-policy)"
    )


async def load_installation(
    kube: Kube, namespace: str, watched: list[str] | None = None
) -> Installation:
    """Read the installation key, creating it on the first start. Two replicas starting
    at once both try to create it; the one that loses reads the winner's. A key that is
    missing while credentials carry values derived from it is not made anew: that is a
    lost key, for a person to restore (or to replace on purpose)."""
    for _ in range(3):
        try:
            data = await kube.read_secret_data(namespace, INSTALLATION_SECRET)
        except NotFound:
            data = None
        if data is not None:
            return Installation(key_from_data(namespace, data), namespace)
        derived = await derived_from_a_key(kube, watched or [])
        if derived is not None:
            raise InstallationError(missing_key_message(namespace, derived))
        try:
            await kube.create_secret(namespace, INSTALLATION_SECRET,
                                     secret_data(secrets.token_bytes(KEY_BYTES)),
                                     {"labels": dict(KEY_SECRET_LABELS)})  # fmt: skip
        except AlreadyExists:  # another replica created it first: read that one
            continue
        except RuntimeError as error:  # kube.py's message: the HTTP status, no data
            raise InstallationError(
                f"{error} (the operator needs create on secrets in its namespace)"
            ) from None
        logger.info("created the installation key in Secret %s/%s", namespace,
                    INSTALLATION_SECRET)  # fmt: skip
    raise InstallationError(f"Secret {namespace}/{INSTALLATION_SECRET} keeps changing")


KEY_SECRET_LABELS = {"app.kubernetes.io/managed-by": "cloudcred"}


def secret_data(key: bytes) -> dict[str, str]:
    """The installation Secret's data for ``key``: the key in base64 (text), stored as
    Secret data (base64 again)."""
    return {KEY_FIELD: base64.b64encode(base64.b64encode(key)).decode()}


def key_secret_info(installation: Installation, item: client.V1Secret) -> KeySecretInfo:
    """What the operator follows of the installation Secret while it runs: whether it
    holds the key in use (compared in constant time), never the key."""
    try:
        key = key_from_data(installation.namespace or "", item.data or {})
    except InstallationError:
        key = b""
    return KeySecretInfo(str(item.metadata.uid), hmac.compare_digest(key, installation.key),
                         data_digest(item.data))  # fmt: skip


def rekey_advice(namespace: str) -> str:
    """How to put another key in effect on purpose, and what it costs."""
    return (
        f"to change the key on purpose, put the new one in Secret {namespace}/"
        f"{INSTALLATION_SECRET} (kubectl create secret generic {INSTALLATION_SECRET} -n "
        f"{namespace} --from-literal=key=... --dry-run=client -o yaml | kubectl replace -f -) "
        "and restart every replica (kubectl rollout restart deployment): every revision "
        "(every cluster redeployed) and every AWS ExternalId (every role's trust policy, "
        "cloudcred trust-policy) changes"
    )


def deleted_key_message(namespace: str) -> str:
    return (
        f"Secret {namespace}/{INSTALLATION_SECRET} was deleted while the operator ran; it "
        "wrote it back with the installation key it uses (from memory), so revisions and "
        "ExternalIds stay as they are. Keep a back up of this Secret; " + rekey_advice(namespace)
    )


def changed_key_message(namespace: str) -> str:
    return (
        f"Secret {namespace}/{INSTALLATION_SECRET} no longer holds the installation key in "
        "use: the operator keeps using the key it loaded at start, until it restarts. If "
        "this was not on purpose, restore the Secret from your backup (kubectl replace -f "
        f"{INSTALLATION_SECRET}.yaml) before any restart; " + rekey_advice(namespace)
    )


def key_from_data(namespace: str, data: dict[str, str]) -> bytes:
    """The key in the installation Secret's (base64) data."""
    try:
        key = base64.b64decode(base64.b64decode(data[KEY_FIELD], validate=True), validate=True)
    except (KeyError, ValueError):
        key = b""
    if len(key) < KEY_BYTES:
        raise InstallationError(
            f"Secret {namespace}/{INSTALLATION_SECRET} has no valid key {KEY_FIELD!r} "
            f"(base64 of at least {KEY_BYTES} random bytes); delete it to start anew"
        )
    return key


_RECORDED_PRINCIPAL: dict[str, str] = {}  # installation namespace -> principal recorded


async def record_principal(kube: Kube, installation: Installation, principal: str) -> None:
    """Record the operator's principal on the installation Secret, once per process and
    value: ``cloudcred trust-policy`` reads it there, never from a credential's status
    (which a tenant with ``cloudcredentials/status`` could write)."""
    namespace = installation.namespace
    if namespace is None or _RECORDED_PRINCIPAL.get(namespace) == principal:
        return
    metadata = await kube.secret_metadata(namespace, INSTALLATION_SECRET)
    if metadata is None:
        return
    if (metadata.annotations or {}).get(PRINCIPAL_ANNOTATION) != principal:
        await kube.annotate_secret(namespace, INSTALLATION_SECRET, str(metadata.uid),
                                   {PRINCIPAL_ANNOTATION: principal})  # fmt: skip
    _RECORDED_PRINCIPAL[namespace] = principal


def recorded_principal(namespace: str) -> str | None:
    """The principal this process recorded on the installation Secret, if any."""
    return _RECORDED_PRINCIPAL.get(namespace)
