"""What the console's buttons do: the CLI's own operations (``cli/rotate.py``,
``cli/api.py``), called with the user's identity, and which of them RBAC allows.

Every function here is blocking (the Kubernetes client): the server runs them in a
thread. Errors are ``CliError``s whose messages are the API server's words, never a
secret: a pasted key is parsed by ``cli/keys.py``, which never quotes its input, and
``rotate.redacting`` is the last guard.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cloudcred.cli import api, rotate
from cloudcred.cli.errors import UsageError
from cloudcred.cli.keys import parse_key, rotation_target
from cloudcred.constants import (
    CREDENTIAL_PLURAL,
    FORCE_DELETE_ANNOTATION,
    FORCE_DELETE_BY_ANNOTATION,
    GROUP,
    ROLLOUT_PAUSED_ANNOTATION,
)

MAX_REASON = 256  # a break-glass reason is a sentence


@dataclass(frozen=True)
class Permissions:
    """What this identity may do to the CloudCredentials of one namespace, as
    SelfSubjectAccessReviews say (``kubectl auth can-i``)."""

    patch: bool = False  # rotate now, pause, resume
    rotate: bool = False  # paste a key: create a Secret and patch the credential
    delete: bool = False
    force_delete: bool = False  # break glass: the custom verb, and patch and delete

    @property
    def any(self) -> bool:
        return self.patch or self.rotate or self.delete


def permissions(kube: api.Kube, namespace: str) -> Permissions:
    questions = {
        "patch": ("patch", CREDENTIAL_PLURAL, GROUP),
        "delete": ("delete", CREDENTIAL_PLURAL, GROUP),
        "force": ("force-delete", CREDENTIAL_PLURAL, GROUP),
        "secrets": ("create", "secrets", ""),
    }
    with ThreadPoolExecutor(len(questions)) as pool:
        futures = {
            name: pool.submit(api.can_i, kube, verb, resource, namespace, group)
            for name, (verb, resource, group) in questions.items()
        }
        allowed = {name: future.result() for name, future in futures.items()}
    return Permissions(
        patch=allowed["patch"],
        rotate=allowed["patch"] and allowed["secrets"],
        delete=allowed["delete"],
        force_delete=allowed["force"] and allowed["patch"] and allowed["delete"],
    )


@dataclass(frozen=True)
class Offer:
    """The actions a credential's page offers: those its spec allows and RBAC too."""

    paste: bool  # a static key, Manual rotation
    rotate_now: bool  # Automatic rotation
    pause: bool
    resume: bool
    delete: bool
    break_glass: bool


def offer(obj: dict[str, Any], allowed: Permissions) -> Offer:
    spec = obj.get("spec") or {}
    metadata = obj.get("metadata") or {}
    automatic = (spec.get("rotation") or {}).get("policy") == "Automatic"
    try:
        rotation_target(str(metadata.get("namespace")), str(metadata.get("name")), spec)
        has_key = True
    except UsageError:  # a role, workload identity: nothing to paste
        has_key = False
    paused = (metadata.get("annotations") or {}).get(ROLLOUT_PAUSED_ANNOTATION) == "true"
    in_use = int((obj.get("status") or {}).get("clusterCount") or 0) > 0
    return Offer(
        paste=allowed.rotate and has_key and not automatic,
        rotate_now=allowed.patch and automatic,
        pause=allowed.patch and not paused,
        resume=allowed.patch and paused,
        delete=allowed.delete,
        break_glass=allowed.force_delete and in_use,
    )


def rotate_with(kube: api.Kube, namespace: str, name: str, text: str) -> str:
    """``cloudcred rotate`` without waiting: the pasted key into a new Secret, the
    credential switched to it; the message says what changed (never the key)."""
    credential = api.get_credential(kube, namespace, name)
    target = rotation_target(namespace, name, credential.get("spec") or {})
    key = parse_key(target, text)
    with rotate.redacting(key):
        return rotate.put_in_place(kube, credential, target, key).message


def rotate_now(kube: api.Kube, namespace: str, name: str) -> str:
    rotate.request_rotation(kube, namespace, name)
    return f"Asked the operator to rotate the key of {namespace}/{name} now."


def set_paused(kube: api.Kube, namespace: str, name: str, paused: bool) -> str:
    api.annotate(kube, namespace, name, {ROLLOUT_PAUSED_ANNOTATION: "true" if paused else None})
    return f"The rollout of {namespace}/{name} is {'paused' if paused else 'resumed'}."


def delete(kube: api.Kube, namespace: str, name: str) -> str:
    api.delete_credential(kube, namespace, name)
    return f"CloudCredential {namespace}/{name} is being deleted."


def break_glass(kube: api.Kube, namespace: str, name: str, reason: str) -> str:
    """The documented break glass: the reason and the user's own name in the annotations,
    then the delete."""
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("break glass needs a reason: why must this credential go now?")
    if len(reason) > MAX_REASON:
        raise UsageError(f"the reason is longer than {MAX_REASON} characters")
    user = api.whoami(kube)
    api.annotate(kube, namespace, name, {FORCE_DELETE_ANNOTATION: reason,
                                         FORCE_DELETE_BY_ANNOTATION: user})  # fmt: skip
    api.delete_credential(kube, namespace, name)
    return f"CloudCredential {namespace}/{name} is being deleted by {user}: {reason}"
