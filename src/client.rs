//! The hook: an unprivileged, short-lived process that sends one request to the
//! daemon and exits 0 only when the daemon confirms the change is in the kernel and in
//! the store. It never opens netlink.
//!
//! The portal runs it through `/bin/sh` as the php-fpm user with an otherwise empty
//! environment, and throws its output away (DESIGN.md §2). So it relies on nothing
//! but `VPN_*` (and `VPNFW_SOCKET`, for tests), and when the daemon never hears of an
//! event it also writes one line to syslog itself.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::config::DEFAULT_SOCKET;
use crate::error::exit;
use crate::event::{ConnectionId, Event, EventKind, ProfileId};
use crate::protocol::{self, Op, Request, Response, VERSION};

/// Largest reply read, newline included: a status report of many sessions fits.
pub const MAX_REPLY: usize = 1 << 20;

/// The whole hook, connect to reply. The portal's HTTP call to an OpenVPN node times
/// out after 4 s in total, and the node must still act on the answer.
pub const HOOK_DEADLINE: Duration = Duration::from_millis(2500);

/// Overrides the socket path (tests; the portal passes no such variable).
pub const SOCKET_ENV: &str = "VPNFW_SOCKET";

/// Where local syslog listens (journald or rsyslog).
const SYSLOG_SOCKET: &str = "/dev/log";

/// `<PRI>` of our syslog lines: facility daemon (3), severity err (3).
const SYSLOG_PRI: u8 = 3 * 8 + 3;

/// Longest daemon-supplied text copied into our one line.
const MAX_REASON_CHARS: usize = 300;

/// The step of an exchange with the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Send,
    Receive,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting",
            Stage::Send => "sending the request",
            Stage::Receive => "waiting for the reply",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is missing, stale, or not ours to use.
    #[error(
        "cannot connect to {}: {source}; is vpnfw serve running? is this user in the [server] group?",
        path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The deadline passed; `stage` says where.
    #[error(
        "no answer from vpnfw serve on {} within {} ms ({stage}); is the daemon stuck or overloaded?",
        path.display(),
        deadline.as_millis()
    )]
    Timeout {
        path: PathBuf,
        stage: Stage,
        deadline: Duration,
    },
    /// The connection broke.
    #[error("{stage} on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        stage: Stage,
        #[source]
        source: io::Error,
    },
    /// The daemon answered something this client does not understand.
    #[error("bad reply from vpnfw serve on {}: {problem}", path.display())]
    BadReply { path: PathBuf, problem: String },
}

impl ClientError {
    /// The hook's exit code: the daemon never saw the request (UNREACHABLE), or it
    /// may have and the outcome is unknown (FAILED).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Io {
                stage: Stage::Connect | Stage::Send,
                ..
            } => exit::UNREACHABLE,
            ClientError::Io {
                stage: Stage::Receive,
                ..
            }
            | ClientError::BadReply { .. } => exit::FAILED,
        }
    }
}

/// Sends one request and reads one reply; the whole exchange, connect included,
/// ends within `deadline`.
pub fn request(socket: &Path, req: &Request, deadline: Duration) -> Result<Response, ClientError> {
    request_limited(socket, req, deadline, MAX_REPLY)
}

/// [`request`] with another bound on the reply: admin commands read status reports
/// of many sessions.
pub fn request_limited(
    socket: &Path,
    req: &Request,
    deadline: Duration,
    max_reply: usize,
) -> Result<Response, ClientError> {
    let end = Instant::now() + deadline;
    let timeout = |stage| ClientError::Timeout {
        path: socket.to_owned(),
        stage,
        deadline,
    };
    let io_err = |stage, source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timeout(stage),
        _ => ClientError::Io {
            path: socket.to_owned(),
            stage,
            source,
        },
    };
    let left = |stage| {
        end.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| timeout(stage))
    };

    let mut stream = connect(socket, left(Stage::Connect)?).map_err(|e| match e {
        // Linux bounds a blocking connect to a full accept queue by SO_SNDTIMEO.
        Errno::EAGAIN => timeout(Stage::Connect),
        e => ClientError::Connect {
            path: socket.to_owned(),
            source: e.into(),
        },
    })?;

    // The request is a few hundred bytes: it fits the socket buffer, one write.
    stream
        .set_write_timeout(Some(left(Stage::Send)?))
        .and_then(|()| stream.write_all(&protocol::encode_line(req)))
        .map_err(|e| io_err(Stage::Send, e))?;

    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(left(Stage::Receive)?))
            .map_err(|e| io_err(Stage::Receive, e))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(Stage::Receive, e)),
        };
        let bad = |problem: &str| ClientError::BadReply {
            path: socket.to_owned(),
            problem: problem.to_owned(),
        };
        if n == 0 {
            return Err(bad(if reply.is_empty() {
                "the daemon closed the connection without answering; see its log"
            } else {
                "the reply ends without a newline"
            }));
        }
        let newline = chunk[..n].iter().position(|&b| b == b'\n');
        reply.extend_from_slice(&chunk[..newline.unwrap_or(n)]);
        if reply.len() >= max_reply {
            return Err(bad(&format!(
                "the reply is larger than {} KiB",
                max_reply / 1024
            )));
        }
        if newline.is_some() {
            break;
        }
    }
    serde_json::from_slice(&reply).map_err(|e| ClientError::BadReply {
        path: socket.to_owned(),
        problem: format!(
            "{e} in {}",
            crate::event::excerpt(&String::from_utf8_lossy(&reply))
        ),
    })
}

/// A blocking stream connect bounded by `timeout`.
fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, Errno> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // 0 would mean "wait forever".
    let micros = i64::try_from(timeout.as_micros())
        .unwrap_or(i64::MAX)
        .max(1);
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// The hook's entry point: `vpnfw` run by the portal with `VPN_EVENT` set. Returns
/// the exit code; on failure it has written one line to stderr.
pub fn run_hook() -> i32 {
    let end = Instant::now() + HOOK_DEADLINE;
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let socket = socket_path(&vars);
    let outcome = hook(vars, &socket, end);
    if let Some(problem) = &outcome.problem {
        // Ignore errors: the portal may have closed the pipe; the exit code remains.
        let _ = writeln!(io::stderr(), "vpnfw: {problem}");
        if outcome.syslog {
            syslog(Path::new(SYSLOG_SOCKET), problem);
        }
    }
    outcome.code
}

/// How one hook run ends.
#[derive(Debug)]
struct Outcome {
    code: i32,
    /// One line, without the `vpnfw: ` prefix; `None` on success.
    problem: Option<String>,
    /// The daemon never logged this event, so we log it ourselves.
    syslog: bool,
}

fn hook(vars: Vec<(OsString, OsString)>, socket: &Path, end: Instant) -> Outcome {
    let fail = |code, problem, syslog| Outcome {
        code,
        problem: Some(problem),
        syslog,
    };
    let event = match Event::from_env(vars.iter().cloned()) {
        Ok(e) => e,
        Err(e) => {
            return fail(
                exit::BAD_INPUT,
                format!("{}bad hook input: {e}", partial_context(&vars)),
                true,
            );
        }
    };
    let what = format!(
        "{} profile={} conn={}",
        kind_word(event.kind),
        event.profile,
        event.conn_id
    );
    let req = Request {
        v: VERSION,
        op: Op::Event(event),
    };
    let deadline = end.saturating_duration_since(Instant::now());
    match request(socket, &req, deadline) {
        Ok(Response::Applied { .. }) => Outcome {
            code: exit::OK,
            problem: None,
            syslog: false,
        },
        Ok(Response::Refused { reason }) => fail(
            exit::REFUSED,
            format!("{what}: refused by the daemon: {}", one_line(&reason)),
            false,
        ),
        Ok(Response::Failed { reason }) => fail(
            exit::FAILED,
            format!("{what}: the daemon failed: {}", one_line(&reason)),
            false,
        ),
        Ok(Response::Status(_) | Response::Reconciled(_)) => fail(
            exit::FAILED,
            format!("{what}: the daemon answered with a report, not an event result"),
            true,
        ),
        Err(e) => fail(
            e.exit_code(),
            format!("{what}: {}", one_line(&e.to_string())),
            true,
        ),
    }
}

/// `VPNFW_SOCKET` when set and non-empty, else the default.
fn socket_path(vars: &[(OsString, OsString)]) -> PathBuf {
    vars.iter()
        .find(|(k, v)| k == SOCKET_ENV && !v.is_empty())
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn kind_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Connect => "connect",
        EventKind::Disconnect => "disconnect",
    }
}

/// What we know of an event that did not validate, as `connect profile=… conn=…: `,
/// naming only the parts that are themselves valid (so nothing hostile is echoed).
fn partial_context(vars: &[(OsString, OsString)]) -> String {
    let get = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.to_str())
    };
    let mut parts = Vec::new();
    match get("VPN_EVENT") {
        Some("C") => parts.push(kind_word(EventKind::Connect).to_owned()),
        Some("D") => parts.push(kind_word(EventKind::Disconnect).to_owned()),
        _ => {}
    }
    if let Some(p) = get("VPN_PROFILE_ID").and_then(|s| ProfileId::parse(s).ok()) {
        parts.push(format!("profile={p}"));
    }
    if let Some(c) = get("VPN_CONNECTION_ID").and_then(|s| ConnectionId::parse(s).ok()) {
        parts.push(format!("conn={c}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}: ", parts.join(" "))
    }
}

/// Text from elsewhere (the daemon, an OS error) as part of one bounded log line.
fn one_line(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends one RFC 3164-style line to the local syslog socket. Best effort and never
/// blocking: no socket, a stream socket, or a full queue all drop the line.
fn syslog(socket: &Path, message: &str) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let line = format!(
        "<{SYSLOG_PRI}>vpnfw[{}]: {}",
        std::process::id(),
        one_line(message)
    );
    let _ = sock.send_to(line.as_bytes(), socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn event_request() -> Request {
        let env = [
            ("VPN_EVENT", "C"),
            ("VPN_USER_ID", "o'brien@example.org"),
            ("VPN_PROFILE_ID", "staff"),
            ("VPN_CONNECTION_ID", "07d1ccc455a21c2d5ac6068d4af727ca"),
            ("VPN_IP_FOUR", "10.42.42.2"),
            ("VPN_IP_SIX", "fd42::2"),
        ];
        let event = Event::from_env(env.map(|(k, v)| (k.into(), v.into()))).unwrap();
        Request {
            v: VERSION,
            op: Op::Event(event),
        }
    }

    fn hook_env(extra: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = [
            ("VPN_EVENT", "C"),
            ("VPN_USER_ID", "foo@example.org"),
            ("VPN_PROFILE_ID", "staff"),
            ("VPN_CONNECTION_ID", "07d1ccc455a21c2d5ac6068d4af727ca"),
            ("VPN_IP_FOUR", "10.42.42.2"),
            ("VPN_IP_SIX", ""),
        ]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).into(), (*v).into()));
        }
        env
    }

    /// A daemon stand-in: accepts one connection, reads one line, then does `answer`
    /// with the request line and the stream.
    fn serve_once<F>(answer: F) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<Vec<u8>>)
    where
        F: FnOnce(&[u8], &mut UnixStream) + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vpnfw.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            io::BufReader::new(stream.try_clone().unwrap())
                .read_until(b'\n', &mut line)
                .unwrap();
            answer(&line, &mut stream);
            line
        });
        (dir, path, handle)
    }

    fn reply(bytes: &'static [u8]) -> impl FnOnce(&[u8], &mut UnixStream) + Send {
        move |_, s| {
            let _ = s.write_all(bytes);
        }
    }

    #[test]
    fn request_sends_one_line_and_reads_the_reply() {
        let (_dir, path, server) = serve_once(|_, s| {
            let r = Response::Applied {
                detail: "added".into(),
            };
            s.write_all(&protocol::encode_line(&r)).unwrap();
        });
        let req = event_request();
        let resp = request(&path, &req, Duration::from_secs(5)).unwrap();
        assert_eq!(
            resp,
            Response::Applied {
                detail: "added".into()
            }
        );
        let sent = server.join().unwrap();
        assert_eq!(protocol::decode_request(&sent).unwrap(), req);
    }

    #[test]
    fn reply_split_across_writes_is_read_whole() {
        let (_dir, path, _server) = serve_once(|_, s| {
            s.write_all(br#"{"result":"refused","#).unwrap();
            thread::sleep(Duration::from_millis(50));
            s.write_all(b"\"reason\":\"outside staff prefix\"}\n")
                .unwrap();
        });
        let resp = request(&path, &event_request(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            resp,
            Response::Refused {
                reason: "outside staff prefix".into()
            }
        );
    }

    #[test]
    fn silent_server_times_out_within_the_deadline() {
        let (_dir, path, _server) = serve_once(|_, _| thread::sleep(Duration::from_secs(3)));
        let start = Instant::now();
        let err = request(&path, &event_request(), Duration::from_millis(300)).unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    stage: Stage::Receive,
                    ..
                }
            ),
            "{err}"
        );
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_millis(800), "{took:?}");
        assert_eq!(err.exit_code(), exit::UNREACHABLE);
    }

    #[test]
    fn full_accept_queue_times_out_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vpnfw.sock");
        // A listener that never accepts, with the smallest queue the kernel allows.
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        socket::listen(&fd, socket::Backlog::new(0).unwrap()).unwrap();
        // Fill the queue with connections we hold open; the next connect then blocks
        // in the kernel until SO_SNDTIMEO ends it.
        let mut queued = Vec::new();
        loop {
            match connect(&path, Duration::from_millis(50)) {
                Ok(s) => queued.push(s),
                Err(Errno::EAGAIN) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(queued.len() < 100, "the accept queue never filled");
        }
        let start = Instant::now();
        let err = request(&path, &event_request(), Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    stage: Stage::Connect,
                    ..
                }
            ),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_millis(700));
    }

    #[test]
    fn bad_replies() {
        let cases: [(&str, &'static [u8]); 5] = [
            ("garbage", b"hello\n"),
            ("unknown result", b"{\"result\":\"maybe\"}\n"),
            (
                "extra field",
                b"{\"result\":\"applied\",\"detail\":\"\",\"x\":1}\n",
            ),
            (
                "no newline then close",
                b"{\"result\":\"applied\",\"detail\":\"\"}",
            ),
            ("closed without answer", b""),
        ];
        for (name, bytes) in cases {
            let (_dir, path, _server) = serve_once(reply(bytes));
            let err = request(&path, &event_request(), Duration::from_secs(5)).unwrap_err();
            assert!(matches!(err, ClientError::BadReply { .. }), "{name}: {err}");
            assert_eq!(err.exit_code(), exit::FAILED, "{name}");
            assert!(!err.to_string().contains('\n'), "{name}: {err}");
        }
    }

    #[test]
    fn oversized_reply_is_refused() {
        let (_dir, path, _server) = serve_once(|_, s| {
            let _ = s.write_all(&vec![b'x'; MAX_REPLY + 10]);
        });
        let err = request(&path, &event_request(), Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
    }

    #[test]
    fn missing_socket_is_a_connect_error_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(
            &dir.path().join("absent.sock"),
            &event_request(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("is vpnfw serve running?"), "{err}");
        assert_eq!(err.exit_code(), exit::UNREACHABLE);
    }

    #[test]
    fn stale_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(UnixListener::bind(&path).unwrap());
        let err = request(&path, &event_request(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }

    #[test]
    fn hook_maps_replies_to_exit_codes() {
        let cases: [(&'static [u8], i32, Option<&str>); 5] = [
            (b"{\"result\":\"applied\",\"detail\":\"ok\"}\n", exit::OK, None),
            (
                b"{\"result\":\"refused\",\"reason\":\"10.42.42.2 is outside staff\\nsecond line\"}\n",
                exit::REFUSED,
                Some("connect profile=staff conn=07d1ccc455a21c2d5ac6068d4af727ca: refused by the daemon: 10.42.42.2 is outside staff\\nsecond line"),
            ),
            (
                b"{\"result\":\"failed\",\"reason\":\"netlink: EPERM\"}\n",
                exit::FAILED,
                Some("connect profile=staff conn=07d1ccc455a21c2d5ac6068d4af727ca: the daemon failed: netlink: EPERM"),
            ),
            (
                b"{\"result\":\"status\",\"sessions\":[],\"sets\":[]}\n",
                exit::FAILED,
                None,
            ),
            (b"nonsense\n", exit::FAILED, None),
        ];
        for (bytes, code, message) in cases {
            let (_dir, path, _server) = serve_once(reply(bytes));
            let out = hook(hook_env(&[]), &path, Instant::now() + HOOK_DEADLINE);
            assert_eq!(out.code, code, "{out:?}");
            assert_eq!(out.problem.is_none(), code == exit::OK, "{out:?}");
            if let Some(m) = message {
                assert_eq!(out.problem.as_deref(), Some(m));
            }
            if let Some(p) = &out.problem {
                assert!(!p.contains('\n'), "{p:?}");
            }
        }
    }

    #[test]
    fn hook_reports_bad_input_with_what_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let out = hook(
            hook_env(&[("VPN_IP_FOUR", "10.0.0.1; reboot")]),
            &dir.path().join("never-used.sock"),
            Instant::now() + HOOK_DEADLINE,
        );
        assert_eq!(out.code, exit::BAD_INPUT);
        assert!(out.syslog);
        assert_eq!(
            out.problem.as_deref(),
            Some(
                "connect profile=staff conn=07d1ccc455a21c2d5ac6068d4af727ca: bad hook input: \
                 VPN_IP_FOUR: \"10.0.0.1; reboot\" is not an IPv4 address"
            )
        );

        let out = hook(
            hook_env(&[("VPN_PROFILE_ID", "x;$(reboot)"), ("VPN_EVENT", "Q")]),
            &dir.path().join("never-used.sock"),
            Instant::now() + HOOK_DEADLINE,
        );
        assert_eq!(out.code, exit::BAD_INPUT);
        let p = out.problem.unwrap();
        assert!(
            p.starts_with("conn=07d1ccc455a21c2d5ac6068d4af727ca: bad hook input: VPN_EVENT: "),
            "{p}"
        );

        let out = hook(
            Vec::new(),
            &dir.path().join("x.sock"),
            Instant::now() + HOOK_DEADLINE,
        );
        assert_eq!(out.code, exit::BAD_INPUT);
        assert_eq!(
            out.problem.as_deref(),
            Some("bad hook input: VPN_EVENT: is not set")
        );
    }

    #[test]
    fn hook_without_daemon_is_unreachable_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let out = hook(
            hook_env(&[]),
            &dir.path().join("absent.sock"),
            Instant::now() + HOOK_DEADLINE,
        );
        assert_eq!(out.code, exit::UNREACHABLE);
        assert!(out.syslog);
        let p = out.problem.unwrap();
        assert!(
            p.starts_with(
                "connect profile=staff conn=07d1ccc455a21c2d5ac6068d4af727ca: cannot connect to "
            ),
            "{p}"
        );
    }

    #[test]
    fn socket_path_from_environment() {
        let var = |v: &str| vec![(OsString::from(SOCKET_ENV), OsString::from(v))];
        assert_eq!(socket_path(&[]), Path::new(DEFAULT_SOCKET));
        assert_eq!(socket_path(&var("")), Path::new(DEFAULT_SOCKET));
        assert_eq!(socket_path(&var("/tmp/x.sock")), Path::new("/tmp/x.sock"));
    }

    #[test]
    fn syslog_line_is_rfc3164_and_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        syslog(&path, "connect profile=staff: cannot connect\nsecond");
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            line,
            format!(
                "<27>vpnfw[{}]: connect profile=staff: cannot connect\\nsecond",
                std::process::id()
            )
        );
        // No listener, or not a datagram socket: silently dropped.
        syslog(&dir.path().join("absent"), "x");
        let _stream = UnixListener::bind(dir.path().join("stream")).unwrap();
        syslog(&dir.path().join("stream"), "x");
    }

    #[test]
    fn syslog_never_blocks_on_a_full_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let start = Instant::now();
        for _ in 0..2000 {
            syslog(&path, &"x".repeat(200));
        }
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn one_line_escapes_and_bounds() {
        assert_eq!(one_line("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(one_line("O'Brien – ok"), "O'Brien – ok");
        let long = one_line(&"y".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
