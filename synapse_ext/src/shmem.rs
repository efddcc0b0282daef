//! Shared memory: what every process of the node must see at once.
//!
//! The registry of synapse background workers (which one runs, with which pid, since
//! when), read by `synapse.workers()`; the catalog generation; and per node the circuit
//! breaker and the number of connections this node's backends hold to it. Everything is fixed-size and
//! `#[repr(C)]`; fields are atomics, so readers never take a lock.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use synapse_core::breaker::{Breaker, BreakerState, Swim};

use crate::pg::time::now_ms;

/// The synapse background workers of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerKind {
    /// Serves HTTP and supervises the node.
    Supervisor,
    /// Runs Raft and applies the metadata log to the catalog tables.
    Raft,
    /// Runs SWIM failure detection among the members.
    Gossip,
    /// Recovers prepared transactions.
    Maintenance,
    /// Breaks deadlocks that span nodes (active on the Raft leader).
    Deadlock,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 5] = [
        WorkerKind::Supervisor,
        WorkerKind::Raft,
        WorkerKind::Gossip,
        WorkerKind::Maintenance,
        WorkerKind::Deadlock,
    ];

    /// The name shown as `backend_type` in `pg_stat_activity` and in `synapse.workers()`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Supervisor => "synapse supervisor",
            WorkerKind::Raft => "synapse raft",
            WorkerKind::Gossip => "synapse gossip",
            WorkerKind::Maintenance => "synapse maintenance",
            WorkerKind::Deadlock => "synapse deadlock",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// One worker's registration: pid 0 when it is not running.
#[repr(C)]
#[derive(Default)]
pub struct WorkerSlot {
    pid: AtomicI32,
    /// `TimestampTz` of its start.
    started_at: AtomicI64,
}

#[repr(C)]
pub struct NodeShared {
    workers: [WorkerSlot; WorkerKind::ALL.len()],
    /// Bumped by the raft worker after each commit that changed the catalog tables:
    /// backends reload their cached distribution metadata when it moves.
    catalog_generation: AtomicU64,
    /// Per other node, by the hash of its name (0: free slot).
    peers: [PeerSlot; MAX_PEERS],
}

impl Default for NodeShared {
    fn default() -> Self {
        NodeShared {
            workers: Default::default(),
            catalog_generation: AtomicU64::new(0),
            peers: std::array::from_fn(|_| PeerSlot::default()),
        }
    }
}

/// The most nodes whose breakers and connection counts are kept.
pub const MAX_PEERS: usize = 128;

/// One node's circuit breaker (see `synapse_core::breaker`) and connection count. The
/// fields are updated one by one: two backends updating a breaker at the same moment may
/// lose one update, which only delays its opening or closing by one statement.
#[repr(C)]
#[derive(Default)]
pub struct PeerSlot {
    key: AtomicU64,
    state: AtomicU32,
    failures: AtomicU32,
    opened_at_ms: AtomicI64,
    retry_at_ms: AtomicI64,
    backoff_ms: AtomicI64,
    connections: AtomicI32,
}

// SAFETY: NodeShared is #[repr(C)], fixed-size, and holds only atomics (no pointers), so it
// can live in shared memory and be used from every process.
unsafe impl PGRXSharedMemory for NodeShared {}

// SAFETY: the name is unique to this extension.
static NODE: PgAtomic<NodeShared> = unsafe { PgAtomic::new(c"synapse node state") };

/// Requests and initialises the shared memory. Called once from `_PG_init`.
pub fn init() {
    pg_shmem_init!(NODE);
}

/// Records that the calling process is the running `kind` worker, until it exits.
pub fn register_worker(kind: WorkerKind) {
    let slot = &NODE.get().workers[kind.slot()];
    // SAFETY: plain reads of process globals on the main thread.
    let (pid, now) = unsafe { (pg_sys::MyProcPid, pg_sys::GetCurrentTimestamp()) };
    slot.started_at.store(now, Ordering::Relaxed);
    slot.pid.store(pid, Ordering::Release);
    // SAFETY: registers a callback PostgreSQL runs on every exit path of this process.
    unsafe {
        pg_sys::before_shmem_exit(Some(unregister_on_exit), pg_sys::Datum::from(kind.slot()))
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn unregister_on_exit(_code: std::ffi::c_int, slot: pg_sys::Datum) {
    unregister_slot(slot.value());
}

/// Clears registration `slot` when the calling process holds it.
fn unregister_slot(slot: usize) {
    let slot = &NODE.get().workers[slot];
    // SAFETY: plain read of a process global.
    let me = unsafe { pg_sys::MyProcPid };
    let _ = slot
        .pid
        .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
}

/// The running workers: kind, pid and start time.
pub fn running_workers() -> Vec<(WorkerKind, i32, i64)> {
    WorkerKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let slot = &NODE.get().workers[kind.slot()];
            let pid = slot.pid.load(Ordering::Acquire);
            (pid != 0).then(|| (kind, pid, slot.started_at.load(Ordering::Relaxed)))
        })
        .collect()
}

/// The catalog generation (see [`NodeShared`]).
pub fn catalog_generation() -> u64 {
    NODE.get().catalog_generation.load(Ordering::Acquire)
}

/// Marks the catalog changed; called after the change committed.
pub fn bump_catalog_generation() {
    NODE.get().catalog_generation.fetch_add(1, Ordering::AcqRel);
}

fn name_key(name: &str) -> u64 {
    // FNV-1a; 0 marks a free slot.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h.max(1)
}

/// The slot of node `name`, claimed if it has none; `None` when every slot is taken.
fn peer(name: &str) -> Option<&'static PeerSlot> {
    let key = name_key(name);
    let peers = &NODE.get().peers;
    let start = (key % MAX_PEERS as u64) as usize;
    for i in 0..MAX_PEERS {
        let slot = &peers[(start + i) % MAX_PEERS];
        match slot
            .key
            .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Some(slot),
            Err(k) if k == key => return Some(slot),
            Err(_) => {}
        }
    }
    None
}

fn load(slot: &PeerSlot) -> Breaker {
    Breaker {
        state: BreakerState::from_u32(slot.state.load(Ordering::Acquire)),
        failures: slot.failures.load(Ordering::Relaxed),
        opened_at_ms: slot.opened_at_ms.load(Ordering::Relaxed),
        retry_at_ms: slot.retry_at_ms.load(Ordering::Relaxed),
        backoff_ms: slot.backoff_ms.load(Ordering::Relaxed).max(1),
    }
}

fn store(slot: &PeerSlot, b: &Breaker) {
    slot.failures.store(b.failures, Ordering::Relaxed);
    slot.opened_at_ms.store(b.opened_at_ms, Ordering::Relaxed);
    slot.retry_at_ms.store(b.retry_at_ms, Ordering::Relaxed);
    slot.backoff_ms.store(b.backoff_ms, Ordering::Relaxed);
    slot.state.store(b.state.to_u32(), Ordering::Release);
}

/// Applies `f` to node `name`'s breaker.
fn with_breaker<R>(name: &str, f: impl FnOnce(&mut Breaker, i64) -> R) -> Option<R> {
    let slot = peer(name)?;
    let mut b = load(slot);
    let before = b;
    let r = f(&mut b, now_ms());
    if b != before {
        store(slot, &b);
    }
    Some(r)
}

/// Whether a statement may go to node `name` now; `Err(retry_at_ms)` if its breaker is open.
pub fn breaker_allow(name: &str) -> Result<(), i64> {
    with_breaker(name, |b, now| b.allow(now)).unwrap_or(Ok(()))
}

/// Node `name` answered.
pub fn breaker_success(name: &str) {
    with_breaker(name, |b, _| b.success());
}

/// A connection to node `name` failed or was lost.
pub fn breaker_failure(name: &str) {
    with_breaker(name, |b, now| b.failure(now));
}

/// SWIM's view of node `name` changed.
pub fn breaker_swim(name: &str, view: Swim) {
    with_breaker(name, |b, now| b.swim(now, view));
}

/// Node `name`'s breaker and how many connections this node's backends hold to it.
pub fn peer_status(name: &str) -> (Breaker, i32) {
    match peer(name) {
        Some(slot) => (load(slot), slot.connections.load(Ordering::Relaxed)),
        None => (Breaker::default(), 0),
    }
}

/// Counts a connection to node `name` opened (+1) or closed (-1); returns the new count.
pub fn count_connection(name: &str, delta: i32) -> i32 {
    peer(name).map_or(0, |slot| {
        slot.connections.fetch_add(delta, Ordering::AcqRel) + delta
    })
}

/// Whether the calling process is the running `kind` worker.
pub fn is_worker(kind: WorkerKind) -> bool {
    // SAFETY: plain read of a process global.
    let me = unsafe { pg_sys::MyProcPid };
    NODE.get().workers[kind.slot()].pid.load(Ordering::Acquire) == me
}
