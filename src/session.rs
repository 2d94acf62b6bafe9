//! Live sessions keyed by (profile, connection id), and reference-counted addresses.
//!
//! An address goes back to the portal's pool and may be handed to a new session while
//! a late disconnect of the old one is still on its way (DESIGN.md §2). So an element
//! leaves a set only when no live session holds it any more.

use std::collections::{HashMap, hash_map::Entry};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::event::{ConnectionId, ProfileId, Proto, UserId};
use crate::reconcile::{Desired, ElemAdd, ElemRef, Plan};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub profile: ProfileId,
    pub conn_id: ConnectionId,
}

/// One live session, as stored and as held in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub profile: ProfileId,
    pub conn_id: ConnectionId,
    pub user_id: UserId,
    pub proto: Proto,
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    /// Set that holds `ip4` (resolved from the config when the session started).
    pub set4: String,
    /// Set that holds `ip6`.
    pub set6: String,
    /// Unix seconds.
    pub since: i64,
    /// `/proc/sys/kernel/random/boot_id` when the session started.
    pub boot_id: String,
}

impl Session {
    pub fn key(&self) -> SessionKey {
        SessionKey {
            profile: self.profile.clone(),
            conn_id: self.conn_id.clone(),
        }
    }

    /// The elements this session needs in the kernel.
    pub fn elems(&self) -> Vec<ElemRef> {
        let mut out = Vec::with_capacity(2);
        if let Some(a) = self.ip4 {
            out.push(ElemRef {
                set: self.set4.clone(),
                addr: IpAddr::V4(a),
            });
        }
        if let Some(a) = self.ip6 {
            out.push(ElemRef {
                set: self.set6.clone(),
                addr: IpAddr::V6(a),
            });
        }
        out
    }

    /// The element comment: who holds the address (`nft list set` shows it).
    pub fn comment(&self) -> String {
        comment_for(&self.user_id, &self.conn_id)
    }
}

/// nft element comments are at most 128 bytes; cut on a char boundary.
pub fn comment_for(user: &UserId, conn: &ConnectionId) -> String {
    let mut c = format!("user={} conn={}", user.as_str(), conn.as_str());
    if c.len() > 128 {
        let mut end = 128;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

/// What one event did to the ledger; kept so a failed batch can be undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new session.
    Inserted(SessionKey),
    /// A connect for a live session with other addresses or sets; holds the old one.
    Replaced(Session),
    /// A repeated connect: nothing to store, but its elements are re-asserted.
    Unchanged(SessionKey),
    /// A disconnect ended this session.
    Removed(Session),
    /// A disconnect for a session vpnfw does not know.
    Unknown(SessionKey),
}

/// One requested change to the ledger.
#[derive(Debug, Clone)]
pub enum Edit {
    Connect(Session),
    Disconnect(SessionKey),
}

/// All live sessions and how many of them hold each element.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    sessions: HashMap<SessionKey, Session>,
    refs: HashMap<ElemRef, u32>,
    /// Live sessions per profile (few entries), for `[limits]`.
    per_profile: HashMap<ProfileId, u32>,
    /// Live sessions per user; kept only when a per-user limit is configured.
    per_user: Option<HashMap<UserId, u32>>,
}

impl Ledger {
    pub fn new(sessions: impl IntoIterator<Item = Session>) -> Ledger {
        let mut l = Ledger::default();
        for s in sessions {
            l.insert(s);
        }
        l
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.sessions.get(key)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Whether any live session holds this element.
    pub fn holds(&self, elem: &ElemRef) -> bool {
        self.refs.get(elem).is_some_and(|n| *n > 0)
    }

    /// Every element live sessions need, with one holder's comment.
    pub fn desired(&self) -> Desired {
        let mut d = Desired::new();
        for s in self.sessions.values() {
            let comment = s.comment();
            for e in s.elems() {
                d.entry(e).or_insert_with(|| comment.clone());
            }
        }
        d
    }

    /// Starts counting live sessions per user (for a per-user limit).
    pub fn count_users(&mut self) {
        let mut counts: HashMap<UserId, u32> = HashMap::new();
        for s in self.sessions.values() {
            *counts.entry(s.user_id.clone()).or_insert(0) += 1;
        }
        self.per_user = Some(counts);
    }

    /// Live sessions of a profile.
    pub fn profile_sessions(&self, profile: &ProfileId) -> u32 {
        self.per_profile.get(profile).copied().unwrap_or(0)
    }

    /// Live sessions of a user; `None` unless [`Ledger::count_users`] was called.
    pub fn user_sessions(&self, user: &UserId) -> Option<u32> {
        self.per_user
            .as_ref()
            .map(|m| m.get(user).copied().unwrap_or(0))
    }

    fn count(&mut self, s: &Session, up: bool) {
        fn bump<K: std::hash::Hash + Eq + Clone>(m: &mut HashMap<K, u32>, k: &K, up: bool) {
            if up {
                *m.entry(k.clone()).or_insert(0) += 1;
            } else if let Entry::Occupied(mut o) = m.entry(k.clone()) {
                *o.get_mut() -= 1;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
        bump(&mut self.per_profile, &s.profile, up);
        if let Some(m) = self.per_user.as_mut() {
            bump(m, &s.user_id, up);
        }
    }

    fn insert(&mut self, s: Session) -> Option<Session> {
        for e in s.elems() {
            *self.refs.entry(e).or_insert(0) += 1;
        }
        self.count(&s, true);
        let old = self.sessions.insert(s.key(), s);
        if let Some(old) = &old {
            self.release(old);
        }
        old
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Session> {
        let old = self.sessions.remove(key)?;
        self.release(&old);
        Some(old)
    }

    fn release(&mut self, s: &Session) {
        self.count(s, false);
        for e in s.elems() {
            if let Entry::Occupied(mut o) = self.refs.entry(e) {
                *o.get_mut() -= 1;
                if *o.get() == 0 {
                    o.remove();
                }
            }
        }
    }

    /// Applies one edit and says what it did.
    pub fn apply(&mut self, edit: Edit) -> Change {
        match edit {
            Edit::Connect(s) => {
                let key = s.key();
                match self.sessions.get(&key) {
                    Some(old) if same_holding(old, &s) => Change::Unchanged(key),
                    Some(_) => match self.insert(s) {
                        Some(old) => Change::Replaced(old),
                        None => Change::Inserted(key),
                    },
                    None => {
                        self.insert(s);
                        Change::Inserted(key)
                    }
                }
            }
            Edit::Disconnect(key) => match self.remove(&key) {
                Some(old) => Change::Removed(old),
                None => Change::Unknown(key),
            },
        }
    }

    /// Reverts one change made by [`Ledger::apply`]. Undo in reverse order.
    pub fn undo(&mut self, change: Change) {
        match change {
            Change::Inserted(key) => {
                self.remove(&key);
            }
            Change::Replaced(old) | Change::Removed(old) => {
                self.insert(old);
            }
            Change::Unchanged(_) | Change::Unknown(_) => {}
        }
    }

    /// Applies edits in order and returns the changes plus the kernel plan that takes
    /// the sets from the state before to the state after.
    ///
    /// Elements of connecting sessions are always (idempotently) re-added, so a
    /// repeated connect also repairs an element an admin removed by hand.
    pub fn apply_all(&mut self, edits: Vec<Edit>) -> (Vec<Change>, Plan) {
        // Element → (held before the batch, comment of the last connect asserting it).
        let mut touched: HashMap<ElemRef, (bool, Option<String>)> = HashMap::new();
        let mut changes = Vec::with_capacity(edits.len());
        for edit in edits {
            let (elems, comment) = match &edit {
                Edit::Connect(s) => {
                    let mut elems = s.elems();
                    if let Some(old) = self.sessions.get(&s.key()) {
                        elems.extend(old.elems());
                    }
                    (elems, Some(s.comment()))
                }
                Edit::Disconnect(key) => match self.sessions.get(key) {
                    Some(old) => (old.elems(), None),
                    None => (Vec::new(), None),
                },
            };
            let asserted = match &edit {
                Edit::Connect(s) => s.elems(),
                Edit::Disconnect(_) => Vec::new(),
            };
            for e in elems {
                let held = self.holds(&e);
                touched.entry(e).or_insert((held, None));
            }
            for e in asserted {
                if let Some(t) = touched.get_mut(&e) {
                    t.1 = comment.clone();
                }
            }
            changes.push(self.apply(edit));
        }
        let mut plan = Plan::default();
        for (elem, (before, comment)) in touched {
            let after = self.holds(&elem);
            match (before, after, comment) {
                (_, true, Some(comment)) => plan.adds.push(ElemAdd {
                    set: elem.set,
                    addr: elem.addr,
                    comment,
                    jump: None,
                }),
                (true, false, _) => plan.dels.push(elem),
                _ => {}
            }
        }
        plan.adds
            .sort_by(|a, b| (&a.set, a.addr).cmp(&(&b.set, b.addr)));
        plan.dels.sort();
        (changes, plan)
    }

    /// Reverts a whole batch of changes.
    pub fn undo_all(&mut self, changes: Vec<Change>) {
        for c in changes.into_iter().rev() {
            self.undo(c);
        }
    }
}

/// Same addresses in the same sets for the same user: a repeated connect.
fn same_holding(a: &Session, b: &Session) -> bool {
    a.user_id == b.user_id
        && a.proto == b.proto
        && a.ip4 == b.ip4
        && a.ip6 == b.ip6
        && a.set4 == b.set4
        && a.set6 == b.set6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sess(profile: &str, conn: &str, ip4: Option<&str>, ip6: Option<&str>) -> Session {
        Session {
            profile: ProfileId::parse(profile).expect("profile"),
            conn_id: ConnectionId::parse(conn).expect("conn"),
            user_id: UserId::parse("alice@example.org").expect("user"),
            proto: Proto::OpenVpn,
            ip4: ip4.map(|a| a.parse().expect("v4")),
            ip6: ip6.map(|a| a.parse().expect("v6")),
            set4: format!("{profile}_v4"),
            set6: format!("{profile}_v6"),
            since: 0,
            boot_id: "b".into(),
        }
    }

    fn e(set: &str, addr: &str) -> ElemRef {
        ElemRef {
            set: set.into(),
            addr: addr.parse().expect("addr"),
        }
    }

    fn adds(p: &Plan) -> Vec<ElemRef> {
        p.adds
            .iter()
            .map(|a| ElemRef {
                set: a.set.clone(),
                addr: a.addr,
            })
            .collect()
    }

    #[test]
    fn connect_then_disconnect() {
        let mut l = Ledger::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), Some("fd00::1"));
        let (_, p) = l.apply_all(vec![Edit::Connect(s.clone())]);
        assert_eq!(
            adds(&p),
            vec![e("staff_v4", "10.0.0.1"), e("staff_v6", "fd00::1")]
        );
        assert!(p.dels.is_empty());
        assert!(p.adds[0].comment.contains("alice@example.org"));
        let (c, p) = l.apply_all(vec![Edit::Disconnect(s.key())]);
        assert_eq!(c, vec![Change::Removed(s)]);
        assert!(p.adds.is_empty());
        assert_eq!(
            p.dels,
            vec![e("staff_v4", "10.0.0.1"), e("staff_v6", "fd00::1")]
        );
        assert!(l.is_empty());
    }

    #[test]
    fn late_disconnect_keeps_new_owner() {
        let mut l = Ledger::default();
        let a = sess("staff", "old", Some("10.0.0.5"), None);
        let b = sess("staff", "new", Some("10.0.0.5"), None);
        l.apply_all(vec![Edit::Connect(a.clone()), Edit::Connect(b.clone())]);
        let (_, p) = l.apply_all(vec![Edit::Disconnect(a.key())]);
        assert!(
            p.is_empty(),
            "old session's disconnect must not evict: {p:?}"
        );
        assert!(l.holds(&e("staff_v4", "10.0.0.5")));
        let (_, p) = l.apply_all(vec![Edit::Disconnect(b.key())]);
        assert_eq!(p.dels, vec![e("staff_v4", "10.0.0.5")]);
    }

    #[test]
    fn repeated_connect_is_unchanged_but_reasserted() {
        let mut l = Ledger::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), None);
        l.apply_all(vec![Edit::Connect(s.clone())]);
        let (c, p) = l.apply_all(vec![Edit::Connect(s.clone())]);
        assert_eq!(c, vec![Change::Unchanged(s.key())]);
        assert_eq!(adds(&p), vec![e("staff_v4", "10.0.0.1")]);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn reconnect_with_new_address_moves_it() {
        let mut l = Ledger::default();
        let s1 = sess("staff", "c1", Some("10.0.0.1"), None);
        let s2 = sess("staff", "c1", Some("10.0.0.2"), None);
        l.apply_all(vec![Edit::Connect(s1.clone())]);
        let (c, p) = l.apply_all(vec![Edit::Connect(s2)]);
        assert_eq!(c, vec![Change::Replaced(s1)]);
        assert_eq!(adds(&p), vec![e("staff_v4", "10.0.0.2")]);
        assert_eq!(p.dels, vec![e("staff_v4", "10.0.0.1")]);
    }

    #[test]
    fn connect_and_disconnect_in_one_batch_cancel_out() {
        let mut l = Ledger::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), None);
        let (_, p) = l.apply_all(vec![Edit::Connect(s.clone()), Edit::Disconnect(s.key())]);
        assert!(p.is_empty(), "{p:?}");
        assert!(l.is_empty());
    }

    #[test]
    fn disconnect_then_connect_in_one_batch_keeps_element() {
        let mut l = Ledger::default();
        let a = sess("staff", "a", Some("10.0.0.1"), None);
        let b = sess("staff", "b", Some("10.0.0.1"), None);
        l.apply_all(vec![Edit::Connect(a.clone())]);
        let (_, p) = l.apply_all(vec![Edit::Disconnect(a.key()), Edit::Connect(b)]);
        assert!(p.dels.is_empty());
        assert_eq!(adds(&p), vec![e("staff_v4", "10.0.0.1")]);
    }

    #[test]
    fn unknown_disconnect_changes_nothing() {
        let mut l = Ledger::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), None);
        let (c, p) = l.apply_all(vec![Edit::Disconnect(s.key())]);
        assert_eq!(c, vec![Change::Unknown(s.key())]);
        assert!(p.is_empty());
    }

    #[test]
    fn undo_restores_refcounts() {
        let mut l = Ledger::default();
        let a = sess("staff", "a", Some("10.0.0.1"), None);
        let b = sess("staff", "b", Some("10.0.0.2"), None);
        l.apply_all(vec![Edit::Connect(a.clone())]);
        let before = l.desired();
        let (c, _) = l.apply_all(vec![
            Edit::Connect(b),
            Edit::Disconnect(a.key()),
            Edit::Connect(sess("staff", "a", Some("10.0.0.3"), None)),
        ]);
        l.undo_all(c);
        assert_eq!(l.desired(), before);
        assert_eq!(l.get(&a.key()), Some(&a));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn counts_follow_sessions_and_undo() {
        let mut l = Ledger::default();
        l.count_users();
        let staff = ProfileId::parse("staff").expect("id");
        let alice = UserId::parse("alice@example.org").expect("user");
        let (c, _) = l.apply_all(vec![
            Edit::Connect(sess("staff", "a", Some("10.0.0.1"), None)),
            Edit::Connect(sess("staff", "b", Some("10.0.0.2"), None)),
            Edit::Connect(sess("staff", "b", Some("10.0.0.3"), None)),
        ]);
        assert_eq!(l.profile_sessions(&staff), 2);
        assert_eq!(l.user_sessions(&alice), Some(2));
        l.undo_all(c);
        assert_eq!(l.profile_sessions(&staff), 0);
        assert_eq!(l.user_sessions(&alice), Some(0));
    }
}
