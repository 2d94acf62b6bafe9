//! vpnfw against the `nft` CLI, side by side in the same run, same namespace, same set
//! sizes. Prints medians, p90s and ratios.
//!
//! `cargo bench --bench compare` runs the full sizes (1M elements; several minutes).
//! `cargo test --benches` (part of the test suite) runs the same code at small sizes as
//! a smoke test: it checks correctness (every hook exits 0, kernel == store), never
//! timings.
//!
//! The whole process moves into a private network namespace first, so the daemon, the
//! hooks and `nft` all run there without wrapper overhead, and nothing touches the host.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vpnfw");

struct Sizes {
    full: bool,
    /// Hook/CLI runs per measured row.
    iterations: usize,
    /// Elements already in the sets for the connect/disconnect rows.
    base: u32,
    /// Set sizes for the scaling rows.
    scale: [u32; 2],
    /// Largest set the nft CLI is timed on for the scaling rows (it is slow).
    cli_scale: u32,
    reconcile_sessions: u32,
    reconcile_runs: usize,
    concurrent: usize,
    memory_sessions: u32,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            full: true,
            iterations: 200,
            base: 1_000,
            scale: [1_000, 1_000_000],
            cli_scale: 100_000,
            reconcile_sessions: 100_000,
            reconcile_runs: 5,
            concurrent: 1_000,
            memory_sessions: 100_000,
        }
    }

    fn smoke() -> Sizes {
        Sizes {
            full: false,
            iterations: 5,
            base: 100,
            scale: [100, 2_000],
            cli_scale: 2_000,
            reconcile_sessions: 2_000,
            reconcile_runs: 2,
            concurrent: 50,
            memory_sessions: 2_000,
        }
    }
}

fn main() {
    let sizes = if std::env::args().any(|a| a == "--bench") {
        Sizes::full()
    } else {
        Sizes::smoke()
    };
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!("unshare(CLONE_NEWNET) failed ({e}): run the benchmark as root");
    }
    let mut report = Report::default();
    println!(
        "vpnfw vs nft CLI ({} run), kernel {}",
        if sizes.full { "full" } else { "smoke" },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    // `-- --only reconcile,memory` runs some groups: connect, hash, interval,
    // reconcile, concurrent, memory.
    let args: Vec<String> = std::env::args().collect();
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|l| l.split(',').map(str::to_string).collect());
    let wanted = |group: &str| only.as_ref().is_none_or(|o| o.iter().any(|g| g == group));
    if wanted("connect") {
        connect_disconnect(&sizes, &mut report);
    }
    if wanted("hash") {
        scaling(&sizes, &mut report, false);
    }
    if wanted("interval") {
        scaling(&sizes, &mut report, true);
    }
    if wanted("reconcile") {
        reconcile(&sizes, &mut report);
    }
    if wanted("concurrent") {
        concurrent(&sizes, &mut report);
    }
    if wanted("memory") {
        memory(&sizes, &mut report);
    }
    report.print();
}

// ---------------------------------------------------------------- measurement

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((s.len() - 1) as f64 * p).round() as usize;
    s[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

#[derive(Default)]
struct Report {
    rows: Vec<[String; 7]>,
}

impl Report {
    fn compare(&mut self, what: &str, ours: &[Duration], theirs: &[Duration], target: &str) {
        let (o, t) = (percentile(ours, 0.5), percentile(theirs, 0.5));
        let ratio = if t.is_zero() {
            "-".to_string()
        } else {
            format!("{:.3}", o.as_secs_f64() / t.as_secs_f64())
        };
        self.rows.push([
            what.into(),
            ms(o),
            ms(percentile(ours, 0.9)),
            if theirs.is_empty() { "-".into() } else { ms(t) },
            if theirs.is_empty() {
                "-".into()
            } else {
                ms(percentile(theirs, 0.9))
            },
            ratio,
            target.into(),
        ]);
    }

    fn note(&mut self, what: &str, value: String, target: &str) {
        self.rows.push([
            what.into(),
            value,
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            target.into(),
        ]);
    }

    fn print(&self) {
        println!();
        println!(
            "| what | vpnfw p50 ms | vpnfw p90 ms | nft CLI p50 ms | nft CLI p90 ms | ratio (p50) | target |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &self.rows {
            println!("| {} |", r.join(" | "));
        }
    }
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn nft(script: &str) -> Duration {
    run(Command::new("nft").arg(script))
}

fn nft_file(path: &Path) -> Duration {
    run(Command::new("nft").arg("-f").arg(path))
}

fn v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

fn v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + i as u128)
}

// ---------------------------------------------------------------- the daemon

struct Daemon {
    dir: tempfile::TempDir,
    table: String,
    child: Option<Child>,
    extra: String,
}

impl Daemon {
    fn new(table: &str, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Daemon {
            dir,
            table: table.into(),
            child: None,
            extra: extra.into(),
        };
        std::fs::write(
            d.path("config.toml"),
            format!(
                "[nftables]\ntable = {:?}\n{}\n[store]\npath = {:?}\n[server]\nsocket = {:?}\n",
                d.table,
                d.extra,
                d.path("state.db"),
                d.path("vpnfw.sock")
            ),
        )
        .expect("config");
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&mut self) -> Duration {
        let started = Instant::now();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.path("config.toml"))
            .env("VPNFW_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("vpnfw serve");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(600);
        while UnixStream::connect(self.path("vpnfw.sock")).is_err() {
            assert!(Instant::now() < end, "daemon not ready");
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited: {st}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        started.elapsed()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.path("vpnfw.sock"));
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// Creates the store (by starting once) and fills it with `n` sessions whose
    /// addresses are `v4(offset + i)` (and `v6` when `with_v6`).
    fn seed(&mut self, n: u32, offset: u32, with_v6: bool) {
        if !self.path("state.db").exists() {
            self.start();
            self.stop();
        }
        let ip6 = if with_v6 {
            "printf('fd00::%x:%x', (i + ?2) >> 16, (i + ?2) & 65535)"
        } else {
            "NULL"
        };
        // One statement, generated inside SQLite: 1M rows in seconds.
        let sql = format!(
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?1)
             INSERT INTO sessions SELECT 'staff', 'c' || (i + ?2), 'u' || i, 'wireguard',
               printf('%d.%d.%d.%d', 10 + (((i + ?2) >> 24) & 255), ((i + ?2) >> 16) & 255,
                      ((i + ?2) >> 8) & 255, (i + ?2) & 255),
               {ip6}, 'staff_v4', 'staff_v6', 0, 'bench' FROM c;"
        );
        let sql = sql
            .replace("?1", &n.to_string())
            .replace("?2", &offset.to_string());
        run(Command::new("sqlite3").arg(self.path("state.db")).arg(sql));
        // Sessions from another boot id: WireGuard ones are kept.
    }

    fn hook(&self, event: &str, conn: &str, ip4: &str, ip6: &str) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("VPN_EVENT", event)
            .env("VPN_USER_ID", "bench@example.org")
            .env("VPN_PROFILE_ID", "staff")
            .env("VPN_CONNECTION_ID", conn)
            .env("VPN_IP_FOUR", ip4)
            .env("VPN_IP_SIX", ip6)
            .env("VPN_PROTO", "openvpn")
            .env("VPNFW_SOCKET", self.path("vpnfw.sock"))
            .stdout(Stdio::null());
        c
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["status", "--json", "--socket"])
            .arg(self.path("vpnfw.sock"))
            .output()
            .expect("status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn stored(&self) -> usize {
        let out = Command::new("sqlite3")
            .arg(self.path("state.db"))
            .arg("SELECT count(*) FROM sessions")
            .output()
            .expect("sqlite3");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("count")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .stderr(Stdio::null())
            .status();
    }
}

/// Declares `inet <table>` with staff sets, optionally interval, filled with
/// `v4(offset..offset+n)` (and v6) through `nft -f`.
fn cli_table(dir: &Path, table: &str, interval: bool, n: u32, offset: u32, with_v6: bool) {
    let flags = if interval { " flags interval;" } else { "" };
    let mut f = format!(
        "add table inet {table}\nadd set inet {table} staff_v4 {{ type ipv4_addr;{flags} }}\nadd set inet {table} staff_v6 {{ type ipv6_addr;{flags} }}\n"
    );
    let chunk = 10_000;
    let mut i = 0;
    while i < n {
        let end = (i + chunk).min(n);
        let list: Vec<String> = (i..end).map(|k| v4(offset + k).to_string()).collect();
        f.push_str(&format!(
            "add element inet {table} staff_v4 {{ {} }}\n",
            list.join(", ")
        ));
        if with_v6 {
            let list: Vec<String> = (i..end).map(|k| v6(offset + k).to_string()).collect();
            f.push_str(&format!(
                "add element inet {table} staff_v6 {{ {} }}\n",
                list.join(", ")
            ));
        }
        i = end;
    }
    let path = dir.join(format!("{table}.nft"));
    std::fs::write(&path, f).expect("ruleset");
    nft_file(&path);
}

fn set_len(table: &str, set: &str) -> usize {
    let out = Command::new("nft")
        .args(["-j", "list", "set", "inet", table, set])
        .output()
        .expect("nft");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["set"]["elem"].as_array())
        .map(|a| a.len())
        .sum()
}

/// Kernel == store, as a dry-run reconcile sees it (cheap at 1M, unlike `nft -j`).
fn assert_in_step(d: &Daemon) {
    let out = Command::new(BIN)
        .args(["reconcile", "--dry-run", "--json", "--socket"])
        .arg(d.path("vpnfw.sock"))
        .output()
        .expect("reconcile");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["summary"]["added"], 0, "kernel misses elements: {v}");
    assert_eq!(v["summary"]["deleted"], 0, "kernel has stale elements: {v}");
}

// ---------------------------------------------------------------- the rows

/// Hook connect/disconnect (whole process, store write included) against one `nft`
/// process that adds/deletes the same two elements, on sets of `base` elements.
fn connect_disconnect(s: &Sizes, report: &mut Report) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::new("vpnfw", "");
    d.seed(s.base, 0, true);
    d.start();
    cli_table(scratch.path(), "cli", false, s.base, 0, true);
    // The nft CLI the way a shell hook calls it: one call per element (DESIGN.md §3),
    // and, as a harder reference, both elements in one call.
    let (mut hook_c, mut hook_d) = (vec![], vec![]);
    let (mut cli_c, mut cli_d, mut one_c, mut one_d) = (vec![], vec![], vec![], vec![]);
    for i in 0..s.iterations as u32 {
        let k = 5_000_000 + i;
        let (a4, a6) = (v4(k).to_string(), v6(k).to_string());
        let (b4, b6) = (v4(k + 1_000_000).to_string(), v6(k + 1_000_000).to_string());
        hook_c.push(run(&mut d.hook("C", &format!("bench{i}"), &a4, &a6)));
        cli_c.push(
            nft(&format!("add element inet cli staff_v4 {{ {a4} }}"))
                + nft(&format!("add element inet cli staff_v6 {{ {a6} }}")),
        );
        one_c.push(nft(&format!(
            "add element inet cli staff_v4 {{ {b4} }}; add element inet cli staff_v6 {{ {b6} }}"
        )));
    }
    for i in 0..s.iterations as u32 {
        let k = 5_000_000 + i;
        let (a4, a6) = (v4(k).to_string(), v6(k).to_string());
        let (b4, b6) = (v4(k + 1_000_000).to_string(), v6(k + 1_000_000).to_string());
        hook_d.push(run(&mut d.hook("D", &format!("bench{i}"), &a4, &a6)));
        cli_d.push(
            nft(&format!("delete element inet cli staff_v4 {{ {a4} }}"))
                + nft(&format!("delete element inet cli staff_v6 {{ {a6} }}")),
        );
        one_d.push(nft(&format!(
            "delete element inet cli staff_v4 {{ {b4} }}; delete element inet cli staff_v6 {{ {b6} }}"
        )));
    }
    assert_eq!(set_len("vpnfw", "staff_v4"), s.base as usize);
    assert_eq!(set_len("cli", "staff_v4"), s.base as usize);
    assert_eq!(d.stored(), s.base as usize);
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "cli"])
        .status();
    report.compare(
        &format!("hook connect v4+v6 (whole process, fsynced store) vs 2 × `nft add element`, sets of {}", s.base),
        &hook_c,
        &cli_c,
        "≤ 0.5×",
    );
    report.compare(
        &format!("hook disconnect v4+v6 (whole process, fsynced store) vs 2 × `nft delete element`, sets of {}", s.base),
        &hook_d,
        &cli_d,
        "≤ 0.1×",
    );
    report.compare(
        "hook connect vs ONE `nft` call adding both elements",
        &hook_c,
        &one_c,
        "(reference)",
    );
    report.compare(
        "hook disconnect vs ONE `nft` call deleting both elements",
        &hook_d,
        &one_d,
        "(reference)",
    );
}

/// Per-event cost as the set grows: vpnfw at the largest size against vpnfw at the
/// smallest; the nft CLI at its largest affordable size for reference.
fn scaling(s: &Sizes, report: &mut Report, interval: bool) {
    let kind = if interval { "interval" } else { "hash" };
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut per_size = Vec::new();
    for &n in &s.scale {
        let table = format!("scale_{kind}_{n}");
        let extra = if interval {
            // The admin declares interval sets; vpnfw only fills them.
            cli_table(scratch.path(), &table, true, 0, 0, false);
            "create = false\n[reconcile]\nwatch = false"
        } else {
            "[reconcile]\nwatch = false"
        };
        let mut d = Daemon::new(&table, extra);
        d.seed(n, 0, false);
        let startup = d.start();
        assert_eq!(
            set_len(&table, "staff_v4"),
            n as usize,
            "startup reconcile loaded the set"
        );
        report.note(
            &format!("startup with {n} sessions ({kind} set): reconcile loads them in one batch"),
            ms(startup),
            "",
        );
        let mut samples = Vec::new();
        for i in 0..s.iterations as u32 {
            let a4 = v4(20_000_000 + i).to_string();
            let conn = format!("scale{i}");
            let c = run(&mut d.hook("C", &conn, &a4, ""));
            let dd = run(&mut d.hook("D", &conn, &a4, ""));
            samples.push(c + dd);
        }
        if n <= 100_000 {
            assert_in_step(&d);
        } else {
            // A full dump of a 1M-element set takes the kernel ~40 s (its set walk
            // restarts at every 32 KiB dump message: quadratic, see BENCHMARKS.md), and
            // so does `nft get element` on an interval set. Here every hook's exit 0
            // means the kernel ACKed its batch; the store must be back where it was.
            assert_eq!(
                d.stored(),
                n as usize,
                "store holds exactly the seeded sessions"
            );
        }
        per_size.push((n, samples));
    }
    // The nft CLI on a set of cli_scale elements.
    let table = format!("cli_{kind}");
    cli_table(scratch.path(), &table, interval, s.cli_scale, 0, false);
    let mut cli = Vec::new();
    for i in 0..(s.iterations.min(if s.full { 5 } else { 3 })) as u32 {
        let a4 = v4(20_000_000 + i).to_string();
        let add = nft(&format!("add element inet {table} staff_v4 {{ {a4} }}"));
        let del = nft(&format!("delete element inet {table} staff_v4 {{ {a4} }}"));
        cli.push(add + del);
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .status();
    let (small, small_s) = &per_size[0];
    let (large, large_s) = &per_size[per_size.len() - 1];
    report.compare(
        &format!("connect+disconnect, {kind} set: vpnfw at {large} vs vpnfw at {small}"),
        large_s,
        small_s,
        "≤ 1.5×",
    );
    report.compare(
        &format!(
            "connect+disconnect, {kind} set: vpnfw at {large} vs nft CLI at {}",
            s.cli_scale
        ),
        large_s,
        &cli,
        "(reference)",
    );
}

/// Reconcile of N sessions where half the kernel's elements are stale and half the
/// sessions are missing: `vpnfw reconcile` against `nft list set` + diff + `nft -f`.
fn reconcile(s: &Sizes, report: &mut Report) {
    let n = s.reconcile_sessions;
    let half = n / 2;
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::new("rec", "[reconcile]\nwatch = false");
    d.seed(n, 0, false);
    d.start();
    let desired: BTreeSet<Ipv4Addr> = (0..n).map(v4).collect();
    let drift = |table: &str| {
        // Missing: the first half of the sessions. Stale: half as many unknown addresses.
        let mut f = String::new();
        let dels: Vec<String> = (0..half).map(|i| v4(i).to_string()).collect();
        let adds: Vec<String> = (0..half).map(|i| v4(50_000_000 + i).to_string()).collect();
        for c in dels.chunks(10_000) {
            f.push_str(&format!(
                "delete element inet {table} staff_v4 {{ {} }}\n",
                c.join(", ")
            ));
        }
        for c in adds.chunks(10_000) {
            f.push_str(&format!(
                "add element inet {table} staff_v4 {{ {} }}\n",
                c.join(", ")
            ));
        }
        let path = scratch.path().join(format!("drift-{table}.nft"));
        std::fs::write(&path, f).expect("drift");
        nft_file(&path);
    };
    cli_table(scratch.path(), "rec_cli", false, n, 0, false);
    let (mut ours, mut theirs) = (vec![], vec![]);
    for _ in 0..s.reconcile_runs {
        drift("rec");
        ours.push(run(Command::new(BIN)
            .args(["reconcile", "--socket"])
            .arg(d.path("vpnfw.sock"))
            .stdout(Stdio::null())));
        assert_eq!(set_len("rec", "staff_v4"), n as usize);

        drift("rec_cli");
        let start = Instant::now();
        let out = Command::new("nft")
            .args(["-j", "list", "set", "inet", "rec_cli", "staff_v4"])
            .output()
            .expect("nft list");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let actual: BTreeSet<Ipv4Addr> = v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["set"]["elem"].as_array())
            .flatten()
            .filter_map(|e| e.as_str().and_then(|s| s.parse().ok()))
            .collect();
        let dels: Vec<String> = actual.difference(&desired).map(|a| a.to_string()).collect();
        let adds: Vec<String> = desired.difference(&actual).map(|a| a.to_string()).collect();
        let mut f = std::fs::File::create(scratch.path().join("fix.nft")).expect("file");
        for c in dels.chunks(10_000) {
            writeln!(
                f,
                "delete element inet rec_cli staff_v4 {{ {} }}",
                c.join(", ")
            )
            .expect("w");
        }
        for c in adds.chunks(10_000) {
            writeln!(
                f,
                "add element inet rec_cli staff_v4 {{ {} }}",
                c.join(", ")
            )
            .expect("w");
        }
        drop(f);
        nft_file(&scratch.path().join("fix.nft"));
        theirs.push(start.elapsed());
        assert_eq!(set_len("rec_cli", "staff_v4"), n as usize);
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "rec_cli"])
        .status();
    report.compare(
        &format!("reconcile {n} sessions, {half} stale + {half} missing (dump, diff, apply)"),
        &ours,
        &theirs,
        "≤ 0.2×",
    );
}

/// Many hook processes at once: all exit 0, kernel == store == expected.
fn concurrent(s: &Sizes, report: &mut Report) {
    let mut d = Daemon::new("conc", "");
    d.start();
    let before = d.status()["netlink_batches"].as_u64().unwrap_or(0);
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..s.concurrent as u32 {
        let (a4, a6) = (v4(i).to_string(), v6(i).to_string());
        children.push(
            d.hook("C", &format!("conc{i}"), &a4, &a6)
                .spawn()
                .expect("spawn"),
        );
    }
    let mut failed = 0;
    for mut c in children {
        if !c.wait().expect("wait").success() {
            failed += 1;
        }
    }
    let took = start.elapsed();
    let batches = d.status()["netlink_batches"].as_u64().unwrap_or(0) - before;
    assert_eq!(failed, 0, "every hook exits 0");
    let want: BTreeSet<IpAddr> = (0..s.concurrent as u32)
        .map(|i| IpAddr::V4(v4(i)))
        .collect();
    assert_eq!(set_len("conc", "staff_v4"), want.len());
    assert_eq!(set_len("conc", "staff_v6"), want.len());
    assert_eq!(d.stored(), want.len());
    report.note(
        &format!(
            "{} concurrent hook processes: total wall time; all exit 0, kernel == store",
            s.concurrent
        ),
        ms(took),
        &format!(
            "{} netlink batches (status after the run counts itself: 0)",
            batches
        ),
    );
}

/// Peak RSS of the daemon holding N live sessions (v4 + v6), startup reconcile included.
fn memory(s: &Sizes, report: &mut Report) {
    let n = s.memory_sessions;
    let mut d = Daemon::new("mem", "[reconcile]\nwatch = false");
    d.seed(n, 0, true);
    d.start();
    for i in 0..100u32 {
        let a4 = v4(30_000_000 + i).to_string();
        run(&mut d.hook("C", &format!("m{i}"), &a4, ""));
    }
    run(Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(d.path("vpnfw.sock"))
        .stdout(Stdio::null()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    report.note(
        &format!("daemon peak RSS (VmHWM) with {n} live sessions, v4+v6"),
        format!("{:.1} MB", field("VmHWM:") as f64 / 1024.0),
        &format!("≤ 30 MB (now: {:.1} MB)", field("VmRSS:") as f64 / 1024.0),
    );
}
