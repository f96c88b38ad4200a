"""scripts/install.sh into a staging tree: the package in its own virtualenv, the config,
policies and token, the unit; then the installed relay starts and takes mail."""

from __future__ import annotations

import os
import shutil
import smtplib
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.process import RelayProcess

REPO = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")


def test_install_script_sets_up_a_working_relay(tmp_path: Path) -> None:
    staged = {"RELAY_PREFIX": tmp_path / "opt", "RELAY_ETC": tmp_path / "etc",
              "RELAY_STATE": tmp_path / "state", "RELAY_UNIT_DIR": tmp_path / "units"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {k: str(v) for k, v in staged.items()} | {"RELAY_USER": "root",
                                                     "RELAY_NO_SYSTEMCTL": "1",
                                                     "RELAY_HOSTNAME": "relaybox"}
    # The system's Python when it is recent enough, else python3 on PATH (as the script
    # chooses); named with the version in the output.
    system_python = Path("/usr/bin/python3")
    if not (system_python.exists() and subprocess.run(
            [system_python, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            check=False).returncode == 0):
        system_python = Path(shutil.which("python3") or sys.executable)
    result = subprocess.run(["sh", str(REPO / "scripts" / "install.sh")], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"creating the virtualenv {staged['RELAY_PREFIX']} with {system_python} (Python 3." \
        in result.stdout
    assert ("install: warning: the host name 'relaybox' is not a fully qualified domain name"
            in result.stderr)
    state = staged["RELAY_STATE"]
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    as_user = "sudo -u root" if shutil.which("sudo") else "runuser -u root --"
    assert f"  {as_user} {staged['RELAY_PREFIX']}/bin/relayctl serve -c" in result.stdout

    etc, prefix = staged["RELAY_ETC"], staged["RELAY_PREFIX"]
    token = etc / "admin.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) > 30
    assert token.read_text().strip() not in result.stdout + result.stderr
    assert (etc / "policies" / "access.toml").exists()
    unit = (staged["RELAY_UNIT_DIR"] / "relay.service").read_text()
    assert f"ExecStart={prefix}/bin/relayctl serve -c {etc}/relay.toml" in unit
    assert f"ReadWritePaths={staged['RELAY_STATE']}" in unit
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify",
                                 str(staged["RELAY_UNIT_DIR"] / "relay.service")],
                                capture_output=True, text=True, timeout=60, check=False)
        assert verify.returncode == 0, verify.stderr

    # The installed relay on the installed configuration, on loopback ports for the test.
    # Nothing leaves loopback: the next hop is a port where nobody listens.
    port = free_port()
    ports = {"RELAY_SMTP__LISTEN": f'["127.0.0.1:{port}"]',
             "RELAY_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
             "RELAY_DELIVERY__RELAYHOST": f"[127.0.0.2]:{free_port(('127.0.0.2',))}"}
    relay = RelayProcess(etc / "relay.toml", tmp_path / "relay.log",
                         relayctl=str(prefix / "bin" / "relayctl"))
    relay.start(env=ports)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("app@sender.test", ["someone@example.test"],
                            "Subject: installed\r\n\r\nhello\r\n")
        assert list((staged["RELAY_STATE"] / "spool" / "messages").iterdir())
    finally:
        assert relay.stop() == 0

    again = subprocess.run(["sh", str(REPO / "scripts" / "install.sh")], env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout  # an upgrade keeps the configuration and token


def _staged_install(source: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {"RELAY_PREFIX": str(root / "opt"), "RELAY_ETC": str(root / "etc"),
            "RELAY_STATE": str(root / "state"), "RELAY_UNIT_DIR": str(root / "units"),
            "RELAY_USER": "root", "RELAY_NO_SYSTEMCTL": "1",
            "RELAY_HOSTNAME": "relay.example.com"}
    return subprocess.run(["sh", str(source / "scripts" / "install.sh")], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_install_ships_the_committed_policies_and_stops_before_changing_anything(
        tmp_path: Path) -> None:
    # A developer's checkout: a key of their own in the working tree's dkim.toml (its file
    # not in the repository), which the installed relay could not start with.
    source = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(source)], check=True, timeout=120)
    committed = (source / "policies" / "dkim.toml").read_text()
    (source / "policies" / "dkim.toml").write_text(
        '[[keys]]\ndomain = "dev.test"\nselector = "s1"\nprivate_key = "dkim/dev.pem"\n')
    root = tmp_path / "root"
    etc = root / "etc"
    # An earlier run (of an older script) left a broken policy: nothing else changes.
    (etc / "policies").mkdir(parents=True)
    (etc / "policies" / "domains.toml").write_text('[domains."*"]\nmax_connections = "x"\n')

    stopped = _staged_install(source, root)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert f"{etc}/policies/domains.toml: " in stopped.stderr
    assert stopped.stderr.endswith("install: stopped before changing anything: fix the "
                                   "above, then run this again\n")
    assert sorted(p.name for p in etc.iterdir()) == ["policies"]  # no token, no relay.toml
    assert not (root / "units").exists() and not (root / "state").exists()

    (etc / "policies" / "domains.toml").write_text('[domains."*"]\nmax_connections = 5\n')
    again = _staged_install(source, root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (etc / "policies" / "dkim.toml").read_text() == committed
    assert (etc / "policies" / "domains.toml").read_text().endswith("max_connections = 5\n")
    assert (etc / "admin.token").exists() and (root / "units" / "relay.service").exists()
    assert f"{etc}/relay.toml: ok" in again.stdout
