"""``cloudcred permissions NAME``: the last permission check of a credential, per
PermissionSet, with everything that is missing (``status.permissions``)."""

from __future__ import annotations

import sys
from typing import Any

from cloudcred.cli import api, output
from cloudcred.cli.errors import UsageError

FORMATS = ("json", "yaml")
# Exit codes past the common ones: a CI step can gate a deployment on them.
EXIT_MISSING, EXIT_UNKNOWN = 4, 5
HEADERS = ["PERMISSION SET", "VERDICT", "CHECKED", "MISSING"]


def report(credential: dict[str, Any]) -> dict[str, Any]:
    """The check as one document: the credential, its ``PermissionsSufficient``
    condition and ``status.permissions``."""
    metadata, status = credential.get("metadata") or {}, credential.get("status") or {}
    found = next((c for c in status.get("conditions") or []
                  if c.get("type") == "PermissionsSufficient"), None)  # fmt: skip
    permissions = status.get("permissions") or {}
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "revision": status.get("revision"),
        "condition": found,
        "checkedRevision": permissions.get("revision"),
        "checkedTime": permissions.get("checkedTime"),
        "sets": permissions.get("sets") or [],
    }


def exit_code(document: dict[str, Any]) -> int:
    """0: nothing missing (or nothing to check); 4: something is missing; 5: the check
    could not say, or has not been made for the current revision yet."""
    condition = document["condition"]
    if condition is None and not document["sets"]:
        return 0
    if condition is None or document["checkedRevision"] != document["revision"]:
        return EXIT_UNKNOWN
    return {"True": 0, "False": EXIT_MISSING}.get(str(condition.get("status")), EXIT_UNKNOWN)


def text(document: dict[str, Any]) -> str:
    who = f"CloudCredential {document['namespace']}/{document['name']}"
    condition = document["condition"]
    if condition is None and not document["sets"]:
        return f"{who}: no PermissionSet is named by it or by its clusters: nothing to check\n"
    lines = []
    if condition is None:
        lines.append(f"{who}: not checked yet")
    else:
        lines.append(f"{who}: PermissionsSufficient {condition.get('status')} "
                     f"({condition.get('reason')}): {condition.get('message')}")  # fmt: skip
    if document["checkedRevision"] != document["revision"]:
        lines.append(f"checked revision {document['checkedRevision'] or '-'}; the current one "
                     f"({document['revision'] or '-'}) is not checked yet")  # fmt: skip
    elif document["checkedTime"]:
        lines.append(f"checked revision {document['checkedRevision']} at {document['checkedTime']}")
    rows = [HEADERS] + [
        [str(s.get("name")), f"{s.get('sufficient')} ({s.get('reason')})",
         str(s.get("checked", 0)), str(s.get("missingCount", 0))]
        for s in document["sets"]
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines.append("")
    lines += ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]  # fmt: skip
    for result in document["sets"]:
        if result.get("sufficient") == "Unknown":
            lines += ["", f"{result.get('name')}: {result.get('message')}"]
        missing = result.get("missing") or []
        if missing:
            shown = len(missing)
            more = int(result.get("missingCount") or shown) - shown
            lines += ["", f"missing in {result.get('name')}:"]
            lines += [f"  {need}" for need in missing]
            if more > 0:
                lines.append(f"  ... and {more} more (status lists {shown})")
    return "\n".join(lines) + "\n"


def permissions_command(kube: api.Kube, namespace: str, name: str, fmt: str | None) -> int:
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"-o {fmt}: choose one of {', '.join(FORMATS)}")
    document = report(api.get_credential(kube, namespace, name))
    if fmt is None:
        sys.stdout.write(text(document))
    else:
        sys.stdout.write(output.render(document, fmt))
    return exit_code(document)
