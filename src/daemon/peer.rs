//! Who may talk to the daemon: checked with SO_PEERCRED on every connection, not
//! only through the socket's file mode.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User, geteuid};

/// The peer of one connection, as the kernel reports it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
        Ok(Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        })
    }
}

/// Root, the daemon's own user, and members of the configured group.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    own_uid: u32,
    group: Option<(String, u32)>,
}

impl PeerPolicy {
    /// Resolves `[server] group`. An unknown group is a config error: refusing every
    /// hook silently would lock all users out.
    pub fn new(group: Option<&str>) -> Result<PeerPolicy, String> {
        let group = match group {
            None => None,
            Some(name) => match Group::from_name(name) {
                Ok(Some(g)) => Some((name.to_string(), g.gid.as_raw())),
                Ok(None) => {
                    return Err(format!(
                        "[server] group = {name:?} does not exist: create it or name the web server's group (www-data on Debian, apache on EL)"
                    ));
                }
                Err(e) => return Err(format!("cannot look up group {name:?}: {e}")),
            },
        };
        Ok(PeerPolicy {
            own_uid: geteuid().as_raw(),
            group,
        })
    }

    pub fn group(&self) -> Option<(&str, u32)> {
        self.group.as_ref().map(|(n, g)| (n.as_str(), *g))
    }

    /// Why the peer may not send requests, or `None` when it may.
    pub fn refuse(&self, peer: &Peer) -> Option<String> {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return None;
        }
        match &self.group {
            Some((_, gid)) if peer.gid == *gid || user_in_group(peer.uid, *gid) => None,
            Some((name, _)) => Some(format!(
                "peer uid {} (pid {}) is not root and not in group {name:?}: add the hook's user to that group",
                peer.uid, peer.pid
            )),
            None => Some(format!(
                "peer uid {} (pid {}) is not root: set [server] group to the web server's group so the hook may connect",
                peer.uid, peer.pid
            )),
        }
    }
}

/// Supplementary membership, from the group database (SO_PEERCRED only carries the
/// primary gid).
fn user_in_group(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name.as_bytes()) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|groups| groups.contains(&Gid::from_raw(gid)))
        .unwrap_or(false)
}
