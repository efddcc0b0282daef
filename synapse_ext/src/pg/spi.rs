//! Reads through SPI that neither look like writes nor read the past.
//!
//! pgrx's `Spi::get_one*` run their query as an update, which assigns the transaction an
//! id (routing counts the nodes a transaction wrote on by exactly that), while its
//! read-only `select` runs with `read_only`, which reuses the calling statement's snapshot
//! (so a read after a Raft read barrier could miss what the barrier waited for). These
//! helpers run with a fresh snapshot and assign no transaction id.

use std::ffi::CString;

use pgrx::datum::FromDatum;
use pgrx::pg_sys;
use pgrx::IntoDatum;

/// Runs `sql` (a read) with text parameters, at most `limit` rows (0: all), and hands
/// the result to `read` (tuple table, row count) before SPI frees it.
fn select<R>(
    sql: &str,
    args: &[&str],
    limit: i64,
    read: impl FnOnce(*mut pg_sys::SPITupleTable, usize) -> R,
) -> Option<R> {
    let sql = CString::new(sql).expect("no NUL in SQL");
    let mut types: Vec<pg_sys::Oid> = vec![pg_sys::TEXTOID; args.len()];
    let mut values: Vec<pg_sys::Datum> = args
        .iter()
        .map(|a| a.into_datum().expect("text is never NULL"))
        .collect();
    let nulls: Vec<std::os::raw::c_char> = vec![b' ' as _; args.len()];
    // SAFETY: main thread inside a transaction; SPI is connected and finished here, and
    // `read` copies what it keeps before SPI frees the result.
    unsafe {
        pg_sys::SPI_connect();
        let code = pg_sys::SPI_execute_with_args(
            sql.as_ptr(),
            args.len() as i32,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            false,
            limit,
        );
        let table = pg_sys::SPI_tuptable;
        let out = (code == pg_sys::SPI_OK_SELECT as i32 && !table.is_null())
            .then(|| read(table, pg_sys::SPI_processed as usize));
        pg_sys::SPI_finish();
        if code < 0 {
            pgrx::error!(
                "synapse: internal query failed (SPI code {code}): {}",
                sql.to_string_lossy()
            );
        }
        out
    }
}

/// The first column of the first row of `sql` (a read) with text parameters, if any.
pub fn select_one<T: FromDatum>(sql: &str, args: &[&str]) -> Option<T> {
    select(sql, args, 1, |table, rows| {
        if rows == 0 {
            return None;
        }
        // SAFETY: a row of the result; the value is converted (copied out) at once.
        unsafe {
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut isnull);
            T::from_datum(datum, isnull)
        }
    })
    .flatten()
}

/// Every row of `sql` (a read) with text parameters, each column as its text output.
pub fn select_rows(sql: &str, args: &[&str]) -> Vec<Vec<Option<String>>> {
    select(sql, args, 0, |table, rows| {
        // SAFETY: rows of the result; SPI_getvalue returns palloc'd text copied out.
        unsafe {
            let natts = (*(*table).tupdesc).natts;
            (0..rows)
                .map(|i| {
                    let tuple = *(*table).vals.add(i);
                    (1..=natts)
                        .map(|c| {
                            let v = pg_sys::SPI_getvalue(tuple, (*table).tupdesc, c);
                            (!v.is_null())
                                .then(|| std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
                        })
                        .collect()
                })
                .collect()
        }
    })
    .unwrap_or_default()
}
