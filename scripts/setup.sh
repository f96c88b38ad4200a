#!/bin/sh
# Create .venv with the relay installed. With --test, also what the test suite needs:
# the test extras from PyPI and the Debian tools the tests drive (swaks, systemd-analyze,
# PostgreSQL).
# Idempotent: a second run only checks (a second or so): pip runs again only when
# pyproject.toml changed or the virtualenv lacks what was asked for.
set -eu
cd "$(dirname "$0")/.."

want_tests=no
[ "${1:-}" = "--test" ] && want_tests=yes

apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: please install:$missing" >&2
        return 1
    fi
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

# Debian's python3 needs python3-venv for `python3 -m venv` to bring pip along.
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    apt_install python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv

# What pip installed last, and from which pyproject.toml: the same again is a no-op.
stamp=.venv/.relay-setup
wanted="$want_tests $(sha256sum pyproject.toml | cut -d' ' -f1)"
installed() {
    [ -f "$stamp" ] && [ -x .venv/bin/relayctl ] || return 1
    [ "$(cat "$stamp")" = "$wanted" ] || [ "$(cat "$stamp")" = "yes ${wanted#* }" ]
}
pip_install() {
    installed && return 0
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e "$1"
    echo "$wanted" > "$stamp"
}

if [ "$want_tests" = yes ]; then
    # systemd: systemd-analyze checks the unit; Mail::DKIM (with CryptX) and OpenDKIM's
    # library verify the DKIM signatures independently of dkimpy (OpenDKIM: Ed25519 too);
    # postgresql: the cluster backend's tests run a server of their own (initdb, pg_ctl);
    # curl runs the README's API examples; postfix is a real MTA that bounces later
    # (a private instance per test, tests/support/postfix.py; the system one is not started);
    # chromium and its driver run the console's pages headless (tests/acceptance/test_console.py)
    apt_install swaks systemd libmail-dkim-perl libcryptx-perl libopendkim11 postgresql curl \
        postfix chromium chromium-driver
    # kubectl renders deploy/kubernetes (kustomize); Debian's package where none is installed
    command -v kubectl >/dev/null 2>&1 || apt_install kubernetes-client
    pip_install ".[test]"
else
    pip_install .
fi
echo "setup: ready (.venv)"
