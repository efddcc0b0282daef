//! This backend's connections to other nodes, cached across transactions, and the remote
//! transactions opened on them, which end with the local one.
//!
//! A remote transaction starts with the first statement sent to its node in a local
//! transaction (under READ COMMITTED, with its first write or row lock: a read before
//! runs as a transaction of its own). At local pre-commit, read-only remote transactions
//! commit, and the ones that wrote are prepared (`PREPARE TRANSACTION`); once the local
//! transaction has committed they are committed (`COMMIT PREPARED`), and on abort rolled
//! back. A failure after the local commit is a WARNING naming the prepared transaction
//! left behind.
//!
//! Invariants: at most one connection per node; a connection whose protocol state is
//! unknown (interrupted, lost) is never reused; no remote transaction outlives the local
//! transaction that opened it (except a prepared one whose COMMIT PREPARED failed).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::connection::{ClientTls, Connection, NodeTarget, RemoteError};
use crate::gucs;

/// The state of the remote transaction on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RemoteTxn {
    /// No transaction block open.
    Idle,
    /// BEGIN sent in the current local transaction; `writes` once a write was sent.
    Open { writes: bool },
    /// Prepared at local pre-commit under this global id; committed or rolled back when the
    /// local transaction ends.
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
    /// Counts prepared transactions, for unique global ids.
    prepared: u64,
    /// A savepoint rolled back after remote work: the remote transactions no longer match
    /// the local one, so the transaction may not commit.
    diverged: bool,
    /// synapse's own operations (distributing a table) may write on several nodes: their
    /// remote transactions are prepared and committed after the local commit.
    several_writers: bool,
}

thread_local! {
    // Backends are single-threaded: this is per-backend state.
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

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
    let writes = access == Access::Write;
    register_callbacks();
    if POOL.with(|p| p.borrow().diverged) {
        diverged_error();
    }
    check_available(target);
    let result = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let entry = match pool.entries.remove(&target.id) {
            Some(e) if e.conn.usable() && e.conn.target == *target => e,
            _ => {
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
        let entry = pool.entries.entry(target.id).or_insert(entry);
        if entry.txn == RemoteTxn::Idle && (access != Access::Read || reads_need_transaction()) {
            // Sent with the first statement, in the same round trip.
            entry.conn.pending_begin = Some(begin_statement());
            entry.txn = RemoteTxn::Open { writes: false };
        }
        if writes {
            entry.txn = RemoteTxn::Open { writes: true };
        }
        f(&mut entry.conn)
    });
    let result = match result {
        Ok(r) => {
            crate::shmem::breaker_success(&target.name);
            r
        }
        Err(e) => {
            if e.connection_lost {
                crate::shmem::breaker_failure(&target.name);
            }
            e.report()
        }
    };
    if writes {
        check_single_writer();
    }
    result
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    if let Err(retry_at_ms) = crate::shmem::breaker_allow(&target.name) {
        let wait = retry_at_ms - now_ms();
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            format!(
                "node \"{}\" is unavailable: its circuit breaker is open (next try in {} ms)",
                target.name,
                wait.max(0)
            ),
            "synapse pool",
        )
        .set_detail("The node failed repeatedly or SWIM reports it failed; statements that need it fail at once.")
        .set_hint("See SELECT * FROM synapse.circuit_breakers(); statements that need only other nodes keep working.")
        .report(PgLogLevel::ERROR);
    }
}

/// Lets the current transaction write on several nodes (synapse's own operations).
pub fn allow_several_writers() {
    POOL.with(|p| p.borrow_mut().several_writers = true);
}

/// The nodes (other than this one) written in the current transaction.
fn remote_writers() -> Vec<String> {
    POOL.with(|p| {
        p.borrow()
            .entries
            .values()
            .filter(|e| e.txn == RemoteTxn::Open { writes: true })
            .map(|e| e.conn.target.name.clone())
            .collect()
    })
}

fn wrote_here() -> bool {
    // SAFETY: reads the current transaction's state, main thread.
    unsafe { pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId }
}

/// Until two-phase commit lands, a transaction writes on one node only, so that it
/// commits everywhere or nowhere.
/// Refuses a transaction that writes on more than one node (until two-phase commit).
pub fn check_single_writer() {
    if POOL.with(|p| p.borrow().several_writers) {
        return;
    }
    let mut writers = remote_writers();
    if wrote_here() {
        writers.push(format!("{} (this node)", gucs::node_name()));
    }
    if writers.len() > 1 {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("this transaction writes on several nodes ({})", writers.join(", ")),
            "synapse pool",
        )
        .set_detail("Committing it without two-phase commit could commit on some nodes and not others.")
        .set_hint("Write each node's rows in a transaction of its own; two-phase commit, which lifts this limit, is not available yet.")
        .report(PgLogLevel::ERROR);
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
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.entries.values().any(|e| e.txn != RemoteTxn::Idle) {
                pool.diverged = true;
            }
        });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        XACT_EVENT_PRE_PREPARE if has_remote_transactions() => {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that ran statements on other nodes",
                "synapse pool",
            )
            .report(PgLogLevel::ERROR);
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => end(true),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => end(false),
        _ => {}
    }
}

fn has_remote_transactions() -> bool {
    POOL.with(|p| {
        p.borrow()
            .entries
            .values()
            .any(|e| e.txn != RemoteTxn::Idle)
    })
}

/// Commits read-only remote transactions and prepares the others; any failure aborts the
/// local transaction (and so rolls the others back).
fn pre_commit() {
    if has_remote_transactions() {
        check_single_writer();
    }
    let failure = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.entries.values().all(|e| e.txn == RemoteTxn::Idle) {
            return None;
        }
        if pool.diverged {
            return Some(None);
        }
        let node = gucs::node_name();
        // One writer: its plain COMMIT is the commit point. Several (synapse's own
        // operations only): prepared now, committed after the local commit.
        let prepare = pool.several_writers;
        // SAFETY: MyProcPid is set at backend start.
        let pid = unsafe { pg_sys::MyProcPid };
        let mut sent = Vec::new();
        let mut failure = None;
        let ids: Vec<i64> = pool.entries.keys().copied().collect();
        for id in ids {
            let prepared = pool.prepared;
            let entry = pool.entries.get_mut(&id).expect("listed");
            let statement = match entry.txn {
                RemoteTxn::Open { writes: true } if !prepare => {
                    entry.txn = RemoteTxn::Idle;
                    "COMMIT".to_owned()
                }
                RemoteTxn::Open { writes: true } => {
                    let gid = format!("synapse_{node}_{pid}_{prepared}");
                    entry.txn = RemoteTxn::Prepared(gid.clone());
                    pool.prepared += 1;
                    format!("PREPARE TRANSACTION '{gid}'")
                }
                RemoteTxn::Open { writes: false } => {
                    // Nothing to commit: the COMMIT's answer is read before the
                    // connection's next use instead of now (one round trip less).
                    entry.txn = RemoteTxn::Idle;
                    if entry.conn.send("COMMIT", &[]).is_ok() {
                        entry.conn.answer_later();
                    }
                    continue;
                }
                _ => continue,
            };
            let entry = pool.entries.get_mut(&id).expect("listed");
            match entry.conn.send(&statement, &[]) {
                Ok(()) => sent.push(id),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        for id in sent {
            let entry = pool.entries.get_mut(&id).expect("listed");
            if let Err(e) = entry.conn.finish(None) {
                // A failed PREPARE leaves nothing prepared.
                if matches!(entry.txn, RemoteTxn::Prepared(_)) {
                    entry.txn = RemoteTxn::Open { writes: true };
                }
                failure.get_or_insert(e);
            }
        }
        failure.map(Some)
    });
    match failure {
        None => {}
        Some(None) => diverged_error(),
        Some(Some(e)) => e.report(),
    }
}

/// After the local transaction: finish prepared transactions, roll back open ones, drop
/// broken connections. Never raises an ERROR (the local outcome is decided).
fn end(committed: bool) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        pool.diverged = false;
        pool.several_writers = false;
        let mut drop_ids = Vec::new();
        for (id, entry) in pool.entries.iter_mut() {
            let statement = match (&entry.txn, committed) {
                (RemoteTxn::Idle, _) => None,
                (RemoteTxn::Prepared(gid), true) => Some(format!("COMMIT PREPARED '{gid}'")),
                (RemoteTxn::Prepared(gid), false) => Some(format!("ROLLBACK PREPARED '{gid}'")),
                (RemoteTxn::Open { .. }, _) => Some("ROLLBACK".to_owned()),
            };
            if let Some(statement) = statement {
                let ok = entry.conn.usable()
                    && entry.conn.exec(&statement, &[]).map_err(|e| {
                        if let RemoteTxn::Prepared(gid) = &entry.txn {
                            pgrx::warning!(
                                "synapse: could not finish prepared transaction {gid} on node \"{}\": {}; \
                                 it stays prepared there until COMMIT PREPARED or ROLLBACK PREPARED '{gid}' runs on that node",
                                entry.conn.target.name,
                                e.message
                            );
                        }
                    }).is_ok();
                if !ok {
                    drop_ids.push(*id);
                }
                entry.txn = RemoteTxn::Idle;
            }
            if !entry.conn.usable() || (!entry.conn.answer_pending() && entry.conn.in_transaction()) {
                drop_ids.push(*id);
            }
        }
        for id in drop_ids {
            pool.entries.remove(&id);
        }
    });
}
