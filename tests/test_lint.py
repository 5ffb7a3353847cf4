"""The code is formatted and lint-clean by ruff (pyproject.toml [tool.ruff]; .pre-commit-config.yaml runs the same)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    assert RUFF, 'ruff is not installed: pip install -e ".[dev]"'
    proc = subprocess.run([RUFF, *command, "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
