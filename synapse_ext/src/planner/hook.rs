//! The planner hook: plans statements over distributed tables, then checks the plan.
//!
//! A statement whose distributed tables are pinned to one node runs whole there
//! ([`super::router`]). Other writes to distributed or reference tables run on every
//! node concerned ([`super::modify`]); other reads are split between the nodes and this one
//! when that cannot change their answer ([`super::pushdown`]), or else planned by
//! PostgreSQL with each distributed table replaced by a `SynapseScan` ([`super::pullup`]).
//! Partitionwise joins and aggregates are off while such a statement is planned (they
//! would scan a distributed table's local partitions directly), and the finished plan is
//! checked: a scan of a distributed table's partition anywhere outside a `SynapseScan`
//! would give a partial answer, so it is an ERROR.

use std::os::raw::{c_char, c_int};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use super::router::{self, Route};
use crate::distribution::guard::{self, is_distributed};

extern "C-unwind" {
    // catalog/partition.h, not in pgrx's bindings.
    fn get_partition_parent(relid: pg_sys::Oid, even_if_detached: bool) -> pg_sys::Oid;
}

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

pub fn install() {
    // SAFETY: _PG_init, once, in the postmaster; chains the previous hooks.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
    }
}

/// After a write spanning nodes wrote this node's shards through a connection of its
/// own (outside a transaction block, see `executor::modify_scan`), this backend does not
/// see those rows: any later plan touching distributed or reference tables in the same
/// transaction is refused rather than answer without them.
#[pg_guard]
unsafe extern "C-unwind" fn executor_start(desc: *mut pg_sys::QueryDesc, eflags: c_int) {
    // SAFETY: PostgreSQL's arguments; the plan's range table is valid.
    unsafe {
        if crate::remote::pool::loopback_written() && super::routing_active() {
            for rte in
                PgList::<pg_sys::RangeTblEntry>::from_pg((*(*desc).plannedstmt).rtable).iter_ptr()
            {
                if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION
                    && (holds_shards((*rte).relid)
                        || router::metadata_kind((*rte).relid).as_deref() == Some("reference"))
                {
                    error(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!(
                            "\"{}\" cannot be used after a statement outside a transaction block wrote on several nodes in the same transaction",
                            rel_name((*rte).relid)
                        ),
                        "Run the statements in a transaction block (BEGIN ... COMMIT).",
                    );
                }
            }
        }
        match PREV_EXECUTOR_START {
            Some(prev) => prev(desc, eflags),
            None => pg_sys::standard_ExecutorStart(desc, eflags),
        }
    }
}

/// Whether `relid` is a distributed table or one of its shards' partitions.
fn holds_shards(relid: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups by oid.
    is_distributed(relid)
        || unsafe {
            pg_sys::get_rel_relispartition(relid)
                && is_distributed(get_partition_parent(relid, true))
        }
}

use crate::pg::errors::raise as error;

fn rel_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup by oid; the name is palloc'd.
    let name = unsafe { pg_sys::get_rel_name(oid) };
    if name.is_null() {
        return oid.to_u32().to_string();
    }
    // SAFETY: a valid C string.
    unsafe { std::ffi::CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const c_char,
    cursor_options: c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    let standard = |parse, query_string, cursor_options, bound_params| {
        // SAFETY: PostgreSQL's arguments, passed on unchanged.
        unsafe {
            match PREV_PLANNER {
                Some(prev) => prev(parse, query_string, cursor_options, bound_params),
                None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
            }
        }
    };
    if !super::routing_active() {
        // A lookup by key in one shard's partition: the key's index, not a sequential
        // scan. A shard holds few pages, where PostgreSQL's costs tie a sequential scan
        // with the index, but the scan reads every row of the shard.
        let standard = |parse, query_string, cursor_options, bound_params| {
            // SAFETY: a valid rewritten Query.
            if unsafe { key_lookup_in_shard(parse) } {
                without_seqscan(|| standard(parse, query_string, cursor_options, bound_params))
            } else {
                standard(parse, query_string, cursor_options, bound_params)
            }
        };
        // A statement another node sent for one shard here: planned on its partition.
        if crate::gucs::fragment() && !guard::is_bypassed() {
            // SAFETY: a valid rewritten Query and the planner's parameters.
            unsafe {
                match router::one_partition(parse, bound_params) {
                    Some(router::OnePartition::Now(on_partition)) => {
                        return standard(on_partition, query_string, cursor_options, bound_params)
                    }
                    // A generic plan: a router plan, which runs the statement on the
                    // partition once the value is known.
                    Some(router::OnePartition::Later) => {
                        if let (Route::Single { pins, node: None }, relations) =
                            router::route(parse, bound_params)
                        {
                            return router::plan(parse, pins, None, relations);
                        }
                    }
                    None => {}
                }
            }
        }
        return standard(parse, query_string, cursor_options, bound_params);
    }
    // SAFETY: a valid rewritten Query and the planner's parameters.
    let (route, relations) = unsafe { router::route(parse, bound_params) };
    match route {
        // Every shard the statement needs is here: PostgreSQL's own plan over them.
        Route::Local => {
            return guard::bypassed(|| standard(parse, query_string, cursor_options, bound_params))
        }
        // SAFETY: the Query the router accepted.
        Route::Single { pins, node } => unsafe {
            // The rows of a generic plan's INSERT may turn out to be on several nodes.
            let relations = if node.is_none()
                && pins.len() > 1
                && (*parse).commandType == pg_sys::CmdType::CMD_INSERT
            {
                match spanning_write(parse, relations, "its rows may be on several nodes") {
                    Ok(stmt) => return stmt,
                    Err(relations) => relations,
                }
            } else {
                relations
            };
            return router::plan(parse, pins, node, relations);
        },
        // SAFETY: a valid Query.
        Route::Spread(why) => unsafe {
            refuse_row_locks(parse);
            let writes_shards = (*parse).hasModifyingCTE
                && PgList::<pg_sys::CommonTableExpr>::from_pg((*parse).cteList)
                    .iter_ptr()
                    .any(|cte| {
                        let q = (*cte).ctequery as *mut pg_sys::Query;
                        (*q).type_ == pg_sys::NodeTag::T_Query && super::modify::target(q).is_some()
                    });
            if writes_shards {
                error(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("a WITH clause writing a distributed or reference table is not supported in a statement spanning nodes ({why})"),
                    "Run the write as a statement of its own, in a transaction block with the rest.",
                );
            }
            // A write whose rows are on several nodes.
            if let Ok(stmt) = spanning_write(parse, relations, &why) {
                return stmt;
            }
            // Every node answers for its shards, this node combines the answers.
            if let Some(master) = super::pushdown::split(parse) {
                let stmt = super::pushdown::planning_split(master, || {
                    standard(master, query_string, cursor_options, bound_params)
                });
                check_plan(stmt);
                return stmt;
            }
        },
        // A write to a reference table (every node's copy). Writes to tables of this node
        // only are the common case here: no catalog lookup for them while no reference
        // table exists.
        Route::NotDistributed => unsafe {
            if super::modify::writes(parse) && crate::distribution::metadata::any_reference_table()
            {
                if let Ok(stmt) = spanning_write(parse, relations, "it writes a reference table") {
                    return stmt;
                }
            }
        },
    }
    // SAFETY: the planner's own settings, restored below (also on error, by the GUC
    // machinery at transaction abort... these are plain globals, so restore explicitly).
    let (join, agg) = unsafe {
        (
            pg_sys::enable_partitionwise_join,
            pg_sys::enable_partitionwise_aggregate,
        )
    };
    struct Restore(bool, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the values saved above, main thread.
            unsafe {
                pg_sys::enable_partitionwise_join = self.0;
                pg_sys::enable_partitionwise_aggregate = self.1;
            }
        }
    }
    let restore = Restore(join, agg);
    // SAFETY: plain globals read by the planner, main thread.
    unsafe {
        pg_sys::enable_partitionwise_join = false;
        pg_sys::enable_partitionwise_aggregate = false;
    }
    let stmt = standard(parse, query_string, cursor_options, bound_params);
    drop(restore);
    // SAFETY: a finished plan.
    unsafe { check_plan(stmt) };
    stmt
}

/// Runs `plan` with sequential scans disabled (restored afterwards, also on error).
fn without_seqscan<R>(plan: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the value saved below, main thread.
            unsafe { pg_sys::enable_seqscan = self.0 };
        }
    }
    // SAFETY: a plain global read by the planner, main thread.
    let _restore = Restore(unsafe { pg_sys::enable_seqscan });
    // SAFETY: as above.
    unsafe { pg_sys::enable_seqscan = false };
    plan()
}

/// Whether `parse` reads or writes one shard's partition only, by its shard key
/// (`key = value` among its top-level conditions).
unsafe fn key_lookup_in_shard(parse: *mut pg_sys::Query) -> bool {
    // SAFETY: a valid Query; catalog lookups by oid.
    unsafe {
        let q = &*parse;
        if !q.utilityStmt.is_null()
            || q.hasSubLinks
            || !q.cteList.is_null()
            || !q.setOperations.is_null()
            || q.jointree.is_null()
            || !matches!(
                q.commandType,
                pg_sys::CmdType::CMD_SELECT
                    | pg_sys::CmdType::CMD_UPDATE
                    | pg_sys::CmdType::CMD_DELETE
            )
        {
            return false;
        }
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable);
        if rtable.len() != 1 {
            return false;
        }
        let Some(rte) = rtable.get_ptr(0) else {
            return false;
        };
        let relid = (*rte).relid;
        if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION || !pg_sys::get_rel_relispartition(relid)
        {
            return false;
        }
        let parent = get_partition_parent(relid, true);
        let Some(opfamily) = guard::key_opfamily(parent) else {
            return false;
        };
        let (schema, name) = crate::distribution::ddl::names(parent);
        let Some(key) = crate::distribution::metadata::table_entry(&schema, &name)
            .and_then(|e| e.shard_key)
            .and_then(|k| std::ffi::CString::new(k).ok())
        else {
            return false;
        };
        let key_attno = pg_sys::get_attnum(relid, key.as_ptr());
        crate::distribution::pins::and_clauses((*q.jointree).quals)
            .into_iter()
            .any(|c| crate::distribution::pins::key_value(c, 1, key_attno, opfamily).is_some())
    }
}

/// The plan of a write to a distributed or reference table that spans nodes (`why`: why
/// it is not on one node), or `relations` back when `parse` writes no such table.
///
/// # Safety
/// `parse` must be a valid rewritten Query; `relations` its relations.
unsafe fn spanning_write(
    parse: *mut pg_sys::Query,
    relations: Vec<*mut pg_sys::RangeTblEntry>,
    why: &str,
) -> Result<*mut pg_sys::PlannedStmt, Vec<*mut pg_sys::RangeTblEntry>> {
    // SAFETY: as documented.
    match unsafe { super::modify::target(parse) } {
        // SAFETY: a valid Query writing `table`, and its relations.
        Some((table, kind)) => {
            Ok(unsafe { super::modify::plan(parse, relations, table, &kind, why) })
        }
        None => Err(relations),
    }
}

/// Row locks (`FOR UPDATE/SHARE`) on a distributed table spanning nodes are not
/// supported.
unsafe fn refuse_row_locks(parse: *mut pg_sys::Query) {
    // SAFETY: a valid Query.
    unsafe {
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*parse).rtable);
        for mark in PgList::<pg_sys::RowMarkClause>::from_pg((*parse).rowMarks).iter_ptr() {
            if let Some(rte) = rtable.get_ptr((*mark).rti as usize - 1) {
                if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION && is_distributed((*rte).relid) {
                    error(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!(
                            "SELECT ... FOR UPDATE/SHARE on distributed table \"{}\" is not supported",
                            rel_name((*rte).relid)
                        ),
                        "Pin the rows to one node with the shard key (key = value): such statements run whole on that node.",
                    );
                }
            }
        }
    }
}

/// Errors if the plan scans a distributed table or one of its partitions other than
/// through a `SynapseScan`, or writes one.
unsafe fn check_plan(stmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: a finished plan; the range table is flattened.
    unsafe {
        let rtable = (*stmt).rtable;
        walk_plan((*stmt).planTree, rtable);
        for sub in PgList::<pg_sys::Plan>::from_pg((*stmt).subplans).iter_ptr() {
            walk_plan(sub, rtable);
        }
        for rti in PgList::<i32>::from_pg((*stmt).resultRelations).iter_int() {
            check_relation(rtable, rti as u32, "written");
        }
    }
}

unsafe fn check_relation(rtable: *mut pg_sys::List, rti: u32, how: &str) {
    // SAFETY: `rti` indexes the plan's range table.
    unsafe {
        let Some(rte) = PgList::<pg_sys::RangeTblEntry>::from_pg(rtable).get_ptr(rti as usize - 1)
        else {
            return;
        };
        if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
            return;
        }
        let relid = (*rte).relid;
        if holds_shards(relid) {
            error(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "this plan would have {how} only this node's shards of \"{}\"",
                    rel_name(relid)
                ),
                "This form of statement is not routed yet; please report it.",
            );
        }
    }
}

unsafe fn walk_plan(plan: *mut pg_sys::Plan, rtable: *mut pg_sys::List) {
    if plan.is_null() {
        return;
    }
    // SAFETY: a valid plan tree; each node type is cast to its own struct.
    unsafe {
        use pg_sys::NodeTag::*;
        let tag = (*plan).type_;
        match tag {
            T_SeqScan | T_SampleScan | T_IndexScan | T_IndexOnlyScan | T_BitmapHeapScan
            | T_TidScan | T_TidRangeScan => {
                check_relation(rtable, (*(plan as *mut pg_sys::Scan)).scanrelid, "read");
            }
            T_Append => {
                for p in
                    PgList::<pg_sys::Plan>::from_pg((*(plan as *mut pg_sys::Append)).appendplans)
                        .iter_ptr()
                {
                    walk_plan(p, rtable);
                }
            }
            T_MergeAppend => {
                for p in PgList::<pg_sys::Plan>::from_pg(
                    (*(plan as *mut pg_sys::MergeAppend)).mergeplans,
                )
                .iter_ptr()
                {
                    walk_plan(p, rtable);
                }
            }
            T_BitmapAnd => {
                for p in
                    PgList::<pg_sys::Plan>::from_pg((*(plan as *mut pg_sys::BitmapAnd)).bitmapplans)
                        .iter_ptr()
                {
                    walk_plan(p, rtable);
                }
            }
            T_BitmapOr => {
                for p in
                    PgList::<pg_sys::Plan>::from_pg((*(plan as *mut pg_sys::BitmapOr)).bitmapplans)
                        .iter_ptr()
                {
                    walk_plan(p, rtable);
                }
            }
            T_SubqueryScan => walk_plan((*(plan as *mut pg_sys::SubqueryScan)).subplan, rtable),
            T_CustomScan => {
                for p in PgList::<pg_sys::Plan>::from_pg(
                    (*(plan as *mut pg_sys::CustomScan)).custom_plans,
                )
                .iter_ptr()
                {
                    walk_plan(p, rtable);
                }
            }
            _ => {}
        }
        walk_plan((*plan).lefttree, rtable);
        walk_plan((*plan).righttree, rtable);
    }
}
