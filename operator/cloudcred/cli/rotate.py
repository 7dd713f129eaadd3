"""``cloudcred rotate``: put a new key in place, follow the rollout, say what is safe.

The new key goes into a new Secret (owned by the credential), and one merge patch of the
credential's spec switches the Secret reference and the public key id together, so the
operator never sees a half-rotated credential. The key is read from stdin or a file,
never from the command line, and never printed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from kubernetes.client.rest import ApiException
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cloudcred.cli import api, output
from cloudcred.cli.errors import ApiError, CliError, TimedOutError, UsageError
from cloudcred.cli.keys import (
    NewKey,
    Target,
    new_secret_name,
    parse_key,
    rotation_target,
)
from cloudcred.cli.views import condition
from cloudcred.constants import API_VERSION, CREDENTIAL_PLURAL, GROUP, VERSION

MAX_INPUT = 1 << 20  # a key file is a few kilobytes
MANAGED_BY = {"app.kubernetes.io/managed-by": "cloudcred-cli"}
# Verified=False reasons that the operator retries on its own: keep waiting.
TRANSIENT_REASONS = {"ProviderUnreachable", "SecretNotFound"}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
GITOPS_FORMATS = ("yaml", "json")
# Metadata that is the server's or the operator's, not the author's: left out of the
# manifest --gitops prints.
_SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
_OPERATOR_ANNOTATION_PREFIX = "kopf.cloudcred.io/"
_AWS_USER = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:user/(?:.*/)?([^/]+)$")


def parse_timeout(value: str) -> float:
    """Seconds in a Go-style duration: 30s, 5m, 1h, 1h30m (argparse ``type``)."""
    parts = _DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise argparse.ArgumentTypeError("not a duration: use 30s, 5m, 1h or 1h30m")
    seconds = sum(float(number) * _SECONDS[unit] for number, unit in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the timeout must be more than 0")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def read_input(path: str | None, stdin: IO[str] | None) -> str:
    """The key material from ``path``, or from stdin when it is None or ``-``."""
    if path is None or path == "-":
        if stdin is None or stdin.isatty():
            raise UsageError(
                "the new key is read from stdin, and stdin is a terminal: pipe it in "
                "(aws iam create-access-key | cloudcred rotate NAME) or pass --from-file PATH"
            )
        return _limited(stdin.read(MAX_INPUT + 1), "stdin")
    try:
        with open(path, encoding="utf-8") as handle:
            return _limited(handle.read(MAX_INPUT + 1), path)
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def _limited(text: str, source: str) -> str:
    if len(text) > MAX_INPUT:
        raise UsageError(f"{source} holds more than {MAX_INPUT} characters: not a key")
    return text


@dataclass(frozen=True)
class OldKey:
    """The key being replaced, and how to delete it at the provider once unused."""

    description: str
    commands: list[str]
    key_id: str | None = None  # GCP private_key_id, when readable


def old_key(target: Target, status: dict[str, Any], gcp: tuple[str, str] | None) -> OldKey:
    """``gcp`` is (private_key_id, client_email) of the old key file, when readable."""
    if target.provider == "AWS":
        match = _AWS_USER.match(str(status.get("identity") or ""))
        user = f" --user-name {match.group(1)}" if match else ""
        command = f"aws iam delete-access-key --access-key-id {target.public_id}{user}"
        return OldKey(str(target.public_id), [command])
    if target.provider == "SCALEWAY":
        return OldKey(str(target.public_id), [f"scw iam api-key delete {target.public_id}"])
    if target.provider == "AZURE":
        app = target.settings.get("clientId")
        return OldKey(
            f"(the client secret) of app {app}",
            [
                f"az ad app credential list --id {app}    # the old secret's keyId",
                f"az ad app credential delete --id {app} --key-id KEY_ID",
            ],
        )
    if gcp:
        key_id, email = gcp
        command = f"gcloud iam service-accounts keys delete {key_id} --iam-account {email}"
        return OldKey(f"{key_id} of {email}", [command], key_id)
    email = status.get("publicId") or "EMAIL"
    return OldKey(
        f"(key id unknown) of {email}",
        [
            f"gcloud iam service-accounts keys list --iam-account {email}    # the old key's id",
            f"gcloud iam service-accounts keys delete KEY_ID --iam-account {email}",
        ],
    )


def read_old_gcp_key(kube: api.Kube, target: Target) -> tuple[str, str] | None:
    """private_key_id and client_email of the key file in the current Secret; the rest of
    the file is dropped unread. None when the Secret cannot be read or parsed."""
    try:
        secret = kube.core.read_namespaced_secret(
            target.secret_name, target.namespace, _request_timeout=api.REQUEST_TIMEOUT
        )
        info = json.loads(base64.b64decode((secret.data or {})[target.secret_key]))
        key_id, email = info.get("private_key_id"), info.get("client_email")
    except Exception:  # whatever went wrong, the advice falls back to listing the keys
        return None
    return (key_id, email) if isinstance(key_id, str) and isinstance(email, str) else None


def check_new(target: Target, key: NewKey, old: OldKey) -> None:
    """Refuse the key the credential uses already."""
    same = (key.public_id is not None and key.public_id == target.public_id) or (
        key.key_id is not None and key.key_id == old.key_id
    )
    if same:
        shown = key.public_id or key.key_id
        raise UsageError(
            f"{shown} is the key already in use by {target.namespace}/"
            f"{target.name}: create a new key at the provider first"
        )


def secret_body(target: Target, uid: str, name: str, key: NewKey) -> dict[str, Any]:
    owner = {"apiVersion": API_VERSION, "kind": "CloudCredential", "name": target.name, "uid": uid}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": dict(MANAGED_BY),
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "stringData": {target.secret_key: key.secret.get_secret_value()},
    }


def switch_patch(target: Target, secret_name: str, key: NewKey, version: str) -> dict[str, Any]:
    """The one merge patch: new Secret name and new public id together, conditional on
    the resourceVersion that was read."""
    block: dict[str, Any] = {target.ref_field: {"name": secret_name}}
    if target.public_field and key.public_id:
        block[target.public_field] = key.public_id
    return {"metadata": {"resourceVersion": version}, "spec": {target.block: block}}


def create_secret(kube: api.Kube, body: dict[str, Any]) -> None:
    metadata = body["metadata"]
    api.call(
        f"creating Secret {metadata['namespace']}/{metadata['name']}",
        kube.core.create_namespaced_secret,
        metadata["namespace"],
        body,
    )


def delete_secret(kube: api.Kube, namespace: str, name: str) -> None:
    # Best effort: the owner reference removes it with the credential anyway.
    with contextlib.suppress(Exception):
        kube.core.delete_namespaced_secret(name, namespace, _request_timeout=api.REQUEST_TIMEOUT)


def switch(
    kube: api.Kube, target: Target, credential: dict[str, Any], secret_name: str, key: NewKey
) -> dict[str, Any]:
    """Apply the switch patch; on a write conflict, retry while the provider block is
    still the one read."""
    what = f"updating CloudCredential {target.namespace}/{target.name}"
    for attempt in range(3):
        body = switch_patch(target, secret_name, key, credential["metadata"]["resourceVersion"])
        try:
            return dict(
                kube.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    target.namespace,
                    CREDENTIAL_PLURAL,
                    target.name,
                    body,
                    _content_type="application/merge-patch+json",
                    _request_timeout=api.REQUEST_TIMEOUT,
                )
            )
        except ApiException as error:
            if error.status != 409 or attempt == 2:
                raise ApiError(f"{what}: {api.describe_api_error(error)}") from None
        credential = api.get_credential(kube, target.namespace, target.name)
        if rotation_target(target.namespace, target.name, credential["spec"]) != target:
            raise CliError(f"{what}: its spec.{target.block} changed meanwhile; run rotate again")
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Rollout:
    revision: str
    updated: int
    total: int
    complete: bool
    message: str

    def describe(self) -> str:
        return f"{self.updated}/{self.total} clusters on revision {self.revision}"


def new_revision(obj: dict[str, Any], generation: int, old_revision: str | None) -> str | None:
    """The new revision once the operator has checked generation ``generation``."""
    status = obj.get("status") or {}
    revision = status.get("revision")
    if int(status.get("observedGeneration") or 0) < generation or revision == old_revision:
        return None
    return str(revision) if revision else None


def refusal(obj: dict[str, Any], generation: int) -> str | None:
    """``Reason: message`` when the provider refused generation ``generation``'s key."""
    found = condition(obj, "Verified")
    if not found or found.get("status") != "False" or found.get("reason") in TRANSIENT_REASONS:
        return None
    observed = found.get("observedGeneration") or (obj.get("status") or {}).get(
        "observedGeneration"
    )
    if int(observed or 0) < generation:
        return None
    return f"{found.get('reason')}: {found.get('message', '')}"


def verification_pending(obj: dict[str, Any]) -> bool:
    """True while Verified is False for a reason the operator retries by itself."""
    found = condition(obj, "Verified")
    return bool(
        found and found.get("status") == "False" and found.get("reason") in TRANSIENT_REASONS
    )


def rollout_of(obj: dict[str, Any], revision: str) -> Rollout:
    status = obj.get("status") or {}
    rollout = status.get("rollout") or {}
    current = rollout.get("revision") == revision
    done = condition(obj, "RolloutComplete") or {}
    return Rollout(
        revision=revision,
        updated=int(rollout.get("updated") or 0) if current else 0,
        total=int(rollout.get("total") or status.get("clusterCount") or 0),
        complete=current and done.get("status") == "True",
        message=str(done.get("message") or "") if current else "",
    )


Show = Callable[[str, int | None, int | None], None]


@dataclass
class Waiter:
    """Polls the credential until the new key is verified and rolled out."""

    fetch: Callable[[], dict[str, Any]]
    timeout: float
    show: Show
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    interval: float = 1.0

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.timeout

    def verified(self, generation: int, old_revision: str | None) -> str:
        """The new revision; CliError if the provider refused the key."""
        while True:
            obj = self.fetch()
            revision = new_revision(obj, generation, old_revision)
            if revision and (refused := refusal(obj, generation)):
                raise CliError(
                    f"the new key was refused: {refused}. Clusters are not redeployed with a "
                    "refused key until it verifies; fix the key and run rotate again"
                )
            if revision and not verification_pending(obj):
                return revision
            self._tick(self._not_verified(obj, generation))

    def rolled_out(self, revision: str) -> Rollout:
        while True:
            obj = self.fetch()
            now = str((obj.get("status") or {}).get("revision") or "")
            if now != revision:
                raise CliError(
                    f"the credential changed again (revision {now}) while revision "
                    f"{revision} rolled out; check it and run rotate again"
                )
            rollout = rollout_of(obj, revision)
            total = max(rollout.total, 1)
            done = rollout.updated if rollout.total else int(rollout.complete)
            self.show(rollout.describe(), done, total)
            if rollout.complete:
                return rollout
            self._tick(rollout.describe() + (f" ({rollout.message})" if rollout.message else ""))

    def _tick(self, progress: str) -> None:
        """Sleep until the next poll; ``progress`` says how far it got, for a timeout."""
        if self.clock() >= self.deadline:
            raise TimedOutError(f"timed out after {format_duration(self.timeout)}: {progress}")
        self.sleep(self.interval)

    @staticmethod
    def _not_verified(obj: dict[str, Any], generation: int) -> str:
        status = obj.get("status") or {}
        if int(status.get("observedGeneration") or 0) < generation:
            return f"the operator has not picked up generation {generation} yet"
        found = condition(obj, "Verified") or {}
        return (
            f"the new key is not verified yet (Verified {found.get('status', '-')} "
            f"{found.get('reason', '')}: {found.get('message', '')})"
        )


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True, markup=False, highlight=False),
    )


def switched_message(target: Target, secret_name: str, key: NewKey) -> str:
    fields = f"spec.{target.block}.{target.ref_field}"
    if target.public_field:
        fields += f" and spec.{target.block}.{target.public_field}"
    new = f" (key {key.public_id})" if key.public_id else ""
    return (
        f"CloudCredential {target.namespace}/{target.name}: {fields} switched to Secret "
        f"{target.namespace}/{secret_name}{new}"
    )


@dataclass(frozen=True)
class KeyUsers:
    """Other credentials that name the old key in their spec, and why not every
    namespace could be searched ("" when it was)."""

    names: list[str]
    unsearched: str = ""


def done_message(
    target: Target, rollout: Rollout, old: OldKey, others: list[str],
    users: KeyUsers = KeyUsers([]),
) -> str:  # fmt: skip
    clusters = {
        0: "No cluster uses this credential.",
        1: f"The 1 cluster uses the new key (revision {rollout.revision}).",
    }.get(
        rollout.total,
        f"All {rollout.total} clusters use the new key (revision {rollout.revision}).",
    )
    if users.names:
        lines = [
            clusters,
            f"The old key {old.description} is no longer used by this credential's "
            f"clusters, but {', '.join(users.names)} names it too: keep it at the provider "
            "until no credential does.",
        ]
    else:
        lines = [
            clusters,
            f"The old key {old.description} is no longer used by any cluster: delete it at "
            "the provider:",
            *(f"  {command}" for command in old.commands),
        ]
        if users.unsearched:
            lines.append(
                f"Not every namespace could be searched ({users.unsearched}): "
                f"check that no other credential names {old.description} first."
            )
    ns, secret = target.namespace, target.secret_name
    if others:
        lines.append(
            f"The previous Secret {ns}/{secret} is still referenced by "
            f"{', '.join(others)}: keep it."
        )
    else:
        lines.append(
            f"The previous Secret {ns}/{secret} is no longer referenced: "
            f"kubectl delete secret -n {ns} {secret}"
        )
    return "\n".join(lines)


def gitops_message(target: Target, secret_name: str, key: NewKey, old: OldKey) -> str:
    changes = "".join(f"\n  {line}" for line in changed_fields(target, secret_name, key))
    return (
        f"Created Secret {target.namespace}/{secret_name} (owned by the credential). "
        f"CloudCredential {target.namespace}/{target.name} is unchanged on the server: "
        f"commit the manifest printed on stdout, which changes:{changes}\n"
        f"Once it is synced, follow the rollout with `cloudcred usage {target.name} -n "
        f"{target.namespace}` and delete the old key {old.description} only when every "
        "cluster is on the new revision."
    )


def naming_the_key(items: list[dict[str, Any]], target: Target) -> list[str]:
    """Other credentials, of any namespace in ``items``, whose spec names the old key's
    public id (an AWS access key id, a Scaleway access key): a person told to delete
    that key would break them. A key id kept in a Secret is not seen here; the
    operator's own rotation checks those."""
    if not target.public_id:
        return []
    names = []
    for item in items:
        metadata = item.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or target.namespace), metadata["name"]
        if (namespace, name) == (target.namespace, target.name):
            continue
        try:
            other = rotation_target(namespace, name, item.get("spec") or {})
        except UsageError:
            continue
        if other.provider == target.provider and other.public_id == target.public_id:
            names.append(f"{namespace}/{name}")
    return sorted(names)


def referencing(items: list[dict[str, Any]], target: Target) -> list[str]:
    """Other credentials of the namespace that reference the old Secret."""
    names = []
    for item in items:
        name = item["metadata"]["name"]
        try:
            other = rotation_target(target.namespace, name, item.get("spec") or {})
        except UsageError:
            continue
        if name != target.name and other.secret_name == target.secret_name:
            names.append(f"{target.namespace}/{name}")
    return names


def merge_patch(document: Any, patch: Any) -> Any:
    """``document`` with the JSON merge patch ``patch`` applied (RFC 7386), as the API
    server applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(document) if isinstance(document, dict) else {}
    for field, value in patch.items():
        if value is None:
            merged.pop(field, None)
        else:
            merged[field] = merge_patch(merged.get(field), value)
    return merged


def gitops_manifest(
    credential: dict[str, Any], target: Target, secret_name: str, key: NewKey
) -> dict[str, Any]:
    """The CloudCredential as its author would commit it after the rotation: the spec the
    switch patch would give, the author's labels and annotations, nothing the server or
    the operator wrote (status, uid, resourceVersion, finalizers, bookkeeping)."""
    metadata = credential["metadata"]
    kept: dict[str, Any] = {"name": metadata["name"], "namespace": metadata["namespace"]}
    if metadata.get("labels"):
        kept["labels"] = dict(metadata["labels"])
    annotations = {
        name: value
        for name, value in (metadata.get("annotations") or {}).items()
        if name not in _SERVER_ANNOTATIONS and not name.startswith(_OPERATOR_ANNOTATION_PREFIX)
    }
    if annotations:
        kept["annotations"] = annotations
    patch = switch_patch(target, secret_name, key, "")
    return {
        "apiVersion": API_VERSION,
        "kind": "CloudCredential",
        "metadata": kept,
        "spec": merge_patch(credential.get("spec") or {}, patch["spec"]),
    }


def changed_fields(target: Target, secret_name: str, key: NewKey) -> list[str]:
    """``spec.aws.accessKeyId: OLD -> NEW`` lines: what the manifest changes."""
    prefix = f"spec.{target.block}"
    lines = [f"{prefix}.{target.ref_field}.name: {target.secret_name} -> {secret_name}"]
    if target.public_field and key.public_id:
        lines.append(f"{prefix}.{target.public_field}: {target.public_id} -> {key.public_id}")
    return lines


@dataclass(frozen=True)
class Request:
    namespace: str
    name: str
    from_file: str | None
    timeout: float
    wait: bool
    gitops: str | None = None  # print the manifest in this format instead of patching


def rotate_command(kube: api.Kube, request: Request, stdin: IO[str] | None) -> int:
    credential = api.get_credential(kube, request.namespace, request.name)
    target = rotation_target(request.namespace, request.name, credential.get("spec") or {})
    key = parse_key(target, read_input(request.from_file, stdin))
    with redacting(key):
        return _rotate(kube, request, credential, target, key)


@contextlib.contextmanager
def redacting(key: NewKey) -> Iterator[None]:
    """A last guard: no error message leaving the block may carry the key."""
    secret = key.secret.get_secret_value()
    try:
        yield
    except CliError as error:
        error.message = error.message.replace(secret, "[redacted]") if secret else error.message
        raise


@dataclass(frozen=True)
class Switched:
    """Steps 1 and 2 done: the credential uses the new Secret."""

    secret_name: str
    patched: dict[str, Any]
    old: OldKey
    message: str


def _new_secret(
    kube: api.Kube, credential: dict[str, Any], target: Target, key: NewKey
) -> tuple[str, OldKey]:
    """Step 1: the new Secret (after refusing the key in use); its name and the old key."""
    status = credential.get("status") or {}
    gcp = read_old_gcp_key(kube, target) if target.provider == "GCP" else None
    old = old_key(target, status, gcp)
    check_new(target, key, old)
    secret_name = new_secret_name(target.name, datetime.now(UTC))
    create_secret(kube, secret_body(target, credential["metadata"]["uid"], secret_name, key))
    return secret_name, old


def put_in_place(
    kube: api.Kube, credential: dict[str, Any], target: Target, key: NewKey
) -> Switched:
    """Steps 1 and 2: the new Secret, then the one switch patch (the Secret is removed
    again when the switch fails). What ``cloudcred rotate`` and the console both do."""
    secret_name, old = _new_secret(kube, credential, target, key)
    try:
        patched = switch(kube, target, credential, secret_name, key)
    except CliError:
        delete_secret(kube, target.namespace, secret_name)
        raise
    return Switched(secret_name, patched, old, switched_message(target, secret_name, key))


def _rotate(
    kube: api.Kube, request: Request, credential: dict[str, Any], target: Target, key: NewKey
) -> int:
    status = credential.get("status") or {}
    if request.gitops:
        secret_name, old = _new_secret(kube, credential, target, key)
        manifest = gitops_manifest(credential, target, secret_name, key)
        sys.stdout.write(output.render(manifest, request.gitops))
        print(gitops_message(target, secret_name, key, old), file=sys.stderr)
        return 0
    switched = put_in_place(kube, credential, target, key)
    old = switched.old
    print(switched.message, flush=True)
    if not request.wait:
        print(
            f"Not waiting: follow the rollout with `cloudcred usage {target.name} -n "
            f"{target.namespace}`; delete the old key {old.description} only when every "
            "cluster is on the new revision."
        )
        return 0
    generation = int(switched.patched["metadata"]["generation"])
    try:
        rollout = _wait(kube, request, generation, status.get("revision"))
    except TimedOutError as error:
        raise TimedOutError(
            f"{error.message}. The new key stays configured and the rollout "
            f"goes on: follow it with `cloudcred usage {target.name} -n "
            f"{target.namespace}`"
        ) from None
    others = _still_referencing(kube, target)
    print(done_message(target, rollout, old, others, _key_users(kube, target)))
    return 0


def _wait(kube: api.Kube, request: Request, generation: int, old_revision: str | None) -> Rollout:
    with _progress() as progress:
        task = progress.add_task("waiting for the operator to verify the new key", total=None)

        def show(description: str, completed: int | None, total: int | None) -> None:
            progress.update(task, description=description, completed=completed, total=total)

        waiter = Waiter(
            lambda: api.get_credential(kube, request.namespace, request.name), request.timeout, show
        )
        revision = waiter.verified(generation, old_revision)
        show(f"new key verified: rolling out revision {revision}", 0, None)
        return waiter.rolled_out(revision)


def _key_users(kube: api.Kube, target: Target) -> KeyUsers:
    """Credentials of every namespace that name the old key, as far as the user may list
    them: a refusal is said, with the namespace's own credentials searched."""
    try:
        return KeyUsers(naming_the_key(api.list_credentials(kube, None), target))
    except CliError as error:
        unsearched = error.message
    try:
        own = api.list_credentials(kube, target.namespace)
    except CliError:
        own = []
    return KeyUsers(naming_the_key(own, target), unsearched)


def _still_referencing(kube: api.Kube, target: Target) -> list[str]:
    try:
        return referencing(api.list_credentials(kube, target.namespace), target)
    except CliError:
        return []


# -- rotate --now: ask the operator for an automatic rotation and follow it ---------------

ROTATE_NOW_ANNOTATION = "cloudcred.io/rotate-now"


def rotation_state(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("status") or {}).get("rotation") or {})


def request_rotation(kube: api.Kube, namespace: str, name: str) -> str:
    """Annotate the credential so that the operator rotates its key now (Automatic only);
    return the request's time, which status.rotation.requested echoes."""
    credential = api.get_credential(kube, namespace, name)
    policy = ((credential.get("spec") or {}).get("rotation") or {}).get("policy", "Manual")
    if policy != "Automatic":
        raise UsageError(
            f"CloudCredential {namespace}/{name} has spec.rotation.policy "
            f"{policy}: --now asks the operator to rotate, which it does only under "
            "Automatic. Give the new key on stdin instead (cloudcred rotate --help)"
        )
    asked = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api.annotate(kube, namespace, name, {ROTATE_NOW_ANNOTATION: asked})
    return asked


def rotate_now(kube: api.Kube, request: Request) -> int:
    """Ask for an automatic rotation now, then follow: the new key, its rollout, the old
    key's retirement."""
    asked = request_rotation(kube, request.namespace, request.name)
    credential = api.get_credential(kube, request.namespace, request.name)
    print(f"Asked the operator to rotate the key of {request.namespace}/{request.name} now.",
          flush=True)  # fmt: skip
    if not request.wait:
        print(f"Not waiting: follow it with `kubectl describe ccred {request.name} -n "
              f"{request.namespace}` (status.rotation).")  # fmt: skip
        return 0
    with _progress() as progress:
        task = progress.add_task("waiting for the operator to start the rotation", total=None)

        def show(description: str, completed: int | None, total: int | None) -> None:
            progress.update(task, description=description, completed=completed, total=total)

        waiter = Waiter(lambda: api.get_credential(kube, request.namespace, request.name),
                        request.timeout, show)  # fmt: skip
        state = follow_rotation(waiter, asked)
    grace = ((credential.get("spec") or {}).get("rotation") or {}).get("gracePeriod", "24h")
    print(f"Rotated: the credential uses key {state.get('keyId')}, on every cluster. The old "
          f"key {state.get('previousKeyId') or ''} stays active for the grace period "
          f"({grace}), then the operator deactivates it where the provider allows and "
          "deletes it a day later (the installation's "
          "CLOUDCRED_ROTATION_DELETE_AFTER).")  # fmt: skip
    return 0


def follow_rotation(waiter: Waiter, asked: str) -> dict[str, Any]:
    """Poll until the rotation asked at ``asked`` has rolled out (Retiring or done); a
    failed step is an error (the operator keeps retrying it)."""
    while True:
        obj = waiter.fetch()
        state = rotation_state(obj)
        phase = state.get("phase", "Idle")
        mine = state.get("requested") == asked
        if mine and state.get("reason"):
            raise CliError(f"the rotation is stuck: {state['reason']}: {state.get('message')} "
                           "(the operator retries it)")  # fmt: skip
        if mine and (
            state.get("abandoned") or str(state.get("message") or "").startswith("rotation stopped")
        ):
            raise CliError(f"{state.get('message')}")
        if mine and phase in ("Retiring", "Deleting"):
            return state
        if mine and phase == "Idle" and state.get("lastRotationTime"):
            return state
        if mine and phase == "RollingOut":
            revision = str((obj.get("status") or {}).get("revision") or "")
            if revision and revision != state.get("fromRevision"):
                rollout = rollout_of(obj, revision)
                waiter.show(f"new key {state.get('keyId')}: {rollout.describe()}",
                            rollout.updated, max(rollout.total, 1))  # fmt: skip
            else:
                waiter.show(f"new key {state.get('keyId')}: waiting for its revision", 0, None)
        elif mine:
            waiter.show(str(state.get("message") or phase), None, None)
        waiter._tick(str(state.get("message") or f"the rotation is at {phase}"))
