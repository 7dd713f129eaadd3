"""``-o json|yaml|name``: the objects as kubectl prints them, for scripts.

A listing is a ``v1`` ``List`` whose ``items`` are the objects as the API server returned
them (with ``apiVersion`` and ``kind``, without managedFields), keys sorted, JSON indented
by four spaces: what ``kubectl get -o json`` prints, so the same jq and yq filters work on
both.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from cloudcred.constants import API_VERSION, GROUP

# What every listing command accepts; the table is the default.
LISTING_FORMATS = ("json", "yaml", "wide", "name")


def as_list(items: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """A ``v1`` ``List`` of ``items``, each with its apiVersion and kind, without
    ``metadata.managedFields`` (kubectl hides them too, unless --show-managed-fields)."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [_shown(item, kind) for item in items],
    }


def _shown(item: dict[str, Any], kind: str) -> dict[str, Any]:
    metadata = {k: v for k, v in (item.get("metadata") or {}).items() if k != "managedFields"}
    return {"apiVersion": API_VERSION, "kind": kind, **item, "metadata": metadata}


def render(document: dict[str, Any], output: str) -> str:
    """``document`` as JSON or YAML, ending with a newline."""
    if output == "json":
        return json.dumps(document, indent=4, sort_keys=True) + "\n"
    return yaml.safe_dump(document, default_flow_style=False, sort_keys=True)


def names(items: list[dict[str, Any]], kind: str) -> str:
    """``-o name``: ``<kind>.<group>/<name>`` per line, as kubectl prints it."""
    prefix = f"{kind.lower()}.{GROUP}"
    return "".join(f"{prefix}/{item['metadata']['name']}\n" for item in items)
