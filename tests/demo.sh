#!/bin/sh
# Quick start demo: builds vpnfw and runs it for real in a throwaway network
# namespace: the daemon, a connect and a disconnect through the hook (run the way
# vpn-user-portal runs it: /bin/sh -c, empty environment, unprivileged user), with
# the kernel's set contents shown after each step. Leaves nothing behind.
set -eu
cd "$(dirname "$0")/.."
. tests/setup-debian.sh

cargo build --release --quiet
BIN=$(pwd)/target/release/vpnfw
NS=vpnfw-demo-$$
WORK=$(mktemp -d /tmp/vpnfw-demo.XXXXXX)
chmod 755 "$WORK"
DAEMON=""

cleanup() {
    set +e
    if [ -n "$DAEMON" ]; then
        kill "$DAEMON" 2>/dev/null
        wait "$DAEMON" 2>/dev/null
    fi
    ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cat > "$WORK/config.toml" <<CONF
[store]
path = "$WORK/state.db"
[server]
socket = "$WORK/vpnfw.sock"
group = "nogroup"
[[profile]]
id = "staff"
prefixes = ["10.10.0.0/24", "fd10::/64"]
CONF

step "throwaway network namespace $NS (the host ruleset is never touched)"
ip netns add "$NS"

step "vpnfw serve --config $WORK/config.toml"
ip netns exec "$NS" "$BIN" serve --config "$WORK/config.toml" 2>"$WORK/serve.log" &
DAEMON=$!
i=0
until [ -S "$WORK/vpnfw.sock" ]; do
    i=$((i + 1)); [ $i -gt 500 ] && { cat "$WORK/serve.log"; exit 1; }
    sleep 0.01
done
sed 's/^/    daemon: /' "$WORK/serve.log"

# The portal: VPN_…='…' /usr/bin/vpnfw 2>&1 through /bin/sh, as www-data (here: nobody).
hook() {
    env -i setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh -c \
        "$* VPNFW_SOCKET='$WORK/vpnfw.sock' '$BIN' 2>&1" && rc=0 || rc=$?
    echo "    hook exit code: $rc"
}
show() {
    ip netns exec "$NS" nft list table inet vpnfw | sed 's/^/    /'
}

step "connect: alice on profile staff gets 10.10.0.5 and fd10::5"
hook "VPN_EVENT='C' VPN_USER_ID='alice@example.org' VPN_PROFILE_ID='staff' VPN_CONNECTION_ID='5f2a9c' VPN_IP_FOUR='10.10.0.5' VPN_IP_SIX='fd10::5' VPN_PROTO='openvpn'"
show

step "connect refused: an address outside the staff prefixes"
hook "VPN_EVENT='C' VPN_USER_ID='mallory' VPN_PROFILE_ID='staff' VPN_CONNECTION_ID='bad1' VPN_IP_FOUR='192.0.2.66' VPN_IP_SIX='' VPN_PROTO='openvpn'"

step "connect refused: hostile input never reaches the daemon"
hook "VPN_EVENT='C' VPN_USER_ID='x' VPN_PROFILE_ID='staff; flush ruleset' VPN_CONNECTION_ID='bad2' VPN_IP_FOUR='10.10.0.6' VPN_IP_SIX=''"

step "vpnfw status"
"$BIN" status --socket "$WORK/vpnfw.sock" | sed 's/^/    /'

step "disconnect: alice"
hook "VPN_EVENT='D' VPN_USER_ID='alice@example.org' VPN_PROFILE_ID='staff' VPN_CONNECTION_ID='5f2a9c' VPN_IP_FOUR='10.10.0.5' VPN_IP_SIX='fd10::5' VPN_PROTO='openvpn'"
show

step "what the daemon logged"
sed 's/^/    /' "$WORK/serve.log"
step "done: namespace and files are removed"
