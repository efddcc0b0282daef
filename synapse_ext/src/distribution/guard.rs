//! Until statements over distributed tables are routed to the nodes holding their shards,
//! a statement planned on one node would see only that node's shards: a wrong answer. The
//! planner hook therefore refuses any statement that reads or writes a distributed table,
//! except fragments (`synapse.fragment`, set on connections between nodes, which act on
//! this node's shards by definition) and synapse's own operations.
//!
//! A distributed table is recognised physically, without a catalog query: it is a
//! partitioned table whose partition key uses `synapse.partition_hash`.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::gucs;

thread_local! {
    /// Set while synapse itself works on distributed tables (moving rows).
    static BYPASS: Cell<u32> = const { Cell::new(0) };
}

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

/// Installs the planner hook (from `_PG_init`).
pub fn install() {
    // SAFETY: _PG_init runs once in the postmaster, before any query; we chain the
    // previous hook.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
    }
}

/// Whether synapse's own work is running (see [`bypassed`]).
pub fn is_bypassed() -> bool {
    BYPASS.with(|b| b.get()) > 0
}

/// Runs `f` with the guard off (synapse's own reads and writes of shards).
pub fn bypassed<R>(f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            BYPASS.with(|b| b.set(b.get() - 1));
        }
    }
    BYPASS.with(|b| b.set(b.get() + 1));
    let _restore = Restore;
    f()
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::os::raw::c_char,
    cursor_options: std::os::raw::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: called by PostgreSQL with valid arguments on the main thread.
    let stmt = unsafe {
        match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    };
    if BYPASS.with(|b| b.get()) > 0 || gucs::fragment() {
        return stmt;
    }
    // The plan's flattened range table lists every relation it scans or modifies
    // (relationOids would also list regclass constants, which read nothing).
    // SAFETY: a list of RangeTblEntry pointers owned by the plan.
    let rtable = unsafe { pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*stmt).rtable) };
    for rte in rtable.iter_ptr() {
        // SAFETY: each element is a valid RangeTblEntry.
        let (kind, oid) = unsafe { ((*rte).rtekind, (*rte).relid) };
        if kind == pg_sys::RTEKind::RTE_RELATION && is_distributed(oid) {
            // SAFETY: a relation the plan depends on and has locked; palloc'd name.
            let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_rel_name(oid)) }
                .to_string_lossy()
                .into_owned();
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("statements on distributed table \"{name}\" are not routed to other nodes yet"),
                "synapse",
            )
            .set_detail("This node holds only some of its shards, so running the statement here alone would give a partial answer.")
            .set_hint("Query routing arrives with the distributed tables issue; until then read each node's shards there with SET synapse.fragment = on (superuser).")
            .report(PgLogLevel::ERROR);
        }
    }
    stmt
}

/// Whether `oid` is a distributed table: hash-partitioned on one column with an operator
/// class of schema `synapse`.
pub fn is_distributed(oid: pg_sys::Oid) -> bool {
    /// `pg_partitioned_table.partclass`.
    const ANUM_PARTCLASS: pg_sys::AttrNumber = 6;
    // SAFETY: syscache lookups by oid on the main thread; each tuple is released after
    // its fields are read.
    unsafe {
        if pg_sys::get_rel_relkind(oid) != pg_sys::RELKIND_PARTITIONED_TABLE as std::os::raw::c_char
        {
            return false;
        }
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::PARTRELID as i32, oid.into());
        if tuple.is_null() {
            return false;
        }
        let mut isnull = false;
        let datum = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::PARTRELID as i32,
            tuple,
            ANUM_PARTCLASS,
            &mut isnull,
        );
        let opclass = if isnull {
            None
        } else {
            let classes = datum.cast_mut_ptr::<pg_sys::oidvector>();
            ((*classes).dim1 == 1).then(|| *(*classes).values.as_ptr())
        };
        pg_sys::ReleaseSysCache(tuple);
        let Some(opclass) = opclass else {
            return false;
        };
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::CLAOID as i32, opclass.into());
        if tuple.is_null() {
            return false;
        }
        let namespace =
            (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_opclass>(tuple)).opcnamespace;
        pg_sys::ReleaseSysCache(tuple);
        namespace == synapse_namespace()
    }
}

/// The oid of schema `synapse` (looked up once per backend; it never changes while the
/// extension exists).
fn synapse_namespace() -> pg_sys::Oid {
    thread_local! {
        static NAMESPACE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    }
    NAMESPACE.with(|ns| {
        if ns.get() == pg_sys::InvalidOid {
            // SAFETY: a syscache lookup by name on the main thread.
            ns.set(unsafe { pg_sys::get_namespace_oid(c"synapse".as_ptr(), true) });
        }
        ns.get()
    })
}
