//! nf_tables netlink messages built and parsed with libnftnl (through `nftnl-sys`).
//!
//! Every `unsafe` block of vpnfw that builds or parses a message lives here. The
//! pattern is always the same: allocate a libnftnl object, fill it with attributes
//! (libnftnl copies strings and data), let libnftnl serialise it into a scratch
//! buffer that is large enough and aligned for `nlmsghdr`, copy `nlmsg_len` bytes out.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::net::IpAddr;
use std::ptr::NonNull;

use nftnl_sys as sys;
use nftnl_sys::libc;

use super::{Family, KeyType, SetSpec};

/// NFPROTO_INET: every vpnfw table is `inet`.
pub const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;

/// nftables' datatype ids for the key types vpnfw uses.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;

/// NFT_MSG_DESTROYSETELEM (kernel ≥ 6.3): delete, ignoring absent elements.
pub const NFT_MSG_DESTROYSETELEM: c_int = 30;

/// `NFTNL_UDATA_SET_ELEM_COMMENT`: the TLV type `nft` reads element comments from.
const UDATA_SET_ELEM_COMMENT: u8 = 0;

/// Longest comment stored, in bytes (nft's own limit is 128 characters).
pub const MAX_COMMENT: usize = 128;

/// Elements per NEWSETELEM/DELSETELEM message. Each element takes at most ~180 bytes
/// (IPv6 key, flags, 128-byte comment, nesting), so a message stays well inside the
/// 64 KiB an attribute length can describe and inside one scratch buffer.
pub const ELEMS_PER_MSG: usize = 200;

/// Scratch space for serialising one message: 200 × 180 bytes plus headers fits.
const SCRATCH_BYTES: usize = 128 * 1024;

/// A buffer aligned for `nlmsghdr` (8 bytes), reused for every message.
pub struct Scratch(Vec<u64>);

impl Scratch {
    pub fn new() -> Scratch {
        Scratch(vec![0u64; SCRATCH_BYTES / 8])
    }

    fn as_mut_ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr().cast()
    }

    /// Appends the message libnftnl just wrote at the start of the buffer to `out`.
    fn append_to(&self, nlh: *mut libc::nlmsghdr, out: &mut Vec<u8>) {
        // SAFETY: `nlh` points at the start of `self.0`, where libnftnl wrote a
        // complete message whose `nlmsg_len` it set; it is within SCRATCH_BYTES
        // because every builder below bounds what it serialises (ELEMS_PER_MSG).
        let len = unsafe { (*nlh).nlmsg_len } as usize;
        let len = len.min(SCRATCH_BYTES);
        // SAFETY: `self.0` is SCRATCH_BYTES long and initialised (zeroed at
        // allocation, then overwritten by libnftnl); `len` is clamped to that.
        let bytes = unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), len) };
        out.extend_from_slice(bytes);
    }
}

/// An owned `nftnl_table`.
struct Table(NonNull<sys::nftnl_table>);

impl Table {
    fn new(name: &CStr) -> Option<Table> {
        // SAFETY: plain allocation; NULL is handled.
        let t = NonNull::new(unsafe { sys::nftnl_table_alloc() })?;
        // SAFETY: `t` is a live table; libnftnl copies the string.
        unsafe {
            sys::nftnl_table_set_str(t.as_ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(
                t.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                FAMILY_INET as u32,
            );
        }
        Some(Table(t))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: we own the table and free it exactly once.
        unsafe { sys::nftnl_table_free(self.0.as_ptr()) }
    }
}

/// An owned `nftnl_set` (its elements are owned by it).
struct Set(NonNull<sys::nftnl_set>);

impl Set {
    fn new(table: &CStr, name: Option<&CStr>) -> Option<Set> {
        // SAFETY: plain allocation; NULL is handled.
        let s = NonNull::new(unsafe { sys::nftnl_set_alloc() })?;
        // SAFETY: `s` is a live set; libnftnl copies the strings.
        unsafe {
            sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            if let Some(name) = name {
                sys::nftnl_set_set_str(s.as_ptr(), sys::NFTNL_SET_NAME as u16, name.as_ptr());
            }
            sys::nftnl_set_set_u32(s.as_ptr(), sys::NFTNL_SET_FAMILY as u16, FAMILY_INET as u32);
        }
        Some(Set(s))
    }

    fn empty() -> Option<Set> {
        // SAFETY: plain allocation; NULL is handled.
        NonNull::new(unsafe { sys::nftnl_set_alloc() }).map(Set)
    }

    fn set_u32(&mut self, attr: u32, val: u32) {
        // SAFETY: `self.0` is a live set; u32 attributes are copied.
        unsafe { sys::nftnl_set_set_u32(self.0.as_ptr(), attr as u16, val) }
    }

    fn add_elem(&mut self, elem: &Elem<'_>) -> bool {
        // SAFETY: plain allocation; NULL is handled.
        let Some(e) = NonNull::new(unsafe { sys::nftnl_set_elem_alloc() }) else {
            return false;
        };
        let (key, key_len) = key_bytes(elem.addr);
        // SAFETY: `e` is a live element; libnftnl copies `key_len` bytes of the key,
        // the flags and the userdata. Ownership of `e` passes to the set.
        unsafe {
            sys::nftnl_set_elem_set(
                e.as_ptr(),
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr().cast::<c_void>(),
                key_len,
            );
            if elem.interval_end {
                let flags = libc::NFT_SET_ELEM_INTERVAL_END as u32;
                sys::nftnl_set_elem_set(
                    e.as_ptr(),
                    sys::NFTNL_SET_ELEM_FLAGS as u16,
                    (&flags as *const u32).cast::<c_void>(),
                    4,
                );
            }
            if let Some(chain) = elem.jump.and_then(cstring) {
                let verdict = libc::NFT_JUMP as u32;
                sys::nftnl_set_elem_set(
                    e.as_ptr(),
                    sys::NFTNL_SET_ELEM_VERDICT as u16,
                    (&verdict as *const u32).cast::<c_void>(),
                    4,
                );
                // libnftnl copies the NUL-terminated chain name.
                sys::nftnl_set_elem_set(
                    e.as_ptr(),
                    sys::NFTNL_SET_ELEM_CHAIN as u16,
                    chain.as_ptr().cast::<c_void>(),
                    chain.as_bytes_with_nul().len() as u32,
                );
            }
            if let Some(comment) = elem.comment.filter(|c| !c.is_empty()) {
                let udata = comment_udata(comment);
                sys::nftnl_set_elem_set(
                    e.as_ptr(),
                    sys::NFTNL_SET_ELEM_USERDATA as u16,
                    udata.as_ptr().cast::<c_void>(),
                    udata.len() as u32,
                );
            }
            sys::nftnl_set_elem_add(self.0.as_ptr(), e.as_ptr());
        }
        true
    }
}

impl Drop for Set {
    fn drop(&mut self) {
        // SAFETY: we own the set (and through it its elements); freed exactly once.
        unsafe { sys::nftnl_set_free(self.0.as_ptr()) }
    }
}

/// One element as it goes on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Elem<'a> {
    pub addr: IpAddr,
    /// The end element of an interval (`NFT_SET_ELEM_INTERVAL_END`).
    pub interval_end: bool,
    pub comment: Option<&'a str>,
    /// Verdict maps: `jump <chain>` as the element's data.
    pub jump: Option<&'a str>,
}

fn key_bytes(addr: IpAddr) -> ([u8; 16], u32) {
    let mut key = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            key[..4].copy_from_slice(&a.octets());
            (key, 4)
        }
        IpAddr::V6(a) => {
            key.copy_from_slice(&a.octets());
            (key, 16)
        }
    }
}

/// The userdata TLV `nft` shows as `comment "…"`: type, length, NUL-terminated text.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut end = comment.len().min(MAX_COMMENT);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let text: Vec<u8> = comment.as_bytes()[..end]
        .iter()
        .copied()
        .filter(|b| *b != 0)
        .collect();
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(UDATA_SET_ELEM_COMMENT);
    out.push((text.len() + 1) as u8);
    out.extend_from_slice(&text);
    out.push(0);
    out
}

/// Names cannot contain NUL: validated names never do; anything else is refused.
pub fn cstring(s: &str) -> Option<CString> {
    CString::new(s).ok()
}

pub fn batch_begin(scratch: &mut Scratch, out: &mut Vec<u8>, seq: u32) {
    // SAFETY: the scratch buffer is far larger than a batch header.
    let nlh = unsafe { sys::nftnl_batch_begin(scratch.as_mut_ptr(), seq) };
    scratch.append_to(nlh, out);
}

/// NFNL_MSG_BATCH_BEGIN carrying NFNL_BATCH_GENID: the kernel runs the batch only if
/// the ruleset generation is still `genid` (else ERESTART, nothing applied).
pub fn batch_begin_at(scratch: &mut Scratch, out: &mut Vec<u8>, seq: u32, genid: u32) {
    let start = out.len();
    batch_begin(scratch, out, seq);
    // struct nlattr { u16 nla_len; u16 nla_type; } + a big-endian u32 payload.
    out.extend_from_slice(&8u16.to_ne_bytes());
    out.extend_from_slice(&NFNL_BATCH_GENID.to_ne_bytes());
    out.extend_from_slice(&genid.to_be_bytes());
    if let Some(len) = out.get_mut(start..start + 4) {
        let new = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) + 8;
        len.copy_from_slice(&new.to_ne_bytes());
    }
}

/// NFT_MSG_GETGEN: asks for the ruleset generation (answered by one NEWGEN).
pub fn get_gen(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family AF_UNSPEC, version 0, res_id 0.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

/// The NFTA_GEN_ID of a NEWGEN message.
pub fn parse_gen(msg: &[u8]) -> Option<u32> {
    let mut rest = msg.get(NLMSG_HDRLEN + 4..)?;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if ty == NFTA_GEN_ID && len == 8 {
            return Some(u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]));
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

const NLMSG_HDRLEN: usize = 16;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFNL_BATCH_GENID: u16 = 1;

pub fn batch_end(scratch: &mut Scratch, out: &mut Vec<u8>, seq: u32) {
    // SAFETY: the scratch buffer is far larger than a batch header.
    let nlh = unsafe { sys::nftnl_batch_end(scratch.as_mut_ptr(), seq) };
    scratch.append_to(nlh, out);
}

fn header(scratch: &mut Scratch, msg_type: c_int, flags: c_int, seq: u32) -> *mut libc::nlmsghdr {
    // SAFETY: the scratch buffer is far larger than a header; libnftnl adds the
    // nf_tables subsystem to the message type.
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            scratch.as_mut_ptr(),
            msg_type as u16,
            FAMILY_INET,
            flags as u16,
            seq,
        )
    }
}

/// NEWTABLE without NLM_F_EXCL: succeeds when the table exists.
pub fn new_table(scratch: &mut Scratch, out: &mut Vec<u8>, seq: u32, table: &CStr) -> bool {
    let Some(t) = Table::new(table) else {
        return false;
    };
    let nlh = header(
        scratch,
        libc::NFT_MSG_NEWTABLE,
        libc::NLM_F_CREATE | libc::NLM_F_ACK,
        seq,
    );
    // SAFETY: `nlh` heads the scratch buffer, `t` is a live table with a short name.
    unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, t.0.as_ptr()) };
    scratch.append_to(nlh, out);
    true
}

/// NEWSET of a named set of addresses, without NLM_F_EXCL: succeeds when an identical
/// set exists, fails (EEXIST) when one with another type does.
pub fn new_set(
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
    seq: u32,
    table: &CStr,
    name: &CStr,
    spec: &SetSpec,
    id: u32,
) -> bool {
    let Some(mut s) = Set::new(table, Some(name)) else {
        return false;
    };
    if spec.verdict_map {
        s.set_u32(sys::NFTNL_SET_FLAGS, libc::NFT_SET_MAP as u32);
        s.set_u32(sys::NFTNL_SET_DATA_TYPE, libc::NFT_DATA_VERDICT);
        // The kernel sizes verdict data itself; nft passes the register size.
        s.set_u32(sys::NFTNL_SET_DATA_LEN, 16);
    }
    let (ty, len) = match spec.family {
        Family::V4 => (TYPE_IPV4_ADDR, 4),
        Family::V6 => (TYPE_IPV6_ADDR, 16),
    };
    s.set_u32(sys::NFTNL_SET_KEY_TYPE, ty);
    s.set_u32(sys::NFTNL_SET_KEY_LEN, len);
    s.set_u32(sys::NFTNL_SET_ID, id);
    let nlh = header(
        scratch,
        libc::NFT_MSG_NEWSET,
        libc::NLM_F_CREATE | libc::NLM_F_ACK,
        seq,
    );
    // SAFETY: `nlh` heads the scratch buffer; `s` is a live set with short names.
    unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, s.0.as_ptr()) };
    scratch.append_to(nlh, out);
    true
}

/// One NEWSETELEM / DELSETELEM / DESTROYSETELEM message for up to `ELEMS_PER_MSG`
/// elements. Adds carry NLM_F_CREATE but never NLM_F_EXCL (nftnl's own builder always
/// sets EXCL), so re-adding a present element succeeds.
pub fn set_elems(
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
    seq: u32,
    msg_type: c_int,
    table: &CStr,
    set: &CStr,
    elems: &[Elem<'_>],
) -> bool {
    debug_assert!(elems.len() <= ELEMS_PER_MSG);
    let Some(mut s) = Set::new(table, Some(set)) else {
        return false;
    };
    for e in elems.iter().take(ELEMS_PER_MSG) {
        if !s.add_elem(e) {
            return false;
        }
    }
    let flags = if msg_type == libc::NFT_MSG_NEWSETELEM {
        libc::NLM_F_CREATE | libc::NLM_F_ACK
    } else {
        libc::NLM_F_ACK
    };
    let nlh = header(scratch, msg_type, flags, seq);
    // SAFETY: `nlh` heads the scratch buffer, which holds ELEMS_PER_MSG elements of
    // at most ~180 bytes each; `s` is a live set that owns its elements.
    unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.0.as_ptr()) };
    scratch.append_to(nlh, out);
    true
}

/// GETSET dump request for the sets of one table.
pub fn get_sets(scratch: &mut Scratch, seq: u32, table: &CStr) -> Option<Vec<u8>> {
    let s = Set::new(table, None)?;
    let nlh = header(
        scratch,
        libc::NFT_MSG_GETSET,
        libc::NLM_F_DUMP | libc::NLM_F_ACK,
        seq,
    );
    // SAFETY: `nlh` heads the scratch buffer; `s` carries only the table name.
    unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, s.0.as_ptr()) };
    let mut out = Vec::new();
    scratch.append_to(nlh, &mut out);
    Some(out)
}

/// GETSETELEM dump request for one set.
pub fn get_set_elems(scratch: &mut Scratch, seq: u32, table: &CStr, set: &CStr) -> Option<Vec<u8>> {
    let s = Set::new(table, Some(set))?;
    let nlh = header(
        scratch,
        libc::NFT_MSG_GETSETELEM,
        libc::NLM_F_DUMP | libc::NLM_F_ACK,
        seq,
    );
    // SAFETY: `nlh` heads the scratch buffer; `s` has no elements, so the payload is
    // just the table and set names.
    unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, s.0.as_ptr()) };
    let mut out = Vec::new();
    scratch.append_to(nlh, &mut out);
    Some(out)
}

/// A set as a NEWSET dump message describes it.
#[derive(Debug, Clone)]
pub struct ParsedSet {
    pub table: String,
    pub name: String,
    pub key: KeyType,
    pub flags: u32,
}

fn str_attr(s: &Set, attr: u32) -> Option<String> {
    // SAFETY: `s` is a live set; the attribute is checked before it is read, and the
    // returned string is NUL-terminated and owned by the set, copied out at once.
    unsafe {
        if !sys::nftnl_set_is_set(s.0.as_ptr(), attr as u16) {
            return None;
        }
        let p = sys::nftnl_set_get_str(s.0.as_ptr(), attr as u16);
        if p.is_null() {
            return None;
        }
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

fn u32_attr(s: &Set, attr: u32) -> u32 {
    // SAFETY: `s` is a live set; absent attributes read as 0.
    unsafe {
        if sys::nftnl_set_is_set(s.0.as_ptr(), attr as u16) {
            sys::nftnl_set_get_u32(s.0.as_ptr(), attr as u16)
        } else {
            0
        }
    }
}

/// Parses one NEWSET message of a GETSET dump.
///
/// # Safety
/// `nlh` must point at a complete netlink message, aligned for `nlmsghdr`.
pub unsafe fn parse_set(nlh: *const libc::nlmsghdr) -> Option<ParsedSet> {
    let s = Set::empty()?;
    // SAFETY: the caller guarantees a complete, aligned message; `s` is live.
    if unsafe { sys::nftnl_set_nlmsg_parse(nlh, s.0.as_ptr()) } < 0 {
        return None;
    }
    let datatype = u32_attr(&s, sys::NFTNL_SET_KEY_TYPE);
    let len = u32_attr(&s, sys::NFTNL_SET_KEY_LEN);
    let key = match (datatype, len) {
        (TYPE_IPV4_ADDR, 4) => KeyType::Ipv4Addr,
        (TYPE_IPV6_ADDR, 16) => KeyType::Ipv6Addr,
        _ => KeyType::Other { datatype, len },
    };
    Some(ParsedSet {
        table: str_attr(&s, sys::NFTNL_SET_TABLE)?,
        name: str_attr(&s, sys::NFTNL_SET_NAME)?,
        key,
        flags: u32_attr(&s, sys::NFTNL_SET_FLAGS),
    })
}

/// One element as a dump reports it: its key bytes and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawElem {
    /// The key as an address; `Err(length)` for a key that is not 4 or 16 bytes.
    pub key: Result<IpAddr, usize>,
    pub interval_end: bool,
}

/// Parses one NEWSETELEM message of a GETSETELEM dump.
///
/// # Safety
/// `nlh` must point at a complete netlink message, aligned for `nlmsghdr`.
pub unsafe fn parse_elems(nlh: *const libc::nlmsghdr, out: &mut Vec<RawElem>) -> bool {
    let Some(s) = Set::empty() else {
        return false;
    };
    // SAFETY: the caller guarantees a complete, aligned message; `s` is live.
    if unsafe { sys::nftnl_set_elems_nlmsg_parse(nlh, s.0.as_ptr()) } < 0 {
        return false;
    }
    // SAFETY: `s` is live for the iterator's whole life; the iterator is destroyed
    // before `s` is dropped; every element pointer it yields belongs to `s` and is
    // only read (key copied out) while `s` lives.
    unsafe {
        let iter = sys::nftnl_set_elems_iter_create(s.0.as_ptr());
        if iter.is_null() {
            return false;
        }
        loop {
            let e = sys::nftnl_set_elems_iter_next(iter);
            if e.is_null() {
                break;
            }
            let mut len: u32 = 0;
            let key = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
            let key = if key.is_null() {
                Err(0)
            } else {
                let bytes = std::slice::from_raw_parts(key.cast::<u8>(), len as usize);
                super::addr_of(bytes).ok_or(bytes.len())
            };
            let flags = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_FLAGS as u16) {
                sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
            } else {
                0
            };
            out.push(RawElem {
                key,
                interval_end: flags & libc::NFT_SET_ELEM_INTERVAL_END as u32 != 0,
            });
        }
        sys::nftnl_set_elems_iter_destroy(iter);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_request_and_reply() {
        let req = get_gen(7);
        assert_eq!(req.len(), 20);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), (10 << 8) | 16);
        // A NEWGEN reply: header, nfgenmsg, NFTA_GEN_ID = 0x01020304, a PID attr.
        let mut reply = vec![0u8; 20];
        reply.extend_from_slice(&8u16.to_ne_bytes());
        reply.extend_from_slice(&1u16.to_ne_bytes());
        reply.extend_from_slice(&[1, 2, 3, 4]);
        reply.extend_from_slice(&8u16.to_ne_bytes());
        reply.extend_from_slice(&2u16.to_ne_bytes());
        reply.extend_from_slice(&[0, 0, 0, 9]);
        assert_eq!(parse_gen(&reply), Some(0x0102_0304));
        assert_eq!(parse_gen(&reply[..22]), None, "truncated attribute");
        assert_eq!(parse_gen(&reply[..16]), None, "no payload");
    }

    #[test]
    fn batch_begin_carries_the_generation() {
        let mut scratch = Scratch::new();
        let mut out = vec![9u8; 3];
        batch_begin_at(&mut scratch, &mut out, 5, 0xdead_beef);
        let m = &out[3..];
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(m.len(), 28);
        assert_eq!(&m[20..22], &8u16.to_ne_bytes()[..]);
        assert_eq!(&m[22..24], &1u16.to_ne_bytes()[..]);
        assert_eq!(&m[24..28], &0xdead_beefu32.to_be_bytes()[..]);
    }

    #[test]
    fn comment_tlv_is_bounded_and_terminated() {
        let u = comment_udata("user=a conn=b");
        assert_eq!(u[0], UDATA_SET_ELEM_COMMENT);
        assert_eq!(u[1] as usize, "user=a conn=b".len() + 1);
        assert_eq!(*u.last().expect("nul"), 0);
        let long = "é".repeat(200);
        let u = comment_udata(&long);
        assert!(u.len() <= MAX_COMMENT + 3);
        assert!(std::str::from_utf8(&u[2..u.len() - 1]).is_ok());
    }
}
