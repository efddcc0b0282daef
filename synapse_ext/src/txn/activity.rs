//! Shared memory of distributed transactions: which global transaction each backend of
//! this node works for (coordinator or participant), read by
//! `synapse.distributed_activity` and the deadlock detector, and the transactions this
//! node coordinated recently with their states, read by `synapse.transactions`.
//!
//! Every record is written by one process (a backend its own slot; a coordinator the ring
//! entry it took) and read by any: each is guarded by a sequence number (odd while being
//! written), so readers never take a lock and never see half a record.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use synapse_core::txn::{Gxid, TxnState};

use crate::pg::time::now_ms;

/// Backends with a slot: `MyBackendId` up to this many.
pub const MAX_BACKEND_SLOTS: usize = 1024;
/// Transactions kept for `synapse.transactions`.
pub const RING_SIZE: usize = 512;
/// Participants named per ring entry.
pub const MAX_LISTED: usize = 8;

#[repr(C)]
#[derive(Default)]
struct Seq(AtomicU64);

impl Seq {
    fn write(&self, f: impl FnOnce()) {
        self.0.fetch_add(1, Ordering::AcqRel);
        f();
        self.0.fetch_add(1, Ordering::Release);
    }

    fn read<R>(&self, f: impl Fn() -> R) -> R {
        loop {
            let before = self.0.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let r = f();
                std::sync::atomic::fence(Ordering::Acquire);
                if self.0.load(Ordering::Relaxed) == before {
                    return r;
                }
            }
            std::hint::spin_loop();
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct GxidCell {
    node: AtomicU64,
    start_us: AtomicI64,
    counter: AtomicU64,
}

impl GxidCell {
    fn store(&self, g: Gxid) {
        self.node.store(g.node, Ordering::Relaxed);
        self.start_us.store(g.start_us, Ordering::Relaxed);
        self.counter.store(g.counter, Ordering::Relaxed);
    }

    fn load(&self) -> Gxid {
        Gxid {
            node: self.node.load(Ordering::Relaxed),
            start_us: self.start_us.load(Ordering::Relaxed),
            counter: self.counter.load(Ordering::Relaxed),
        }
    }
}

/// One backend's distributed transaction.
#[repr(C)]
#[derive(Default)]
struct BackendSlot {
    seq: Seq,
    /// 0: none.
    pid: AtomicI32,
    /// 1: coordinator, 2: participant.
    role: AtomicU32,
    gxid: GxidCell,
    /// Set by the deadlock detector before it cancels this backend: the cancel is then
    /// reported as SQLSTATE 40P01.
    deadlock_victim: AtomicU32,
}

/// One transaction this node coordinated.
#[repr(C)]
#[derive(Default)]
struct RingEntry {
    seq: Seq,
    /// 0: empty.
    used: AtomicU32,
    gxid: GxidCell,
    pid: AtomicI32,
    state: AtomicU32,
    participants: [AtomicU64; MAX_LISTED],
    listed: AtomicU32,
    /// Unix ms.
    updated_ms: AtomicI64,
}

#[repr(C)]
pub struct TxnShared {
    counter: AtomicU64,
    ring_head: AtomicU64,
    backends: [BackendSlot; MAX_BACKEND_SLOTS],
    ring: [RingEntry; RING_SIZE],
}

impl Default for TxnShared {
    fn default() -> Self {
        TxnShared {
            counter: AtomicU64::new(0),
            ring_head: AtomicU64::new(0),
            backends: std::array::from_fn(|_| BackendSlot::default()),
            ring: std::array::from_fn(|_| RingEntry::default()),
        }
    }
}

// SAFETY: #[repr(C)], fixed-size, atomics only (no pointers): valid in shared memory for
// every process.
unsafe impl PGRXSharedMemory for TxnShared {}

// SAFETY: the name is unique to this extension.
static TXN: PgAtomic<TxnShared> = unsafe { PgAtomic::new(c"synapse transactions") };

/// Requests and initialises the shared memory. Called once from `_PG_init`.
pub fn init() {
    pg_shmem_init!(TXN);
}

/// A new global id for the current transaction, coordinated here: its start time is the
/// transaction's own (so the youngest of a deadlock is the one that began last).
pub fn new_gxid(node: u64) -> Gxid {
    // SAFETY: reads the current transaction's start time, main thread.
    let start_us = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
        + crate::pg::time::PG_EPOCH_OFFSET_US;
    Gxid {
        node,
        start_us,
        counter: TXN.get().counter.fetch_add(1, Ordering::AcqRel) + 1,
    }
}

fn my_slot() -> Option<&'static BackendSlot> {
    // SAFETY: plain read of a process global.
    let id = unsafe { pg_sys::MyBackendId };
    (id >= 1 && (id as usize) <= MAX_BACKEND_SLOTS).then(|| &TXN.get().backends[id as usize - 1])
}

/// This backend works for `gxid` (as its coordinator or as a participant) until its
/// transaction ends.
pub fn join(gxid: Gxid, coordinator: bool) {
    static REGISTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: main thread; a plain function living as long as the library.
        unsafe { pg_sys::RegisterXactCallback(Some(leave_at_end), std::ptr::null_mut()) };
    }
    if let Some(slot) = my_slot() {
        // SAFETY: plain read of a process global.
        let pid = unsafe { pg_sys::MyProcPid };
        slot.seq.write(|| {
            slot.gxid.store(gxid);
            slot.role
                .store(if coordinator { 1 } else { 2 }, Ordering::Relaxed);
            slot.deadlock_victim.store(0, Ordering::Relaxed);
            slot.pid.store(pid, Ordering::Relaxed);
        });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn leave_at_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        leave();
    }
}

/// This backend's transaction ended.
pub fn leave() {
    if let Some(slot) = my_slot() {
        if slot.pid.load(Ordering::Relaxed) != 0 {
            slot.seq.write(|| slot.pid.store(0, Ordering::Relaxed));
        }
    }
}

/// A backend working for a distributed transaction.
pub struct Member {
    pub pid: i32,
    pub gxid: Gxid,
    pub coordinator: bool,
}

/// Every backend of this node working for a distributed transaction now.
pub fn members() -> Vec<Member> {
    TXN.get()
        .backends
        .iter()
        .filter_map(|slot| {
            slot.seq.read(|| {
                let pid = slot.pid.load(Ordering::Relaxed);
                (pid != 0).then(|| Member {
                    pid,
                    gxid: slot.gxid.load(),
                    coordinator: slot.role.load(Ordering::Relaxed) == 1,
                })
            })
        })
        .collect()
}

/// A transaction this node coordinates, tracked in the ring.
pub struct Tracked(usize);

/// Starts tracking `gxid`, coordinated by this backend, in state ACTIVE.
pub fn track(gxid: Gxid) -> Tracked {
    let shared = TXN.get();
    let index = (shared.ring_head.fetch_add(1, Ordering::AcqRel) % RING_SIZE as u64) as usize;
    let e = &shared.ring[index];
    // SAFETY: plain read of a process global.
    let pid = unsafe { pg_sys::MyProcPid };
    e.seq.write(|| {
        e.gxid.store(gxid);
        e.pid.store(pid, Ordering::Relaxed);
        e.state.store(TxnState::Active as u32, Ordering::Relaxed);
        e.listed.store(0, Ordering::Relaxed);
        e.updated_ms.store(now_ms(), Ordering::Relaxed);
        e.used.store(1, Ordering::Relaxed);
    });
    Tracked(index)
}

impl Tracked {
    /// Moves the transaction to `state` (if the entry was not reused meanwhile).
    pub fn set(&self, gxid: Gxid, state: TxnState) {
        let e = &TXN.get().ring[self.0];
        let current = TxnState::from_u8(e.state.load(Ordering::Relaxed) as u8);
        // The first final state stays (the coordinator's own is the most precise).
        if e.gxid.load() != gxid || current.is_some_and(TxnState::is_final) {
            return;
        }
        e.seq.write(|| {
            e.state.store(state as u32, Ordering::Relaxed);
            e.updated_ms.store(now_ms(), Ordering::Relaxed);
        });
    }

    /// Records the participants' node ids (the first [`MAX_LISTED`]).
    pub fn participants(&self, gxid: Gxid, nodes: &[u64]) {
        let e = &TXN.get().ring[self.0];
        if e.gxid.load() != gxid {
            return;
        }
        e.seq.write(|| {
            for (cell, node) in e.participants.iter().zip(nodes) {
                cell.store(*node, Ordering::Relaxed);
            }
            e.listed
                .store(nodes.len().min(MAX_LISTED) as u32, Ordering::Relaxed);
        });
    }
}

/// A row of `synapse.transactions` from the ring.
pub struct RingRow {
    pub gxid: Gxid,
    pub pid: i32,
    pub state: TxnState,
    pub participants: Vec<u64>,
    pub updated_ms: i64,
}

/// The transactions this node coordinated recently, newest first.
pub fn recent() -> Vec<RingRow> {
    let mut rows: Vec<RingRow> = TXN
        .get()
        .ring
        .iter()
        .filter_map(|e| {
            e.seq.read(|| {
                (e.used.load(Ordering::Relaxed) == 1).then(|| RingRow {
                    gxid: e.gxid.load(),
                    pid: e.pid.load(Ordering::Relaxed),
                    state: TxnState::from_u8(e.state.load(Ordering::Relaxed) as u8)
                        .unwrap_or(TxnState::Failed),
                    participants: e
                        .participants
                        .iter()
                        .take(e.listed.load(Ordering::Relaxed) as usize)
                        .map(|c| c.load(Ordering::Relaxed))
                        .collect(),
                    updated_ms: e.updated_ms.load(Ordering::Relaxed),
                })
            })
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.gxid.start_us));
    rows
}
