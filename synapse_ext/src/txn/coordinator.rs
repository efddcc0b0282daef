//! The coordinator's side of a distributed commit (see `synapse_core::txn` for the
//! protocol).
//!
//! How the current transaction ends depends on where it wrote:
//! - nowhere else: read-only remote transactions commit at pre-commit, unawaited;
//! - on one other node only: that node's plain `COMMIT` at pre-commit is the commit point;
//! - on several other nodes, not here: at pre-commit they are prepared, the decision is
//!   recorded through Raft, and `COMMIT PREPARED` follows;
//! - here and elsewhere, ended by a `COMMIT` statement: the statement prepares this
//!   node's part too (`PrepareTransactionBlock`), so every part is durable before the
//!   decision; the decision and the `COMMIT PREPARED`s then run in a transaction of their
//!   own, before the client hears `COMMIT`.
//! - here and elsewhere otherwise (a procedure's COMMIT, a multi-statement query string):
//!   refused, because this node's part could not be prepared; synapse's own operations
//!   (distributing a table, DDL on every node), which commit this way, record the decision
//!   just before the local commit: a crash in between would lose their local part.
//!
//! Until the decision, any failure rolls everything back and is an ERROR. After it, a
//! participant that cannot be reached is a WARNING: the transaction *is* committed and
//! recovery (every node's maintenance worker) finishes it there. If the decision's fate is
//! unknown (Raft did not answer), nothing is rolled back: the client gets SQLSTATE 08007
//! and recovery settles the transaction as the Raft log says.

use std::cell::RefCell;
use std::ffi::CString;
use std::time::Instant;

use pgrx::pg_sys;
use pgrx::prelude::*;
use synapse_core::txn::{Gxid, Outcome, TxnState};

use super::failpoints::{self, Action, Point};
use crate::gucs;
use crate::pg::errors::{not_supported, raise};
use crate::remote::pool::{self, RemoteTxn, Writer};

thread_local! {
    /// The transaction traced last and when its first step was traced.
    static TRACE_START: RefCell<Option<(String, Instant)>> = const { RefCell::new(None) };
    /// The gid of this node's part while a COMMIT statement prepares it.
    static LOCAL_PART: RefCell<Option<String>> = const { RefCell::new(None) };
}

extern "C-unwind" {
    // access/twophase.h, not in pgrx's bindings.
    #[link_name = "FinishPreparedTransaction"]
    fn finish_prepared_transaction(gid: *const std::ffi::c_char, is_commit: bool);
}

/// Holds off interrupts while alive: a commit past its first PREPARE is not cancelled
/// half-way (PostgreSQL's own commit does the same).
struct HoldInterrupts;

impl HoldInterrupts {
    fn new() -> Self {
        // SAFETY: the counter HOLD_INTERRUPTS() increments, main thread.
        unsafe { pg_sys::InterruptHoldoffCount += 1 };
        HoldInterrupts
    }
}

impl Drop for HoldInterrupts {
    fn drop(&mut self) {
        // SAFETY: pairs with the increment in new(); error recovery may have reset it.
        unsafe {
            pg_sys::InterruptHoldoffCount = pg_sys::InterruptHoldoffCount.saturating_sub(1);
        }
    }
}

/// Logs a step of a distributed commit when `synapse.trace_transactions` is on.
fn trace(gid: &str, step: impl FnOnce() -> String) {
    if gucs::trace_transactions() {
        // SAFETY: reads the session's application_name, main thread.
        let app = unsafe {
            let p = pg_sys::application_name;
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        // Microseconds since this transaction's first traced step.
        let since = TRACE_START.with(|t| {
            let mut t = t.borrow_mut();
            match &*t {
                Some((g, at)) if g == gid => at.elapsed().as_micros(),
                _ => {
                    *t = Some((gid.to_owned(), Instant::now()));
                    0
                }
            }
        });
        log!("synapse 2pc {gid} [{app}] +{since}us: {}", step());
    }
}

/// `XACT_EVENT_PRE_COMMIT`: ends the remote transactions as the module doc says.
pub fn pre_commit() {
    if !pool::has_remote_transactions() {
        return;
    }
    pool::check_not_diverged();
    pool::commit_readers();
    let writers = pool::remote_writers();
    let here = pool::wrote_here();
    if writers.is_empty() {
        return;
    }
    if writers.len() == 1 && !here {
        // One writer: its COMMIT is the commit point.
        if let Some(g) = pool::gxid() {
            trace(&g.gid(), || {
                format!("one writer: COMMIT on {}", writers[0].name)
            });
        }
        let results = pool::on_each(
            &[writers[0].id],
            |_| "COMMIT".into(),
            |_, _| RemoteTxn::Idle,
        );
        for (_, _, result) in results {
            if let Err(e) = result {
                e.report();
            }
        }
        return;
    }
    if here && !pool::several_writers_allowed() {
        let names: Vec<&str> = writers.iter().map(|w| w.name.as_str()).collect();
        not_supported(
            format!(
                "this transaction wrote on this node and on {} and does not end with a COMMIT statement",
                names.join(", ")
            ),
            "Run it as a transaction block (BEGIN; ...; COMMIT;): its COMMIT prepares every \
             node's part, so it commits everywhere or nowhere. A procedure's COMMIT or several \
             statements in one query string cannot.",
        );
    }
    let gxid = pool::gxid().expect("a transaction with remote writes has a global id");
    trace(&gxid.gid(), || format!("pre-commit path, here={here}"));
    prepare(gxid, &writers, here);
    let mut participants: Vec<String> = writers.iter().map(|w| w.name.clone()).collect();
    if here {
        participants.push(gucs::node_name());
    }
    decide_and_finish(gxid, participants, None);
}

/// `XACT_EVENT_PRE_PREPARE`: a COMMIT preparing this node's part prepares the other
/// nodes' first; a user's own PREPARE TRANSACTION of distributed work is refused.
pub fn pre_prepare() {
    if LOCAL_PART.with(|l| l.borrow().is_some()) {
        pool::check_not_diverged();
        pool::commit_readers();
        let gxid = pool::gxid().expect("a transaction with remote writes has a global id");
        prepare(gxid, &pool::remote_writers(), true);
    } else if pool::has_remote_transactions() {
        not_supported(
            "cannot PREPARE a transaction that ran statements on other nodes",
            "synapse commits such transactions with two-phase commit itself: end it with COMMIT.",
        );
    }
}

/// The end of the local transaction.
pub fn end() {
    LOCAL_PART.with(|l| l.borrow_mut().take());
}

/// The COMMIT statement of a transaction block that wrote here and on other nodes:
/// prepares every part, records the decision and commits them all. Returns false when the
/// statement is left to PostgreSQL (anything else).
///
/// # Safety
/// `stmt` is the TransactionStmt being executed at top level.
pub unsafe fn commit_statement(stmt: *mut pg_sys::TransactionStmt) -> bool {
    // SAFETY: a valid TransactionStmt; transaction state reads on the main thread.
    unsafe {
        if (*stmt).kind != pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT
            || !pg_sys::IsTransactionBlock()
            || pg_sys::IsAbortedTransactionBlockState()
            || !pool::wrote_here()
            || pool::remote_writers().is_empty()
        {
            return false;
        }
        // Refusing ends the transaction, as a COMMIT whose commit fails does: rolled back,
        // the session out of the block.
        let refuse = |message: &str, hint: &str| -> ! {
            pg_sys::EndTransactionBlock(false);
            not_supported(message.to_owned(), hint)
        };
        if (*stmt).chain {
            refuse(
                "COMMIT AND CHAIN is not supported for a transaction that wrote on several nodes",
                "Use COMMIT, then BEGIN.",
            );
        }
        if pg_sys::MyXactFlags & pg_sys::XACT_FLAGS_ACCESSEDTEMPNAMESPACE as i32 != 0 {
            refuse(
                "a transaction that wrote on several nodes cannot also use temporary objects",
                "Its parts are prepared (PREPARE TRANSACTION) before they commit, which PostgreSQL \
                 refuses for transactions that used temporary tables. Use ordinary tables, or \
                 split the transaction.",
            );
        }
    }
    let gxid = pool::gxid().expect("a transaction with remote writes has a global id");
    let gid = gxid.gid();
    let mut participants: Vec<String> =
        pool::remote_writers().into_iter().map(|w| w.name).collect();
    participants.push(gucs::node_name());
    LOCAL_PART.with(|l| *l.borrow_mut() = Some(gid.clone()));
    trace(&gid, || "COMMIT prepares this node's part too".into());
    let c_gid = CString::new(gid.clone()).expect("no NUL in a gid");
    // SAFETY: top level of a COMMIT statement in a live transaction block: PostgreSQL's
    // PREPARE TRANSACTION path, then a fresh transaction for what follows (as VACUUM
    // commits and starts transactions inside its utility statement).
    unsafe {
        if !pg_sys::PrepareTransactionBlock(c_gid.as_ptr()) {
            LOCAL_PART.with(|l| l.borrow_mut().take());
            return false;
        }
        // Prepares the other nodes (pre_prepare), then this node's part.
        pg_sys::CommitTransactionCommand();
        pg_sys::StartTransactionCommand();
    }
    decide_and_finish(gxid, participants, Some(&gid));
    LOCAL_PART.with(|l| l.borrow_mut().take());
    true
}

/// Prepares the remote writers in parallel; any failure is an ERROR (the abort rolls back
/// what did prepare).
fn prepare(gxid: Gxid, writers: &[Writer], here: bool) {
    if let Err(e) = failpoints::parse(&gucs::failpoints()) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid synapse.failpoints: {e}"),
            "Use point:action pairs, e.g. 'after_prepare:error'.",
        );
    }
    let mut nodes: Vec<u64> = writers.iter().map(|w| w.id as u64).collect();
    if here {
        nodes.insert(0, gxid.node);
    }
    pool::set_participants(&nodes);
    pool::set_state(TxnState::Preparing);
    let gid = gxid.gid();
    let ids: Vec<i64> = writers.iter().map(|w| w.id).collect();
    trace(&gid, || {
        format!(
            "PREPARE on {}",
            writers
                .iter()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    // A node that does not answer (partitioned away) fails the commit after a while.
    let deadline = Some(Instant::now() + pool::END_TIMEOUT);
    let results = pool::on_each_while(
        &ids,
        |_| format!("PREPARE TRANSACTION '{gid}'"),
        || {},
        deadline,
        |_, ok| {
            if ok {
                RemoteTxn::Prepared(gid.clone())
            } else {
                // A failed PREPARE rolled the node's transaction back.
                RemoteTxn::Open { writes: true }
            }
        },
    );
    if let Some((_, node, e)) = results
        .into_iter()
        .find_map(|(id, n, r)| r.err().map(|e| (id, n, e)))
    {
        pool::set_state(TxnState::Aborting);
        // No commit decision can follow: whatever did prepare is rolled back (now, or by
        // recovery), so the outcome is certain.
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_TRANSACTION_ROLLBACK,
            format!(
                "transaction {gid} was rolled back: node \"{node}\" could not prepare it: {}",
                e.message
            ),
            "synapse two-phase commit",
        )
        .set_detail(format!("SQLSTATE {} on node \"{node}\".", e.sqlstate))
        .set_hint("Nothing of the transaction was committed. Run it again.")
        .report(PgLogLevel::ERROR);
    }
}

/// Everything is prepared: records the decision and commits every part (`local`: this
/// node's prepared part, when a COMMIT statement prepared it).
fn decide_and_finish(gxid: Gxid, participants: Vec<String>, local: Option<&str>) {
    let gid = gxid.gid();
    let _hold = HoldInterrupts::new();
    pool::set_state(TxnState::Prepared);
    // From here on the outcome is the decision's: if this process ends abruptly (its
    // node's postmaster dies, a FATAL error), its abort must not roll back the prepared
    // parts, whose decision may already be commit. Recovery finishes them; this function
    // finishes them itself when it gets that far.
    let remote = pool::prepared_as(&gid);
    pool::abandon_remote_transactions();
    trace(&gid, || "prepared everywhere".into());
    if failpoints::hit(Point::AfterPrepare, &gid) == Some(Action::Error) {
        roll_back_everywhere(&gid, &remote, local);
        raise(
            PgSqlErrorCode::ERRCODE_TRANSACTION_ROLLBACK,
            format!("transaction {gid} was rolled back by failpoint after_prepare"),
            "synapse.failpoints is set in this session.",
        );
    }
    let decided = decide(gxid, participants);
    trace(&gid, || format!("decision: {decided:?}"));
    match decided {
        Ok(Outcome::Commit) => {}
        Ok(Outcome::Abort) => {
            roll_back_everywhere(&gid, &remote, local);
            raise(
                PgSqlErrorCode::ERRCODE_TRANSACTION_ROLLBACK,
                format!("transaction {gid} was rolled back: recovery had already decided to abort it"),
                "It was prepared longer than synapse.two_phase_timeout without a decision. Run it again.",
            );
        }
        Err(why) => {
            pool::set_state(TxnState::Failed);
            LOCAL_PART.with(|l| l.borrow_mut().take());
            raise(
                PgSqlErrorCode::ERRCODE_TRANSACTION_RESOLUTION_UNKNOWN,
                format!("the outcome of transaction {gid} is unknown: its commit decision could not be recorded ({why})"),
                "Every part is prepared; recovery commits it if the decision reached the Raft log and \
                 rolls it back otherwise (see SELECT * FROM synapse.transactions).",
            );
        }
    }
    pool::set_state(TxnState::Committing);
    let left = commit_everywhere(&gid, &remote, local);
    trace(&gid, || format!("committed; not confirmed: {left:?}"));
    if left.is_empty() {
        pool::set_state(TxnState::Committed);
    } else {
        pool::set_state(TxnState::Failed);
        warning!(
            "transaction {gid} is committed, but {} did not confirm: recovery finishes it there within synapse.recovery_interval",
            left.join(", ")
        );
    }
}

/// Records the commit decision; returns the decision in force (recovery may have recorded
/// an abort first). If the proposal's fate is unknown, tries to record an abort instead:
/// whichever is in the log then is the outcome. `Err` when neither could be learnt.
fn decide(gxid: Gxid, participants: Vec<String>) -> Result<Outcome, String> {
    let propose = |outcome| {
        super::propose_decision(
            &gxid.gid(),
            outcome,
            gxid.node,
            participants.clone(),
            "coordinator".into(),
        )
    };
    match propose(Outcome::Commit) {
        Ok(o) => Ok(o),
        Err(first) => propose(Outcome::Abort).map_err(|second| format!("{first}; then {second}")),
    }
}

/// Sends COMMIT PREPARED to every prepared part; returns the nodes that did not confirm.
fn commit_everywhere(gid: &str, remote: &[Writer], local: Option<&str>) -> Vec<String> {
    let mut ids: Vec<i64> = remote.iter().map(|w| w.id).collect();
    let mut left = Vec::new();
    let deadline = || Some(Instant::now() + pool::END_TIMEOUT);
    let statement = |_| format!("COMMIT PREPARED '{gid}'");
    let done = |_, _| RemoteTxn::Idle;
    let stop = match failpoints::action(Point::AfterDecision) {
        Some(Action::Error) => true,
        Some(_) => {
            failpoints::hit(Point::AfterDecision, gid);
            false
        }
        None => false,
    };
    let between = failpoints::action(Point::BetweenCommitPrepared).is_some();
    if stop {
        left.extend(remote.iter().map(|w| w.name.clone()));
        if local.is_some() {
            left.push(gucs::node_name());
        }
        return left;
    }
    let mut local = local;
    if between {
        // One part first, then the failpoint, then the rest.
        if let Some(gid) = local.take() {
            if let Err(e) = finish_local(gid) {
                left.push(format!("{} (this node: {e})", gucs::node_name()));
            }
        } else if let Some(first) = ids.first().copied() {
            ids.remove(0);
            left.extend(unconfirmed(pool::on_each_while(
                &[first],
                statement,
                || {},
                deadline(),
                done,
            )));
        }
        if failpoints::hit(Point::BetweenCommitPrepared, gid) == Some(Action::Error) {
            left.extend(
                remote
                    .iter()
                    .filter(|w| ids.contains(&w.id))
                    .map(|w| w.name.clone()),
            );
            return left;
        }
    }
    let mut local_failure = None;
    let results = pool::on_each_while(
        &ids,
        statement,
        || {
            if let Some(gid) = local {
                local_failure = finish_local(gid).err();
            }
        },
        deadline(),
        done,
    );
    if let Some(e) = local_failure {
        left.push(format!("{} (this node: {e})", gucs::node_name()));
    }
    left.extend(unconfirmed(results));
    left
}

/// The nodes whose COMMIT PREPARED failed (one that finds nothing prepared was finished by
/// recovery already).
fn unconfirmed(
    results: Vec<(
        i64,
        String,
        Result<(), crate::remote::connection::RemoteError>,
    )>,
) -> Vec<String> {
    results
        .into_iter()
        .filter_map(|(_, name, r)| match r {
            Err(e) if e.sqlstate != "42704" => Some(format!("{name} ({})", e.message)),
            _ => None,
        })
        .collect()
}

/// ROLLBACK PREPARED everywhere, before an ERROR that ends the commit.
fn roll_back_everywhere(gid: &str, remote: &[Writer], local: Option<&str>) {
    trace(gid, || {
        format!(
            "rolling back everywhere (this node's part: {})",
            local.is_some()
        )
    });
    pool::set_state(TxnState::Aborting);
    let ids: Vec<i64> = remote.iter().map(|w| w.id).collect();
    let results = pool::on_each_while(
        &ids,
        |_| format!("ROLLBACK PREPARED '{gid}'"),
        || {
            if let Some(gid) = local {
                if let Err(e) = rollback_local(gid) {
                    warning!("could not roll back transaction {gid} on this node: {e}; recovery rolls it back");
                }
            }
        },
        Some(Instant::now() + pool::END_TIMEOUT),
        |_, _| RemoteTxn::Idle,
    );
    let failed = unconfirmed(results);
    if !failed.is_empty() {
        warning!(
            "transaction {gid} is left prepared on {}: recovery rolls it back",
            failed.join(", ")
        );
    }
    LOCAL_PART.with(|l| l.borrow_mut().take());
    pool::set_state(TxnState::Aborted);
}

fn finish_local(gid: &str) -> Result<(), String> {
    match finish_here(gid, true) {
        // Recovery committed it first (it follows the same decision).
        Err(e) if e.contains("does not exist") => Ok(()),
        other => other,
    }
}

fn rollback_local(gid: &str) -> Result<(), String> {
    finish_here(gid, false)
}

/// COMMIT PREPARED / ROLLBACK PREPARED of `gid` on this node, in a subtransaction so a
/// failure (recovery finished it first, or is at it) leaves the current transaction
/// usable.
pub fn finish_here(gid: &str, commit: bool) -> Result<(), String> {
    let c_gid = CString::new(gid).map_err(|e| e.to_string())?;
    crate::pg::xact::in_subtransaction(|| {
        // SAFETY: a gid string outliving the call, inside a transaction.
        unsafe { finish_prepared_transaction(c_gid.as_ptr(), commit) }
    })
}
