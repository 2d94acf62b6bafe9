//! Asks the running kernel whether it knows a batch message type, instead of guessing
//! from the release string: EL9's 5.14 kernels carry backported nf_tables features,
//! and a custom kernel may lack them.
//!
//! The probe is a batch of BATCH_BEGIN plus one message of the type in question,
//! aimed at a table that does not exist, and deliberately *without* BATCH_END.
//! nfnetlink still runs every message and reports its errno, but a batch that never
//! ends is always aborted, so the probe can change nothing even if a table of that
//! name existed. The answers:
//! - ENOENT: the type is known and looked up the table (DESTROYSETELEM on ≥ 6.3);
//! - EINVAL: nfnetlink has no handler for the type (older kernels);
//! - 0: known, and a table of that name existed (nothing committed, see above).
//!
//! The message is built with safe byte handling; there is no `unsafe` here.

use super::msg;
use super::socket::NlSocket;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;

// linux/netfilter/nf_tables.h
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;

/// A table name no ruleset is expected to use (harmless if one does: see above).
const PROBE_TABLE: &str = "vpnfw-probe-no-such-table";
const PROBE_SET: &str = "probe";

/// Whether the kernel handles nf_tables batch message `msg_type` (an NFT_MSG_* value
/// with a set-element payload). Anything but a clear yes counts as no, so callers
/// fall back to what every kernel supports.
pub fn kernel_knows(
    sock: &mut NlSocket,
    scratch: &mut msg::Scratch,
    msg_type: u16,
    begin_seq: u32,
    seq: u32,
) -> bool {
    let mut out = Vec::new();
    msg::batch_begin(scratch, &mut out, begin_seq);
    out.extend_from_slice(&elem_message(msg_type, seq));
    match sock.batch(&out, &[seq]) {
        Ok(errors) => match errors.get(&seq) {
            None => true,
            Some(&errno) => errno == libc::ENOENT,
        },
        Err(_) => false,
    }
}

/// One set-element message for table PROBE_TABLE, set PROBE_SET, holding 0.0.0.0.
/// An element is included so that a delete type cannot mean "flush the set".
fn elem_message(msg_type: u16, seq: u32) -> Vec<u8> {
    let mut key = Vec::new();
    attr(&mut key, NFTA_DATA_VALUE, &[0, 0, 0, 0]);
    let mut elem = Vec::new();
    attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &key);
    let mut list = Vec::new();
    attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);

    let mut payload = vec![msg::FAMILY_INET as u8, 0, 0, 0]; // nfgenmsg: family, version, res_id
    attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_TABLE,
        &nul_terminated(PROBE_TABLE),
    );
    attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_SET,
        &nul_terminated(PROBE_SET),
    );
    attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
        &list,
    );

    let len = NLMSG_HDRLEN + payload.len();
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | (msg_type & 0xff);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&payload);
    m
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends one netlink attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = NLA_HDRLEN + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lengths_are_consistent_and_aligned() {
        let m = elem_message(30, 7);
        let len = u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize;
        assert_eq!(len, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0a1e);
        assert_eq!(u32::from_ne_bytes([m[8], m[9], m[10], m[11]]), 7);
        // First attribute: the table name, NUL-terminated.
        let a = NLMSG_HDRLEN + 4;
        let alen = u16::from_ne_bytes([m[a], m[a + 1]]) as usize;
        assert_eq!(alen, NLA_HDRLEN + PROBE_TABLE.len() + 1);
        assert_eq!(&m[a + 4..a + alen - 1], PROBE_TABLE.as_bytes());
    }
}
