#!/bin/sh
# Generates the files the packages install but git does not hold, into target/assets/:
#
#   man/vpnfw.1, man/vpnfw-<command>.1   from the clap definitions (vpnfw generate man)
#   completions/vpnfw.bash, _vpnfw, vpnfw.fish                (vpnfw generate completions)
#   deb/config.toml   packaging/config.toml with group = "www-data" (Debian, Ubuntu)
#   rpm/config.toml   packaging/config.toml with group = "apache"   (Fedora, EL)
#
# The man pages and completions come from the binary itself, so they cannot disagree
# with `vpnfw --help`. cargo-deb cannot run a program before packaging, so run this
# first (packaging/check-deb.sh does); the rpm spec runs it in %build.
#
# Usage: packaging/build-assets.sh [VPNFW_BINARY]
#   Without an argument it builds the release binary with cargo.
set -eu
cd "$(dirname "$0")/.."

bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --bin vpnfw
    bin=${CARGO_TARGET_DIR:-target}/release/vpnfw
fi
out=target/assets
rm -rf "$out"
mkdir -p "$out/deb" "$out/rpm"

"$bin" generate man "$out/man"
"$bin" generate completions "$out/completions"

# The shipped config leaves [server] group commented out (unset means root only);
# each distribution's package sets it to the php-fpm pool user's group. Fail loudly
# if the line moved, rather than ship a config whose hook cannot reach the daemon.
for pair in deb:www-data rpm:apache; do
    dist=${pair%%:*} group=${pair#*:}
    sed "s/^# group = \"www-data\"\$/group = \"$group\"/" packaging/config.toml >"$out/$dist/config.toml"
    if ! grep -qx "group = \"$group\"" "$out/$dist/config.toml"; then
        echo "build-assets: packaging/config.toml has no '# group = \"www-data\"' line to set for $dist" >&2
        exit 1
    fi
done

for f in man/vpnfw.1 completions/vpnfw.bash completions/_vpnfw completions/vpnfw.fish; do
    [ -s "$out/$f" ] || { echo "build-assets: $out/$f was not generated" >&2; exit 1; }
done
echo "build-assets: $(find "$out" -type f | wc -l) files in $out"
