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
