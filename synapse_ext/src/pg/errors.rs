//! Raising errors with SQLSTATE, message and hint, as every component reports bad input.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raises an ERROR with SQLSTATE `code`, `message` and, unless empty, `hint`.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "synapse");
    if !hint.is_empty() {
        report = report.set_hint(hint.to_owned());
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises an ERROR with SQLSTATE 0A000 (feature not supported).
pub fn not_supported(message: impl Into<String>, hint: &str) -> ! {
    raise(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, message, hint)
}
