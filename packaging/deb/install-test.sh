#!/bin/sh
# The maintainer scripts of a vpnfw .deb, for real, without touching the host:
# packaging/check-deb.sh runs this in a private mount namespace, where / is overlaid
# with a tmpfs that disappears with the namespace.
#
# Usage (as root, inside `unshare --mount --propagation private`):
#   sh packaging/deb/install-test.sh VPNFW.deb SCRATCH_DIR
set -eu
deb=$1
scratch=$2

fail() {
    echo "install-test: FAIL: $*" >&2
    exit 1
}

root=$scratch/overlay/root
mkdir -p "$scratch/overlay"
mount -t tmpfs tmpfs "$scratch/overlay"
mkdir "$root" "$scratch/overlay/upper" "$scratch/overlay/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/overlay/upper,workdir=$scratch/overlay/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"

# Pretend systemd is running, so the scripts take their systemd branches, and record
# what they ask of it. deb-systemd-invoke (start, stop, try-restart) only logs;
# systemctl logs and runs for real (deb-systemd-helper enables units through it, and
# in a chroot it works offline).
mkdir -p "$root/run/systemd/system"
printf '#!/bin/sh\necho "deb-systemd-invoke $*" >>/tmp/systemd-calls\n' >"$root/usr/bin/deb-systemd-invoke"
mv "$root/usr/bin/systemctl" "$root/usr/bin/systemctl.real"
printf '#!/bin/sh\necho "systemctl $*" >>/tmp/systemd-calls\nexec /usr/bin/systemctl.real "$@"\n' >"$root/usr/bin/systemctl"
chmod 755 "$root/usr/bin/deb-systemd-invoke" "$root/usr/bin/systemctl"
cp "$deb" "$root/tmp/vpnfw.deb"
in_root() { chroot "$root" "$@"; }
calls() { cat "$root/tmp/systemd-calls" 2>/dev/null || true; }

if in_root getent passwd vpnfw >/dev/null; then
    fail "user vpnfw exists before the install; the test needs a host without vpnfw"
fi

# Fresh install: user and group membership, enabled, never started.
in_root dpkg -i /tmp/vpnfw.deb >"$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log"; fail "dpkg -i"; }
in_root getent passwd vpnfw >/dev/null || fail "user vpnfw was not created"
in_root id -nG vpnfw | tr ' ' '\n' | grep -qx www-data || fail "vpnfw is not in group www-data"
[ -L "$root/etc/systemd/system/multi-user.target.wants/vpnfw.service" ] || fail "vpnfw.service was not enabled"
if calls | grep -Eq 'deb-systemd-invoke (start|restart|try-restart)'; then
    fail "a fresh install started the service: $(calls)"
fi
echo "install-test: install ok (user vpnfw in www-data, enabled, not started)"

# The installed daemon as systemd would run it: user vpnfw with its groups, only
# CAP_NET_ADMIN, the state and runtime directories systemd creates, the shipped
# config; one connect from the web server's user, in a throwaway network namespace.
in_root sh -eu -c '
    install -d -o vpnfw -g vpnfw -m 0700 /var/lib/vpnfw
    install -d -o vpnfw -g vpnfw -m 0755 /run/vpnfw
    unshare --net sh -eu -c "
        ip link set lo up
        setpriv --reuid=vpnfw --regid=vpnfw --init-groups \
            --inh-caps=-all,+net_admin --ambient-caps=+net_admin --bounding-set=-all,+net_admin \
            /usr/bin/vpnfw serve --config /etc/vpnfw/config.toml 2>/tmp/daemon.log &
        daemon=\$!
        i=0
        while [ ! -S /run/vpnfw/vpnfw.sock ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
        stat -c \"%U:%G %a\" /run/vpnfw/vpnfw.sock >/tmp/socket-mode
        setpriv --reuid=www-data --regid=www-data --init-groups env -i VPN_EVENT=C \
            VPN_USER_ID=alice VPN_PROFILE_ID=staff VPN_CONNECTION_ID=c1 \
            VPN_IP_FOUR=10.10.0.5 VPN_IP_SIX=fd10::5 VPN_PROTO=wireguard /usr/bin/vpnfw \
            2>/tmp/hook.log || echo \$? >/tmp/hook.log.rc
        nft list set inet vpnfw staff_v4 >/tmp/set 2>&1 || true
        kill \$daemon
        wait \$daemon || true
    "
' || fail "the daemon smoke test did not run"
[ "$(cat "$root/tmp/socket-mode" 2>/dev/null)" = "vpnfw:www-data 660" ] ||
    fail "socket is $(cat "$root/tmp/socket-mode" 2>/dev/null), not vpnfw:www-data 660; daemon log: $(cat "$root/tmp/daemon.log")"
[ ! -f "$root/tmp/hook.log.rc" ] ||
    fail "the hook as www-data exited $(cat "$root/tmp/hook.log.rc"): $(cat "$root/tmp/hook.log"); daemon log: $(cat "$root/tmp/daemon.log")"
grep -q '10.10.0.5' "$root/tmp/set" || fail "10.10.0.5 is not in staff_v4: $(cat "$root/tmp/set")"
echo "install-test: daemon ok (as vpnfw with CAP_NET_ADMIN only: socket vpnfw:www-data 0660, hook as www-data applied)"

# Upgrade (the same version again): restart only if running, i.e. try-restart.
: >"$root/tmp/systemd-calls"
in_root dpkg -i /tmp/vpnfw.deb >"$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log"; fail "dpkg -i (upgrade)"; }
calls | grep -qx 'deb-systemd-invoke try-restart vpnfw.service' || fail "no try-restart on upgrade: $(calls)"
if calls | grep -Eq 'deb-systemd-invoke (start|restart) '; then
    fail "upgrade started the service: $(calls)"
fi
echo "install-test: upgrade ok (try-restart only)"

# Remove stops it; purge deletes the store and the config.
: >"$root/tmp/systemd-calls"
in_root dpkg -r vpnfw >"$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log"; fail "dpkg -r"; }
calls | grep -qx 'deb-systemd-invoke stop vpnfw.service' || fail "no stop on remove: $(calls)"
in_root dpkg -P vpnfw >"$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log"; fail "dpkg -P"; }
[ ! -e "$root/var/lib/vpnfw" ] || fail "/var/lib/vpnfw survived purge"
[ ! -e "$root/etc/vpnfw/config.toml" ] || fail "/etc/vpnfw/config.toml survived purge"
echo "install-test: remove and purge ok"
