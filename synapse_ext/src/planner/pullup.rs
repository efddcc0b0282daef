//! The pull-up level: each distributed table in a statement becomes a `SynapseScan` that
//! fetches the table's rows — only the columns the statement needs, filtered by the
//! clauses every node can evaluate — from every node holding its shards (this node
//! included); PostgreSQL's own planner does everything above the scan (joins,
//! aggregates, sorting, windows, set operations). Every statement over distributed
//! tables is thus answered exactly as one server would answer it, if not fastest.
//!
//! Installed as `set_rel_pathlist_hook`: for the base relation of a distributed table,
//! the paths over its local partitions are replaced by the one custom path.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use super::shippable;
use crate::distribution::ddl;
use crate::distribution::guard;

static mut PREV_SET_REL_PATHLIST: pg_sys::set_rel_pathlist_hook_type = None;

static PATH_METHODS: PathMethods = PathMethods(pg_sys::CustomPathMethods {
    CustomName: c"SynapseScan".as_ptr(),
    PlanCustomPath: Some(plan_custom_path),
    ReparameterizeCustomPathByChild: None,
});

/// `CustomPathMethods` holds raw pointers; it is immutable and lives forever.
pub struct PathMethods(pub pg_sys::CustomPathMethods);
// SAFETY: never mutated; PostgreSQL backends are single-threaded.
unsafe impl Sync for PathMethods {}

pub fn install() {
    // SAFETY: _PG_init, once, in the postmaster; chains the previous hook.
    unsafe {
        PREV_SET_REL_PATHLIST = pg_sys::set_rel_pathlist_hook;
        pg_sys::set_rel_pathlist_hook = Some(set_rel_pathlist);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn set_rel_pathlist(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
    rte: *mut pg_sys::RangeTblEntry,
) {
    // SAFETY: called by the planner with valid pointers on the main thread.
    unsafe {
        if let Some(prev) = PREV_SET_REL_PATHLIST {
            prev(root, rel, rti, rte);
        }
        if super::routing_active()
            && (*rel).reloptkind == pg_sys::RelOptKind::RELOPT_BASEREL
            && super::pushdown::is_fragment_rows(rte)
        {
            super::pushdown::set_fragment_path(rel);
            return;
        }
        if !super::routing_active()
            // A base relation, or a member of a flattened UNION ALL.
            || !matches!(
                (*rel).reloptkind,
                pg_sys::RelOptKind::RELOPT_BASEREL | pg_sys::RelOptKind::RELOPT_OTHER_MEMBER_REL
            )
            || (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION
            || !guard::is_distributed((*rte).relid)
        {
            return;
        }
        if !(*rte).tablesample.is_null() {
            not_supported("TABLESAMPLE on a distributed table");
        }
        (*rel).rows = estimated_rows(rel);
        let path = only_path(rel, &PATH_METHODS.0);
        // From here on the relation is one scan, not this node's partitions: no later
        // step may rebuild an Append over them (apply_scanjoin_target_to_paths does for
        // partitioned relations) or join them partition by partition.
        (*rel).part_scheme = std::ptr::null_mut();
        (*rel).nparts = 0;
        (*rel).boundinfo = std::ptr::null_mut();
        (*rel).part_rels = std::ptr::null_mut();
        (*rel).live_parts = std::ptr::null_mut();
        pg_sys::add_path(rel, path.cast());
    }
}

/// A custom path for all of `rel`'s rows (`rel.rows`), which replaces every path it had;
/// the caller adds it.
///
/// # Safety
/// `rel` must be a valid relation being planned.
pub unsafe fn only_path(
    rel: *mut pg_sys::RelOptInfo,
    methods: &'static pg_sys::CustomPathMethods,
) -> *mut pg_sys::CustomPath {
    // SAFETY: a valid relation; the path is palloc'd in the planner's context.
    unsafe {
        let path =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomPath>()) as *mut pg_sys::CustomPath;
        (*path).path.type_ = pg_sys::NodeTag::T_CustomPath;
        (*path).path.pathtype = pg_sys::NodeTag::T_CustomScan;
        (*path).path.parent = rel;
        (*path).path.pathtarget = (*rel).reltarget;
        (*path).path.rows = (*rel).rows;
        (*path).path.startup_cost = 100.0;
        (*path).path.total_cost = 100.0 + (*rel).rows * (pg_sys::cpu_tuple_cost * 4.0);
        (*path).methods = methods;
        (*rel).pathlist = std::ptr::null_mut();
        (*rel).partial_pathlist = std::ptr::null_mut();
        path
    }
}

/// Local statistics cover this node's shards only: scale them to the whole table.
unsafe fn estimated_rows(rel: *mut pg_sys::RelOptInfo) -> f64 {
    // SAFETY: a valid base relation of a partitioned table.
    unsafe {
        let local = (*rel).nparts.max(1) as f64;
        let all = if (*rel).boundinfo.is_null() {
            local
        } else {
            (*(*rel).boundinfo).nindexes.max(1) as f64
        };
        ((*rel).rows.max(10.0) * all / local).max(1.0)
    }
}

fn not_supported(what: &str) -> ! {
    crate::pg::errors::not_supported(format!("{what} is not supported"), "")
}

#[pg_guard]
unsafe extern "C-unwind" fn plan_custom_path(
    _root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    _best_path: *mut pg_sys::CustomPath,
    tlist: *mut pg_sys::List,
    clauses: *mut pg_sys::List,
    _custom_plans: *mut pg_sys::List,
) -> *mut pg_sys::Plan {
    // SAFETY: called by create_plan with valid pointers; every node is palloc'd in the
    // planner's memory context.
    unsafe {
        let relid = (*rel).relid;
        let rte = *(*_root).simple_rte_array.add(relid as usize);
        let table = (*rte).relid;
        let (schema, name) = ddl::names(table);

        // Columns the statement needs: the target list's and the clauses'.
        let mut attrs: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        pg_sys::pull_varattnos(tlist.cast(), relid, &mut attrs);
        let quals = pg_sys::extract_actual_clauses(clauses, false);
        pg_sys::pull_varattnos(quals.cast(), relid, &mut attrs);
        let offset = pg_sys::FirstLowInvalidHeapAttributeNumber;
        let mut needed = PgList::<pg_sys::Node>::new();
        let mut whole_row = false;
        let mut member = -1;
        loop {
            member = pg_sys::bms_next_member(attrs, member);
            if member < 0 {
                break;
            }
            let attno = member + offset;
            if attno < 0 {
                not_supported("reading system columns of a distributed table");
            }
            if attno == 0 {
                whole_row = true;
            } else {
                needed.push(pg_sys::makeInteger(attno).cast());
            }
        }
        if whole_row {
            needed = PgList::new();
            // Dropped columns are skipped at run time.
            for attno in 1..=(*rel).max_attr as i32 {
                needed.push(pg_sys::makeInteger(attno).cast());
            }
        }

        // Clauses every node can evaluate travel with the remote SQL.
        let mut shipped = PgList::<pg_sys::Node>::new();
        let mut max_param = 0;
        for qual in PgList::<pg_sys::Node>::from_pg(quals).iter_ptr() {
            if shippable::is_shippable(qual, relid, &mut max_param) {
                shipped.push(qual);
            }
        }

        let cscan =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomScan>()) as *mut pg_sys::CustomScan;
        (*cscan).scan.plan.type_ = pg_sys::NodeTag::T_CustomScan;
        (*cscan).scan.plan.targetlist = tlist;
        (*cscan).scan.plan.qual = quals;
        (*cscan).scan.scanrelid = relid;
        (*cscan).custom_exprs = shipped.into_pg();
        let mut private = PgList::<pg_sys::Node>::new();
        private.push(pg_sys::makeString(pstrdup("pull-up")).cast());
        private.push(pg_sys::makeString(pstrdup(&schema)).cast());
        private.push(pg_sys::makeString(pstrdup(&name)).cast());
        private.push(needed.into_pg().cast());
        // The highest parameter the shipped clauses use: the parameters sent with them.
        private.push(pg_sys::makeInteger(max_param).cast());
        (*cscan).custom_private = private.into_pg();
        (*cscan).methods = &crate::executor::remote_scan::SCAN_METHODS.0;
        cscan.cast()
    }
}

/// A palloc'd copy of `s`.
pub fn pstrdup(s: &str) -> *mut std::os::raw::c_char {
    let c = CString::new(s).expect("no NUL in identifiers");
    // SAFETY: pstrdup copies the C string into the current memory context.
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}
