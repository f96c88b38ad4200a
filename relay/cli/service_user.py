"""cli.service_user: the account an installed relay runs as, seen from relayctl run by
root, and whether that account can read what the relay reads.

root can read every file, so a check that root runs says nothing about the relay itself:
a DKIM key that `relayctl dkim keygen` wrote 0600 root:root passed `config check` and then
stopped the relay under systemd with `Permission denied`, in a restart loop. The service
user is found where the installation put it: the owner of the spool (scripts/install.sh
makes the relay's state directory its user's; systemd's StateDirectory= does too), or of
the nearest directory above the spool that exists. Owned by root, or relayctl not run by
root: there is no other account to check for.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from relay.config import NO_FILE, Config
from relay.policy import Policies, dkim_key_path

# Run as the service user by /bin/sh (any Python may be out of its reach): print each
# path it cannot read (a directory: cannot list).
_PROBE = ('for p; do if [ -d "$p" ]; then [ -r "$p" ] && [ -x "$p" ] || echo "$p"; '
          'else [ -r "$p" ] || echo "$p"; fi; done')


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int

    @property
    def group(self) -> str:
        return grp.getgrgid(self.gid).gr_name


def service_user(config: Config) -> ServiceUser | None:
    """The account the relay of `config` runs as, when relayctl runs as root and it is
    another; else None."""
    if os.geteuid() != 0:
        return None
    path = config.queue.path
    while not path.exists() and path != path.parent:
        path = path.parent
    owner = path.stat().st_uid
    if owner == 0:
        return None
    try:
        account = pwd.getpwuid(owner)
    except KeyError:
        return None
    return ServiceUser(account.pw_name, account.pw_uid, account.pw_gid)


def files_the_relay_reads(config: Config, policies: Policies) -> list[Path]:
    """The configuration, the policies and every secret, key and certificate they name
    that exists (a missing one is reported where it is used)."""
    named = [Path(config.source)] if config.source != NO_FILE else []
    named += [config.policies.path, *sorted(config.policies.path.glob("*.toml"))]
    named += [dkim_key_path(key, config.policies.path) for key in policies.dkim.keys]
    named += [Path(p) for p in (config.smtp.tls_cert, config.smtp.tls_key,
                                config.delivery.relayhost_password_file,
                                config.delivery.ca_file, config.queue.dsn_file,
                                config.bounces.secret_file, config.admin.token_file) if p]
    named += [Path(hook.secret_file) for hook in config.webhooks]
    if policies.pgp.keyring is not None:
        named.append(policies.pgp.keyring)
    return [path for path in dict.fromkeys(named) if path.exists()]


def unreadable(user: ServiceUser, paths: list[Path]) -> list[Path]:
    """Those of `paths` that `user` cannot read, asked of a process running as it."""
    if not paths:
        return []
    result = subprocess.run(
        ["/bin/sh", "-c", _PROBE, "probe", *map(str, paths)], user=user.uid,
        group=user.gid, extra_groups=os.getgrouplist(user.name, user.gid),
        capture_output=True, text=True, timeout=60, check=True, cwd="/")
    return [Path(line) for line in result.stdout.splitlines()]


def how_to_share(user: ServiceUser, paths: list[Path]) -> str:
    """The command that lets the relay's group read `paths` (directories: list them),
    root keeping them."""
    files = " ".join(str(p) for p in paths if not p.is_dir())
    directories = " ".join(str(p) for p in paths if p.is_dir())
    steps = [f"chgrp {user.group} {' '.join(str(p) for p in paths)}"]
    steps += [f"chmod g+r {files}"] if files else []
    steps += [f"chmod g+rx {directories}"] if directories else []
    return " && ".join(steps)


def check_readable(config: Config, policies: Policies) -> str:
    """"" when the relay's own user can read what it reads (or there is no other user to
    check for); else the RelayError message: what it cannot read, and what to run."""
    user = service_user(config)
    if user is None:
        return ""
    missing = unreadable(user, files_the_relay_reads(config, policies))
    if not missing:
        return ""
    return (f"the relay runs as {user.name} (the owner of its spool), which cannot read "
            f"{', '.join(map(str, missing))}: run {how_to_share(user, missing)}")
