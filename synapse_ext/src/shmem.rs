//! Shared memory: what every process of the node must see at once.
//!
//! For now, the registry of synapse background workers (which one runs, with which pid,
//! since when), read by `synapse.workers()`. Later components add the membership view,
//! circuit breakers and the metadata generation counter here. Everything is fixed-size and
//! `#[repr(C)]`; fields are atomics, so readers never take a lock.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};

/// The synapse background workers of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerKind {
    /// Serves HTTP and supervises the node.
    Supervisor,
    /// Runs Raft and applies the metadata log to the catalog tables.
    Raft,
    /// Runs SWIM failure detection among the members.
    Gossip,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 3] = [WorkerKind::Supervisor, WorkerKind::Raft, WorkerKind::Gossip];

    /// The name shown as `backend_type` in `pg_stat_activity` and in `synapse.workers()`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Supervisor => "synapse supervisor",
            WorkerKind::Raft => "synapse raft",
            WorkerKind::Gossip => "synapse gossip",
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
#[derive(Default)]
pub struct NodeShared {
    workers: [WorkerSlot; WorkerKind::ALL.len()],
    /// Bumped by the raft worker after each commit that changed the catalog tables:
    /// backends reload their cached distribution metadata when it moves.
    catalog_generation: AtomicU64,
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

/// Whether the calling process is the running `kind` worker.
pub fn is_worker(kind: WorkerKind) -> bool {
    // SAFETY: plain read of a process global.
    let me = unsafe { pg_sys::MyProcPid };
    NODE.get().workers[kind.slot()].pid.load(Ordering::Acquire) == me
}
