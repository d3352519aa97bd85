"""The code base is lint-clean: ``ruff check`` with the configuration in pyproject.toml ([tool.ruff])."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean() -> None:
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is not installed (pip install ruff)").find_ruff_bin()
    r = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{r.stdout}{r.stderr}"
