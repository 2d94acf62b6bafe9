//! The portal's own database (vpn-user-portal, SQLite) as a second source of truth.
//!
//! WireGuard sessions start when a configuration is created, and the portal may delete
//! or expire configurations without firing the hook (DESIGN.md §2). Reconcile reads
//! `wg_peers` read-only to end sessions whose peer is gone and to recover peers whose
//! connect event was lost. Anything unexpected (missing file, lock, unknown schema)
//! is a warning and reconcile falls back to the store alone.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::event::{ConnectionId, ProfileId, UserId};
use crate::session::SessionKey;

/// One live WireGuard configuration as the portal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub profile: ProfileId,
    pub public_key: ConnectionId,
    pub user_id: UserId,
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
}

impl WgPeer {
    pub fn key(&self) -> SessionKey {
        SessionKey {
            profile: self.profile.clone(),
            conn_id: self.public_key.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("cannot open the portal database {path} read-only: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "cannot read wg_peers from the portal database {path} (unknown schema or locked?): {source}"
    )]
    Query {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// Peers that are live at `now` (unix seconds), keyed like sessions. Rows that do not
/// validate (a profile id or key vpnfw would refuse) are skipped and counted.
pub fn live_peers(
    path: &Path,
    now: i64,
) -> Result<(HashMap<SessionKey, WgPeer>, usize), PortalError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| PortalError::Open {
        path: path.into(),
        source,
    })?;
    let query_err = |source| PortalError::Query {
        path: path.into(),
        source,
    };
    conn.busy_timeout(Duration::from_millis(500))
        .map_err(query_err)?;
    let mut stmt = conn
        .prepare(
            "SELECT profile_id, public_key, ip_four, ip_six, expires_at, user_id FROM wg_peers",
        )
        .map_err(query_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(query_err)?;
    let mut peers = HashMap::new();
    let mut skipped = 0;
    for row in rows {
        let (profile, key, ip4, ip6, expires, user) = row.map_err(query_err)?;
        if expires
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| t <= now)
        {
            continue;
        }
        let peer = (|| {
            Some(WgPeer {
                profile: ProfileId::parse(&profile).ok()?,
                public_key: ConnectionId::parse(&key).ok()?,
                user_id: UserId::parse(&user).ok()?,
                ip4: ip4.as_deref().and_then(|a| a.parse().ok()),
                ip6: ip6.as_deref().and_then(|a| a.parse().ok()),
            })
        })();
        match peer {
            Some(p) if p.ip4.is_some() || p.ip6.is_some() => {
                peers.insert(p.key(), p);
            }
            _ => skipped += 1,
        }
    }
    Ok((peers, skipped))
}

/// The portal writes `DateTimeImmutable::ATOM` ("2026-12-05T10:00:00+00:00"); accept
/// SQLite's "2026-12-05 10:00:00" (UTC) too.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "CREATE TABLE wg_peers (
        node_number INTEGER NOT NULL DEFAULT 0, profile_id TEXT NOT NULL,
        display_name TEXT NOT NULL, public_key TEXT NOT NULL UNIQUE,
        ip_four TEXT NOT NULL, ip_six TEXT NOT NULL, created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL, auth_key TEXT, user_id TEXT NOT NULL)";

    fn db(rows: &[(&str, &str, &str, &str, &str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(SCHEMA).expect("schema");
        for (p, k, a4, a6, exp, u) in rows {
            conn.execute(
                "INSERT INTO wg_peers (profile_id, display_name, public_key, ip_four, ip_six, created_at, expires_at, user_id)
                 VALUES (?1, 'x', ?2, ?3, ?4, '2026-01-01T00:00:00+00:00', ?5, ?6)",
                rusqlite::params![p, k, a4, a6, exp, u],
            )
            .expect("insert");
        }
        (dir, path)
    }

    const KEY_A: &str = "aGVsbG8gd29ybGQgdGhpcyBpcyBhIHRlc3Qga2V5IQ=";
    const KEY_B: &str = "YW5vdGhlciB0ZXN0IGtleSBmb3IgdnBuZnctdGVzdHM=";

    #[test]
    fn expired_peers_are_not_live() {
        let now = parse_time("2026-12-05T10:00:00+00:00").expect("time");
        let (_d, path) = db(&[
            (
                "staff",
                KEY_A,
                "10.10.0.2",
                "fd10::2",
                "2027-01-01T00:00:00+00:00",
                "alice",
            ),
            (
                "staff",
                KEY_B,
                "10.10.0.3",
                "fd10::3",
                "2026-12-05T09:59:59+00:00",
                "bob",
            ),
        ]);
        let (peers, skipped) = live_peers(&path, now).expect("read");
        assert_eq!(skipped, 0);
        assert_eq!(peers.len(), 1);
        let p = peers.values().next().expect("one");
        assert_eq!(p.public_key.as_str(), KEY_A);
        assert_eq!(p.ip4, Some("10.10.0.2".parse().expect("ip")));
    }

    #[test]
    fn invalid_rows_are_skipped() {
        let (_d, path) = db(&[(
            "Bad Profile",
            KEY_A,
            "10.10.0.2",
            "fd10::2",
            "2099-01-01 00:00:00",
            "u",
        )]);
        let (peers, skipped) = live_peers(&path, 0).expect("read");
        assert!(peers.is_empty());
        assert_eq!(skipped, 1);
    }

    #[test]
    fn unknown_schema_and_missing_file_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(live_peers(&dir.path().join("absent.sqlite"), 0).is_err());
        let path = dir.path().join("other.sqlite");
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE wg_peers (x TEXT)"))
            .expect("create");
        assert!(matches!(
            live_peers(&path, 0),
            Err(PortalError::Query { .. })
        ));
    }

    #[test]
    fn time_formats() {
        assert_eq!(parse_time("1970-01-01T00:01:00+00:00"), Some(60));
        assert_eq!(parse_time("1970-01-01T01:01:00+01:00"), Some(60));
        assert_eq!(parse_time("1970-01-01 00:01:00"), Some(60));
        assert_eq!(parse_time("yesterday"), None);
    }
}
