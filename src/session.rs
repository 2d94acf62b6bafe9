//! Live sessions keyed by (profile, connection id), and reference-counted addresses.
//!
//! An address goes back to the portal's pool and may be handed to a new session while
//! a late disconnect of the old one is still on its way (DESIGN.md §2). So an element
//! leaves a set only when no live session holds it any more.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::event::{ConnectionId, ProfileId, Proto, UserId};
use crate::reconcile::{ElemAdd, ElemRef, Plan};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub profile: ProfileId,
    pub conn_id: ConnectionId,
}

/// One live session, as stored and as held in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub profile: ProfileId,
    pub conn_id: ConnectionId,
    pub user_id: UserId,
    pub proto: Proto,
    pub ip4: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    /// Set that holds `ip4` (resolved from the config when the session started).
    pub set4: String,
    /// Set that holds `ip6`.
    pub set6: String,
    /// Unix seconds.
    pub since: i64,
    /// `/proc/sys/kernel/random/boot_id` when the session started.
    pub boot_id: String,
}

impl Session {
    pub fn key(&self) -> SessionKey {
        SessionKey {
            profile: self.profile.clone(),
            conn_id: self.conn_id.clone(),
        }
    }

    /// The elements this session needs in the kernel.
    pub fn elems(&self) -> Vec<ElemRef> {
        let mut out = Vec::with_capacity(2);
        if let Some(a) = self.ip4 {
            out.push(ElemRef {
                set: self.set4.clone(),
                addr: IpAddr::V4(a),
            });
        }
        if let Some(a) = self.ip6 {
            out.push(ElemRef {
                set: self.set6.clone(),
                addr: IpAddr::V6(a),
            });
        }
        out
    }

    /// The element comment: who holds the address (`nft list set` shows it).
    pub fn comment(&self) -> String {
        comment_for(&self.user_id, &self.conn_id)
    }
}

/// nft element comments are at most 128 bytes; cut on a char boundary.
pub fn comment_for(user: &UserId, conn: &ConnectionId) -> String {
    let mut c = format!("user={} conn={}", user.as_str(), conn.as_str());
    if c.len() > 128 {
        let mut end = 128;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}
