//! `vpnfw serve`: wiring, not logic. The socket, the peer check, the queue, and the
//! writer thread that owns the kernel and the store.

mod ctflush;
mod peer;
mod writer;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use sd_notify::NotifyState;

use crate::config::{Config, ConfigError};
use crate::metrics::{self, Metrics};
use crate::nft::{Monitor, Nft, NftError};
use crate::protocol::{self, MAX_REQUEST, Op, Response};
use crate::store::{Store, StoreError};

pub use peer::{Peer, PeerPolicy};
pub use writer::{Job, Work, Writer, WriterError};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon waits to hand its answer over.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more get an immediate "busy" answer.
const MAX_CONNECTIONS: usize = 1024;
/// Queue between connection threads and the writer.
const QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Peer(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("startup reconcile failed: {0}")]
    Reconcile(#[source] WriterError),
    #[error(transparent)]
    Writer(#[from] WriterError),
    #[error("cannot read the boot id from {path}: {source}")]
    BootId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another vpnfw serve is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error("[metrics] listen = \"{addr}\": cannot listen there: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct ServeOptions {
    pub config: PathBuf,
    pub socket: Option<PathBuf>,
}

/// Runs the daemon until it is killed.
pub fn serve(opts: ServeOptions) -> Result<(), DaemonError> {
    // Every thread spawned from here on inherits SIGHUP blocked; one thread waits for it.
    let hup = SigSet::from(Signal::SIGHUP);
    hup.thread_block()
        .map_err(|e| DaemonError::Peer(format!("cannot block SIGHUP: {e}")))?;
    let config = Config::load(&opts.config)?;
    let socket = opts.socket.unwrap_or_else(|| config.server.socket.clone());
    let policy = PeerPolicy::new(config.server.group.as_deref()).map_err(DaemonError::Peer)?;
    let boot_id = read_boot_id(&config.store.boot_id_file)?;
    let store = Store::open(&config.store.path)?;
    let nft = Nft::open()?;
    let mut writer = Writer::new(config.clone(), store, nft, boot_id)?;
    // Bound now: a port in use fails the start, before anything changed.
    if let Some(addr) = config
        .metrics
        .listen()
        .map_err(|message| ConfigError::Invalid {
            path: opts.config.clone(),
            message,
        })?
    {
        let listener =
            metrics::bind(addr).map_err(|source| DaemonError::Metrics { addr, source })?;
        let m = Arc::new(Metrics::new());
        writer.set_metrics(Arc::clone(&m));
        metrics::serve(listener, m).map_err(|source| DaemonError::Metrics { addr, source })?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    writer.open_conntrack();
    writer.end_previous_boot()?;
    // Reconcile before accepting events, so the first answer is given on a kernel
    // that matches the store.
    writer.reconcile(false).map_err(DaemonError::Reconcile)?;

    let portid = writer.portid();
    let listener = bind(&socket, &policy)?;
    let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|source| DaemonError::Bind {
            path: socket.clone(),
            source,
        })?;
    spawn_reload_on_hup(tx.clone(), hup, opts.config.clone());
    if config.reconcile.watch {
        spawn_monitor(tx.clone(), &config.nftables.table, portid);
    }
    if let Ok(Some(every)) = config.reconcile.interval() {
        spawn_periodic_reconcile(tx.clone(), every);
    }
    tracing::info!(socket = %socket.display(), table = %config.nftables.table, "ready");
    // systemd Type=notify: ready once the startup reconcile is done and the socket is up.
    let _ = sd_notify::notify(&[NotifyState::Ready]);

    let active = Arc::new(AtomicUsize::new(0));
    let policy = Arc::new(policy);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            reply(
                &stream,
                &Response::Failed {
                    reason: "daemon busy: too many connections".into(),
                },
            );
            continue;
        }
        let (tx, policy, active2) = (tx.clone(), policy.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                serve_connection(stream, &policy, &tx);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot start a connection thread");
        }
    }
    Ok(())
}

/// SIGHUP: load and validate the config file again; the writer switches to it only
/// if it is valid and only reloadable keys changed. A bad config keeps the old one.
fn spawn_reload_on_hup(tx: SyncSender<Job>, hup: SigSet, path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            while hup.wait().is_ok() {
                let _ = sd_notify::notify(&[NotifyState::Reloading]);
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                match Config::load(&path).and_then(|c| {
                    PeerPolicy::new(c.server.group.as_deref())
                        .map(|_| c)
                        .map_err(|message| ConfigError::Invalid {
                            path: path.clone(),
                            message,
                        })
                }) {
                    Ok(config) => {
                        let (reply, answer) = mpsc::sync_channel(1);
                        let job = Job {
                            work: Work::Reload(Box::new(config)),
                            reply,
                        };
                        if tx.send(job).is_err() {
                            return;
                        }
                        let _ = answer.recv();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "new config rejected; keeping the running one")
                    }
                }
                let _ = sd_notify::notify(&[NotifyState::Ready]);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the SIGHUP handler");
    }
}

/// Quiet time that ends a burst of ruleset notifications, and the longest a burst may
/// delay the reconcile: sessions are back well within 1 s of a reload.
const MONITOR_QUIET: Duration = Duration::from_millis(50);
const MONITOR_MAX_WAIT: Duration = Duration::from_millis(300);

/// Queues a reconcile on the writer and waits for it, so runs never pile up.
fn queue_reconcile(tx: &SyncSender<Job>) -> bool {
    let (reply, answer) = mpsc::sync_channel(1);
    let job = Job {
        work: Work::Reconcile { dry_run: false },
        reply,
    };
    if tx.send(job).is_err() {
        return false;
    }
    // The writer logs the outcome.
    let _ = answer.recv();
    true
}

/// Reconciles whenever someone else changes our table (a ruleset reload empties it).
fn spawn_monitor(tx: SyncSender<Job>, table: &str, ignore_portid: u32) {
    let mut monitor = match Monitor::open(table, ignore_portid) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the ruleset; reload repairs need `vpnfw reconcile` or [reconcile] interval");
            return;
        }
    };
    let table = table.to_string();
    let spawned = std::thread::Builder::new()
        .name("monitor".into())
        .spawn(move || {
            loop {
                if let Err(e) = monitor.wait_change(MONITOR_QUIET, MONITOR_MAX_WAIT) {
                    tracing::error!(error = %e, "ruleset monitor stopped");
                    return;
                }
                tracing::info!(table = %table, "table changed outside vpnfw; reconciling");
                if !queue_reconcile(&tx) {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the ruleset monitor");
    }
}

/// `[reconcile] interval`: queue a reconcile on the writer every `every`.
fn spawn_periodic_reconcile(tx: SyncSender<Job>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("periodic".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                if !queue_reconcile(&tx) {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start periodic reconcile");
    }
}

fn read_boot_id(path: &Path) -> Result<String, DaemonError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| DaemonError::BootId {
            path: path.into(),
            source,
        })
}

/// Binds the socket `root:<group>` 0660 (0600 without a group), replacing a stale
/// socket file but never a live daemon's.
fn bind(path: &Path, policy: &PeerPolicy) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Bind {
        path: path.into(),
        source,
    };
    crate::paths::create_parent(path, 0o755).map_err(err)?;
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                return Err(DaemonError::AlreadyRunning(path.into()));
            }
            fs::remove_file(path).map_err(err)?;
        } else {
            return Err(err(std::io::Error::other(
                "a file that is not a socket is in the way; remove it",
            )));
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let mode = match policy.group() {
        Some((_, gid)) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
            0o660
        }
        None => 0o600,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// One connection: peer check, one bounded request, one answer.
fn serve_connection(stream: UnixStream, policy: &PeerPolicy, tx: &SyncSender<Job>) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    // Read the request before answering, even a refusal: closing a Unix socket with
    // unread data resets it, and the client would lose the reason.
    let line = read_line(&stream);
    if let Some(reason) = policy.refuse(&peer) {
        tracing::warn!(uid = peer.uid, pid = peer.pid, reason = %reason, "peer refused");
        reply(&stream, &Response::Refused { reason });
        return;
    }
    let line = match line {
        Ok(Some(line)) => line,
        Ok(None) => return,
        Err(reason) => {
            tracing::warn!(uid = peer.uid, pid = peer.pid, reason = %reason, "bad request");
            reply(&stream, &Response::Refused { reason });
            return;
        }
    };
    let request = match protocol::decode_request(&line) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(uid = peer.uid, pid = peer.pid, error = %e, "bad request");
            reply(
                &stream,
                &Response::Refused {
                    reason: e.to_string(),
                },
            );
            return;
        }
    };
    let work = match request.op {
        Op::Event(ev) => Work::Event(ev),
        Op::Status => Work::Status,
        Op::Reconcile { dry_run } => Work::Reconcile { dry_run },
    };
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let answer = match tx.send(Job {
        work,
        reply: reply_tx,
    }) {
        Ok(()) => reply_rx.recv().unwrap_or_else(|_| Response::Failed {
            reason: "the writer stopped".into(),
        }),
        Err(_) => Response::Failed {
            reason: "the writer stopped".into(),
        },
    };
    reply(&stream, &answer);
}

/// Reads one newline-terminated request of at most `MAX_REQUEST` bytes.
fn read_line(stream: &UnixStream) -> Result<Option<Vec<u8>>, String> {
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line) {
        Ok(0) => Ok(None),
        Ok(_) if line.last() == Some(&b'\n') => Ok(Some(line)),
        Ok(_) if line.len() > MAX_REQUEST => {
            Err(format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(_) => Err("request not terminated by a newline".into()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "no complete request within {} s",
                READ_TIMEOUT.as_secs()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn reply(mut stream: &UnixStream, resp: &Response) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.write_all(&protocol::encode_line(resp));
}
