//! Harness for the integration tests: every test gets its own throwaway network
//! namespace, runs the real `vpnfw` binary in it, and reads the kernel's sets back with
//! the `nft` CLI. Nothing here touches the host's ruleset.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod topology;
pub const BIN: &str = env!("CARGO_BIN_EXE_vpnfw");

/// nobody / nogroup: the unprivileged user hooks run as (the portal's www-data).
pub const HOOK_UID: u32 = 65534;
pub const HOOK_GID: u32 = 65534;
pub const HOOK_GROUP: &str = "nogroup";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace removed (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "vpnfw-t-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        sweep_orphans();
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        // The guard exists from here on, so a failure below still removes the namespace.
        let ns = Netns { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `nft <args>` inside the namespace; panics on failure.
    pub fn nft(&self, args: &[&str]) -> String {
        let out = run_ok(self.cmd("nft").args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft -f -` with `ruleset` on stdin; panics on failure.
    pub fn nft_load(&self, ruleset: &str) {
        let mut child = self
            .cmd("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("write ruleset");
        let out = child.wait_with_output().expect("nft -f");
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Elements of `inet <table> <set>`; `None` when the set does not exist.
    pub fn set_elements(&self, table: &str, set: &str) -> Option<BTreeSet<IpAddr>> {
        let out = self
            .cmd("nft")
            .args(["-j", "list", "set", "inet", table, set])
            .output()
            .expect("run nft");
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j output");
        let mut elems = BTreeSet::new();
        for item in v["nftables"].as_array().expect("nftables array") {
            let Some(list) = item["set"]["elem"].as_array() else {
                continue;
            };
            for e in list {
                // Plain: "10.0.0.1"; with a comment: {"elem": {"val": "10.0.0.1", ...}};
                // interval single address: {"prefix"...} or {"range": [a, b]}.
                let val = if e.is_string() { e } else { &e["elem"]["val"] };
                let val = if val.is_null() { e } else { val };
                if let Some(s) = val.as_str() {
                    elems.insert(s.parse().expect("element address"));
                } else if let Some(r) = val["range"].as_array() {
                    let a: IpAddr = r[0].as_str().expect("range start").parse().expect("addr");
                    let b: IpAddr = r[1].as_str().expect("range end").parse().expect("addr");
                    assert_eq!(a, b, "unexpected range {a}-{b} in {set}");
                    elems.insert(a);
                } else {
                    panic!("unexpected element {e} in {set}");
                }
            }
        }
        Some(elems)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Removes namespaces left by earlier test processes that died without unwinding
/// (SIGKILL, abort): `vpnfw-t-<pid>-<n>` whose `<pid>` no longer exists. Once per process.
fn sweep_orphans() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix("vpnfw-t-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                drop(Netns {
                    name: name.to_string(),
                });
            }
        }
    });
}

/// Runs a command and panics with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits for `cond` with a deadline instead of sleeping a fixed time.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A temp dir the unprivileged hook user can traverse, holding config, store, socket.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("vpnfw-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Workdir { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `vpnfw serve` in a namespace, with a config in a temp dir; killed on drop.
pub struct Daemon {
    pub ns: Netns,
    pub work: Workdir,
    pub child: Option<Child>,
    /// The config's extra text after the generated [store]/[server] sections.
    pub extra: String,
    /// Runs `vpnfw serve` through this command (e.g. setpriv), inside the namespace.
    pub wrapper: Vec<String>,
    /// `[server] group`; `None` leaves the socket to root and the daemon's user.
    pub group: Option<String>,
    /// Where the store goes, relative to the work dir.
    pub store_name: String,
}

impl Daemon {
    /// Starts a daemon with `extra` config (profiles, [nftables] …) appended.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_in(Netns::new(), extra)
    }

    pub fn start_in(ns: Netns, extra: &str) -> Daemon {
        Daemon::start_with(ns, extra, &[], Some(HOOK_GROUP), |_| {})
    }

    /// Full control: a wrapper command, the socket group, and a hook to prepare the
    /// work dir (ownership, modes) before the daemon starts.
    pub fn start_with(
        ns: Netns,
        extra: &str,
        wrapper: &[&str],
        group: Option<&str>,
        prepare: impl FnOnce(&Daemon),
    ) -> Daemon {
        let mut d = Daemon {
            ns,
            work: Workdir::new(),
            child: None,
            extra: extra.to_string(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            group: group.map(str::to_string),
            store_name: "state.db".into(),
        };
        prepare(&d);
        std::fs::write(d.work.path("boot_id"), "boot-one\n").expect("boot id");
        d.write_config();
        d.spawn();
        d
    }

    pub fn config_path(&self) -> PathBuf {
        self.work.path("config.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.work.path("vpnfw.sock")
    }

    pub fn store(&self) -> PathBuf {
        self.work.path(&self.store_name)
    }

    pub fn write_config(&self) {
        let group = match &self.group {
            Some(g) => format!("group = {g:?}\n"),
            None => String::new(),
        };
        let text = format!(
            "[store]\npath = {:?}\nboot_id_file = {:?}\n[server]\nsocket = {:?}\n{group}{}\n",
            self.store(),
            self.work.path("boot_id"),
            self.socket(),
            self.extra
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.work.path("serve.log")).expect("log");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = self.ns.cmd(program);
                c.args(args).arg(BIN);
                c
            }
            None => self.ns.cmd(BIN),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("VPNFW_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vpnfw serve");
        self.child = Some(child);
        let sock = self.socket();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&sock).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("vpnfw serve exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < end,
                "vpnfw serve not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path("serve.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as `systemctl stop` would; SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Some(mut c) = self.child.take() else {
            return;
        };
        // `ip netns exec` (and setpriv) exec the daemon: the child's pid is vpnfw's.
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Rewrites the boot id the daemon reads at start (a simulated reboot).
    pub fn set_boot_id(&self, id: &str) {
        std::fs::write(self.work.path("boot_id"), format!("{id}\n")).expect("boot id");
    }

    pub fn elements(&self, set: &str) -> Option<BTreeSet<IpAddr>> {
        self.ns.set_elements("vpnfw", set)
    }

    /// `vpnfw status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = run_ok(
            Command::new(BIN)
                .args(["status", "--json", "--socket"])
                .arg(self.socket()),
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// Rows of the store, read with the sqlite3 CLI (the store is WAL: readers are fine).
    pub fn stored(&self) -> BTreeSet<(String, String, String, String)> {
        let out = run_ok(
            Command::new("sqlite3")
                .arg("-separator")
                .arg("|")
                .arg(self.store())
                .arg("SELECT profile, conn_id, coalesce(ip4,''), coalesce(ip6,'') FROM sessions"),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f[0].into(), f[1].into(), f[2].into(), f[3].into())
            })
            .collect()
    }

    /// The addresses the store says each set must hold: `ip4` of every row in its
    /// `set4`, `ip6` in its `set6` (read with the sqlite3 CLI, not through vpnfw).
    pub fn stored_sets(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let out = run_ok(
            Command::new("sqlite3")
                .arg("-separator")
                .arg("|")
                .arg(self.store())
                .arg(
                    "SELECT set4, ip4 FROM sessions WHERE ip4 IS NOT NULL \
             UNION ALL SELECT set6, ip6 FROM sessions WHERE ip6 IS NOT NULL",
                ),
        );
        let mut sets: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (set, addr) = line.split_once('|').expect("set|addr");
            sets.entry(set.to_string())
                .or_default()
                .insert(addr.parse().expect("stored address"));
        }
        sets
    }

    /// Asserts that every set in `sets` (and every set the store names) holds exactly
    /// the addresses of the store's sessions: no stale element, none missing.
    pub fn assert_kernel_matches_store(&self, sets: &[&str]) {
        let stored = self.stored_sets();
        let names: BTreeSet<&str> = sets
            .iter()
            .copied()
            .chain(stored.keys().map(String::as_str))
            .collect();
        for set in names {
            let want = stored.get(set).cloned().unwrap_or_default();
            assert_eq!(
                self.elements(set),
                Some(want),
                "kernel set {set} differs from the store"
            );
        }
    }

    /// Runs the hook as the portal does; see [`hook_as`].
    pub fn hook(&self, vars: &[(&str, &str)]) -> HookResult {
        hook_as(&self.ns, &self.socket(), vars, Who::Portal)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who runs the hook.
#[derive(Debug, Clone, Copy)]
pub enum Who {
    /// nobody:nogroup, like php-fpm's www-data: in the configured group.
    Portal,
    /// An unprivileged uid that is not in the configured group.
    Stranger,
    Root,
}

#[derive(Debug)]
pub struct HookResult {
    pub code: i32,
    /// stdout and stderr together (`2>&1`, as the portal runs it).
    pub output: String,
}

/// PHP's escapeshellarg: wrap in single quotes, `'` becomes `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs the hook exactly as vpn-user-portal does: `/bin/sh -c "VPN_X='…' … vpnfw 2>&1"`
/// with an otherwise empty environment, as an unprivileged user, no arguments.
pub fn hook_as(ns: &Netns, socket: &Path, vars: &[(&str, &str)], who: Who) -> HookResult {
    let mut line = String::new();
    for (k, v) in vars {
        line.push_str(&format!("{k}={} ", shell_quote(v)));
    }
    line.push_str(&format!(
        "VPNFW_SOCKET={} {} 2>&1",
        shell_quote(&socket.to_string_lossy()),
        BIN
    ));
    let mut cmd = ns.cmd("env");
    cmd.arg("-i");
    match who {
        Who::Portal => {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        Who::Stranger => {
            cmd.args(["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]);
        }
        Who::Root => {}
    }
    cmd.args(["/bin/sh", "-c", &line]);
    let out = cmd.output().expect("run hook");
    HookResult {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The variables of a connect as the portal sends them.
pub fn connect_vars<'a>(
    profile: &'a str,
    conn: &'a str,
    ip4: &'a str,
    ip6: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("VPN_EVENT", "C"),
        ("VPN_USER_ID", "alice@example.org"),
        ("VPN_PROFILE_ID", profile),
        ("VPN_CONNECTION_ID", conn),
        ("VPN_IP_FOUR", ip4),
        ("VPN_IP_SIX", ip6),
        ("VPN_PROTO", "openvpn"),
        ("VPN_ORIGINATING_IP", "192.0.2.10"),
    ]
}

pub fn disconnect_vars<'a>(
    profile: &'a str,
    conn: &'a str,
    ip4: &'a str,
    ip6: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("VPN_EVENT", "D"),
        ("VPN_USER_ID", "alice@example.org"),
        ("VPN_PROFILE_ID", profile),
        ("VPN_CONNECTION_ID", conn),
        ("VPN_IP_FOUR", ip4),
        ("VPN_IP_SIX", ip6),
        ("VPN_PROTO", "openvpn"),
        ("VPN_BYTES_IN", "1234"),
        ("VPN_BYTES_OUT", "5678"),
    ]
}

pub fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter()
        .map(|s| s.parse().expect("test address"))
        .collect()
}

pub const STAFF: &str =
    "[[profile]]\nid = \"staff\"\nprefixes = [\"10.10.0.0/16\", \"fd10::/64\"]\n";
