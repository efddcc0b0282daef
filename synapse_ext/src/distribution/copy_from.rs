//! `COPY table FROM` into a distributed table: PostgreSQL's own COPY reader parses the
//! input (any format and option COPY takes, from a file, a program or the client) into
//! rows of the table; each row goes to the node of its shard: this node's rows through a
//! kept `INSERT` plan, other nodes' rows in batches of `COPY ... FROM STDIN` (text
//! format) on their connections, in this transaction.
//!
//! Rows for several nodes are a write on several nodes, committed with two-phase commit.
//! Outside a transaction block this node's rows too go through a connection (to this
//! node), so that they are prepared with the others (see `executor::modify_scan`).

use std::collections::BTreeMap;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use super::ddl::{self, quote_ident};
use super::guard;
use super::metadata;
use super::shard_key::{self, KeyType};
use crate::remote::connection::copy_text;

/// Bytes of COPY data gathered for a node before they are sent.
const BATCH_BYTES: usize = 1 << 20;

use crate::pg::errors::raise as refuse;

/// A column the rows carry: generated columns are computed where the row is stored.
struct Stored {
    /// Index in the table's tuple descriptor.
    index: usize,
    output: pg_sys::FmgrInfo,
}

/// Runs `COPY ... FROM` statement `copy` into distributed table `relid`; returns the
/// number of rows copied.
///
/// # Safety
/// `copy` must be a valid `CopyStmt` with `is_from`, naming `relid`; main thread, in a
/// transaction.
pub unsafe fn copy_from(
    copy: *mut pg_sys::CopyStmt,
    relid: pg_sys::Oid,
    query_string: *const std::os::raw::c_char,
) -> u64 {
    // SAFETY: catalog and COPY calls on the main thread; every buffer outlives its use.
    unsafe {
        if !(*copy).whereClause.is_null() {
            refuse(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "COPY FROM ... WHERE into a distributed table is not supported",
                "Copy into a table of this node, then INSERT ... SELECT the rows you want.",
            );
        }
        check_privileges(copy, relid);
        let (schema, name) = ddl::names(relid);
        let entry = metadata::table_entry(&schema, &name).unwrap_or_else(|| {
            pgrx::error!("table {schema}.{name} is missing from synapse.table_catalog")
        });
        let shard_count = entry.shard_count.unwrap_or(1);
        let key = entry.shard_key.unwrap_or_default();
        let map = metadata::placements(shard_count);
        let nodes = metadata::nodes();
        let me = metadata::local_node_id();
        let loopback = !pg_sys::IsTransactionBlock();

        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let mut stored = Vec::new();
        let mut names = Vec::new();
        let mut types = Vec::new();
        let mut key_index = None;
        for i in 0..natts {
            let attr = (*desc).attrs.as_ptr().add(i);
            if (*attr).attisdropped || (*attr).attgenerated != 0 {
                continue;
            }
            let attname = CStr::from_ptr((*attr).attname.data.as_ptr())
                .to_string_lossy()
                .into_owned();
            if attname == key {
                key_index = Some(i);
            }
            let mut output = pg_sys::InvalidOid;
            let mut varlena = false;
            pg_sys::getTypeOutputInfo((*attr).atttypid, &mut output, &mut varlena);
            let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info(output, &mut finfo);
            stored.push(Stored {
                index: i,
                output: finfo,
            });
            names.push(quote_ident(&attname));
            types.push((*attr).atttypid);
        }
        let key_index = key_index.unwrap_or_else(|| {
            pgrx::error!("the shard key \"{key}\" of {schema}.{name} is not a stored column")
        });
        let key_type = KeyType::of((*(*desc).attrs.as_ptr().add(key_index)).atttypid)
            .unwrap_or_else(|| {
                shard_key::unsupported((*(*desc).attrs.as_ptr().add(key_index)).atttypid)
            });
        let table_sql = ddl::qualified(&schema, &name);
        let columns = names.join(", ");
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert_sql = format!(
            "INSERT INTO {table_sql} ({columns}) VALUES ({})",
            placeholders.join(", ")
        );
        let copy_sql = format!("COPY {table_sql} ({columns}) FROM STDIN");

        // PostgreSQL's COPY reader: options, encoding, defaults of omitted columns.
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = query_string;
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            (*copy).filename,
            (*copy).is_program,
            None,
            (*copy).attlist,
            (*copy).options,
        );
        let econtext = pg_sys::CreateStandaloneExprContext();
        let row_cxt = pg_sys::AllocSetContextCreateExtended(
            pg_sys::CurrentMemoryContext,
            c"synapse COPY row".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        let mut buffers: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        let send = |node: i64, data: &mut Vec<u8>| {
            super::operations::copy_to_node(&nodes, node, &copy_sql, data)
        };
        let mut copied = 0u64;
        pg_sys::SPI_connect();
        loop {
            let old = pg_sys::MemoryContextSwitchTo(row_cxt);
            let (values_ptr, nulls_ptr) = (values.as_mut_ptr(), nulls.as_mut_ptr());
            let row = copied + 1;
            let more =
                PgTryBuilder::new(|| pg_sys::NextCopyFrom(cstate, econtext, values_ptr, nulls_ptr))
                    .catch_others(|caught| bad_row(caught, &name, row))
                    .execute();
            if !more {
                pg_sys::MemoryContextSwitchTo(old);
                break;
            }
            let key_value = (!nulls[key_index]).then_some(values[key_index]);
            let shard =
                (shard_key::hash_datum(key_type, key_value) % u64::from(shard_count)) as usize;
            let node = map.get(shard).copied().unwrap_or(-1);
            if node == me && loopback {
                crate::remote::pool::wrote_through_loopback();
            }
            if node == me && !loopback {
                let mut args: Vec<pg_sys::Datum> = stored.iter().map(|s| values[s.index]).collect();
                let arg_nulls: Vec<std::os::raw::c_char> = stored
                    .iter()
                    .map(|s| if nulls[s.index] { b'n' as _ } else { b' ' as _ })
                    .collect();
                pg_sys::MemoryContextSwitchTo(old);
                let code = guard::bypassed(|| {
                    let plan = crate::pg::plans::kept(&insert_sql, &types);
                    pg_sys::SPI_execute_plan(plan, args.as_mut_ptr(), arg_nulls.as_ptr(), false, 0)
                });
                if code < 0 {
                    pgrx::error!(
                        "synapse: inserting a copied row on this node failed (SPI code {code})"
                    );
                }
            } else {
                let out = buffers.entry(node).or_default();
                for (i, s) in stored.iter_mut().enumerate() {
                    if i > 0 {
                        out.push(b'\t');
                    }
                    if nulls[s.index] {
                        copy_text(None, out);
                    } else {
                        let text = pg_sys::OutputFunctionCall(&mut s.output, values[s.index]);
                        copy_text(Some(&CStr::from_ptr(text).to_string_lossy()), out);
                    }
                }
                out.push(b'\n');
                pg_sys::MemoryContextSwitchTo(old);
                if out.len() >= BATCH_BYTES {
                    let mut data = std::mem::take(out);
                    send(node, &mut data);
                }
            }
            pg_sys::MemoryContextReset(row_cxt);
            copied += 1;
        }
        for (node, data) in buffers.iter_mut() {
            send(*node, data);
        }
        pg_sys::SPI_finish();
        pg_sys::EndCopyFrom(cstate);
        pg_sys::FreeExprContext(econtext, true);
        pg_sys::MemoryContextDelete(row_cxt);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        copied
    }
}

/// Raises an error of the COPY reader again, naming the input row (pgrx's error boundary
/// drops the CONTEXT line in which COPY names it).
fn bad_row(caught: CaughtError, table: &str, row: u64) -> ! {
    let report = match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report,
        other => other.rethrow(),
    };
    let place = format!("COPY {table}, input row {row}.");
    let detail = match report.detail() {
        Some(d) => format!("{d}\n{place}"),
        None => place,
    };
    let mut again = ErrorReport::new(
        report.sql_error_code(),
        report.message().to_owned(),
        "synapse COPY",
    )
    .set_detail(detail);
    if let Some(hint) = report.hint() {
        again = again.set_hint(hint.to_owned());
    }
    again.report(PgLogLevel::ERROR);
    unreachable!()
}

/// What PostgreSQL's COPY checks: INSERT on the table, and the right to read server
/// files or run programs.
unsafe fn check_privileges(copy: *mut pg_sys::CopyStmt, relid: pg_sys::Oid) {
    // SAFETY: catalog lookups for the current user.
    unsafe {
        let user = pg_sys::GetUserId();
        if !(*copy).filename.is_null() {
            let (role, what) = if (*copy).is_program {
                (
                    pg_sys::ROLE_PG_EXECUTE_SERVER_PROGRAM,
                    "to COPY to or from an external program",
                )
            } else {
                (pg_sys::ROLE_PG_READ_SERVER_FILES, "to COPY from a file")
            };
            if !pg_sys::has_privs_of_role(user, pg_sys::Oid::from(role)) {
                refuse(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "must be superuser or have privileges of the {} role {what}",
                        if (*copy).is_program {
                            "pg_execute_server_program"
                        } else {
                            "pg_read_server_files"
                        }
                    ),
                    "Anyone can COPY from stdin; psql's \\copy command also works for anyone.",
                );
            }
        }
        let mode = pg_sys::pg_class_aclcheck(relid, user, pg_sys::ACL_INSERT as pg_sys::AclMode);
        if mode != pg_sys::AclResult::ACLCHECK_OK {
            pg_sys::aclcheck_error(
                mode,
                pg_sys::ObjectType::OBJECT_TABLE,
                pg_sys::get_rel_name(relid),
            );
        }
    }
}
