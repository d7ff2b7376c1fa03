"""System tools the tests need (the README's quick start installs them in one apt line).

Missing here: the test is skipped with the apt line that brings the tool. Under CI (CI
set) it fails instead, as the broker tests do: .ci/run installs every one of them.
"""

from __future__ import annotations

import os

import pytest


def require_tool(path: str | None, tool: str, package: str) -> str:
    """``path`` (from shutil.which), or skip (fail under CI) naming the Debian package."""
    if path is not None:
        return path
    message = f"{tool} not installed (sudo apt-get install {package})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it")
    pytest.skip(message)
