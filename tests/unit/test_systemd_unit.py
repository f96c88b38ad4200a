"""systemd/relay.service: valid for systemd, and hardened to an exposure of 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "systemd" / "relay.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def test_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at an executable that does.
    unit = tmp_path / "relay.service"
    unit.write_text(UNIT.read_text().replace("/opt/relay/bin/relayctl", sys.executable))
    result = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_unit_exposure_is_at_most_2() -> None:
    """Measured with the README's form for a machine where systemd is not running."""
    readme = " ".join((UNIT.parents[1] / "README.md").read_text().split())
    found = re.search(r"`systemd-analyze security --offline=yes (\S+)`", readme)
    assert found and found.group(1) == "/etc/systemd/system/relay.service"
    result = subprocess.run([str(ANALYZE), "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for relay\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def test_unit_is_what_the_relay_expects() -> None:
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify"
    assert settings["ExecStart"] == "/opt/relay/bin/relayctl serve -c /etc/relay/relay.toml"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["User"] == "relay" and settings["StateDirectory"] == "relay"
    assert settings["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert int(settings["WatchdogSec"]) > 0
