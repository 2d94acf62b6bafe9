//! The only module that speaks netlink, and the only one with `unsafe`.
//!
//! Callers see domain words (`list_sets`, `create`, `dump_set`, `apply`), never nftnl
//! types. One `Nft` owns one netlink socket for its whole life: closing a socket after
//! deletes costs the kernel 9–40 ms (DESIGN.md §3), so the daemon never does.

mod blame;
mod conntrack;
mod monitor;
mod msg;
mod probe;
mod socket;

pub use conntrack::Conntrack;
pub use monitor::Monitor;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, c_int};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::reconcile::{ElemRef, Plan};
use msg::{ELEMS_PER_MSG, Elem, Scratch};
use socket::NlSocket;

/// The address family a managed set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `type ipv4_addr`
    V4,
    /// `type ipv6_addr`
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

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
    /// A verdict map (`type <addr> : verdict`) instead of a plain set.
    pub verdict_map: bool,
}

/// The key type of a set as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    /// Any other key type (datatype id, key length in bytes).
    Other {
        datatype: u32,
        len: u32,
    },
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
    #[error(
        "table inet {table} not found: declare it in your ruleset or set [nftables] create = true"
    )]
    TableMissing { table: String },
    #[error(
        "set inet {table} {set} not found: declare it in your ruleset or set [nftables] create = true"
    )]
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
    #[error("conntrack: {what}: {source}")]
    Conntrack {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("name {0:?} cannot be sent to nftables (contains NUL)")]
    BadName(String),
}

/// Which way an element leaves a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteMsg {
    /// NFT_MSG_DESTROYSETELEM (kernel ≥ 6.3): absent elements are not an error.
    Destroy,
    /// NFT_MSG_DELSETELEM: an absent element aborts the batch with ENOENT, so vpnfw
    /// dumps the affected sets and retries without the absent ones.
    Delete,
}

/// One open netlink socket to nf_tables, for family `inet`.
pub struct Nft {
    sock: NlSocket,
    scratch: Scratch,
    seq: u32,
    delete: DeleteMsg,
    /// Set facts learnt from the kernel, per (table, set): interval or not.
    sets: HashMap<(String, String), SetInfo>,
    /// The ruleset generation the set facts are known to hold at. Every batch carries
    /// it (NFNL_BATCH_GENID): if anyone changed the ruleset since, the kernel refuses
    /// the batch (ERESTART) and vpnfw reads the sets again before retrying, so an
    /// element is never written with stale facts (a lone start element in a set that
    /// became an interval set would open everything above the address). `None`:
    /// unknown, read it before the next batch.
    genid: Option<u32>,
    /// Netlink batches sent (benchmarks and tests read it).
    batches: u64,
}

/// One message of a batch, described in domain words for error messages.
struct Step {
    seq: u32,
    what: String,
    is_delete: bool,
    /// Element messages: the set, and per wire element the address it is about (an
    /// interval's end element is about the address before it).
    set: String,
    elems: Vec<IpAddr>,
}

impl Step {
    /// The failing message in domain words; for an element message the element the
    /// kernel blamed, when it said which (`blame.rs`).
    fn describe(&self, batch: &[u8], bad_attr: Option<u32>, errno: i32) -> String {
        let elem = bad_attr
            .and_then(|bad| blame::elem_index(blame::find_msg(batch, self.seq)?, bad as usize))
            .and_then(|i| self.elems.get(i));
        match elem {
            Some(addr) if self.is_delete => format!("delete {addr} from set {}", self.set),
            // Adds never carry NLM_F_EXCL, so an identical element is no error: EEXIST
            // means an interval overlap or a verdict-map element with other data.
            Some(addr) if errno == libc::EEXIST => format!(
                "add {addr} to set {} (an element already in the set overlaps or conflicts with it, e.g. an admin's range)",
                self.set
            ),
            Some(addr) => format!("add {addr} to set {}", self.set),
            None => self.what.clone(),
        }
    }
}

impl Nft {
    /// Opens the netlink socket (needs CAP_NET_ADMIN in the current network namespace).
    ///
    /// Asks the kernel once whether it has NFT_MSG_DESTROYSETELEM (Linux ≥ 6.3, or a
    /// backport), with a batch that can never commit (`probe.rs`).
    pub fn open() -> Result<Nft, NftError> {
        let sock = NlSocket::open().map_err(NftError::Open)?;
        let mut nft = Nft {
            sock,
            scratch: Scratch::new(),
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            delete: DeleteMsg::Delete,
            sets: HashMap::new(),
            genid: None,
            batches: 0,
        };
        if nft.kernel_knows(msg::NFT_MSG_DESTROYSETELEM as u16) {
            nft.delete = DeleteMsg::Destroy;
        }
        Ok(nft)
    }

    fn kernel_knows(&mut self, msg_type: u16) -> bool {
        let begin = self.next_seq();
        let seq = self.next_seq();
        probe::kernel_knows(&mut self.sock, &mut self.scratch, msg_type, begin, seq)
    }

    /// Uses DELSETELEM and its ENOENT fallback even on kernels with DESTROYSETELEM, as
    /// on Debian 12's 6.1 and EL9's 5.14 (tests exercise that path with it).
    #[doc(hidden)]
    pub fn force_legacy_delete(&mut self) {
        self.delete = DeleteMsg::Delete;
    }

    /// Whether deletes use NFT_MSG_DESTROYSETELEM (what the probe at `open` found,
    /// unless `force_legacy_delete` was called).
    #[doc(hidden)]
    pub fn uses_destroy(&self) -> bool {
        self.delete == DeleteMsg::Destroy
    }

    /// Runs the probe `open` runs for DESTROYSETELEM with any NFT_MSG_* type, so tests
    /// can check that it tells a known type from an unknown one on the running kernel.
    #[doc(hidden)]
    pub fn probe_msg_type(&mut self, msg_type: u16) -> bool {
        self.kernel_knows(msg_type)
    }

    /// Netlink port id of this socket: notifications caused by it carry this id.
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Netlink batches sent so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The generation to send the next batch at. When unknown, it is read first and
    /// the set facts are forgotten, so they are read again at (or after) it.
    fn generation(&mut self) -> Result<u32, NftError> {
        if let Some(g) = self.genid {
            return Ok(g);
        }
        let seq = self.next_seq();
        let mut genid = None;
        self.sock
            .request(&msg::get_gen(seq), seq, |m| {
                genid = genid.or(msg::parse_gen(m));
            })
            .map_err(NftError::Recv)?;
        let g = genid.ok_or_else(|| NftError::Parse("NEWGEN without a generation id".into()))?;
        self.sets.clear();
        self.genid = Some(g);
        Ok(g)
    }

    /// After a batch sent at `genid`: committed, the generation is the next one (the
    /// kernel checked `genid` under its commit lock); anything else, unknown.
    fn after_batch(&mut self, genid: u32, committed: bool) {
        self.genid = committed.then(|| match genid.wrapping_add(1) {
            0 => 1,
            g => g,
        });
    }

    /// Lists the sets of `inet <table>`. `Ok(None)` when the table does not exist.
    pub fn list_sets(&mut self, table: &str) -> Result<Option<Vec<SetInfo>>, NftError> {
        let ctable = cname(table)?;
        let seq = self.next_seq();
        let req = msg::get_sets(&mut self.scratch, seq, &ctable)
            .ok_or_else(|| NftError::Parse("cannot allocate a set message".into()))?;
        let mut found: Vec<SetInfo> = Vec::new();
        let mut bad = false;
        let result = self.sock.dump(
            &req,
            seq,
            |m| {
                // SAFETY: `dump` hands over complete messages aligned for nlmsghdr.
                match unsafe { msg::parse_set(m.as_ptr().cast()) } {
                    Some(p) if p.table == table => found.push(SetInfo {
                        name: p.name,
                        key: p.key,
                        interval: p.flags & libc::NFT_SET_INTERVAL as u32 != 0,
                    }),
                    Some(_) => {}
                    None => bad = true,
                }
            },
            || {},
        );
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.sets.retain(|(t, _), _| t != table);
                return Ok(None);
            }
            Err(e) => return Err(NftError::Recv(e)),
        }
        if bad {
            return Err(NftError::Parse(
                "a set in the GETSET dump did not parse".into(),
            ));
        }
        self.sets.retain(|(t, _), _| t != table);
        for info in &found {
            self.sets
                .insert((table.to_string(), info.name.clone()), info.clone());
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(found))
    }

    /// Creates `inet <table>` and the given sets when missing, in one batch.
    /// Existing objects are left as they are (no NLM_F_EXCL), so this is idempotent.
    pub fn create(&mut self, table: &str, sets: &[SetSpec]) -> Result<(), NftError> {
        self.at_current_generation(|n| n.create_at(table, sets))
    }

    /// Runs `batch` again, with the sets read anew, while the kernel refuses it for an
    /// outdated ruleset generation (nothing of a refused batch is applied).
    fn at_current_generation(
        &mut self,
        mut batch: impl FnMut(&mut Nft) -> Result<(), NftError>,
    ) -> Result<(), NftError> {
        for _ in 0..GENID_TRIES {
            match batch(self) {
                Err(e) if is_genid_restart(&e) => continue,
                other => return other,
            }
        }
        Err(ruleset_kept_changing())
    }

    fn create_at(&mut self, table: &str, sets: &[SetSpec]) -> Result<(), NftError> {
        let ctable = cname(table)?;
        let genid = self.generation()?;
        let mut out = Vec::new();
        let mut steps = Vec::new();
        let begin = self.next_seq();
        msg::batch_begin_at(&mut self.scratch, &mut out, begin, genid);
        let seq = self.next_seq();
        if !msg::new_table(&mut self.scratch, &mut out, seq, &ctable) {
            return Err(NftError::Parse("cannot allocate a table message".into()));
        }
        steps.push(Step {
            seq,
            what: format!("creating table inet {table}"),
            is_delete: false,
            set: String::new(),
            elems: Vec::new(),
        });
        for (i, spec) in sets.iter().enumerate() {
            let cset = cname(&spec.name)?;
            let seq = self.next_seq();
            if !msg::new_set(
                &mut self.scratch,
                &mut out,
                seq,
                &ctable,
                &cset,
                spec,
                i as u32 + 1,
            ) {
                return Err(NftError::Parse("cannot allocate a set message".into()));
            }
            steps.push(Step {
                seq,
                what: format!(
                    "creating set inet {table} {} (type {}; a set of that name with another type exists?)",
                    spec.name,
                    spec.family.nft_type()
                ),
                is_delete: false,
                set: spec.name.clone(),
                elems: Vec::new(),
            });
        }
        let end = self.next_seq();
        msg::batch_end(&mut self.scratch, &mut out, end);
        let sent = self.send_batch(&out, &steps);
        self.after_batch(genid, sent.is_ok());
        sent.map_err(|(e, _)| e)?;
        // Cache only what the kernel confirms: the next lookup re-reads sets that
        // already existed (they may be interval sets).
        for spec in sets {
            self.sets.remove(&(table.to_string(), spec.name.clone()));
        }
        Ok(())
    }

    /// Sends one batch; on failure returns the error for the first failing message
    /// and whether every failure was ENOENT on a delete.
    fn send_batch(&mut self, out: &[u8], steps: &[Step]) -> Result<(), (NftError, bool)> {
        let seqs: Vec<u32> = steps.iter().map(|s| s.seq).collect();
        self.batches += 1;
        let errors = self
            .sock
            .batch(out, &seqs)
            .map_err(|e| (NftError::Send(e), false))?;
        let Some((&seq, &errno)) = errors.iter().next() else {
            return Ok(());
        };
        let only_absent_deletes = errors.iter().all(|(s, e)| {
            *e == libc::ENOENT && steps.iter().any(|st| st.seq == *s && st.is_delete)
        });
        let bad_attr = self.sock.bad_attrs().get(&seq).copied();
        let what = steps
            .iter()
            .find(|s| s.seq == seq)
            .map(|s| s.describe(out, bad_attr, errno))
            .unwrap_or_else(|| "the batch".to_string());
        Err((
            NftError::Kernel {
                what,
                source: io::Error::from_raw_os_error(errno),
            },
            only_absent_deletes,
        ))
    }

    /// The facts about one set, from the cache or the kernel.
    fn set_info(&mut self, table: &str, set: &str) -> Result<SetInfo, NftError> {
        let key = (table.to_string(), set.to_string());
        if let Some(info) = self.sets.get(&key) {
            return Ok(info.clone());
        }
        match self.list_sets(table)? {
            None => Err(NftError::TableMissing {
                table: table.into(),
            }),
            Some(_) => self
                .sets
                .get(&key)
                .cloned()
                .ok_or_else(|| NftError::SetMissing {
                    table: table.into(),
                    set: set.into(),
                }),
        }
    }

    /// Reads every element of one set.
    pub fn dump_set(&mut self, table: &str, set: &SetInfo) -> Result<SetContents, NftError> {
        let mut raw = Vec::new();
        self.dump_elems(table, set, |msg, restart| {
            if restart {
                raw.clear();
            }
            raw.append(msg)
        })?;
        contents_from(&raw, set.interval)
    }

    /// How many addresses and ranges a set holds, without keeping them (hash sets are
    /// counted message by message; interval sets need their pairs matched).
    pub fn count_set(&mut self, table: &str, set: &SetInfo) -> Result<usize, NftError> {
        if set.interval {
            let c = self.dump_set(table, set)?;
            return Ok(c.addrs.len() + c.ranges.len());
        }
        let mut n = 0;
        self.dump_elems(table, set, |msg, restart| {
            if restart {
                n = 0;
            }
            n += msg.len();
            msg.clear();
        })?;
        Ok(n)
    }

    /// Dumps a set's elements, handing over each message's worth. `restart` is true
    /// when the kernel interrupted the dump (the ruleset changed) and it started over:
    /// forget what came before.
    fn dump_elems(
        &mut self,
        table: &str,
        set: &SetInfo,
        mut on_msg: impl FnMut(&mut Vec<msg::RawElem>, bool),
    ) -> Result<(), NftError> {
        let ctable = cname(table)?;
        let cset = cname(&set.name)?;
        let seq = self.next_seq();
        let req = msg::get_set_elems(&mut self.scratch, seq, &ctable, &cset)
            .ok_or_else(|| NftError::Parse("cannot allocate a set message".into()))?;
        let mut elems = Vec::new();
        let mut bad = false;
        let restarted = std::cell::Cell::new(false);
        let result = self.sock.dump(
            &req,
            seq,
            |m| {
                // SAFETY: `dump` hands over complete messages aligned for nlmsghdr.
                if !unsafe { msg::parse_elems(m.as_ptr().cast(), &mut elems) } {
                    bad = true;
                }
                on_msg(&mut elems, restarted.replace(false));
                elems.clear();
            },
            || restarted.set(true),
        );
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.sets.remove(&(table.to_string(), set.name.clone()));
                return Err(NftError::SetMissing {
                    table: table.into(),
                    set: set.name.clone(),
                });
            }
            Err(e) => return Err(NftError::Recv(e)),
        }
        if bad {
            return Err(NftError::Parse(format!(
                "an element dump of set {} did not parse",
                set.name
            )));
        }
        Ok(())
    }

    /// Applies the whole plan as one atomic netlink batch and checks every ACK.
    ///
    /// Idempotent per element: adding a present element or deleting an absent one is
    /// not an error. Interval sets get start/end pairs. Either everything in the plan
    /// is in the kernel afterwards, or nothing changed and an error is returned.
    pub fn apply(&mut self, table: &str, plan: &Plan) -> Result<(), NftError> {
        if plan.is_empty() {
            return Ok(());
        }
        self.at_current_generation(|n| n.apply_current(table, plan))
    }

    /// [`Nft::apply`] at the current generation.
    fn apply_current(&mut self, table: &str, plan: &Plan) -> Result<(), NftError> {
        match self.apply_once(table, plan) {
            Ok(()) => Ok(()),
            Err((_, true)) if self.delete == DeleteMsg::Delete => {
                // DELSETELEM of an absent element aborted the batch: keep only the
                // deletes of elements that are there, and try once more.
                let present = self.present(table, &plan.dels)?;
                let retry = Plan {
                    adds: plan.adds.clone(),
                    dels: plan
                        .dels
                        .iter()
                        .filter(|d| present.contains(*d))
                        .cloned()
                        .collect(),
                };
                if retry.is_empty() {
                    return Ok(());
                }
                self.apply_once(table, &retry).map_err(|(e, _)| e)
            }
            Err((e, _)) => Err(e),
        }
    }

    /// Which of these elements the kernel holds (one dump per set involved).
    fn present(&mut self, table: &str, elems: &[ElemRef]) -> Result<BTreeSet<ElemRef>, NftError> {
        let sets: BTreeSet<&str> = elems.iter().map(|e| e.set.as_str()).collect();
        let mut out = BTreeSet::new();
        for set in sets {
            let info = self.set_info(table, set)?;
            let contents = self.dump_set(table, &info)?;
            for addr in contents.addrs {
                out.insert(ElemRef {
                    set: set.to_string(),
                    addr,
                });
            }
        }
        Ok(out)
    }

    fn apply_once(&mut self, table: &str, plan: &Plan) -> Result<(), (NftError, bool)> {
        let ctable = cname(table).map_err(|e| (e, false))?;
        // First: the set facts below must be read at (or after) this generation.
        let genid = self.generation().map_err(|e| (e, false))?;
        // Group per set, deletes before adds.
        let mut dels: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
        for d in &plan.dels {
            dels.entry(d.set.as_str()).or_default().push(d.addr);
        }
        // Per set: address, comment, jump target (verdict maps).
        type Adds<'p> = BTreeMap<&'p str, Vec<(IpAddr, &'p str, Option<&'p str>)>>;
        let mut adds: Adds = BTreeMap::new();
        for a in &plan.adds {
            adds.entry(a.set.as_str()).or_default().push((
                a.addr,
                a.comment.as_str(),
                a.jump.as_deref(),
            ));
        }
        let mut interval: HashMap<String, bool> = HashMap::new();
        for set in dels.keys().chain(adds.keys()) {
            if !interval.contains_key(*set) {
                let info = self.set_info(table, set).map_err(|e| (e, false))?;
                interval.insert(set.to_string(), info.interval);
            }
        }
        let delete_type: c_int = match self.delete {
            DeleteMsg::Destroy => msg::NFT_MSG_DESTROYSETELEM,
            DeleteMsg::Delete => libc::NFT_MSG_DELSETELEM,
        };
        let mut out = Vec::with_capacity(64 * (plan.adds.len() + plan.dels.len()) + 64);
        let mut steps = Vec::new();
        let begin = self.next_seq();
        msg::batch_begin_at(&mut self.scratch, &mut out, begin, genid);
        for (set, addrs) in &dels {
            let elems = wire_elems(addrs.iter().map(|a| (*a, None, None)), interval[*set]);
            self.push_elems(
                &mut out,
                &mut steps,
                delete_type,
                &ctable,
                set,
                &elems,
                "delete",
                "from",
            )?;
        }
        for (set, addrs) in &adds {
            let elems = wire_elems(
                addrs.iter().map(|(a, c, j)| (*a, Some(*c), *j)),
                interval[*set],
            );
            self.push_elems(
                &mut out,
                &mut steps,
                libc::NFT_MSG_NEWSETELEM,
                &ctable,
                set,
                &elems,
                "add",
                "to",
            )?;
        }
        let end = self.next_seq();
        msg::batch_end(&mut self.scratch, &mut out, end);
        let result = self.send_batch(&out, &steps);
        self.after_batch(genid, result.is_ok());
        if result.is_err() {
            // A set may have vanished under us: look again next time.
            self.sets.retain(|(t, _), _| t != table);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn push_elems(
        &mut self,
        out: &mut Vec<u8>,
        steps: &mut Vec<Step>,
        msg_type: c_int,
        ctable: &CString,
        set: &str,
        elems: &[Elem<'_>],
        verb: &str,
        prep: &str,
    ) -> Result<(), (NftError, bool)> {
        let cset = cname(set).map_err(|e| (e, false))?;
        for chunk in elems.chunks(ELEMS_PER_MSG) {
            let seq = self.next_seq();
            if !msg::set_elems(&mut self.scratch, out, seq, msg_type, ctable, &cset, chunk) {
                return Err((
                    NftError::Parse("cannot allocate an element message".into()),
                    false,
                ));
            }
            let first = chunk
                .first()
                .map(|e| e.addr.to_string())
                .unwrap_or_default();
            let what = if chunk.len() == 1 {
                format!("{verb} {first} {prep} set {set}")
            } else {
                format!(
                    "{verb} {} elements (first {first}) {prep} set {set}",
                    chunk.len()
                )
            };
            steps.push(Step {
                seq,
                what,
                is_delete: msg_type != libc::NFT_MSG_NEWSETELEM,
                set: set.to_string(),
                elems: chunk
                    .iter()
                    .map(|e| match e.interval_end {
                        true => predecessor(e.addr).unwrap_or(e.addr),
                        false => e.addr,
                    })
                    .collect(),
            });
        }
        Ok(())
    }
}

/// Batches refused because the ruleset changed since vpnfw read it, before giving up.
const GENID_TRIES: usize = 5;

/// The kernel refused a batch sent at an outdated generation (nothing was applied).
fn is_genid_restart(e: &NftError) -> bool {
    matches!(e, NftError::Kernel { source, .. } if source.raw_os_error() == Some(libc::ERESTART))
}

fn ruleset_kept_changing() -> NftError {
    NftError::Kernel {
        what: "the batch: the ruleset kept changing while vpnfw applied it".into(),
        source: io::Error::from_raw_os_error(libc::ERESTART),
    }
}

fn cname(s: &str) -> Result<CString, NftError> {
    msg::cstring(s).ok_or_else(|| NftError::BadName(s.to_string()))
}

/// Single addresses as wire elements: in interval sets a start plus an end element
/// one past it (none after the family's last address, as `nft` does).
fn wire_elems<'a>(
    addrs: impl Iterator<Item = (IpAddr, Option<&'a str>, Option<&'a str>)>,
    interval: bool,
) -> Vec<Elem<'a>> {
    let mut out = Vec::new();
    for (addr, comment, jump) in addrs {
        out.push(Elem {
            addr,
            interval_end: false,
            comment,
            jump,
        });
        if let Some(next) = successor(addr).filter(|_| interval) {
            out.push(Elem {
                addr: next,
                interval_end: true,
                comment: None,
                jump: None,
            });
        }
    }
    out
}

fn successor(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    }
}

fn predecessor(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_sub(1)
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        IpAddr::V6(a) => u128::from(a)
            .checked_sub(1)
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    }
}

fn addr_of(key: &[u8]) -> Option<IpAddr> {
    match key.len() {
        4 => <[u8; 4]>::try_from(key)
            .ok()
            .map(|k| IpAddr::V4(Ipv4Addr::from(k))),
        16 => <[u8; 16]>::try_from(key)
            .ok()
            .map(|k| IpAddr::V6(Ipv6Addr::from(k))),
        _ => None,
    }
}

fn last_addr(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(u128::MAX)),
    }
}

/// Turns dumped elements into addresses and ranges. In interval sets, each start
/// element runs to the next end element (exclusive); a start with no end runs to the
/// family's last address. At equal keys an end sorts before a start, so adjacent
/// single addresses (`[a, a+1)`, `[a+1, a+2)`) come out as two addresses.
fn contents_from(raw: &[msg::RawElem], interval: bool) -> Result<SetContents, NftError> {
    let mut elems = Vec::with_capacity(raw.len());
    for r in raw {
        let addr = r
            .key
            .map_err(|len| NftError::Parse(format!("element key of {len} bytes")))?;
        elems.push((addr, r.interval_end));
    }
    let mut out = SetContents::default();
    if !interval {
        out.addrs = elems.into_iter().map(|(a, _)| a).collect();
        out.addrs.sort();
        return Ok(out);
    }
    // (addr, end?) with ends first at equal addresses.
    elems.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut open: Option<IpAddr> = None;
    for (addr, is_end) in elems {
        match (is_end, open) {
            (false, None) => open = Some(addr),
            (false, Some(start)) => {
                // A start with no end before the next start: the kernel never reports
                // this for well-formed sets; treat the first as reaching up to here.
                if let Some(last) = predecessor(addr) {
                    push_range(&mut out, start, last);
                }
                open = Some(addr);
            }
            (true, Some(start)) => {
                if let Some(last) = predecessor(addr) {
                    push_range(&mut out, start, last);
                }
                open = None;
            }
            // The end of the interval holding 0.0.0.0 … (nft emits no start there), or
            // an end we already closed: nothing to report.
            (true, None) => {}
        }
    }
    if let Some(start) = open {
        push_range(&mut out, start, last_addr(start));
    }
    Ok(out)
}

fn push_range(out: &mut SetContents, first: IpAddr, last: IpAddr) {
    if first == last {
        out.addrs.push(first);
    } else {
        out.ranges.push((first, last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(addr: &str, end: bool) -> msg::RawElem {
        msg::RawElem {
            key: Ok(addr.parse().expect("addr")),
            interval_end: end,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn interval_dump_with_adjacent_singles_and_a_range() {
        // Kernel dump order is not ascending; contents_from sorts.
        let r = vec![
            raw("10.0.0.3", true),
            raw("10.0.0.2", false),
            raw("10.0.0.2", true),
            raw("10.0.0.1", false),
            raw("10.1.0.0", false),
            raw("10.1.1.0", true),
            raw("255.255.255.255", false),
        ];
        let c = contents_from(&r, true).expect("parse");
        assert_eq!(
            c.addrs,
            vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("255.255.255.255")]
        );
        assert_eq!(c.ranges, vec![(ip("10.1.0.0"), ip("10.1.0.255"))]);
    }

    #[test]
    fn interval_elements_for_single_addresses() {
        let e = wire_elems([(ip("10.0.0.1"), Some("c"), None)].into_iter(), true);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].addr, ip("10.0.0.2"));
        assert!(e[1].interval_end && !e[0].interval_end);
        let e = wire_elems([(ip("255.255.255.255"), None, None)].into_iter(), true);
        assert_eq!(e.len(), 1, "no end element after the last address");
        let e = wire_elems([(ip("fd00::1"), None, None)].into_iter(), false);
        assert_eq!(e.len(), 1);
    }
}
