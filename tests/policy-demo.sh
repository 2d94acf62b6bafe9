#!/bin/sh
# Narrated real-packet demo of a shipped per-profile policy:
#
#   sudo tests/policy-demo.sh                               # nft/eduvpn-node-staff-students.nft
#   sudo tests/policy-demo.sh nft/eduvpn-node-interval.nft  # the interval-set variant
#
#   client (staff 10.10.0.5/fd10::5, student 10.20.0.5/fd20::5)
#     └─ tun0 ─ node: the policy file (unmodified) + vpnfw serve
#                 ├─ int0 ─ internal server 172.16.0.2 / fd16::2
#                 └─ eth0 ─ internet server 192.0.2.2 / 2001:db8::2
#
# It shows the set contents, every probe (a ping and a TCP connect, IPv4 and IPv6) as
# allowed or blocked, and the hook exit codes, through: before any connect, a staff
# and a student connect, `nft -f` of the policy again (what `systemctl reload
# nftables` does: the sets come back empty and vpnfw refills them), and the
# disconnects. The hook runs as vpn-user-portal runs it: /bin/sh -c, the portal's
# quoting, an empty environment, an unprivileged user. Everything happens in four
# throwaway network namespaces and a temp dir, removed on exit; the host's ruleset is
# never touched.
set -eu
cd "$(dirname "$0")/.."
RULESET=$(realpath "${1:-nft/eduvpn-node-staff-students.nft}")
case $(basename "$RULESET") in
eduvpn-node-staff-students.nft | eduvpn-node-interval.nft) ;;
eduvpn-node-dispatch.nft)
    echo "policy-demo: vpnfw does not maintain the dispatch maps yet, so that file blocks every client" >&2
    exit 2
    ;;
*)
    echo "policy-demo: expects nft/eduvpn-node-staff-students.nft or nft/eduvpn-node-interval.nft" >&2
    exit 2
    ;;
esac
. tests/setup-debian.sh

cargo build --release --quiet
BIN=$(pwd)/target/release/vpnfw
# Debian's python3 (tests/setup-debian.sh), not a PATH shim (pyenv) that would run it
# as a child and keep a shell in the namespace.
PY=/usr/bin/python3
P=vpnfw-pdemo-$$
NODE=$P-node CLIENT=$P-client INTERNAL=$P-internal INTERNET=$P-internet
WORK=$(mktemp -d /tmp/vpnfw-policy-demo.XXXXXX)
chmod 755 "$WORK"

cleanup() {
    set +e
    for ns in $NODE $CLIENT $INTERNAL $INTERNET; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inns() { ns=$1; shift; ip netns exec "$ns" "$@"; }

say "four throwaway network namespaces: client, node, internal server, internet server"
for ns in $NODE $CLIENT $INTERNAL $INTERNET; do
    ip netns add "$ns"
    inns "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$ns" link set lo up
done
inns "$NODE" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
ip link add c0 netns "$CLIENT" type veth peer name tun0 netns "$NODE"
ip link add i0 netns "$INTERNAL" type veth peer name int0 netns "$NODE"
ip link add e0 netns "$INTERNET" type veth peer name eth0 netns "$NODE"
addrs() { # NS DEV ADDR...: v6 addresses without duplicate address detection, usable at once
    ns=$1 dev=$2
    shift 2
    for a in "$@"; do
        case $a in *:*) ip -n "$ns" addr add "$a" dev "$dev" nodad ;; *) ip -n "$ns" addr add "$a" dev "$dev" ;; esac
    done
    ip -n "$ns" link set "$dev" up
}
addrs "$CLIENT" c0 10.10.0.5/24 10.20.0.5/24 fd10::5/64 fd20::5/64
addrs "$NODE" tun0 10.10.0.1/24 10.20.0.1/24 fd10::1/64 fd20::1/64
addrs "$NODE" int0 172.16.0.1/24 fd16::1/64
addrs "$INTERNAL" i0 172.16.0.2/24 fd16::2/64
addrs "$NODE" eth0 192.0.2.1/24 2001:db8::1/64
addrs "$INTERNET" e0 192.0.2.2/24 2001:db8::2/64
ip -n "$CLIENT" route add default via 10.10.0.1
ip -n "$CLIENT" -6 route add default via fd10::1
ip -n "$INTERNAL" route add default via 172.16.0.1
ip -n "$INTERNAL" -6 route add default via fd16::1
ip -n "$INTERNET" route add default via 192.0.2.1
ip -n "$INTERNET" -6 route add default via 2001:db8::1
LISTENER='
import socket, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(16)
    while True: s.accept()[0].close()
threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
serve(socket.AF_INET6, "::")'
CONNECT='import socket, sys
socket.create_connection((sys.argv[2], 8080), timeout=1, source_address=(sys.argv[1], 0) if sys.argv[1] else None).close()'
# Started from subshells and without a shell function in between, so that no shell
# waits for them: cleanup kills them without a "Killed" report.
for ns in $INTERNAL $INTERNET; do
    (ip netns exec "$ns" $PY -c "$LISTENER" &)
done
# Wait until both servers accept (from inside their own namespace), so that a blocked
# probe below always means the firewall dropped it.
for pair in "$INTERNAL 172.16.0.2" "$INTERNAL fd16::2" "$INTERNET 192.0.2.2" "$INTERNET 2001:db8::2"; do
    set -- $pair
    i=0
    until inns "$1" $PY -c "$CONNECT" "" "$2" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 100 ] && { echo "listener on $2 did not start" >&2; exit 1; }
        sleep 0.05
    done
done
echo "    TCP listeners on port 8080 in both servers"

say "the node loads the policy, unmodified: nft -f nft/$(basename "$RULESET")"
inns "$NODE" nft -f "$RULESET"
sed -n '/^# What it allows/,/^#   postrouting/p' "$RULESET" | sed 's/^#/   /'

cat >"$WORK/config.toml" <<CONF
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

say "vpnfw serve on the node (profiles staff and students, sets from the policy file)"
(ip netns exec "$NODE" "$BIN" serve --config "$WORK/config.toml" 2>"$WORK/serve.log" &)
i=0
until [ -S "$WORK/vpnfw.sock" ]; do
    i=$((i + 1)); [ $i -gt 500 ] && { cat "$WORK/serve.log"; exit 1; }
    sleep 0.01
done
echo "    listening on $WORK/vpnfw.sock"

# hook EVENT USER PROFILE CONN IP4 IP6: the portal's command line, as www-data would.
hook() {
    line="VPN_EVENT='$1' VPN_USER_ID='$2' VPN_PROFILE_ID='$3' VPN_CONNECTION_ID='$4' VPN_IP_FOUR='$5' VPN_IP_SIX='$6' VPN_PROTO='openvpn'"
    rc=0
    out=$(env -i setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh -c \
        "$line VPNFW_SOCKET='$WORK/vpnfw.sock' '$BIN' 2>&1") || rc=$?
    printf '    hook %s %-18s profile %-9s -> exit code %s %s\n' "$1" "$2" "$3" "$rc" "$out"
}
sets() {
    for s in staff_v4 staff_v6 students_v4 students_v6; do
        e=$(inns "$NODE" nft list set inet vpnfw "$s" | tr -d '\n\t' | grep -o 'elements = {[^}]*}' || true)
        printf '    set %-12s %s\n' "$s" "${e:-(empty)}"
    done
}
# probe LABEL SRC DST -> one line: ping and TCP, allowed or blocked
probe() {
    if inns "$CLIENT" ping -c1 -W1 -I "$2" "$3" >/dev/null 2>&1; then p=allowed; else p=blocked; fi
    if inns "$CLIENT" $PY -c "$CONNECT" "$2" "$3" 2>/dev/null; then t=allowed; else t=blocked; fi
    printf '    %-32s ping %-8s tcp %s\n' "$1" "$p" "$t"
}
# All eight paths, in parallel so that blocked probes wait out their timeouts together.
probes() {
    n=0 pids=""
    for case in \
        "staff   IPv4 -> internal|10.10.0.5|172.16.0.2" \
        "staff   IPv4 -> internet|10.10.0.5|192.0.2.2" \
        "student IPv4 -> internal|10.20.0.5|172.16.0.2" \
        "student IPv4 -> internet|10.20.0.5|192.0.2.2" \
        "staff   IPv6 -> internal|fd10::5|fd16::2" \
        "staff   IPv6 -> internet|fd10::5|2001:db8::2" \
        "student IPv6 -> internal|fd20::5|fd16::2" \
        "student IPv6 -> internet|fd20::5|2001:db8::2"; do
        n=$((n + 1))
        label=${case%%|*} rest=${case#*|}
        probe "$label" "${rest%%|*}" "${rest#*|}" >"$WORK/probe.$n" &
        pids="$pids $!"
    done
    # Only these: a bare `wait` would also wait for the listeners and the daemon.
    wait $pids
    i=1
    while [ $i -le $n ]; do cat "$WORK/probe.$i"; i=$((i + 1)); done
}

say "before any connect: the sets are empty, every probe is blocked"
sets
probes

say "connect: alice (staff) and bob (students)"
hook C alice@example.org staff 5f2a9c 10.10.0.5 fd10::5
hook C bob@example.org students 7be01d 10.20.0.5 fd20::5
sets
echo "    expected: staff reaches internal and internet; students only the internet"
probes

say "reload the ruleset: nft -f nft/$(basename "$RULESET") (what systemctl reload nftables does)"
inns "$NODE" nft -f "$RULESET"
echo "    the file starts with 'flush ruleset': every set is recreated empty;"
echo "    vpnfw notices the change to its table and puts the live sessions back:"
i=0
until inns "$NODE" nft list set inet vpnfw students_v6 | grep -q 'fd20::5'; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "    not refilled within a second" >&2; break; }
    sleep 0.01
done
sets
probes

say "disconnect both: the sets are empty, every probe is blocked again"
hook D alice@example.org staff 5f2a9c 10.10.0.5 fd10::5
hook D bob@example.org students 7be01d 10.20.0.5 fd20::5
sets
probes

say "what the daemon logged"
sed 's/^/    /' "$WORK/serve.log"
say "done: the namespaces and $WORK are removed on exit"
