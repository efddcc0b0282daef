//! Running main-thread work in its own transaction, turning a PostgreSQL ERROR into a value.
//!
//! Background loops must survive errors (a failed query must not kill the worker), so the
//! transaction is aborted and the error returned as a [`CaughtError`] message instead of
//! being re-thrown.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

/// Runs `body` in a new transaction with a snapshot; commits on success, aborts and returns
/// the error message on any ERROR or panic inside.
pub fn in_transaction<R>(body: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    PgTryBuilder::new(|| {
        // SAFETY: main thread of a worker connected to a database, outside any transaction.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let result = body();
        // SAFETY: pairs with the Push/Start above; reached only when `body` returned.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(result)
    })
    .catch_others(|caught| {
        // SAFETY: we are in the transaction started above (or none); aborting cleans up
        // snapshots, locks and memory of the failed attempt.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(message_of(&caught))
    })
    .execute()
}

fn message_of(caught: &CaughtError) -> String {
    match caught {
        CaughtError::PostgresError(report)
        | CaughtError::ErrorReport(report)
        | CaughtError::RustPanic {
            ereport: report, ..
        } => report.message().to_owned(),
    }
}

/// Runs `body` in a subtransaction of the current transaction: on success it is released
/// (its work stays), on an ERROR rolled back and the message returned, leaving the current
/// transaction usable.
pub fn in_subtransaction<R>(
    body: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, String> {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            INTERNAL.with(|i| i.set(i.get() - 1));
        }
    }
    INTERNAL.with(|i| i.set(i.get() + 1));
    let _mark = Mark;
    // SAFETY: main thread inside a transaction; the memory context and resource owner in
    // force are restored after the subtransaction ends, as PL/pgSQL's exception blocks do.
    let (context, owner) = unsafe {
        let saved = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(saved.0);
        saved
    };
    let restore = move || {
        // SAFETY: the context and owner saved above, which outlive the subtransaction.
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
    };
    PgTryBuilder::new(|| {
        let result = body();
        // SAFETY: ends the subtransaction begun above.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(result)
    })
    .catch_others(|caught| {
        // SAFETY: rolls back the subtransaction begun above, releasing what the failed
        // body held.
        unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
        restore();
        Err(message_of(&caught))
    })
    .execute()
}

thread_local! {
    static INTERNAL: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the current subtransaction is one of [`in_subtransaction`]'s.
pub fn in_internal_subtransaction() -> bool {
    INTERNAL.with(|i| i.get() > 0)
}
