//! The shipped policies, proven with real packets: a client namespace (one staff and
//! one student address per family) → a forwarding node running vpnfw and an `nft/`
//! ruleset loaded unmodified → an internal server and an internet server.

mod common;

use std::process::{Command, Stdio};

use common::*;

const INTERNAL_V4: &str = "172.16.0.2";
const INTERNAL_V6: &str = "fd16::2";
const INTERNET_V4: &str = "192.0.2.2";
const INTERNET_V6: &str = "2001:db8::2";
const STAFF_V4: &str = "10.10.0.5";
const STAFF_V6: &str = "fd10::5";
const STUDENT_V4: &str = "10.20.0.5";
const STUDENT_V6: &str = "fd20::5";
const PORT: &str = "8080";

const PROFILES: &str = "[nftables]\ncreate = false\n\
    [[profile]]\nid = \"staff\"\nprefixes = [\"10.10.0.0/24\", \"fd10::/64\"]\n\
    [[profile]]\nid = \"students\"\nprefixes = [\"10.20.0.0/24\", \"fd20::/64\"]\n";

struct Topology {
    d: Daemon,
    client: Netns,
    _internal: Netns,
    _internet: Netns,
    listeners: Vec<std::process::Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for l in &mut self.listeners {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
}

fn ip(ns: &Netns, args: &str) {
    run_ok(ns.cmd("ip").args(args.split_whitespace()));
}

/// A TCP listener on both families that accepts forever.
fn listen(ns: &Netns) -> std::process::Child {
    let script = format!(
        "import socket, threading\n\
         def serve(fam, addr):\n\
         \x20   s = socket.socket(fam, socket.SOCK_STREAM)\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n\
         \x20   s.bind((addr, {PORT})); s.listen(64)\n\
         \x20   while True: s.accept()[0].close()\n\
         threading.Thread(target=serve, args=(socket.AF_INET, '0.0.0.0'), daemon=True).start()\n\
         serve(socket.AF_INET6, '::')\n"
    );
    ns.cmd("/usr/bin/python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("listener")
}

fn topology(ruleset: &str) -> Topology {
    let node = Netns::new();
    let client = Netns::new();
    let internal = Netns::new();
    let internet = Netns::new();
    for ns in [&node, &client, &internal, &internet] {
        run_ok(ns.cmd("sysctl").args([
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]));
    }
    run_ok(node.cmd("sysctl").args([
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]));
    let link = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        run_ok(Command::new("ip").args([
            "link", "add", an, "netns", &a.name, "type", "veth", "peer", "name", bn, "netns",
            &b.name,
        ]));
    };
    // The node's client-facing side is named like an OpenVPN tunnel, its uplink eth0.
    link(&client, "c0", &node, "tun0");
    link(&internal, "i0", &node, "int0");
    link(&internet, "e0", &node, "eth0");
    for (ns, dev, addrs) in [
        (
            &client,
            "c0",
            vec!["10.10.0.5/24", "10.20.0.5/24", "fd10::5/64", "fd20::5/64"],
        ),
        (
            &node,
            "tun0",
            vec!["10.10.0.1/24", "10.20.0.1/24", "fd10::1/64", "fd20::1/64"],
        ),
        (&node, "int0", vec!["172.16.0.1/24", "fd16::1/64"]),
        (&internal, "i0", vec!["172.16.0.2/24", "fd16::2/64"]),
        (&node, "eth0", vec!["192.0.2.1/24", "2001:db8::1/64"]),
        (&internet, "e0", vec!["192.0.2.2/24", "2001:db8::2/64"]),
    ] {
        for a in addrs {
            ip(ns, &format!("addr add {a} dev {dev} nodad"));
        }
        ip(ns, &format!("link set {dev} up"));
    }
    ip(&client, "route add default via 10.10.0.1");
    ip(&client, "-6 route add default via fd10::1");
    let mut listeners = Vec::new();
    for (ns, v4, v6) in [
        (&internal, "172.16.0.1", "fd16::1"),
        (&internet, "192.0.2.1", "2001:db8::1"),
    ] {
        ip(ns, &format!("route add default via {v4}"));
        ip(ns, &format!("-6 route add default via {v6}"));
        listeners.push(listen(ns));
    }
    // The shipped file, unmodified, with its own defaults.
    let path = format!("{}/nft/{ruleset}", env!("CARGO_MANIFEST_DIR"));
    run_ok(node.cmd("nft").args(["-f", &path]));
    let d = Daemon::start_in(node, PROFILES);
    Topology {
        d,
        client,
        _internal: internal,
        _internet: internet,
        listeners,
    }
}

/// One probe from a client source address: ICMP echo or a TCP connect.
#[derive(Clone, Copy, Debug)]
enum Probe {
    Ping,
    Tcp,
}

fn probe(client: &Netns, kind: Probe, src: &str, dst: &str) -> bool {
    let out = match kind {
        Probe::Ping => client
            .cmd("ping")
            .args(["-c1", "-W1", "-I", src, dst])
            .output(),
        Probe::Tcp => client
            .cmd("/usr/bin/python3")
            .args([
                "-c",
                "import socket, sys\n\
                 socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=1, source_address=(sys.argv[1], 0)).close()",
                src,
                dst,
                PORT,
            ])
            .output(),
    };
    out.expect("probe").status.success()
}

/// Runs probes in parallel (blocked ones wait out their 1 s timeout together) and
/// compares every outcome with the expectation.
fn expect(t: &Topology, phase: &str, cases: &[(&str, &str, bool)]) {
    let results: Vec<(String, bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .flat_map(|(src, dst, want)| {
                [Probe::Ping, Probe::Tcp].map(|kind| {
                    let client = &t.client;
                    s.spawn(move || {
                        let got = probe(client, kind, src, dst);
                        (format!("{kind:?} {src} -> {dst}"), *want, got)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    let wrong: Vec<String> = results
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, _)| {
            format!(
                "{what}: expected {}",
                if *want { "allowed" } else { "blocked" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{phase}: {wrong:#?}");
}

fn scenario(ruleset: &str) {
    let t = topology(ruleset);
    expect(
        &t,
        "before any connect everything is blocked",
        &[
            (STAFF_V4, INTERNAL_V4, false),
            (STAFF_V4, INTERNET_V4, false),
            (STUDENT_V4, INTERNET_V4, false),
            (STAFF_V6, INTERNAL_V6, false),
            (STUDENT_V6, INTERNET_V6, false),
        ],
    );
    assert_eq!(
        t.d.hook(&connect_vars("staff", "s1", STAFF_V4, STAFF_V6))
            .code,
        0
    );
    expect(
        &t,
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
    assert_eq!(
        t.d.hook(&connect_vars("students", "t1", STUDENT_V4, STUDENT_V6))
            .code,
        0
    );
    expect(
        &t,
        "student connected",
        &[
            (STUDENT_V4, INTERNET_V4, true),
            (STUDENT_V6, INTERNET_V6, true),
            (STUDENT_V4, INTERNAL_V4, false),
            (STUDENT_V6, INTERNAL_V6, false),
        ],
    );
    assert_eq!(
        t.d.hook(&disconnect_vars("staff", "s1", STAFF_V4, STAFF_V6))
            .code,
        0
    );
    assert_eq!(
        t.d.hook(&disconnect_vars("students", "t1", STUDENT_V4, STUDENT_V6))
            .code,
        0
    );
    expect(
        &t,
        "after disconnect everything is blocked again",
        &[
            (STAFF_V4, INTERNAL_V4, false),
            (STAFF_V6, INTERNAL_V6, false),
            (STUDENT_V4, INTERNET_V4, false),
            (STUDENT_V6, INTERNET_V6, false),
        ],
    );
}

#[test]
fn staff_and_students_policy_with_real_packets() {
    scenario("eduvpn-node-staff-students.nft");
}

#[test]
fn interval_set_variant_with_real_packets() {
    scenario("eduvpn-node-interval.nft");
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
    assert!(files >= 3, "{files} rulesets");
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
    let policy = format!(
        "{}/nft/eduvpn-node-staff-students.nft",
        env!("CARGO_MANIFEST_DIR")
    );
    let ok = Command::new(BIN)
        .args(["ruleset", "--config"])
        .arg(&cfg)
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("ruleset");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    // A config without the students profile: the shipped policy references sets
    // vpnfw would never fill.
    std::fs::write(&cfg, "[[profile]]\nid = \"staff\"\n").expect("config");
    let bad = Command::new(BIN)
        .args(["ruleset", "--config"])
        .arg(&cfg)
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("ruleset");
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(
        text.contains("@students_v4") && text.contains("@students_v6"),
        "{text}"
    );
    assert!(!text.contains("@staff_v4"), "{text}");
}
