"""What the console's pages show: pure functions from cached objects to rows, filters,
sorting and sentences. No I/O here; the cells are the CLI's (``cli/views.py``), so the
page and ``cloudcred list`` say the same thing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from cloudcred import conditions
from cloudcred.cache.store import Key
from cloudcred.cli import views as cli_views
from cloudcred.constants import ROLLOUT_PAUSED_ANNOTATION

PROVIDERS = ("AWS", "GCP", "AZURE", "SCALEWAY")
# The summary conditions: exactly one is True (cloudcred.health).
STATES = ("Ready", "Reconciling", "Stalled")
UNKNOWN_STATE = "Unknown"
# column id -> heading; every column sorts.
COLUMNS = {
    "name": "Name",
    "namespace": "Namespace",
    "provider": "Provider",
    "public_id": "Key or role",
    "clusters": "Clusters",
    "state": "Ready",
    "key_age": "Key age",
    "next_rotation": "Next rotation",
    "unused_since": "Unused since",
    "rollout": "Rollout",
}
CLUSTER_COLUMNS = {
    "namespace": "Namespace",
    "name": "Name",
    "region": "Region",
    "deploy": "Deploy",
    "deployed_revision": "Deployed revision",
    "up_to_date": "Up to date",
    "condition": "Condition",
}

# Condition types, as a person reads them.
CONDITION_WORDS = {
    "Ready": ("Ready", "Not ready"),
    "Reconciling": ("The operator is working on it", "Nothing in progress"),
    "Stalled": ("Stalled: it needs a person", "Not stalled"),
    "Verified": ("Verified with the provider", "Not verified with the provider"),
    "InUse": ("Used by clusters", "Not used by any cluster"),
    "RotationRecommended": ("Rotation recommended", "No rotation needed"),
    "KeyRotation": ("A key rotation is under way", "No key rotation under way"),
    "DeletionBlocked": ("Deletion is blocked: clusters use it", "Deletion is not blocked"),
    "RolloutComplete": ("Every cluster has the current revision", "The rollout is not complete"),
}


@dataclass(frozen=True)
class CredentialRow:
    namespace: str
    name: str
    provider: str
    public_id: str
    clusters: int
    state: str  # Ready, Reconciling, Stalled or Unknown
    reason: str
    key_age: int | None  # days
    next_rotation: str
    unused_since: str
    rollout: str
    updated: int
    total: int

    @property
    def path(self) -> str:
        return f"/credentials/{self.namespace}/{self.name}"


def summary(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The summary condition that is True and its reason; Unknown before the operator
    has written one."""
    for state in STATES:
        found = cli_views.condition(dict(obj), state)
        if found and found.get("status") == "True":
            return state, str(found.get("reason") or "")
    return UNKNOWN_STATE, "NotChecked"


def key_age_days(status: Mapping[str, Any], now: datetime) -> int | None:
    created = conditions.parse_time(
        status.get("keyCreatedTime") or (status.get("key") or {}).get("createdTime")
    )
    return max((now - created).days, 0) if created else None


def credential_row(obj: Mapping[str, Any], now: datetime) -> CredentialRow:
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    state, reason = summary(obj)
    found = status.get("rollout")
    rollout: dict[str, Any] = found if isinstance(found, dict) else {}
    return CredentialRow(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        provider=str((obj.get("spec") or {}).get("provider", "-")),
        public_id=str(status.get("publicId") or "-"),
        clusters=int(status.get("clusterCount") or 0),
        state=state,
        reason=reason,
        key_age=key_age_days(status, now),
        next_rotation=cli_views.next_rotation_cell(dict(status), now),
        unused_since=str(status.get("unusedSince") or "-"),
        rollout=cli_views.rollout_cell(dict(status)),
        updated=int(rollout.get("updated") or 0),
        total=int(rollout.get("total") or 0),
    )


@dataclass(frozen=True)
class Query:
    """The list page's filters and sort order, from the URL's query string."""

    namespace: str = ""
    provider: str = ""
    state: str = ""
    sort: str = "name"
    descending: bool = False

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Query:
        """Unknown values fall back to the defaults: a query string is user input."""
        provider = args.get("provider", "")
        state = args.get("state", "")
        sort = args.get("sort", "name")
        return cls(
            namespace=args.get("namespace", "")[:253],
            provider=provider if provider in PROVIDERS else "",
            state=state if state in (*STATES, UNKNOWN_STATE) else "",
            sort=sort if sort in COLUMNS else "name",
            descending=args.get("order") == "desc",
        )

    def link(self, **changes: str) -> str:
        """This query with ``changes``, as a query string (empty values left out)."""
        values = {
            "namespace": self.namespace,
            "provider": self.provider,
            "state": self.state,
            "sort": self.sort,
            "order": "desc" if self.descending else "",
        }
        values.update(changes)
        return "?" + urlencode({k: v for k, v in values.items() if v})

    def sort_link(self, column: str) -> str:
        """Sorting by ``column``; the current sort column flips its order."""
        flip = column == self.sort and not self.descending
        return self.link(sort=column, order="desc" if flip else "")

    def aria_sort(self, column: str) -> str:
        if column != self.sort:
            return "none"
        return "descending" if self.descending else "ascending"


def _sort_key(column: str) -> Any:
    def key(row: CredentialRow) -> tuple[Any, ...]:
        # Namespace and name break ties, so the order is the same on every reload.
        value: Any = {
            "name": (row.name, row.namespace),
            "namespace": (row.namespace, row.name),
            "provider": row.provider,
            "public_id": row.public_id,
            "clusters": row.clusters,
            "state": (row.state, row.reason),
            "key_age": -1 if row.key_age is None else row.key_age,
            "next_rotation": row.next_rotation,
            "unused_since": row.unused_since,
            "rollout": (row.total - row.updated, row.total),
        }[column]
        return (value, row.namespace, row.name)

    return key


def credential_rows(
    objects: Iterable[Mapping[str, Any]], query: Query, now: datetime
) -> list[CredentialRow]:
    rows = []
    for obj in objects:
        row = credential_row(obj, now)
        if query.namespace and row.namespace != query.namespace:
            continue
        if query.provider and row.provider != query.provider:
            continue
        if query.state and row.state != query.state:
            continue
        rows.append(row)
    rows.sort(key=_sort_key(query.sort), reverse=query.descending)
    return rows


@dataclass(frozen=True)
class ClusterRow:
    namespace: str
    name: str
    region: str
    deploy: str
    deployed_revision: str
    up_to_date: str  # yes, pending, no; "unknown" when not in the cache
    condition: str  # the Ready condition: True, or the status and reason


def associated(credential: Mapping[str, Any], bound: Iterable[tuple[str, str]]) -> list[Key]:
    """The clusters of a credential: those ``status.clusters`` lists and, past its cap
    (``clustersTruncated``), those the cache knows to be bound to it (``bound``); sorted
    by namespace and name, as the status lists them."""
    status = credential.get("status") or {}
    keys = {(str(c.get("namespace", "")), str(c.get("name", ""))) for c in
            status.get("clusters") or []}  # fmt: skip
    if status.get("clustersTruncated"):
        keys |= set(bound)
    return sorted(keys)


def cluster_rows(
    credential: Mapping[str, Any],
    keys: Iterable[Key],
    clusters: Mapping[Key, Mapping[str, Any]],
) -> list[ClusterRow]:
    """A row per cluster of ``keys`` with what the cache knows of each; one the console
    does not watch (another namespace under ``-n``) still shows with its name."""
    revision = (credential.get("status") or {}).get("revision")
    rows = []
    for key in keys:
        cluster = clusters.get(key)
        if cluster is None:
            rows.append(ClusterRow(*key, "-", "-", "-", "unknown", "not watched by this console"))
            continue
        spec, cluster_status = cluster.get("spec") or {}, cluster.get("status") or {}
        rows.append(
            ClusterRow(
                namespace=key[0],
                name=key[1],
                region=str(spec.get("region") or "-"),
                deploy=str(spec.get("deploy") or "Operator"),
                deployed_revision=str(cluster_status.get("deployedRevision") or "-"),
                up_to_date=cli_views.up_to_date_cell(dict(cluster), revision),
                condition=cli_views.condition_cell(dict(cluster), "Ready"),
            )
        )
    return rows


# Conditions for which True is the bad news.
NEGATIVE = {"Reconciling", "Stalled", "RotationRecommended", "KeyRotation", "DeletionBlocked"}


@dataclass(frozen=True)
class ConditionView:
    type: str
    status: str
    reason: str
    message: str
    since: str
    headline: str  # the condition in words
    tone: str  # good, bad or unknown: how the page colours it


def condition_views(obj: Mapping[str, Any]) -> list[ConditionView]:
    """The conditions, in words; Reconciling and Stalled only when True (False says
    nothing that Ready does not)."""
    found = []
    for item in (obj.get("status") or {}).get("conditions") or []:
        type_, status = str(item.get("type", "")), str(item.get("status", "Unknown"))
        if type_ in ("Reconciling", "Stalled") and status == "False":
            continue
        yes, no = CONDITION_WORDS.get(type_, (type_, f"Not {type_}"))
        headline = yes if status == "True" else no if status == "False" else f"{type_}: unknown"
        if status not in ("True", "False"):
            tone = "unknown"
        else:
            tone = "good" if (status == "True") != (type_ in NEGATIVE) else "bad"
        found.append(
            ConditionView(
                type=type_,
                status=status,
                reason=str(item.get("reason") or ""),
                message=str(item.get("message") or ""),
                since=str(item.get("lastTransitionTime") or ""),
                headline=headline,
                tone=tone,
            )
        )
    return found


@dataclass(frozen=True)
class RolloutView:
    revision: str
    updated: int
    total: int
    paused: bool
    blocked: bool
    why: str  # the RolloutComplete message when paused, blocked or in progress

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else round(100 * self.updated / self.total)

    @property
    def words(self) -> str:
        text = f"{self.updated} of {self.total} clusters on revision {self.revision}"
        if self.paused:
            text += ", paused"
        elif self.blocked:
            text += ", blocked"
        return text


def rollout_view(obj: Mapping[str, Any]) -> RolloutView | None:
    status = obj.get("status") or {}
    rollout = status.get("rollout")
    if not isinstance(rollout, dict):
        return None
    done = cli_views.condition(dict(obj), "RolloutComplete") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return RolloutView(
        revision=str(rollout.get("revision") or status.get("revision") or "-"),
        updated=int(rollout.get("updated") or 0),
        total=int(rollout.get("total") or 0),
        paused=str(annotations.get(ROLLOUT_PAUSED_ANNOTATION, "")).lower() == "true",
        blocked=done.get("reason") == "RolloutBlocked",
        why="" if done.get("status") == "True" else str(done.get("message") or ""),
    )


@dataclass(frozen=True)
class Fact:
    label: str
    value: str


@dataclass
class DetailView:
    row: CredentialRow
    description: str
    revision: str
    identity: str
    secret: str  # the name of the Secret holding the key, never its data
    role_arn: str
    conditions: list[ConditionView]
    rollout: RolloutView | None
    rotation: list[Fact] = field(default_factory=list)
    key: list[Fact] = field(default_factory=list)


ROTATION_FACTS = (
    ("phase", "Phase"),
    ("keyId", "Key"),
    ("previousKeyId", "Previous key"),
    ("reason", "Failing step"),
    ("message", "Message"),
    ("lastRotationTime", "Last rotation"),
    ("nextRotationTime", "Next rotation"),
)
KEY_FACTS = (
    ("id", "Key id"),
    ("createdTime", "Created"),
    ("lastUsedTime", "Last used"),
    ("expiryTime", "Expires"),
)


def detail_view(obj: Mapping[str, Any], now: datetime) -> DetailView:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    rotation, key = status.get("rotation") or {}, status.get("key") or {}
    policy = (spec.get("rotation") or {}).get("policy", "Manual")
    facts = [Fact("Policy", str(policy))]
    facts += [
        Fact(label, str(rotation[name])) for name, label in ROTATION_FACTS if rotation.get(name)
    ]
    return DetailView(
        row=credential_row(obj, now),
        description=str(spec.get("description") or ""),
        revision=str(status.get("revision") or "-"),
        identity=str(status.get("identity") or "-"),
        secret=cli_views.secret_cell(dict(spec)),
        role_arn=str((spec.get("aws") or {}).get("roleArn") or ""),
        conditions=condition_views(obj),
        rollout=rollout_view(obj),
        rotation=facts,
        key=[Fact(label, str(key[name])) for name, label in KEY_FACTS if key.get(name)],
    )


@dataclass(frozen=True)
class EventView:
    type: str
    reason: str
    message: str
    count: int
    last: str


def event_views(events: Iterable[Mapping[str, Any]], limit: int = 20) -> list[EventView]:
    """The most recent ``limit`` Events, newest first."""

    def when(event: Mapping[str, Any]) -> str:
        return str(
            event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            or ""
        )  # fmt: skip

    ordered = sorted(events, key=when, reverse=True)[:limit]
    return [
        EventView(
            type=str(e.get("type") or "Normal"),
            reason=str(e.get("reason") or ""),
            message=str(e.get("message") or ""),
            count=int(e.get("count") or 1),
            last=when(e),
        )
        for e in ordered
    ]
