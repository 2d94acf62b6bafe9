//! The single writer: owns the netlink socket and the store (the only copy of the sessions).
//!
//! Requests that arrive together are applied as one plan, one store
//! transaction and one netlink batch; each is answered only after both committed.
//! If a coalesced batch fails, every request is retried on its own so one bad
//! request cannot fail its neighbours.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::ctflush::CtFlusher;
use crate::config::Config;
use crate::event::{Event, EventKind, ProfileId, Proto, UserId};
use crate::metrics::Metrics;
use crate::nft::{Conntrack, Family, KeyType, Nft, NftError, SetSpec};
use crate::portal;
use crate::protocol::{ReconcileReport, Response, SetSize, StatusReport};
use crate::reconcile::{ElemAdd, ElemRef, Plan, SetDiff, Summary};
use crate::session::{self, Batch, Change, Edit, Session, SessionKey, View};
use crate::store::{Store, StoreError};

/// The dispatch verdict maps, one per family (`[nftables] dispatch_map`).
const DISPATCH_V4: &str = "vpnfw_dispatch_v4";
const DISPATCH_V6: &str = "vpnfw_dispatch_v6";

fn dispatch_map(family: Family) -> &'static str {
    match family {
        Family::V4 => DISPATCH_V4,
        Family::V6 => DISPATCH_V6,
    }
}

fn is_dispatch_map(set: &str) -> bool {
    set == DISPATCH_V4 || set == DISPATCH_V6
}

/// Elements a reconcile report lists (the summary always has the full counts).
const REPORT_LIST: usize = 1000;

/// Most requests one batch takes; bounds the latency of the first one.
const MAX_BATCH: usize = 4096;

/// Most element changes one reconcile batch carries: bounds the daemon's memory
/// (about 100 bytes per element in the batch) whatever the number of sessions.
const RECONCILE_CHUNK: usize = 8192;

/// Sessions `status` lists (it always has the full count).
const STATUS_LIST: usize = 1000;

/// Work for the writer, with the channel its answer goes to.
pub struct Job {
    pub work: Work,
    pub reply: SyncSender<Response>,
}

pub enum Work {
    Event(Event),
    Status,
    Reconcile {
        dry_run: bool,
    },
    /// SIGHUP: switch to a new, already validated config, then reconcile.
    Reload(Box<Config>),
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "set inet {table} {set} has type {found}, expected {expected}: fix the set declaration in your ruleset"
    )]
    WrongType {
        table: String,
        set: String,
        found: String,
        expected: &'static str,
    },
}

/// Why one event was not applied.
enum Rejection {
    Refused(String),
    Failed(String),
}

pub struct Writer {
    config: Config,
    /// The only copy of the sessions: nothing per session is kept in memory.
    store: Store,
    nft: Nft,
    /// Live sessions per profile (few entries), for `[limits]` and `status`.
    profiles: HashMap<ProfileId, u32>,
    /// Store rows that do not validate (hand edits): (profile, conn_id) as stored.
    /// They are logged at start and treated as absent.
    ignored: HashSet<(String, String)>,
    boot_id: String,
    /// Sets known to exist with the right type and recorded in the store.
    ready_sets: HashSet<String>,
    /// Events answered since start.
    events: u64,
    /// Ended sessions whose store delete failed (disk full, read-only): hidden from
    /// the store's view and retried with the next store transaction. Until then a
    /// restart would bring them back.
    unsynced: HashSet<SessionKey>,
    /// `[conntrack] flush_on_disconnect`: ctnetlink, opened at start, on its own thread.
    conntrack: Option<CtFlusher>,
    /// Addresses that left the sets in this batch: their flows are cut after the
    /// answers went out, so the hook never waits for it.
    removed: Vec<IpAddr>,
    /// `[metrics] listen`: what the Prometheus endpoint exports.
    metrics: Option<Arc<Metrics>>,
}

/// New sessions per user and per profile in the batch being prepared, so that a
/// batch cannot slip past a limit.
#[derive(Default)]
struct BatchCounts {
    users: HashMap<UserId, u32>,
    profiles: HashMap<ProfileId, u32>,
}

impl Writer {
    pub fn new(
        config: Config,
        store: Store,
        nft: Nft,
        boot_id: String,
    ) -> Result<Writer, WriterError> {
        let mut w = Writer {
            config,
            store,
            nft,
            profiles: HashMap::new(),
            ignored: HashSet::new(),
            boot_id,
            ready_sets: HashSet::new(),
            events: 0,
            unsynced: HashSet::new(),
            conntrack: None,
            removed: Vec::new(),
            metrics: None,
        };
        w.scan_store()?;
        Ok(w)
    }

    /// Reads every stored session once (streaming): counts them per profile and sets
    /// aside the rows that do not validate, with a handful of examples in the log.
    fn scan_store(&mut self) -> Result<(), WriterError> {
        let mut profiles: HashMap<ProfileId, u32> = HashMap::new();
        let mut ignored = HashSet::new();
        self.store.for_each_session(|row| match row {
            Ok(s) => *profiles.entry(s.profile).or_insert(0) += 1,
            Err(bad) => {
                if ignored.len() < 10 {
                    tracing::error!(
                        profile = %bad.profile,
                        conn_id = %bad.conn_id,
                        problem = %bad.problem,
                        "ignoring invalid store row; fix or delete it with sqlite3"
                    );
                }
                ignored.insert((bad.profile, bad.conn_id));
            }
        })?;
        if ignored.len() > 10 {
            tracing::error!(rows = ignored.len(), "invalid store rows ignored in all");
        }
        self.profiles = profiles;
        self.ignored = ignored;
        Ok(())
    }

    /// Records into `metrics` from now on (`[metrics] listen`).
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
        self.publish_sessions();
    }

    /// Live sessions per profile, for the metrics endpoint.
    fn publish_sessions(&self) {
        if let Some(m) = &self.metrics {
            m.sessions(self.profiles.iter().map(|(p, n)| (p.as_str(), *n)));
        }
    }

    /// The live sessions as the planner sees them: the store, minus rows that do not
    /// validate and sessions whose end the store has not recorded yet.
    fn view(&self) -> StoreView<'_> {
        StoreView {
            store: &self.store,
            unsynced: &self.unsynced,
            ignored: &self.ignored,
        }
    }

    /// Live sessions in all.
    fn session_count(&self) -> usize {
        self.profiles.values().map(|n| *n as usize).sum()
    }

    /// Ends OpenVPN sessions from an earlier boot: their tunnels died with it and no
    /// disconnect will ever come. WireGuard sessions stay: the portal's daemon-sync
    /// re-adds their peers after a reboot without firing connect (DESIGN.md §2).
    pub fn end_previous_boot(&mut self) -> Result<(), WriterError> {
        let (ended, kept) = self.store.end_other_boots(&self.boot_id)?;
        if ended > 0 {
            // The kernel side follows in the reconcile that runs next.
            self.scan_store()?;
        }
        if ended > 0 || kept > 0 {
            tracing::info!(
                openvpn_ended = ended,
                wireguard_kept = kept,
                "sessions from an earlier boot"
            );
        }
        Ok(())
    }

    /// Switches to `config` when only reloadable keys changed, then reconciles: new
    /// profiles, prefixes or set names take effect at once.
    fn reload(&mut self, config: Config) -> Response {
        if let Some(key) = restart_only_change(&self.config, &config) {
            let reason = format!(
                "{key} changed: that needs a restart (systemctl restart vpnfw); keeping the running config"
            );
            tracing::error!(reason = %reason, "config not reloaded");
            return Response::Refused { reason };
        }
        let old = std::mem::replace(&mut self.config, config);
        self.ready_sets.clear();
        if !self.config.conntrack.flush_on_disconnect {
            self.conntrack = None;
        } else if self.conntrack.is_none() {
            self.open_conntrack();
        }
        match self.reconcile(false) {
            Ok(report) => {
                tracing::info!(profiles = self.config.profiles.len(), "config reloaded");
                Response::Reconciled(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "reconcile with the new config failed; keeping the old one");
                self.config = old;
                self.ready_sets.clear();
                Response::Failed {
                    reason: e.to_string(),
                }
            }
        }
    }

    /// Port id of the writer's netlink socket: notifications it causes carry it.
    pub fn portid(&self) -> u32 {
        self.nft.portid()
    }

    fn table(&self) -> &str {
        &self.config.nftables.table
    }

    /// Serves jobs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.handle(jobs);
        }
    }

    fn handle(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let mut pending: Vec<(Edit, Event, SyncSender<Response>)> = Vec::new();
        let mut status = Vec::new();
        let mut counts = BatchCounts::default();
        for job in jobs {
            match job.work {
                Work::Status => status.push(job.reply),
                Work::Reconcile { dry_run } => {
                    let resp = match self.reconcile(dry_run) {
                        Ok(report) => Response::Reconciled(report),
                        Err(e) => {
                            tracing::error!(error = %e, "reconcile failed");
                            Response::Failed {
                                reason: e.to_string(),
                            }
                        }
                    };
                    let _ = job.reply.send(resp);
                }
                Work::Reload(config) => {
                    let resp = self.reload(*config);
                    let _ = job.reply.send(resp);
                }
                Work::Event(ev) => {
                    self.events += 1;
                    match self.prepare(&ev, &mut counts) {
                        Ok(edit) => pending.push((edit, ev, job.reply)),
                        Err(r) => {
                            answer_rejection(&ev, r, &job.reply, started, self.metrics.as_deref())
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            let n = pending.len();
            let edits = pending.iter().map(|(e, _, _)| e.clone()).collect();
            match self.commit(edits) {
                Ok(changes) => {
                    for ((_, ev, reply), change) in pending.into_iter().zip(changes) {
                        answer_applied(&ev, &change, &reply, started, self.metrics.as_deref());
                    }
                    tracing::debug!(events = n, "batch committed");
                }
                Err(e) if n > 1 => {
                    tracing::warn!(events = n, error = %e, "coalesced batch failed; applying its events one by one");
                    for (edit, ev, reply) in pending {
                        match self.commit(vec![edit]) {
                            Ok(changes) => {
                                if let Some(c) = changes.first() {
                                    answer_applied(
                                        &ev,
                                        c,
                                        &reply,
                                        started,
                                        self.metrics.as_deref(),
                                    );
                                }
                            }
                            Err(e) => answer_rejection(
                                &ev,
                                Rejection::Failed(e.to_string()),
                                &reply,
                                started,
                                self.metrics.as_deref(),
                            ),
                        }
                    }
                }
                Err(e) => {
                    for (_, ev, reply) in pending {
                        answer_rejection(
                            &ev,
                            Rejection::Failed(e.to_string()),
                            &reply,
                            started,
                            self.metrics.as_deref(),
                        );
                    }
                }
            }
        }
        for reply in status {
            let _ = reply.send(self.status());
        }
        self.publish_sessions();
        self.flush_conntrack();
    }

    /// Opens ctnetlink when `[conntrack] flush_on_disconnect` is on. Failing to is a
    /// warning: the sets still enforce the policy for new flows.
    pub fn open_conntrack(&mut self) {
        if !self.config.conntrack.flush_on_disconnect {
            return;
        }
        match Conntrack::open().and_then(|c| {
            CtFlusher::start(c).map_err(|source| NftError::Conntrack {
                what: "starting the conntrack cleanup thread".into(),
                source,
            })
        }) {
            Ok(c) => self.conntrack = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open ctnetlink; established flows survive disconnects")
            }
        }
    }

    /// Hands the addresses that left every set to the conntrack thread, which cuts
    /// their established flows (after the answers went out, off this thread).
    fn flush_conntrack(&mut self) {
        let removed = std::mem::take(&mut self.removed);
        if self.conntrack.is_none() || removed.is_empty() {
            return;
        }
        let view = self.view();
        let mut gone = Vec::new();
        let mut seen = HashSet::new();
        for addr in removed {
            // An address still held in another set (another profile) keeps its flows.
            let held = self.ready_sets.iter().any(|set| {
                view.holders(&ElemRef {
                    set: set.clone(),
                    addr,
                })
                .map_or(true, |h| !h.is_empty())
            });
            if seen.insert(addr) && !held {
                gone.push(addr);
            }
        }
        if let Some(ct) = self.conntrack.as_mut() {
            ct.queue(gone);
        }
    }

    /// Checks one event against the config and the kernel and turns it into an edit.
    fn prepare(&mut self, ev: &Event, counts: &mut BatchCounts) -> Result<Edit, Rejection> {
        let sets = self.config.sets_for(&ev.profile);
        if ev.kind == EventKind::Connect {
            self.check_limits(ev, counts)?;
        }
        match ev.kind {
            EventKind::Disconnect => Ok(Edit::Disconnect(SessionKey {
                profile: ev.profile.clone(),
                conn_id: ev.conn_id.clone(),
            })),
            EventKind::Connect => {
                let mut wanted = Vec::new();
                for (addr, family, var) in [
                    (ev.ip4.map(IpAddr::V4), Family::V4, "VPN_IP_FOUR"),
                    (ev.ip6.map(IpAddr::V6), Family::V6, "VPN_IP_SIX"),
                ] {
                    let Some(addr) = addr else { continue };
                    if !sets.admits(addr) {
                        let prefixes: Vec<String> =
                            sets.prefixes.iter().map(|p| p.to_string()).collect();
                        return Err(Rejection::Refused(format!(
                            "{var} {addr} is outside the prefixes of profile {} ({})",
                            ev.profile,
                            prefixes.join(", ")
                        )));
                    }
                    wanted.push((sets.set_for(family).to_string(), family));
                    if self.config.nftables.dispatch_map {
                        wanted.push((dispatch_map(family).to_string(), family));
                    }
                }
                self.ensure_sets(&wanted)
                    .map_err(|e| Rejection::Failed(e.to_string()))?;
                Ok(Edit::Connect(Session {
                    profile: ev.profile.clone(),
                    conn_id: ev.conn_id.clone(),
                    user_id: ev.user_id.clone(),
                    proto: ev.proto,
                    ip4: ev.ip4,
                    ip6: ev.ip6,
                    set4: sets.set4,
                    set6: sets.set6,
                    since: unix_now(),
                    boot_id: self.boot_id.clone(),
                }))
            }
        }
    }

    /// `[limits]`: a new session beyond a cap is refused; a repeated connect of a live
    /// session is not new.
    fn check_limits(&self, ev: &Event, counts: &mut BatchCounts) -> Result<(), Rejection> {
        let limits = &self.config.limits;
        if limits.max_sessions_per_user.is_none() && limits.max_sessions_per_profile.is_none() {
            // No caps (the default): no store lookups on the hot path.
            return Ok(());
        }
        let key = SessionKey {
            profile: ev.profile.clone(),
            conn_id: ev.conn_id.clone(),
        };
        let view = self.view();
        let failed = |e: StoreError| Rejection::Failed(e.to_string());
        if view.get(&key).map_err(failed)?.is_some() {
            return Ok(());
        }
        if let Some(max) = limits.max_sessions_per_user {
            let live = self
                .store
                .user_sessions(&ev.user_id)
                .map_err(failed)?
                .into_iter()
                .filter(|(p, c)| !view.hidden(p, c))
                .count() as u32;
            let batch = counts.users.get(&ev.user_id).copied().unwrap_or(0);
            if live + batch >= max {
                return Err(Rejection::Refused(format!(
                    "user {} already has {} live sessions ([limits] max_sessions_per_user = {max})",
                    ev.user_id,
                    live + batch
                )));
            }
        }
        if let Some(max) = limits.max_sessions_per_profile {
            let live = self.profiles.get(&ev.profile).copied().unwrap_or(0);
            let batch = counts.profiles.get(&ev.profile).copied().unwrap_or(0);
            if live + batch >= max {
                return Err(Rejection::Refused(format!(
                    "profile {} already has {} live sessions ([limits] max_sessions_per_profile = {max})",
                    ev.profile,
                    live + batch
                )));
            }
        }
        *counts.users.entry(ev.user_id.clone()).or_insert(0) += 1;
        *counts.profiles.entry(ev.profile.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// Makes sure each set exists with the right type (creating it when allowed) and
    /// is recorded as managed. Cached: the hot path costs nothing once a set is known.
    fn ensure_sets(&mut self, wanted: &[(String, Family)]) -> Result<(), WriterError> {
        let missing: Vec<(String, Family)> = wanted
            .iter()
            .filter(|(s, _)| !self.ready_sets.contains(s))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let table = self.table().to_string();
        let listed = self.nft.list_sets(&table)?;
        if listed.is_none() && !self.config.nftables.create {
            return Err(NftError::TableMissing { table }.into());
        }
        let existing = listed.unwrap_or_default();
        let mut to_create = Vec::new();
        for (name, family) in &missing {
            match existing.iter().find(|s| &s.name == name) {
                Some(info) => check_type(&table, name, *family, info.key)?,
                None if self.config.nftables.create => to_create.push(SetSpec {
                    name: name.clone(),
                    family: *family,
                    verdict_map: is_dispatch_map(name),
                }),
                None => {
                    return Err(NftError::SetMissing {
                        table,
                        set: name.clone(),
                    }
                    .into());
                }
            }
        }
        if !to_create.is_empty() {
            self.nft.create(&table, &to_create)?;
            for s in &to_create {
                tracing::info!(table = %table, set = %s.name, r#type = s.family.nft_type(), "created set");
            }
        }
        self.store.add_managed_sets(&missing)?;
        self.ready_sets.extend(missing.into_iter().map(|(s, _)| s));
        Ok(())
    }

    /// Store and kernel in one step; both change or neither does.
    fn commit(&mut self, edits: Vec<Edit>) -> Result<Vec<Change>, WriterError> {
        let batch = session::play(&self.view(), edits)?;
        match self.persist(&batch) {
            Ok(()) => {
                self.removed.extend(batch.plan.dels.iter().map(|d| d.addr));
                if let Some(ct) = &self.conntrack {
                    ct.cancel(batch.plan.adds.iter().map(|a| a.addr));
                }
                self.committed(&batch);
                Ok(batch.changes)
            }
            Err(e) => {
                // The kernel may have lost a set under us (ruleset reload): look again next time.
                self.ready_sets.clear();
                Err(e)
            }
        }
    }

    /// Follows a batch the store committed: per-profile counts, and rows that were
    /// invalid but now hold a session written by this batch.
    fn committed(&mut self, batch: &Batch) {
        for c in &batch.changes {
            match c {
                Change::Inserted(k) => *self.profiles.entry(k.profile.clone()).or_insert(0) += 1,
                Change::Removed(old) => {
                    if let Some(n) = self.profiles.get_mut(&old.profile) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.profiles.remove(&old.profile);
                        }
                    }
                }
                Change::Replaced(_) | Change::Unchanged(_) | Change::Unknown(_) => {}
            }
        }
        if !self.ignored.is_empty() {
            for (k, _) in &batch.writes {
                self.ignored
                    .remove(&(k.profile.to_string(), k.conn_id.to_string()));
            }
        }
    }

    fn persist(&mut self, batch: &Batch) -> Result<(), WriterError> {
        let dispatched;
        let plan = if self.config.nftables.dispatch_map {
            dispatched = self.with_dispatch(&batch.plan);
            &dispatched
        } else {
            &batch.plan
        };
        let table = self.config.nftables.table.clone();
        if batch.writes.is_empty() {
            // Nothing to store; still re-assert the elements of repeated connects.
            self.nft.apply(&table, plan)?;
            return Ok(());
        }
        // With the store failing (disk full, read-only), connects fail closed, but
        // disconnects still take the addresses out of the kernel: access must end.
        let only_removals = batch.writes.iter().all(|(_, s)| s.is_none());
        let txn = match stage(&mut self.store, &batch.writes, &self.unsynced) {
            Ok(txn) => Some(txn),
            Err(e) if only_removals => {
                tracing::error!(error = %e, "session store failed: removing the addresses from the kernel anyway; the store still lists these sessions until it accepts writes again");
                None
            }
            Err(e) => return Err(e.into()),
        };
        // Kernel first, then the store commit: a crash in between leaves an element the
        // store does not explain, which startup reconcile removes; the hook got no
        // answer, so nothing it was told is lost.
        self.nft.apply(&table, plan)?;
        let committed = txn.map_or(Err(StoreError::Unavailable), |t| t.commit());
        match committed {
            Ok(()) => {
                self.unsynced.clear();
                Ok(())
            }
            Err(e) if only_removals => {
                if !matches!(e, StoreError::Unavailable) {
                    tracing::error!(error = %e, "session store commit failed after a disconnect; the kernel is updated, the store is not");
                }
                self.unsynced
                    .extend(batch.writes.iter().map(|(k, _)| k.clone()));
                Ok(())
            }
            Err(e) => {
                self.revert_kernel(plan);
                Err(e.into())
            }
        }
    }

    /// Store only; the caller's reconcile brings the kernel along.
    fn commit_sessions(&mut self, edits: Vec<Edit>) -> Result<(), WriterError> {
        if edits.is_empty() {
            return Ok(());
        }
        let batch = session::play(&self.view(), edits)?;
        stage(&mut self.store, &batch.writes, &self.unsynced)?.commit()?;
        self.unsynced.clear();
        self.committed(&batch);
        Ok(())
    }

    /// `[portal] database`: end WireGuard sessions whose peer is gone or expired, and
    /// start sessions for peers whose connect event never reached vpnfw.
    fn portal_edits(&self) -> Result<Vec<Edit>, WriterError> {
        let Some(path) = &self.config.portal.database else {
            return Ok(Vec::new());
        };
        let (peers, skipped) = match portal::live_peers(path, unix_now()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "portal database unusable; reconciling against the store alone");
                return Ok(Vec::new());
            }
        };
        if skipped > 0 {
            tracing::warn!(rows = skipped, "skipped wg_peers rows vpnfw cannot use");
        }
        let view = self.view();
        let mut edits = Vec::new();
        for (profile, conn_id) in self.store.wireguard_sessions()? {
            let Some(key) = parse_key(&profile, &conn_id) else {
                continue;
            };
            if peers.contains_key(&key) {
                continue;
            }
            if let Some(s) = view.get(&key)? {
                tracing::info!(profile = %s.profile, conn_id = %s.conn_id, user = %s.user_id, "ending WireGuard session: its peer is gone from the portal");
                edits.push(Edit::Disconnect(key));
            }
        }
        for (key, peer) in peers {
            if view.get(&key)?.is_some() {
                continue;
            }
            let sets = self.config.sets_for(&peer.profile);
            let outside = [peer.ip4.map(IpAddr::V4), peer.ip6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
                .find(|a| !sets.admits(*a));
            if let Some(addr) = outside {
                tracing::warn!(profile = %peer.profile, conn_id = %peer.public_key, %addr, "portal peer outside its profile's prefixes; not recovered");
                continue;
            }
            tracing::info!(profile = %peer.profile, conn_id = %peer.public_key, user = %peer.user_id, "recovering WireGuard session from the portal");
            edits.push(Edit::Connect(Session {
                profile: peer.profile,
                conn_id: peer.public_key,
                user_id: peer.user_id,
                proto: Proto::WireGuard,
                ip4: peer.ip4,
                ip6: peer.ip6,
                set4: sets.set4,
                set6: sets.set6,
                since: unix_now(),
                boot_id: self.boot_id.clone(),
            }));
        }
        Ok(edits)
    }

    /// The plan plus the matching dispatch-map changes: every address added to a
    /// profile's set gets `<address> : jump <profile>`, every address removed loses it.
    fn with_dispatch(&self, plan: &Plan) -> Plan {
        let mut out = plan.clone();
        for a in &plan.adds {
            if let Some(profile) = profile_of_set(&self.config, &a.set) {
                out.adds.push(ElemAdd {
                    set: dispatch_map(Family::of(a.addr)).to_string(),
                    addr: a.addr,
                    comment: a.comment.clone(),
                    jump: Some(profile),
                });
            }
        }
        for d in &plan.dels {
            out.dels.push(ElemRef {
                set: dispatch_map(Family::of(d.addr)).to_string(),
                addr: d.addr,
            });
        }
        out
    }

    /// Best effort after a failed store commit: put the touched elements back.
    fn revert_kernel(&mut self, plan: &Plan) {
        let mut undo = Plan::default();
        for a in &plan.adds {
            undo.dels.push(ElemRef {
                set: a.set.clone(),
                addr: a.addr,
            });
        }
        for d in &plan.dels {
            undo.adds.push(ElemAdd {
                set: d.set.clone(),
                addr: d.addr,
                comment: String::new(),
                jump: None,
            });
        }
        let table = self.config.nftables.table.clone();
        if let Err(e) = self.nft.apply(&table, &undo) {
            tracing::error!(error = %e, "could not revert the kernel after a failed store commit; run a reconcile");
        }
    }

    /// Every set reconcile looks after: configured, recorded in the store, and named by
    /// a live session (stored, or in `extra`: a dry run's portal corrections).
    fn managed_sets(
        &self,
        extra: &HashMap<SessionKey, Option<Session>>,
    ) -> Result<BTreeMap<String, Family>, WriterError> {
        let mut sets: BTreeMap<String, Family> = BTreeMap::new();
        for (name, fam) in self.config.configured_sets() {
            sets.insert(name, fam);
        }
        for (name, fam) in self.store.managed_sets()? {
            sets.entry(name).or_insert(fam);
        }
        if self.config.nftables.dispatch_map {
            sets.insert(DISPATCH_V4.to_string(), Family::V4);
            sets.insert(DISPATCH_V6.to_string(), Family::V6);
        }
        for (name, fam) in self.store.session_sets()? {
            sets.entry(name).or_insert(fam);
        }
        for s in extra.values().flatten() {
            if s.ip4.is_some() {
                sets.entry(s.set4.clone()).or_insert(Family::V4);
            }
            if s.ip6.is_some() {
                sets.entry(s.set6.clone()).or_insert(Family::V6);
            }
        }
        Ok(sets)
    }

    /// Makes the kernel sets equal to the live sessions. A dry run reports the same
    /// plan and changes nothing (not even missing sets).
    ///
    /// Streams: per set, the kernel's elements are dumped into a hash set, the store's
    /// addresses for that set are read in index order, and the changes go to the
    /// kernel in batches of at most [`RECONCILE_CHUNK`] elements. Memory is bounded by
    /// the largest set, not by the number of sessions; each batch is atomic, and a
    /// reconcile that stops half-way leaves sets that the next one completes.
    pub fn reconcile(&mut self, dry_run: bool) -> Result<ReconcileReport, WriterError> {
        let started = Instant::now();
        let table = self.table().to_string();
        let portal = self.portal_edits()?;
        let (ended, recovered) = count_edits(&portal);
        // A dry run plays the portal's corrections as an overlay; a real run commits
        // them to the store now and lets the diff below carry them into the kernel.
        let overlay: HashMap<SessionKey, Option<Session>> = if dry_run {
            session::play(&self.view(), portal)?
                .writes
                .into_iter()
                .collect()
        } else {
            self.commit_sessions(portal)?;
            HashMap::new()
        };
        let sets = self.managed_sets(&overlay)?;
        let existing = self.nft.list_sets(&table)?.unwrap_or_default();
        let mut to_create = Vec::new();
        let mut usable: Vec<(String, Family)> = Vec::new();
        for (name, family) in &sets {
            match existing.iter().find(|s| &s.name == name) {
                Some(info) => match check_type(&table, name, *family, info.key) {
                    Ok(()) => usable.push((name.clone(), *family)),
                    Err(e) => tracing::error!(error = %e, "skipping set"),
                },
                None if self.config.nftables.create => {
                    to_create.push(SetSpec {
                        name: name.clone(),
                        family: *family,
                        verdict_map: is_dispatch_map(name),
                    });
                    usable.push((name.clone(), *family));
                }
                None => tracing::error!(
                    table = %table,
                    set = %name,
                    "set not found: declare it in your ruleset or set [nftables] create = true; its sessions stay out of the kernel"
                ),
            }
        }
        if !to_create.is_empty() && !dry_run {
            self.nft.create(&table, &to_create)?;
        }
        let mut out = Chunks {
            table: table.clone(),
            dry_run,
            plan: Plan::default(),
            added: 0,
            deleted: 0,
            report_adds: Vec::new(),
            report_dels: Vec::new(),
        };
        let mut t_dump = std::time::Duration::ZERO;
        for (name, family) in &usable {
            let t = Instant::now();
            let actual: Vec<IpAddr> = if to_create.iter().any(|s| &s.name == name) {
                Vec::new()
            } else {
                let info = existing
                    .iter()
                    .find(|s| &s.name == name)
                    .cloned()
                    .ok_or_else(|| NftError::SetMissing {
                        table: table.clone(),
                        set: name.clone(),
                    })?;
                let contents = self.nft.dump_set(&table, &info)?;
                for (first, last) in &contents.ranges {
                    tracing::warn!(set = %name, %first, %last, "leaving a range vpnfw did not write");
                }
                contents.addrs
            };
            t_dump += t.elapsed();
            let dispatch = is_dispatch_map(name);
            let mut diff = SetDiff::new(actual);
            let mut want = |out: &mut Chunks,
                            nft: &mut Nft,
                            addr: IpAddr,
                            comment: &dyn Fn() -> String,
                            jump: Option<String>|
             -> Result<(), WriterError> {
                if !diff.want(addr) {
                    return Ok(());
                }
                out.plan.adds.push(ElemAdd {
                    set: name.clone(),
                    addr,
                    comment: comment(),
                    jump,
                });
                out.flush_if_full(nft)
            };
            let Writer {
                store,
                nft,
                config,
                unsynced,
                ignored,
                ..
            } = self;
            let view = StoreView {
                store,
                unsynced,
                ignored,
            };
            let filter =
                (!view.unsynced.is_empty() || !view.ignored.is_empty() || !overlay.is_empty())
                    .then_some(());
            store.for_each_holding(*family, (!dispatch).then_some(name.as_str()), |h| {
                if filter.is_some()
                    && (view.hidden(h.profile, h.conn_id)
                        || parse_key(h.profile, h.conn_id)
                            .is_some_and(|k| overlay.contains_key(&k)))
                {
                    return Ok(());
                }
                let jump = if dispatch {
                    match profile_of_set(config, h.set) {
                        Some(p) => Some(p),
                        None => return Ok(()),
                    }
                } else {
                    None
                };
                want(
                    &mut out,
                    nft,
                    h.addr,
                    &|| session::comment_from(h.user_id, h.conn_id),
                    jump,
                )
            })?;
            // A dry run's portal corrections.
            for s in overlay.values().flatten() {
                for e in s.elems() {
                    let (set, jump) = if dispatch {
                        if Family::of(e.addr) != *family {
                            continue;
                        }
                        match profile_of_set(config, &e.set) {
                            Some(p) => (name.clone(), Some(p)),
                            None => continue,
                        }
                    } else {
                        (e.set.clone(), None)
                    };
                    if &set == name {
                        want(&mut out, nft, e.addr, &|| s.comment(), jump)?;
                    }
                }
            }
            // What no session explains.
            for addr in diff.stale() {
                out.plan.dels.push(ElemRef {
                    set: name.clone(),
                    addr,
                });
                out.flush_if_full(nft)?;
            }
        }
        out.flush(&mut self.nft)?;
        let summary = Summary {
            sets: usable.len(),
            added: out.added,
            deleted: out.deleted,
            portal_ended: ended,
            portal_recovered: recovered,
        };
        let report = ReconcileReport {
            dry_run,
            summary,
            adds: out.report_adds,
            dels: out.report_dels,
        };
        if dry_run {
            tracing::info!(
                would_add = summary.added,
                would_delete = summary.deleted,
                "reconcile dry run"
            );
            return Ok(report);
        }
        self.store.add_managed_sets(&usable)?;
        self.ready_sets = usable.into_iter().map(|(s, _)| s).collect();
        if let Some(m) = &self.metrics {
            m.reconcile(summary.added, summary.deleted);
        }
        self.publish_sessions();
        tracing::info!(
            sets = summary.sets,
            sessions = self.session_count(),
            added = summary.added,
            deleted = summary.deleted,
            portal_ended = summary.portal_ended,
            portal_recovered = summary.portal_recovered,
            dump_ms = t_dump.as_millis() as u64,
            ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
        for d in report.dels.iter().take(20) {
            tracing::info!(set = %d.set, addr = %d.addr, "reconcile removed stale element");
        }
        for a in report.adds.iter().take(20) {
            tracing::info!(set = %a.set, addr = %a.addr, "reconcile restored missing element");
        }
        Ok(report)
    }

    fn status(&mut self) -> Response {
        match self.status_report() {
            Ok(r) => Response::Status(r),
            Err(e) => Response::Failed {
                reason: e.to_string(),
            },
        }
    }

    fn status_report(&mut self) -> Result<StatusReport, WriterError> {
        let view = self.view();
        let sessions: Vec<Session> = self
            .store
            .first_sessions(STATUS_LIST + self.unsynced.len() + self.ignored.len())?
            .into_iter()
            .filter(|s| !view.hidden(s.profile.as_str(), s.conn_id.as_str()))
            .take(STATUS_LIST)
            .collect();
        let table = self.table().to_string();
        let sets = self.managed_sets(&HashMap::new())?;
        let existing = self.nft.list_sets(&table)?.unwrap_or_default();
        let mut sizes = Vec::new();
        for name in sets.keys() {
            let elements = match existing.iter().find(|s| &s.name == name) {
                Some(info) => Some(self.nft.count_set(&table, info)?),
                None => None,
            };
            sizes.push(SetSize {
                set: name.clone(),
                elements,
            });
        }
        Ok(StatusReport {
            sessions,
            sessions_total: self.session_count(),
            sets: sizes,
            netlink_batches: self.nft.batches(),
            events: self.events,
        })
    }
}

/// A reconcile's changes on their way to the kernel, in bounded batches.
struct Chunks {
    table: String,
    dry_run: bool,
    plan: Plan,
    added: usize,
    deleted: usize,
    /// The first [`REPORT_LIST`] of each, for the report.
    report_adds: Vec<ElemRef>,
    report_dels: Vec<ElemRef>,
}

impl Chunks {
    fn flush_if_full(&mut self, nft: &mut Nft) -> Result<(), WriterError> {
        if self.plan.adds.len() + self.plan.dels.len() >= RECONCILE_CHUNK {
            self.flush(nft)?;
        }
        Ok(())
    }

    /// Applies the pending changes as one atomic batch (a dry run only counts them).
    fn flush(&mut self, nft: &mut Nft) -> Result<(), WriterError> {
        if self.plan.is_empty() {
            return Ok(());
        }
        if !self.dry_run {
            nft.apply(&self.table, &self.plan)?;
        }
        self.added += self.plan.adds.len();
        self.deleted += self.plan.dels.len();
        for a in &self.plan.adds {
            if self.report_adds.len() < REPORT_LIST {
                self.report_adds.push(ElemRef {
                    set: a.set.clone(),
                    addr: a.addr,
                });
            }
        }
        for d in &self.plan.dels {
            if self.report_dels.len() < REPORT_LIST {
                self.report_dels.push(d.clone());
            }
        }
        self.plan = Plan::default();
        Ok(())
    }
}

/// Opens a store transaction holding the final state of each session the batch
/// changed, plus the deletes of earlier ends the store did not take.
fn stage<'a>(
    store: &'a mut Store,
    writes: &[(SessionKey, Option<Session>)],
    unsynced: &HashSet<SessionKey>,
) -> Result<crate::store::StoreTxn<'a>, StoreError> {
    let txn = store.begin()?;
    for (key, state) in writes {
        match state {
            Some(s) => txn.upsert(s)?,
            None => txn.delete(key)?,
        }
    }
    for key in unsynced {
        if !writes.iter().any(|(k, _)| k == key) {
            txn.delete(key)?;
        }
    }
    Ok(txn)
}

/// The profile whose set this is: configured profiles by their set names, others by
/// the `<id>_v4` / `<id>_v6` convention.
fn profile_of_set(config: &Config, set: &str) -> Option<String> {
    for p in &config.profiles {
        let s = config.sets_for(&p.id);
        if s.set4 == set || s.set6 == set {
            return Some(p.id.to_string());
        }
    }
    let id = set
        .strip_suffix("_v4")
        .or_else(|| set.strip_suffix("_v6"))?;
    ProfileId::parse(id).ok().map(|p| p.to_string())
}

fn parse_key(profile: &str, conn_id: &str) -> Option<SessionKey> {
    Some(SessionKey {
        profile: ProfileId::parse(profile).ok()?,
        conn_id: crate::event::ConnectionId::parse(conn_id).ok()?,
    })
}

/// The store as [`View`] sees it: rows that do not validate and sessions whose end
/// is not yet stored are absent.
pub struct StoreView<'a> {
    store: &'a Store,
    unsynced: &'a HashSet<SessionKey>,
    ignored: &'a HashSet<(String, String)>,
}

impl StoreView<'_> {
    /// Whether the stored row with this key is to be treated as absent.
    fn hidden(&self, profile: &str, conn_id: &str) -> bool {
        self.unsynced
            .iter()
            .any(|k| k.profile.as_str() == profile && k.conn_id.as_str() == conn_id)
            || (!self.ignored.is_empty()
                && self
                    .ignored
                    .contains(&(profile.to_string(), conn_id.to_string())))
    }
}

impl View for StoreView<'_> {
    type Error = StoreError;

    fn get(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        if self.unsynced.contains(key) {
            return Ok(None);
        }
        Ok(self.store.session(key)?.and_then(Result::ok))
    }

    fn holders(&self, elem: &ElemRef) -> Result<Vec<SessionKey>, StoreError> {
        Ok(self
            .store
            .holders(&elem.set, elem.addr)?
            .into_iter()
            .filter(|(p, c)| !self.hidden(p, c))
            .filter_map(|(p, c)| parse_key(&p, &c))
            .collect())
    }
}

/// Keys that live in resources opened at start (table, socket, store, threads).
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    if old.nftables.table != new.nftables.table {
        Some("[nftables] table")
    } else if old.server != new.server {
        Some("[server]")
    } else if old.store != new.store {
        Some("[store]")
    } else if old.reconcile != new.reconcile {
        Some("[reconcile]")
    } else if old.metrics != new.metrics {
        Some("[metrics]")
    } else {
        None
    }
}

fn check_type(table: &str, set: &str, family: Family, key: KeyType) -> Result<(), WriterError> {
    let ok = matches!(
        (family, key),
        (Family::V4, KeyType::Ipv4Addr) | (Family::V6, KeyType::Ipv6Addr)
    );
    if ok {
        return Ok(());
    }
    let found = match key {
        KeyType::Ipv4Addr => "ipv4_addr".to_string(),
        KeyType::Ipv6Addr => "ipv6_addr".to_string(),
        KeyType::Other { datatype, len } => format!("datatype {datatype} ({len} bytes)"),
    };
    Err(WriterError::WrongType {
        table: table.into(),
        set: set.into(),
        found,
        expected: family.nft_type(),
    })
}

fn count_edits(edits: &[Edit]) -> (usize, usize) {
    let ended = edits
        .iter()
        .filter(|e| matches!(e, Edit::Disconnect(_)))
        .count();
    (ended, edits.len() - ended)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn event_name(ev: &Event) -> &'static str {
    match ev.kind {
        EventKind::Connect => "connect",
        EventKind::Disconnect => "disconnect",
    }
}

fn answer_applied(
    ev: &Event,
    change: &Change,
    reply: &SyncSender<Response>,
    started: Instant,
    metrics: Option<&Metrics>,
) {
    if let Some(m) = metrics {
        m.event(event_name(ev), "applied", started.elapsed());
    }
    let detail = match change {
        Change::Inserted(_) => "session started",
        Change::Replaced(_) => "session updated with new addresses",
        Change::Unchanged(_) => "session already live",
        Change::Removed(_) => "session ended",
        Change::Unknown(_) => "no such session; nothing to remove",
    };
    let us = started.elapsed().as_micros() as u64;
    if matches!(change, Change::Unknown(_)) {
        tracing::warn!(event = event_name(ev), profile = %ev.profile, conn_id = %ev.conn_id, us, "disconnect of an unknown session");
    } else {
        tracing::info!(
            event = event_name(ev),
            profile = %ev.profile,
            conn_id = %ev.conn_id,
            user = %ev.user_id,
            v4 = ev.ip4.map(tracing::field::display),
            v6 = ev.ip6.map(tracing::field::display),
            result = detail,
            us,
            "event applied"
        );
    }
    let _ = reply.send(Response::Applied {
        detail: detail.to_string(),
    });
}

fn answer_rejection(
    ev: &Event,
    r: Rejection,
    reply: &SyncSender<Response>,
    started: Instant,
    metrics: Option<&Metrics>,
) {
    let us = started.elapsed().as_micros() as u64;
    if let Some(m) = metrics {
        let result = match r {
            Rejection::Refused(_) => "refused",
            Rejection::Failed(_) => "failed",
        };
        m.event(event_name(ev), result, started.elapsed());
    }
    let resp = match r {
        Rejection::Refused(reason) => {
            tracing::warn!(event = event_name(ev), profile = %ev.profile, conn_id = %ev.conn_id, user = %ev.user_id, v4 = ev.ip4.map(tracing::field::display), v6 = ev.ip6.map(tracing::field::display), result = "refused", reason = %reason, us, "event refused: {reason}");
            Response::Refused { reason }
        }
        Rejection::Failed(reason) => {
            tracing::error!(event = event_name(ev), profile = %ev.profile, conn_id = %ev.conn_id, user = %ev.user_id, v4 = ev.ip4.map(tracing::field::display), v6 = ev.ip6.map(tracing::field::display), result = "failed", reason = %reason, us, "event failed: {reason}");
            Response::Failed { reason }
        }
    };
    let _ = reply.send(resp);
}
