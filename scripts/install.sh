#!/bin/sh
# Install the relay on a VM as a systemd service (Debian, as root):
#   - the package into a virtualenv in /opt/relay,
#   - a system user `relay`, whose home is the spool (/var/lib/relay),
#   - /etc/relay/relay.toml, /etc/relay/policies/ (the repository's example policies as
#     committed, not whatever the checkout has now) and the admin token (mode 0600), each
#     only if it does not exist yet (a re-run upgrades the package and keeps them),
#   - systemd/relay.service, enabled and started (restarted on an upgrade).
# The configuration the relay will run with (what exists, plus what would be written) is
# checked with `relayctl config check` before the user, /etc/relay or the unit are
# touched: a run that stops there changes nothing but the virtualenv, and a re-run
# after the fix goes on from there.
# Where things go can be changed for a staged install: RELAY_PREFIX, RELAY_ETC,
# RELAY_STATE, RELAY_UNIT_DIR, RELAY_USER, RELAY_HOSTNAME (what relay.toml says),
# RELAY_PYTHON (default: the system's /usr/bin/python3 when it is 3.11 or later, else
# python3 on PATH); RELAY_NO_SYSTEMCTL=1 leaves systemd alone.
set -eu
cd "$(dirname "$0")/.."
source_dir=$(pwd)

prefix=${RELAY_PREFIX:-/opt/relay}
etc=${RELAY_ETC:-/etc/relay}
state=${RELAY_STATE:-/var/lib/relay}
unit_dir=${RELAY_UNIT_DIR:-/etc/systemd/system}
user=${RELAY_USER:-relay}
hostname=${RELAY_HOSTNAME:-$(hostname -f 2>/dev/null || hostname)}
python=${RELAY_PYTHON:-}

say() { echo "install: $*"; }
warn() { echo "install: warning: $*" >&2; }

# How to run a command as the relay's user, in the hints below: sudo where there is one.
as_user() {
    if command -v sudo >/dev/null 2>&1; then echo "sudo -u $user"; else echo "runuser -u $user --"; fi
}

if [ "$(id -u)" != 0 ]; then
    echo "install: run as root (it creates a user and a systemd unit)" >&2
    exit 2
fi

recent_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if [ -z "$python" ]; then
    for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [ -x "$candidate" ] && recent_enough "$candidate"; then
            python=$candidate
            break
        fi
    done
fi
if [ -z "$python" ] || ! recent_enough "$python"; then
    echo "install: no Python 3.11 or later (tried ${python:-/usr/bin/python3 and python3}):" \
         "install one, or name it with RELAY_PYTHON" >&2
    exit 2
fi
if ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
    say "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
# The example policies as the repository has them: from git in a checkout (a developer's
# keys and users in the working tree stay there), else the files of a release tarball.
# (safe.directory: root may install from a checkout that another user owns)
repo_git() { git -c safe.directory="$source_dir" -C "$source_dir" "$@"; }
in_git() { command -v git >/dev/null 2>&1 && repo_git rev-parse --verify -q HEAD >/dev/null 2>&1; }
shipped_policies() {
    if in_git; then
        repo_git ls-tree --name-only HEAD policies/ | grep '\.toml$' | xargs -n1 basename
    else
        for policy in policies/*.toml; do basename "$policy"; done
    fi
}
shipped_policy() {  # NAME: its committed text on stdout
    if in_git; then repo_git show "HEAD:policies/$1"; else cat "policies/$1"; fi
}
for needed in systemd/relay.service README.md pyproject.toml; do
    [ -f "$needed" ] || { echo "install: $source_dir/$needed is missing" >&2; exit 2; }
done
[ -n "$(shipped_policies)" ] || { echo "install: no example policies in $source_dir" >&2; exit 2; }

if [ ! -x "$prefix/bin/python" ]; then
    say "creating the virtualenv $prefix with $python ($("$python" --version 2>&1))"
    "$python" -m venv "$prefix"
fi
"$prefix/bin/python" -m pip install -q --upgrade pip >/dev/null
"$prefix/bin/python" -m pip install -q --upgrade "$source_dir"
install -m 0644 README.md "$prefix/README.md"
say "package installed in $prefix ($("$prefix/bin/relayctl" --version 2>/dev/null || echo relayctl))"

token="$etc/admin.token"
config="$etc/relay.toml"

write_config() {  # PATH: the relay.toml of a new installation
    cat > "$1" <<EOF
# /etc/relay/relay.toml: written by scripts/install.sh; see README.md for every key.
# Reload policies and certificates: systemctl reload relay. Other changes: restart.

[server]
hostname = "$hostname"

[smtp]
# Port 25 on every address: only the networks and users in policies/access.toml may relay
# (loopback alone until you add yours). Add "0.0.0.0:587" or a tls_listen port with a
# certificate (tls_cert, tls_key) for applications that authenticate.
listen = ["0.0.0.0:25"]

[queue]
backend = "local"
path = "$state/spool"

[delivery]
tls = "opportunistic"

[admin]
listen = "127.0.0.1:8025"
token_file = "$token"

[policies]
path = "$etc/policies"

[log]
format = "text"
EOF
}

# The configuration as it will be, checked before anything outside the virtualenv changes:
# what exists stays (linked here), what is missing is what this run would write.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir "$staging/policies"
if [ -e "$config" ]; then cp "$config" "$staging/relay.toml"; else write_config "$staging/relay.toml"; fi
if [ -d "$etc/policies" ]; then
    for entry in "$etc/policies"/*; do
        [ -e "$entry" ] && ln -s "$entry" "$staging/policies/"
    done
fi
for policy in $(shipped_policies); do
    [ -e "$staging/policies/$policy" ] || shipped_policy "$policy" > "$staging/policies/$policy"
done
if ! checked=$(RELAY_POLICIES__PATH="$staging/policies" RELAY_QUEUE__PATH="$staging/spool" \
        "$prefix/bin/relayctl" -c "$staging/relay.toml" config check 2>&1); then
    echo "$checked" | sed "s#$staging/policies#$etc/policies#g; s#$staging/relay.toml#$config#g" >&2
    echo "install: stopped before changing anything: fix the above, then run this again" >&2
    exit 2
fi

if ! id "$user" >/dev/null 2>&1; then
    useradd --system --home-dir "$state" --no-create-home --shell /usr/sbin/nologin "$user"
    say "created system user $user"
fi
group=$(id -gn "$user")
# The spool's parent, the relay user's own: systemd makes /var/lib/relay (StateDirectory=)
# but not a state directory elsewhere, nor one for a relay started by hand.
install -d -m 0750 -o "$user" -g "$group" "$state"

install -d -m 0755 "$etc"
install -d -m 0750 -o root -g "$group" "$etc/policies"
for policy in $(shipped_policies); do
    target="$etc/policies/$policy"
    [ -e "$target" ] || install -m 0640 -o root -g "$group" "$staging/policies/$policy" "$target"
done

if [ ! -e "$token" ]; then
    # Written with a umask, never on a command line: the token is a secret.
    (umask 077 && "$prefix/bin/python" -c \
        "import secrets; print(secrets.token_urlsafe(32))" > "$token")
    say "created the admin token $token (mode 0600, readable by $user only)"
fi
chown "$user:$group" "$token"
chmod 0600 "$token"

if [ ! -e "$config" ]; then
    install -m 0644 "$staging/relay.toml" "$config"
    say "created $config"
    case "$hostname" in
        *.*) ;;
        *) warn "the host name '$hostname' is not a fully qualified domain name: receivers" \
                "check the name the relay greets with; set [server] hostname in $config" ;;
    esac
fi
# Again where it will run, as root: now also whether the relay's user can read it all.
"$prefix/bin/relayctl" -c "$config" config check

install -d -m 0755 "$unit_dir"
sed "s#/opt/relay/bin/relayctl#$prefix/bin/relayctl#; s#/etc/relay/relay.toml#$config#; \
s#ReadWritePaths=/var/lib/relay#ReadWritePaths=$state#; s#^User=relay#User=$user#; \
s#^Group=relay#Group=$group#" systemd/relay.service > "$unit_dir/relay.service"
chmod 0644 "$unit_dir/relay.service"
say "installed $unit_dir/relay.service"

if [ "${RELAY_NO_SYSTEMCTL:-0}" = 1 ] || [ ! -d /run/systemd/system ]; then
    if [ "${RELAY_NO_SYSTEMCTL:-0}" = 1 ]; then
        say "done (systemd left alone: RELAY_NO_SYSTEMCTL=1); start the relay with"
    else
        say "done; systemd is not running here: start the relay with"
    fi
    say "  $(as_user) $prefix/bin/relayctl serve -c $config"
    exit 0
fi
systemctl daemon-reload
systemctl enable relay.service >/dev/null 2>&1
if systemctl is-active --quiet relay.service; then
    systemctl restart relay.service
else
    systemctl start relay.service
fi
say "done: relay.service is $(systemctl is-active relay.service)"
