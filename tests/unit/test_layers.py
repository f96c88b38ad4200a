"""The floor plan (docs/architecture.md) as import-linter contracts in pyproject.toml: no
cycles between the relay's packages and modules at any depth (TYPE_CHECKING imports
count), a core that knows no stage, a queue that knows none of its users, the HTTP side
layered, delivery not knowing what comes back."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def test_every_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    command = str(lint) if lint.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is not installed (scripts/setup.sh --test installs it)")
    result = subprocess.run([command, "--no-cache"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "0 broken" in result.stdout
