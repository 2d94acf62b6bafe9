#!/bin/sh
# Quick start demo: builds vpnfw and runs it for real in throwaway network
# namespaces, with real packets:
#
#   client (staff 10.10.0.5/fd10::5, student 10.20.0.5/fd20::5)
#     └─ tun0 ─ node: vpnfw serve + nft/eduvpn-node-staff-students.nft (unmodified)
#                 ├─ int0 ─ internal server 172.16.0.2 / fd16::2
#                 └─ eth0 ─ internet server 192.0.2.2 / 2001:db8::2
#
# The hook runs the way vpn-user-portal runs it: /bin/sh -c with the portal's
# quoting, an empty environment, an unprivileged user. Every probe (ping and a TCP
# connect) is printed as allowed or blocked. Nothing is left behind on the host.
set -eu
cd "$(dirname "$0")/.."
. tests/setup-debian.sh

cargo build --release --quiet
BIN=$(pwd)/target/release/vpnfw
RULESET=$(pwd)/nft/eduvpn-node-staff-students.nft
P=vpnfw-demo-$$
NODE=$P-node CLIENT=$P-client INTERNAL=$P-internal INTERNET=$P-internet
WORK=$(mktemp -d /tmp/vpnfw-demo.XXXXXX)
chmod 755 "$WORK"

cleanup() {
    set +e
    for ns in $NODE $CLIENT $INTERNAL $INTERNET; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inns() { ns=$1; shift; ip netns exec "$ns" "$@"; }

bold "four throwaway network namespaces (the host's ruleset is never touched)"
for ns in $NODE $CLIENT $INTERNAL $INTERNET; do
    ip netns add "$ns"
    inns "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
inns $NODE sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
ip link add c0 netns $CLIENT type veth peer name tun0 netns $NODE
ip link add i0 netns $INTERNAL type veth peer name int0 netns $NODE
ip link add e0 netns $INTERNET type veth peer name eth0 netns $NODE
addr() { ns=$1 dev=$2; shift 2; for a in "$@"; do ip -n "$ns" addr add "$a" dev "$dev" nodad; done; ip -n "$ns" link set "$dev" up; }
addr $CLIENT c0 10.10.0.5/24 10.20.0.5/24 fd10::5/64 fd20::5/64
addr $NODE tun0 10.10.0.1/24 10.20.0.1/24 fd10::1/64 fd20::1/64
addr $NODE int0 172.16.0.1/24 fd16::1/64
addr $INTERNAL i0 172.16.0.2/24 fd16::2/64
addr $NODE eth0 192.0.2.1/24 2001:db8::1/64
addr $INTERNET e0 192.0.2.2/24 2001:db8::2/64
ip -n $CLIENT route add default via 10.10.0.1
ip -n $CLIENT -6 route add default via fd10::1
for ns in $INTERNAL $INTERNET; do
    gw4=$( [ "$ns" = "$INTERNAL" ] && echo 172.16.0.1 || echo 192.0.2.1 )
    gw6=$( [ "$ns" = "$INTERNAL" ] && echo fd16::1 || echo 2001:db8::1 )
    ip -n "$ns" route add default via "$gw4"
    ip -n "$ns" -6 route add default via "$gw6"
    inns "$ns" python3 -c '
import socket, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(16)
    while True: s.accept()[0].close()
threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
serve(socket.AF_INET6, "::")' &
done

bold "the node loads the shipped ruleset: nft -f nft/eduvpn-node-staff-students.nft"
inns $NODE nft -f "$RULESET"

cat > "$WORK/config.toml" <<CONF
[nftables]
create = false
[store]
path = "$WORK/state.db"
[server]
socket = "$WORK/vpnfw.sock"
group = "nogroup"
[[profile]]
id = "staff"
prefixes = ["10.10.0.0/24", "fd10::/64"]
[[profile]]
id = "students"
prefixes = ["10.20.0.0/24", "fd20::/64"]
CONF

bold "vpnfw serve on the node"
inns $NODE "$BIN" serve --config "$WORK/config.toml" 2>"$WORK/serve.log" &
i=0
until [ -S "$WORK/vpnfw.sock" ]; do
    i=$((i + 1)); [ $i -gt 500 ] && { cat "$WORK/serve.log"; exit 1; }
    sleep 0.01
done
sed 's/^/    daemon: /' "$WORK/serve.log"

hook() {
    env -i setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh -c \
        "$* VPNFW_SOCKET='$WORK/vpnfw.sock' '$BIN' 2>&1" && rc=0 || rc=$?
    echo "    hook exit code: $rc"
}
probe() { # name src dst
    if inns $CLIENT ping -c1 -W1 -I "$2" "$3" >/dev/null 2>&1; then p=allowed; else p=blocked; fi
    if inns $CLIENT python3 -c 'import socket, sys
socket.create_connection((sys.argv[2], 8080), timeout=1, source_address=(sys.argv[1], 0)).close()' "$2" "$3" 2>/dev/null
    then t=allowed; else t=blocked; fi
    printf '    %-34s ping %-8s tcp %s\n' "$1" "$p" "$t"
}
probes() { # in parallel: blocked probes wait out their 1 s timeouts together
    probe "staff   $1 -> internal" "$2" "$4" > "$WORK/p1" &
    a=$!
    probe "staff   $1 -> internet" "$2" "$5" > "$WORK/p2" &
    b=$!
    probe "student $1 -> internal" "$3" "$4" > "$WORK/p3" &
    c=$!
    probe "student $1 -> internet" "$3" "$5" > "$WORK/p4" &
    d=$!
    wait $a $b $c $d
    cat "$WORK/p1" "$WORK/p2" "$WORK/p3" "$WORK/p4"
}
sets() {
    for s in staff_v4 staff_v6 students_v4 students_v6; do
        printf '    %-12s %s\n' "$s" "$(inns $NODE nft list set inet vpnfw $s | grep -o 'elements = {.*}' || echo '(empty)')"
    done
}
all_probes() { probes IPv4 10.10.0.5 10.20.0.5 172.16.0.2 192.0.2.2; probes IPv6 fd10::5 fd20::5 fd16::2 2001:db8::2; }

bold "before any connect: every probe is blocked"
sets; all_probes

bold "connect: alice (staff) and bob (students)"
hook "VPN_EVENT='C' VPN_USER_ID='alice@example.org' VPN_PROFILE_ID='staff' VPN_CONNECTION_ID='5f2a9c' VPN_IP_FOUR='10.10.0.5' VPN_IP_SIX='fd10::5' VPN_PROTO='openvpn'"
hook "VPN_EVENT='C' VPN_USER_ID='bob@example.org' VPN_PROFILE_ID='students' VPN_CONNECTION_ID='7be01d' VPN_IP_FOUR='10.20.0.5' VPN_IP_SIX='fd20::5' VPN_PROTO='openvpn'"
sets
echo "    expected: staff reaches internal and internet; students only the internet"
all_probes

bold "refused: an address outside the profile, and hostile input"
hook "VPN_EVENT='C' VPN_USER_ID='mallory' VPN_PROFILE_ID='staff' VPN_CONNECTION_ID='bad1' VPN_IP_FOUR='10.20.0.99' VPN_IP_SIX=''"
hook "VPN_EVENT='C' VPN_USER_ID='x' VPN_PROFILE_ID='staff; flush ruleset' VPN_CONNECTION_ID='bad2' VPN_IP_FOUR='10.10.0.6' VPN_IP_SIX=''"

bold "vpnfw status"
"$BIN" status --socket "$WORK/vpnfw.sock" | sed 's/^/    /'

bold "disconnect both: every probe is blocked again"
hook "VPN_EVENT='D' VPN_USER_ID='alice@example.org' VPN_PROFILE_ID='staff' VPN_CONNECTION_ID='5f2a9c' VPN_IP_FOUR='10.10.0.5' VPN_IP_SIX='fd10::5' VPN_PROTO='openvpn'"
hook "VPN_EVENT='D' VPN_USER_ID='bob@example.org' VPN_PROFILE_ID='students' VPN_CONNECTION_ID='7be01d' VPN_IP_FOUR='10.20.0.5' VPN_IP_SIX='fd20::5' VPN_PROTO='openvpn'"
sets; all_probes

bold "what the daemon logged"
sed 's/^/    /' "$WORK/serve.log"
bold "done: namespaces and files are removed"
