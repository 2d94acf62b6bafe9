//! Pure diff: desired elements × kernel elements → one plan of adds and deletes.
//!
//! No I/O lives here, so every drift case can be tested with tables of cases.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

/// One element of one managed set.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ElemRef {
    /// Set name inside the managed table.
    pub set: String,
    pub addr: IpAddr,
}

/// An element to add, with the comment that tells an admin who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElemAdd {
    pub set: String,
    pub addr: IpAddr,
    /// Stored in the element's userdata as an nft comment (truncated by `nft`).
    pub comment: String,
    /// Verdict maps only: the chain the element jumps to.
    pub jump: Option<String>,
}

/// Everything one netlink batch must change. Applied all-or-nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub adds: Vec<ElemAdd>,
    pub dels: Vec<ElemRef>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.dels.is_empty()
    }
}

/// What the kernel holds in the sets being reconciled.
pub type Actual = BTreeMap<String, BTreeSet<IpAddr>>;

/// The elements live sessions need, each with the comment of one holder.
pub type Desired = BTreeMap<ElemRef, String>;

/// The diff of one set, fed as a stream so that memory is bounded by the set, not by
/// the number of sessions: the kernel's elements up front, then every address a live
/// session holds, in any order and with repeats.
#[derive(Debug, Default)]
pub struct SetDiff {
    /// Kernel elements no session has claimed yet.
    actual: HashSet<IpAddr>,
    /// Addresses sessions hold, seen so far.
    seen: HashSet<IpAddr>,
}

impl SetDiff {
    pub fn new(actual: impl IntoIterator<Item = IpAddr>) -> SetDiff {
        SetDiff {
            actual: actual.into_iter().collect(),
            seen: HashSet::new(),
        }
    }

    /// Records that a live session holds `addr`; true the first time an address the
    /// kernel lacks is seen: it must be added.
    pub fn want(&mut self, addr: IpAddr) -> bool {
        self.seen.insert(addr) && !self.actual.remove(&addr)
    }

    /// The kernel's elements no live session holds, sorted: to delete.
    pub fn stale(self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.actual.into_iter().collect();
        v.sort();
        v
    }
}

/// Diffs desired against actual for the sets in `actual` (all at once; the daemon
/// streams the same logic set by set through [`SetDiff`]).
///
/// - an element in a reconciled set that no live session explains is deleted;
/// - a desired element missing from its set is added.
///
/// Desired elements of sets absent from `actual` are added too (the caller creates
/// such sets first, or gets a clear error from the kernel).
pub fn diff(desired: &Desired, actual: &Actual) -> Plan {
    let mut plan = Plan::default();
    let mut sets: BTreeSet<&String> = actual.keys().collect();
    sets.extend(desired.keys().map(|e| &e.set));
    for set in sets {
        let mut d = SetDiff::new(actual.get(set).into_iter().flatten().copied());
        for (elem, comment) in desired.range(set_range(set)) {
            if d.want(elem.addr) {
                plan.adds.push(ElemAdd {
                    set: set.clone(),
                    addr: elem.addr,
                    comment: comment.clone(),
                    jump: None,
                });
            }
        }
        plan.dels.extend(d.stale().into_iter().map(|addr| ElemRef {
            set: set.clone(),
            addr,
        }));
    }
    plan
}

/// Every element of one set in a [`Desired`] map.
fn set_range(set: &str) -> std::ops::RangeInclusive<ElemRef> {
    let lo = ElemRef {
        set: set.to_string(),
        addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let hi = ElemRef {
        set: set.to_string(),
        addr: IpAddr::V6(std::net::Ipv6Addr::from(u128::MAX)),
    };
    lo..=hi
}

/// Counts for the log line and for `vpnfw reconcile`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub sets: usize,
    pub added: usize,
    pub deleted: usize,
    /// WireGuard sessions ended because their peer left the portal's database.
    pub portal_ended: usize,
    /// WireGuard sessions started from the portal's database (lost connect events).
    pub portal_recovered: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(set: &str, addr: &str) -> ElemRef {
        ElemRef {
            set: set.into(),
            addr: addr.parse().expect("test address"),
        }
    }

    fn desired(elems: &[(&str, &str)]) -> Desired {
        elems
            .iter()
            .map(|(s, a)| (e(s, a), format!("c-{a}")))
            .collect()
    }

    fn actual(sets: &[(&str, &[&str])]) -> Actual {
        sets.iter()
            .map(|(s, addrs)| {
                (
                    (*s).to_string(),
                    addrs.iter().map(|a| a.parse().expect("addr")).collect(),
                )
            })
            .collect()
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
    fn table_of_cases() {
        struct Case {
            name: &'static str,
            desired: Desired,
            actual: Actual,
            adds: Vec<ElemRef>,
            dels: Vec<ElemRef>,
        }
        let cases = [
            Case {
                name: "in step",
                desired: desired(&[("a_v4", "10.0.0.1"), ("a_v6", "fd00::1")]),
                actual: actual(&[("a_v4", &["10.0.0.1"]), ("a_v6", &["fd00::1"])]),
                adds: vec![],
                dels: vec![],
            },
            Case {
                name: "empty kernel after a ruleset reload",
                desired: desired(&[("a_v4", "10.0.0.1"), ("a_v6", "fd00::1")]),
                actual: actual(&[("a_v4", &[]), ("a_v6", &[])]),
                adds: vec![e("a_v4", "10.0.0.1"), e("a_v6", "fd00::1")],
                dels: vec![],
            },
            Case {
                name: "stale element after a crash without disconnect",
                desired: desired(&[("a_v4", "10.0.0.1")]),
                actual: actual(&[("a_v4", &["10.0.0.1", "10.0.0.9"])]),
                adds: vec![],
                dels: vec![e("a_v4", "10.0.0.9")],
            },
            Case {
                name: "address in the wrong profile's set",
                desired: desired(&[("a_v4", "10.0.0.1")]),
                actual: actual(&[("a_v4", &[]), ("b_v4", &["10.0.0.1"])]),
                adds: vec![e("a_v4", "10.0.0.1")],
                dels: vec![e("b_v4", "10.0.0.1")],
            },
            Case {
                name: "set missing from the kernel is still planned",
                desired: desired(&[("new_v4", "10.0.0.1")]),
                actual: actual(&[]),
                adds: vec![e("new_v4", "10.0.0.1")],
                dels: vec![],
            },
            Case {
                name: "no sessions: everything in managed sets goes",
                desired: desired(&[]),
                actual: actual(&[("a_v4", &["10.0.0.1"]), ("a_v6", &["fd00::1"])]),
                adds: vec![],
                dels: vec![e("a_v4", "10.0.0.1"), e("a_v6", "fd00::1")],
            },
        ];
        for c in cases {
            let plan = diff(&c.desired, &c.actual);
            assert_eq!(adds(&plan), c.adds, "{}: adds", c.name);
            assert_eq!(plan.dels, c.dels, "{}: dels", c.name);
        }
    }

    #[test]
    fn set_diff_streams_repeats_and_any_order() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("addr") };
        let mut d = SetDiff::new([ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.9")]);
        // Held and present: nothing to do, also when a second session holds it.
        assert!(!d.want(ip("10.0.0.2")));
        assert!(!d.want(ip("10.0.0.2")));
        // Held and missing: added once, whoever else holds it.
        assert!(d.want(ip("10.0.0.5")));
        assert!(!d.want(ip("10.0.0.5")));
        assert!(!d.want(ip("10.0.0.1")));
        assert_eq!(d.stale(), vec![ip("10.0.0.9")]);
    }

    #[test]
    fn adds_carry_the_holder_comment() {
        let plan = diff(&desired(&[("a_v4", "10.0.0.1")]), &actual(&[("a_v4", &[])]));
        assert_eq!(plan.adds[0].comment, "c-10.0.0.1");
    }

    #[test]
    fn large_drift_is_one_plan() {
        let mut d = Desired::new();
        let mut a = Actual::new();
        let set = a.entry("s_v4".to_string()).or_default();
        for i in 0..20_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if i % 2 == 0 {
                d.insert(e("s_v4", &addr.to_string()), String::new());
            } else {
                set.insert(addr);
            }
        }
        let plan = diff(&d, &a);
        assert_eq!(plan.adds.len(), 10_000);
        assert_eq!(plan.dels.len(), 10_000);
    }
}
