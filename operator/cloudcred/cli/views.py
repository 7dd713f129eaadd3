"""``cloudcred list`` and ``cloudcred usage``: read-only console views."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from cloudcred import conditions
from cloudcred.cli import api, output
from cloudcred.cli.errors import ApiError

# Wide enough never to wrap: long lines are the terminal's business, as with kubectl.
_WIDTH = 10_000
LIST_HEADERS = [
    "NAME",
    "PROVIDER",
    "KEY OR ROLE",
    "CLUSTERS",
    "VERIFIED",
    "KEY AGE",
    "NEXT ROTATION",
    "UNUSED SINCE",
    "ROLLOUT",
]
USAGE_HEADERS = ["NAMESPACE", "NAME", "REGION", "DEPLOY", "DEPLOYED REVISION", "UP TO DATE"]
# -o wide: what `kubectl get -o wide` would add, the columns after the default ones.
LIST_WIDE_HEADERS = ["READY", "REVISION", "SECRET", "IDENTITY"]
USAGE_WIDE_HEADERS = ["READY", "REDEPLOY", "LAST DEPLOYED"]
# Past this many namespaces (or when status.clusters is capped), usage tries one
# cluster-wide list before one list per namespace.
PER_NAMESPACE_LISTS = 10


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def condition_cell(obj: dict[str, Any], type_: str) -> str:
    """``True``, or the status with its reason: ``False (InvalidCredentials)``."""
    found = condition(obj, type_)
    if not found:
        return "-"
    status = str(found.get("status", "Unknown"))
    return status if status == "True" else f"{status} ({found.get('reason', '')})"


def verified_cell(obj: dict[str, Any]) -> str:
    return condition_cell(obj, "Verified")


def secret_cell(spec: dict[str, Any]) -> str:
    """The Secret the credential's key is read from (``-`` for a role)."""
    for block, field in (("aws", "secretAccessKeyRef"), ("gcp", "serviceAccountKeyRef"),
                         ("azure", "clientSecretRef"), ("scaleway", "secretKeyRef")):  # fmt: skip
        ref = (spec.get(block) or {}).get(field)
        if isinstance(ref, dict) and ref.get("name"):
            return str(ref["name"])
    return "-"


def key_age_cell(status: dict[str, Any], now: datetime) -> str:
    created = conditions.parse_time(status.get("keyCreatedTime"))
    return f"{max((now - created).days, 0)}d" if created else "-"


def next_rotation_cell(status: dict[str, Any], now: datetime) -> str:
    """Automatic rotation: the phase while one is under way, else how long until the next
    ("in 89d", "due"); "-" without automatic rotation."""
    rotation = status.get("rotation") or {}
    if rotation.get("phase") not in (None, "Idle"):
        return str(rotation["phase"])
    due = conditions.parse_time(rotation.get("nextRotationTime"))
    if due is None:
        return "-"
    return f"in {(due - now).days}d" if due > now else "due"


def rollout_cell(status: dict[str, Any]) -> str:
    rollout = status.get("rollout")
    if not isinstance(rollout, dict):
        return "-"
    return f"{rollout.get('updated', 0)}/{rollout.get('total', 0)}"


def credential_row(
    obj: dict[str, Any], now: datetime, with_namespace: bool, wide: bool = False
) -> list[str]:
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    count = status.get("clusterCount")
    row = [
        str(metadata.get("name", "")),
        str((obj.get("spec") or {}).get("provider", "-")),
        str(status.get("publicId") or "-"),
        "-" if count is None else str(count),
        verified_cell(obj),
        key_age_cell(status, now),
        next_rotation_cell(status, now),
        str(status.get("unusedSince") or "-"),
        rollout_cell(status),
    ]
    if wide:
        row += [
            condition_cell(obj, "Ready"),
            str(status.get("revision") or "-"),
            secret_cell(obj.get("spec") or {}),
            str(status.get("identity") or "-"),
        ]
    return [str(metadata.get("namespace", "")), *row] if with_namespace else row


def by_name(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))


def list_rows(
    items: list[dict[str, Any]], now: datetime, with_namespace: bool, wide: bool = False
) -> tuple[list[str], list[list[str]]]:
    headers = [*LIST_HEADERS, *(LIST_WIDE_HEADERS if wide else [])]
    headers = ["NAMESPACE", *headers] if with_namespace else headers
    return headers, [credential_row(obj, now, with_namespace, wide) for obj in by_name(items)]


@dataclass(frozen=True)
class Usage:
    header: str
    rows: list[list[str]]


def bound_clusters(credential: dict[str, Any], candidates: list[dict[str, Any]]) -> list[Any]:
    """The candidates the credential lists in status.clusters (past the listing's cap,
    those whose status names this credential)."""
    status = credential.get("status") or {}
    metadata = credential["metadata"]
    listed = {(c.get("namespace"), c.get("name")) for c in status.get("clusters") or []}
    me = {"namespace": metadata["namespace"], "name": metadata["name"]}

    def bound(cluster: dict[str, Any]) -> bool:
        key = (cluster["metadata"]["namespace"], cluster["metadata"]["name"])
        if key in listed:
            return True
        bound_to = ((cluster.get("status") or {}).get("credential")) or {}
        names_me = {k: bound_to.get(k) for k in me} == me
        return bool(status.get("clustersTruncated")) and names_me

    chosen = [cluster for cluster in candidates if bound(cluster)]
    return sorted(chosen, key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"]))


def up_to_date_cell(cluster: dict[str, Any], revision: str | None) -> str:
    """yes: deployed with the credential's revision; pending: marked for redeploy (or its
    first deployment); no: neither."""
    if revision and (cluster.get("status") or {}).get("deployedRevision") == revision:
        return "yes"
    pending = condition(cluster, "RedeployPending")
    return "pending" if pending and pending.get("status") == "True" else "no"


def usage_view(
    credential: dict[str, Any],
    clusters: list[dict[str, Any]],
    wide: bool = False,
    hidden: Sequence[str] = (),
) -> Usage:
    """``hidden``: namespaces whose Clusters could not be listed (no access)."""
    metadata, status = credential["metadata"], credential.get("status") or {}
    revision = status.get("revision")
    rows = []
    for cluster in clusters:
        spec, cluster_status = cluster.get("spec") or {}, cluster.get("status") or {}
        row = [
            cluster["metadata"]["namespace"],
            cluster["metadata"]["name"],
            str(spec.get("region", "-")),
            str(spec.get("deploy") or "Operator"),
            str(cluster_status.get("deployedRevision") or "-"),
            up_to_date_cell(cluster, revision),
        ]
        if wide:
            pending = condition(cluster, "RedeployPending") or {}
            row += [
                condition_cell(cluster, "Ready"),
                str(pending.get("reason") or "-"),
                str(cluster_status.get("lastDeployedTime") or "-"),
            ]
        rows.append(row)
    updated = sum(1 for row in rows if row[5] == "yes")
    total = max(len(rows), int(status.get("clusterCount") or 0))
    header = (
        f"CloudCredential {metadata['namespace']}/{metadata['name']}, revision "
        f"{revision or '-'}: {updated} of {total} clusters on the current revision"
    )
    if len(rows) < total:
        why = (
            f"no access to Clusters in {', '.join(hidden)}"
            if hidden
            else "see status.clustersTruncated"
        )
        header += f" ({total - len(rows)} not shown: {why})"
    return Usage(header, rows)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A kubectl-like table: no borders, bold headers on a terminal, no trailing blanks."""
    console = Console(width=_WIDTH, markup=False, highlight=False, emoji=False)
    table = Table(box=None, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    with console.capture() as capture:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))


def list_command(kube: api.Kube, namespace: str, all_namespaces: bool, out: str | None) -> int:
    items = api.list_credentials(kube, None if all_namespaces else namespace)
    if out in ("json", "yaml"):
        sys.stdout.write(output.render(output.as_list(by_name(items), "CloudCredential"), out))
        return 0
    if out == "name":
        sys.stdout.write(output.names(by_name(items), "CloudCredential"))
        return 0
    if not items:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        print(f"No CloudCredentials in {where}.", file=sys.stderr)
        return 0
    headers, rows = list_rows(items, datetime.now(UTC), all_namespaces, wide=out == "wide")
    print_table(headers, rows)
    return 0


def usage_namespaces(credential: dict[str, Any]) -> list[str]:
    """Where the bound clusters are: the credential's namespace, then the namespaces
    status.clusters names."""
    own = str(credential["metadata"]["namespace"])
    listed = {
        str(c.get("namespace")) for c in (credential.get("status") or {}).get("clusters") or []
    }
    return [own, *sorted(listed - {own, "None"})]


def find_clusters(
    kube: api.Kube, credential: dict[str, Any], all_namespaces: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """The Clusters that reference the credential, and the namespaces that could not be
    listed. With ``all_namespaces``, one cluster-wide list (a refusal is the command's
    error); otherwise one list per namespace where bound clusters are, so that a tenant
    with rights in those namespaces only sees what it may see."""
    name = str(credential["metadata"]["name"])
    if all_namespaces:
        try:
            return api.clusters_using(kube, name, None), []
        except ApiError as error:
            if error.status == 403:
                error.message += (
                    "; -A needs the right to list clusters.cloudcred.io in every namespace: "
                    "without -A, usage lists the credential's namespace and those its "
                    "status.clusters names"
                )
            raise
    namespaces = usage_namespaces(credential)
    truncated = bool((credential.get("status") or {}).get("clustersTruncated"))
    if truncated or len(namespaces) > PER_NAMESPACE_LISTS:
        try:
            return api.clusters_using(kube, name, None), []
        except ApiError as error:
            if error.status != 403:
                raise
    found, hidden = [], []
    for namespace in namespaces:
        try:
            found += api.clusters_using(kube, name, namespace)
        except ApiError as error:
            if error.status != 403:
                raise
            print(f"cloudcred: warning: {error.message}", file=sys.stderr)
            hidden.append(namespace)
    return found, hidden


def usage_command(
    kube: api.Kube, namespace: str, name: str, all_namespaces: bool, out: str | None
) -> int:
    credential = api.get_credential(kube, namespace, name)
    candidates, hidden = find_clusters(kube, credential, all_namespaces)
    clusters = bound_clusters(credential, candidates)
    if out in ("json", "yaml"):
        sys.stdout.write(output.render(output.as_list(clusters, "Cluster"), out))
        return 0
    if out == "name":
        sys.stdout.write(output.names(clusters, "Cluster"))
        return 0
    wide = out == "wide"
    view = usage_view(credential, clusters, wide=wide, hidden=hidden)
    print(view.header)
    if view.rows:
        print_table([*USAGE_HEADERS, *(USAGE_WIDE_HEADERS if wide else [])], view.rows)
    return 0
