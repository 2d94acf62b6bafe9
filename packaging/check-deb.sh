#!/bin/sh
# Builds the Debian package and checks it, as CI does:
#
#   1. cargo-deb and lintian are installed when missing;
#   2. packaging/build-assets.sh (release binary, man pages, completions, configs),
#      then `cargo deb --no-build`;
#   3. `dpkg-deb -c`: every expected path is in the package, /etc/vpnfw/config.toml is
#      a conffile with group = "www-data", the changelog matches the version;
#   4. lintian: fails on any error, and on any warning that
#      packaging/deb/lintian-overrides does not list with its reason;
#   5. the packaged unit: `systemd-analyze verify` clean (on a copy whose ExecStart
#      and man pages point into the extracted package) and an exposure of at most 2.0;
#   6. as root: installs the package into a throwaway overlay of / (nothing on the
#      host changes) and checks the maintainer scripts: user vpnfw in www-data, unit
#      enabled but never started, try-restart on upgrade, stop on remove, store
#      deleted on purge; and runs the installed daemon as vpnfw with only
#      CAP_NET_ADMIN in a throwaway network namespace for one hook round trip.
#
# Usage: packaging/check-deb.sh        (needs root for step 6; skipped otherwise)
set -eu
cd "$(dirname "$0")/.."

fail() {
    echo "check-deb: FAIL: $*" >&2
    exit 1
}

# 1. Tools.
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo deb --version >/dev/null 2>&1; then
    # Pinned: the version this package's metadata was written and checked against.
    cargo install cargo-deb --version 3.8.0 --locked
fi
if ! command -v lintian >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "lintian is missing: apt-get install lintian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends lintian >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends lintian >/dev/null; }
fi

# 2. Build. build-assets.sh builds the release binary; --no-build keeps cargo-deb
# from building it again with other flags.
packaging/build-assets.sh
deb=$(cargo deb --no-build | tail -n 1)
[ -f "$deb" ] || fail "cargo deb produced no package"
echo "check-deb: built $deb"

# 3. Contents.
contents=$(dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's#^\./#/#')
for path in \
    /usr/bin/vpnfw \
    /usr/lib/systemd/system/vpnfw.service \
    /usr/lib/sysusers.d/vpnfw.conf \
    /etc/vpnfw/config.toml \
    /usr/share/doc/vpnfw/README.md \
    /usr/share/doc/vpnfw/install.md \
    /usr/share/doc/vpnfw/metrics.conf.example \
    /usr/share/doc/vpnfw/copyright \
    /usr/share/doc/vpnfw/changelog.Debian.gz \
    /usr/share/doc/vpnfw/nft/vpnfw-sets.nft \
    /usr/share/man/man1/vpnfw.1.gz \
    /usr/share/man/man1/vpnfw-serve.1.gz \
    /usr/share/man/man1/vpnfw-hook.1.gz \
    /usr/share/man/man1/vpnfw-check.1.gz \
    /usr/share/man/man1/vpnfw-status.1.gz \
    /usr/share/man/man1/vpnfw-reconcile.1.gz \
    /usr/share/bash-completion/completions/vpnfw \
    /usr/share/zsh/vendor-completions/_vpnfw \
    /usr/share/fish/vendor_completions.d/vpnfw.fish \
    /usr/share/lintian/overrides/vpnfw; do
    printf '%s\n' "$contents" | grep -qx "$path" || fail "$path is missing from $deb"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -R "$deb" "$tmp/pkg"
# Every command that --help lists has its man page.
for cmd in $("$tmp/pkg/usr/bin/vpnfw" --help | awk '/^Commands:/ {on = 1; next} /^$/ {on = 0} on && $1 != "help" {print $1}'); do
    printf '%s\n' "$contents" | grep -qx "/usr/share/man/man1/vpnfw-$cmd.1.gz" || fail "no man page for vpnfw $cmd"
done
grep -qx /etc/vpnfw/config.toml "$tmp/pkg/DEBIAN/conffiles" || fail "/etc/vpnfw/config.toml is not a conffile"
grep -qx 'group = "www-data"' "$tmp/pkg/etc/vpnfw/config.toml" || fail "config.toml does not set group = \"www-data\""
pkg_version=$(dpkg-deb -f "$deb" Version)
log_version=$(sed -n '1s/^vpnfw (\([^)]*\)).*/\1/p' packaging/deb/changelog)
[ "$pkg_version" = "$log_version" ] ||
    fail "package version $pkg_version but packaging/deb/changelog says $log_version: add a changelog entry"
for script in postinst postrm prerm; do
    [ ! -f "$tmp/pkg/DEBIAN/$script" ] || sh -n "$tmp/pkg/DEBIAN/$script" || fail "$script has a syntax error"
done
echo "check-deb: contents ok ($(printf '%s\n' "$contents" | grep -vc '/$') files)"

# 4. lintian. It honours the overrides the package installs; as root it also prints
# "running with root privileges is not recommended!", which is harmless here.
lintian --fail-on error,warning "$deb" ||
    fail "lintian: errors or unaccepted warnings (see above; accepted ones go in packaging/deb/lintian-overrides)"
echo "check-deb: lintian ok"

# 5. The unit, as packaged.
unit=$tmp/unit/vpnfw.service
mkdir -p "$tmp/unit" "$tmp/man/man1"
sed "s#^ExecStart=/usr/bin/vpnfw#ExecStart=$tmp/pkg/usr/bin/vpnfw#" "$tmp/pkg/usr/lib/systemd/system/vpnfw.service" >"$unit"
gunzip -c "$tmp/pkg/usr/share/man/man1/vpnfw.1.gz" >"$tmp/man/man1/vpnfw.1"
gunzip -c "$tmp/pkg/usr/share/man/man1/vpnfw-serve.1.gz" >"$tmp/man/man1/vpnfw-serve.1"
verify=$(MANPATH=$tmp/man systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for vpnfw.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security printed no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure is above 2.0"
echo "check-deb: unit ok (verify clean, exposure $exposure)"

# 6. Install, upgrade, remove and purge in a throwaway overlay of /.
if [ "$(id -u)" != 0 ]; then
    echo "check-deb: not root: install test skipped"
    exit 0
fi
unshare --mount --propagation private sh packaging/deb/install-test.sh "$deb" "$tmp"
echo "check-deb: all checks passed"
