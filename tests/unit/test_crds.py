"""The committed CRDs are exactly what the pydantic models generate."""

from pathlib import Path

import pytest
import yaml

from cloudcred.api.crd import CRD_FILES, render

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("filename", sorted(CRD_FILES))
def test_committed_crd_matches_the_models(filename: str) -> None:
    committed = (CRD_DIR / filename).read_text()
    assert committed == render(CRD_FILES[filename]()), (
        f"crds/{filename} drifted from operator/cloudcred/api: run `make crds`"
    )


def _walk(schema: dict, path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


@pytest.mark.parametrize("filename", sorted(CRD_FILES))
def test_every_spec_and_status_field_has_a_description(filename: str) -> None:
    crd = yaml.safe_load((CRD_DIR / filename).read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        path
        for part in ("spec", "status")
        if part in root["properties"]  # CredentialBoundary has no status
        for path, schema in _walk(root["properties"][part], part)
        if not schema.get("description")
    ]
    assert missing == []


@pytest.mark.parametrize("filename", sorted(CRD_FILES))
def test_schema_is_structural(filename: str) -> None:
    """No JSON Schema constructs that Kubernetes refuses in a structural schema."""
    text = (CRD_DIR / filename).read_text()
    for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "title:", "additionalProperties: false"):
        assert forbidden not in text
