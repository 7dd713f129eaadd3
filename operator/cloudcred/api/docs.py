"""Generate the API reference (``docs/api.md``) from the CRDs in ``crds/``.

The CRDs are generated from the pydantic models (``crd.py``); this renders what they
say for readers without a cluster at hand (``kubectl explain`` needs one): every kind,
every field path with its type, whether it is required, its default, its limits and its
description, the printer columns, the field selectors, the CEL rules and the conditions.
``make docs`` (and ``make crds``) rewrite the file; a unit test fails when it drifts.

The output depends only on the CRD files, read in file-name order, and holds no date,
so running it twice gives the same bytes.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]

# Every OpenAPI keyword the reference knows how to show. A CRD using another one makes
# the generator fail instead of leaving the keyword out of the reference unnoticed.
KNOWN_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "required",
        "properties",
        "items",
        "additionalProperties",
        "default",
        "enum",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "nullable",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
    }
)

HEADER = (
    "<!-- Generated from crds/ by `make docs` (operator/cloudcred/api/docs.py). Do not edit. -->\n"
)


@dataclass
class Field:
    """One row of a kind's field table."""

    path: str
    type: str
    required: bool
    default: str
    constraints: list[str]
    description: str


@dataclass
class Rule:
    """A CEL validation rule (``x-kubernetes-validations``) and where it applies."""

    path: str
    message: str
    rule: str


@dataclass
class Walk:
    fields: list[Field] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


def type_name(schema: Schema) -> str:
    """The field's type as a reader of Go or Kubernetes docs expects it."""
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "")
    if kind == "array":
        return "[]" + type_name(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map[string]" + type_name(schema["additionalProperties"])
    if kind == "string" and schema.get("format"):
        return f"string ({schema['format']})"
    if not kind and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    return str(kind) or "any"


def _code(value: Any) -> str:
    """A value as inline code: YAML scalars as a user writes them."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value if value else '""'
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        text = text.removesuffix("\n...").strip()
    return f"`{text}`"


def constraints(schema: Schema) -> list[str]:
    """The limits the API server enforces on this field, in a fixed order."""
    out: list[str] = []
    if "enum" in schema:
        out.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    if "pattern" in schema:
        out.append(f"pattern {_code(schema['pattern'])}")
    for low, high, unit in (
        ("minLength", "maxLength", "characters"),
        ("minItems", "maxItems", "items"),
        ("minProperties", "maxProperties", "entries"),
    ):
        if low in schema and high in schema:
            out.append(f"{schema[low]} to {schema[high]} {unit}")
        elif low in schema:
            out.append(f"at least {schema[low]} {unit}")
        elif high in schema:
            out.append(f"at most {schema[high]} {unit}")
    if "minimum" in schema:
        sign = ">" if schema.get("exclusiveMinimum") else "≥"
        out.append(f"{sign} {schema['minimum']}")
    if "maximum" in schema:
        sign = "<" if schema.get("exclusiveMaximum") else "≤"
        out.append(f"{sign} {schema['maximum']}")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = ", ".join(schema.get("x-kubernetes-list-map-keys", []))
        out.append(f"list keyed by {keys}")
    elif list_type == "set":
        out.append("unique items")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        out.append("any fields kept")
    if schema.get("nullable"):
        out.append("may be null")
    return out


def _check_keywords(schema: Schema, path: str) -> None:
    unknown = sorted(set(schema) - KNOWN_KEYWORDS)
    if unknown:
        raise ValueError(f"{path}: the API reference cannot show {', '.join(unknown)} yet")


def walk(schema: Schema, path: str, required: bool, out: Walk) -> None:
    """Append ``schema`` (at ``path``) and everything below it to ``out``."""
    _check_keywords(schema, path)
    row = Field(
        path=path,
        type=type_name(schema),
        required=required,
        default=_code(schema["default"]) if "default" in schema else "",
        constraints=constraints(schema),
        description=" ".join(str(schema.get("description", "")).split()),
    )
    out.fields.append(row)
    for rule in schema.get("x-kubernetes-validations", []):
        target = path + rule.get("fieldPath", "")
        message = " ".join(str(rule.get("message", "")).split())
        out.rules.append(Rule(path=target, message=message, rule=str(rule["rule"])))
    _walk_children(schema, path, out)


def _walk_children(schema: Schema, path: str, out: Walk) -> None:
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        walk(sub, f"{path}.{name}", name in required, out)
    for key, suffix, each in (
        ("items", "[]", "each item"),
        ("additionalProperties", ".*", "each value"),
    ):
        inner = schema.get(key)
        if not isinstance(inner, dict):
            continue
        _check_keywords(inner, path + suffix)
        if inner.get("properties") or isinstance(inner.get("items"), dict):
            _walk_children(inner, path + suffix, out)
            continue
        # A list of scalars or a map of scalars: the item's limits belong to this row.
        row = out.fields[-1] if out.fields and out.fields[-1].path == path else None
        limits = constraints(inner) + [
            f"checked: {' '.join(str(r.get('message', '')).split())}"
            for r in inner.get("x-kubernetes-validations", [])
        ]
        if row is not None and limits:
            row.constraints.append(f"{each}: " + ", ".join(limits))


def attach_rules(out: Walk) -> None:
    """Show each CEL rule's message in the row of the field it names (its fieldPath)."""
    by_path = {row.path: row for row in out.fields}
    for rule in out.rules:
        if rule.path in by_path:
            by_path[rule.path].constraints.append(f"checked: {rule.message}")


_CONDITION = re.compile(r"^([A-Z][A-Za-z0-9]*)(?:\s*\((.*)\))?$")


def parse_conditions(description: str) -> list[tuple[str, list[str]]] | None:
    """``Ready; CredentialBound (Bound, CredentialNotFound); InUse.`` as condition types
    with their reasons, or None when the description is not in that form."""
    text = " ".join(description.split()).rstrip(".")
    items: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char in ";," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    parsed: list[tuple[str, list[str]]] = []
    for item in items:
        match = _CONDITION.match(item)
        if match is None:
            return None
        reasons = [r.strip() for r in (match.group(2) or "").split(",") if r.strip()]
        parsed.append((match.group(1), reasons))
    return parsed or None


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _anchor(kind: str) -> str:
    return kind.lower()


def render_kind(crd: Schema) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    kind = names["kind"]
    lines = [f"## {kind}", ""]
    for version in spec["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        scope = "namespaced" if spec["scope"] == "Namespaced" else "cluster-scoped"
        facts = [
            f"`{spec['group']}/{version['name']}`",
            scope,
            f"resource `{names['plural']}.{spec['group']}`",
        ]
        if names.get("shortNames"):
            facts.append("short names " + ", ".join(f"`{n}`" for n in names["shortNames"]))
        if names.get("categories"):
            facts.append("categories " + ", ".join(f"`{c}`" for c in names["categories"]))
        if "status" in version.get("subresources", {}):
            facts.append("status subresource")
        if not version.get("served", True):
            facts.append("not served")
        lines += [" · ".join(facts), "", " ".join(root.get("description", "").split()), ""]
        lines += _columns(f"{names['plural']}.{spec['group']}", version)
        lines += _selectable(version)
        out = Walk()
        required = set(root.get("required", []))
        for part in ("spec", "status"):
            if part in root.get("properties", {}):
                walk(root["properties"][part], part, part in required, out)
        attach_rules(out)
        lines += _conditions(out)
        lines += _fields(out)
        lines += _rules(out)
    return lines


def _columns(resource: str, version: Schema) -> list[str]:
    columns = version.get("additionalPrinterColumns", [])
    if not columns:
        return []
    header = ["Column", "Type", "JSONPath", "Shown"]
    rows = [
        [
            column["name"],
            column["type"],
            f"`{column['jsonPath']}`",
            "`-o wide`" if column.get("priority", 0) else "always",
        ]
        for column in columns
    ]
    if any(column.get("description") for column in columns):
        header.append("Description")
        for row, column in zip(rows, columns, strict=True):
            row.append(" ".join(str(column.get("description", "")).split()))
    return [f"### Columns of `kubectl get {resource}`", "", *_table(header, rows), ""]


def _selectable(version: Schema) -> list[str]:
    selectable = version.get("selectableFields", [])
    if not selectable:
        return []
    paths = ", ".join(f"`{entry['jsonPath'].lstrip('.')}`" for entry in selectable)
    return [
        "### Field selectors",
        "",
        f"`kubectl get --field-selector` accepts {paths} (Kubernetes 1.31 or later).",
        "",
    ]


def _conditions(out: Walk) -> list[str]:
    row = next((r for r in out.fields if r.path == "status.conditions"), None)
    if row is None:
        return []
    lines = ["### Conditions", ""]
    parsed = parse_conditions(row.description)
    if parsed is None:
        return [*lines, row.description, ""]
    rows = [[f"`{name}`", ", ".join(f"`{r}`" for r in reasons) or "—"] for name, reasons in parsed]
    return [
        *lines,
        "`status.conditions[]` holds these types (`kubectl wait --for=condition=TYPE`):",
        "",
        *_table(["Type", "Reasons"], rows),
        "",
    ]


def _fields(out: Walk) -> list[str]:
    rows = [
        [
            f"`{row.path}`",
            row.type,
            "required" if row.required else "optional",
            row.default,
            "; ".join(row.constraints),
            row.description,
        ]
        for row in out.fields
    ]
    header = ["Field", "Type", "Required", "Default", "Limits", "Description"]
    return ["### Fields", "", *_table(header, rows), ""]


def _rules(out: Walk) -> list[str]:
    if not out.rules:
        return []
    rows = [[f"`{r.path}`", r.message, f"`{r.rule}`"] for r in out.rules]
    return [
        "### Validation rules",
        "",
        "Checked by the API server on create and update (CEL, `x-kubernetes-validations`):",
        "",
        *_table(["Field", "Message", "Rule"], rows),
        "",
    ]


def load_crds(folder: Path) -> list[Schema]:
    """The CustomResourceDefinitions in ``folder`` (``*.yaml``), in file-name order."""
    crds = []
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                crds.append(document)
    return crds


def render(crds: list[Schema]) -> str:
    """The whole API reference as Markdown."""
    groups = sorted({crd["spec"]["group"] for crd in crds})
    kinds = [crd["spec"]["names"]["kind"] for crd in crds]
    lines = [
        HEADER,
        "# API reference",
        "",
        "The custom resources of API group " + ", ".join(f"`{g}`" for g in groups) + ": "
        "every field with its type, whether it is required, its default, the limits the "
        "API server enforces, and what it means. `kubectl explain` shows the same "
        "descriptions on a cluster (`kubectl explain cloudcredentials.spec --recursive`).",
        "",
        "Paths are relative to the object; `[]` is an item of a list, `*` a value of a map. "
        "*Required* applies within the parent object, when the parent is set.",
        "",
        *[f"- [{kind}](#{_anchor(kind)})" for kind in kinds],
        "",
    ]
    for crd in crds:
        lines += render_kind(crd)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> None:
    """``python -m cloudcred.api.docs CRD_FOLDER OUTPUT``: write the reference."""
    folder = Path(argv[0]) if argv else Path("crds")
    target = Path(argv[1]) if len(argv) > 1 else Path("docs/api.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(load_crds(folder)))


if __name__ == "__main__":
    main(sys.argv[1:])
