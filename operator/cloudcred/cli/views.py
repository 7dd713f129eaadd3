"""``cloudcred list`` and ``cloudcred usage``: read-only console views."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from cloudcred.cli import api

# Wide enough never to wrap: long lines are the terminal's business, as with kubectl.
_WIDTH = 10_000
LIST_HEADERS = [
    "NAME",
    "PROVIDER",
    "KEY OR ROLE",
    "CLUSTERS",
    "VERIFIED",
    "KEY AGE",
    "UNUSED SINCE",
    "ROLLOUT",
]
USAGE_HEADERS = ["NAMESPACE", "NAME", "REGION", "DEPLOY", "DEPLOYED REVISION", "UP TO DATE"]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def verified_cell(obj: dict[str, Any]) -> str:
    """``True``, or the status with its reason: ``False (InvalidCredentials)``."""
    found = condition(obj, "Verified")
    if not found:
        return "-"
    status = str(found.get("status", "Unknown"))
    return status if status == "True" else f"{status} ({found.get('reason', '')})"


def key_age_cell(status: dict[str, Any], now: datetime) -> str:
    created = parse_time(status.get("keyCreatedTime"))
    return f"{max((now - created).days, 0)}d" if created else "-"


def rollout_cell(status: dict[str, Any]) -> str:
    rollout = status.get("rollout")
    if not isinstance(rollout, dict):
        return "-"
    return f"{rollout.get('updated', 0)}/{rollout.get('total', 0)}"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def credential_row(obj: dict[str, Any], now: datetime, with_namespace: bool) -> list[str]:
    metadata, status = obj.get("metadata") or {}, obj.get("status") or {}
    count = status.get("clusterCount")
    row = [
        str(metadata.get("name", "")),
        str((obj.get("spec") or {}).get("provider", "-")),
        str(status.get("publicId") or "-"),
        "-" if count is None else str(count),
        verified_cell(obj),
        key_age_cell(status, now),
        str(status.get("unusedSince") or "-"),
        rollout_cell(status),
    ]
    return [str(metadata.get("namespace", "")), *row] if with_namespace else row


def list_rows(
    items: list[dict[str, Any]], now: datetime, with_namespace: bool
) -> tuple[list[str], list[list[str]]]:
    headers = ["NAMESPACE", *LIST_HEADERS] if with_namespace else LIST_HEADERS
    ordered = sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
    return headers, [credential_row(obj, now, with_namespace) for obj in ordered]


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


def usage_view(credential: dict[str, Any], clusters: list[dict[str, Any]]) -> Usage:
    metadata, status = credential["metadata"], credential.get("status") or {}
    revision = status.get("revision")
    rows = []
    for cluster in clusters:
        spec, cluster_status = cluster.get("spec") or {}, cluster.get("status") or {}
        rows.append(
            [
                cluster["metadata"]["namespace"],
                cluster["metadata"]["name"],
                str(spec.get("region", "-")),
                str(spec.get("deploy") or "Operator"),
                str(cluster_status.get("deployedRevision") or "-"),
                up_to_date_cell(cluster, revision),
            ]
        )
    updated = sum(1 for row in rows if row[-1] == "yes")
    total = max(len(rows), int(status.get("clusterCount") or 0))
    header = (
        f"CloudCredential {metadata['namespace']}/{metadata['name']}, revision "
        f"{revision or '-'}: {updated} of {total} clusters on the current revision"
    )
    if len(rows) < total:
        header += f" ({total - len(rows)} not shown: see status.clustersTruncated)"
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


def list_command(kube: api.Kube, namespace: str, all_namespaces: bool) -> int:
    items = api.list_credentials(kube, None if all_namespaces else namespace)
    if not items:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        print(f"No CloudCredentials in {where}.", file=sys.stderr)
        return 0
    headers, rows = list_rows(items, datetime.now(UTC), all_namespaces)
    print_table(headers, rows)
    return 0


def usage_command(kube: api.Kube, namespace: str, name: str) -> int:
    credential = api.get_credential(kube, namespace, name)
    view = usage_view(credential, bound_clusters(credential, api.clusters_using(kube, name)))
    print(view.header)
    if view.rows:
        print_table(USAGE_HEADERS, view.rows)
    return 0
