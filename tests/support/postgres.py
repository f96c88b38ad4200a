"""A real PostgreSQL server for the tests, from Debian's `postgresql` package: `initdb` into
a temporary directory and `pg_ctl` on a free loopback port, run as the `postgres` user when
the tests run as root (the server refuses to run as root), stopped at the end.

Each test gets a database of its own (`fresh_database`), so tests never see each other's
rows. For tests the server runs with fsync off (what is tested is the relay's use of
transactions, not the disk under PostgreSQL); benchmarks ask for `durable=True`, and get
pg_stat_statements to count queries.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.net import free_port

SERVER_USER = "postgres"
SUPERUSER = "relay"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self._durability = ("-c shared_preload_libraries=pg_stat_statements" if durable
                            else "-c fsync=off -c full_page_writes=off")
        self.port = free_port()
        self.host = "127.0.0.1"
        self._root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self._root / "data"
        self._databases = 0
        self._as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self._root, account.pw_uid, account.pw_gid)
            self._as_user = {"user": account.pw_uid, "group": account.pw_gid,
                             "extra_groups": []}

    def _run(self, *args: str) -> None:
        subprocess.run([str(self.bin_dir / args[0]), *args[1:]], check=True,
                       capture_output=True, timeout=120, cwd=self._root,
                       **self._as_user)  # type: ignore[arg-type]

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--locale=C")
        self.resume()
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self._root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server (fast), keeping its data: `resume` starts it again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (again)."""
        options = (f"-c listen_addresses={self.host} -p {self.port} -k {self._root} "
                   f"-c max_connections=200 {self._durability}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self._root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def fresh_database(self) -> str:
        """A new empty database; its DSN."""
        self._databases += 1
        name = f"relay_test_{self._databases}"
        subprocess.run([str(self.bin_dir / "psql"), "-h", self.host, "-p", str(self.port),
                        "-U", SUPERUSER, "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True, timeout=60)
        return self.dsn(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer | None]:
    """A started server, or None where PostgreSQL is not installed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        yield None
        return
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()
