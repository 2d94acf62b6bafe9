//! Notices when someone else changes vpnfw's table: `systemctl reload nftables` or
//! `nft -f` with `flush ruleset` empties every set (DESIGN.md §2), and the daemon must
//! put live sessions back quickly.
//!
//! Subscribes to nf_tables notifications (NFNLGRP_NFTABLES). Notifications caused by
//! the daemon's own socket carry its port id and are ignored, so its own changes never
//! wake it. Headers are read with safe code; only the table name is needed.

use std::time::{Duration, Instant};

use super::NftError;
use super::socket::{NlSocket, Wait};

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Table, set and element messages; their table name is always attribute 1
/// (NFTA_TABLE_NAME, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE).
const WATCHED: [u16; 6] = [
    libc::NFT_MSG_NEWTABLE as u16,
    libc::NFT_MSG_DELTABLE as u16,
    libc::NFT_MSG_NEWSET as u16,
    libc::NFT_MSG_DELSET as u16,
    libc::NFT_MSG_NEWSETELEM as u16,
    libc::NFT_MSG_DELSETELEM as u16,
];

pub struct Monitor {
    sock: NlSocket,
    table: String,
    ignore_portid: u32,
}

impl Monitor {
    /// Watches `inet <table>`, ignoring changes made through `ignore_portid`.
    pub fn open(table: &str, ignore_portid: u32) -> Result<Monitor, NftError> {
        let sock = NlSocket::open().map_err(NftError::Open)?;
        sock.join_group(NFNLGRP_NFTABLES).map_err(NftError::Open)?;
        Ok(Monitor {
            sock,
            table: table.to_string(),
            ignore_portid,
        })
    }

    /// Blocks until someone else changed the table, then until the burst is over
    /// (`quiet` without a further change, at most `max_wait` in all).
    pub fn wait_change(&mut self, quiet: Duration, max_wait: Duration) -> Result<(), NftError> {
        loop {
            if self.relevant(Wait::Forever)? {
                break;
            }
        }
        let end = Instant::now() + max_wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.relevant(Wait::For(quiet.min(left)))? {
                return Ok(());
            }
        }
    }

    /// Whether one receive brought a change by someone else. A receive overrun
    /// (ENOBUFS: notifications were dropped) counts as a change.
    fn relevant(&mut self, wait: Wait) -> Result<bool, NftError> {
        let msgs = match self.sock.recv_wait(wait) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
            Err(e) => return Err(NftError::Recv(e)),
        };
        Ok(msgs.iter().any(|m| {
            m.pid != self.ignore_portid
                && m.ty >> 8 == NFNL_SUBSYS_NFTABLES
                && WATCHED.contains(&(m.ty & 0xff))
                && table_of(self.sock.msg_bytes(m)).is_some_and(|t| t == self.table.as_bytes())
        }))
    }
}

/// The table an inet nf_tables message is about (attribute 1, NUL-terminated).
fn table_of(msg: &[u8]) -> Option<&[u8]> {
    let family = *msg.get(NLMSG_HDRLEN)?;
    if family != libc::NFPROTO_INET as u8 {
        return None;
    }
    let mut off = NLMSG_HDRLEN + NFGENMSG_LEN;
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if len < 4 || off + len > msg.len() {
            return None;
        }
        if ty == 1 {
            let value = &msg[off + 4..off + len];
            return Some(value.split(|b| *b == 0).next().unwrap_or(value));
        }
        off += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_name_from_attributes() {
        let mut m = vec![0u8; NLMSG_HDRLEN];
        m.extend_from_slice(&[libc::NFPROTO_INET as u8, 0, 0, 0]);
        // attr 2 (4 bytes of value), then attr 1 "vpnfw\0" padded.
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[1, 2, 3, 4]);
        m.extend_from_slice(&10u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(b"vpnfw\0\0\0");
        assert_eq!(table_of(&m), Some(&b"vpnfw"[..]));
        m[NLMSG_HDRLEN] = 2; // NFPROTO_IPV4
        assert_eq!(table_of(&m), None);
        assert_eq!(table_of(&m[..10]), None);
    }
}
