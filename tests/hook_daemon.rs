//! The vertical slice end to end: hook → daemon → netlink → kernel sets + store.
//! Every test runs the real binaries in its own network namespace and asserts on what
//! the kernel and the store hold.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

#[test]
fn connect_adds_both_families() {
    let d = Daemon::start(STAFF);
    let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(r.output, "", "a successful hook prints nothing");
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::5"])));
    assert_eq!(
        d.stored(),
        BTreeSet::from([(
            "staff".into(),
            "c1".into(),
            "10.10.0.5".into(),
            "fd10::5".into()
        )])
    );
    // The element comment names the holder.
    let listing = d.ns.nft(&["list", "set", "inet", "vpnfw", "staff_v4"]);
    assert!(
        listing.contains("user=alice@example.org conn=c1"),
        "{listing}"
    );
}

#[test]
fn disconnect_removes_both_families() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(
        d.hook(&connect_vars("staff", "c2", "10.10.0.6", "fd10::6"))
            .code,
        0
    );
    let r = d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.6"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::6"])));
    assert_eq!(d.stored().len(), 1);
}

#[test]
fn repeated_connect_and_disconnect_are_idempotent() {
    let d = Daemon::start(STAFF);
    for _ in 0..3 {
        let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
        assert_eq!(r.code, 0, "{}", r.output);
    }
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert_eq!(d.stored().len(), 1);
    for _ in 0..2 {
        let r = d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
        assert_eq!(r.code, 0, "{}", r.output);
    }
    assert_eq!(d.elements("staff_v4"), Some(ips(&[])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&[])));
    assert!(d.stored().is_empty());
}

#[test]
fn repeated_connect_repairs_a_removed_element() {
    // Without the ruleset watch, which would repair it on its own.
    let d = Daemon::start(&format!("{STAFF}[reconcile]\nwatch = false\n"));
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "")).code,
        0
    );
    d.ns.nft(&[
        "delete",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.0.5 }",
    ]);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "")).code,
        0
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
}

#[test]
fn disconnect_of_unknown_session_succeeds_and_changes_nothing() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let r = d.hook(&disconnect_vars(
        "staff",
        "never-seen",
        "10.10.0.5",
        "fd10::5",
    ));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert!(
        d.log().contains("disconnect of an unknown session"),
        "{}",
        d.log()
    );
}

#[test]
fn late_disconnect_keeps_new_owner() {
    let d = Daemon::start(STAFF);
    // Session A holds the address; its disconnect is delayed (or was lost).
    assert_eq!(
        d.hook(&connect_vars("staff", "old", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    // The portal hands the address to session B.
    assert_eq!(
        d.hook(&connect_vars("staff", "new", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    // A's late disconnect must not evict B.
    assert_eq!(
        d.hook(&disconnect_vars("staff", "old", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::5"])));
    // B's own disconnect does.
    assert_eq!(
        d.hook(&disconnect_vars("staff", "new", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&[])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&[])));
}

#[test]
fn unconfigured_profile_gets_default_sets() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.elements("guests_v4"),
        None,
        "not created before first use"
    );
    let r = d.hook(&connect_vars("guests", "g1", "192.168.77.3", "fd77::3"));
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("guests_v4"), Some(ips(&["192.168.77.3"])));
    assert_eq!(d.elements("guests_v6"), Some(ips(&["fd77::3"])));
}

#[test]
fn out_of_prefix_refused_state_unchanged() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let before = (d.elements("staff_v4"), d.elements("staff_v6"), d.stored());
    for (ip4, ip6, var) in [
        ("10.11.0.5", "fd10::7", "VPN_IP_FOUR"),
        ("10.10.0.7", "fd11::7", "VPN_IP_SIX"),
    ] {
        let r = d.hook(&connect_vars("staff", "c2", ip4, ip6));
        assert_eq!(r.code, 3, "{}", r.output);
        assert_eq!(r.output.lines().count(), 1, "one line: {}", r.output);
        assert!(
            r.output.contains(var) && r.output.contains("outside"),
            "{}",
            r.output
        );
    }
    assert_eq!(
        (d.elements("staff_v4"), d.elements("staff_v6"), d.stored()),
        before
    );
    assert!(
        d.log().contains("event refused"),
        "the daemon logs why: {}",
        d.log()
    );
}

#[test]
fn garbage_input_rejected_state_unchanged() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let before = (d.elements("staff_v4"), d.elements("staff_v6"), d.stored());
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("VPN_EVENT", "X")], "VPN_EVENT"),
        (vec![("VPN_EVENT", "")], "VPN_EVENT"),
        (
            vec![("VPN_PROFILE_ID", "staff; nft flush ruleset")],
            "VPN_PROFILE_ID",
        ),
        (vec![("VPN_PROFILE_ID", "Staff")], "VPN_PROFILE_ID"),
        (vec![("VPN_PROFILE_ID", "123")], "VPN_PROFILE_ID"),
        (
            vec![("VPN_CONNECTION_ID", "$(reboot)")],
            "VPN_CONNECTION_ID",
        ),
        (vec![("VPN_IP_FOUR", "10.10.0.9/24")], "VPN_IP_FOUR"),
        (vec![("VPN_IP_FOUR", "010.10.0.9")], "VPN_IP_FOUR"),
        (vec![("VPN_IP_FOUR", "fd10::9")], "VPN_IP_FOUR"),
        (vec![("VPN_IP_SIX", "fd10::9%eth0")], "VPN_IP_SIX"),
        (vec![("VPN_IP_SIX", "::ffff:10.10.0.9")], "VPN_IP_SIX"),
        (vec![("VPN_IP_SIX", "10.10.0.9")], "VPN_IP_SIX"),
        (vec![("VPN_IP_FOUR", ""), ("VPN_IP_SIX", "")], "VPN_IP_"),
        (vec![("VPN_PROTO", "ipsec")], "VPN_PROTO"),
    ];
    for (overrides, var) in cases {
        let mut vars = connect_vars("staff", "c9", "10.10.0.9", "fd10::9");
        for (k, v) in &overrides {
            vars.retain(|(name, _)| name != k);
            vars.push((k, v));
        }
        let r = d.hook(&vars);
        assert_eq!(r.code, 2, "{overrides:?}: {}", r.output);
        assert_eq!(r.output.lines().count(), 1, "{overrides:?}: {}", r.output);
        assert!(
            r.output.contains(var),
            "{overrides:?} should name {var}: {}",
            r.output
        );
    }
    // A missing required variable.
    let mut vars = connect_vars("staff", "c9", "10.10.0.9", "fd10::9");
    vars.retain(|(k, _)| *k != "VPN_CONNECTION_ID");
    let r = d.hook(&vars);
    assert_eq!(r.code, 2, "{}", r.output);
    assert!(r.output.contains("VPN_CONNECTION_ID"), "{}", r.output);
    assert_eq!(
        (d.elements("staff_v4"), d.elements("staff_v6"), d.stored()),
        before
    );
}

#[test]
fn hook_via_sh_as_unprivileged_with_empty_env() {
    let d = Daemon::start(STAFF);
    // Values that need the portal's quoting to survive /bin/sh.
    let user = "O'Brien \"the admin\" $(id) `id` ; } x";
    let vars = vec![
        ("VPN_EVENT", "C"),
        ("VPN_USER_ID", user),
        ("VPN_PROFILE_ID", "staff"),
        (
            "VPN_CONNECTION_ID",
            "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg=",
        ),
        ("VPN_IP_FOUR", "10.10.3.4"),
        ("VPN_IP_SIX", "fd10::3:4"),
        ("VPN_PROTO", "wireguard"),
        ("VPN_NODE_NUMBER", "0"),
        ("VPN_SOMETHING_NEW", "ignored; $(true)"),
    ];
    let r = hook_as(&d.ns, &d.socket(), &vars, Who::Portal);
    assert_eq!(r.code, 0, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.3.4"])));
    let status = d.status();
    let s = &status["sessions"][0];
    assert_eq!(s["user_id"], user);
    assert_eq!(s["proto"], "wireguard");
}

#[test]
fn unauthorised_peer_refused() {
    let d = Daemon::start(STAFF);
    let r = hook_as(
        &d.ns,
        &d.socket(),
        &connect_vars("staff", "c1", "10.10.0.5", "fd10::5"),
        Who::Stranger,
    );
    // The socket's mode keeps it out (exit 4, with advice); socket_protocol.rs shows
    // the peer-credential check refusing it even when the mode does not.
    assert_eq!(r.code, 4, "{}", r.output);
    assert!(r.output.contains("[server] group"), "{}", r.output);
    assert_eq!(r.output.lines().count(), 1, "{}", r.output);
    assert_eq!(d.elements("staff_v4"), Some(ips(&[])));
    assert!(d.stored().is_empty());
}

#[test]
fn socket_is_group_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = Daemon::start(STAFF);
    let meta = std::fs::metadata(d.socket()).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), HOOK_GID);
    let store = std::fs::metadata(d.store()).expect("store");
    assert_eq!(
        store.permissions().mode() & 0o077,
        0,
        "store must not be readable by others"
    );
}

#[test]
fn daemon_unreachable_fails_fast() {
    let ns = Netns::new();
    let work = Workdir::new();
    let start = std::time::Instant::now();
    let r = hook_as(
        &ns,
        &work.path("absent.sock"),
        &connect_vars("staff", "c1", "10.10.0.5", "fd10::5"),
        Who::Portal,
    );
    assert_eq!(r.code, 4, "{}", r.output);
    assert_eq!(r.output.lines().count(), 1, "{}", r.output);
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn concurrent_200_hooks_kernel_equals_store() {
    let d = Daemon::start(STAFF);
    // 200 connects at once; then every third session disconnects, all at once.
    let run = |event: &'static str, i: u32| {
        let ip4 = format!("10.10.{}.{}", i / 200, i % 200 + 1);
        let ip6 = format!("fd10::{:x}", i + 1);
        let conn = format!("conn{i}");
        let vars = vec![
            ("VPN_EVENT", event),
            ("VPN_USER_ID", "user"),
            ("VPN_PROFILE_ID", "staff"),
            ("VPN_CONNECTION_ID", conn.as_str()),
            ("VPN_IP_FOUR", ip4.as_str()),
            ("VPN_IP_SIX", ip6.as_str()),
        ];
        hook_as(&d.ns, &d.socket(), &vars, Who::Portal)
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..200).map(|i| s.spawn(move || run("C", i))).collect();
        for h in handles {
            let r = h.join().expect("hook thread");
            assert_eq!(r.code, 0, "{}", r.output);
        }
    });
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .filter(|i| i % 3 == 0)
            .map(|i| s.spawn(move || run("D", i)))
            .collect();
        for h in handles {
            let r = h.join().expect("hook thread");
            assert_eq!(r.code, 0, "{}", r.output);
        }
    });
    let live: Vec<u32> = (0..200).filter(|i| i % 3 != 0).collect();
    let want4: BTreeSet<_> = live
        .iter()
        .map(|i| {
            format!("10.10.{}.{}", i / 200, i % 200 + 1)
                .parse()
                .expect("ip")
        })
        .collect();
    let want6: BTreeSet<_> = live
        .iter()
        .map(|i| format!("fd10::{:x}", i + 1).parse().expect("ip"))
        .collect();
    assert_eq!(d.elements("staff_v4"), Some(want4));
    assert_eq!(d.elements("staff_v6"), Some(want6));
    let stored: BTreeSet<String> = d.stored().into_iter().map(|r| r.1).collect();
    let want: BTreeSet<String> = live.iter().map(|i| format!("conn{i}")).collect();
    assert_eq!(stored, want);
}

#[test]
fn restart_reconcile_removes_stale_and_readds_missing() {
    let mut d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(
        d.hook(&connect_vars("staff", "c2", "10.10.0.6", "")).code,
        0
    );
    d.kill();
    // While the daemon is down: a stale element appears, a live one disappears.
    d.ns.nft(&[
        "add",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.9.9 }",
    ]);
    d.ns.nft(&[
        "add",
        "element",
        "inet",
        "vpnfw",
        "staff_v6",
        "{ fd10::99 }",
    ]);
    d.ns.nft(&[
        "delete",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.0.5 }",
    ]);
    d.restart();
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.6"]))
    );
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::5"])));
    let log = d.log();
    assert!(log.contains("added=1 deleted=2"), "{log}");
}

#[test]
fn restart_recreates_sets_after_ruleset_flush() {
    let mut d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("guests", "g1", "192.168.77.3", ""))
            .code,
        0
    );
    d.kill();
    d.ns.nft(&["flush", "ruleset"]);
    d.restart();
    // guests is not configured: vpnfw remembers the set it wrote to.
    assert_eq!(d.elements("guests_v4"), Some(ips(&["192.168.77.3"])));
}

#[test]
fn reconcile_10k_sessions_in_one_batch() {
    let mut d = Daemon::start(STAFF);
    d.kill();
    // 10,000 sessions straight into the store: far more than one 128 KiB netlink page.
    let mut sql = String::from("BEGIN;\n");
    for i in 0..10_000u32 {
        sql.push_str(&format!(
            "INSERT INTO sessions VALUES ('staff','c{i}','u{i}','wireguard','10.10.{}.{}','fd10::{:x}','staff_v4','staff_v6',0,'boot-one');\n",
            i / 250,
            i % 250 + 1,
            i + 1
        ));
    }
    sql.push_str("COMMIT;\n");
    let mut child = Command::new("sqlite3")
        .arg(d.store())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sqlite3");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), sql.as_bytes()).expect("sql");
    assert!(child.wait().expect("sqlite3").success());
    d.restart();
    assert_eq!(d.elements("staff_v4").map(|s| s.len()), Some(10_000));
    assert_eq!(d.elements("staff_v6").map(|s| s.len()), Some(10_000));
    assert!(d.log().contains("added=20000"), "{}", d.log());
}

#[test]
fn check_reports_missing_set() {
    let ns = Netns::new();
    let work = Workdir::new();
    let cfg = work.path("config.toml");
    std::fs::write(
        &cfg,
        "[nftables]\ncreate = false\n[[profile]]\nid = \"staff\"\n[[profile]]\nid = \"students\"\n",
    )
    .expect("config");
    ns.nft_load("table inet vpnfw {\n set staff_v4 { type ipv4_addr; }\n set staff_v6 { type ipv4_addr; }\n set students_v4 { type ipv4_addr; }\n}\n");
    let out = ns
        .cmd(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("staff_v4: ok"), "{text}");
    assert!(
        text.contains("problem: set inet vpnfw staff_v6 has the wrong type"),
        "{text}"
    );
    assert!(
        text.contains("problem: set inet vpnfw students_v6 not found"),
        "{text}"
    );
    // Fixed ruleset → clean.
    ns.nft(&["delete", "set", "inet", "vpnfw", "staff_v6"]);
    ns.nft(&[
        "add",
        "set",
        "inet",
        "vpnfw",
        "staff_v6",
        "{ type ipv6_addr; }",
    ]);
    ns.nft(&[
        "add",
        "set",
        "inet",
        "vpnfw",
        "students_v6",
        "{ type ipv6_addr; }",
    ]);
    let out = ns
        .cmd(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn create_false_refuses_connect_for_missing_set() {
    let d = Daemon::start("[nftables]\ncreate = false\n");
    let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", ""));
    assert_eq!(r.code, 5, "{}", r.output);
    assert!(r.output.contains("create = true"), "{}", r.output);
    assert!(d.stored().is_empty());
}

#[test]
fn status_json_lists_sessions_and_set_sizes() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let st = d.status();
    assert_eq!(st["sessions"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(st["sessions"][0]["conn_id"], "c1");
    assert_eq!(st["sessions"][0]["ip4"], "10.10.0.5");
    let sets = st["sets"].as_array().expect("sets");
    let v4 = sets
        .iter()
        .find(|s| s["set"] == "staff_v4")
        .expect("staff_v4");
    assert_eq!(v4["elements"], 1);
}
