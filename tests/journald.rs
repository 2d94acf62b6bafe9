//! Under systemd the daemon logs to journald with structured fields. journald is
//! played by a datagram socket at /run/systemd/journal/socket inside a private mount
//! and network namespace (a tmpfs over /run: nothing on the host changes).

mod common;

use std::process::Command;

use common::*;

/// Receives journald's native protocol and writes each entry as KEY=value lines.
const FAKE_JOURNAL: &str = r#"
import socket, sys
def fields(b):
    i = 0
    while i < len(b):
        nl = b.index(b"\n", i)
        line = b[i:nl]
        if b"=" in line:
            yield line
            i = nl + 1
        else:
            n = int.from_bytes(b[nl + 1:nl + 9], "little")
            yield line + b"=" + b[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
out = open(sys.argv[1], "ab", buffering=0)
print("up", flush=True)
while True:
    out.write(b"\n".join(fields(s.recv(1 << 20))) + b"\n--\n")
"#;

#[test]
fn events_reach_journald_as_structured_fields() {
    let work = Workdir::new();
    std::fs::write(work.path("journal.py"), FAKE_JOURNAL).expect("script");
    std::fs::write(
        work.path("config.toml"),
        format!(
            "[store]\npath = {:?}\n[server]\nsocket = {:?}\n{STAFF}",
            work.path("state.db"),
            work.path("vpnfw.sock")
        ),
    )
    .expect("config");
    // JOURNAL_STREAM names the device and inode of the daemon's stderr, as systemd
    // sets it; the daemon must only trust it while stderr is that stream.
    let script = format!(
        r#"set -eu
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
ip link set lo up
python3 {dir}/journal.py {dir}/journal.bin > {dir}/journal.up 2>&1 &
journal=$!
trap 'kill $journal ${{serve:-}} 2>/dev/null || true' EXIT
n=0; while ! grep -q up {dir}/journal.up; do n=$((n+1)); [ $n -lt 500 ]; sleep 0.02; done
: > {dir}/serve.log
JOURNAL_STREAM=$(stat -c '%d:%i' {dir}/serve.log) {bin} serve --config {dir}/config.toml > /dev/null 2>> {dir}/serve.log &
serve=$!
n=0; while [ ! -S {dir}/vpnfw.sock ]; do n=$((n+1)); [ $n -lt 500 ]; sleep 0.02; done
env -i VPN_EVENT=C VPN_USER_ID=alice@example.org VPN_PROFILE_ID=staff VPN_CONNECTION_ID=c1 \
  VPN_IP_FOUR=10.10.0.5 VPN_IP_SIX=fd10::5 VPN_PROTO=openvpn VPNFW_SOCKET={dir}/vpnfw.sock {bin}
env -i VPN_EVENT=C VPN_USER_ID=alice@example.org VPN_PROFILE_ID=staff VPN_CONNECTION_ID=c2 \
  VPN_IP_FOUR=192.0.2.1 VPN_IP_SIX= VPN_PROTO=openvpn VPNFW_SOCKET={dir}/vpnfw.sock {bin} || true
sleep 0.2
"#,
        dir = work.path("").display(),
        bin = BIN
    );
    std::fs::write(work.path("run.sh"), script).expect("script");
    let out = Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--mount",
            "--net",
            "--propagation",
            "private",
            "sh",
        ])
        .arg(work.path("run.sh"))
        .output()
        .expect("unshare");
    let journal = std::fs::read_to_string(work.path("journal.bin")).unwrap_or_default();
    let stderr = std::fs::read_to_string(work.path("serve.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}\nserve.log: {stderr}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<&str> = journal.split("\n--\n").collect();
    let applied = entries
        .iter()
        .find(|e| e.contains("MESSAGE=event applied"))
        .unwrap_or_else(|| panic!("no 'event applied' entry in the journal:\n{journal}"));
    for field in [
        "PROFILE=staff",
        "CONN_ID=c1",
        "USER=alice@example.org",
        // Plain addresses, so that `journalctl V4=10.10.0.5` finds them.
        "V4=10.10.0.5",
        "V6=fd10::5",
        "RESULT=session started",
        "SYSLOG_IDENTIFIER=vpnfw",
        "PRIORITY=5",
    ] {
        assert!(
            applied.lines().any(|l| l == field),
            "{field} missing from:\n{applied}"
        );
    }
    assert!(
        applied.lines().any(|l| l.starts_with("US=")),
        "no duration: {applied}"
    );
    let refused = entries
        .iter()
        .find(|e| e.contains("MESSAGE=event refused"))
        .unwrap_or_else(|| panic!("no 'event refused' entry:\n{journal}"));
    for field in ["CONN_ID=c2", "PRIORITY=4", "V4=192.0.2.1", "RESULT=refused"] {
        assert!(
            refused.lines().any(|l| l == field),
            "{field} missing from:\n{refused}"
        );
    }
    for prefix in [
        "US=",
        "REASON=VPN_IP_FOUR 192.0.2.1 is outside",
        // The plain `journalctl -u vpnfw` view shows only the message: it has the reason.
        "MESSAGE=event refused: VPN_IP_FOUR 192.0.2.1 is outside",
    ] {
        assert!(
            refused.lines().any(|l| l.starts_with(prefix)),
            "no {prefix}… in:\n{refused}"
        );
    }
    assert!(
        !refused.lines().any(|l| l.starts_with("V6=")),
        "an event without IPv6 has no V6 field:\n{refused}"
    );
    assert!(
        !stderr.contains("event applied"),
        "events went to stderr as well: {stderr}"
    );
}
