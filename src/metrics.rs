//! The optional Prometheus endpoint (`[metrics] listen`, off by default).
//!
//! The writer records into a [`Metrics`]; a small HTTP/1.x thread answers
//! `GET /metrics` with the text exposition format. One request per connection,
//! bounded reads with a timeout: this is a scrape target, not a web server.
//!
//! Exported:
//! - `vpnfw_sessions{profile}`: live sessions per profile;
//! - `vpnfw_events_total{event,result}`: hook events by type (connect, disconnect) and
//!   result (applied, refused, failed);
//! - `vpnfw_event_duration_seconds`: the daemon's time from taking an event's batch to
//!   answering it (the hook's own process start and exit are not in it);
//! - `vpnfw_reconcile_runs_total`, `vpnfw_reconcile_elements_added_total`,
//!   `vpnfw_reconcile_elements_deleted_total`: reconciles that changed the kernel (not
//!   dry runs), and what they changed;
//! - `vpnfw_drift_repairs_total`: elements a reconcile after startup found wrong in
//!   the kernel and fixed (added or deleted): after a ruleset reload, on a timer or on
//!   command. The startup reconcile is left out: it catches up on the time the daemon
//!   was not running (after a reboot the sets are empty and every kept session goes
//!   back), which is expected, not drift; `..._elements_added_total` still counts it.
//!   So `increase(vpnfw_drift_repairs_total[1h]) > 0` means something other than
//!   vpnfw changed the sets (or, with `[portal] database`, the portal and vpnfw
//!   disagreed about a WireGuard session).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Longest request head read; a scrape request is a few hundred bytes.
const MAX_REQUEST: usize = 8192;
/// The whole request head must arrive within this time (not each read: one thread
/// serves every scrape, and a client sending a byte at a time must not hold it).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabel {
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
    result: &'static str,
}

/// Every metric vpnfw exports. Cheap to share: all of it is atomics behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    sessions: Family<ProfileLabel, Gauge>,
    /// Profiles given a value so far: a profile that drops out is set to 0.
    published: Mutex<BTreeSet<String>>,
    events: Family<EventLabels, Counter>,
    duration: Histogram,
    reconcile_runs: Counter,
    added: Counter,
    deleted: Counter,
    drift: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vpnfw");
        let sessions = Family::<ProfileLabel, Gauge>::default();
        let events = Family::<EventLabels, Counter>::default();
        // 100 µs … ~1.6 s.
        let duration = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        let (reconcile_runs, added, deleted, drift) = Default::default();
        registry.register("sessions", "Live sessions per profile", sessions.clone());
        registry.register("events", "Hook events by type and result", events.clone());
        registry.register(
            "event_duration_seconds",
            "Daemon time from taking an event to answering it",
            duration.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Reconciles that changed the kernel (not dry runs)",
            Clone::clone(&reconcile_runs),
        );
        registry.register(
            "reconcile_elements_added",
            "Elements reconciles added to the kernel",
            Clone::clone(&added),
        );
        registry.register(
            "reconcile_elements_deleted",
            "Elements reconciles deleted from the kernel",
            Clone::clone(&deleted),
        );
        registry.register(
            "drift_repairs",
            "Kernel elements reconciles after startup found wrong and fixed (added or deleted)",
            Clone::clone(&drift),
        );
        Metrics {
            registry,
            sessions,
            published: Mutex::default(),
            events,
            duration,
            reconcile_runs,
            added,
            deleted,
            drift,
        }
    }

    /// One answered event: `event` connect/disconnect, `result` applied/refused/failed.
    pub fn event(&self, event: &'static str, result: &'static str, took: Duration) {
        self.events
            .get_or_create(&EventLabels { event, result })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Live sessions per profile; profiles missing from `counts` read 0.
    pub fn sessions<'a>(&self, counts: impl IntoIterator<Item = (&'a str, u32)>) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = BTreeSet::new();
        for (profile, n) in counts {
            self.gauge(profile).set(i64::from(n));
            now.insert(profile.to_string());
        }
        for gone in published.difference(&now) {
            self.gauge(gone).set(0);
        }
        published.extend(now);
    }

    fn gauge(&self, profile: &str) -> Gauge {
        self.sessions
            .get_or_create(&ProfileLabel {
                profile: profile.to_string(),
            })
            .clone()
    }

    /// One reconcile that was applied (not a dry run). The first one recorded is the
    /// startup reconcile (the daemon attaches its metrics before running it); its
    /// changes are not drift repairs.
    pub fn reconcile(&self, added: usize, deleted: usize) {
        let startup = self.reconcile_runs.inc() == 0;
        self.added.inc_by(added as u64);
        self.deleted.inc_by(deleted as u64);
        if !startup {
            self.drift.inc_by((added + deleted) as u64);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Binds the listener now, so that a bad `[metrics] listen` fails the startup.
pub fn bind(listen: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(listen)
}

/// Serves scrapes on `listener` for the life of the process.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &metrics) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics accept failed"),
                }
            }
        })?;
    Ok(())
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within the timeout",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )?;
            // Read (a bounded amount of) what is still coming, so that closing does
            // not reset the connection before the client has read the answer.
            stream.shutdown(std::net::Shutdown::Write)?;
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
            let _ = io::copy(&mut (&stream).take(1 << 16), &mut io::sink());
            return Ok(());
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
        ),
        (Some("GET"), _) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn renders_what_was_recorded() {
        let m = Metrics::new();
        m.event("connect", "applied", Duration::from_micros(300));
        m.event("connect", "refused", Duration::from_micros(200));
        m.sessions([("staff", 3), ("students", 1)]);
        m.sessions([("staff", 2)]);
        // The startup reconcile, then two later ones.
        m.reconcile(5, 2);
        m.reconcile(1, 0);
        m.reconcile(0, 3);
        let t = m.render();
        assert_eq!(
            value(
                &t,
                r#"vpnfw_events_total{event="connect",result="applied"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(
                &t,
                r#"vpnfw_events_total{event="connect",result="refused"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"vpnfw_sessions{profile="staff"}"#),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"vpnfw_sessions{profile="students"}"#),
            Some(0.0),
            "a profile that dropped out reads 0: {t}"
        );
        assert_eq!(
            value(&t, "vpnfw_event_duration_seconds_count"),
            Some(2.0),
            "{t}"
        );
        assert_eq!(value(&t, "vpnfw_reconcile_runs_total"), Some(3.0), "{t}");
        assert_eq!(
            value(&t, "vpnfw_reconcile_elements_added_total"),
            Some(6.0),
            "{t}"
        );
        assert_eq!(
            value(&t, "vpnfw_reconcile_elements_deleted_total"),
            Some(5.0),
            "{t}"
        );
        assert_eq!(
            value(&t, "vpnfw_drift_repairs_total"),
            Some(4.0),
            "the startup reconcile catches up, it repairs no drift: {t}"
        );
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_metrics_and_nothing_else() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let m = Arc::new(Metrics::new());
        m.reconcile(1, 0);
        serve(listener, Arc::clone(&m)).expect("serve");
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\nvpnfw_reconcile_runs_total 1\n"), "{ok}");
        let other = get(addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let big = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000)),
        );
        assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
    }

    /// One scrape thread serves every client in turn: a client that sends its request
    /// a byte at a time (each read well within the timeout) must lose the thread once
    /// the whole request has taken longer than IO_TIMEOUT, not hold it for as long as
    /// it keeps trickling.
    #[test]
    fn a_trickling_client_cannot_hold_the_endpoint() {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        serve(listener, Arc::new(Metrics::new())).expect("serve");
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
        // 6 s of one byte every 200 ms, unless the server hangs up first.
        let trickle = std::thread::spawn(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(200));
                if slow.write_all(b"X").is_err() {
                    return;
                }
            }
        });
        // Let the server take the slow client first.
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        let waited = started.elapsed();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            waited < IO_TIMEOUT + Duration::from_millis(800),
            "a scrape waited {waited:?} behind a trickling client"
        );
        trickle.join().expect("trickle thread");
    }
}
