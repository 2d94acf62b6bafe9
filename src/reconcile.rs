//! Pure diff: desired elements × kernel elements → one plan of adds and deletes.
//!
//! No I/O lives here, so every drift case can be tested with tables of cases.

use std::collections::{BTreeMap, BTreeSet};
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

/// Diffs desired against actual for the sets in `actual`.
///
/// - an element in a reconciled set that no live session explains is deleted;
/// - a desired element missing from its set is added.
///
/// Desired elements of sets absent from `actual` are added too (the caller creates
/// such sets first, or gets a clear error from the kernel).
pub fn diff(desired: &Desired, actual: &Actual) -> Plan {
    let mut plan = Plan::default();
    for (set, addrs) in actual {
        for addr in addrs {
            let elem = ElemRef {
                set: set.clone(),
                addr: *addr,
            };
            if !desired.contains_key(&elem) {
                plan.dels.push(elem);
            }
        }
    }
    for (elem, comment) in desired {
        let present = actual
            .get(&elem.set)
            .is_some_and(|addrs| addrs.contains(&elem.addr));
        if !present {
            plan.adds.push(ElemAdd {
                set: elem.set.clone(),
                addr: elem.addr,
                comment: comment.clone(),
                jump: None,
            });
        }
    }
    plan
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
