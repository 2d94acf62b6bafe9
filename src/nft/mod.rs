//! The only module that speaks netlink, and the only one with `unsafe`.
//!
//! Callers see domain words (`list_sets`, `create`, `dump_set`, `apply`), never nftnl
//! types. One `Nft` owns one netlink socket for its whole life: closing a socket after
//! deletes costs the kernel 9–40 ms (DESIGN.md §3), so the daemon never does.

use std::io;
use std::net::IpAddr;

use crate::reconcile::Plan;

/// The address family a managed set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `type ipv4_addr`
    V4,
    /// `type ipv6_addr`
    V6,
}

impl Family {
    pub fn nft_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// A set vpnfw wants to exist in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub family: Family,
}

/// The key type of a set as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    /// Any other key type (datatype id, key length in bytes).
    Other { datatype: u32, len: u32 },
}

/// A set as it exists in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    pub name: String,
    pub key: KeyType,
    /// `flags interval`: single addresses are stored as start/end pairs.
    pub interval: bool,
}

/// What a dump of one set found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetContents {
    /// Single addresses (for interval sets: ranges that cover exactly one address).
    pub addrs: Vec<IpAddr>,
    /// Interval sets only: ranges wider than one address, as (first, last) inclusive.
    /// vpnfw never writes these; they are an admin's and are left alone.
    pub ranges: Vec<(IpAddr, IpAddr)>,
}

/// One variant per step that can fail; each carries its source and context.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open a netlink socket to nftables: {0} (vpnfw serve needs CAP_NET_ADMIN)")]
    Open(#[source] io::Error),
    #[error("cannot send a netlink batch to nftables: {0}")]
    Send(#[source] io::Error),
    #[error("cannot read the nftables netlink reply: {0}")]
    Recv(#[source] io::Error),
    #[error("table inet {table} not found: declare it in your ruleset or set [nftables] create = true")]
    TableMissing { table: String },
    #[error("set inet {table} {set} not found: declare it in your ruleset or set [nftables] create = true")]
    SetMissing { table: String, set: String },
    #[error("nftables refused {what}: {source}")]
    Kernel {
        /// Which message of the batch failed, in domain words (e.g. "add 10.0.0.1 to set staff_v4").
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed nftables netlink reply: {0}")]
    Parse(String),
}

/// One open netlink socket to nf_tables, for family `inet`.
pub struct Nft {
    _private: (),
}

impl Nft {
    /// Opens the netlink socket (needs CAP_NET_ADMIN in the current network namespace).
    pub fn open() -> Result<Nft, NftError> {
        todo!()
    }

    /// Lists the sets of `inet <table>`. `Ok(None)` when the table does not exist.
    pub fn list_sets(&mut self, table: &str) -> Result<Option<Vec<SetInfo>>, NftError> {
        let _ = table;
        todo!()
    }

    /// Creates `inet <table>` and the given sets when missing, in one batch.
    /// Existing objects are left as they are (no NLM_F_EXCL), so this is idempotent.
    pub fn create(&mut self, table: &str, sets: &[SetSpec]) -> Result<(), NftError> {
        let _ = (table, sets);
        todo!()
    }

    /// Reads every element of one set.
    pub fn dump_set(&mut self, table: &str, set: &SetInfo) -> Result<SetContents, NftError> {
        let _ = (table, set);
        todo!()
    }

    /// Applies the whole plan as one atomic netlink batch and checks every ACK.
    ///
    /// Idempotent per element: adding a present element or deleting an absent one is
    /// not an error. Interval sets get start/end pairs. Either everything in the plan
    /// is in the kernel afterwards, or nothing changed and an error is returned.
    pub fn apply(&mut self, table: &str, plan: &Plan) -> Result<(), NftError> {
        let _ = (table, plan);
        todo!()
    }
}
