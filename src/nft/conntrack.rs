//! Conntrack cleanup through ctnetlink: when an address leaves the sets, flows it
//! started keep running on `ct state established` rules, and a reused address would
//! inherit them. `flush_source` deletes every conntrack entry whose original-direction
//! source is the address.
//!
//! How: one dump of the address's family, then one IPCTNL_MSG_CT_DELETE per match
//! carrying the entry's own original tuple (and zone), sent in chunks. Messages are
//! built and parsed with safe byte handling; no `unsafe` here.
//!
//! Kernel quirks this copes with:
//! - For IPv4 the dump asks the kernel to filter on the original source (CTA_FILTER,
//!   Linux ≥ 5.8) so a busy table is not copied out whole. Older kernels ignore the
//!   unknown attribute and dump everything; a kernel that refuses the filter
//!   (EOPNOTSUPP, EINVAL) gets the plain dump. Matching in userspace stays the
//!   authority either way.
//! - The kernel's IPv6 source filter is inverted (`!ipv6_addr_cmp(…)` in
//!   ctnetlink_filter_match_tuple, still so in 6.1 and 6.18): it drops exactly the
//!   entries asked for. IPv6 therefore always uses the plain dump.
//! - A filtered *flush* (IPCTNL_MSG_CT_DELETE with CTA_FILTER) is not used: 6.1
//!   (Debian 12) answers EOPNOTSUPP, it reports no count, and where it exists the
//!   inverted IPv6 filter would delete every IPv6 entry *except* the address's.
//! - Without ctnetlink, nfnetlink answers EINVAL ("no such subsystem"); a plain dump is
//!   never malformed, so EINVAL there means there is nothing to clean up.
//! - An entry can expire or be deleted between the dump and the delete: ENOENT.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;

use super::NftError;
use super::socket::NlSocket;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

// enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_filter (linux/netfilter/nfnetlink_conntrack.h)
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// CTA_FILTER_F_CTA_IP_SRC (net/netfilter/nf_internals.h; not in the uapi headers).
const CTA_FILTER_F_CTA_IP_SRC: u32 = 1 << 0;

/// Deletes per `sendmsg`: nfnetlink handles them inside the call and queues one ACK
/// each, so a client with thousands of flows must not overrun the receive buffer.
const DELETES_PER_SEND: usize = 256;

/// One open ctnetlink socket (NETLINK_NETFILTER, subsystem CTNETLINK) in the network
/// namespace it was opened in. Needs CAP_NET_ADMIN there.
pub struct Conntrack {
    sock: NlSocket,
    seq: u32,
}

/// One conntrack entry as the dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// nfgenmsg family of the entry (AF_INET, AF_INET6).
    family: u8,
    /// Original-direction source address.
    src: IpAddr,
    /// What an IPCTNL_MSG_CT_DELETE of exactly this entry carries: its original tuple
    /// and, when it has one, its zone.
    delete_attrs: Vec<u8>,
}

impl Conntrack {
    pub fn open() -> Result<Conntrack, NftError> {
        Ok(Conntrack {
            sock: NlSocket::open().map_err(|e| NftError::Conntrack {
                what: "opening a ctnetlink socket".into(),
                source: e,
            })?,
            seq: 1,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Deletes every conntrack entry whose original-direction source is `addr`;
    /// returns how many it deleted (entries that vanished meanwhile do not count).
    /// No conntrack in the kernel: `Ok(0)`.
    pub fn flush_source(&mut self, addr: IpAddr) -> Result<usize, NftError> {
        let counts = self.flush_sources(&BTreeSet::from([addr]), |_| false)?;
        Ok(counts.get(&addr).copied().unwrap_or(0))
    }

    /// [`Conntrack::flush_source`] for many addresses at once: ONE dump per family
    /// however many addresses (a dump walks the whole conntrack hash, ~8 ms at the
    /// default 262144 buckets), kernel-filtered when it is a lone IPv4 address.
    /// `spare(addr)` is asked after the dump and before any delete: an address that
    /// was handed to a new session meanwhile keeps its entries. Returns the number
    /// deleted per address that had any.
    pub fn flush_sources(
        &mut self,
        addrs: &BTreeSet<IpAddr>,
        spare: impl Fn(IpAddr) -> bool,
    ) -> Result<BTreeMap<IpAddr, usize>, NftError> {
        let mut deleted = BTreeMap::new();
        for v4 in [true, false] {
            let group: BTreeSet<IpAddr> = addrs
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .copied()
                .collect();
            if group.is_empty() {
                continue;
            }
            let Some(entries) = self.entries_from(&group)? else {
                return Ok(deleted);
            };
            let entries: Vec<Entry> = entries.into_iter().filter(|e| !spare(e.src)).collect();
            self.delete(&entries, &mut deleted)?;
        }
        Ok(deleted)
    }

    /// Deletes exactly these entries, counting per source address.
    fn delete(
        &mut self,
        entries: &[Entry],
        deleted: &mut BTreeMap<IpAddr, usize>,
    ) -> Result<(), NftError> {
        for chunk in entries.chunks(DELETES_PER_SEND) {
            let mut out = Vec::new();
            let mut seqs = Vec::with_capacity(chunk.len());
            for e in chunk {
                let seq = self.next_seq();
                seqs.push(seq);
                out.extend_from_slice(&message(
                    IPCTNL_MSG_CT_DELETE,
                    libc::NLM_F_ACK as u16,
                    seq,
                    e.family,
                    &e.delete_attrs,
                ));
            }
            let first = chunk.first().map(|e| e.src.to_string()).unwrap_or_default();
            let errors = self
                .sock
                .batch(&out, &seqs)
                .map_err(|e| context(format!("deleting conntrack entries of {first}"), e))?;
            if let Some(errno) = errors.values().find(|e| **e != libc::ENOENT) {
                return Err(context(
                    format!("deleting conntrack entries of {first}"),
                    io::Error::from_raw_os_error(*errno),
                ));
            }
            for (e, seq) in chunk.iter().zip(&seqs) {
                if !errors.contains_key(seq) {
                    *deleted.entry(e.src).or_insert(0) += 1;
                }
            }
        }
        Ok(())
    }

    /// The entries whose original source is one of `addrs` (all of one family);
    /// `None` when the kernel has no ctnetlink (so no conntrack to clean up).
    fn entries_from(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<Option<Vec<Entry>>, NftError> {
        let Some(first) = addrs.first().copied() else {
            return Ok(Some(Vec::new()));
        };
        let what = || {
            format!(
                "listing conntrack entries of {first} and {} more",
                addrs.len() - 1
            )
        };
        if first.is_ipv4() && addrs.len() == 1 {
            match self.dump(first, Some(first), addrs) {
                Ok(entries) => return Ok(Some(entries)),
                // The kernel refuses the filter, or has no ctnetlink at all: the
                // plain dump tells which.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {}
                Err(e) => return Err(context(what(), e)),
            }
        }
        match self.dump(first, None, addrs) {
            Ok(entries) => Ok(Some(entries)),
            Err(e) if no_ctnetlink(&e) => Ok(None),
            Err(e) => Err(context(what(), e)),
        }
    }

    /// One IPCTNL_MSG_CT_GET dump of `like`'s family, kept to entries from `addrs`;
    /// `kernel_filter` (IPv4 only: see the module notes) lets the kernel pre-select.
    fn dump(
        &mut self,
        like: IpAddr,
        kernel_filter: Option<IpAddr>,
        addrs: &BTreeSet<IpAddr>,
    ) -> io::Result<Vec<Entry>> {
        let seq = self.next_seq();
        let attrs = kernel_filter.map(source_filter).unwrap_or_default();
        let request = message(
            IPCTNL_MSG_CT_GET,
            libc::NLM_F_DUMP as u16,
            seq,
            family_of(like),
            &attrs,
        );
        // Both closures need the list: a dump the kernel marks interrupted starts over.
        let found = RefCell::new(Vec::new());
        self.sock.dump(
            &request,
            seq,
            |m| {
                if let Some(e) = parse_entry(m).filter(|e| addrs.contains(&e.src)) {
                    found.borrow_mut().push(e);
                }
            },
            || found.borrow_mut().clear(),
        )?;
        Ok(found.into_inner())
    }
}

/// The errors with which a kernel without ctnetlink (or without nf_conntrack) answers
/// a plain dump: EINVAL from nfnetlink for a missing subsystem.
fn no_ctnetlink(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT)
    )
}

fn context(what: String, source: io::Error) -> NftError {
    let what = if source.raw_os_error() == Some(libc::EPERM) {
        format!("{what} (vpnfw serve needs CAP_NET_ADMIN in this network namespace)")
    } else {
        what
    };
    NftError::Conntrack { what, source }
}

fn family_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// The dump filter "original source is `addr`": CTA_TUPLE_ORIG holding only the
/// address, and CTA_FILTER saying that only the address counts.
fn source_filter(addr: IpAddr) -> Vec<u8> {
    let src = match addr {
        IpAddr::V4(a) => attr(CTA_IP_V4_SRC, &a.octets()),
        IpAddr::V6(a) => attr(CTA_IP_V6_SRC, &a.octets()),
    };
    let ip = attr(CTA_TUPLE_IP | NLA_F_NESTED, &src);
    let mut out = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &ip);
    out.extend(attr(
        CTA_FILTER | NLA_F_NESTED,
        &attr(
            CTA_FILTER_ORIG_FLAGS,
            &CTA_FILTER_F_CTA_IP_SRC.to_ne_bytes(),
        ),
    ));
    out
}

/// One netlink attribute, padded to 4 bytes.
fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(NLA_HDRLEN + payload.len() + 3);
    a.extend_from_slice(&((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(payload);
    pad(&mut a);
    a
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// One ctnetlink request: nlmsghdr, nfgenmsg, attributes.
fn message(msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, res_id 0.
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// Netlink attributes of a buffer: (type without flags, whole attribute, payload).
/// Stops at the first attribute that does not fit.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = buf.get(off..off + NLA_HDRLEN)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        let whole = buf.get(off..off + len).filter(|_| len >= NLA_HDRLEN)?;
        off += (len + 3) & !3;
        Some((ty, whole, &whole[NLA_HDRLEN..]))
    })
}

fn find(buf: &[u8], ty: u16) -> Option<(&[u8], &[u8])> {
    attrs(buf)
        .find(|(t, _, _)| *t == ty)
        .map(|(_, w, p)| (w, p))
}

/// Reads one message of a conntrack dump: CTA_TUPLE_ORIG → CTA_TUPLE_IP →
/// CTA_IP_V4_SRC / CTA_IP_V6_SRC for the source; the whole CTA_TUPLE_ORIG (IP,
/// CTA_TUPLE_PROTO, a directional CTA_TUPLE_ZONE) and CTA_ZONE for the delete.
/// `None` for anything that is not a complete entry.
fn parse_entry(msg: &[u8]) -> Option<Entry> {
    let family = *msg.get(NLMSG_HDRLEN)?;
    let body = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..)?;
    let (orig_whole, orig) = find(body, CTA_TUPLE_ORIG)?;
    let (_, ip) = find(orig, CTA_TUPLE_IP)?;
    let src = if let Some((_, v)) = find(ip, CTA_IP_V4_SRC) {
        IpAddr::from(<[u8; 4]>::try_from(v).ok()?)
    } else {
        let (_, v) = find(ip, CTA_IP_V6_SRC)?;
        IpAddr::from(<[u8; 16]>::try_from(v).ok()?)
    };
    let mut delete_attrs = Vec::with_capacity(orig_whole.len() + 12);
    delete_attrs.extend_from_slice(orig_whole);
    // Requests mark nested attributes; older kernels dump the tuple without the flag.
    let ty = u16::from_ne_bytes([orig_whole[2], orig_whole[3]]) | NLA_F_NESTED;
    delete_attrs[2..4].copy_from_slice(&ty.to_ne_bytes());
    pad(&mut delete_attrs);
    if let Some((zone, _)) = find(body, CTA_ZONE) {
        delete_attrs.extend_from_slice(zone);
        pad(&mut delete_attrs);
    }
    Some(Entry {
        family,
        src,
        delete_attrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTA_TUPLE_REPLY: u16 = 2;
    const CTA_TUPLE_PROTO: u16 = 2;
    const CTA_IP_V4_DST: u16 = 2;
    const CTA_IP_V6_DST: u16 = 4;
    const CTA_PROTO_NUM: u16 = 1;
    const CTA_PROTO_SRC_PORT: u16 = 2;
    const CTA_PROTO_DST_PORT: u16 = 3;
    const CTA_STATUS: u16 = 3;

    fn tuple(ty: u16, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => [
                attr(CTA_IP_V4_SRC, &s.octets()),
                attr(CTA_IP_V4_DST, &d.octets()),
            ]
            .concat(),
            (IpAddr::V6(s), IpAddr::V6(d)) => [
                attr(CTA_IP_V6_SRC, &s.octets()),
                attr(CTA_IP_V6_DST, &d.octets()),
            ]
            .concat(),
            _ => panic!("mixed families"),
        };
        let proto = [
            attr(CTA_PROTO_NUM, &[6]),
            attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        attr(
            ty | NLA_F_NESTED,
            &[
                attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
                attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
            ]
            .concat(),
        )
    }

    /// A dump reply as the kernel builds it (ctnetlink_fill_info): original tuple,
    /// reply tuple, then zone (only when not the default), status, and more.
    fn ct_msg(src: &str, dst: &str, zone: Option<u16>) -> Vec<u8> {
        let (s, d): (IpAddr, IpAddr) = (src.parse().expect("ip"), dst.parse().expect("ip"));
        let mut body = tuple(CTA_TUPLE_ORIG, s, d, 40000, 7000);
        body.extend(tuple(CTA_TUPLE_REPLY, d, s, 7000, 40000));
        if let Some(z) = zone {
            body.extend(attr(CTA_ZONE, &z.to_be_bytes()));
        }
        body.extend(attr(CTA_STATUS, &0x18e_u32.to_be_bytes()));
        message(0, 0, 1, family_of(s), &body)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn reads_the_original_source_not_the_reply_one() {
        let e = parse_entry(&ct_msg("10.10.0.5", "192.0.2.2", None)).expect("entry");
        assert_eq!(e.src, ip("10.10.0.5"));
        assert_eq!(e.family, libc::AF_INET as u8);
        let e = parse_entry(&ct_msg("fd10::5", "2001:db8::2", None)).expect("entry");
        assert_eq!(e.src, ip("fd10::5"));
        assert_eq!(e.family, libc::AF_INET6 as u8);
    }

    #[test]
    fn delete_carries_the_whole_original_tuple_and_nothing_of_the_reply() {
        let m = ct_msg("10.10.0.5", "192.0.2.2", None);
        let e = parse_entry(&m).expect("entry");
        let orig = tuple(
            CTA_TUPLE_ORIG,
            ip("10.10.0.5"),
            ip("192.0.2.2"),
            40000,
            7000,
        );
        assert_eq!(e.delete_attrs, orig);
        let types: Vec<u16> = attrs(&e.delete_attrs).map(|(t, _, _)| t).collect();
        assert_eq!(types, vec![CTA_TUPLE_ORIG]);
    }

    #[test]
    fn delete_carries_the_zone_of_a_zoned_entry() {
        let e = parse_entry(&ct_msg("10.10.0.5", "192.0.2.2", Some(7))).expect("entry");
        let found: Vec<(u16, Vec<u8>)> = attrs(&e.delete_attrs)
            .map(|(t, _, p)| (t, p.to_vec()))
            .collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, CTA_TUPLE_ORIG);
        assert_eq!(found[1], (CTA_ZONE, vec![0, 7]));
    }

    #[test]
    fn an_unflagged_tuple_is_sent_back_flagged_nested() {
        let mut m = ct_msg("10.10.0.5", "192.0.2.2", None);
        // The first attribute after the headers is CTA_TUPLE_ORIG: clear its flag.
        let at = NLMSG_HDRLEN + NFGENMSG_LEN + 2;
        m[at..at + 2].copy_from_slice(&CTA_TUPLE_ORIG.to_ne_bytes());
        let e = parse_entry(&m).expect("entry");
        let ty = u16::from_ne_bytes([e.delete_attrs[2], e.delete_attrs[3]]);
        assert_eq!(ty, CTA_TUPLE_ORIG | NLA_F_NESTED);
    }

    #[test]
    fn truncated_or_malformed_messages_are_not_entries() {
        let m = ct_msg("fd10::5", "2001:db8::2", Some(3));
        for len in 0..m.len() {
            // Any prefix parses without panicking; none that cuts the tuple matches.
            let _ = parse_entry(&m[..len]);
        }
        let tuple_end = NLMSG_HDRLEN + NFGENMSG_LEN + 20;
        assert!(parse_entry(&m[..tuple_end]).is_none());
        // An attribute claiming to be longer than the message.
        let mut bad = ct_msg("10.10.0.5", "192.0.2.2", None);
        let at = NLMSG_HDRLEN + NFGENMSG_LEN;
        bad[at..at + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert!(parse_entry(&bad).is_none());
        // An attribute length below the header size.
        bad[at..at + 2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(parse_entry(&bad).is_none());
        // A source of the wrong length.
        let mut short = ct_msg("10.10.0.5", "192.0.2.2", None);
        let src_len_at = NLMSG_HDRLEN + NFGENMSG_LEN + 8;
        assert_eq!(
            u16::from_ne_bytes([short[src_len_at], short[src_len_at + 1]]),
            8
        );
        short[src_len_at..src_len_at + 2].copy_from_slice(&6u16.to_ne_bytes());
        assert!(parse_entry(&short).is_none());
    }

    #[test]
    fn dump_filter_asks_for_the_original_source_only() {
        let f = source_filter(ip("10.10.0.5"));
        let top: Vec<(u16, Vec<u8>)> = attrs(&f).map(|(t, _, p)| (t, p.to_vec())).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, CTA_TUPLE_ORIG);
        let (_, ipn) = find(&top[0].1, CTA_TUPLE_IP).expect("tuple ip");
        let (_, src) = find(ipn, CTA_IP_V4_SRC).expect("v4 src");
        assert_eq!(src, [10, 10, 0, 5]);
        assert_eq!(top[1].0, CTA_FILTER);
        let (_, flags) = find(&top[1].1, CTA_FILTER_ORIG_FLAGS).expect("orig flags");
        assert_eq!(flags, 1u32.to_ne_bytes());
        let f6 = source_filter(ip("fd10::5"));
        let (_, orig) = find(&f6, CTA_TUPLE_ORIG).expect("orig");
        let (_, ipn) = find(orig, CTA_TUPLE_IP).expect("tuple ip");
        assert!(find(ipn, CTA_IP_V4_SRC).is_none());
        let (_, src) = find(ipn, CTA_IP_V6_SRC).expect("v6 src");
        assert_eq!(
            src,
            "fd10::5"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets()
        );
    }

    /// One reply of a filtered dump on Linux 6.18, as received: a TCP flow
    /// 10.10.0.5:34700 → 192.0.2.2:7000 in conntrack zone 7 (the integration test's
    /// topology), with status, timeout, mark, id, use, protoinfo.
    const KERNEL_6_18_TCP_ZONE_7: &str = "dc0000000001220002000000c6530000020000003400018014000180\
        080001000a0a000508000200c00002021c000280050001000600000006000200878c0000060003001b58\
        0000340002801400018008000100c0000202080002000a0a00051c0002800500010006000000060002\
        001b58000006000300878c00000600120000070000080003000000000e080008000000000008000c00c4\
        15722f08000b0000000001080007000000012c300004802c00018005000100030000000500020\
        00a000000050003000a00000006000400230000000600050033000000";

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn parses_a_message_the_kernel_sent() {
        let m = unhex(KERNEL_6_18_TCP_ZONE_7);
        assert_eq!(m.len(), 0xdc);
        let e = parse_entry(&m).expect("entry");
        assert_eq!(e.src, ip("10.10.0.5"));
        assert_eq!(e.family, libc::AF_INET as u8);
        // The original tuple exactly as dumped (0x34 bytes), then CTA_ZONE 7 padded.
        let orig = &m[NLMSG_HDRLEN + NFGENMSG_LEN..NLMSG_HDRLEN + NFGENMSG_LEN + 0x34];
        assert_eq!(&e.delete_attrs[..0x34], orig);
        assert_eq!(&e.delete_attrs[0x34..], &[6, 0, 18, 0, 0, 7, 0, 0]);
        let (_, tuple) = find(&e.delete_attrs, CTA_TUPLE_ORIG).expect("tuple");
        let (_, proto) = find(tuple, CTA_TUPLE_PROTO).expect("proto");
        assert_eq!(find(proto, CTA_PROTO_NUM).map(|(_, p)| p), Some(&[6u8][..]));
        assert_eq!(
            find(proto, CTA_PROTO_DST_PORT).map(|(_, p)| p),
            Some(&7000u16.to_be_bytes()[..])
        );
    }

    #[test]
    fn requests_are_ctnetlink_messages_with_the_family() {
        let m = message(
            IPCTNL_MSG_CT_DELETE,
            libc::NLM_F_ACK as u16,
            9,
            10,
            &[1, 2, 3, 4],
        );
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), (1 << 8) | 2);
        let flags = u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(flags, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16);
        assert_eq!(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), 9);
        assert_eq!(&m[16..20], &[10, 0, 0, 0]);
    }
}
