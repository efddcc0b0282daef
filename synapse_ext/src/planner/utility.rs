//! Utility statements on distributed and reference tables (`ProcessUtility_hook`).
//!
//! Run here alone they would change this node's shards or copy only, so:
//! - `ALTER TABLE` and `CREATE INDEX` run here, then the statement runs on every other
//!   node, under this session's `search_path` (the statement's own text: PostgreSQL has
//!   no deparser for DDL, and the text is sent unchanged);
//! - `TRUNCATE` and `DROP TABLE` run here, then on every other node as statements built
//!   from the tables' qualified names; `DROP` also removes the table from the catalog;
//! - `COPY table TO` runs as `COPY (SELECT ... FROM table) TO`, which reads every node;
//! - renaming the table or its shard key, `SET SCHEMA`, `CREATE INDEX CONCURRENTLY` and
//!   `COPY` into a reference table are refused with a clear error;
//! - `COPY table FROM` sends each row to its shard's node (`distribution::copy_from`).
//!
//! Like synapse's own operations these change every node in one transaction, committed
//! with two-phase commit (`txn::coordinator`). The COMMIT of a transaction block that
//! wrote here and on other nodes is run by `txn::coordinator::commit_statement`.

use std::ffi::CStr;
use std::os::raw::c_char;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;
use synapse_core::raft::types::Command;

use crate::distribution::{ddl, guard, metadata};
use crate::remote::pool;

static mut PREV_UTILITY: pg_sys::ProcessUtility_hook_type = None;

pub fn install() {
    // SAFETY: _PG_init, once, in the postmaster; chains the previous hook.
    unsafe {
        PREV_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

use crate::pg::errors::not_supported as refuse;

/// A distributed or reference table named in a statement.
struct Named {
    oid: pg_sys::Oid,
    schema: String,
    name: String,
    kind: String,
}

/// The catalog entry of the relation `rv` names, if it is distributed or reference.
unsafe fn named(rv: *mut pg_sys::RangeVar) -> Option<Named> {
    // SAFETY: a valid RangeVar; a catalog lookup that tolerates a missing relation.
    unsafe {
        if rv.is_null() {
            return None;
        }
        let oid = pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        if oid == pg_sys::InvalidOid {
            return None;
        }
        let (schema, name) = ddl::names(oid);
        if schema == "pg_catalog" || schema == "synapse" {
            return None;
        }
        metadata::table_entry(&schema, &name).map(|e| Named {
            oid,
            schema,
            name,
            kind: e.kind,
        })
    }
}

extern "C-unwind" {
    // PostgreSQL's own, called without pgrx's error boundary (see process_utility).
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The hook. Statements synapse leaves alone go straight on to the next hook or to
/// PostgreSQL: an error there reaches the client with its CONTEXT lines (the line of a
/// DO block, of a COPY input), which pgrx's error boundary would drop. This frame holds
/// nothing to drop, so PostgreSQL's error longjmp may cross it.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL's arguments, passed on unchanged.
    unsafe {
        if handled(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ) {
            return;
        }
        match PREV_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => standard_process_utility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

/// Runs a statement about distributed or reference tables; false for any other.
#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn handled(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) -> bool {
    let run = |pstmt: *mut pg_sys::PlannedStmt| {
        // SAFETY: PostgreSQL's arguments, passed on unchanged (or the statement replaced).
        unsafe {
            match PREV_UTILITY {
                Some(prev) => prev(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
                None => pg_sys::standard_ProcessUtility(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
            }
        }
    };
    let standard = || run(pstmt);
    // SAFETY: a valid utility statement, at top level when `context` says so.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null()
            && (*stmt).type_ == pg_sys::NodeTag::T_TransactionStmt
            && context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL
            && crate::txn::coordinator::commit_statement(stmt.cast())
        {
            return true;
        }
    }
    if !super::routing_active() {
        return false;
    }
    // SAFETY: a valid utility statement.
    let plan = unsafe { plan_utility(pstmt, query_string) };
    match plan {
        Utility::Untouched => return false,
        Utility::Replaced(other) => run(other),
        // SAFETY: the statement planned above; qc is PostgreSQL's (or NULL).
        Utility::CopyFrom(copy, relid) => unsafe {
            let rows = crate::distribution::copy_from::copy_from(copy, relid, query_string);
            if !qc.is_null() {
                pg_sys::SetQueryCompletion(qc, pg_sys::CommandTag::CMDTAG_COPY, rows);
            }
        },
        Utility::Everywhere {
            tables,
            remote,
            drop,
        } => {
            pool::allow_several_writers();
            // Here first: PostgreSQL reports a bad statement before any node is touched.
            guard::bypassed(standard);
            let nodes = metadata::nodes();
            let me = metadata::local_node_id();
            for node in nodes.iter().filter(|n| n.id != me) {
                pool::in_transaction(node, true, |c| c.exec(&remote, &[]));
            }
            if drop {
                for t in tables {
                    metadata::propose(
                        Command::RemoveTable {
                            schema_name: t.schema,
                            table_name: t.name,
                        },
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    );
                }
            }
        }
    }
    true
}

enum Utility {
    /// Not about distributed or reference tables.
    Untouched,
    /// Runs as this statement instead.
    Replaced(*mut pg_sys::PlannedStmt),
    /// `COPY FROM` into a distributed table (its oid).
    CopyFrom(*mut pg_sys::CopyStmt, pg_sys::Oid),
    /// Run here, then `remote` on every other node; `drop` removes `tables` from the
    /// catalog.
    Everywhere {
        tables: Vec<Named>,
        remote: String,
        drop: bool,
    },
}

/// `COPY table [(columns)] TO ...` of a distributed table as `COPY (SELECT columns FROM
/// table) TO ...`: the query reads every node (PostgreSQL itself copies a partitioned
/// table only through a query). The statement is built as a parse tree, never as text.
unsafe fn copy_to_as_query(
    pstmt: *mut pg_sys::PlannedStmt,
    copy: *mut pg_sys::CopyStmt,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: new raw parse tree nodes in the current memory context; the statement is
    // copied, not changed.
    unsafe {
        unsafe fn node<T>(tag: pg_sys::NodeTag) -> *mut T {
            // SAFETY: every node starts with its tag.
            unsafe {
                let n = pg_sys::palloc0(std::mem::size_of::<T>()) as *mut pg_sys::Node;
                (*n).type_ = tag;
                n.cast()
            }
        }
        let column = |fields: *mut pg_sys::List| {
            let c: *mut pg_sys::ColumnRef = node(pg_sys::NodeTag::T_ColumnRef);
            (*c).fields = fields;
            (*c).location = -1;
            let r: *mut pg_sys::ResTarget = node(pg_sys::NodeTag::T_ResTarget);
            (*r).val = c.cast();
            (*r).location = -1;
            r
        };
        let mut targets = PgList::<pg_sys::ResTarget>::new();
        let columns = PgList::<pg_sys::Node>::from_pg((*copy).attlist);
        if columns.is_empty() {
            let mut star = PgList::<pg_sys::Node>::new();
            star.push(node::<pg_sys::A_Star>(pg_sys::NodeTag::T_A_Star).cast());
            targets.push(column(star.into_pg()));
        } else {
            for name in columns.iter_ptr() {
                let mut one = PgList::<pg_sys::Node>::new();
                one.push(pg_sys::copyObjectImpl(name.cast()).cast());
                targets.push(column(one.into_pg()));
            }
        }
        let select: *mut pg_sys::SelectStmt = node(pg_sys::NodeTag::T_SelectStmt);
        (*select).targetList = targets.into_pg();
        let mut from = PgList::<pg_sys::RangeVar>::new();
        from.push(pg_sys::copyObjectImpl((*copy).relation.cast()).cast());
        (*select).fromClause = from.into_pg();
        (*select).limitOption = pg_sys::LimitOption::LIMIT_OPTION_DEFAULT;
        (*select).op = pg_sys::SetOperation::SETOP_NONE;

        let new_copy = pg_sys::copyObjectImpl(copy.cast()) as *mut pg_sys::CopyStmt;
        (*new_copy).relation = std::ptr::null_mut();
        (*new_copy).attlist = std::ptr::null_mut();
        // A bare SelectStmt, as the grammar leaves it (DoCopy wraps it).
        (*new_copy).query = select.cast();
        let new_pstmt = pg_sys::copyObjectImpl(pstmt.cast()) as *mut pg_sys::PlannedStmt;
        (*new_pstmt).utilityStmt = new_copy.cast();
        new_pstmt
    }
}

/// The text of this statement within the query string.
unsafe fn statement_text(pstmt: *mut pg_sys::PlannedStmt, query_string: *const c_char) -> String {
    // SAFETY: the query string outlives the statement; location and length index it.
    unsafe {
        let all = CStr::from_ptr(query_string).to_string_lossy();
        let start = (*pstmt).stmt_location.max(0) as usize;
        let len = (*pstmt).stmt_len as usize;
        let end = if len == 0 {
            all.len()
        } else {
            (start + len).min(all.len())
        };
        all.get(start..end).unwrap_or(&all).to_owned()
    }
}

/// The statement under this session's `search_path`, so its names mean the same there.
fn under_search_path(statement: &str) -> String {
    // SAFETY: reads a GUC's current value, main thread.
    let path = unsafe {
        CStr::from_ptr(pg_sys::GetConfigOption(
            c"search_path".as_ptr(),
            false,
            false,
        ))
    }
    .to_string_lossy()
    .into_owned();
    format!("SET LOCAL search_path TO {path};\n{statement}")
}

unsafe fn plan_utility(pstmt: *mut pg_sys::PlannedStmt, query_string: *const c_char) -> Utility {
    // SAFETY: each node type is cast to its own struct.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if stmt.is_null() {
            return Utility::Untouched;
        }
        use pg_sys::NodeTag::*;
        match (*stmt).type_ {
            T_AlterTableStmt => {
                let s = stmt as *mut pg_sys::AlterTableStmt;
                let Some(t) = named((*s).relation) else {
                    return Utility::Untouched;
                };
                let text = statement_text(pstmt, query_string);
                Utility::Everywhere {
                    tables: vec![t],
                    remote: under_search_path(&text),
                    drop: false,
                }
            }
            T_IndexStmt => {
                let s = stmt as *mut pg_sys::IndexStmt;
                let Some(t) = named((*s).relation) else {
                    return Utility::Untouched;
                };
                if (*s).concurrent {
                    refuse(
                        format!("CREATE INDEX CONCURRENTLY on distributed table \"{}\" is not supported", t.name),
                        "Create the index without CONCURRENTLY: it is built on every node in one transaction.",
                    );
                }
                let text = statement_text(pstmt, query_string);
                Utility::Everywhere {
                    tables: vec![t],
                    remote: under_search_path(&text),
                    drop: false,
                }
            }
            T_RenameStmt => {
                let s = stmt as *mut pg_sys::RenameStmt;
                let Some(t) = named((*s).relation) else {
                    return Utility::Untouched;
                };
                match (*s).renameType {
                    pg_sys::ObjectType::OBJECT_TABLE => refuse(
                        format!("renaming {} table \"{}\" is not supported", t.kind, t.name),
                        "Undistribute it (synapse.undistribute_table), rename it, and distribute it again.",
                    ),
                    pg_sys::ObjectType::OBJECT_COLUMN => {
                        let entry = metadata::table_entry(&t.schema, &t.name);
                        let old = CStr::from_ptr((*s).subname).to_string_lossy().into_owned();
                        if entry.and_then(|e| e.shard_key).as_deref() == Some(old.as_str()) {
                            refuse(
                                format!("renaming shard key column \"{old}\" of \"{}\" is not supported", t.name),
                                "The shard key is recorded by name in the cluster catalog.",
                            );
                        }
                    }
                    _ => {}
                }
                let text = statement_text(pstmt, query_string);
                Utility::Everywhere {
                    tables: vec![t],
                    remote: under_search_path(&text),
                    drop: false,
                }
            }
            T_AlterObjectSchemaStmt => {
                let s = stmt as *mut pg_sys::AlterObjectSchemaStmt;
                if let Some(t) = named((*s).relation) {
                    refuse(
                        format!(
                            "moving {} table \"{}\" to another schema is not supported",
                            t.kind, t.name
                        ),
                        "Undistribute it, move it, and distribute it again.",
                    );
                }
                Utility::Untouched
            }
            T_TruncateStmt => {
                let s = stmt as *mut pg_sys::TruncateStmt;
                let mut tables = Vec::new();
                let mut others = false;
                for rv in PgList::<pg_sys::RangeVar>::from_pg((*s).relations).iter_ptr() {
                    match named(rv) {
                        Some(t) => tables.push(t),
                        None => others = true,
                    }
                }
                if tables.is_empty() {
                    return Utility::Untouched;
                }
                if others {
                    refuse(
                        "TRUNCATE of distributed or reference tables together with other tables is not supported",
                        "Truncate the distributed and reference tables in a statement of their own.",
                    );
                }
                let names: Vec<String> = tables
                    .iter()
                    .map(|t| ddl::qualified(&t.schema, &t.name))
                    .collect();
                let cascade = if (*s).behavior == pg_sys::DropBehavior::DROP_CASCADE {
                    " CASCADE"
                } else {
                    ""
                };
                Utility::Everywhere {
                    remote: format!("TRUNCATE {}{cascade}", names.join(", ")),
                    tables,
                    drop: false,
                }
            }
            T_DropStmt => {
                let s = stmt as *mut pg_sys::DropStmt;
                if (*s).removeType != pg_sys::ObjectType::OBJECT_TABLE {
                    return Utility::Untouched;
                }
                let mut tables = Vec::new();
                for names in PgList::<pg_sys::List>::from_pg((*s).objects).iter_ptr() {
                    let rv = pg_sys::makeRangeVarFromNameList(names);
                    if let Some(t) = named(rv) {
                        tables.push(t);
                    }
                }
                if tables.is_empty() {
                    return Utility::Untouched;
                }
                let cascade = if (*s).behavior == pg_sys::DropBehavior::DROP_CASCADE {
                    " CASCADE"
                } else {
                    ""
                };
                let remote = tables
                    .iter()
                    .map(|t| {
                        format!(
                            "DROP TABLE IF EXISTS {}{cascade}",
                            ddl::qualified(&t.schema, &t.name)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(";\n");
                Utility::Everywhere {
                    tables,
                    remote,
                    drop: true,
                }
            }
            T_CopyStmt => {
                let s = stmt as *mut pg_sys::CopyStmt;
                if (*s).is_from {
                    if let Some(t) = named((*s).relation) {
                        if t.kind == "distributed" {
                            return Utility::CopyFrom(s, t.oid);
                        }
                        refuse(
                            format!(
                                "COPY into {} table \"{}\" is not supported yet",
                                t.kind, t.name
                            ),
                            "Writing a reference table on every node is not supported yet.",
                        );
                    }
                } else if let Some(t) = named((*s).relation) {
                    if t.kind == "distributed" {
                        return Utility::Replaced(copy_to_as_query(pstmt, s));
                    }
                }
                Utility::Untouched
            }
            _ => Utility::Untouched,
        }
    }
}
