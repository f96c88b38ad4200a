"""relayctl run by root for a relay that runs as another user (the owner of its spool, as
scripts/install.sh and systemd's StateDirectory= make it): `dkim keygen` writes a key
that user can read (0640 root:<its group>), and `config check` checks what the relay
reads as that user, naming the file and the command that fixes it. Here the service user
is `nobody`; the test's tree is readable by others, as /etc/relay is."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.process import relayctl
from tests.support.relayconf import to_toml

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="relayctl run as root")


@pytest.fixture
def installed() -> Iterator[Path]:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    top = Path(tempfile.mkdtemp(prefix="relay-service-user-"))
    try:
        top.chmod(0o755)
        (top / "policies").mkdir(mode=0o755)
        (top / "state").mkdir()
        os.chown(top / "state", nobody.pw_uid, nobody.pw_gid)
        (top / "relay.toml").write_text(to_toml({
            "smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
            "queue": {"path": str(top / "state" / "spool")},
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
            "policies": {"path": str(top / "policies")}}))
        yield top
    finally:
        shutil.rmtree(top)


def test_keys_made_by_root_are_readable_by_the_relay_and_config_check_says_when_not(
        installed: Path) -> None:
    config = installed / "relay.toml"
    made = relayctl(config, "dkim", "keygen", "sender.test", "s1")
    assert made.returncode == 0, made.stderr
    key = installed / "policies" / "dkim" / "sender.test.s1.pem"
    assert f"wrote {key} (0640 root:nogroup, for the relay's user nobody)" in made.stdout
    info = key.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, 65534)
    directory = key.parent.stat()
    assert (stat.S_IMODE(directory.st_mode), directory.st_gid) == (0o750, 65534)
    (installed / "policies" / "dkim.toml").write_text(
        f'[[keys]]\ndomain = "sender.test"\nselector = "s1"\nprivate_key = "{key}"\n')
    checked = relayctl(config, "config", "check")
    assert checked.returncode == 0, checked.stderr

    key.chmod(0o600)  # as keygen wrote keys before: root's alone
    refused = relayctl(config, "config", "check")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"relayctl: config check: the relay runs as nobody (the owner of its spool), which "
        f"cannot read {key}: run chgrp nogroup {key} && chmod g+r {key}\n")
    fixed = os.system(f"chgrp nogroup {key} && chmod g+r {key}")  # what it says to run
    assert fixed == 0
    assert relayctl(config, "config", "check").returncode == 0
