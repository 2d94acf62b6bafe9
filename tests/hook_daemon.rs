//! The vertical slice end to end: hook → daemon → netlink → kernel sets + store.
//! Every test runs the real binaries in its own network namespace and asserts on what
//! the kernel and the store hold.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
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

/// `since` of the stored session `conn`, read from the store file.
fn stored_since(d: &Daemon, conn: &str) -> i64 {
    let out = run_ok(Command::new("sqlite3").arg(d.store()).arg(format!(
        "SELECT since FROM sessions WHERE conn_id = '{conn}'"
    )));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("one stored since")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[test]
fn repeated_connect_is_noop() {
    let d = Daemon::start(STAFF);
    let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
    assert_eq!(r.code, 0, "{}", r.output);
    let since = stored_since(&d, "c1");
    // `since` has one-second resolution: let the clock pass it, so a rewrite would show.
    wait_for("the next second", std::time::Duration::from_secs(3), || {
        unix_now() > since
    });
    for _ in 0..2 {
        let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
        assert_eq!(r.code, 0, "{}", r.output);
        assert_eq!(r.output, "");
    }
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
    assert_eq!(
        stored_since(&d, "c1"),
        since,
        "a repeated connect must not replace the live session"
    );
}

#[test]
fn repeated_disconnect_is_noop() {
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
    for _ in 0..3 {
        let r = d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", "fd10::5"));
        assert_eq!(r.code, 0, "{}", r.output);
        assert_eq!(r.output, "");
    }
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.6"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::6"])));
    assert_eq!(
        d.stored(),
        BTreeSet::from([(
            "staff".into(),
            "c2".into(),
            "10.10.0.6".into(),
            "fd10::6".into()
        )])
    );
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
    assert_eq!(r.output, "");
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::5"])));
    assert_eq!(d.stored().len(), 1);
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
    assert_eq!(
        d.stored(),
        BTreeSet::from([(
            "staff".into(),
            "new".into(),
            "10.10.0.5".into(),
            "fd10::5".into()
        )])
    );
    // B's own disconnect does.
    assert_eq!(
        d.hook(&disconnect_vars("staff", "new", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&[])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&[])));
    assert!(d.stored().is_empty());
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
    // 200 hook processes at once. Session i holds address slot i % 140, so sessions
    // 140..200 share an address with 0..60 (a reused pool address); every third
    // session disconnects right after its connect, while the others still connect.
    // The final state does not depend on the interleaving: an address stays iff a
    // live session holds it.
    const N: u32 = 200;
    let slot = |i: u32| i % 140;
    let ip4 = |i: u32| format!("10.10.{}.{}", slot(i) / 100, slot(i) % 100 + 1);
    let ip6 = |i: u32| format!("fd10::{:x}", slot(i) + 1);
    let leaves = |i: u32| i.is_multiple_of(3);
    let hook = |event: &str, i: u32| {
        let (conn, a4, a6) = (format!("conn{i}"), ip4(i), ip6(i));
        let vars = vec![
            ("VPN_EVENT", event),
            ("VPN_USER_ID", "user"),
            ("VPN_PROFILE_ID", "staff"),
            ("VPN_CONNECTION_ID", conn.as_str()),
            ("VPN_IP_FOUR", a4.as_str()),
            ("VPN_IP_SIX", a6.as_str()),
            ("VPN_PROTO", "wireguard"),
        ];
        let r = hook_as(&d.ns, &d.socket(), &vars, Who::Portal);
        assert_eq!(r.code, 0, "{event} conn{i}: {}", r.output);
    };
    std::thread::scope(|s| {
        for i in 0..N {
            s.spawn(move || {
                hook("C", i);
                if leaves(i) {
                    hook("D", i);
                }
            });
        }
    });
    let live: Vec<u32> = (0..N).filter(|&i| !leaves(i)).collect();
    let want4: BTreeSet<IpAddr> = live.iter().map(|&i| ip4(i).parse().expect("ip")).collect();
    let want6: BTreeSet<IpAddr> = live.iter().map(|&i| ip6(i).parse().expect("ip")).collect();
    // The case mix is what makes this test worth running: some addresses go, some
    // stay only because their other holder is live.
    let holders = |k: u32| (0..N).filter(move |&i| slot(i) == k);
    let gone = (0..140).filter(|&k| holders(k).all(leaves)).count();
    let kept_by_other = (0..140)
        .filter(|&k| holders(k).any(leaves) && !holders(k).all(leaves))
        .count();
    assert!(gone > 10 && kept_by_other > 10, "{gone} {kept_by_other}");

    let want_store: BTreeSet<(String, String, String, String)> = live
        .iter()
        .map(|&i| ("staff".into(), format!("conn{i}"), ip4(i), ip6(i)))
        .collect();
    assert_eq!(d.stored(), want_store);
    assert_eq!(d.elements("staff_v4"), Some(want4));
    assert_eq!(d.elements("staff_v6"), Some(want6));
    d.assert_kernel_matches_store(&["staff_v4", "staff_v6"]);
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
    let stored = d.stored();
    d.stop();
    // While the daemon is down: a stale element appears, a live one disappears.
    let nft_elem = |verb: &str, set: &str, addr: &str| {
        d.ns.nft(&[
            verb,
            "element",
            "inet",
            "vpnfw",
            set,
            &format!("{{ {addr} }}"),
        ]);
    };
    nft_elem("add", "staff_v4", "10.10.9.9");
    nft_elem("add", "staff_v6", "fd10::99");
    nft_elem("delete", "staff_v4", "10.10.0.5");
    d.restart();
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.6"]))
    );
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::5"])));
    assert_eq!(
        d.stored(),
        stored,
        "reconcile repairs the kernel, not the store"
    );
    d.assert_kernel_matches_store(&["staff_v4", "staff_v6"]);
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
fn reconcile_10k_sessions_in_bounded_batches() {
    let mut d = Daemon::start(STAFF);
    // One session through the hook, so the store file, its schema and the sets exist.
    assert_eq!(
        d.hook(&connect_vars("staff", "c-live", "10.10.200.1", "fd10::1:0"))
            .code,
        0
    );
    d.stop();
    // 10,000 more sessions straight into the store, in one transaction. 20,001
    // elements are far more than one 128 KiB netlink page (about 8k IPv4 elements).
    let addr4 = |i: u32| format!("10.10.{}.{}", i / 250, i % 250 + 1);
    let addr6 = |i: u32| format!("fd10::{:x}", i + 1);
    let mut sql = String::from("BEGIN;\n");
    for i in 0..10_000u32 {
        sql.push_str(&format!(
            "INSERT INTO sessions (profile, conn_id, user_id, proto, ip4, ip6, set4, set6, since, boot_id) \
             VALUES ('staff', 'c{i}', 'u{i}', 'wireguard', '{}', '{}', 'staff_v4', 'staff_v6', 0, 'boot-one');\n",
            addr4(i),
            addr6(i)
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
    // The kernel lost everything (say, `nft flush set` by hand while vpnfw was down).
    d.ns.nft(&["flush", "set", "inet", "vpnfw", "staff_v4"]);
    d.ns.nft(&["flush", "set", "inet", "vpnfw", "staff_v6"]);
    d.restart();

    let mut want4: BTreeSet<IpAddr> = (0..10_000).map(|i| addr4(i).parse().expect("ip")).collect();
    let mut want6: BTreeSet<IpAddr> = (0..10_000).map(|i| addr6(i).parse().expect("ip")).collect();
    want4.insert("10.10.200.1".parse().expect("ip"));
    want6.insert("fd10::1:0".parse().expect("ip"));
    assert_eq!(d.elements("staff_v4"), Some(want4));
    assert_eq!(d.elements("staff_v6"), Some(want6));
    d.assert_kernel_matches_store(&["staff_v4", "staff_v6"]);
    assert!(d.log().contains("added=20002 deleted=0"), "{}", d.log());
    // In atomic batches of at most 8192 elements (RECONCILE_CHUNK in
    // src/daemon/writer.rs), which bounds the daemon's memory: 20,002 elements, 3 batches.
    assert_eq!(d.status()["netlink_batches"], 3, "{}", d.log());
    // status lists the first 1000 sessions and counts all of them.
    let st = d.status();
    assert_eq!(st["sessions"].as_array().map(|a| a.len()), Some(1000));
    assert_eq!(st["sessions_total"], 10_001);
    assert_eq!(
        st["sessions"][0]["conn_id"], "c-live",
        "in (profile, conn_id) order"
    );
    let text = run_ok(
        std::process::Command::new(BIN)
            .args(["status", "--socket"])
            .arg(d.socket())
            .arg("--config")
            .arg(d.config_path()),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "10001 live sessions (the first 1000 shown; all: sqlite3 {} 'select * from sessions')",
            d.store().display()
        )),
        "{text}"
    );
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
