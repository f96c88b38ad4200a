"""A private Postfix instance (Debian's postfix package): its own configuration and queue
directory, listening on one loopback address only, for the tests that need a real MTA.

As a recipient domain's MX it accepts every recipient of `domain`, then fails the local
delivery (no such user: Postfix's local(8) finds no account) and sends a real DSN to the
envelope sender, through `relayhost` (the relay's bounce listener), connecting from its
own address so the relay sees an untrusted client.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.net import wait_for_port

POSTFIX = "/usr/sbin/postfix"


def postfix_available() -> bool:
    return Path(POSTFIX).exists()


class PrivatePostfix:
    def __init__(self, host: str, port: int, domain: str, relayhost: str) -> None:
        self.host, self.port = host, port
        # Not under pytest's tmp_path: Postfix's daemons (user postfix) must reach it.
        self.workdir = Path(tempfile.mkdtemp(prefix="relay-test-postfix-"))
        self.workdir.chmod(0o755)
        self.conf = self.workdir / "conf"
        for sub in ("conf", "queue", "data"):
            (self.workdir / sub).mkdir()
        shutil.chown(self.workdir / "data", "postfix")
        master = Path("/etc/postfix/master.cf").read_text()
        master = re.sub(r"(?m)^smtp\s+inet\b", f"{host}:{port} inet", master)
        (self.conf / "master.cf").write_text(master)
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.workdir / 'queue'}\n"
            f"data_directory = {self.workdir / 'data'}\n"
            f"myhostname = mx.{domain}\nmydomain = {domain}\nmyorigin = {domain}\n"
            f"mydestination = {domain}\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            f"mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\n"
            f"relayhost = [{relayhost.rpartition(':')[0]}]:{relayhost.rpartition(':')[2]}\n"
            f"smtp_bind_address = {host}\n"
            "smtp_dns_support_level = disabled\n"
            "alias_maps =\nalias_database =\nlocal_recipient_maps =\n"
            "smtp_tls_security_level = none\nsmtpd_tls_security_level = none\n"
            "biff = no\nmaillog_file = /dev/stdout\n")
        self._log = (self.workdir / "maillog").open("w")
        # start-fg: the master stays our child, logging to our file.
        self._process = subprocess.Popen([POSTFIX, "-c", str(self.conf), "start-fg"],
                                         stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(host, port)
        except BaseException:
            self.stop()
            raise

    @property
    def log(self) -> str:
        return (self.workdir / "maillog").read_text(errors="replace")

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True,
                       check=False, timeout=60)
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
