//! The single writer: owns the netlink socket, the store and the ledger.
//!
//! Requests that arrive together are applied as one ledger update, one store
//! transaction and one netlink batch; each is answered only after both committed.
//! If a coalesced batch fails, every request is retried on its own so one bad
//! request cannot fail its neighbours.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::event::{Event, EventKind, ProfileId, Proto, UserId};
use crate::nft::{Conntrack, Family, KeyType, Nft, NftError, SetSpec};
use crate::portal;
use crate::protocol::{ReconcileReport, Response, SetSize, StatusReport};
use crate::reconcile::{self, Actual, ElemAdd, ElemRef, Plan, Summary};
use crate::session::{Change, Edit, Ledger, Session, SessionKey};
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

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// Elements a reconcile report lists (the summary always has the full counts).
const REPORT_LIST: usize = 1000;

/// Most requests one batch takes; bounds the latency of the first one.
const MAX_BATCH: usize = 4096;

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
    store: Store,
    nft: Nft,
    ledger: Ledger,
    boot_id: String,
    /// Sets known to exist with the right type and recorded in the store.
    ready_sets: HashSet<String>,
    /// Events answered since start.
    events: u64,
    /// Ended sessions whose store delete failed (disk full, read-only): retried with
    /// the next store transaction. Until then a restart would bring them back.
    unsynced: Vec<SessionKey>,
    /// `[conntrack] flush_on_disconnect`: ctnetlink, opened at start.
    conntrack: Option<Conntrack>,
    /// Addresses that left the sets in this batch: their flows are cut after the
    /// answers went out, so the hook never waits for it.
    removed: Vec<IpAddr>,
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
        let (sessions, bad) = store.load_sessions()?;
        let count_users = config.limits.max_sessions_per_user.is_some();
        // A handful of examples and a count: a damaged store must not flood the log.
        for row in bad.iter().take(10) {
            tracing::error!(
                profile = %row.profile,
                conn_id = %row.conn_id,
                problem = %row.problem,
                "ignoring invalid store row; fix or delete it with sqlite3"
            );
        }
        if bad.len() > 10 {
            tracing::error!(rows = bad.len(), "invalid store rows ignored in all");
        }
        Ok(Writer {
            config,
            store,
            nft,
            ledger: {
                let mut l = Ledger::new(sessions);
                if count_users {
                    l.count_users();
                }
                l
            },
            boot_id,
            ready_sets: HashSet::new(),
            events: 0,
            unsynced: Vec::new(),
            conntrack: None,
            removed: Vec::new(),
        })
    }

    /// Ends OpenVPN sessions from an earlier boot: their tunnels died with it and no
    /// disconnect will ever come. WireGuard sessions stay: the portal's daemon-sync
    /// re-adds their peers after a reboot without firing connect (DESIGN.md §2).
    pub fn end_previous_boot(&mut self) -> Result<(), WriterError> {
        let stale: Vec<SessionKey> = self
            .ledger
            .sessions()
            .filter(|s| s.boot_id != self.boot_id && s.proto == Proto::OpenVpn)
            .map(Session::key)
            .collect();
        let kept = self
            .ledger
            .sessions()
            .filter(|s| s.boot_id != self.boot_id && s.proto == Proto::WireGuard)
            .count();
        if !stale.is_empty() {
            let txn = self.store.begin()?;
            for key in &stale {
                txn.delete(key)?;
            }
            txn.commit()?;
            // The kernel side follows in the reconcile that runs next.
            self.ledger
                .apply_all(stale.iter().cloned().map(Edit::Disconnect).collect());
        }
        if !stale.is_empty() || kept > 0 {
            tracing::info!(
                openvpn_ended = stale.len(),
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
                        Err(r) => answer_rejection(&ev, r, &job.reply),
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
                        answer_applied(&ev, &change, &reply, started);
                    }
                    tracing::debug!(events = n, "batch committed");
                }
                Err(e) if n > 1 => {
                    tracing::warn!(events = n, error = %e, "coalesced batch failed; applying its events one by one");
                    for (edit, ev, reply) in pending {
                        match self.commit(vec![edit]) {
                            Ok(changes) => {
                                if let Some(c) = changes.first() {
                                    answer_applied(&ev, c, &reply, started);
                                }
                            }
                            Err(e) => {
                                answer_rejection(&ev, Rejection::Failed(e.to_string()), &reply)
                            }
                        }
                    }
                }
                Err(e) => {
                    for (_, ev, reply) in pending {
                        answer_rejection(&ev, Rejection::Failed(e.to_string()), &reply);
                    }
                }
            }
        }
        for reply in status {
            let _ = reply.send(self.status());
        }
        self.flush_conntrack();
    }

    /// Opens ctnetlink when `[conntrack] flush_on_disconnect` is on. Failing to is a
    /// warning: the sets still enforce the policy for new flows.
    pub fn open_conntrack(&mut self) {
        if !self.config.conntrack.flush_on_disconnect {
            return;
        }
        match Conntrack::open() {
            Ok(c) => self.conntrack = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open ctnetlink; established flows survive disconnects")
            }
        }
    }

    /// Cuts established flows of addresses that left the sets.
    fn flush_conntrack(&mut self) {
        let removed = std::mem::take(&mut self.removed);
        let Some(ct) = self.conntrack.as_mut() else {
            return;
        };
        let mut seen = HashSet::new();
        for addr in removed {
            // An address still held in another set (another profile) keeps its flows.
            let held = self.ready_sets.iter().any(|set| {
                self.ledger.holds(&ElemRef {
                    set: set.clone(),
                    addr,
                })
            });
            if !seen.insert(addr) || held {
                continue;
            }
            match ct.flush_source(addr) {
                Ok(0) => {}
                Ok(n) => tracing::info!(%addr, flows = n, "conntrack entries deleted"),
                Err(e) => tracing::error!(%addr, error = %e, "conntrack cleanup failed"),
            }
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
        let key = SessionKey {
            profile: ev.profile.clone(),
            conn_id: ev.conn_id.clone(),
        };
        if self.ledger.get(&key).is_some() {
            return Ok(());
        }
        let limits = &self.config.limits;
        if let Some(max) = limits.max_sessions_per_user {
            let live = self.ledger.user_sessions(&ev.user_id).unwrap_or(0);
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
            let live = self.ledger.profile_sessions(&ev.profile);
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

    /// Ledger, store and kernel in one step; all three change or none does.
    fn commit(&mut self, edits: Vec<Edit>) -> Result<Vec<Change>, WriterError> {
        let (changes, plan) = self.ledger.apply_all(edits);
        match self.persist(&changes, &plan) {
            Ok(()) => {
                self.removed.extend(plan.dels.iter().map(|d| d.addr));
                Ok(changes)
            }
            Err(e) => {
                self.ledger.undo_all(changes);
                // The kernel may have lost a set under us (ruleset reload): look again next time.
                self.ready_sets.clear();
                Err(e)
            }
        }
    }

    fn persist(&mut self, changes: &[Change], plan: &Plan) -> Result<(), WriterError> {
        let dispatched;
        let plan = if self.config.nftables.dispatch_map {
            dispatched = self.with_dispatch(plan);
            &dispatched
        } else {
            plan
        };
        let mut keys: Vec<SessionKey> = Vec::new();
        let mut seen = HashSet::new();
        for c in changes {
            let key = match c {
                Change::Inserted(k) => k.clone(),
                Change::Replaced(old) | Change::Removed(old) => old.key(),
                Change::Unchanged(_) | Change::Unknown(_) => continue,
            };
            if seen.insert(key.clone()) {
                keys.push(key);
            }
        }
        let table = self.config.nftables.table.clone();
        if keys.is_empty() {
            // Nothing to store; still re-assert the elements of repeated connects.
            self.nft.apply(&table, plan)?;
            return Ok(());
        }
        // With the store failing (disk full, read-only), connects fail closed, but
        // disconnects still take the addresses out of the kernel: access must end.
        let only_removals = changes
            .iter()
            .all(|c| matches!(c, Change::Removed(_) | Change::Unknown(_)));
        keys.extend(
            self.unsynced
                .iter()
                .filter(|k| self.ledger.get(k).is_none())
                .cloned(),
        );
        let txn = match stage(&mut self.store, &self.ledger, &keys) {
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
                for key in keys {
                    if !self.unsynced.contains(&key) {
                        self.unsynced.push(key);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.revert_kernel(plan);
                Err(e.into())
            }
        }
    }

    /// Ledger and store only; the caller's reconcile brings the kernel along.
    fn commit_sessions(&mut self, edits: Vec<Edit>) -> Result<(), WriterError> {
        if edits.is_empty() {
            return Ok(());
        }
        let (changes, _plan) = self.ledger.apply_all(edits);
        let keys: Vec<SessionKey> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Inserted(k) => Some(k.clone()),
                Change::Replaced(old) | Change::Removed(old) => Some(old.key()),
                Change::Unchanged(_) | Change::Unknown(_) => None,
            })
            .collect();
        if let Err(e) = stage(&mut self.store, &self.ledger, &keys).and_then(|t| t.commit()) {
            self.ledger.undo_all(changes);
            return Err(e.into());
        }
        Ok(())
    }

    /// `[portal] database`: end WireGuard sessions whose peer is gone or expired, and
    /// start sessions for peers whose connect event never reached vpnfw.
    fn portal_edits(&self) -> Vec<Edit> {
        let Some(path) = &self.config.portal.database else {
            return Vec::new();
        };
        let (peers, skipped) = match portal::live_peers(path, unix_now()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "portal database unusable; reconciling against the store alone");
                return Vec::new();
            }
        };
        if skipped > 0 {
            tracing::warn!(rows = skipped, "skipped wg_peers rows vpnfw cannot use");
        }
        let mut edits = Vec::new();
        for s in self.ledger.sessions() {
            if s.proto == Proto::WireGuard && !peers.contains_key(&s.key()) {
                tracing::info!(profile = %s.profile, conn_id = %s.conn_id, user = %s.user_id, "ending WireGuard session: its peer is gone from the portal");
                edits.push(Edit::Disconnect(s.key()));
            }
        }
        for (key, peer) in peers {
            if self.ledger.get(&key).is_some() {
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
        edits
    }

    /// The profile whose set this is: configured profiles by their set names, others by
    /// the `<id>_v4` / `<id>_v6` convention.
    fn profile_of_set(&self, set: &str) -> Option<String> {
        for p in &self.config.profiles {
            let s = self.config.sets_for(&p.id);
            if s.set4 == set || s.set6 == set {
                return Some(p.id.to_string());
            }
        }
        let id = set
            .strip_suffix("_v4")
            .or_else(|| set.strip_suffix("_v6"))?;
        crate::event::ProfileId::parse(id)
            .ok()
            .map(|p| p.to_string())
    }

    /// The plan plus the matching dispatch-map changes: every address added to a
    /// profile's set gets `<address> : jump <profile>`, every address removed loses it.
    fn with_dispatch(&self, plan: &Plan) -> Plan {
        let mut out = plan.clone();
        for a in &plan.adds {
            if let Some(profile) = self.profile_of_set(&a.set) {
                out.adds.push(ElemAdd {
                    set: dispatch_map(family_of(a.addr)).to_string(),
                    addr: a.addr,
                    comment: a.comment.clone(),
                    jump: Some(profile),
                });
            }
        }
        for d in &plan.dels {
            out.dels.push(ElemRef {
                set: dispatch_map(family_of(d.addr)).to_string(),
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
    /// a live session.
    fn managed_sets(&self, ledger: &Ledger) -> Result<BTreeMap<String, Family>, WriterError> {
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
        for s in ledger.sessions() {
            if s.ip4.is_some() {
                sets.entry(s.set4.clone()).or_insert(Family::V4);
            }
            if s.ip6.is_some() {
                sets.entry(s.set6.clone()).or_insert(Family::V6);
            }
        }
        Ok(sets)
    }

    /// Makes the kernel sets equal to the live sessions, in one batch. A dry run
    /// reports the same plan and changes nothing (not even missing sets).
    pub fn reconcile(&mut self, dry_run: bool) -> Result<ReconcileReport, WriterError> {
        let started = Instant::now();
        let table = self.table().to_string();
        let portal = self.portal_edits();
        let (ended, recovered) = count_edits(&portal);
        // A dry run plays the portal's corrections on a copy; a real run commits them
        // to the store now and lets the diff below carry them into the kernel.
        let (sets, mut desired) = if dry_run {
            let mut scratch = self.ledger.clone();
            scratch.apply_all(portal);
            (self.managed_sets(&scratch)?, scratch.desired())
        } else {
            self.commit_sessions(portal)?;
            (self.managed_sets(&self.ledger)?, self.ledger.desired())
        };
        let t_desired = started.elapsed();
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
        let mut actual = Actual::new();
        for (name, _) in &usable {
            let addrs: BTreeSet<IpAddr> = if to_create.iter().any(|s| &s.name == name) {
                BTreeSet::new()
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
                contents.addrs.into_iter().collect()
            };
            actual.insert(name.clone(), addrs);
        }
        let mut jumps: HashMap<ElemRef, String> = HashMap::new();
        if self.config.nftables.dispatch_map {
            let mapped: Vec<(ElemRef, String, String)> = desired
                .iter()
                .filter_map(|(e, comment)| {
                    let profile = self.profile_of_set(&e.set)?;
                    let elem = ElemRef {
                        set: dispatch_map(family_of(e.addr)).to_string(),
                        addr: e.addr,
                    };
                    Some((elem, comment.clone(), profile))
                })
                .collect();
            for (elem, comment, profile) in mapped {
                jumps.insert(elem.clone(), profile);
                desired.insert(elem, comment);
            }
        }
        desired.retain(|e, _| actual.contains_key(&e.set));
        let t_dump = started.elapsed();
        let mut plan = reconcile::diff(&desired, &actual);
        for a in &mut plan.adds {
            if is_dispatch_map(&a.set) {
                a.jump = jumps.remove(&ElemRef {
                    set: a.set.clone(),
                    addr: a.addr,
                });
            }
        }
        let t_diff = started.elapsed();
        let summary = Summary {
            sets: actual.len(),
            added: plan.adds.len(),
            deleted: plan.dels.len(),
            portal_ended: ended,
            portal_recovered: recovered,
        };
        let report = ReconcileReport {
            dry_run,
            summary,
            adds: plan
                .adds
                .iter()
                .take(REPORT_LIST)
                .map(|a| ElemRef {
                    set: a.set.clone(),
                    addr: a.addr,
                })
                .collect(),
            dels: plan.dels.iter().take(REPORT_LIST).cloned().collect(),
        };
        if dry_run {
            tracing::info!(
                would_add = summary.added,
                would_delete = summary.deleted,
                "reconcile dry run"
            );
            return Ok(report);
        }
        self.nft.apply(&table, &plan)?;
        let t_apply = started.elapsed();
        tracing::debug!(
            desired_ms = t_desired.as_millis() as u64,
            dump_ms = (t_dump - t_desired).as_millis() as u64,
            diff_ms = (t_diff - t_dump).as_millis() as u64,
            apply_ms = (t_apply - t_diff).as_millis() as u64,
            "reconcile phases"
        );
        self.store.add_managed_sets(&usable)?;
        self.ready_sets = usable.into_iter().map(|(s, _)| s).collect();
        tracing::info!(
            sets = summary.sets,
            sessions = self.ledger.len(),
            added = summary.added,
            deleted = summary.deleted,
            portal_ended = summary.portal_ended,
            portal_recovered = summary.portal_recovered,
            ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
        for d in plan.dels.iter().take(20) {
            tracing::info!(set = %d.set, addr = %d.addr, "reconcile removed stale element");
        }
        for a in plan.adds.iter().take(20) {
            tracing::info!(set = %a.set, addr = %a.addr, "reconcile restored missing element");
        }
        Ok(report)
    }

    fn status(&mut self) -> Response {
        let mut sessions: Vec<Session> = self.ledger.sessions().cloned().collect();
        sessions.sort_by(|a, b| (&a.profile, &a.conn_id).cmp(&(&b.profile, &b.conn_id)));
        let table = self.table().to_string();
        let sets = match self.managed_sets(&self.ledger) {
            Ok(s) => s,
            Err(e) => {
                return Response::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let existing = match self.nft.list_sets(&table) {
            Ok(l) => l.unwrap_or_default(),
            Err(e) => {
                return Response::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let mut sizes = Vec::new();
        for name in sets.keys() {
            let elements = match existing.iter().find(|s| &s.name == name) {
                Some(info) => match self.nft.dump_set(&table, info) {
                    Ok(c) => Some(c.addrs.len() + c.ranges.len()),
                    Err(e) => {
                        return Response::Failed {
                            reason: e.to_string(),
                        };
                    }
                },
                None => None,
            };
            sizes.push(SetSize {
                set: name.clone(),
                elements,
            });
        }
        Response::Status(StatusReport {
            sessions,
            sets: sizes,
            netlink_batches: self.nft.batches(),
            events: self.events,
        })
    }
}

/// Opens a store transaction holding the current state of each key's session.
fn stage<'a>(
    store: &'a mut Store,
    ledger: &Ledger,
    keys: &[SessionKey],
) -> Result<crate::store::StoreTxn<'a>, StoreError> {
    let txn = store.begin()?;
    for key in keys {
        match ledger.get(key) {
            Some(s) => txn.upsert(s)?,
            None => txn.delete(key)?,
        }
    }
    Ok(txn)
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

fn answer_applied(ev: &Event, change: &Change, reply: &SyncSender<Response>, started: Instant) {
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
            v4 = ?ev.ip4,
            v6 = ?ev.ip6,
            result = detail,
            us,
            "event applied"
        );
    }
    let _ = reply.send(Response::Applied {
        detail: detail.to_string(),
    });
}

fn answer_rejection(ev: &Event, r: Rejection, reply: &SyncSender<Response>) {
    let resp = match r {
        Rejection::Refused(reason) => {
            tracing::warn!(event = event_name(ev), profile = %ev.profile, conn_id = %ev.conn_id, user = %ev.user_id, reason = %reason, "event refused");
            Response::Refused { reason }
        }
        Rejection::Failed(reason) => {
            tracing::error!(event = event_name(ev), profile = %ev.profile, conn_id = %ev.conn_id, user = %ev.user_id, reason = %reason, "event failed");
            Response::Failed { reason }
        }
    };
    let _ = reply.send(resp);
}
