"""The operator process itself: its command line, configuration and log format."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.kube import ROOT
from tests.operator import Operators, wait_for

pytestmark = pytest.mark.integration


def test_bad_setting_exits_with_the_variable_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudcred", "run"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "CLOUDCRED_VERIFICATION_TIMEOUT": "soon"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "CLOUDCRED_VERIFICATION_TIMEOUT" in result.stderr


def test_crds_command_prints_the_committed_crds() -> None:
    result = subprocess.run([sys.executable, "-m", "cloudcred", "crds"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        assert path.read_text() in result.stdout


def test_json_logs_and_configuration_logged_at_start(operators: Operators) -> None:
    operator = operators.start("nothing-here", base_env=False,
                               env={"CLOUDCRED_LOG_FORMAT": "json", "CLOUDCRED_LOG_LEVEL": "INFO",
                                    "CLOUDCRED_KEY_AGE_LIMIT_DAYS": "30"})  # fmt: skip
    try:
        wait_for(lambda: "cloudcred settings" in operator.log(), timeout=30, what="start")
        lines = [line for line in operator.log().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert records, lines[:5]
        settings = next(r for r in records if "cloudcred settings" in r["message"])
        assert '"key_age_limit_days":30' in settings["message"]
    finally:
        operator.stop()
