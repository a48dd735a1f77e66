"""The linters and the strict type checker run with the tests."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .fakes import REPO


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],  # strict, over bot, channels and store (pyproject.toml)
    ],
    ids=lambda c: " ".join(c),
)
def test_clean(command: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
