//! Conntrack cleanup off the writer thread.
//!
//! A conntrack dump walks the whole conntrack hash (about 8 ms per family at the
//! default 262144 buckets), which must not hold up the next connect. The writer
//! queues the addresses that left every set once the kernel took them out; this
//! thread cuts their flows, one dump per family for everything queued meanwhile.
//!
//! An address can be handed to a new session before its cleanup ran: the writer then
//! calls the cleanup off ([`CtFlusher::cancel`]), and the thread asks again after
//! its dump, just before deleting, so a new session never loses its flows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::nft::Conntrack;

/// Address → generation of the disconnect that queued it.
type Queue = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

pub struct CtFlusher {
    queued: Queue,
    generation: u64,
    /// Wakes the thread; dropping it ends the thread.
    wake: SyncSender<()>,
}

fn lock(q: &Queue) -> MutexGuard<'_, BTreeMap<IpAddr, u64>> {
    // The map stays consistent whatever a panicking holder did: it only inserts and
    // removes whole entries.
    q.lock().unwrap_or_else(|e| e.into_inner())
}

impl CtFlusher {
    /// Starts the cleanup thread; `Err` when the thread cannot be spawned.
    pub fn start(ct: Conntrack) -> std::io::Result<CtFlusher> {
        let queued: Queue = Arc::default();
        let (wake, rx) = sync_channel(1);
        let q = Arc::clone(&queued);
        std::thread::Builder::new()
            .name("conntrack".into())
            .spawn(move || run(ct, &q, &rx))?;
        Ok(CtFlusher {
            queued,
            generation: 0,
            wake,
        })
    }

    /// Addresses that left every set: their established flows are cut soon.
    pub fn queue(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        self.generation += 1;
        let mut any = false;
        {
            let mut q = lock(&self.queued);
            for a in addrs {
                q.insert(a, self.generation);
                any = true;
            }
        }
        if any {
            match self.wake.try_send(()) {
                // Full: a wake-up is already pending and will see these too.
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::error!(
                        "conntrack cleanup thread is gone; established flows survive disconnects"
                    )
                }
            }
        }
    }

    /// Addresses a session holds again: a pending cleanup of them is called off.
    pub fn cancel(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        let mut q = lock(&self.queued);
        if q.is_empty() {
            return;
        }
        for a in addrs {
            q.remove(&a);
        }
    }
}

fn run(mut ct: Conntrack, queued: &Queue, wake: &Receiver<()>) {
    while wake.recv().is_ok() {
        let batch: BTreeMap<IpAddr, u64> = lock(queued).clone();
        if batch.is_empty() {
            continue;
        }
        let addrs: BTreeSet<IpAddr> = batch.keys().copied().collect();
        if tracked_flows() == Some(0) {
            // Nothing tracked in this namespace: a dump would walk the whole conntrack
            // hash (~8.6 ms per family at 262144 buckets) to find nothing.
            forget(queued, &batch);
            continue;
        }
        // Spared: called off, or queued again by a later disconnect (the next round
        // takes it).
        let spare = |a: IpAddr| lock(queued).get(&a) != batch.get(&a);
        match ct.flush_sources(&addrs, spare) {
            Ok(deleted) => {
                for (addr, flows) in deleted {
                    tracing::info!(%addr, flows, "conntrack entries deleted");
                }
            }
            Err(e) => {
                tracing::error!(addresses = addrs.len(), error = %e, "conntrack cleanup failed")
            }
        }
        forget(queued, &batch);
    }
}

/// Takes the addresses of a finished round off the queue, unless a later disconnect
/// queued them again.
fn forget(queued: &Queue, batch: &BTreeMap<IpAddr, u64>) {
    let mut q = lock(queued);
    for (a, generation) in batch {
        if q.get(a) == Some(generation) {
            q.remove(a);
        }
    }
}

/// Conntrack entries in this network namespace; `None` when the kernel does not say
/// (no nf_conntrack loaded yet, or /proc/sys unreadable): then dump anyway.
fn tracked_flows() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}
