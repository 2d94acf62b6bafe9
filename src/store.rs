//! The durable session store: SQLite (WAL, synchronous=FULL) in `/var/lib/vpnfw/`.
//!
//! A thin layer over rusqlite: the SQL lives next to the Rust that runs it. The file
//! can be inspected with `sqlite3 /var/lib/vpnfw/state.db 'select * from sessions'`.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use crate::event::{ConnectionId, ProfileId, Proto, UserId};
use crate::nft::Family;
use crate::session::{Session, SessionKey};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    profile  TEXT NOT NULL,
    conn_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    proto    TEXT NOT NULL CHECK (proto IN ('openvpn', 'wireguard')),
    ip4      TEXT,
    ip6      TEXT,
    set4     TEXT NOT NULL,
    set6     TEXT NOT NULL,
    since    INTEGER NOT NULL,
    boot_id  TEXT NOT NULL,
    PRIMARY KEY (profile, conn_id)
) WITHOUT ROWID;
-- Every set vpnfw has ever written to, so reconcile also cleans sets of profiles
-- that are no longer configured.
CREATE TABLE IF NOT EXISTS managed_sets (
    name    TEXT PRIMARY KEY,
    family  TEXT NOT NULL CHECK (family IN ('v4', 'v6'))
) WITHOUT ROWID;
-- The store is the only copy of the sessions (the daemon keeps none in memory):
-- these answer 'who else holds this address' and 'how many sessions has this user'
-- in O(log n), and give reconcile each set's addresses in order.
CREATE INDEX IF NOT EXISTS sessions_ip4 ON sessions (set4, ip4) WHERE ip4 IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_ip6 ON sessions (set6, ip6) WHERE ip6 IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the session store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "session store {path} has schema version {found}, this vpnfw knows {SCHEMA_VERSION}: upgrade vpnfw or move the file away"
    )]
    Schema { path: PathBuf, found: i64 },
    #[error("session store: {0} (is the disk full or read-only?)")]
    Sql(#[from] rusqlite::Error),
    #[error("session store unavailable after an earlier error")]
    Unavailable,
}

/// A stored row that does not validate (edited by hand, or from a future version).
#[derive(Debug)]
pub struct BadRow {
    pub profile: String,
    pub conn_id: String,
    pub problem: String,
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating when missing) the store; the directory is created 0700 and the
    /// database file made 0600: it names users.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        crate::paths::create_parent(path, 0o700).map_err(|source| StoreError::CreateDir {
            path: path.into(),
            source,
        })?;
        let open_err = |source| StoreError::Open {
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // Best effort: the file may be owned by someone else on a read-only mount.
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(open_err)?;
        // WAL: readers (sqlite3, vpnfw status) never block the writer. FULL: a
        // transaction the daemon answered for survives power loss, at ~0.1 ms fsync.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path: path.into(),
                found: version,
            });
        }
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        Ok(Store { conn })
    }

    /// Calls `f` with every stored session, or with the problem of a row that does not
    /// validate. Streams: memory does not grow with the number of sessions.
    pub fn for_each_session(
        &self,
        mut f: impl FnMut(Result<Session, BadRow>),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM sessions"))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(RawRow::read(r)?.validate());
        }
        Ok(())
    }

    /// Up to `limit` sessions in (profile, connection id) order; invalid rows skipped.
    pub fn first_sessions(&self, limit: usize) -> Result<Vec<Session>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sessions ORDER BY profile, conn_id LIMIT ?1"
        ))?;
        let mut rows = stmt.query(params![limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            if let Ok(s) = RawRow::read(r)?.validate() {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// One session; `Some(Err)` for a row that does not validate.
    pub fn session(&self, key: &SessionKey) -> Result<Option<Result<Session, BadRow>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sessions WHERE profile = ?1 AND conn_id = ?2"
        ))?;
        let mut rows = stmt.query(params![key.profile.as_str(), key.conn_id.as_str()])?;
        match rows.next()? {
            Some(r) => Ok(Some(RawRow::read(r)?.validate())),
            None => Ok(None),
        }
    }

    /// Keys of the sessions that hold `addr` in `set` (index lookup).
    pub fn holders(&self, set: &str, addr: IpAddr) -> Result<Vec<(String, String)>, StoreError> {
        let sql = match addr {
            IpAddr::V4(_) => {
                "SELECT profile, conn_id FROM sessions WHERE set4 = ?1 AND ip4 = ?2 AND ip4 IS NOT NULL"
            }
            IpAddr::V6(_) => {
                "SELECT profile, conn_id FROM sessions WHERE set6 = ?1 AND ip6 = ?2 AND ip6 IS NOT NULL"
            }
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![set, addr.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keys of a user's sessions (index lookup).
    pub fn user_sessions(&self, user: &UserId) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT profile, conn_id FROM sessions WHERE user_id = ?1")?;
        let rows = stmt.query_map(params![user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stored sessions per profile.
    pub fn profile_counts(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT profile, COUNT(*) FROM sessions GROUP BY profile")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets named by stored sessions that hold an address of that family.
    pub fn session_sets(&self) -> Result<Vec<(String, Family)>, StoreError> {
        let mut out = Vec::new();
        for (sql, family) in [
            (
                "SELECT DISTINCT set4 FROM sessions WHERE ip4 IS NOT NULL",
                Family::V4,
            ),
            (
                "SELECT DISTINCT set6 FROM sessions WHERE ip6 IS NOT NULL",
                Family::V6,
            ),
        ] {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            for name in rows {
                out.push((name?, family));
            }
        }
        Ok(out)
    }

    /// Streams the addresses of one family that sessions hold, with their holder:
    /// of one set (`Some`) or of every set (`None`), in address-text order per set.
    /// Rows whose address does not parse are skipped (startup logs them).
    pub fn for_each_holding<E: From<StoreError>>(
        &self,
        family: Family,
        set: Option<&str>,
        mut f: impl FnMut(Holding<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let sql = StoreError::from;
        let (col_set, col_ip) = match family {
            Family::V4 => ("set4", "ip4"),
            Family::V6 => ("set6", "ip6"),
        };
        let filter = if set.is_some() {
            format!("{col_set} = ?1 AND")
        } else {
            String::new()
        };
        let query = format!(
            "SELECT {col_set}, {col_ip}, profile, conn_id, user_id FROM sessions
             WHERE {filter} {col_ip} IS NOT NULL ORDER BY {col_set}, {col_ip}"
        );
        let mut stmt = self.conn.prepare_cached(&query).map_err(sql)?;
        let mut rows = match set {
            Some(s) => stmt.query(params![s]),
            None => stmt.query([]),
        }
        .map_err(sql)?;
        while let Some(r) = rows.next().map_err(sql)? {
            let text = |i| r.get_ref(i).map(|v| v.as_str().unwrap_or("")).map_err(sql);
            let Ok(addr) = text(1)?.parse::<IpAddr>() else {
                continue;
            };
            if Family::of(addr) != family {
                continue;
            }
            f(Holding {
                set: text(0)?,
                addr,
                profile: text(2)?,
                conn_id: text(3)?,
                user_id: text(4)?,
            })?;
        }
        Ok(())
    }

    /// Ends OpenVPN sessions of other boots (their tunnels died with the boot) and
    /// counts the WireGuard sessions of other boots, which stay. Returns (ended, kept).
    pub fn end_other_boots(&mut self, boot_id: &str) -> Result<(usize, usize), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ended = tx.execute(
            "DELETE FROM sessions WHERE boot_id != ?1 AND proto = 'openvpn'",
            params![boot_id],
        )?;
        let kept: i64 = tx.query_row(
            "SELECT COUNT(*) FROM sessions WHERE boot_id != ?1 AND proto = 'wireguard'",
            params![boot_id],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok((ended, kept as usize))
    }

    /// Keys of the stored WireGuard sessions.
    pub fn wireguard_sessions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT profile, conn_id FROM sessions WHERE proto = 'wireguard'")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn managed_sets(&self) -> Result<Vec<(String, Family)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, family FROM managed_sets ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, fam) = row?;
            let family = if fam == "v6" { Family::V6 } else { Family::V4 };
            out.push((name, family));
        }
        Ok(out)
    }

    /// Records sets vpnfw writes to; committed on its own, before the first element
    /// goes in, so a crash can never leave an element in a set reconcile won't visit.
    pub fn add_managed_sets(&mut self, sets: &[(String, Family)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO managed_sets (name, family) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET family = excluded.family",
            )?;
            for (name, family) in sets {
                stmt.execute(params![name, family_str(*family)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Starts a write transaction. Dropping it without `commit` rolls back.
    pub fn begin(&mut self) -> Result<StoreTxn<'_>, StoreError> {
        Ok(StoreTxn {
            tx: self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?,
        })
    }
}

/// One write transaction: upserts and deletes, then one commit (one fsync).
pub struct StoreTxn<'a> {
    tx: Transaction<'a>,
}

impl StoreTxn<'_> {
    pub fn upsert(&self, s: &Session) -> Result<(), StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO sessions (profile, conn_id, user_id, proto, ip4, ip6, set4, set6, since, boot_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (profile, conn_id) DO UPDATE SET
                user_id = excluded.user_id, proto = excluded.proto,
                ip4 = excluded.ip4, ip6 = excluded.ip6,
                set4 = excluded.set4, set6 = excluded.set6,
                since = excluded.since, boot_id = excluded.boot_id",
        )?;
        stmt.execute(params![
            s.profile.as_str(),
            s.conn_id.as_str(),
            s.user_id.as_str(),
            s.proto.as_str(),
            s.ip4.map(|a| a.to_string()),
            s.ip6.map(|a| a.to_string()),
            s.set4,
            s.set6,
            s.since,
            s.boot_id,
        ])?;
        Ok(())
    }

    pub fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM sessions WHERE profile = ?1 AND conn_id = ?2")?;
        stmt.execute(params![key.profile.as_str(), key.conn_id.as_str()])?;
        Ok(())
    }

    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }
}

fn family_str(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

const COLUMNS: &str = "profile, conn_id, user_id, proto, ip4, ip6, set4, set6, since, boot_id";

/// One address a session holds, borrowed from the row being read.
pub struct Holding<'r> {
    pub set: &'r str,
    pub addr: IpAddr,
    pub profile: &'r str,
    pub conn_id: &'r str,
    pub user_id: &'r str,
}

struct RawRow {
    profile: String,
    conn_id: String,
    user_id: String,
    proto: String,
    ip4: Option<String>,
    ip6: Option<String>,
    set4: String,
    set6: String,
    since: i64,
    boot_id: String,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> Result<RawRow, rusqlite::Error> {
        Ok(RawRow {
            profile: r.get(0)?,
            conn_id: r.get(1)?,
            user_id: r.get(2)?,
            proto: r.get(3)?,
            ip4: r.get(4)?,
            ip6: r.get(5)?,
            set4: r.get(6)?,
            set6: r.get(7)?,
            since: r.get(8)?,
            boot_id: r.get(9)?,
        })
    }

    fn validate(self) -> Result<Session, BadRow> {
        let (profile, conn_id) = (self.profile.clone(), self.conn_id.clone());
        self.into_session().map_err(|problem| BadRow {
            profile,
            conn_id,
            problem,
        })
    }

    fn into_session(self) -> Result<Session, String> {
        let proto = match self.proto.as_str() {
            "openvpn" => Proto::OpenVpn,
            "wireguard" => Proto::WireGuard,
            other => return Err(format!("unknown proto {other:?}")),
        };
        let ip4 = match self.ip4.as_deref() {
            None | Some("") => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|_| format!("ip4 {a:?} is not an IPv4 address"))?,
            ),
        };
        let ip6 = match self.ip6.as_deref() {
            None | Some("") => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|_| format!("ip6 {a:?} is not an IPv6 address"))?,
            ),
        };
        Ok(Session {
            profile: ProfileId::parse(&self.profile).map_err(|e| e.to_string())?,
            conn_id: ConnectionId::parse(&self.conn_id).map_err(|e| e.to_string())?,
            user_id: UserId::parse(&self.user_id).map_err(|e| e.to_string())?,
            proto,
            ip4,
            ip6,
            set4: self.set4,
            set6: self.set6,
            since: self.since,
            boot_id: self.boot_id,
        })
    }
}
