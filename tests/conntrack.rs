//! Conntrack cleanup on disconnect, proven with a real long-lived TCP flow: client
//! namespace → node (vpnfw + a `ct state established` policy) → server namespace.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use nix::sched::{CloneFlags, setns};

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

/// Moves the calling thread into a namespace (threads spawned from it and sockets it
/// opens live there).
fn enter(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

fn ip(ns: &Netns, args: &str) {
    run_ok(ns.cmd("ip").args(args.split_whitespace()));
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
    // No duplicate address detection: addresses (link-local ones too) work at once.
    for ns in [&node, &client, &server] {
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
    link(&client, "c0", &node, "tun0");
    link(&server, "s0", &node, "eth0");
    for (ns, dev, addrs) in [
        (&client, "c0", ["10.10.0.5/24", "fd10::5/64"]),
        (&node, "tun0", ["10.10.0.1/24", "fd10::1/64"]),
        (&node, "eth0", ["192.0.2.1/24", "2001:db8::1/64"]),
        (&server, "s0", ["192.0.2.2/24", "2001:db8::2/64"]),
    ] {
        for a in addrs {
            ip(ns, &format!("addr add {a} dev {dev} nodad"));
        }
        ip(ns, &format!("link set {dev} up"));
    }
    ip(&client, "route add default via 10.10.0.1");
    ip(&client, "-6 route add default via fd10::1");
    ip(&server, "route add default via 192.0.2.1");
    ip(&server, "-6 route add default via 2001:db8::1");
    node.nft_load(POLICY);
    let d = Daemon::start_in(node, &format!("{STAFF}{extra}"));
    Topology { d, client, server }
}

/// An echo server in the server namespace and a connected client in the client
/// namespace; `ping` sends a byte and says whether it came back within 1 s.
struct Flow {
    stream: TcpStream,
}

impl Flow {
    fn open(t: &Topology, server_addr: SocketAddr) -> Flow {
        let (ready_tx, ready_rx) = mpsc::channel();
        let server_ns = t.server.name.clone();
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
        let client_ns = t.client.name.clone();
        let stream = std::thread::spawn(move || {
            enter(&client_ns);
            TcpStream::connect_timeout(&server_addr, Duration::from_secs(6)).expect("connect")
        })
        .join()
        .expect("client thread");
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

#[test]
fn disconnect_cuts_established_flows_v4_and_v6() {
    let t = topology("");
    assert_eq!(
        t.d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    let mut v4 = Flow::open(&t, "192.0.2.2:7000".parse().expect("addr"));
    let mut v6 = Flow::open(&t, "[2001:db8::2]:7001".parse().expect("addr"));
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
    let mut v4 = Flow::open(&t, "192.0.2.2:7000".parse().expect("addr"));
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
