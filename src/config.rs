//! `/etc/vpnfw/config.toml`: every key, its default, and validation in one place.
//!
//! The shipped example (`packaging/config.toml`) documents the same defaults.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::event::ProfileId;
use crate::nft::Family;

pub const DEFAULT_CONFIG: &str = "/etc/vpnfw/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/vpnfw/vpnfw.sock";
pub const DEFAULT_STORE: &str = "/var/lib/vpnfw/state.db";
pub const DEFAULT_TABLE: &str = "vpnfw";
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nftables: NftablesConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub portal: PortalConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default, rename = "profile")]
    pub profiles: Vec<ProfileConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    /// Delete the conntrack entries of an address that leaves the sets, so that
    /// established flows end with the session.
    pub flush_on_disconnect: bool,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            flush_on_disconnect: true,
        }
    }
}

/// The Prometheus endpoint. Unset: off.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `address:port` to serve `GET /metrics` on, e.g. "127.0.0.1:9796".
    pub listen: Option<String>,
}

impl MetricsConfig {
    pub fn listen(&self) -> Result<Option<std::net::SocketAddr>, String> {
        match &self.listen {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                format!(
                    "[metrics] listen = {text:?} is not an address:port, e.g. \"127.0.0.1:9796\" or \"[::1]:9796\""
                )
            }),
        }
    }
}

/// Caps on live sessions; a connect beyond one is refused. Unset: no cap.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_sessions_per_user: Option<u32>,
    pub max_sessions_per_profile: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// vpn-user-portal's SQLite database, read-only, cross-checked at reconcile.
    /// Unset: the store alone is the truth.
    pub database: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Periodic reconcile, e.g. "30s", "5m", "1h". Unset: only at startup, on command
    /// and when the table changes.
    pub interval: Option<String>,
    /// Reconcile when someone else changes the table (a ruleset reload).
    pub watch: bool,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            interval: None,
            watch: true,
        }
    }
}

impl ReconcileConfig {
    pub fn interval(&self) -> Result<Option<Duration>, String> {
        self.interval.as_deref().map(parse_duration).transpose()
    }
}

/// "90s", "5m", "1h": a whole number and one unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like \"30s\", \"5m\" or \"1h\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(format!("{s:?}: the interval must be at least 1s"));
    }
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NftablesConfig {
    /// Table name; the family is always `inet`.
    pub table: String,
    /// Create the table and sets that are missing.
    pub create: bool,
    /// Also keep the verdict maps `vpnfw_dispatch_v4` / `vpnfw_dispatch_v6`
    /// (`<address> : jump <profile>`) in step with the sets.
    pub dispatch_map: bool,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            table: DEFAULT_TABLE.into(),
            create: true,
            dispatch_map: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Where the current boot id is read from (tests point this at a file).
    pub boot_id_file: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: DEFAULT_STORE.into(),
            boot_id_file: DEFAULT_BOOT_ID_FILE.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// Group that owns the socket (mode 0660) and whose members may send events.
    /// Unset: only root and the daemon's own user may.
    pub group: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: DEFAULT_SOCKET.into(),
            group: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub id: ProfileId,
    /// When non-empty, addresses outside these prefixes are refused.
    #[serde(default)]
    pub prefixes: Vec<IpNetwork>,
    pub ipv4_set: Option<String>,
    pub ipv6_set: Option<String>,
}

/// Where a profile's addresses go and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSets {
    pub set4: String,
    pub set6: String,
    /// Empty: any address is accepted (unconfigured profile, or no prefixes listed).
    pub prefixes: Vec<IpNetwork>,
    /// Whether the profile appears in the config.
    pub configured: bool,
}

impl ProfileSets {
    /// Refuses an address outside the profile's prefixes (when it lists any).
    pub fn admits(&self, addr: IpAddr) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| p.contains(addr))
    }

    pub fn set_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.set4,
            Family::V6 => &self.set6,
        }
    }
}

/// nft object names: what `nft` itself accepts unquoted, bounded.
fn valid_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_object_name(&self.nftables.table) {
            return Err(format!(
                "[nftables] table = {:?} is not a valid nft table name (letters, digits, _ and -, at most 64 bytes)",
                self.nftables.table
            ));
        }
        self.reconcile
            .interval()
            .map_err(|e| format!("[reconcile] interval = {e}"))?;
        self.metrics.listen()?;
        let mut ids = HashSet::new();
        let mut sets = HashSet::new();
        for p in &self.profiles {
            if !ids.insert(p.id.clone()) {
                return Err(format!("profile {:?} is configured twice", p.id.as_str()));
            }
            let s = self.sets_for(&p.id);
            for (name, fam) in [(&s.set4, "ipv4_set"), (&s.set6, "ipv6_set")] {
                if !valid_object_name(name) {
                    return Err(format!(
                        "profile {:?}: {fam} = {name:?} is not a valid nft set name",
                        p.id.as_str()
                    ));
                }
                if !sets.insert(name.clone()) {
                    return Err(format!(
                        "profile {:?}: set {name:?} is used twice; every profile needs its own sets",
                        p.id.as_str()
                    ));
                }
            }
            if s.set4 == s.set6 {
                return Err(format!(
                    "profile {:?}: ipv4_set and ipv6_set must differ",
                    p.id.as_str()
                ));
            }
        }
        Ok(())
    }

    pub fn profile(&self, id: &ProfileId) -> Option<&ProfileConfig> {
        self.profiles.iter().find(|p| &p.id == id)
    }

    /// The sets and prefixes of a profile; unconfigured profiles get `<id>_v4`/`<id>_v6`.
    pub fn sets_for(&self, id: &ProfileId) -> ProfileSets {
        match self.profile(id) {
            Some(p) => ProfileSets {
                set4: p.ipv4_set.clone().unwrap_or_else(|| format!("{id}_v4")),
                set6: p.ipv6_set.clone().unwrap_or_else(|| format!("{id}_v6")),
                prefixes: p.prefixes.clone(),
                configured: true,
            },
            None => ProfileSets {
                set4: format!("{id}_v4"),
                set6: format!("{id}_v6"),
                prefixes: Vec::new(),
                configured: false,
            },
        }
    }

    /// Every set of every configured profile, with its family.
    pub fn configured_sets(&self) -> Vec<(String, Family)> {
        let mut out = Vec::new();
        for p in &self.profiles {
            let s = self.sets_for(&p.id);
            out.push((s.set4, Family::V4));
            out.push((s.set6, Family::V6));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn empty_config_gets_defaults() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.nftables.table, "vpnfw");
        assert!(c.nftables.create);
        assert_eq!(c.server.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.store.path, PathBuf::from(DEFAULT_STORE));
        assert!(c.profiles.is_empty());
        assert_eq!(c.reconcile.interval(), Ok(None));
        assert!(c.reconcile.watch);
    }

    #[test]
    fn metrics_listen_is_an_address_and_port() {
        assert_eq!(parse("").expect("default").metrics.listen(), Ok(None));
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9796\"\n").expect("valid");
        assert_eq!(
            c.metrics.listen(),
            Ok(Some("127.0.0.1:9796".parse().expect("addr")))
        );
        for bad in ["localhost:9796", "127.0.0.1", "9796", ""] {
            let err = parse(&format!("[metrics]\nlisten = {bad:?}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("[metrics] listen"), "{bad}: {err}");
        }
    }

    #[test]
    fn reconcile_interval_units() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("2h", 7200)] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn profile_defaults_and_overrides() {
        let c = parse(
            r#"
            [[profile]]
            id = "staff"
            prefixes = ["10.10.0.0/24", "fd10::/64"]
            [[profile]]
            id = "students"
            ipv4_set = "stud4"
            ipv6_set = "stud6"
            "#,
        )
        .expect("valid");
        let staff = c.sets_for(&ProfileId::parse("staff").expect("id"));
        assert_eq!(
            (staff.set4.as_str(), staff.set6.as_str()),
            ("staff_v4", "staff_v6")
        );
        assert!(staff.admits("10.10.0.5".parse().expect("ip")));
        assert!(!staff.admits("10.11.0.5".parse().expect("ip")));
        assert!(staff.admits("fd10::5".parse().expect("ip")));
        assert!(!staff.admits("fd11::5".parse().expect("ip")));
        let stud = c.sets_for(&ProfileId::parse("students").expect("id"));
        assert_eq!((stud.set4.as_str(), stud.set6.as_str()), ("stud4", "stud6"));
        assert!(stud.admits("192.0.2.1".parse().expect("ip")));
        let other = c.sets_for(&ProfileId::parse("guests").expect("id"));
        assert!(!other.configured);
        assert_eq!(other.set4, "guests_v4");
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            "[nftables]\ntable = \"a b\"",
            "[nftables]\ntable = \"x;flush ruleset\"",
            "[[profile]]\nid = \"Staff\"",
            "[[profile]]\nid = \"123\"",
            "[[profile]]\nid = \"a\"\nipv4_set = \"x y\"",
            "[[profile]]\nid = \"a\"\n[[profile]]\nid = \"a\"",
            "[[profile]]\nid = \"a\"\nipv4_set = \"s\"\nipv6_set = \"s\"",
            "[[profile]]\nid = \"a\"\nipv4_set = \"b_v4\"\n[[profile]]\nid = \"b\"",
            "[[profile]]\nid = \"a\"\nprefixes = [\"10.0.0.0/33\"]",
            "[nftables]\ntabel = \"typo\"",
            "[server]\nsocket = 5",
            "[reconcile]\ninterval = \"5\"",
            "[reconcile]\ninterval = \"0s\"",
            "[reconcile]\ninterval = \"5 m\"",
            "[reconcile]\ninterval = \"-5m\"",
        ] {
            assert!(parse(bad).is_err(), "accepted bad config: {bad}");
        }
    }
}
