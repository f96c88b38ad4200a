"""Shared fixtures: a real DNS server, SMTP sinks on 127.0.0.x, TLS certificates."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.dns_server import DnsServer
from tests.support.net import free_port
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.sink import Sink

SINK_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


@pytest.fixture(autouse=True)
def _stop_gpg_agents(request: pytest.FixtureRequest) -> Iterator[None]:
    """gpg starts an agent for each keyring it uses, which outlives the test: the keyrings
    under the test's tmp_path have theirs stopped when it ends."""
    uses_tmp = "tmp_path" in request.fixturenames and shutil.which("gpgconf") is not None
    directory: Path | None = request.getfixturevalue("tmp_path") if uses_tmp else None
    yield
    if directory is None:
        return
    for keyring in directory.rglob("pubring.kbx"):
        subprocess.run(["gpgconf", "--homedir", str(keyring.parent), "--kill", "gpg-agent"],
                       capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (tests take a database each). Skipped where
    PostgreSQL is not installed, except in CI, where scripts/setup.sh --test installs it."""
    with running_postgres() as server:
        if server is None:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is not installed: run scripts/setup.sh --test")
            pytest.skip("PostgreSQL is not installed (scripts/setup.sh --test installs it)")
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of its own."""
    return postgres_server.fresh_database()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mx_port() -> int:
    """One port for every sink: the relay connects to `[delivery] port` on each MX host."""
    return free_port(SINK_HOSTS)


@pytest.fixture
def make_sink(mx_port: int) -> Iterator[Callable[..., Sink]]:
    started: list[Sink] = []

    def make(host: str = "127.0.0.2", **kwargs: object) -> Sink:
        sink = Sink(host, mx_port, **kwargs).start()  # type: ignore[arg-type]
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(cert, key) PEM paths for relay.test / sink.test."""
    cert = ca.issue_cert("relay.test", "sink.test", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="session")
def sink_tls(server_cert: tuple[str, str]) -> ssl.SSLContext:
    """A server-side context for sinks that offer STARTTLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*server_cert)
    return context
