"""scripts/setup.sh run again where nothing changed only checks: pip is not run (the
stamp it writes after pip is left as it was)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
STAMP = REPO / ".venv" / ".relay-setup"


@pytest.mark.skipif(not STAMP.exists() or Path(sys.prefix) != REPO / ".venv",
                    reason="runs where scripts/setup.sh made the virtualenv of this run")
def test_a_second_run_changes_nothing() -> None:
    before = STAMP.stat().st_mtime_ns
    result = subprocess.run(["sh", str(REPO / "scripts" / "setup.sh"), "--test"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "setup: ready (.venv)\n"
    assert STAMP.stat().st_mtime_ns == before  # pip did not run
