"""The Helm chart ships the CRDs and admission policies of crds/ and deploy/admission/
through symbolic links (a chart cannot read files outside its folder; helm follows the
links, also when packaging), and every value in values.yaml is documented. (Rendering
and the RBAC comparison with deploy/ are in tests/integration/test_install.py: they
need helm and kubectl.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cloudcred"


@pytest.mark.parametrize(("link", "target"), [("crds", "crds"), ("admission", "deploy/admission")])
def test_chart_links_to_the_shipped_manifests(link: str, target: str) -> None:
    path = CHART / "files" / link
    assert path.is_symlink(), f"{path.relative_to(ROOT)} must be a link to {target}/"
    assert path.resolve() == (ROOT / target).resolve()
    assert sorted(path.glob("*.yaml")), f"nothing in {target}/"


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
