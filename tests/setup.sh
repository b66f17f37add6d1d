#!/bin/sh
# The Debian packages `make test` needs, and installing the missing ones. `make test`,
# `make interop` and `.ci/run` call this; it is the only list.
#
#   tests/setup.sh          install what is missing (as root), or print the command that does
#   tests/setup.sh --list   print the list, one line
#
# As root, missing packages are installed non-interactively. As any other user, the exact
# `sudo apt-get install …` line is printed and the exit status is 1. When everything is present
# it prints nothing and installs nothing (one dpkg-query call). On a system without dpkg it
# prints one note and leaves the checks to the tests themselves (exit 0).
#
# build-essential, pkg-config: the C compiler and linker cargo needs (ring builds C and asm).
# ca-certificates, openssl: TLS test certificates and the system CA store.
# prosody, lua-unbound, dnsmasq-base, python3-slixmpp, python3-pytest: the real-Prosody interop
# suite (tests/interop), which `make test` runs.
# biboumi: Debian's XMPP-to-IRC gateway, an XEP-0114 component; tests/interop connects it to the
# daemon and asks it for service discovery from a Prosody user across federation.
# nagios-check-xmppng: the monitoring plugin operators run against XMPP servers; tests/plugins.rs
# runs it (`--s2s`, with and without `--starttls`) against the daemon.
set -u

PACKAGES="build-essential pkg-config ca-certificates openssl prosody lua-unbound dnsmasq-base python3-slixmpp python3-pytest nagios-check-xmppng biboumi"

if [ "${1:-}" = "--list" ]; then
    echo "$PACKAGES"
    exit 0
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "setup: no dpkg-query (not Debian?): install the equivalents of: $PACKAGES" >&2
    exit 0
fi

# One line per known package: "NAME ii" when installed; unknown packages are missing too.
# shellcheck disable=SC2086
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' $PACKAGES 2>/dev/null \
    | awk '$2 == "ii" { print $1 }')
# shellcheck disable=SC2086,SC2116
have=" $(echo $installed) "
missing=""
for p in $PACKAGES; do
    case "$have" in
        *" $p "*) ;;
        *) missing="$missing $p" ;;
    esac
done
missing=${missing# }
[ -z "$missing" ] && exit 0

install="apt-get install -y --no-install-recommends $missing"
if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: $missing" >&2
    echo "setup: install them with:" >&2
    echo "    sudo apt-get update && sudo $install" >&2
    echo "setup: (or run 'make test' as root, which installs them)" >&2
    exit 1
fi

echo "setup: installing $missing" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
apt-get update && apt-get install -y --no-install-recommends $missing || {
    echo "setup: apt-get failed; run by hand: apt-get update && $install" >&2
    exit 1
}

# Installing prosody starts the system daemon on *:5269 and *:5222, which would collide with
# the interop suite's own servers. (Never run `prosody --version` to learn the version: in 0.12
# that starts the server.)
case " $missing " in
    *" prosody "*)
        echo "setup: stopping the system Prosody the package started" >&2
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now prosody >/dev/null 2>&1 || true
        fi
        if [ -x /etc/init.d/prosody ]; then /etc/init.d/prosody stop >/dev/null 2>&1 || true; fi
        ;;
esac
exit 0
