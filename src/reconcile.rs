//! Pure diff: desired elements × kernel elements → one plan of adds and deletes.
//!
//! No I/O lives here, so every drift case can be tested with tables of cases.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One element of one managed set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
