"""Which clusters are bound to which credential: plain, side-effect-free decisions.

A cluster is *bound* to the credential its ``spec.credentialRef`` names when that
credential exists, has the same provider, admits the cluster's namespace (its own, or
one matched by ``spec.allowedNamespaces``), and is not being deleted (a cluster that
was already bound stays bound while the deletion waits for it). Only bound clusters
are listed on the credential and hold its deletion, so a cluster in a namespace that
is not admitted cannot pin another team's credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloudcred import conditions, rotation
from cloudcred.api.credential import MAX_LISTED_CLUSTERS
from cloudcred.constants import (
    API_VERSION,
    FINALIZER,
    FORCE_DELETE_ANNOTATION,
    REDEPLOY_ANNOTATION,
    ROLLOUT_PAUSED_ANNOTATION,
)
from cloudcred.interning import SHARED

Key = tuple[str, str]  # (namespace, name)

BOUND, NOT_FOUND, MISMATCH, NOT_ALLOWED, DELETING = (
    "Bound",
    "CredentialNotFound",
    "ProviderMismatch",
    "NamespaceNotAllowed",
    "CredentialDeleting",
)
CREDENTIAL_BOUND, IN_USE, DELETION_BLOCKED = "CredentialBound", "InUse", "DeletionBlocked"
NO_REVISION = "CredentialNotReady"  # Ready reason of a cluster whose credential has no revision
NAMES_IN_MESSAGES = 10
DEFAULT_MAX_CONCURRENT = "25%"


@dataclass(frozen=True)
class CredentialInfo:
    """What binding decisions need to know about a credential."""

    namespace: str
    name: str
    provider: str
    deleting: bool
    allowed_namespaces: dict[str, Any] | None
    revision: str | None
    secret_names: tuple[str, ...]
    generation: int | None = None
    verified_generation: int | None = None  # the generation the revision was computed at
    verification_problem: str | None = None  # why the current revision may not roll out
    paused: bool = False  # cloudcred.io/rollout-paused: "true"
    max_concurrent: int | str = DEFAULT_MAX_CONCURRENT
    force_delete: str | None = None  # cloudcred.io/force-delete: the reason
    delivery: dict[str, Any] | None = None  # spec.delivery: who may receive the values
    # Carried along, not compared: what changes in them that matters is in the fields above.
    uid: str | None = field(default=None, compare=False)
    created: str = field(default="", compare=False)
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    status: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    raw_spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    rotate_now: str | None = None  # cloudcred.io/rotate-now
    guarded: bool = False  # carries the operator's finalizer: its deletion waits for the guard
    # What the credential reconciler published (status.rollout): what clusters read.
    published: tuple[str | None, str | None] = (None, None)  # (revision, blocked)
    # The clusters its status lists (the admission policy's view), and whether the list
    # was cut short (then clusterCount > 0 is what holds a delete).
    listed: frozenset[Key] = field(default=frozenset(), compare=False, repr=False)
    listed_truncated: bool = field(default=False, compare=False)
    # spec.permissionSets, and the last permission check (status.permissions): the
    # revision it checked and each set's (name, True|False|Unknown, message).
    permission_sets: tuple[str, ...] = ()
    permission_report: tuple[str | None, tuple[tuple[str, str, str], ...]] = (None, ())

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def reference(self) -> dict[str, Any]:
        return object_reference("CloudCredential", self.key, self.uid)

    def lists(self, cluster: Key) -> bool:
        """Its status lists this cluster: the admission policy already refuses to delete
        the credential on the cluster's account."""
        return cluster in self.listed or (self.listed_truncated and bool(self.listed))

    @property
    def cluster_facing(self) -> tuple[Any, ...]:
        """What the clusters' own status depends on: a change here concerns every
        cluster that names the credential; any other change concerns none of them."""
        return (self.provider, self.deleting, self.allowed_namespaces, self.published,
                self.paused, self.max_concurrent, self.uid, self.guarded,
                self.permission_sets, self.permission_report)  # fmt: skip

    @property
    def body(self) -> dict[str, Any]:
        """The object as far as the operator keeps it (no kopf bookkeeping)."""
        metadata = {"namespace": self.namespace, "name": self.name, "uid": self.uid,
                    "generation": self.generation, "creationTimestamp": self.created}  # fmt: skip
        return {**self.reference, "metadata": metadata, "spec": self.spec, "status": self.status}

    @property
    def stored_body(self) -> dict[str, Any]:
        """As ``body``, with the spec as stored (not the key in effect after a rotation)."""
        return {**self.body, "spec": self.raw_spec}

    @property
    def spec_changed(self) -> bool:
        """The spec changed and the verifier has not computed its revision yet."""
        return self.generation != self.verified_generation

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CredentialInfo:
        status = body.get("status") or {}
        # The key in effect: a rotated key (status.rotation) in place of the spec's own.
        spec = rotation.effective_spec(body.get("spec") or {}, status)
        block = spec.get(str(spec.get("provider", "")).lower()) or {}
        secrets = sorted({
            ref["name"] for field, ref in block.items()
            if field.endswith("Ref") and isinstance(ref, dict) and "name" in ref
        })  # fmt: skip
        annotations = body["metadata"].get("annotations") or {}
        return cls(
            namespace=body["metadata"]["namespace"],
            name=body["metadata"]["name"],
            provider=str(spec.get("provider", "")),
            deleting=bool(body["metadata"].get("deletionTimestamp")),
            allowed_namespaces=spec.get("allowedNamespaces"),
            revision=status.get("revision"),
            secret_names=tuple(secrets),
            generation=body["metadata"].get("generation"),
            verified_generation=status.get("observedGeneration"),
            verification_problem=_verification_problem(status.get("conditions")),
            paused=annotations.get(ROLLOUT_PAUSED_ANNOTATION, "").lower() == "true",
            max_concurrent=(spec.get("rollout") or {}).get("maxConcurrent", DEFAULT_MAX_CONCURRENT),
            force_delete=annotations.get(FORCE_DELETE_ANNOTATION) or None,
            delivery=spec.get("delivery"),
            uid=body["metadata"].get("uid"),
            created=body["metadata"].get("creationTimestamp", ""),
            spec=dict(spec),
            status=dict(status),
            raw_spec=dict(body.get("spec") or {}),
            rotate_now=annotations.get(rotation.ROTATE_NOW_ANNOTATION) or None,
            guarded=FINALIZER in (body["metadata"].get("finalizers") or ()),
            published=((status.get("rollout") or {}).get("revision"),
                       (status.get("rollout") or {}).get("blocked")),
            listed=frozenset((c.get("namespace", ""), c.get("name", ""))
                             for c in status.get("clusters") or []),
            listed_truncated=bool(status.get("clustersTruncated")),
            permission_sets=tuple(sorted(set(spec.get("permissionSets") or ()))),
            permission_report=_permission_report(status.get("permissions")),
        )  # fmt: skip


def _permission_report(
    report: dict[str, Any] | None,
) -> tuple[str | None, tuple[tuple[str, str, str], ...]]:
    """(revision checked, each set's (name, verdict, message)) of ``status.permissions``."""
    report = report or {}
    sets = tuple((str(s.get("name")), str(s.get("sufficient")), str(s.get("message") or ""))
                 for s in report.get("sets") or () if isinstance(s, dict))  # fmt: skip
    return report.get("revision"), sets


def object_reference(kind: str, key: Key, uid: str | None) -> dict[str, Any]:
    """Enough of one of our objects to post an Event about it."""
    metadata = {"namespace": key[0], "name": key[1], "uid": uid}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata}


def _verification_problem(items: list[dict[str, Any]] | None) -> str | None:
    """Why the credential's current revision may not be rolled out: its check failed,
    or has not run. None when it verified, or cannot or need not be checked
    (VerificationDisabled, VerificationUnavailable)."""
    verified = conditions.find(items, "Verified")
    if verified is None:
        return "it has not been checked yet"
    if verified.get("status") == conditions.TRUE or verified.get("reason") in (
        "VerificationDisabled", "VerificationUnavailable",
    ):  # fmt: skip
        return None
    return f"it failed verification ({verified.get('reason')}: {verified.get('message')})"


# What the reconcilers read of a Cluster's status (its writers' other fields, such as
# lastDeployedTime, are not kept): every condition (the metrics count all of them).
CLUSTER_STATUS_READ = ("conditions", "credential", "deployedRevision", "deployFailure")


def lean_cluster_status(status: dict[str, Any]) -> dict[str, Any]:
    """The part of a Cluster's status the caches keep: the fields the reconcilers
    read, each condition and reference shared with every equal one (``interning``)."""
    kept: dict[str, Any] = {}
    for name in CLUSTER_STATUS_READ:
        value = status.get(name)
        if isinstance(value, list):
            value = [SHARED.flat(item) if isinstance(item, dict) else item for item in value]
        elif isinstance(value, dict):
            value = SHARED.flat(value)
        elif isinstance(value, str):
            value = SHARED.text(value)
        if value is not None:
            kept[name] = value
    return kept


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What binding decisions need to know about a cluster, with its current status.

    Tens of thousands are kept (one per Cluster, see ``cache/``): ``from_body`` keeps
    only what the reconcilers read, with the strings and conditions that clusters
    have in common shared (``interning``)."""

    namespace: str
    name: str
    provider: str
    credential: Key
    generation: int | None
    status: dict[str, Any]
    region: str = ""
    external: bool = False  # spec.deploy: External
    marked: str | None = None  # the cloudcred.io/redeploy-revision annotation
    uid: str | None = None
    credentials_secret: str | None = None  # spec.credentialsSecret.name
    permission_sets: tuple[str, ...] = ()  # spec.permissionSets, sorted
    # Derived once (the reconcilers sort and compare thousands of clusters by them).
    key: Key = field(init=False, compare=False, repr=False)
    deployed_revision: str | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.namespace, self.name))
        object.__setattr__(self, "deployed_revision", self.status.get("deployedRevision") or None)

    def deploy_failure(self, revision: str | None) -> str | None:
        """Why the operator's deploy step last failed to deploy ``revision`` here (its
        ``status.deployFailure``, kept across restarts), or None."""
        failure = self.status.get("deployFailure") or {}
        if revision and failure.get("revision") == revision:
            return str(failure.get("message") or "the deployment failed")
        return None

    @property
    def reference(self) -> dict[str, Any]:
        return object_reference("Cluster", self.key, self.uid)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ClusterInfo:
        metadata, spec = body["metadata"], body.get("spec") or {}
        ref = spec.get("credentialRef") or {}
        namespace = SHARED.text(metadata["namespace"])
        marked = (metadata.get("annotations") or {}).get(REDEPLOY_ANNOTATION)
        return cls(
            namespace=namespace,
            name=metadata["name"],
            provider=SHARED.text(str(spec.get("provider", ""))),
            credential=SHARED.pair(ref.get("namespace") or namespace, ref.get("name", "")),
            generation=metadata.get("generation"),
            status=lean_cluster_status(body.get("status") or {}),
            region=SHARED.text(str(spec.get("region", ""))),
            external=spec.get("deploy") == "External",
            marked=SHARED.text(marked) if isinstance(marked, str) else marked,
            uid=metadata.get("uid"),
            credentials_secret=(spec.get("credentialsSecret") or {}).get("name"),
            permission_sets=tuple(
                sorted({SHARED.text(str(n)) for n in spec.get("permissionSets") or ()})
            ),
        )

    @property
    def was_bound_to(self) -> Key | None:
        """The credential this cluster's status says it is bound to, if any."""
        bound = conditions.find(self.status.get("conditions"), CREDENTIAL_BOUND)
        credential = self.status.get("credential") or {}
        if bound and bound.get("status") == conditions.TRUE and credential.get("name"):
            return (credential.get("namespace", ""), credential["name"])
        return None


@dataclass(frozen=True)
class Binding:
    bound: bool
    reason: str
    message: str


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_admitted(
    credential: CredentialInfo, namespace: str, labels: dict[str, str] | None
) -> bool:
    if namespace == credential.namespace:
        return True
    if credential.allowed_namespaces is None or labels is None:
        return False
    return selector_matches(credential.allowed_namespaces, labels)


def decide(
    cluster: ClusterInfo,
    credential: CredentialInfo | None,
    namespace_labels: dict[str, str] | None,
) -> Binding:
    ref = "/".join(cluster.credential)
    if credential is None:
        return Binding(False, NOT_FOUND, f"CloudCredential {ref} does not exist")
    if credential.provider != cluster.provider:
        return Binding(False, MISMATCH, f"CloudCredential {ref} is for {credential.provider}, "
                                        f"the cluster is on {cluster.provider}")  # fmt: skip
    if not namespace_admitted(credential, cluster.namespace, namespace_labels):
        return Binding(False, NOT_ALLOWED, f"CloudCredential {ref} does not admit namespace "
                       f"{cluster.namespace} (see its spec.allowedNamespaces)")  # fmt: skip
    if credential.deleting:
        if cluster.was_bound_to == credential.key:
            return Binding(True, BOUND, f"bound to {ref}, which is being deleted and waits "
                           "for this cluster: point the cluster at another credential")  # fmt: skip
        return Binding(False, DELETING, f"CloudCredential {ref} is being deleted")
    return Binding(True, BOUND, f"bound to CloudCredential {ref}")


def describe_clusters(clusters: list[Key], home_namespace: str) -> str:
    """'prod-eu, team-b/prod-us and 3 more': names in the credential's own namespace
    plain, others qualified, the first ten only."""
    names = [name if ns == home_namespace else f"{ns}/{name}" for ns, name in clusters]
    shown = ", ".join(names[:NAMES_IN_MESSAGES])
    extra = len(names) - NAMES_IN_MESSAGES
    return f"{shown} and {extra} more" if extra > 0 else shown


def credential_bindings_status(
    credential: CredentialInfo,
    bound: list[Key],
    current_status: dict[str, Any],
    created: str,
) -> dict[str, Any]:
    """The part of a CloudCredential's status the binder owns: the computed list."""
    bound = sorted(bound)
    previous = current_status.get("conditions")
    status: dict[str, Any] = {
        "clusters": [{"namespace": ns, "name": name} for ns, name in bound[:MAX_LISTED_CLUSTERS]],
        "clusterCount": len(bound),
    }
    if len(bound) > MAX_LISTED_CLUSTERS:
        status["clustersTruncated"] = True
    if bound:
        names = describe_clusters(bound, credential.namespace)
        in_use = conditions.condition(
            previous,
            IN_USE,
            conditions.TRUE,
            "InUse",
            f"used by {len(bound)} cluster(s): {names}",
            None,
        )
    else:
        status["unusedSince"] = current_status.get("unusedSince") or (
            created
            if current_status.get("clusterCount") is None
            else conditions.timestamp(conditions.now())
        )
        in_use = conditions.condition(
            previous, IN_USE, conditions.FALSE, "Unused", "no cluster uses this credential", None
        )
    status["conditions"] = [in_use]
    if credential.deleting and bound:
        status["conditions"].append(conditions.condition(
            previous, DELETION_BLOCKED, conditions.TRUE, "InUse",
            f"deletion waits until no cluster uses this credential: {names}; remove the "
            "association first", None))  # fmt: skip
    return status


def same_conditions(
    current: list[dict[str, Any]] | None, desired: list[dict[str, Any]], owned: set[str]
) -> bool:
    """The ``owned`` condition types are equal apart from transition times."""

    def essence(items: list[dict[str, Any]] | None) -> dict[str, tuple[Any, ...]]:
        return {
            c["type"]: (c.get("status"), c.get("reason"), c.get("message"),
                        c.get("observedGeneration"))
            for c in items or []
        }  # fmt: skip

    have = {k: v for k, v in essence(current).items() if k in owned}
    return have == essence(desired)


def unchanged(
    current: dict[str, Any], desired: dict[str, Any], owned: set[str], fields: tuple[str, ...]
) -> bool:
    """The status already says what ``desired`` says, for the ``owned`` condition types
    and these ``fields``: no write is needed."""
    return all(current.get(f) == desired.get(f) for f in fields) and same_conditions(
        current.get("conditions"), desired["conditions"], owned
    )


def find_reason(status: dict[str, Any]) -> str | None:
    """The reason of a cluster's CredentialBound condition, if it has one."""
    found = conditions.find(status.get("conditions"), CREDENTIAL_BOUND)
    return found.get("reason") if found else None
