//! The shipped policies, proven with real packets: a client namespace (one staff and
//! one student address per family) → a forwarding node running vpnfw and an `nft/`
//! ruleset loaded unmodified → an internal server and an internet server
//! (`common::topology`). Every probe is a ping and a TCP connect, for IPv4 and IPv6.

mod common;

use std::process::Command;

use common::topology::*;
use common::*;

/// vpnfw must find the sets in the shipped file: never create them itself.
fn config() -> String {
    format!("[nftables]\ncreate = false\n{PROFILES}")
}

fn connect(t: &Topology, profile: &str, conn: &str, v4: &str, v6: &str) {
    let r = t.d.hook(&connect_vars(profile, conn, v4, v6));
    assert_eq!(r.code, 0, "connect {profile}: {}", r.output);
}

fn disconnect(t: &Topology, profile: &str, conn: &str, v4: &str, v6: &str) {
    let r = t.d.hook(&disconnect_vars(profile, conn, v4, v6));
    assert_eq!(r.code, 0, "disconnect {profile}: {}", r.output);
}

/// The whole story on one ruleset: blocked before connect, staff reaches the internal
/// server and the internet, a student only the internet, blocked again after
/// disconnect.
fn scenario(ruleset: &str, vpn_if: &str) {
    let t = Topology::start(ruleset, vpn_if, &config());
    t.expect(
        "before any connect everything is blocked",
        &[
            (STAFF_V4, INTERNAL_V4, false),
            (STAFF_V4, INTERNET_V4, false),
            (STUDENT_V4, INTERNET_V4, false),
            (STAFF_V6, INTERNAL_V6, false),
            (STAFF_V6, INTERNET_V6, false),
            (STUDENT_V6, INTERNET_V6, false),
        ],
    );
    connect(&t, "staff", "s1", STAFF_V4, STAFF_V6);
    t.expect(
        "staff connected",
        &[
            (STAFF_V4, INTERNAL_V4, true),
            (STAFF_V6, INTERNAL_V6, true),
            (STAFF_V4, INTERNET_V4, true),
            (STAFF_V6, INTERNET_V6, true),
            (STUDENT_V4, INTERNET_V4, false),
            (STUDENT_V6, INTERNET_V6, false),
        ],
    );
    connect(&t, "students", "t1", STUDENT_V4, STUDENT_V6);
    t.expect(
        "student connected",
        &[
            (STUDENT_V4, INTERNET_V4, true),
            (STUDENT_V6, INTERNET_V6, true),
            (STUDENT_V4, INTERNAL_V4, false),
            (STUDENT_V6, INTERNAL_V6, false),
            (STAFF_V4, INTERNAL_V4, true),
        ],
    );
    disconnect(&t, "staff", "s1", STAFF_V4, STAFF_V6);
    disconnect(&t, "students", "t1", STUDENT_V4, STUDENT_V6);
    t.expect(
        "after disconnect everything is blocked again",
        &[
            (STAFF_V4, INTERNAL_V4, false),
            (STAFF_V6, INTERNAL_V6, false),
            (STAFF_V4, INTERNET_V4, false),
            (STUDENT_V4, INTERNET_V4, false),
            (STUDENT_V6, INTERNET_V6, false),
        ],
    );
}

#[test]
fn staff_and_students_policy_with_real_packets() {
    scenario("eduvpn-node-staff-students.nft", "tun0");
}

/// The same policy with `flags interval` sets, and the client behind `wg0` (all
/// WireGuard profiles share it: only the source address tells them apart).
#[test]
fn interval_set_variant_with_real_packets_over_wg0() {
    scenario("eduvpn-node-interval.nft", "wg0");
}

#[test]
fn dispatch_sketch_is_not_filled_by_vpnfw() {
    let t = Topology::start("eduvpn-node-dispatch.nft", "tun0", &config());
    connect(&t, "staff", "s1", STAFF_V4, STAFF_V6);
    assert_eq!(t.d.elements("staff_v4"), Some(ips(&[STAFF_V4])));
    for map in ["vpnfw_dispatch_v4", "vpnfw_dispatch_v6"] {
        let listed = t.d.ns.nft(&["list", "map", "inet", "vpnfw", map]);
        assert!(!listed.contains("elements"), "{map}: {listed}");
    }
    t.expect(
        "dispatch maps empty: staff is dropped",
        &[
            (STAFF_V4, INTERNET_V4, false),
            (STAFF_V6, INTERNET_V6, false),
        ],
    );
}

#[test]
fn every_shipped_ruleset_loads() {
    let dir = format!("{}/nft", env!("CARGO_MANIFEST_DIR"));
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("nft/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "nft") {
            let ns = Netns::new();
            let out = ns
                .cmd("nft")
                .arg("-c")
                .arg("-f")
                .arg(&path)
                .output()
                .expect("nft -c");
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            files += 1;
        }
    }
    assert!(files >= 4, "{files} rulesets");
}

fn ruleset_check(cfg: &std::path::Path, policy: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["ruleset", "--config"])
        .arg(cfg)
        .arg("--policy")
        .arg(format!("{}/nft/{policy}", env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("vpnfw ruleset");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn ruleset_command_declares_loadable_sets_and_checks_policies() {
    let work = Workdir::new();
    let cfg = work.path("config.toml");
    std::fs::write(&cfg, PROFILES).expect("config");
    let out = run_ok(Command::new(BIN).args(["ruleset", "--config"]).arg(&cfg));
    let decl = String::from_utf8_lossy(&out.stdout).into_owned();
    let ns = Netns::new();
    ns.nft_load(&decl);
    for set in ["staff_v4", "staff_v6", "students_v4", "students_v6"] {
        assert_eq!(
            ns.set_elements("vpnfw", set),
            Some(ips(&[])),
            "{set} declared"
        );
    }
    for policy in [
        "eduvpn-node-staff-students.nft",
        "eduvpn-node-interval.nft",
        "vpnfw-sets.nft",
    ] {
        let (code, text) = ruleset_check(&cfg, policy);
        assert_eq!(code, Some(0), "{policy}: {text}");
    }
    // The dispatch sketch's maps are not vpnfw's: the check says so.
    let (code, text) = ruleset_check(&cfg, "eduvpn-node-dispatch.nft");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("@vpnfw_dispatch_v4") && text.contains("@vpnfw_dispatch_v6"),
        "{text}"
    );
    // A config without the students profile: the shipped policy references sets
    // vpnfw would never fill.
    std::fs::write(&cfg, "[[profile]]\nid = \"staff\"\n").expect("config");
    let (code, text) = ruleset_check(&cfg, "eduvpn-node-staff-students.nft");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("@students_v4") && text.contains("@students_v6"),
        "{text}"
    );
    assert!(!text.contains("@staff_v4"), "{text}");
}
