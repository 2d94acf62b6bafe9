//! `vpnfw`: the hook (no arguments, `VPN_EVENT` set), the daemon and the admin commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use vpnfw::config::{self, Config};
use vpnfw::error::exit;
use vpnfw::nft::{KeyType, Nft};
use vpnfw::protocol::{Op, Request, Response, VERSION};
use vpnfw::{client, daemon};

/// nftables session manager for eduVPN / Let's Connect! VPN servers.
///
/// Run with no arguments as the portal's connectScriptPath hook: it reads the VPN_*
/// environment and asks `vpnfw serve` to put the client's addresses into the nftables
/// sets of its profile (connect) or take them out (disconnect).
#[derive(Parser)]
#[command(name = "vpnfw", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Act as the connect/disconnect hook (the default when VPN_EVENT is set).
    ///
    /// Exit codes: 0 applied, 2 bad input, 3 refused, 4 daemon unreachable, 5 daemon failed.
    Hook,
    /// Run the privileged daemon (needs CAP_NET_ADMIN).
    Serve {
        /// Config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Socket path; overrides [server] socket.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Show live sessions per profile and the size of every managed set.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Daemon socket (default: $VPNFW_SOCKET, else [server] socket of --config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Config file, used to find the socket.
        #[arg(long, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Reconcile the kernel sets against the live sessions now (through the daemon).
    Reconcile {
        /// Print the adds and deletes that would be made; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Daemon socket (default: $VPNFW_SOCKET, else [server] socket of --config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Config file, used to find the socket.
        #[arg(long, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the table and set declarations for the configured profiles, or check a
    /// policy file's @set references against them.
    Ruleset {
        /// Config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check this policy file instead: every @set it references must be a set of a
        /// configured profile. Exits non-zero otherwise.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Declare the sets with `flags interval`.
        #[arg(long)]
        interval: bool,
    },
    /// Validate the config and the kernel's sets; exits non-zero on any problem.
    Check {
        /// Config file.
        #[arg(long, default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // The hook path first, before clap builds its command tree: the portal runs the
    // hook without arguments on every connect, and start-up time is most of its cost.
    if std::env::args_os().len() == 1 && std::env::var_os("VPN_EVENT").is_some() {
        return exit_code(client::run_hook());
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        return exit_code(generate(Generate::parse_from(std::env::args_os().skip(1))));
    }
    let cli = Cli::parse();
    let code = match cli.command {
        None if std::env::var_os("VPN_EVENT").is_some() => client::run_hook(),
        Some(Command::Hook) => client::run_hook(),
        None => {
            eprintln!(
                "vpnfw: VPN_EVENT is not set; run `vpnfw --help`, or set connectScriptPath to this binary"
            );
            exit::BAD_INPUT
        }
        Some(Command::Serve { config, socket }) => {
            vpnfw::logging::init();
            match daemon::serve(daemon::ServeOptions { config, socket }) {
                Ok(()) => exit::OK,
                Err(e) => {
                    tracing::error!(error = %e, "vpnfw serve stopped");
                    exit::PROBLEM
                }
            }
        }
        Some(Command::Status {
            json,
            socket,
            config,
        }) => status(json, socket, &config),
        Some(Command::Reconcile {
            dry_run,
            json,
            socket,
            config,
        }) => reconcile(dry_run, json, socket, &config),
        Some(Command::Check { config }) => check(&config),
        Some(Command::Ruleset {
            config,
            policy,
            interval,
        }) => ruleset(&config, policy.as_deref(), interval),
    };
    exit_code(code)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The socket an admin command talks to: flag, then $VPNFW_SOCKET, then the config.
fn admin_socket(flag: Option<PathBuf>, config: &Path) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("VPNFW_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
    .or_else(|| Config::load(config).ok().map(|c| c.server.socket))
    .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET))
}

/// Sends one admin request; on failure prints one line and returns the exit code.
fn admin_request(
    cmd: &str,
    socket: Option<PathBuf>,
    config: &Path,
    op: Op,
) -> Result<Response, i32> {
    let socket = admin_socket(socket, config);
    let req = Request { v: VERSION, op };
    // Status reports list every session: allow far more than a hook's reply.
    match client::request_limited(&socket, &req, Duration::from_secs(120), 1 << 30) {
        Ok(Response::Refused { reason } | Response::Failed { reason }) => {
            eprintln!("vpnfw {cmd}: {reason}");
            Err(exit::PROBLEM)
        }
        Ok(resp) => Ok(resp),
        Err(e) => {
            eprintln!("vpnfw {cmd}: {e}");
            Err(exit::UNREACHABLE)
        }
    }
}

fn print_json<T: serde::Serialize>(cmd: &str, value: &T) -> i32 {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            println!("{s}");
            exit::OK
        }
        Err(e) => {
            eprintln!("vpnfw {cmd}: {e}");
            exit::PROBLEM
        }
    }
}

fn unexpected(cmd: &str, resp: &Response) -> i32 {
    eprintln!("vpnfw {cmd}: unexpected answer from the daemon: {resp:?}");
    exit::PROBLEM
}

fn reconcile(dry_run: bool, json: bool, socket: Option<PathBuf>, config: &Path) -> i32 {
    let report = match admin_request("reconcile", socket, config, Op::Reconcile { dry_run }) {
        Ok(Response::Reconciled(r)) => r,
        Ok(other) => return unexpected("reconcile", &other),
        Err(code) => return code,
    };
    if json {
        return print_json("reconcile", &report);
    }
    let verb = if dry_run { "would " } else { "" };
    for d in &report.dels {
        println!("{verb}delete {} from {}", d.addr, d.set);
    }
    for a in &report.adds {
        println!("{verb}add {} to {}", a.addr, a.set);
    }
    let listed = report.adds.len() + report.dels.len();
    if listed < report.summary.added + report.summary.deleted {
        println!(
            "(listed {listed} of {})",
            report.summary.added + report.summary.deleted
        );
    }
    if report.summary.portal_ended + report.summary.portal_recovered > 0 {
        println!(
            "portal database: {verb}end {} WireGuard sessions, {verb}recover {}",
            report.summary.portal_ended, report.summary.portal_recovered
        );
    }
    println!(
        "{} sets checked: {verb}add {}, {verb}delete {}{}",
        report.summary.sets,
        report.summary.added,
        report.summary.deleted,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    exit::OK
}

fn status(json: bool, socket: Option<PathBuf>, config: &Path) -> i32 {
    let report = match admin_request("status", socket, config, Op::Status) {
        Ok(Response::Status(r)) => r,
        Ok(other) => return unexpected("status", &other),
        Err(code) => return code,
    };
    if json {
        return print_json("status", &report);
    }
    println!(
        "{:<16} {:<40} {:<10} {:<16} {:<28} {:>10}  user",
        "profile", "connection", "proto", "ipv4", "ipv6", "since"
    );
    for s in &report.sessions {
        println!(
            "{:<16} {:<40} {:<10} {:<16} {:<28} {:>10}  {}",
            s.profile,
            s.conn_id,
            s.proto,
            s.ip4.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            s.ip6.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            s.since,
            s.user_id
        );
    }
    println!();
    if report.sessions_total > report.sessions.len() {
        let store = Config::load(config)
            .map(|c| c.store.path)
            .unwrap_or_else(|_| PathBuf::from(config::DEFAULT_STORE));
        println!(
            "{} live sessions (the first {} shown; all: sqlite3 {} 'select * from sessions')",
            report.sessions_total,
            report.sessions.len(),
            store.display()
        );
    } else {
        println!("{} live sessions", report.sessions_total);
    }
    for s in &report.sets {
        match s.elements {
            Some(n) => println!("set {:<24} {n} elements", s.set),
            None => println!("set {:<24} missing from the kernel", s.set),
        }
    }
    exit::OK
}

fn ruleset(path: &Path, policy: Option<&Path>, interval: bool) -> i32 {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vpnfw ruleset: {e}");
            return exit::PROBLEM;
        }
    };
    let Some(policy) = policy else {
        print!("{}", vpnfw::ruleset::declarations(&cfg, interval));
        return exit::OK;
    };
    let text = match std::fs::read_to_string(policy) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vpnfw ruleset: cannot read {}: {e}", policy.display());
            return exit::PROBLEM;
        }
    };
    let unmanaged = vpnfw::ruleset::unmanaged_set_refs(&cfg, &text);
    if unmanaged.is_empty() {
        println!(
            "{}: every @set it references is managed by vpnfw",
            policy.display()
        );
        return exit::OK;
    }
    for u in &unmanaged {
        let why = if u.declared_in_file {
            "the file declares it, but vpnfw will never put clients into it"
        } else {
            "nothing declares it"
        };
        println!(
            "problem: {} references @{}, which no [[profile]] in {} manages ({why}); add the profile or fix the name",
            policy.display(),
            u.set,
            path.display()
        );
    }
    exit::PROBLEM
}

fn check(path: &Path) -> i32 {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vpnfw check: {e}");
            return exit::PROBLEM;
        }
    };
    let mut problems = 0;
    println!(
        "config {}: ok ({} profiles)",
        path.display(),
        cfg.profiles.len()
    );
    if let Err(e) = daemon::PeerPolicy::new(cfg.server.group.as_deref()) {
        println!("problem: {e}");
        problems += 1;
    }
    let table = &cfg.nftables.table;
    let listed = Nft::open().and_then(|mut n| n.list_sets(table));
    match listed {
        Err(e) => {
            println!("problem: {e}");
            problems += 1;
        }
        Ok(None) if cfg.nftables.create => {
            println!("table inet {table}: missing; vpnfw serve will create it (create = true)")
        }
        Ok(None) => {
            println!(
                "problem: table inet {table} not found: declare it in your ruleset or set [nftables] create = true"
            );
            problems += 1;
        }
        Ok(Some(sets)) => {
            for (name, family) in cfg.configured_sets() {
                match sets.iter().find(|s| s.name == name) {
                    None if cfg.nftables.create => println!(
                        "set inet {table} {name}: missing; vpnfw serve will create it (create = true)"
                    ),
                    None => {
                        println!(
                            "problem: set inet {table} {name} not found: declare it in your ruleset or set [nftables] create = true"
                        );
                        problems += 1;
                    }
                    Some(info) => {
                        let ok = matches!(
                            (family, info.key),
                            (vpnfw::nft::Family::V4, KeyType::Ipv4Addr)
                                | (vpnfw::nft::Family::V6, KeyType::Ipv6Addr)
                        );
                        if ok {
                            println!(
                                "set inet {table} {name}: ok ({}{})",
                                family.nft_type(),
                                if info.interval { ", interval" } else { "" }
                            );
                        } else {
                            println!(
                                "problem: set inet {table} {name} has the wrong type, expected {}: fix its declaration",
                                family.nft_type()
                            );
                            problems += 1;
                        }
                    }
                }
            }
        }
    }
    if problems > 0 {
        eprintln!("vpnfw check: {problems} problem(s)");
        exit::PROBLEM
    } else {
        exit::OK
    }
}

// `vpnfw generate man|completions <DIR>`, hidden from --help: packaging/build-assets.sh
// writes the man pages and completions with it, so they cannot disagree with --help.
// A parser of its own rather than a hidden variant of `Command`: clap_complete
// completes hidden subcommands too, and both must describe only the public interface.
#[derive(Parser)]
#[command(
    name = "vpnfw-generate",
    bin_name = "vpnfw generate",
    about = "Write the man pages or shell completions (for packaging)"
)]
enum Generate {
    /// Write vpnfw.1 and one vpnfw-<command>.1 per command into DIR.
    Man { dir: PathBuf },
    /// Write bash (vpnfw.bash), zsh (_vpnfw) and fish (vpnfw.fish) completions into DIR.
    Completions { dir: PathBuf },
}

fn generate(what: Generate) -> i32 {
    use clap::CommandFactory;
    use clap_complete::Shell;

    let result = match &what {
        Generate::Man { dir } => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir)),
        Generate::Completions { dir } => std::fs::create_dir_all(dir).and_then(|()| {
            [Shell::Bash, Shell::Zsh, Shell::Fish]
                .into_iter()
                .try_for_each(|shell| {
                    clap_complete::generate_to(shell, &mut Cli::command(), "vpnfw", dir).map(drop)
                })
        }),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            let (Generate::Man { dir } | Generate::Completions { dir }) = &what;
            eprintln!("vpnfw generate: cannot write into {}: {e}", dir.display());
            exit::PROBLEM
        }
    }
}
