//! Running as a service: config reload on SIGHUP, least privilege.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn hup(d: &Daemon) {
    let pid = d.child.as_ref().map(|c| c.id()).expect("running");
    run_ok(Command::new("kill").args(["-HUP", &pid.to_string()]));
}

#[test]
fn sighup_reload_applies_a_valid_config() {
    let mut d = Daemon::start(STAFF);
    let r = d.hook(&connect_vars("staff", "c1", "10.20.0.5", ""));
    assert_eq!(r.code, 3, "outside the old prefixes: {}", r.output);
    d.extra = "[[profile]]\nid = \"staff\"\nprefixes = [\"10.20.0.0/16\"]\n".into();
    d.write_config();
    hup(&d);
    wait_for("config reloaded", Duration::from_secs(5), || {
        d.log().contains("config reloaded")
    });
    let r = d.hook(&connect_vars("staff", "c1", "10.20.0.5", ""));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.20.0.5"])));
    let r = d.hook(&connect_vars("staff", "c2", "10.10.0.5", ""));
    assert_eq!(r.code, 3, "the old prefix is gone: {}", r.output);
}

#[test]
fn sighup_with_a_bad_config_keeps_the_running_one() {
    let mut d = Daemon::start(STAFF);
    d.extra = "[[profile]]\nid = \"Not Valid\"\n".into();
    d.write_config();
    hup(&d);
    wait_for("rejection logged", Duration::from_secs(5), || {
        d.log().contains("new config rejected")
    });
    let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", ""));
    assert_eq!(r.code, 0, "old config still serves: {}", r.output);
    // A table change needs a restart: refused, old config kept.
    d.extra = format!("[nftables]\ntable = \"other\"\n{STAFF}");
    d.write_config();
    hup(&d);
    wait_for(
        "restart-only change refused",
        Duration::from_secs(5),
        || d.log().contains("needs a restart"),
    );
    let r = d.hook(&connect_vars("staff", "c2", "10.10.0.6", ""));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.6"]))
    );
}

/// The capability bits in /proc/<pid>/status.
fn caps(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc");
    let hex = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("cap field");
    u64::from_str_radix(hex, 16).expect("hex")
}

const CAP_NET_ADMIN: u64 = 1 << 12;

#[test]
fn daemon_runs_as_an_unprivileged_user_with_only_cap_net_admin() {
    let uid = "4343";
    let d = Daemon::start_with(
        Netns::new(),
        &format!("{STAFF}[reconcile]\nwatch = true\n"),
        &[
            "setpriv",
            "--reuid=4343",
            "--regid=4343",
            "--clear-groups",
            "--inh-caps=-all,+net_admin",
            "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin",
        ],
        None,
        |d| {
            // The state directory belongs to the service user (systemd's StateDirectory=).
            run_ok(Command::new("chown").arg(uid).arg(d.work.dir.path()));
        },
    );
    let pid = d.child.as_ref().map(|c| c.id()).expect("pid");
    // `ip netns exec` execs setpriv, which execs vpnfw: the pid is the daemon's.
    assert_eq!(
        caps(pid, "CapEff:"),
        CAP_NET_ADMIN,
        "effective caps: only CAP_NET_ADMIN"
    );
    assert_eq!(caps(pid, "CapBnd:"), CAP_NET_ADMIN);
    // Every operation works: connect, disconnect, status, reconcile, the reload watch.
    let r = hook_as(
        &d.ns,
        &d.socket(),
        &connect_vars("staff", "c1", "10.10.0.5", "fd10::5"),
        Who::Root,
    );
    assert_eq!(r.code, 0, "{}", r.output);
    let r = hook_as(
        &d.ns,
        &d.socket(),
        &connect_vars("staff", "c2", "10.10.0.6", ""),
        Who::Root,
    );
    assert_eq!(r.code, 0, "{}", r.output);
    let r = hook_as(
        &d.ns,
        &d.socket(),
        &disconnect_vars("staff", "c2", "10.10.0.6", ""),
        Who::Root,
    );
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert_eq!(d.status()["sessions"].as_array().map(|a| a.len()), Some(1));
    d.ns.nft(&["flush", "set", "inet", "vpnfw", "staff_v4"]);
    wait_for(
        "watch repairs a flushed set",
        Duration::from_secs(2),
        || d.elements("staff_v4") == Some(ips(&["10.10.0.5"])),
    );
    let out = run_ok(
        Command::new(BIN)
            .args(["reconcile", "--socket"])
            .arg(d.socket()),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("add 0"),
        "{out:?}"
    );
    // Restrictive modes: the socket is the daemon user's alone (no group configured),
    // and the store is not readable by anyone else.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sock = std::fs::metadata(d.socket()).expect("socket");
    assert_eq!(sock.permissions().mode() & 0o777, 0o600);
    assert_eq!(sock.uid(), 4343);
    let store = std::fs::metadata(d.store()).expect("store");
    assert_eq!(store.permissions().mode() & 0o777, 0o600);
    // Others cannot talk to it: the unprivileged hook user is refused by the file mode.
    let r = hook_as(
        &d.ns,
        &d.socket(),
        &connect_vars("staff", "c3", "10.10.0.7", ""),
        Who::Portal,
    );
    assert_eq!(r.code, 4, "{}", r.output);
}

#[test]
fn store_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Daemon::start(STAFF);
    d.kill();
    d.store_name = "lib/vpnfw/state.db".into();
    d.write_config();
    d.restart();
    let dir = std::fs::metadata(d.work.path("lib/vpnfw")).expect("store dir");
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
}
