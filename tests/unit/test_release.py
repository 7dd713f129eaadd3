"""What a release ships is pinned and checked: the image's Python dependencies come from a
hash-locked file that covers every runtime dependency, the base image is pinned by digest,
the workflows pass actionlint and pin every action to a commit, and the version agrees
everywhere a tag publishes it."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = ROOT / ".local" / "bin" / "actionlint"
LOCK = ROOT / "requirements" / "image.txt"
BUILD_LOCK = ROOT / "requirements" / "image-build.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RELOCK = "run `make lock` and commit requirements/"


def parse_lock(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """``name -> (pinned version, hashes)`` of a pip-compile --generate-hashes file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, tuple[Version, list[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{path.name}: an option line: {line}"
        requirement, *options = line.split()
        name, sep, version = requirement.partition("==")
        assert sep, f"{path.name}: {requirement} is not pinned with =="
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=")]
        pins[canonicalize_name(name)] = (Version(version), hashes)
    return pins


def runtime_requirements() -> list[Requirement]:
    """The image's dependencies: the project's own and those of its `all` extra."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    todo = ["all"]
    while todo:
        for text in extras[todo.pop()]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                todo += sorted(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pins = parse_lock(LOCK)
    wanted = runtime_requirements()
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    outside = [
        f"{r} (locked {pins[canonicalize_name(r.name)][0]})"
        for r in wanted
        if canonicalize_name(r.name) in pins
        and not r.specifier.contains(pins[canonicalize_name(r.name)][0], prereleases=True)
    ]
    assert len(wanted) > 10
    assert missing == [], RELOCK
    assert outside == [], RELOCK


@pytest.mark.parametrize("lock", [LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_every_locked_entry_has_a_sha256_hash(lock: Path) -> None:
    pins = parse_lock(lock)
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes]
    malformed = [
        name
        for name, (_, hashes) in pins.items()
        if not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)
    ]
    assert pins
    assert unhashed == []
    assert malformed == []


def test_the_build_lock_pins_the_build_backend() -> None:
    pins = parse_lock(BUILD_LOCK)
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        assert canonicalize_name(requirement.name) in pins, RELOCK
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)][0])


def test_the_image_installs_only_from_the_locks_and_pins_its_base_by_digest() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base.group(1))
    joined = re.sub(r"\\\n", " ", dockerfile)
    commands = [" ".join(c.split()) for line in joined.splitlines() for c in line.split("&&")]
    installs = [c for c in commands if re.match(r"(RUN )?pip (--python \S+ )?install ", c)]
    from_locks = [c for c in installs if "-r requirements/" in c]
    assert len(from_locks) == 2
    assert all("--require-hashes --no-deps --only-binary=:all:" in c for c in from_locks)
    # The one other install is cloudcred's own wheel, built here: offline, nothing else.
    assert [c for c in installs if c not in from_locks] == [
        "pip --python /opt/cloudcred/bin/python install --no-deps --no-index "
        "/wheels/cloudcred-*.whl"
    ]
    # and it is built with the locked setuptools, not one fetched for an isolated build
    wheel = [c for c in commands if re.match(r"(RUN )?pip wheel ", c)]
    assert wheel == ["RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ."]


def test_every_file_the_image_copies_is_in_the_build_context() -> None:
    """.dockerignore starts from `*`: a file the Dockerfile copies must be let back in."""
    admitted = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = [
        source.rstrip("/")
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    left_out = [s for s in sources if not any(s == a or s.startswith(a + "/") for a in admitted)]
    assert "requirements/image.txt" in sources
    assert left_out == []


def workflows() -> dict[str, dict[str, Any]]:
    # YAML 1.1 reads the key `on` as true.
    return {
        path.name: {
            ("on" if key is True else key): value
            for key, value in yaml.safe_load(path.read_text()).items()
        }
        for path in sorted(WORKFLOWS.glob("*.y*ml"))
    }


def test_the_workflows_pass_actionlint() -> None:
    if not ACTIONLINT.exists():
        pytest.skip("actionlint is not built: run `make actionlint` (make test does)")
    result = subprocess.run(
        [str(ACTIONLINT), "-no-color", *sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_full_commit() -> None:
    uses = [
        (path.name, line.strip())
        for path in sorted(WORKFLOWS.glob("*.y*ml"))
        for line in path.read_text().splitlines()
        if re.match(r"\s*(- )?uses:", line)
    ]
    loose = [
        (name, line)
        for name, line in uses
        if not line.split("uses:", 1)[1].strip().startswith("./")
        and not re.search(r"@[0-9a-f]{40} # v\d+(\.\d+)*$", line)
    ]
    assert len(uses) > 10
    assert loose == []


def test_a_tag_releases_the_multi_arch_image_the_chart_and_the_package() -> None:
    release = workflows()["release.yml"]
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {}
    jobs = release["jobs"]
    build = next(s for s in jobs["image"]["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True
    chart = "\n".join(s.get("run", "") for s in jobs["chart"]["steps"])
    assert "helm package" in chart
    assert 'helm push "dist/cloudcred-$VERSION.tgz" "$CHARTS"' in chart
    assert jobs["chart"]["env"]["CHARTS"].startswith("oci://")
    # Everything waits for the test suite; the package goes out last.
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    assert "test" in jobs["image"]["needs"]
    assert "test" in jobs["python-build"]["needs"]
    assert set(jobs["python-publish"]["needs"]) == {"python-build", "image", "chart"}


def test_the_package_is_published_with_trusted_publishing_only() -> None:
    release = workflows()["release.yml"]
    publish = release["jobs"]["python-publish"]
    assert publish["permissions"] == {"id-token": "write"}
    step = next(s for s in publish["steps"] if "gh-action-pypi-publish" in s.get("uses", ""))
    assert "password" not in step.get("with", {})
    others = [
        name
        for name, job in release["jobs"].items()
        if name != "python-publish" and "id-token" in job.get("permissions", {})
    ]
    assert others == []
    assert "secrets." not in yaml.safe_dump(publish)


def test_ci_runs_the_projects_own_ci_script_on_pull_requests() -> None:
    ci = workflows()["ci.yml"]
    assert "pull_request" in ci["on"]
    assert "workflow_call" in ci["on"]
    runs = [s.get("run") for s in ci["jobs"]["test"]["steps"]]
    assert "bash .ci/run" in runs


def test_the_version_agrees_in_the_package_the_chart_and_the_changelog() -> None:
    version = PYPROJECT["project"]["version"]
    chart = yaml.safe_load((ROOT / "charts" / "cloudcred" / "Chart.yaml").read_text())
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert chart["version"] == version
    assert chart["appVersion"] == version
    assert re.search(rf"^## \[{re.escape(version)}\]", changelog, re.MULTILINE), (
        f"CHANGELOG.md has no section for {version}"
    )
    assert re.search(r"^## \[Unreleased\]", changelog, re.MULTILINE)
