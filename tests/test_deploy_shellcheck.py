"""Every shell script under deploy/ passes shellcheck (installed by .ci/run from Debian)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest_tools import require_tool

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "deploy").glob("*.sh"))
SHELLCHECK = shutil.which("shellcheck")


def test_there_are_scripts_to_check() -> None:
    assert REPO / "deploy" / "install.sh" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = require_tool(SHELLCHECK, "shellcheck", "shellcheck")
    done = subprocess.run(
        [shellcheck, "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_strict_mode_and_executable(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
