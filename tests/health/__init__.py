"""The health verdicts of the tools users run, built from their Go modules.

``tool("kstatus")`` and ``tool("argocd-lua")`` build the programs in ``gotools/`` (kstatus
from ``sigs.k8s.io/cli-utils``; Argo CD's Lua runtime ``github.com/yuin/gopher-lua``) on
first use, with the default Go module proxy, and cache them under
``${XDG_CACHE_HOME:-~/.cache}/cloudcred/healthtools/<hash of the module's files>/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

GO_MODULE = Path(__file__).resolve().parent / "gotools"
ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "resource_customizations"
SCRIPTS = {
    "CloudCredential": ARGOCD / "cloudcred.io" / "CloudCredential",
    "Cluster": ARGOCD / "cloudcred.io" / "Cluster",
}


class ToolError(RuntimeError):
    """A health tool could not be built or run."""


def _cache_dir() -> Path:
    digest = hashlib.sha256()
    for path in sorted(GO_MODULE.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(GO_MODULE).as_posix().encode())
            digest.update(path.read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "cloudcred" / "healthtools" / digest.hexdigest()[:16]


def tool(name: str) -> Path:
    """The path of the built ``name`` (kstatus or argocd-lua), building both if needed."""
    target = _cache_dir()
    path = target / name
    if path.exists():
        return path
    if not shutil.which("go"):
        raise ToolError("Go is needed to build kstatus and Argo CD's Lua runtime: install Go")
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, even across processes
        if path.exists():
            return path
        with tempfile.TemporaryDirectory(dir=target) as staging:
            result = subprocess.run(
                ["go", "build", "-trimpath", "-o", staging + "/", "./cmd/..."],
                cwd=GO_MODULE, capture_output=True, text=True, check=False,
                env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "auto"},
            )  # fmt: skip
            if result.returncode != 0:
                raise ToolError(f"go build of the health tools failed:\n{result.stderr[-4000:]}")
            for built in Path(staging).iterdir():
                os.replace(built, target / built.name)
    return path


def _run(command: list[str], objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    result = subprocess.run(
        command, input=json.dumps(objects), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ToolError(f"{Path(command[0]).name} failed: {result.stderr.strip()}")
    verdicts: list[dict[str, str]] = json.loads(result.stdout)
    return verdicts


def kstatus(objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus's {status, message} for each object (status.Compute)."""
    return _run([str(tool("kstatus"))], objects)


def argocd(kind: str, objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Argo CD's {status, message} for each object of ``kind``, by the shipped script."""
    return _run([str(tool("argocd-lua")), "eval", str(SCRIPTS[kind] / "health.lua")], objects)


def argocd_tests(kind: str) -> subprocess.CompletedProcess[str]:
    """Run the kind's ``health_test.yaml`` as Argo CD's own tests do."""
    return subprocess.run(
        [str(tool("argocd-lua")), "test", str(SCRIPTS[kind])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
