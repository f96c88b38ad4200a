"""What a new operator meets first: a named admin token file that is not there yet, a
relayctl run where no configuration is found, list keys given in the environment as
plain text. Each answer is the relay doing the obvious thing or one line saying what to
do, never a traceback."""

from __future__ import annotations

import os
import smtplib
import stat
import subprocess
from pathlib import Path

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import queue_json
from tests.support.net import free_port
from tests.support.process import relayctl, relayctl_path


def test_a_named_admin_token_file_is_made_at_first_start(relay_process: MakeRelay,
                                                          tmp_path: Path) -> None:
    token = tmp_path / "secrets" / "admin.token"
    relay = relay_process(admin={"token_file": str(token)}).start()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) >= 32
    assert queue_json(relay.config) == []  # relayctl finds the same token
    assert relay.stop() == 0


def test_a_cluster_node_does_not_make_the_token_every_node_shares(
        relay_process: MakeRelay, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    relay = relay_process(admin={"token_file": str(token)}, queue={
        "backend": "postgres", "dsn": f"postgresql://relay@127.0.0.1:{free_port()}/relay"})
    result = relayctl(relay.config, "serve")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"relayctl: admin token file {token} does not exist: "
                                    "nodes that share a queue need the same one")
    assert f"> {token})" in result.stderr and "Secret" in result.stderr
    assert not token.exists()


def test_relayctl_without_a_configuration_file_says_where_it_looked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    result = subprocess.run([relayctl_path(), "queue", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    if Path("/etc/relay/relay.toml").exists():  # a relay installed on this machine
        return
    assert result.stderr == (
        "relayctl: no configuration file found (looked for -c FILE, $RELAY_CONFIG, "
        f"{tmp_path.resolve() / 'relay.toml'}, /etc/relay/relay.toml): the admin API's "
        "address and token come from it\n")


def test_a_list_key_in_the_environment_takes_plain_text(relay_process: MakeRelay) -> None:
    port, other = free_port(), free_port()
    relay = relay_process().start(env={"RELAY_SMTP__LISTEN": f"127.0.0.1:{port}, "
                                                             f"127.0.0.1:{other}"})
    for each in (port, other):
        with smtplib.SMTP("127.0.0.1", each, timeout=10) as client:
            assert client.noop()[0] == 250
    assert relay.stop() == 0


def test_an_environment_value_that_is_not_json_is_one_line(relay_process: MakeRelay) -> None:
    relay = relay_process()
    for command in (["config", "check"], ["serve"]):
        result = relayctl(relay.config, *command, env={"RELAY_SMTP": "{listen"})
        assert result.returncode == 2, command
        assert result.stderr == "relayctl: environment variable RELAY_SMTP: not valid JSON\n"
