//! Every way the kernel and the store drift apart (DESIGN.md §2), and how vpnfw
//! repairs it: reboots, ruleset reloads, crashes, the portal's own database, interval
//! sets. Each test in its own network namespace, against the real kernel.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const WG_A: &str = "aGVsbG8gd29ybGQgdGhpcyBpcyBhIHRlc3Qga2V5IQ=";
const WG_B: &str = "YW5vdGhlciB0ZXN0IGtleSBmb3IgdnBuZnctdGVzdHM=";
const WG_C: &str = "dGhpcmQgdGVzdCBrZXkgZm9yIHZwbmZ3IHRlc3RzIQ=";
const WG_D: &str = "Zm91cnRoIHRlc3Qga2V5IGZvciB2cG5mdyB0ZXN0cyE=";

fn wg_connect<'a>(conn: &'a str, ip4: &'a str, ip6: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = connect_vars("staff", conn, ip4, ip6);
    v.retain(|(k, _)| *k != "VPN_PROTO" && *k != "VPN_ORIGINATING_IP");
    v.push(("VPN_PROTO", "wireguard"));
    v
}

fn sqlite(db: &std::path::Path, sql: &str) {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sqlite3");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), sql.as_bytes()).expect("sql");
    assert!(
        child.wait().expect("sqlite3").success(),
        "sqlite3 failed: {sql}"
    );
}

fn run_vpnfw(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(d.socket())
        .output()
        .expect("vpnfw");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn reboot_ends_openvpn_and_restores_wireguard() {
    let mut d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "ovpn1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(d.hook(&wg_connect(WG_A, "10.10.1.5", "fd10::1:5")).code, 0);
    // The node reboots: the daemon dies, the kernel forgets everything, a new boot id.
    d.kill();
    d.ns.nft(&["flush", "ruleset"]);
    d.set_boot_id("boot-two");
    d.restart();
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.1.5"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::1:5"])));
    let stored: BTreeSet<String> = d.stored().into_iter().map(|r| r.1).collect();
    assert_eq!(stored, BTreeSet::from([WG_A.to_string()]));
    assert!(
        d.log().contains("openvpn_ended=1 wireguard_kept=1"),
        "{}",
        d.log()
    );
}

#[test]
fn same_boot_restart_keeps_openvpn() {
    let mut d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "ovpn1", "10.10.0.5", ""))
            .code,
        0
    );
    d.restart();
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
}

const PORTAL_SCHEMA: &str = "CREATE TABLE wg_peers (node_number INTEGER NOT NULL DEFAULT 0, \
    profile_id TEXT NOT NULL, display_name TEXT NOT NULL, public_key TEXT NOT NULL UNIQUE, \
    ip_four TEXT NOT NULL, ip_six TEXT NOT NULL, created_at TEXT NOT NULL, \
    expires_at TEXT NOT NULL, auth_key TEXT, user_id TEXT NOT NULL);\n";

fn peer_row(key: &str, ip4: &str, ip6: &str, expires: &str, user: &str) -> String {
    format!(
        "INSERT INTO wg_peers (profile_id, display_name, public_key, ip_four, ip_six, created_at, expires_at, user_id) \
         VALUES ('staff', 'laptop', '{key}', '{ip4}', '{ip6}', '2026-01-01T00:00:00+00:00', '{expires}', '{user}');\n"
    )
}

#[test]
fn portal_database_ends_gone_peers_and_recovers_missing_ones() {
    let work = Workdir::new();
    let db = work.path("db.sqlite");
    let extra = format!(
        "{STAFF}[portal]\ndatabase = {:?}\n[reconcile]\nwatch = false\n",
        db
    );
    let d = Daemon::start(&extra);
    // vpnfw knows A (still in the portal), B (expired there) and C (deleted there).
    assert_eq!(d.hook(&wg_connect(WG_A, "10.10.1.1", "fd10::1:1")).code, 0);
    assert_eq!(d.hook(&wg_connect(WG_B, "10.10.1.2", "fd10::1:2")).code, 0);
    assert_eq!(d.hook(&wg_connect(WG_C, "10.10.1.3", "fd10::1:3")).code, 0);
    // An OpenVPN session is not the portal DB's business.
    assert_eq!(
        d.hook(&connect_vars("staff", "ovpn1", "10.10.0.9", ""))
            .code,
        0
    );
    // The portal knows A, B (expired) and D, whose connect never reached vpnfw.
    let mut sql = String::from(PORTAL_SCHEMA);
    sql += &peer_row(
        WG_A,
        "10.10.1.1",
        "fd10::1:1",
        "2099-01-01T00:00:00+00:00",
        "alice",
    );
    sql += &peer_row(
        WG_B,
        "10.10.1.2",
        "fd10::1:2",
        "2020-01-01T00:00:00+00:00",
        "bob",
    );
    sql += &peer_row(
        WG_D,
        "10.10.1.4",
        "fd10::1:4",
        "2099-01-01T00:00:00+00:00",
        "dave",
    );
    sqlite(&db, &sql);

    let (code, out) = run_vpnfw(&d, &["reconcile", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("would end 2 WireGuard sessions, would recover 1"),
        "{out}"
    );
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.1.1", "10.10.1.2", "10.10.1.3", "10.10.0.9"])),
        "a dry run changes nothing"
    );

    let (code, out) = run_vpnfw(&d, &["reconcile"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.1.1", "10.10.1.4", "10.10.0.9"]))
    );
    assert_eq!(
        d.elements("staff_v6"),
        Some(ips(&["fd10::1:1", "fd10::1:4"]))
    );
    let stored: BTreeSet<String> = d.stored().into_iter().map(|r| r.1).collect();
    assert_eq!(
        stored,
        BTreeSet::from([WG_A.to_string(), WG_D.to_string(), "ovpn1".to_string()])
    );
}

#[test]
fn unusable_portal_database_is_a_warning() {
    let work = Workdir::new();
    let db = work.path("not-there.sqlite");
    let d = Daemon::start(&format!("{STAFF}[portal]\ndatabase = {:?}\n", db));
    assert_eq!(d.hook(&wg_connect(WG_A, "10.10.1.1", "")).code, 0);
    let (code, out) = run_vpnfw(&d, &["reconcile"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.1.1"])));
    assert!(d.log().contains("portal database unusable"), "{}", d.log());
}

#[test]
fn reload_with_flush_ruleset_restores_sessions_within_1s() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    assert_eq!(
        d.hook(&connect_vars("staff", "c2", "10.10.0.6", "")).code,
        0
    );
    // What `systemctl reload nftables` does with a typical /etc/nftables.conf.
    let conf = "flush ruleset\n\
        table inet vpnfw {\n  set staff_v4 { type ipv4_addr; }\n  set staff_v6 { type ipv6_addr; }\n}\n\
        table inet filter {\n  chain forward { type filter hook forward priority 0; policy drop;\n\
            ip saddr @staff_v4 accept\n  }\n}\n";
    // Reference the sets from another table the way an admin policy would.
    let conf = conf.replace("ip saddr @staff_v4 accept", "ct state established accept");
    d.ns.nft_load(&conf);
    let reloaded = Instant::now();
    wait_for(
        "sessions back after the reload",
        Duration::from_secs(1),
        || {
            d.elements("staff_v4") == Some(ips(&["10.10.0.5", "10.10.0.6"]))
                && d.elements("staff_v6") == Some(ips(&["fd10::5"]))
        },
    );
    eprintln!("restored {:?} after the reload", reloaded.elapsed());
    assert!(
        d.log().contains("table changed outside vpnfw"),
        "{}",
        d.log()
    );
}

#[test]
fn reload_that_drops_the_table_recreates_it() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "")).code,
        0
    );
    d.ns.nft(&["flush", "ruleset"]);
    wait_for("set recreated and refilled", Duration::from_secs(1), || {
        d.elements("staff_v4") == Some(ips(&["10.10.0.5"]))
    });
}

#[test]
fn own_changes_do_not_trigger_reconcile() {
    let d = Daemon::start(STAFF);
    for i in 0..20 {
        let conn = format!("c{i}");
        let ip = format!("10.10.0.{}", i + 1);
        assert_eq!(d.hook(&connect_vars("staff", &conn, &ip, "")).code, 0);
    }
    // Give a (wrongly) woken monitor time to log.
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !d.log().contains("table changed outside vpnfw"),
        "{}",
        d.log()
    );
}

#[test]
fn reconcile_dry_run_changes_nothing() {
    let d = Daemon::start(&format!("{STAFF}[reconcile]\nwatch = false\n"));
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "")).code,
        0
    );
    d.ns.nft(&[
        "add",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.9.9 }",
    ]);
    d.ns.nft(&[
        "delete",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.0.5 }",
    ]);
    let drifted = d.elements("staff_v4");
    let (code, out) = run_vpnfw(&d, &["reconcile", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["summary"]["added"], 1);
    assert_eq!(report["summary"]["deleted"], 1);
    assert_eq!(report["adds"][0]["addr"], "10.10.0.5");
    assert_eq!(report["dels"][0]["addr"], "10.10.9.9");
    assert_eq!(
        d.elements("staff_v4"),
        drifted,
        "dry run changed the kernel"
    );
    let (code, out) = run_vpnfw(&d, &["reconcile"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("add 10.10.0.5 to staff_v4"), "{out}");
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
}

#[test]
fn periodic_reconcile_repairs_drift() {
    let d = Daemon::start(&format!(
        "{STAFF}[reconcile]\nwatch = false\ninterval = \"1s\"\n"
    ));
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
    wait_for("periodic reconcile", Duration::from_secs(3), || {
        d.elements("staff_v4") == Some(ips(&["10.10.0.5"]))
    });
}

/// One session's events and what the hook answered.
struct Outcome {
    conn: String,
    ip: IpAddr,
    connect_ok: bool,
    disconnect: Option<bool>,
}

#[test]
fn kill_9_during_2000_events_loses_and_invents_nothing() {
    let mut d = Daemon::start(STAFF);
    let done = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    let mut second = None;
    std::thread::scope(|s| {
        // 16 portal workers, 1,200 sessions: every session connects and two in three
        // disconnect again: 2,000 events.
        for w in 0..16u32 {
            let (d, done, outcomes) = (&d, &done, &outcomes);
            s.spawn(move || {
                for i in (w..1200).step_by(16) {
                    let conn = format!("k{i}");
                    let ip = format!("10.10.{}.{}", i / 250, i % 250 + 1);
                    let c = d.hook(&connect_vars("staff", &conn, &ip, ""));
                    done.fetch_add(1, Ordering::SeqCst);
                    let disconnect = (i % 3 != 0).then(|| {
                        let r = d.hook(&disconnect_vars("staff", &conn, &ip, ""));
                        done.fetch_add(1, Ordering::SeqCst);
                        r.code == 0
                    });
                    outcomes.lock().expect("lock").push(Outcome {
                        conn,
                        ip: ip.parse().expect("ip"),
                        connect_ok: c.code == 0,
                        disconnect,
                    });
                }
            });
        }
        // Kill -9 the daemon mid-stream, then start a new one while hooks keep coming.
        wait_for("500 events", Duration::from_secs(60), || {
            done.load(Ordering::SeqCst) >= 500
        });
        let pid = d.child.as_ref().map(|c| c.id()).expect("daemon pid");
        run_ok(Command::new("kill").args(["-9", &pid.to_string()]));
        eprintln!(
            "killed the daemon after {} events",
            done.load(Ordering::SeqCst)
        );
        wait_for("100 more events", Duration::from_secs(60), || {
            done.load(Ordering::SeqCst) >= 600
        });
        let child =
            d.ns.cmd(BIN)
                .args(["serve", "--config"])
                .arg(d.config_path())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("restart");
        second = Some(child);
        eprintln!(
            "restarted the daemon after {} events",
            done.load(Ordering::SeqCst)
        );
    });
    if let Some(mut c) = second {
        let _ = c.kill();
        let _ = c.wait();
    }
    // One more clean start: its reconcile must find nothing to repair.
    d.restart();
    let outcomes = outcomes.into_inner().expect("lock");
    assert_eq!(outcomes.len(), 1200);
    let kernel = d.elements("staff_v4").expect("set");
    let stored: BTreeSet<(String, IpAddr)> = d
        .stored()
        .into_iter()
        .map(|r| (r.1, r.2.parse().expect("ip")))
        .collect();
    let stored_ips: BTreeSet<IpAddr> = stored.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(kernel, stored_ips, "nothing stale: kernel == store");
    let (mut failed, mut ok) = (0, 0);
    for o in &outcomes {
        let live = stored.contains(&(o.conn.clone(), o.ip));
        match (o.connect_ok, o.disconnect) {
            (true, Some(true)) => assert!(!live, "{}: disconnect exited 0 but it is live", o.conn),
            (true, None) => assert!(live, "{}: connect exited 0 but it is gone", o.conn),
            // A failed hook promised nothing: the daemon may have committed the event
            // and died before it could answer. Kernel == store above covers these.
            (true, Some(false)) | (false, _) => failed += 1,
        }
        if o.connect_ok {
            ok += 1;
        }
    }
    eprintln!(
        "{ok} connects succeeded, {failed} sessions saw a failed hook while the daemon was down"
    );
    assert!(
        failed > 0,
        "the kill happened mid-stream, so some hooks must have failed"
    );
    assert!(ok > 600, "hooks succeed again after the restart");
}

#[test]
fn interval_sets_50k_elements_add_and_delete_around_neighbours() {
    let ns = Netns::new();
    ns.nft_load(
        "table inet vpnfw {\n set staff_v4 { type ipv4_addr; flags interval; }\n set staff_v6 { type ipv6_addr; flags interval; }\n}\n",
    );
    let mut d = Daemon::start_in(ns, &format!("[nftables]\ncreate = false\n{STAFF}"));
    d.kill();
    // 50,000 sessions from the store, on consecutive addresses: every element has
    // neighbours on both sides.
    let mut sql = String::from("BEGIN;\n");
    for i in 0..50_000u32 {
        let a = std::net::Ipv4Addr::from(0x0a0a_0000 + i + 1);
        sql.push_str(&format!(
            "INSERT INTO sessions VALUES ('staff','s{i}','u','wireguard','{a}',NULL,'staff_v4','staff_v6',0,'boot-one');\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    sqlite(&d.store(), &sql);
    d.restart();
    assert!(d.log().contains("added=50000 deleted=0"), "{}", d.log());
    // A second start reads the interval set back correctly: nothing to do.
    d.restart();
    assert!(d.log().contains("added=0 deleted=0"), "{}", d.log());
    // Remove one in the middle of the run, add one just past the end.
    assert_eq!(
        d.hook(&disconnect_vars("staff", "s100", "10.10.0.101", ""))
            .code,
        0
    );
    let past_end = std::net::Ipv4Addr::from(0x0a0a_0000 + 50_001).to_string();
    assert_eq!(d.hook(&connect_vars("staff", "new", &past_end, "")).code, 0);
    let set = d.elements("staff_v4").expect("set");
    assert_eq!(set.len(), 50_000);
    let has = |s: &str| set.contains(&s.parse::<IpAddr>().expect("ip"));
    assert!(!has("10.10.0.101"));
    assert!(
        has("10.10.0.100") && has("10.10.0.102"),
        "neighbours intact"
    );
    assert!(has(&past_end) && has("10.10.195.80"));
}

/// A hand-edited row that does not validate is left out of the kernel (and logged),
/// not trusted; a later connect of the same session replaces it and counts.
#[test]
fn invalid_store_row_is_ignored_until_the_session_connects_again() {
    let mut d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "good", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    d.stop();
    sqlite(
        &d.store(),
        // A control character in the user id: the hook would never have let it in.
        "INSERT INTO sessions VALUES ('staff','edited','bob' || char(7),'openvpn','10.10.0.9','fd10::9','staff_v4','staff_v6',0,'boot-one');",
    );
    d.restart();
    assert!(
        d.log().contains("ignoring invalid store row") && d.log().contains("conn_id=edited"),
        "{}",
        d.log()
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    assert_eq!(d.elements("staff_v6"), Some(ips(&["fd10::5"])));
    assert_eq!(d.status()["sessions_total"], 1);
    // The same session connects through the hook: its row is replaced and counted.
    assert_eq!(
        d.hook(&connect_vars("staff", "edited", "10.10.0.9", "fd10::9"))
            .code,
        0
    );
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.9"]))
    );
    assert_eq!(d.status()["sessions_total"], 2);
    // A reconcile keeps it: the row is no longer treated as invalid.
    let (code, out) = run_vpnfw(&d, &["reconcile"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.9"]))
    );
    d.assert_kernel_matches_store(&["staff_v4", "staff_v6"]);
}
