//! One netlink socket to nf_tables: send a batch and collect every ACK, or run a dump.
//!
//! nfnetlink processes a batch synchronously inside `sendmsg`, so by the time the send
//! returns every ACK and error is already queued on our socket; they are drained
//! without blocking, the way `nft` does it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Receive buffer: aligned for `nlmsghdr` (DESIGN.md: a `Vec<u8>` is not).
const RECV_BYTES: usize = 1 << 20;
/// Kernel receive buffer: room for the ACKs of a large batch and big dump replies.
const SO_RCVBUF_BYTES: usize = 16 << 20;
/// How long to wait for a reply the kernel owes us before giving up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
// Extended ACKs (linux/netlink.h).
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// One message in the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct MsgRef {
    pub offset: usize,
    pub len: usize,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Port id of the socket that caused a notification (0: the kernel itself).
    pub pid: u32,
}

/// How long a receive may wait.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    No,
    For(Duration),
    Forever,
}

pub struct NlSocket {
    sock: mnl::Socket,
    buf: Vec<u64>,
    sndbuf: usize,
    /// Per failing sequence number of the last batch: the byte offset, inside that
    /// message, of the attribute the kernel blamed (extended ACK).
    bad_attrs: BTreeMap<u32, u32>,
}

// SAFETY: the mnl socket is a heap object plus a file descriptor owned only by this
// struct; nothing in it is tied to the thread that created it. It is moved to the
// writer thread once and used from there alone (the type is not Sync).
unsafe impl Send for NlSocket {}

/// What the kernel answered to a batch: the errno of every message that failed.
pub type BatchErrors = BTreeMap<u32, i32>;

impl NlSocket {
    pub fn open() -> io::Result<NlSocket> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let mut s = NlSocket {
            sock,
            buf: vec![0u64; RECV_BYTES / 8],
            sndbuf: 0,
            bad_attrs: BTreeMap::new(),
        };
        s.grow_buffer(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, SO_RCVBUF_BYTES);
        // ACKs carry only the failing message's header, not its whole payload.
        let one: libc::c_int = 1;
        setsockopt(s.fd(), libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, one);
        // Errors then say which attribute failed: inside a message of many set
        // elements, which element (Linux ≥ 4.12; ignored where unsupported).
        setsockopt(s.fd(), libc::SOL_NETLINK, NETLINK_EXT_ACK, one);
        Ok(s)
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// SO_*BUFFORCE needs CAP_NET_ADMIN (which the daemon has); fall back to the
    /// capped variant otherwise.
    fn grow_buffer(&mut self, force: libc::c_int, plain: libc::c_int, bytes: usize) {
        let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        if !setsockopt(self.fd(), libc::SOL_SOCKET, force, val) {
            setsockopt(self.fd(), libc::SOL_SOCKET, plain, val);
        }
    }

    /// Sends a whole batch in ONE sendmsg: nfnetlink rejects a batch split over several
    /// (EINVAL beyond one 128 KiB page, DESIGN.md §3), so SO_SNDBUF grows to fit.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let need = bytes.len() + (64 << 10);
        if need > self.sndbuf {
            let size = need.next_power_of_two();
            self.grow_buffer(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, size);
            self.sndbuf = size;
        }
        let sent = self.sock.send(bytes)?;
        if sent != bytes.len() {
            return Err(io::Error::other(format!(
                "short netlink send: {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// One `recv`; `Ok(None)` when nothing is queued (non-blocking) or the wait timed out.
    fn recv(&mut self, block: bool) -> io::Result<Option<Vec<MsgRef>>> {
        self.recv_wait(if block {
            Wait::For(REPLY_TIMEOUT)
        } else {
            Wait::No
        })
    }

    /// One `recv` that waits as told; `Ok(None)` when nothing arrived in time.
    pub fn recv_wait(&mut self, wait: Wait) -> io::Result<Option<Vec<MsgRef>>> {
        let flags = match wait {
            Wait::No => libc::MSG_DONTWAIT,
            Wait::For(d) => {
                set_rcvtimeo(self.fd(), d.max(Duration::from_micros(1)));
                0
            }
            Wait::Forever => {
                set_rcvtimeo(self.fd(), Duration::ZERO);
                0
            }
        };
        // SAFETY: the buffer is RECV_BYTES long and writable; the kernel writes at
        // most that many bytes and returns how many it wrote.
        let n = unsafe {
            libc::recv(
                self.fd(),
                self.buf.as_mut_ptr().cast::<libc::c_void>(),
                RECV_BYTES,
                flags,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(self.split(n as usize)))
    }

    /// The bytes of one received message (valid until the next receive).
    pub fn msg_bytes(&self, m: &MsgRef) -> &[u8] {
        &self.bytes()[m.offset..m.offset + m.len]
    }

    /// Subscribes to a netlink multicast group (NFNLGRP_NFTABLES for notifications).
    pub fn join_group(&self, group: u32) -> io::Result<()> {
        let g = libc::c_int::try_from(group).map_err(io::Error::other)?;
        if setsockopt(
            self.fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            g,
        ) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: viewing the initialised u64 buffer as bytes; same length in bytes.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), RECV_BYTES) }
    }

    /// Splits `n` received bytes into messages, reading headers with safe code.
    fn split(&self, n: usize) -> Vec<MsgRef> {
        let bytes = &self.bytes()[..n.min(RECV_BYTES)];
        let mut out = Vec::new();
        let mut off = 0;
        while off + NLMSG_HDRLEN <= bytes.len() {
            let h = &bytes[off..];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            if len < NLMSG_HDRLEN || off + len > bytes.len() {
                break;
            }
            out.push(MsgRef {
                offset: off,
                len,
                ty: u16::from_ne_bytes([h[4], h[5]]),
                flags: u16::from_ne_bytes([h[6], h[7]]),
                seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
                pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            });
            off += (len + 3) & !3;
        }
        out
    }

    /// The offset of the offending attribute an NLMSG_ERROR reports (extended ACK),
    /// relative to the start of the failing message.
    fn bad_attr_of(&self, m: &MsgRef) -> Option<u32> {
        if m.flags & NLM_F_ACK_TLVS == 0 {
            return None;
        }
        let msg = self.msg_bytes(m);
        // struct nlmsgerr: errno, then the failing message's header, then (unless
        // NLM_F_CAPPED) its payload; the TLVs follow, 4-byte aligned.
        let orig_len = match msg.get(NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8) {
            Some(b) => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => return None,
        };
        let echoed = if m.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            orig_len
        };
        let mut off = (NLMSG_HDRLEN + 4 + echoed + 3) & !3;
        while let Some(h) = msg.get(off..off + 4) {
            let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
            let ty = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
            if len < 4 {
                return None;
            }
            if ty == NLMSGERR_ATTR_OFFS && len >= 8 {
                let v = msg.get(off + 4..off + 8)?;
                return Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
            }
            off += (len + 3) & !3;
        }
        None
    }

    /// For each failing message of the last `batch`, the offset of the attribute the
    /// kernel blamed, when it said.
    pub fn bad_attrs(&self) -> &BTreeMap<u32, u32> {
        &self.bad_attrs
    }

    /// The errno an NLMSG_ERROR carries (0 for an ACK).
    fn errno_of(&self, m: &MsgRef) -> i32 {
        let b = self.bytes();
        if m.len < NLMSG_HDRLEN + 4 {
            return libc::EPROTO;
        }
        let o = m.offset + NLMSG_HDRLEN;
        -i32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    /// Sends a batch and waits for the replies of every sequence number in `acked`.
    /// Returns the errno of each message that failed; an empty map means the kernel
    /// acknowledged every message and committed the transaction.
    pub fn batch(&mut self, bytes: &[u8], acked: &[u32]) -> io::Result<BatchErrors> {
        // Drop anything stale (a reply to an earlier exchange that timed out).
        while self.recv(false)?.is_some() {}
        self.send(bytes)?;
        let mut pending: std::collections::HashSet<u32> = acked.iter().copied().collect();
        let mut errors = BatchErrors::new();
        self.bad_attrs.clear();
        let mut waited = false;
        while !pending.is_empty() {
            let msgs = match self.recv(false)? {
                Some(m) => m,
                // Everything queued is read. After an error the kernel may owe no
                // more replies; otherwise wait once, then call it lost.
                None if !errors.is_empty() => break,
                None if !waited => {
                    waited = true;
                    match self.recv(true)? {
                        Some(m) => m,
                        None => break,
                    }
                }
                None => break,
            };
            for m in msgs {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let errno = self.errno_of(&m);
                pending.remove(&m.seq);
                if errno != 0 {
                    errors.insert(m.seq, errno);
                    if let Some(off) = self.bad_attr_of(&m) {
                        self.bad_attrs.insert(m.seq, off);
                    }
                }
            }
        }
        if errors.is_empty() && !pending.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the kernel did not acknowledge {} of {} messages; run `vpnfw reconcile`",
                    pending.len(),
                    acked.len()
                ),
            ));
        }
        Ok(errors)
    }

    /// Sends one request (with NLM_F_ACK) and hands every reply message with its
    /// sequence number to `on_msg`, until the kernel's acknowledgement.
    pub fn request(
        &mut self,
        bytes: &[u8],
        seq: u32,
        mut on_msg: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        while self.recv(false)?.is_some() {}
        self.send(bytes)?;
        loop {
            let Some(msgs) = self.recv(true)? else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no reply to a netlink request",
                ));
            };
            for m in msgs {
                if m.seq != seq {
                    continue;
                }
                if m.ty == NLMSG_ERROR {
                    return match self.errno_of(&m) {
                        0 => Ok(()),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                on_msg(self.msg_bytes(&m));
            }
        }
    }

    /// Runs a dump and hands every reply message (complete, and aligned for
    /// `nlmsghdr`) to `on_msg`. A dump the kernel marks
    /// interrupted (the ruleset changed under it) is run again, up to three times.
    pub fn dump(
        &mut self,
        request: &[u8],
        seq: u32,
        mut on_msg: impl FnMut(&[u8]),
        mut reset: impl FnMut(),
    ) -> io::Result<()> {
        for _attempt in 0..3 {
            while self.recv(false)?.is_some() {}
            self.send(request)?;
            let mut interrupted = false;
            'recv: loop {
                let Some(msgs) = self.recv(true)? else {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no reply to a netlink dump",
                    ));
                };
                for m in msgs {
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.ty {
                        NLMSG_DONE => break 'recv,
                        NLMSG_ERROR => {
                            let errno = self.errno_of(&m);
                            if errno == 0 {
                                continue;
                            }
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                        // A complete message whose first byte is aligned for nlmsghdr:
                        // `offset` is a multiple of 4 in an 8-aligned buffer.
                        _ => on_msg(self.msg_bytes(&m)),
                    }
                }
            }
            if !interrupted {
                return Ok(());
            }
            reset();
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the ruleset kept changing during a netlink dump",
        ))
    }
}

fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, val: libc::c_int) -> bool {
    // SAFETY: `val` is a live c_int and its size is passed; the kernel only reads it.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn set_rcvtimeo(fd: RawFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval and its size is passed; the kernel only reads it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}
