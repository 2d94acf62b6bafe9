//! The daemon socket under abuse: raw clients that send nothing, garbage, half a
//! message or too much. Each gets an error reply (or is cut off), nothing changes,
//! and a well-behaved hook is served meanwhile.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

fn raw(d: &Daemon, bytes: &[u8], close_write: bool) -> String {
    let mut s = UnixStream::connect(d.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn state(
    d: &Daemon,
) -> (
    String,
    std::collections::BTreeSet<(String, String, String, String)>,
) {
    (d.ns.nft(&["list", "table", "inet", "vpnfw"]), d.stored())
}

#[test]
fn malformed_requests_get_an_error_reply_and_change_nothing() {
    let d = Daemon::start(STAFF);
    assert_eq!(
        d.hook(&connect_vars("staff", "live", "10.10.0.5", "")).code,
        0
    );
    let before = state(&d);
    let event = r#"{"kind":"connect","profile":"staff","conn_id":"x","user_id":"u","proto":"openvpn","ip4":"10.10.0.9","ip6":null}"#;
    let cases: Vec<(Vec<u8>, bool, &str)> = vec![
        (b"hello\n".to_vec(), false, "not valid JSON"),
        (b"\xff\xfe\x00\n".to_vec(), false, "not valid JSON"),
        (b"{}\n".to_vec(), false, "not valid JSON"),
        (br#"{"v":1,"op":"frobnicate"}"#.to_vec(), true, "newline"),
        (
            b"{\"v\":1,\"op\":\"frobnicate\"}\n".to_vec(),
            false,
            "not valid JSON",
        ),
        (
            b"{\"v\":2,\"op\":\"status\"}\n".to_vec(),
            false,
            "version 2",
        ),
        (
            b"{\"v\":1,\"op\":\"status\",\"extra\":1}\n".to_vec(),
            false,
            "not valid JSON",
        ),
        (
            format!(
                "{{\"v\":1,\"op\":{{\"event\":{}}}}}\n",
                event.replace("\"x\"", "\"x\",\"evil\":1")
            )
            .into_bytes(),
            false,
            "not valid JSON",
        ),
        (
            format!(
                "{{\"v\":1,\"op\":{{\"event\":{}}}}}\n",
                event.replace("staff", "staff; flush ruleset")
            )
            .into_bytes(),
            false,
            "VPN_PROFILE_ID",
        ),
        (
            format!(
                "{{\"v\":1,\"op\":{{\"event\":{}}}}}\n",
                event.replace("10.10.0.9", "10.10.0.9/8")
            )
            .into_bytes(),
            false,
            "IPv4",
        ),
        (br#"{"v":1,"op":"#.to_vec(), true, "newline"),
        (vec![b'x'; 70 * 1024], false, "larger than"),
    ];
    for (bytes, close, expect) in cases {
        let reply = raw(&d, &bytes, close);
        assert!(
            reply.contains("\"result\":\"refused\""),
            "{:?}: {reply}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
        assert!(reply.contains(expect), "expected {expect:?} in {reply}");
        assert_eq!(reply.lines().count(), 1, "{reply}");
    }
    assert_eq!(state(&d), before);
    // A well-formed request still works.
    let ok = raw(
        &d,
        format!("{{\"v\":1,\"op\":{{\"event\":{event}}}}}\n").as_bytes(),
        false,
    );
    assert!(ok.contains("\"result\":\"applied\""), "{ok}");
    assert_eq!(
        d.elements("staff_v4"),
        Some(ips(&["10.10.0.5", "10.10.0.9"]))
    );
}

#[test]
fn silent_and_slow_clients_do_not_block_hooks() {
    let d = Daemon::start(STAFF);
    // 200 clients that connect and say nothing, and one that trickles bytes.
    let silent: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(d.socket()).expect("connect"))
        .collect();
    let mut trickle = UnixStream::connect(d.socket()).expect("connect");
    trickle.write_all(b"{\"v\":1,").expect("write");
    let start = Instant::now();
    let r = d.hook(&connect_vars("staff", "c1", "10.10.0.5", ""));
    assert_eq!(r.code, 0, "{}", r.output);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "hook took {:?}",
        start.elapsed()
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    // The silent ones are answered with a timeout error and closed by the daemon.
    let mut first = silent.into_iter().next().expect("one");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reply = String::new();
    let waited = Instant::now();
    let _ = first.read_to_string(&mut reply);
    assert!(reply.contains("no complete request"), "{reply}");
    assert!(waited.elapsed() < Duration::from_secs(4));
}

#[test]
fn every_connection_is_checked_not_only_the_socket_mode() {
    let d = Daemon::start(STAFF);
    // Open the socket's mode wide: the peer-credential check must still refuse.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let r = hook_as(
        &d.ns,
        &d.socket(),
        &connect_vars("staff", "c1", "10.10.0.5", ""),
        Who::Stranger,
    );
    assert_eq!(r.code, 3, "{}", r.output);
    assert!(
        r.output.contains("not root and not in group"),
        "{}",
        r.output
    );
    assert_eq!(d.elements("staff_v4"), Some(ips(&[])));
    assert!(d.log().contains("peer refused"), "{}", d.log());
}
