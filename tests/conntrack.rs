//! Conntrack cleanup, proven with real long-lived TCP flows: client namespaces →
//! a router namespace whose forward policy accepts `ct state established` → a server
//! namespace.
//!
//! - `Conntrack::flush_source` on its own, called from a thread inside the router
//!   namespace: the kernel's table (`/proc/net/nf_conntrack` of the router) loses
//!   exactly that source's entries and its flows stop, while another client's flow
//!   under the same policy keeps running.
//! - End to end: the daemon's disconnect hook cuts the flows (`[conntrack]
//!   flush_on_disconnect`), and without the setting they outlive the session.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use nix::sched::{CloneFlags, setns};
use vpnfw::nft::Conntrack;

const POLICY: &str = "table inet vpnfw {
    set staff_v4 { type ipv4_addr; }
    set staff_v6 { type ipv6_addr; }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ip saddr @staff_v4 accept
        ip6 saddr @staff_v6 accept
    }
}
";

/// The router's policy for the API tests: new flows only from admitted sources,
/// established ones from anybody conntrack knows.
const ROUTER_POLICY: &str = "table inet t {
    set admitted_v4 { type ipv4_addr; }
    set admitted_v6 { type ipv6_addr; }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ip saddr @admitted_v4 accept
        ip6 saddr @admitted_v6 accept
    }
}
";

/// Every packet the router sees is tracked in conntrack zone 7, both directions.
const ZONE_7: &str = "table inet z {
    chain pre {
        type filter hook prerouting priority raw;
        ct zone set 7
    }
}
";

/// Moves the calling thread into a namespace (threads spawned from it and sockets it
/// opens live there). Only ever called on threads spawned for that purpose.
fn enter(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a fresh thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        enter(&name);
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// `Conntrack::flush_source(addr)` inside the router namespace.
fn flush(router: &Netns, addr: IpAddr) -> usize {
    in_ns(router, move || {
        Conntrack::open()
            .expect("open ctnetlink")
            .flush_source(addr)
            .expect("flush_source")
    })
}

fn ip(ns: &Netns, args: &str) {
    run_ok(ns.cmd("ip").args(args.split_whitespace()));
}

/// Client `i`'s addresses: 10.10.i.5 and fd10:0:0:i::5, behind the router's tun<i>.
fn client_addrs(i: usize) -> (IpAddr, IpAddr) {
    (
        format!("10.10.{i}.5").parse().expect("v4"),
        format!("fd10:0:0:{i}::5").parse().expect("v6"),
    )
}

const SERVER_V4: &str = "192.0.2.2";
const SERVER_V6: &str = "2001:db8::2";

/// Wires clients ⇄ router ⇄ server with veth pairs, addresses and routes; the router
/// forwards. Every namespace belongs to a guard that deletes it on drop, panic or not.
fn wire(router: &Netns, clients: &[&Netns], server: &Netns) {
    // No duplicate address detection: addresses (link-local ones too) work at once.
    for ns in clients.iter().copied().chain([router, server]) {
        run_ok(ns.cmd("sysctl").args([
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]));
    }
    let link = |a: &Netns, an: &str, b: &Netns, bn: &str| {
        run_ok(std::process::Command::new("ip").args([
            "link", "add", an, "netns", &a.name, "type", "veth", "peer", "name", bn, "netns",
            &b.name,
        ]));
    };
    let mut ends: Vec<(&Netns, String, Vec<String>)> = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let tun = format!("tun{i}");
        link(client, "c0", router, &tun);
        ends.push((
            client,
            "c0".into(),
            vec![format!("10.10.{i}.5/24"), format!("fd10:0:0:{i}::5/64")],
        ));
        ends.push((
            router,
            tun,
            vec![format!("10.10.{i}.1/24"), format!("fd10:0:0:{i}::1/64")],
        ));
    }
    link(server, "s0", router, "eth0");
    ends.push((
        router,
        "eth0".into(),
        vec!["192.0.2.1/24".into(), "2001:db8::1/64".into()],
    ));
    ends.push((
        server,
        "s0".into(),
        vec![format!("{SERVER_V4}/24"), format!("{SERVER_V6}/64")],
    ));
    for (ns, dev, addrs) in ends {
        for a in addrs {
            ip(ns, &format!("addr add {a} dev {dev} nodad"));
        }
        ip(ns, &format!("link set {dev} up"));
    }
    for (i, client) in clients.iter().enumerate() {
        ip(client, &format!("route add default via 10.10.{i}.1"));
        ip(client, &format!("-6 route add default via fd10:0:0:{i}::1"));
    }
    ip(server, "route add default via 192.0.2.1");
    ip(server, "-6 route add default via 2001:db8::1");
}

/// An echo server in the server namespace and a connected client in a client
/// namespace; `ping` sends a byte and says whether it came back within 1 s.
struct Flow {
    stream: TcpStream,
}

impl Flow {
    fn open(client: &Netns, server: &Netns, server_addr: SocketAddr) -> Flow {
        let (ready_tx, ready_rx) = mpsc::channel();
        let server_ns = server.name.clone();
        // Detached: it ends with the process (or when the flow closes).
        std::thread::spawn(move || {
            enter(&server_ns);
            let l = TcpListener::bind(server_addr).expect("bind");
            ready_tx.send(()).expect("ready");
            if let Ok((mut s, _)) = l.accept() {
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server up");
        let stream = in_ns(client, move || {
            TcpStream::connect_timeout(&server_addr, Duration::from_secs(6)).expect("connect")
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        Flow { stream }
    }

    fn ping(&mut self) -> bool {
        if self.stream.write_all(b"x").is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(1))
    }
}

/// One UDP datagram from the client to a closed port: an unreplied conntrack entry.
fn udp_probe(client: &Netns, to: SocketAddr) {
    in_ns(client, move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(bind).expect("udp bind");
        s.send_to(b"probe", to).expect("udp send");
    });
}

/// Original-direction sources of the router's conntrack entries, read by the kernel's
/// own listing (independent of the code under test). Each line reads
/// `ipv4 2 tcp 6 … src=<orig src> dst=… … src=<reply src> …`: the first `src=` is the
/// original direction's.
fn ct_sources(router: &Netns) -> Vec<IpAddr> {
    let out = run_ok(router.cmd("cat").arg("/proc/net/nf_conntrack"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("src="))
                .unwrap_or_else(|| panic!("no src= in {line}"))
                .parse()
                .unwrap_or_else(|_| panic!("bad src= in {line}"))
        })
        .collect()
}

fn ct_count(router: &Netns, addr: IpAddr) -> usize {
    ct_sources(router).iter().filter(|a| **a == addr).count()
}

/// Two clients with flows through the router; the policy is then narrowed to
/// established flows only; flushing client 0 cuts its flows (TCP and UDP entries go)
/// and leaves client 1's running.
fn flush_cuts_only_that_source(v6: bool, zoned: bool) {
    let router = Netns::new();
    let c0 = Netns::new();
    let c1 = Netns::new();
    let server = Netns::new();
    wire(&router, &[&c0, &c1], &server);
    router.nft_load(ROUTER_POLICY);
    if zoned {
        router.nft_load(ZONE_7);
    }
    let pick = |(a4, a6): (IpAddr, IpAddr)| if v6 { a6 } else { a4 };
    let (a0, a1) = (pick(client_addrs(0)), pick(client_addrs(1)));
    let (set, server_ip): (&str, IpAddr) = if v6 {
        ("admitted_v6", SERVER_V6.parse().expect("ip"))
    } else {
        ("admitted_v4", SERVER_V4.parse().expect("ip"))
    };
    router.nft(&[
        "add",
        "element",
        "inet",
        "t",
        set,
        &format!("{{ {a0}, {a1} }}"),
    ]);

    let at = |port| SocketAddr::new(server_ip, port);
    let mut f0a = Flow::open(&c0, &server, at(7000));
    let mut f0b = Flow::open(&c0, &server, at(7001));
    let mut f1 = Flow::open(&c1, &server, at(7002));
    udp_probe(&c0, at(9));
    for f in [&mut f0a, &mut f0b, &mut f1] {
        assert!(f.ping(), "the flow works while admitted");
    }
    wait_for("client 0's three entries", Duration::from_secs(2), || {
        ct_count(&router, a0) == 3
    });
    assert_eq!(ct_count(&router, a1), 1);
    if zoned {
        let out = run_ok(router.cmd("cat").arg("/proc/net/nf_conntrack"));
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            table.lines().all(|l| l.contains("zone=7")),
            "every entry is in zone 7:\n{table}"
        );
    }

    // From here on only established flows pass: the sources are no longer admitted.
    router.nft(&["flush", "set", "inet", "t", set]);
    for f in [&mut f0a, &mut f0b, &mut f1] {
        assert!(
            f.ping(),
            "an established flow outlives its source's admission"
        );
    }

    assert_eq!(flush(&router, a0), 3, "two TCP entries and one UDP entry");
    assert_eq!(ct_count(&router, a0), 0, "client 0's entries are gone");
    assert_eq!(ct_count(&router, a1), 1, "client 1's entry stays");
    assert_eq!(flush(&router, a0), 0, "nothing left to delete");

    assert!(!f0a.ping(), "client 0's first flow is cut");
    assert!(!f0b.ping(), "client 0's second flow is cut");
    assert!(f1.ping(), "client 1's flow keeps running");
}

/// Many addresses in one call (one dump per family), and an address the caller
/// spares after the dump (handed to a new session) keeps its flows.
#[test]
fn flush_sources_takes_many_addresses_and_spares_the_reassigned() {
    let router = Netns::new();
    let c0 = Netns::new();
    let c1 = Netns::new();
    let server = Netns::new();
    wire(&router, &[&c0, &c1], &server);
    router.nft_load(ROUTER_POLICY);
    let ((a0, a0v6), (a1, _)) = (client_addrs(0), client_addrs(1));
    router.nft(&[
        "add",
        "element",
        "inet",
        "t",
        "admitted_v4",
        &format!("{{ {a0}, {a1} }}"),
    ]);
    let at = |port| SocketAddr::new(SERVER_V4.parse().expect("ip"), port);
    let mut f0 = Flow::open(&c0, &server, at(7000));
    let mut f1 = Flow::open(&c1, &server, at(7001));
    assert!(f0.ping() && f1.ping(), "the flows work while admitted");
    wait_for("both entries", Duration::from_secs(2), || {
        ct_count(&router, a0) == 1 && ct_count(&router, a1) == 1
    });
    router.nft(&["flush", "set", "inet", "t", "admitted_v4"]);
    let deleted = in_ns(&router, move || {
        Conntrack::open()
            .expect("open ctnetlink")
            .flush_sources(&BTreeSet::from([a0, a1, a0v6]), |a| a == a1)
            .expect("flush_sources")
    });
    assert_eq!(
        deleted,
        BTreeMap::from([(a0, 1)]),
        "only a0's entry, a1 spared"
    );
    assert_eq!(
        ct_count(&router, a1),
        1,
        "the spared address keeps its entry"
    );
    assert!(!f0.ping(), "a0's flow is cut");
    assert!(f1.ping(), "a1's flow keeps running");
}

#[test]
fn flush_source_cuts_only_that_sources_flows_v4() {
    flush_cuts_only_that_source(false, false);
}

#[test]
fn flush_source_cuts_only_that_sources_flows_v6() {
    flush_cuts_only_that_source(true, false);
}

#[test]
fn flush_source_deletes_entries_in_a_conntrack_zone() {
    // A delete must name the entry's zone, or the kernel looks in zone 0 and says ENOENT.
    flush_cuts_only_that_source(false, true);
}

#[test]
fn flush_source_in_a_namespace_without_flows_deletes_nothing() {
    let ns = Netns::new();
    for addr in ["10.10.0.5", "fd10::5"] {
        assert_eq!(flush(&ns, addr.parse().expect("ip")), 0);
    }
}

/// client ⇄ node ⇄ server; the node forwards and runs vpnfw with POLICY.
struct Topology {
    d: Daemon,
    client: Netns,
    server: Netns,
}

fn topology(extra: &str) -> Topology {
    let node = Netns::new();
    let client = Netns::new();
    let server = Netns::new();
    wire(&node, &[&client], &server);
    node.nft_load(POLICY);
    let d = Daemon::start_in(node, &format!("{STAFF}{extra}"));
    Topology { d, client, server }
}

#[test]
fn disconnect_cuts_established_flows_v4_and_v6() {
    let t = topology("");
    assert_eq!(
        t.d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let mut v4 = Flow::open(
        &t.client,
        &t.server,
        "192.0.2.2:7000".parse().expect("addr"),
    );
    let mut v6 = Flow::open(
        &t.client,
        &t.server,
        "[2001:db8::2]:7001".parse().expect("addr"),
    );
    for _ in 0..3 {
        assert!(v4.ping(), "the v4 flow works while connected");
        assert!(v6.ping(), "the v6 flow works while connected");
    }
    assert_eq!(
        t.d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    wait_for("conntrack cleanup logged", Duration::from_secs(2), || {
        t.d.log().matches("conntrack entries deleted").count() >= 2
    });
    assert!(!v4.ping(), "the v4 flow must be cut after disconnect");
    assert!(!v6.ping(), "the v6 flow must be cut after disconnect");
}

#[test]
fn without_flush_established_flows_outlive_the_session() {
    // The control: this is what flush_on_disconnect prevents.
    let t = topology("[conntrack]\nflush_on_disconnect = false\n");
    assert_eq!(
        t.d.hook(&connect_vars("staff", "c1", "10.10.0.5", "")).code,
        0
    );
    let mut v4 = Flow::open(
        &t.client,
        &t.server,
        "192.0.2.2:7000".parse().expect("addr"),
    );
    assert!(v4.ping());
    assert_eq!(
        t.d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", ""))
            .code,
        0
    );
    assert_eq!(t.d.elements("staff_v4"), Some(ips(&[])));
    assert!(
        v4.ping(),
        "without the flush the established flow keeps running"
    );
}
