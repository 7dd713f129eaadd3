"""The controller core's shape: reconcilers talk through objects, never to each other."""

from __future__ import annotations

import ast
from pathlib import Path

CONTROLLERS = Path(__file__).resolve().parents[2] / "operator" / "cloudcred" / "controllers"
RECONCILERS = {"clusters", "credentials", "deploy", "secrets", "verification", "rotation"}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_reconciler_imports_another_reconciler_or_the_queue() -> None:
    for name in sorted(RECONCILERS):
        imports = imported_modules(CONTROLLERS / f"{name}.py")
        peers = {f"cloudcred.controllers.{other}" for other in RECONCILERS - {name}}
        assert not imports & peers, f"{name}.py imports {sorted(imports & peers)}"
        assert "cloudcred.workqueue" not in imports, f"{name}.py sees a queue"
        assert "cloudcred.controllers.runner" not in imports, f"{name}.py sees the wiring"


def test_every_reconciler_is_wired() -> None:
    runner = (CONTROLLERS / "runner.py").read_text()
    assert all(f"cloudcred.controllers.{name} import" in runner for name in RECONCILERS)
