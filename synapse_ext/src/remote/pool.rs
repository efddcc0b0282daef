//! This backend's connections to other nodes, cached across transactions, and the remote
//! transactions opened on them, which end with the local one.
//!
//! A remote transaction starts with the first statement sent to its node in a local
//! transaction (under READ COMMITTED, with its first write or row lock: a read before
//! runs as a transaction of its own); the first one gives the local transaction its
//! global id (gxid), which every participant joins. How they end is
//! `txn::coordinator`'s: read-only ones commit at local pre-commit, one writer commits
//! plainly, several writers commit with two-phase commit.
//!
//! Invariants: at most one connection per node; a connection whose protocol state is
//! unknown (interrupted, lost) is never reused; no remote transaction outlives the local
//! transaction that opened it, except a prepared one, which recovery finishes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::pg_sys;
use pgrx::prelude::*;

use synapse_core::txn::Gxid;

use super::connection::{ClientTls, Connection, NodeTarget, RemoteError};
use crate::gucs;
use crate::pg::time::now_ms;
use crate::txn::activity;

/// The state of the remote transaction on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteTxn {
    /// No transaction block open.
    Idle,
    /// BEGIN sent in the current local transaction; `writes` once a write was sent.
    Open { writes: bool },
    /// Prepared under this gid; committed or rolled back by the coordinator (or, if it
    /// fails, by recovery).
    Prepared(String),
}

struct Entry {
    conn: Connection,
    txn: RemoteTxn,
}

#[derive(Default)]
struct Pool {
    entries: BTreeMap<i64, Entry>,
    callbacks_registered: bool,
    /// The current transaction's global id, once it opened a remote transaction.
    gxid: Option<Gxid>,
    /// Its entry in `synapse.transactions`.
    tracked: Option<activity::Tracked>,
    /// A savepoint rolled back after remote work: the remote transactions no longer match
    /// the local one, so the transaction may not commit.
    diverged: bool,
    /// synapse's own operations (distributing a table) write here and on other nodes in
    /// transactions that do not end with a COMMIT statement (see `txn::coordinator`).
    several_writers: bool,
    /// This node's shards were written through a connection to this node (a write
    /// spanning nodes outside a transaction block): this backend cannot see those rows.
    loopback: bool,
}

thread_local! {
    // Backends are single-threaded: this is per-backend state.
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// How long the end of a transaction waits for a node's answer to its ROLLBACK or COMMIT
/// PREPARED.
pub const END_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a statement does on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Locks rows (`FOR UPDATE`): the locks must last the local transaction.
    Lock,
    /// Changes data: the remote transaction must be prepared, not just committed.
    Write,
}

/// Runs `f` on a connection to `target` inside a remote transaction belonging to the
/// current local transaction (`writes`: `f` changes data there, so the remote transaction
/// must be prepared, not just committed).
pub fn in_transaction<R>(
    target: &NodeTarget,
    writes: bool,
    f: impl FnOnce(&mut Connection) -> Result<R, RemoteError>,
) -> R {
    let access = if writes { Access::Write } else { Access::Read };
    with_access(target, access, f)
}

/// [`in_transaction`] for a statement that reads, locks rows or writes.
pub fn with_access<R>(
    target: &NodeTarget,
    access: Access,
    f: impl FnOnce(&mut Connection) -> Result<R, RemoteError>,
) -> R {
    if POOL.with(|p| p.borrow().diverged) {
        diverged_error();
    }
    try_with_access(target, access, f).unwrap_or_else(|e| e.report())
}

/// [`with_access`] returning a failure (a node down, its breaker open, its error) instead
/// of raising it.
pub fn try_with_access<R>(
    target: &NodeTarget,
    access: Access,
    f: impl FnOnce(&mut Connection) -> Result<R, RemoteError>,
) -> Result<R, RemoteError> {
    register_callbacks();
    breaker_closed(target)?;
    let result = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let entry = match pool.entries.remove(&target.id) {
            Some(e) if e.conn.usable() && e.conn.target == *target => e,
            old => {
                if let Some(old) = old.filter(|o| o.txn != RemoteTxn::Idle) {
                    if gucs::trace_transactions() {
                        pgrx::log!(
                            "synapse 2pc: replacing a broken connection to {} in state {:?}",
                            target.name,
                            old.txn
                        );
                    }
                }
                let limit = gucs::max_node_connections();
                if limit > 0 && crate::shmem::peer_status(&target.name).1 >= limit {
                    too_many(target, limit);
                }
                Entry {
                    conn: Connection::open(
                        target,
                        &database_name(),
                        &ClientTls { dir: &tls_dir() },
                        CONNECT_TIMEOUT,
                    )?,
                    txn: RemoteTxn::Idle,
                }
            }
        };
        let opens =
            entry.txn == RemoteTxn::Idle && (access != Access::Read || reads_need_transaction());
        let gxid = if opens {
            Some(global_id(&mut pool))
        } else {
            None
        };
        let entry = pool.entries.entry(target.id).or_insert(entry);
        if let Some(gxid) = gxid {
            // Sent with the first statement, in the same round trip.
            entry.conn.pending_begin = vec![
                begin_statement(),
                format!("SELECT synapse.join_transaction('{gxid}')"),
            ];
            entry.txn = RemoteTxn::Open { writes: false };
        }
        if access == Access::Write {
            entry.txn = RemoteTxn::Open { writes: true };
        }
        f(&mut entry.conn)
    });
    match &result {
        Ok(_) => crate::shmem::breaker_success(&target.name),
        Err(e) if e.connection_lost => crate::shmem::breaker_failure(&target.name),
        Err(_) => {}
    }
    result
}

/// The current transaction's global id, given now if it has none: it is about to open a
/// transaction on another node.
fn global_id(pool: &mut Pool) -> Gxid {
    if let Some(g) = pool.gxid {
        return g;
    }
    let g = activity::new_gxid(crate::distribution::metadata::local_node_id() as u64);
    activity::join(g, true);
    pool.tracked = Some(activity::track(g));
    pool.gxid = Some(g);
    g
}

/// The current transaction's global id, if it has one.
pub fn gxid() -> Option<Gxid> {
    POOL.with(|p| p.borrow().gxid)
}

/// Moves the current transaction to `state` in `synapse.transactions`.
pub fn set_state(state: synapse_core::txn::TxnState) {
    POOL.with(|p| {
        let pool = p.borrow();
        if let (Some(t), Some(g)) = (&pool.tracked, pool.gxid) {
            t.set(g, state);
        }
    });
}

/// Records the current transaction's participants in `synapse.transactions`.
pub fn set_participants(nodes: &[u64]) {
    POOL.with(|p| {
        let pool = p.borrow();
        if let (Some(t), Some(g)) = (&pool.tracked, pool.gxid) {
            t.participants(g, nodes);
        }
    });
}

fn too_many(target: &NodeTarget, limit: i32) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_TOO_MANY_CONNECTIONS,
        format!(
            "this node's backends already hold {limit} connections to node \"{}\"",
            target.name
        ),
        "synapse pool",
    )
    .set_hint("Raise synapse.max_node_connections, or use fewer concurrent sessions.")
    .report(PgLogLevel::ERROR);
    unreachable!()
}

/// Fails at once if `target`'s circuit breaker is open.
pub fn check_available(target: &NodeTarget) {
    if let Err(e) = breaker_closed(target) {
        e.report();
    }
}

/// Whether node `target` may be asked now: not if its circuit breaker is open.
fn breaker_closed(target: &NodeTarget) -> Result<(), RemoteError> {
    crate::shmem::breaker_allow(&target.name).map_err(|retry_at_ms| {
        RemoteError::breaker_open(&target.name, (retry_at_ms - now_ms()).max(0))
    })
}

/// Lets the current transaction write here and on other nodes without ending with a
/// COMMIT statement (synapse's own operations).
pub fn allow_several_writers() {
    POOL.with(|p| p.borrow_mut().several_writers = true);
}

pub fn several_writers_allowed() -> bool {
    POOL.with(|p| p.borrow().several_writers)
}

/// Notes that this node's shards are written through a connection to this node in the
/// current transaction.
pub fn wrote_through_loopback() {
    POOL.with(|p| p.borrow_mut().loopback = true);
}

/// Whether [`wrote_through_loopback`] was called in the current transaction: then the
/// transaction may not read this node's shards itself (it would not see those rows).
pub fn loopback_written() -> bool {
    POOL.with(|p| p.try_borrow().is_ok_and(|p| p.loopback))
}

/// A node written in the current transaction.
pub struct Writer {
    pub id: i64,
    pub name: String,
}

/// The nodes (other than this one) written in the current transaction.
pub fn remote_writers() -> Vec<Writer> {
    POOL.with(|p| {
        p.borrow()
            .entries
            .iter()
            .filter(|(_, e)| e.txn == RemoteTxn::Open { writes: true })
            .map(|(id, e)| Writer {
                id: *id,
                name: e.conn.target.name.clone(),
            })
            .collect()
    })
}

/// Runs `sql` with `params` on every other member node (each a read of its own), sent to
/// all of them before any answer is awaited; each node with its rows, or why it could not
/// answer.
pub fn on_other_nodes(
    sql: &str,
    params: &[Option<&str>],
) -> Vec<(NodeTarget, Result<super::connection::Rows, RemoteError>)> {
    let me = crate::distribution::metadata::local_node_id();
    let sent: Vec<_> = crate::distribution::metadata::nodes()
        .into_iter()
        .filter(|n| n.id != me)
        .map(|n| {
            let sent = try_with_access(&n, Access::Read, |c| c.send(sql, params));
            (n, sent)
        })
        .collect();
    sent.into_iter()
        .map(|(n, sent)| {
            let answer = sent.and_then(|()| try_with_access(&n, Access::Read, |c| c.finish(None)));
            (n, answer)
        })
        .collect()
}

/// Whether the current transaction wrote on this node.
pub fn wrote_here() -> bool {
    // SAFETY: reads the current transaction's state, main thread.
    unsafe { pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId }
}

/// Sends `statement(id)` to each node of `ids` at once, then collects every answer; an
/// entry's state becomes `next(id, ok)`.
pub fn on_each(
    ids: &[i64],
    statement: impl Fn(i64) -> String,
    next: impl Fn(i64, bool) -> RemoteTxn,
) -> Vec<(i64, String, Result<(), RemoteError>)> {
    on_each_while(ids, statement, || {}, None, next)
}

/// [`on_each`], running `meanwhile` after sending and before collecting the answers, which
/// are awaited until `deadline`.
pub fn on_each_while(
    ids: &[i64],
    statement: impl Fn(i64) -> String,
    meanwhile: impl FnOnce(),
    deadline: Option<std::time::Instant>,
    next: impl Fn(i64, bool) -> RemoteTxn,
) -> Vec<(i64, String, Result<(), RemoteError>)> {
    let sent = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for &id in ids {
            let Some(entry) = pool.entries.get_mut(&id) else {
                continue;
            };
            let name = entry.conn.target.name.clone();
            match entry.conn.send(&statement(id), &[]) {
                Ok(()) => sent.push((id, name)),
                Err(e) => {
                    entry.txn = next(id, false);
                    out.push((id, name, Err(e)));
                }
            }
        }
        (sent, out)
    });
    meanwhile();
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let (sent, mut out) = sent;
        for (id, name) in sent {
            let entry = pool.entries.get_mut(&id).expect("sent to it");
            let result = entry.conn.finish(deadline).map(|_| ());
            entry.txn = next(id, result.is_ok());
            out.push((id, name, result));
        }
        out
    })
}

/// The nodes whose remote transaction is prepared as `gid`.
pub fn prepared_as(gid: &str) -> Vec<Writer> {
    POOL.with(|p| {
        p.borrow()
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.txn, RemoteTxn::Prepared(g) if g == gid))
            .map(|(id, e)| Writer {
                id: *id,
                name: e.conn.target.name.clone(),
            })
            .collect()
    })
}

/// Forgets every remote transaction of the current one without ending it (recovery will:
/// the outcome is not known here).
pub fn abandon_remote_transactions() {
    POOL.with(|p| {
        for entry in p.borrow_mut().entries.values_mut() {
            if matches!(entry.txn, RemoteTxn::Prepared(_)) {
                entry.txn = RemoteTxn::Idle;
            }
        }
    });
}

/// Commits the read-only remote transactions (their answers are read before each
/// connection's next use: nothing to wait for).
pub fn commit_readers() {
    POOL.with(|p| {
        for entry in p.borrow_mut().entries.values_mut() {
            if entry.txn == (RemoteTxn::Open { writes: false }) {
                entry.txn = RemoteTxn::Idle;
                if entry.conn.send("COMMIT", &[]).is_ok() {
                    entry.conn.answer_later();
                }
            }
        }
    });
}

/// Whether the current transaction still has remote transactions open or prepared.
pub fn has_remote_transactions() -> bool {
    POOL.with(|p| {
        p.borrow()
            .entries
            .values()
            .any(|e| e.txn != RemoteTxn::Idle)
    })
}

/// Raises the error of a transaction whose savepoint rollback diverged from its remote
/// transactions.
pub fn check_not_diverged() {
    if POOL.with(|p| p.borrow().diverged) {
        diverged_error();
    }
}

/// `synapse.connections()`: (node, state, remote transaction) of each cached connection.
pub fn describe() -> Vec<(i64, String, String, String)> {
    POOL.with(|p| {
        p.borrow()
            .entries
            .iter()
            .map(|(id, e)| {
                (
                    *id,
                    e.conn.target.name.clone(),
                    if e.conn.usable() { "open" } else { "broken" }.to_owned(),
                    match &e.txn {
                        RemoteTxn::Idle => "idle".to_owned(),
                        RemoteTxn::Open { writes: false } => "reading".to_owned(),
                        RemoteTxn::Open { writes: true } => "writing".to_owned(),
                        RemoteTxn::Prepared(gid) => format!("prepared {gid}"),
                    },
                )
            })
            .collect()
    })
}

/// The remote transaction matches the local one's isolation level.
/// Whether a read must run inside a remote transaction: under REPEATABLE READ and
/// SERIALIZABLE its snapshot must last as long as the local transaction's. Under READ
/// COMMITTED every statement takes a new snapshot anyway, so a read (which takes no locks
/// and leaves nothing to commit) runs as a transaction of its own: no BEGIN and no COMMIT
/// travel. A node the transaction wrote on keeps its transaction (reads see the writes).
fn reads_need_transaction() -> bool {
    // SAFETY: reads the current transaction's isolation level, main thread.
    unsafe { pg_sys::XactIsoLevel as u32 != pg_sys::XACT_READ_COMMITTED }
}

fn begin_statement() -> String {
    // SAFETY: reads the current transaction's isolation level, main thread.
    let level = unsafe { pg_sys::XactIsoLevel };
    let level = match level as u32 {
        pg_sys::XACT_SERIALIZABLE => "SERIALIZABLE",
        pg_sys::XACT_REPEATABLE_READ => "REPEATABLE READ",
        _ => "READ COMMITTED",
    };
    format!("BEGIN ISOLATION LEVEL {level}")
}

fn database_name() -> String {
    // SAFETY: MyDatabaseId is set once the backend is connected; the name is palloc'd.
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

fn tls_dir() -> std::path::PathBuf {
    crate::pg::synapse_dir().join("tls")
}

fn diverged_error() -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "a savepoint was rolled back after statements ran on other nodes",
        "synapse pool",
    )
    .set_detail("The other nodes cannot roll back to the savepoint, so the transaction can only be rolled back.")
    .set_hint("Roll back the transaction and run it again without rolling back to a savepoint.")
    .report(PgLogLevel::ERROR);
    unreachable!()
}

fn register_callbacks() {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if !pool.callbacks_registered {
            // SAFETY: main thread; the callbacks are plain functions living as long as the
            // library.
            unsafe {
                pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
                pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
            }
            pool.callbacks_registered = true;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // synapse's own subtransactions (finishing a prepared transaction) touch no remote
    // transaction.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB
        && !crate::pg::xact::in_internal_subtransaction()
    {
        POOL.with(|p| {
            if let Ok(mut pool) = p.try_borrow_mut() {
                if pool.entries.values().any(|e| e.txn != RemoteTxn::Idle) {
                    pool.diverged = true;
                }
            }
        });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => crate::txn::coordinator::pre_commit(),
        XACT_EVENT_PRE_PREPARE => crate::txn::coordinator::pre_prepare(),
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => end(true),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => end(false),
        // The transaction was prepared (a COMMIT that prepares this node's part too): the
        // coordinator finishes it in a transaction of its own.
        XACT_EVENT_PREPARE => {}
        _ => {}
    }
}

/// After the local transaction: finish prepared transactions (the decision was commit if
/// the local one committed), roll back open ones, drop broken connections. Never raises
/// an ERROR (the local outcome is decided).
fn end(committed: bool) {
    let finished = POOL.with(|p| {
        // Borrowed already: the process exits in the middle of pool work (postmaster
        // death, FATAL); its connections close with it, and recovery finishes the rest.
        let Ok(mut pool) = p.try_borrow_mut() else {
            return None;
        };
        pool.diverged = false;
        pool.several_writers = false;
        pool.loopback = false;
        let mut drop_ids = Vec::new();
        let mut left = false;
        for (id, entry) in pool.entries.iter_mut() {
            let statement = match (&entry.txn, committed) {
                (RemoteTxn::Idle, _) => None,
                (RemoteTxn::Prepared(gid), true) => Some(format!("COMMIT PREPARED '{gid}'")),
                (RemoteTxn::Prepared(gid), false) => Some(format!("ROLLBACK PREPARED '{gid}'")),
                (RemoteTxn::Open { .. }, _) => Some("ROLLBACK".to_owned()),
            };
            if let Some(statement) = statement {
                if gucs::trace_transactions() {
                    pgrx::log!(
                        "synapse 2pc: at {} end: {statement} on {}",
                        if committed { "commit" } else { "abort" },
                        entry.conn.target.name
                    );
                }
                // Interrupts are held here: a node that does not answer is given up on
                // after a while (recovery finishes what is left prepared).
                let deadline = std::time::Instant::now() + END_TIMEOUT;
                let ok = entry.conn.usable()
                    && entry
                        .conn
                        .send(&statement, &[])
                        .and_then(|()| entry.conn.finish(Some(deadline)))
                        .map_err(|e| {
                            if let RemoteTxn::Prepared(gid) = &entry.txn {
                                left = true;
                                pgrx::warning!(
                                    "synapse: could not {} transaction {gid} on node \"{}\": {}; \
                                 recovery finishes it there",
                                    if committed { "commit" } else { "roll back" },
                                    entry.conn.target.name,
                                    e.message
                                );
                            }
                        })
                        .is_ok();
                if !ok {
                    drop_ids.push(*id);
                }
                entry.txn = RemoteTxn::Idle;
            }
            if !entry.conn.usable() || (!entry.conn.answer_pending() && entry.conn.in_transaction())
            {
                drop_ids.push(*id);
            }
        }
        for id in drop_ids {
            pool.entries.remove(&id);
        }
        let tracked = pool.tracked.take().zip(pool.gxid.take());
        tracked.map(|t| (t, left))
    });
    if let Some(((tracked, gxid), left)) = finished {
        tracked.set(gxid, tracked_final_state(committed, left));
    }
    crate::txn::coordinator::end();
}

/// How a transaction this node coordinated ends in `synapse.transactions`, unless the
/// coordinator already recorded a final state.
fn tracked_final_state(committed: bool, left: bool) -> synapse_core::txn::TxnState {
    use synapse_core::txn::TxnState;
    match (committed, left) {
        (_, true) => TxnState::Failed,
        (true, false) => TxnState::Committed,
        (false, false) => TxnState::Aborted,
    }
}
