"""docs/api.md is what the generator makes of the committed CRDs, and it shows them whole;
the hand-written docs link only to files and headings that exist, the README stays a front
page, and the decisions log stays numbered and listed."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from cloudcred.api.docs import load_crds, parse_conditions, render

ROOT = Path(__file__).resolve().parents[2]
CRDS = load_crds(ROOT / "crds")


def test_committed_api_reference_matches_the_crds() -> None:
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == render(CRDS), "docs/api.md drifted from crds/: run `make docs`"


def test_rendering_is_deterministic() -> None:
    assert render(load_crds(ROOT / "crds")) == render(load_crds(ROOT / "crds"))


def _paths(schema: dict[str, Any], path: str) -> list[str]:
    found = [path]
    for name, sub in schema.get("properties", {}).items():
        found += _paths(sub, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        found += [p for p in _paths(items, f"{path}[]") if p != f"{path}[]"]
    return found


@pytest.mark.parametrize("crd", CRDS, ids=lambda crd: crd["spec"]["names"]["kind"])
def test_every_field_path_has_a_row(crd: dict[str, Any]) -> None:
    doc = render([crd])
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    paths = [
        p
        for part in ("spec", "status")
        if part in root["properties"]
        for p in _paths(root["properties"][part], part)
    ]
    missing = [p for p in paths if f"| `{p}` |" not in doc]
    assert paths
    assert missing == []


@pytest.mark.parametrize("crd", CRDS, ids=lambda crd: crd["spec"]["names"]["kind"])
def test_every_printer_column_and_field_selector_is_listed(crd: dict[str, Any]) -> None:
    doc = render([crd])
    version = crd["spec"]["versions"][0]
    for column in version.get("additionalPrinterColumns", []):
        assert f"| {column['name']} | {column['type']} | `{column['jsonPath']}` |" in doc
    for selectable in version.get("selectableFields", []):
        assert f"`{selectable['jsonPath'].lstrip('.')}`" in doc


def _cluster() -> dict[str, Any]:
    return copy.deepcopy(next(c for c in CRDS if c["spec"]["names"]["kind"] == "Cluster"))


def _spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def test_a_field_row_shows_type_requirement_default_limits_and_rules() -> None:
    crd = _cluster()
    _spec_schema(crd)["properties"]["replicas"] = {
        "type": "integer",
        "description": "How many.",
        "default": 3,
        "minimum": 1,
        "maximum": 9,
        "x-kubernetes-validations": [{"rule": "self % 2 == 1", "message": "must be odd"}],
    }
    _spec_schema(crd)["required"].append("replicas")
    doc = render([crd])
    limits = "≥ 1; ≤ 9; checked: must be odd"
    assert f"| `spec.replicas` | integer | required | `3` | {limits} | How many. |" in doc
    assert "| `spec.replicas` | must be odd | `self % 2 == 1` |" in doc


def test_a_rule_with_a_field_path_is_shown_on_that_field() -> None:
    doc = render([_cluster()])
    region = next(line for line in doc.splitlines() if line.startswith("| `spec.region` | string"))
    assert "checked: not a region name of AWS (for example us-east-1)" in region


def test_a_schema_keyword_the_reference_cannot_show_is_refused() -> None:
    crd = _cluster()
    _spec_schema(crd)["properties"]["region"]["oneOf"] = [{"pattern": "^a"}]
    with pytest.raises(ValueError, match=r"spec\.region: .* cannot show oneOf"):
        render([crd])


def test_pipes_in_patterns_do_not_break_the_table() -> None:
    doc = render([_cluster()])
    rows = [line for line in doc.splitlines() if line.startswith("| `spec.region` |")]
    # a CEL rule with || is escaped, so the row still has the table's three columns
    assert all(line.replace("\\|", "").count("|") == 4 for line in rows[1:])


def test_conditions_with_reasons_become_a_table() -> None:
    parsed = parse_conditions("Ready; CredentialBound (Bound, CredentialNotFound); InUse.")
    assert parsed == [
        ("Ready", []),
        ("CredentialBound", ["Bound", "CredentialNotFound"]),
        ("InUse", []),
    ]


def test_conditions_in_prose_are_kept_as_prose() -> None:
    assert parse_conditions("The summary: Ready (Ready), and more.") is None


# The hand-written documentation: README.md, DESIGN.md, CHANGELOG.md and docs/.

DOCS = [ROOT / "README.md", ROOT / "DESIGN.md", ROOT / "CHANGELOG.md",
        *sorted((ROOT / "docs").rglob("*.md"))]  # fmt: skip
DECISIONS = ROOT / "docs" / "decisions"


def _outside_code(path: Path) -> list[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, with their numbers."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    found: set[str] = set()
    for _, line in _outside_code(path):
        heading = re.match(r"#{1,6} (.+)$", line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            number = 1
            unique = anchor
            while unique in found:
                unique = f"{anchor}-{number}"
                number += 1
            found.add(unique)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_of_the_docs_resolves(doc: Path) -> None:
    broken = []
    for number, line in _outside_code(doc):
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            name, _, anchor = target.partition("#")
            linked = (doc.parent / name).resolve() if name else doc
            if not linked.exists():
                broken.append(f"{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{number}: {target} (no such heading)")
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links"


def test_the_readme_is_a_front_page_that_states_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "README.md is the front page: the manual is docs/"
    assert re.search(r"^make test\b", readme, re.MULTILINE), "CI runs the README's `make test`"
    assert "docs/README.md" in readme


def test_every_decision_is_numbered_dated_and_listed() -> None:
    files = sorted(DECISIONS.glob("[0-9][0-9][0-9][0-9]-*.md"))
    index = (DECISIONS / "README.md").read_text()
    assert files
    numbers = [int(path.name[:4]) for path in files]
    # Each number once, in order; decisions taken on parallel branches are numbered from
    # ranges given out in advance, so a range not used up leaves a gap.
    assert numbers == sorted(set(numbers)), "a decision number is used twice"
    for number, path in zip(numbers, files, strict=True):
        assert re.fullmatch(rf"{number:04d}-[a-z0-9]+(-[a-z0-9]+)*\.md", path.name), path.name
        text = path.read_text()
        assert text.startswith(f"# {number:04d}. "), path.name
        date = re.search(r"^Date: (\d{4}-\d{2}-\d{2})$", text, re.MULTILINE)
        assert date, f"{path.name} has no date"
        assert f"| [{number:04d}]({path.name}) | {date.group(1)} |" in index, path.name
