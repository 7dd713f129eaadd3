"""The Helm chart carries real copies of crds/ and deploy/admission/ under files/, and of
kopf's peering CRDs (deploy/peering/crds.yaml) in its crds/ folder -- not symbolic
links: Flux's source-controller does not follow them when it packages a chart from Git,
and the CRDs and policies would be missing. They are kept identical here; every value
in values.yaml is documented and covered by values.schema.json. (Rendering, the schema
as helm applies it, and the RBAC comparison with deploy/ are in
tests/integration/test_install.py and test_chart.py: they need helm and kubectl.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cloudcred"
# The chart's copy -> the source it copies (`make chart-files`, also run by `make crds`).
COPIES = {"files/crds": "crds", "files/admission": "deploy/admission"}
PEERING_CRDS = ("crds/kopf-peering.yaml", "deploy/peering/crds.yaml")
SYNC = "run `make crds` (or `make chart-files`, which copies them) and commit the result"


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(("copy", "source"), sorted(COPIES.items()))
def test_chart_files_are_identical_copies(copy: str, source: str) -> None:
    path = CHART / copy
    assert not path.is_symlink(), f"{path.relative_to(ROOT)} is a symbolic link: {SYNC}"
    assert path.is_dir(), f"{path.relative_to(ROOT)} is missing: {SYNC}"
    shipped, wanted = files(path), files(ROOT / source)
    assert any(name.endswith(".yaml") for name in wanted), f"nothing in {source}/"
    assert sorted(shipped) == sorted(wanted), (
        f"{path.relative_to(ROOT)} and {source}/ hold different files "
        f"({sorted(set(shipped) ^ set(wanted))}): {SYNC}"
    )
    differing = [name for name in wanted if shipped[name] != wanted[name]]
    assert not differing, f"{path.relative_to(ROOT)}: {differing} differ from {source}/: {SYNC}"


def test_chart_ships_kopfs_peering_crds() -> None:
    """In the chart's crds/ folder: Helm installs them before the templates, so the
    peering object (replicaCount > 1) can be created in the same install."""
    copy, source = PEERING_CRDS
    assert (CHART / copy).is_file(), f"charts/cloudcred/{copy} is missing: {SYNC}"
    assert (CHART / copy).read_bytes() == (ROOT / source).read_bytes(), (
        f"charts/cloudcred/{copy} differs from {source}: {SYNC}"
    )
    assert [path.name for path in (CHART / "crds").iterdir()] == ["kopf-peering.yaml"]


def test_chart_holds_no_symbolic_links() -> None:
    links = [str(path.relative_to(ROOT)) for path in CHART.rglob("*") if path.is_symlink()]
    assert not links, f"symbolic links in the chart (Flux would drop them): {links}"


KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][\w.-]*):(?:\s+(?P<value>\S.*))?$")


def test_every_value_is_documented() -> None:
    """Each key has a comment right above it, or sits under a documented key."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    documented_parents: list[tuple[int, bool]] = []  # (indent, documented) of open keys
    for number, line in enumerate(lines):
        found = KEY.match(line)
        if not found:
            continue
        indent = len(found["indent"])
        while documented_parents and documented_parents[-1][0] >= indent:
            documented_parents.pop()
        commented = number > 0 and lines[number - 1].strip().startswith("#")
        documented = commented or any(flag for _, flag in documented_parents)
        if found["value"] is not None and not documented:
            undocumented.append(f"line {number + 1}: {line.strip()}")
        documented_parents.append((indent, documented))
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


def test_values_parse_and_default_to_secure_settings() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == ""  # the chart's appVersion
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert values["metrics"]["serviceMonitor"]["enabled"] is False
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version
    assert chart["appVersion"] == version[1]


def schema_gaps(values: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Keys of values.yaml that values.schema.json does not describe, and objects users
    write whose schema admits unknown keys (a misspelt value would pass)."""
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    gaps = [] if schema.get("additionalProperties") is False else [f"{where or '/'}: open"]
    for key, value in values.items():
        if key not in schema["properties"]:
            gaps.append(f"{where}/{key}: not in the schema")
        else:
            gaps += schema_gaps(value, schema["properties"][key], f"{where}/{key}")
    return gaps


def test_schema_covers_every_value_and_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not schema_gaps(values, schema), schema_gaps(values, schema)
    # Nothing in the schema that values.yaml does not have (a renamed value left behind).
    assert set(schema["properties"]) == set(values)
    # Free-form Kubernetes types stay open; the blocks users write are closed.
    for free in ("resources", "podSecurityContext", "securityContext", "affinity"):
        assert "additionalProperties" not in schema["properties"][free], free
    # The PrometheusRule block, as its template reads it.
    assert values["prometheusRule"] == {"enabled": False, "labels": {}}
    rule = schema["properties"]["prometheusRule"]
    assert rule["properties"]["enabled"]["type"] == "boolean"
    assert rule["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def test_values_validate_against_the_schema() -> None:
    """values.yaml itself passes (helm validates the merged values the same way)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    with pytest.raises(jsonschema.ValidationError, match="replicaCont"):
        jsonschema.Draft7Validator(schema).validate({**values, "replicaCont": 2})


def test_chart_needs_kubernetes_131() -> None:
    """CRD selectable fields (`cloudcred usage`, --field-selector spec.credentialRef.name)
    are beta, on by default, since 1.31."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.31.0-0"
    for doc in ("README.md", "docs/install.md"):
        text = (ROOT / doc).read_text()
        assert "Kubernetes 1.31 or later" in text, doc
        assert "1.30 or later" not in text, doc
