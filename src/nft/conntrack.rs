//! Conntrack cleanup through ctnetlink: when an address leaves the sets, flows it
//! started keep running on `ct state established` rules, and a reused address would
//! inherit them. `flush_source` deletes every conntrack entry whose original source is
//! the address.
//!
//! Messages are built and parsed with safe byte handling: a dump of the address's
//! family, then one IPCTNL_MSG_CT_DELETE per match carrying the entry's own original
//! tuple (and zone), all deletes in one send. An entry that vanished meanwhile
//! (ENOENT) is not an error.

use std::io;
use std::net::IpAddr;

use super::NftError;
use super::socket::NlSocket;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_F_NESTED: u16 = 0x8000;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_ZONE: u16 = 18;

/// One open ctnetlink socket.
pub struct Conntrack {
    sock: NlSocket,
    seq: u32,
}

impl Conntrack {
    pub fn open() -> Result<Conntrack, NftError> {
        Ok(Conntrack {
            sock: NlSocket::open().map_err(NftError::Open)?,
            seq: 1,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Deletes every conntrack entry whose original-direction source is `addr`;
    /// returns how many it deleted. No conntrack in the kernel: `Ok(0)`.
    pub fn flush_source(&mut self, addr: IpAddr) -> Result<usize, NftError> {
        let family = match addr {
            IpAddr::V4(_) => libc::AF_INET as u8,
            IpAddr::V6(_) => libc::AF_INET6 as u8,
        };
        let seq = self.next_seq();
        let request = message(IPCTNL_MSG_CT_GET, libc::NLM_F_DUMP as u16, seq, family, &[]);
        let mut matches: Vec<Vec<u8>> = Vec::new();
        let result = self.sock.dump(
            &request,
            seq,
            |m| {
                if let Some(attrs) = delete_attrs_if_source(m, addr) {
                    matches.push(attrs);
                }
            },
            || {},
        );
        match result {
            Ok(()) => {}
            // Without nf_conntrack there is nothing to clean up.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOENT)) => {
                return Ok(0);
            }
            Err(e) => {
                return Err(NftError::Conntrack {
                    what: format!("listing conntrack entries of {addr}"),
                    source: e,
                });
            }
        }
        if matches.is_empty() {
            return Ok(0);
        }
        let mut out = Vec::new();
        let mut seqs = Vec::with_capacity(matches.len());
        for attrs in &matches {
            let seq = self.next_seq();
            seqs.push(seq);
            out.extend_from_slice(&message(
                IPCTNL_MSG_CT_DELETE,
                libc::NLM_F_ACK as u16,
                seq,
                family,
                attrs,
            ));
        }
        let errors = self
            .sock
            .batch(&out, &seqs)
            .map_err(|e| NftError::Conntrack {
                what: format!("deleting conntrack entries of {addr}"),
                source: e,
            })?;
        let failed = errors.values().find(|e| **e != libc::ENOENT);
        if let Some(errno) = failed {
            return Err(NftError::Conntrack {
                what: format!("deleting conntrack entries of {addr}"),
                source: io::Error::from_raw_os_error(*errno),
            });
        }
        Ok(matches.len() - errors.len())
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
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// Netlink attributes of a buffer: (type without flags, whole attribute, payload).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let whole = &buf[off..off + len];
        off += (len + 3) & !3;
        Some((ty, whole, &whole[4..]))
    })
}

fn find(buf: &[u8], ty: u16) -> Option<(&[u8], &[u8])> {
    attrs(buf)
        .find(|(t, _, _)| *t == ty)
        .map(|(_, w, p)| (w, p))
}

/// For a conntrack message whose original source is `addr`: the attributes a delete
/// needs (the original tuple and, when present, the zone), padded to 4 bytes.
fn delete_attrs_if_source(msg: &[u8], addr: IpAddr) -> Option<Vec<u8>> {
    let body = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..)?;
    let (orig_whole, orig) = find(body, CTA_TUPLE_ORIG)?;
    let (_, ip) = find(orig, CTA_TUPLE_IP)?;
    let src = match addr {
        IpAddr::V4(a) => {
            let (_, v) = find(ip, CTA_IP_V4_SRC)?;
            v == a.octets()
        }
        IpAddr::V6(a) => {
            let (_, v) = find(ip, CTA_IP_V6_SRC)?;
            v == a.octets()
        }
    };
    if !src {
        return None;
    }
    let mut out = Vec::with_capacity(orig_whole.len() + 12);
    push_padded(&mut out, orig_whole);
    if let Some((zone, _)) = find(body, CTA_ZONE) {
        push_padded(&mut out, zone);
    }
    // The dump marks nested attributes; keep the flag the kernel expects on requests.
    if let Some(t) = out.get_mut(2..4) {
        let ty = u16::from_ne_bytes([t[0], t[1]]) | NLA_F_NESTED;
        t.copy_from_slice(&ty.to_ne_bytes());
    }
    Some(out)
}

fn push_padded(out: &mut Vec<u8>, attr: &[u8]) {
    out.extend_from_slice(attr);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    fn ct_msg(src: [u8; 4], zone: Option<u16>) -> Vec<u8> {
        let ip = attr(
            CTA_TUPLE_IP | NLA_F_NESTED,
            &[attr(CTA_IP_V4_SRC, &src), attr(2, &[9, 9, 9, 9])].concat(),
        );
        let proto = attr(2 | NLA_F_NESTED, &attr(1, &[6]));
        let orig = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &[ip, proto].concat());
        let mut body = orig;
        body.extend(attr(2 | NLA_F_NESTED, &[0; 8]));
        if let Some(z) = zone {
            body.extend(attr(CTA_ZONE, &z.to_be_bytes()));
        }
        let mut m = message(0, 0, 1, libc::AF_INET as u8, &body);
        m.truncate(NLMSG_HDRLEN + NFGENMSG_LEN + body.len());
        m
    }

    #[test]
    fn matches_only_the_original_source() {
        let a: IpAddr = "10.0.0.5".parse().expect("ip");
        assert!(delete_attrs_if_source(&ct_msg([10, 0, 0, 6], None), a).is_none());
        let attrs = delete_attrs_if_source(&ct_msg([10, 0, 0, 5], None), a).expect("match");
        let (ty, _, payload) = super::attrs(&attrs).next().expect("tuple");
        assert_eq!(ty, CTA_TUPLE_ORIG);
        assert!(find(payload, CTA_TUPLE_IP).is_some());
        let with_zone = delete_attrs_if_source(&ct_msg([10, 0, 0, 5], Some(7)), a).expect("match");
        assert!(super::attrs(&with_zone).any(|(t, _, p)| t == CTA_ZONE && p == [0, 7]));
        let v6: IpAddr = "fd00::5".parse().expect("ip");
        assert!(delete_attrs_if_source(&ct_msg([10, 0, 0, 5], None), v6).is_none());
    }

    #[test]
    fn truncated_messages_do_not_match() {
        let a: IpAddr = "10.0.0.5".parse().expect("ip");
        let m = ct_msg([10, 0, 0, 5], None);
        for len in 0..m.len() - 1 {
            let _ = delete_attrs_if_source(&m[..len], a);
        }
    }
}
