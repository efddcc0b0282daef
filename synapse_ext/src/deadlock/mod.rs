//! Distributed deadlock detection (component 7), the PostgreSQL side: each node's lock
//! waits as wait-for edges between transactions, the cancellation of a victim with
//! SQLSTATE 40P01, and the scan the deadlock worker runs on the Raft leader. The graph
//! and the choice of victims are `synapse_core::deadlock`'s.
//!
//! A cancelled victim gets PostgreSQL's own query cancel (SIGINT, as
//! `pg_cancel_backend`), which an `emit_log_hook` reports as a deadlock: the detector
//! leaves the message for the victim's pid in shared memory first.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU8, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use synapse_core::deadlock::{Txn, WaitEdge};
use synapse_core::txn::Gxid;

use crate::gucs;
use crate::pg::time::now_ms;
use crate::remote::pool;
use crate::txn::activity;

mod scan;

/// Victims waiting for their cancel to be reported.
const NOTICES: usize = 64;
/// Bytes of a victim's message detail kept.
const DETAIL_BYTES: usize = 512;
/// A notice older than this is stale (its victim was idle when cancelled): ignored.
const NOTICE_TTL_MS: i64 = 10_000;

#[repr(C)]
struct Notice {
    /// 0: free.
    pid: AtomicI32,
    at_ms: AtomicI64,
    len: AtomicU32,
    detail: [AtomicU8; DETAIL_BYTES],
}

impl Default for Notice {
    fn default() -> Self {
        Notice {
            pid: AtomicI32::new(0),
            at_ms: AtomicI64::new(0),
            len: AtomicU32::new(0),
            detail: std::array::from_fn(|_| AtomicU8::new(0)),
        }
    }
}

#[repr(C)]
pub struct DeadlockShared {
    notices: [Notice; NOTICES],
}

impl Default for DeadlockShared {
    fn default() -> Self {
        DeadlockShared {
            notices: std::array::from_fn(|_| Notice::default()),
        }
    }
}

// SAFETY: #[repr(C)], fixed-size, atomics only: valid in shared memory for every process.
unsafe impl PGRXSharedMemory for DeadlockShared {}

// SAFETY: the name is unique to this extension.
static SHARED: PgAtomic<DeadlockShared> = unsafe { PgAtomic::new(c"synapse deadlocks") };

static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;

/// Shared memory and the log hook. Called once from `_PG_init`.
pub fn init() {
    pg_shmem_init!(SHARED);
    // SAFETY: _PG_init, once, in the postmaster; chains the previous hook.
    unsafe {
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log);
    }
}

/// Leaves `detail` for backend `pid`, then cancels its statement.
fn cancel_with_notice(pid: i32, detail: &str) {
    let shared = SHARED.get();
    let slot = shared
        .notices
        .iter()
        .find(|n| n.pid.load(Ordering::Acquire) == pid)
        .or_else(|| {
            shared.notices.iter().find(|n| {
                n.pid.load(Ordering::Acquire) == 0
                    || now_ms() - n.at_ms.load(Ordering::Acquire) > NOTICE_TTL_MS
            })
        });
    if let Some(n) = slot {
        let bytes = detail.as_bytes();
        let len = bytes.len().min(DETAIL_BYTES);
        n.pid.store(0, Ordering::Release);
        for (cell, b) in n.detail.iter().zip(&bytes[..len]) {
            cell.store(*b, Ordering::Relaxed);
        }
        n.len.store(len as u32, Ordering::Relaxed);
        n.at_ms.store(now_ms(), Ordering::Relaxed);
        n.pid.store(pid, Ordering::Release);
    }
    // SAFETY: a query cancel to a backend of this node, as pg_cancel_backend sends.
    unsafe { libc::kill(pid, libc::SIGINT) };
}

/// Takes the notice left for this backend, if a fresh one is there.
fn take_notice() -> Option<String> {
    // SAFETY: plain read of a process global.
    let me = unsafe { pg_sys::MyProcPid };
    let n = SHARED
        .get()
        .notices
        .iter()
        .find(|n| n.pid.load(Ordering::Acquire) == me)?;
    let fresh = now_ms() - n.at_ms.load(Ordering::Relaxed) <= NOTICE_TTL_MS;
    let len = n.len.load(Ordering::Relaxed) as usize;
    let bytes: Vec<u8> = n.detail[..len.min(DETAIL_BYTES)]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    n.pid.store(0, Ordering::Release);
    fresh.then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// Reports a query cancel the deadlock detector caused as SQLSTATE 40P01.
#[pg_guard]
unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL's error being reported; strings allocated in the current
    // (error) memory context, as the rest of the report's.
    unsafe {
        if (*edata).elevel == PgLogLevel::ERROR as i32
            && (*edata).sqlerrcode == PgSqlErrorCode::ERRCODE_QUERY_CANCELED as i32
        {
            if let Some(detail) = take_notice() {
                (*edata).sqlerrcode = PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED as i32;
                (*edata).message = pg_sys::pstrdup(
                    c"canceling the transaction to break a distributed deadlock".as_ptr(),
                );
                let detail = std::ffi::CString::new(detail.replace('\0', "")).unwrap_or_default();
                (*edata).detail = pg_sys::pstrdup(detail.as_ptr());
                (*edata).hint = pg_sys::pstrdup(
                    c"It was the youngest transaction in a cycle of lock waits across nodes. Run it again."
                        .as_ptr(),
                );
            }
        }
        if let Some(prev) = PREV_EMIT_LOG {
            prev(edata);
        }
    }
}

/// This node's lock waits as edges between transactions: a backend working for a
/// distributed transaction is its gxid, any other its `<node>:<pid>`.
pub fn edges_here() -> Vec<WaitEdge> {
    let node = gucs::node_name();
    let members: std::collections::HashMap<i32, Gxid> = activity::members()
        .into_iter()
        .map(|m| (m.pid, m.gxid))
        .collect();
    // Transactions with several sessions here (see `WaitEdge::hidden`).
    let mut sessions: std::collections::HashMap<String, usize> = Default::default();
    for g in members.values() {
        *sessions.entry(g.gid()).or_default() += 1;
    }
    let several = |t: &Txn| sessions.get(&t.name).is_some_and(|n| *n > 1);
    let txn = |pid: i32, started_us: i64| match members.get(&pid) {
        Some(g) => Txn {
            name: g.gid(),
            started_us: g.start_us,
        },
        None => Txn {
            name: format!("{node}:{pid}"),
            started_us,
        },
    };
    crate::pg::spi::select_rows(
        "SELECT w.pid, (extract(epoch FROM w.xact_start) * 1e6)::bigint, \
                b.pid, (extract(epoch FROM bs.xact_start) * 1e6)::bigint \
         FROM pg_catalog.pg_stat_activity w \
         CROSS JOIN LATERAL unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid) \
         JOIN pg_catalog.pg_stat_activity bs ON bs.pid = b.pid \
         WHERE w.wait_event_type = 'Lock'",
        &[],
    )
    .into_iter()
    .filter_map(|row| {
        let num = |i: usize| row.get(i)?.as_deref()?.parse::<i64>().ok();
        let (wp, ws, bp, bs) = (
            num(0)? as i32,
            num(1).unwrap_or(0),
            num(2)? as i32,
            num(3).unwrap_or(0),
        );
        let (waiter, blocker) = (txn(wp, ws), txn(bp, bs));
        Some(WaitEdge {
            node: node.clone(),
            hidden: several(&waiter) || several(&blocker),
            waiter,
            waiter_pid: wp,
            blocker,
            blocker_pid: bp,
        })
    })
    .collect()
}

/// Every node's edges (nodes that cannot be reached are left out, with their names).
pub fn edges_everywhere() -> (Vec<WaitEdge>, Vec<String>) {
    let mut edges = edges_here();
    let mut unreachable = Vec::new();
    for (node, answer) in
        pool::on_other_nodes("SELECT edges FROM synapse.wait_edges_here() edges", &[])
    {
        match answer {
            Ok(rows) => {
                for row in rows.rows {
                    if let Some(Some(json)) = row.into_iter().next() {
                        if let Ok(mut more) = serde_json::from_str::<Vec<WaitEdge>>(&json) {
                            edges.append(&mut more);
                        }
                    }
                }
            }
            Err(e) => unreachable.push(format!("{} ({})", node.name, e.message)),
        }
    }
    (edges, unreachable)
}

/// Cancels the backends of this node that work for transaction `victim` (a gxid, or
/// `<node>:<pid>` of this node) with `detail`; returns their pids.
pub fn cancel_here(victim: &str, detail: &str) -> Vec<i32> {
    let pids: Vec<i32> = match Gxid::parse(victim) {
        Some(g) => activity::members()
            .into_iter()
            .filter(|m| m.gxid == g)
            .map(|m| m.pid)
            .collect(),
        None => victim
            .strip_prefix(&format!("{}:", gucs::node_name()))
            .and_then(|p| p.parse().ok())
            .into_iter()
            .collect(),
    };
    for &pid in &pids {
        cancel_with_notice(pid, detail);
    }
    pids
}

/// `synapse.wait_edges_here()`: this node's edges, as one JSON array (read by the
/// detector on the Raft leader).
#[pg_extern(volatile)]
fn wait_edges_here() -> String {
    serde_json::to_string(&edges_here()).expect("serializable")
}

/// `synapse.cancel_deadlock_victim(victim, detail)`: cancels the victim's backends on this
/// node (called by the detector on every node); returns how many.
#[pg_extern(volatile)]
fn cancel_deadlock_victim(victim: &str, detail: &str) -> i32 {
    cancel_here(victim, detail).len() as i32
}

/// `synapse.wait_graph()`: the current global wait-for graph, one row per edge.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn wait_graph() -> TableIterator<
    'static,
    (
        name!(node, String),
        name!(waiting, String),
        name!(waiting_pid, i32),
        name!(blocking, String),
        name!(blocking_pid, i32),
    ),
> {
    let (edges, unreachable) = edges_everywhere();
    if !unreachable.is_empty() {
        warning!(
            "the wait-for graph lacks the edges of {}",
            unreachable.join(", ")
        );
    }
    TableIterator::new(
        edges
            .into_iter()
            .map(|e| {
                (
                    e.node,
                    e.waiter.name,
                    e.waiter_pid,
                    e.blocker.name,
                    e.blocker_pid,
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// `synapse.isolation_test_session_is_blocked(pid, interesting_pids)`: what
/// `pg_isolation_test_session_is_blocked` answers, counting waits on other nodes too —
/// `pid`'s transaction waits there for a transaction of one of `interesting_pids`. The
/// isolation tests of distributed deadlocks install it in place of PostgreSQL's own.
#[pg_extern(volatile)]
fn isolation_test_session_is_blocked(pid: i32, interesting_pids: Vec<i32>) -> bool {
    let local = crate::pg::spi::select_one::<bool>(
        "SELECT pg_catalog.pg_blocking_pids($1::int) OPERATOR(pg_catalog.&&) $2::int[] \
         OR cardinality(pg_catalog.pg_safe_snapshot_blocking_pids($1::int)) > 0",
        &[
            &pid.to_string(),
            &format!(
                "{{{}}}",
                interesting_pids
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ],
    );
    if local == Some(true) {
        return true;
    }
    let node = gucs::node_name();
    let members: std::collections::HashMap<i32, Gxid> = activity::members()
        .into_iter()
        .map(|m| (m.pid, m.gxid))
        .collect();
    let name = |p: i32| {
        members
            .get(&p)
            .map_or_else(|| format!("{node}:{p}"), Gxid::gid)
    };
    let me = name(pid);
    let others: std::collections::HashSet<String> =
        interesting_pids.iter().map(|p| name(*p)).collect();
    let (edges, _) = edges_everywhere();
    edges
        .iter()
        .any(|e| e.waiter.name == me && others.contains(&e.blocker.name))
}
