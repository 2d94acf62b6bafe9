#!/bin/sh
# Installs what a fresh Debian 12 (or Ubuntu) machine lacks to build and test vpnfw.
# Skips apt entirely when everything is already there. Needs root.
set -eu
need=""
# systemd (systemd-analyze, systemctl), lintian and dpkg-dev (dpkg-shlibdeps, which
# cargo-deb runs to fill in Depends: $auto): packaging/check-deb.sh. cargo-deb itself
# is installed by check-deb.sh, pinned, and only when missing.
for pkg in pkg-config libnftnl-dev libmnl-dev nftables iproute2 sqlite3 util-linux procps python3 iputils-ping systemd lintian dpkg-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    echo "installing:$need" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y $need
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a current Rust toolchain (https://rustup.rs); Debian 12's rustc is too old for edition 2024" >&2
    exit 1
fi
