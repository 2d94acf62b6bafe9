//! The Prometheus endpoint against a real daemon in its own network namespace: what
//! it exports after connects, a refusal, a disconnect and a repaired drift.

mod common;

use common::*;

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:9796\"\n";

/// GET `path` on the daemon's metrics port, from inside its namespace.
fn get(d: &Daemon, path: &str) -> String {
    let script = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', 9796), timeout=5)\n\
         s.sendall(b'GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\nout = b''\n\
         while True:\n    b = s.recv(65536)\n    if not b: break\n    out += b\n\
         print(out.decode())\n"
    );
    let out = run_ok(d.ns.cmd("python3").args(["-c", &script]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one series (exact name and labels) in the exposition text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_follow_events_sessions_and_drift() {
    // No watch: the reconcile below is the only one after startup.
    let d = Daemon::start(&format!("{STAFF}{METRICS}[reconcile]\nwatch = false\n"));
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
    // Outside the profile's prefixes: refused.
    let refused = d.hook(&connect_vars("staff", "c3", "192.0.2.1", ""));
    assert_ne!(refused.code, 0, "{}", refused.output);
    assert_eq!(
        d.hook(&disconnect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    // Someone deletes an element by hand; a reconcile puts it back.
    d.ns.nft(&[
        "delete",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.0.6 }",
    ]);
    run_ok(
        std::process::Command::new(BIN)
            .args(["reconcile", "--socket"])
            .arg(d.socket()),
    );

    let page = get(&d, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    let v = |s: &str| value(&page, s);
    assert_eq!(v(r#"vpnfw_sessions{profile="staff"}"#), Some(1.0), "{page}");
    assert_eq!(
        v(r#"vpnfw_events_total{event="connect",result="applied"}"#),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        v(r#"vpnfw_events_total{event="connect",result="refused"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        v(r#"vpnfw_events_total{event="disconnect",result="applied"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(v("vpnfw_event_duration_seconds_count"), Some(4.0), "{page}");
    // The startup reconcile (nothing to do) and the one after the drift.
    assert_eq!(v("vpnfw_reconcile_runs_total"), Some(2.0), "{page}");
    assert_eq!(
        v("vpnfw_reconcile_elements_added_total"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        v("vpnfw_reconcile_elements_deleted_total"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(v("vpnfw_drift_repairs_total"), Some(1.0), "{page}");

    assert_eq!(
        d.hook(&disconnect_vars("staff", "c2", "10.10.0.6", "fd10::6"))
            .code,
        0
    );
    let page = get(&d, "/metrics");
    assert_eq!(
        value(&page, r#"vpnfw_sessions{profile="staff"}"#),
        Some(0.0),
        "the last session gone reads 0: {page}"
    );
    assert!(get(&d, "/").starts_with("HTTP/1.1 404 "));
}

#[test]
fn metrics_port_in_use_fails_the_start_with_the_key_named() {
    let ns = Netns::new();
    // Something else holds the port.
    let mut holder = ns
        .cmd("python3")
        .args([
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',9796))\ns.listen()\nprint('up',flush=True)\ntime.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "up");
    let work = Workdir::new();
    let cfg = work.path("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = {:?}\n[server]\nsocket = {:?}\n{METRICS}",
            work.path("state.db"),
            work.path("vpnfw.sock")
        ),
    )
    .expect("config");
    let out = ns
        .cmd(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("serve");
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("[metrics] listen = \"127.0.0.1:9796\": cannot listen there"),
        "{err}"
    );
    assert!(
        !work.path("vpnfw.sock").exists(),
        "nothing started: no socket"
    );
}

#[test]
fn startup_reconcile_is_not_counted_as_drift() {
    let mut d = Daemon::start(&format!("{STAFF}{METRICS}[reconcile]\nwatch = false\n"));
    assert_eq!(
        d.hook(&connect_vars("staff", "c1", "10.10.0.5", "fd10::5"))
            .code,
        0
    );
    // While the daemon is down (a crash, or a reboot that emptied the sets) the
    // element goes; the startup reconcile puts it back.
    d.kill();
    d.ns.nft(&[
        "delete",
        "element",
        "inet",
        "vpnfw",
        "staff_v4",
        "{ 10.10.0.5 }",
    ]);
    d.restart();
    assert_eq!(d.elements("staff_v4"), Some(ips(&["10.10.0.5"])));
    let page = get(&d, "/metrics");
    let v = |s: &str| value(&page, s);
    assert_eq!(v(r#"vpnfw_sessions{profile="staff"}"#), Some(1.0), "{page}");
    assert_eq!(v("vpnfw_reconcile_runs_total"), Some(1.0), "{page}");
    assert_eq!(
        v("vpnfw_reconcile_elements_added_total"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        v("vpnfw_drift_repairs_total"),
        Some(0.0),
        "catching up at startup is not drift: {page}"
    );
    // The same loss while it runs is drift.
    d.ns.nft(&[
        "delete",
        "element",
        "inet",
        "vpnfw",
        "staff_v6",
        "{ fd10::5 }",
    ]);
    run_ok(
        std::process::Command::new(BIN)
            .args(["reconcile", "--socket"])
            .arg(d.socket()),
    );
    let page = get(&d, "/metrics");
    assert_eq!(
        value(&page, "vpnfw_drift_repairs_total"),
        Some(1.0),
        "{page}"
    );
}
