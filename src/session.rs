//! Sessions keyed by (profile, connection id), and how a batch of events turns into
//! store writes and kernel changes (a plan), played over a view of the live sessions.
//!
//! An address goes back to the portal's pool and may be handed to a new session while
//! a late disconnect of the old one is still on its way (DESIGN.md §2). So an element
//! leaves a set only when no live session holds it any more.

use std::collections::{HashMap, hash_map::Entry};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::event::{ConnectionId, ProfileId, Proto, UserId};
use crate::reconcile::{ElemAdd, ElemRef, Plan};

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
    comment_from(user.as_str(), conn.as_str())
}

/// [`comment_for`] from a store row's text.
pub fn comment_from(user: &str, conn: &str) -> String {
    let mut c = format!("user={user} conn={conn}");
    if c.len() > 128 {
        let mut end = 128;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

/// What one event did to the live sessions.
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

/// One requested change to the live sessions.
#[derive(Debug, Clone)]
pub enum Edit {
    Connect(Session),
    Disconnect(SessionKey),
}

/// Where the live sessions are read from while a batch is planned. The daemon's view
/// is the store (minus sessions whose end it could not record yet); no session is
/// kept in memory, so memory does not grow with the number of sessions.
pub trait View {
    type Error;
    fn get(&self, key: &SessionKey) -> Result<Option<Session>, Self::Error>;
    /// Keys of the live sessions holding this element.
    fn holders(&self, elem: &ElemRef) -> Result<Vec<SessionKey>, Self::Error>;
}

/// A batch of edits played over a view, before anything is written.
#[derive(Debug, Default)]
pub struct Batch {
    /// What each edit did, in order.
    pub changes: Vec<Change>,
    /// The kernel changes that take the sets from before the batch to after it.
    pub plan: Plan,
    /// The final state of every session the batch changed, in first-touched order:
    /// `Some` to store, `None` to delete.
    pub writes: Vec<(SessionKey, Option<Session>)>,
}

/// Sessions changed by the batch so far, over the view.
struct Overlay<'v, V> {
    view: &'v V,
    sessions: HashMap<SessionKey, Option<Session>>,
    order: Vec<SessionKey>,
    /// How many overlay sessions hold each element.
    refs: HashMap<ElemRef, u32>,
}

impl<V: View> Overlay<'_, V> {
    fn get(&self, key: &SessionKey) -> Result<Option<Session>, V::Error> {
        match self.sessions.get(key) {
            Some(s) => Ok(s.clone()),
            None => self.view.get(key),
        }
    }

    fn holds(&self, elem: &ElemRef) -> Result<bool, V::Error> {
        if self.refs.get(elem).is_some_and(|n| *n > 0) {
            return Ok(true);
        }
        // Holders in the view count unless the batch changed that session.
        Ok(self
            .view
            .holders(elem)?
            .iter()
            .any(|k| !self.sessions.contains_key(k)))
    }

    fn set(&mut self, key: SessionKey, new: Option<Session>) {
        if let Some(Some(old)) = self.sessions.get(&key) {
            for e in old.elems() {
                if let Entry::Occupied(mut o) = self.refs.entry(e) {
                    *o.get_mut() -= 1;
                    if *o.get() == 0 {
                        o.remove();
                    }
                }
            }
        }
        if let Some(s) = &new {
            for e in s.elems() {
                *self.refs.entry(e).or_insert(0) += 1;
            }
        }
        if self.sessions.insert(key.clone(), new).is_none() {
            self.order.push(key);
        }
    }
}

/// Plays edits in order over `view` and returns what they do, without writing.
///
/// An element leaves a set only when no session holds it after the batch; elements
/// of connecting sessions are always (idempotently) re-added, so a repeated connect
/// also repairs an element an admin removed by hand.
pub fn play<V: View>(view: &V, edits: Vec<Edit>) -> Result<Batch, V::Error> {
    let mut o = Overlay {
        view,
        sessions: HashMap::new(),
        order: Vec::new(),
        refs: HashMap::new(),
    };
    // Element → (held before the batch, comment of the last connect asserting it).
    let mut touched: HashMap<ElemRef, (bool, Option<String>)> = HashMap::new();
    let mut first_touch: Vec<ElemRef> = Vec::new();
    let mut changes = Vec::with_capacity(edits.len());
    for edit in edits {
        let key = match &edit {
            Edit::Connect(s) => s.key(),
            Edit::Disconnect(k) => k.clone(),
        };
        let old = o.get(&key)?;
        let mut elems = old.as_ref().map(Session::elems).unwrap_or_default();
        if let Edit::Connect(s) = &edit {
            elems.extend(s.elems());
        }
        for e in elems {
            if !touched.contains_key(&e) {
                let held = o.holds(&e)?;
                touched.insert(e.clone(), (held, None));
                first_touch.push(e);
            }
        }
        let change = match edit {
            Edit::Connect(s) => {
                let comment = s.comment();
                for e in s.elems() {
                    if let Some(t) = touched.get_mut(&e) {
                        t.1 = Some(comment.clone());
                    }
                }
                match old {
                    Some(old) if same_holding(&old, &s) => Change::Unchanged(key),
                    Some(old) => {
                        o.set(key, Some(s));
                        Change::Replaced(old)
                    }
                    None => {
                        o.set(key.clone(), Some(s));
                        Change::Inserted(key)
                    }
                }
            }
            Edit::Disconnect(key) => match old {
                Some(old) => {
                    o.set(key, None);
                    Change::Removed(old)
                }
                None => Change::Unknown(key),
            },
        };
        changes.push(change);
    }
    let mut plan = Plan::default();
    for elem in first_touch {
        let after = o.holds(&elem)?;
        let Some((before, comment)) = touched.remove(&elem) else {
            continue;
        };
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
    let Overlay {
        mut sessions,
        order,
        ..
    } = o;
    let writes = order
        .into_iter()
        .filter_map(|k| sessions.remove(&k).map(|s| (k, s)))
        .collect();
    Ok(Batch {
        changes,
        plan,
        writes,
    })
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
    use std::collections::BTreeMap;

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

    /// The store, as a map.
    #[derive(Default)]
    struct Mem(BTreeMap<SessionKey, Session>);

    impl View for Mem {
        type Error = std::convert::Infallible;
        fn get(&self, key: &SessionKey) -> Result<Option<Session>, Self::Error> {
            Ok(self.0.get(key).cloned())
        }
        fn holders(&self, elem: &ElemRef) -> Result<Vec<SessionKey>, Self::Error> {
            Ok(self
                .0
                .values()
                .filter(|s| s.elems().contains(elem))
                .map(Session::key)
                .collect())
        }
    }

    impl Mem {
        /// Plays and commits a batch, as the writer does after the kernel took it.
        fn apply_all(&mut self, edits: Vec<Edit>) -> (Vec<Change>, Plan) {
            let Ok(b) = play(&*self, edits);
            for (k, s) in b.writes {
                match s {
                    Some(s) => self.0.insert(k, s),
                    None => self.0.remove(&k),
                };
            }
            (b.changes, b.plan)
        }

        fn holds(&self, elem: &ElemRef) -> bool {
            let Ok(h) = self.holders(elem);
            !h.is_empty()
        }
    }

    #[test]
    fn connect_then_disconnect() {
        let mut l = Mem::default();
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
        assert!(l.0.is_empty());
    }

    #[test]
    fn late_disconnect_keeps_new_owner() {
        let mut l = Mem::default();
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
        let mut l = Mem::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), None);
        l.apply_all(vec![Edit::Connect(s.clone())]);
        let (c, p) = l.apply_all(vec![Edit::Connect(s.clone())]);
        assert_eq!(c, vec![Change::Unchanged(s.key())]);
        assert_eq!(adds(&p), vec![e("staff_v4", "10.0.0.1")]);
        assert_eq!(l.0.len(), 1);
    }

    #[test]
    fn reconnect_with_new_address_moves_it() {
        let mut l = Mem::default();
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
        let mut l = Mem::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), None);
        let (_, p) = l.apply_all(vec![Edit::Connect(s.clone()), Edit::Disconnect(s.key())]);
        assert!(p.is_empty(), "{p:?}");
        assert!(l.0.is_empty());
    }

    #[test]
    fn disconnect_then_connect_in_one_batch_keeps_element() {
        let mut l = Mem::default();
        let a = sess("staff", "a", Some("10.0.0.1"), None);
        let b = sess("staff", "b", Some("10.0.0.1"), None);
        l.apply_all(vec![Edit::Connect(a.clone())]);
        let (_, p) = l.apply_all(vec![Edit::Disconnect(a.key()), Edit::Connect(b)]);
        assert!(p.dels.is_empty());
        assert_eq!(adds(&p), vec![e("staff_v4", "10.0.0.1")]);
    }

    #[test]
    fn unknown_disconnect_changes_nothing() {
        let mut l = Mem::default();
        let s = sess("staff", "c1", Some("10.0.0.1"), None);
        let (c, p) = l.apply_all(vec![Edit::Disconnect(s.key())]);
        assert_eq!(c, vec![Change::Unknown(s.key())]);
        assert!(p.is_empty());
    }

    #[test]
    fn playing_writes_nothing_and_lists_final_states() {
        let mut l = Mem::default();
        let a = sess("staff", "a", Some("10.0.0.1"), None);
        let b = sess("staff", "b", Some("10.0.0.2"), None);
        l.apply_all(vec![Edit::Connect(a.clone())]);
        let a3 = sess("staff", "a", Some("10.0.0.3"), None);
        let Ok(batch) = play(
            &l,
            vec![
                Edit::Connect(b.clone()),
                Edit::Disconnect(a.key()),
                Edit::Connect(a3.clone()),
            ],
        );
        // The view is untouched until the writer commits.
        assert_eq!(l.0.len(), 1);
        assert_eq!(l.0.get(&a.key()), Some(&a));
        assert_eq!(
            batch.writes,
            vec![(b.key(), Some(b)), (a.key(), Some(a3))],
            "one write per session, its final state, in first-touched order"
        );
        assert_eq!(
            adds(&batch.plan),
            vec![e("staff_v4", "10.0.0.2"), e("staff_v4", "10.0.0.3")]
        );
        assert_eq!(batch.plan.dels, vec![e("staff_v4", "10.0.0.1")]);
    }
}
