//! A small eduVPN node built from network namespaces, for real-packet tests of the
//! shipped rulesets:
//!
//! ```text
//! client (staff 10.10.0.5 fd10::5, student 10.20.0.5 fd20::5)
//!   └─ c0 ═ <vpn_if> node: forwarding, an nft/ ruleset, vpnfw serve
//!                      ├─ int0 ═ i0 internal server 172.16.0.2 fd16::2   (INTERNAL_V4/V6 of the ruleset)
//!                      └─ eth0 ═ e0 internet server 192.0.2.2 2001:db8::2 (UPLINK of the ruleset)
//! ```
//!
//! The names and prefixes match the defaults of the shipped files' `define`s, so the
//! files load unmodified. Both servers accept TCP on [`PORT`] (v4 and v6) and answer
//! pings. Every namespace, the daemon and the listeners go away on drop, also on panic.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

use super::{Daemon, Netns, run_ok};

pub const INTERNAL_V4: &str = "172.16.0.2";
pub const INTERNAL_V6: &str = "fd16::2";
pub const INTERNET_V4: &str = "192.0.2.2";
pub const INTERNET_V6: &str = "2001:db8::2";
pub const STAFF_V4: &str = "10.10.0.5";
pub const STAFF_V6: &str = "fd10::5";
pub const STUDENT_V4: &str = "10.20.0.5";
pub const STUDENT_V6: &str = "fd20::5";
pub const PORT: u16 = 8080;
/// Debian's python3 (tests/setup-debian.sh installs it), by path: a PATH shim such as
/// pyenv's would run it as a child, and killing the listener would kill only the shim.
const PYTHON: &str = "/usr/bin/python3";

/// The profiles the client's addresses belong to, as `[[profile]]` config.
pub const PROFILES: &str = "[[profile]]\nid = \"staff\"\nprefixes = [\"10.10.0.0/24\", \"fd10::/64\"]\n\
    [[profile]]\nid = \"students\"\nprefixes = [\"10.20.0.0/24\", \"fd20::/64\"]\n";

pub struct Topology {
    /// The daemon, running in the node namespace (`d.ns`).
    pub d: Daemon,
    pub client: Netns,
    pub internal: Netns,
    pub internet: Netns,
    /// Absolute path of the loaded ruleset, for reloading it.
    pub ruleset: String,
    listeners: Vec<Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for l in &mut self.listeners {
            let _ = l.kill();
            let _ = l.wait();
        }
        // The daemon and the namespaces clean up through their own guards.
    }
}

/// One probe from a client source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// One ICMP echo, 1 s timeout.
    Ping,
    /// A TCP connect to [`PORT`], bound to the source address, 1 s timeout.
    Tcp,
}

fn ip(ns: &Netns, args: &str) {
    run_ok(ns.cmd("ip").args(args.split_whitespace()));
}

/// A TCP listener on both families that accepts and closes forever.
fn listen(ns: &Netns) -> Child {
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
    ns.cmd(PYTHON)
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3 listener")
}

/// Whether the listener in `ns` accepts on both families yet (from inside `ns`).
fn listening(ns: &Netns, v4: &str, v6: &str) -> bool {
    [v4, v6].iter().all(|addr| {
        ns.cmd(PYTHON)
            .args([
                "-c",
                "import socket, sys\n\
                 socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()",
                addr,
                &PORT.to_string(),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Topology {
    /// Builds the topology, loads `nft/<ruleset>` unmodified on the node with plain
    /// `nft -f`, and starts vpnfw there with `config` (profiles, `[nftables]` …). The
    /// node's client-facing interface is named `vpn_if` (`tun0` as for OpenVPN,
    /// `wg0` as for WireGuard): the shipped rulesets match on those names.
    pub fn start(ruleset: &str, vpn_if: &str, config: &str) -> Topology {
        let node = Netns::new();
        let client = Netns::new();
        let internal = Netns::new();
        let internet = Netns::new();
        for ns in [&node, &client, &internal, &internet] {
            // No duplicate address detection: v6 addresses are usable at once.
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
        // Each end is created directly in its namespace, so parallel tests never
        // clash on interface names.
        let link = |a: &Netns, an: &str, b: &Netns, bn: &str| {
            run_ok(Command::new("ip").args([
                "link", "add", an, "netns", &a.name, "type", "veth", "peer", "name", bn, "netns",
                &b.name,
            ]));
        };
        link(&client, "c0", &node, vpn_if);
        link(&internal, "i0", &node, "int0");
        link(&internet, "e0", &node, "eth0");
        for (ns, dev, addrs) in [
            (
                &client,
                "c0",
                &["10.10.0.5/24", "10.20.0.5/24", "fd10::5/64", "fd20::5/64"][..],
            ),
            (
                &node,
                vpn_if,
                &["10.10.0.1/24", "10.20.0.1/24", "fd10::1/64", "fd20::1/64"][..],
            ),
            (&node, "int0", &["172.16.0.1/24", "fd16::1/64"][..]),
            (&internal, "i0", &["172.16.0.2/24", "fd16::2/64"][..]),
            (&node, "eth0", &["192.0.2.1/24", "2001:db8::1/64"][..]),
            (&internet, "e0", &["192.0.2.2/24", "2001:db8::2/64"][..]),
        ] {
            for a in addrs {
                ip(ns, &format!("addr add {a} dev {dev} nodad"));
            }
            ip(ns, &format!("link set {dev} up"));
        }
        ip(&client, "route add default via 10.10.0.1");
        ip(&client, "-6 route add default via fd10::1");
        // A veth transmits nothing until the kernel's link watcher has activated it,
        // up to a second after `link set up`, and a neighbor solicitation lost then
        // is retried only a second later: the first IPv6 packet over a fresh link
        // takes 1-2 s, longer than a probe's timeout. Wait until every link carries a
        // ping, before any ruleset is loaded.
        for (ns, node_v4, node_v6) in [
            (&client, "10.10.0.1", "fd10::1"),
            (&internal, "172.16.0.1", "fd16::1"),
            (&internet, "192.0.2.1", "2001:db8::1"),
        ] {
            super::wait_for("links up", std::time::Duration::from_secs(10), || {
                [node_v4, node_v6].iter().all(|addr| {
                    ns.cmd("ping")
                        .args(["-c1", "-W1", addr])
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                })
            });
        }
        let mut listeners = Vec::new();
        for (ns, gw4, gw6) in [
            (&internal, "172.16.0.1", "fd16::1"),
            (&internet, "192.0.2.1", "2001:db8::1"),
        ] {
            ip(ns, &format!("route add default via {gw4}"));
            ip(ns, &format!("-6 route add default via {gw6}"));
            listeners.push(listen(ns));
        }
        let ruleset = format!("{}/nft/{ruleset}", env!("CARGO_MANIFEST_DIR"));
        run_ok(node.cmd("nft").args(["-f", &ruleset]));
        let d = Daemon::start_in(node, config);
        let t = Topology {
            d,
            client,
            internal,
            internet,
            ruleset,
            listeners,
        };
        // A blocked probe must mean "the firewall dropped it", never "nobody listened
        // yet".
        super::wait_for("listeners", std::time::Duration::from_secs(5), || {
            listening(&t.internal, INTERNAL_V4, INTERNAL_V6)
                && listening(&t.internet, INTERNET_V4, INTERNET_V6)
        });
        t
    }

    /// `nft -f` of the same ruleset again, as `systemctl reload nftables` does: the
    /// file starts with `flush ruleset`, so every set comes back empty.
    pub fn reload_ruleset(&self) {
        run_ok(self.d.ns.cmd("nft").args(["-f", &self.ruleset]));
    }

    /// Whether one probe from the client's `src` reaches `dst`.
    pub fn reaches(&self, kind: Probe, src: &str, dst: &str) -> bool {
        let out = match kind {
            Probe::Ping => self
                .client
                .cmd("ping")
                .args(["-c1", "-W1", "-I", src, dst])
                .output(),
            Probe::Tcp => self
                .client
                .cmd(PYTHON)
                .args([
                    "-c",
                    "import socket, sys\n\
                     socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=1, \
                     source_address=(sys.argv[1], 0)).close()",
                    src,
                    dst,
                    &PORT.to_string(),
                ])
                .output(),
        };
        out.expect("run probe").status.success()
    }

    /// Runs a ping and a TCP probe for every `(src, dst, allowed)` case, in parallel so
    /// that blocked ones wait out their 1 s timeouts together, and panics listing every
    /// outcome that differs from the expectation.
    pub fn expect(&self, phase: &str, cases: &[(&str, &str, bool)]) {
        let results: Vec<(String, bool, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = cases
                .iter()
                .flat_map(|&(src, dst, want)| {
                    [Probe::Ping, Probe::Tcp].map(|kind| {
                        s.spawn(move || {
                            let got = self.reaches(kind, src, dst);
                            (format!("{kind:?} {src} -> {dst}"), want, got)
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
                let want = if *want { "allowed" } else { "blocked" };
                format!("{what}: expected {want}")
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{phase}: {wrong:#?}\nnode ruleset:\n{}\ndaemon log:\n{}",
            self.d.ns.nft(&["list", "ruleset"]),
            self.d.log()
        );
    }
}
