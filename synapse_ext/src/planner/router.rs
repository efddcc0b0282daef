//! The local and router levels: a statement whose distributed tables are each pinned to
//! one shard (`key = value` in its WHERE clause, or the key values of an INSERT), all on
//! one node, runs whole on that node. On this node PostgreSQL plans it as usual (its
//! shards are here); on another node it is shipped whole, deparsed by PostgreSQL
//! (`pg_get_querydef`, names schema-qualified) with its parameters, by a
//! `SynapseRouter` scan. Parameters unknown at planning (generic plans) are resolved at
//! run time; a statement over one table then runs on its shard's partition (here through
//! a kept SPI plan, and on the node it is sent to, see [`one_partition`]).
//!
//! A statement qualifies only if everything it reads exists alike on every node:
//! distributed tables, reference tables, and built-in functions, operators and
//! aggregates. Anything else is left to the pushdown or pull-up levels (reads) or
//! refused (writes).

use std::ffi::{c_void, CStr};

use pgrx::pg_sys;
use pgrx::PgList;

use crate::distribution::{guard, metadata, pins};

extern "C-unwind" {
    // Not in pgrx's bindings (the walker argument has no prototype in PostgreSQL 15).
    pub(crate) fn query_tree_walker(
        query: *mut pg_sys::Query,
        walker: unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> bool,
        context: *mut c_void,
        flags: i32,
    ) -> bool;
    pub(crate) fn expression_tree_walker(
        node: *mut pg_sys::Node,
        walker: unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> bool,
        context: *mut c_void,
    ) -> bool;
}

/// A shard key value the statement pins: the table's shard count and the value's node.
pub struct Pin {
    pub shard_count: u32,
    pub value: *mut pg_sys::Node,
}

/// How a statement over distributed tables is routed.
pub enum Route {
    /// It reads no distributed table.
    NotDistributed,
    /// Not on one node; the reason, for errors about writes.
    Spread(String),
    /// Every pinned shard is on this node: PostgreSQL's own plan.
    Local,
    /// One node: `node` when known at planning, else from the pins at run time.
    Single { pins: Vec<Pin>, node: Option<i64> },
}

#[derive(Default)]
struct Walk {
    distributed: bool,
    /// Why the statement cannot run whole on one node.
    spread: Option<String>,
    pins: Vec<Pin>,
    /// Every relation the statement reads or writes, for permission checks and locks.
    relations: Vec<*mut pg_sys::RangeTblEntry>,
    /// Relations other than distributed tables, with whether the statement writes them:
    /// classified only if the statement reads a distributed table.
    others: Vec<(pg_sys::Oid, bool)>,
}

impl Walk {
    fn spread(&mut self, why: String) {
        self.spread.get_or_insert(why);
    }
}

fn builtin(oid: pg_sys::Oid) -> bool {
    oid.to_u32() < 16384
}

fn rel_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup by oid.
    let p = unsafe { pg_sys::get_rel_name(oid) };
    if p.is_null() {
        return oid.to_u32().to_string();
    }
    // SAFETY: a valid C string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Decides the route of `parse` (parameters `params` when known at planning).
///
/// # Safety
/// `parse` must be a valid rewritten Query.
pub unsafe fn route(
    parse: *mut pg_sys::Query,
    params: pg_sys::ParamListInfo,
) -> (Route, Vec<*mut pg_sys::RangeTblEntry>) {
    let mut walk = Walk::default();
    // SAFETY: a valid Query.
    unsafe { visit_query(parse, &mut walk) };
    let relations = std::mem::take(&mut walk.relations);
    if !walk.distributed {
        return (Route::NotDistributed, relations);
    }
    for (relid, written) in std::mem::take(&mut walk.others) {
        if metadata_kind(relid).as_deref() == Some("reference") {
            if written {
                walk.spread(format!(
                    "it writes reference table \"{}\" (a copy on every node)",
                    rel_name(relid)
                ));
            }
        } else {
            walk.spread(format!(
                "\"{}\" is a table of this node only",
                rel_name(relid)
            ));
        }
    }
    if let Some(why) = walk.spread {
        return (Route::Spread(why), relations);
    }
    // Resolve the pins known now.
    let mut nodes = Vec::new();
    let mut unknown = false;
    for pin in &walk.pins {
        let map = metadata::placements(pin.shard_count);
        // SAFETY: a value node of the statement; the planner's parameters.
        match unsafe { pins::shard_of_value(pin.value, params, pin.shard_count) } {
            Some(shard) => nodes.push(map.get(shard as usize).copied().unwrap_or(-1)),
            None => unknown = true,
        }
    }
    nodes.sort();
    nodes.dedup();
    if nodes.len() > 1 {
        return (
            Route::Spread("its shard key values are on several nodes".into()),
            relations,
        );
    }
    if !unknown {
        if let Some(node) = nodes.first().copied() {
            if node == metadata::local_node_id() {
                return (Route::Local, relations);
            }
            return (
                Route::Single {
                    pins: walk.pins,
                    node: Some(node),
                },
                relations,
            );
        }
    }
    (
        Route::Single {
            pins: walk.pins,
            node: None,
        },
        relations,
    )
}

unsafe fn visit_query(q: *mut pg_sys::Query, walk: &mut Walk) {
    // SAFETY: a valid Query and its range table.
    unsafe {
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
        let quals = if (*q).jointree.is_null() {
            vec![]
        } else {
            pins::and_clauses((*(*q).jointree).quals)
        };
        // ON CONFLICT's EXCLUDED is the row being inserted, not a read of the table.
        let excluded = if (*q).onConflict.is_null() {
            0
        } else {
            (*(*q).onConflict).exclRelIndex as u32
        };
        for (i, rte) in rtable.iter_ptr().enumerate() {
            let varno = i as u32 + 1;
            if varno == excluded {
                continue;
            }
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_RELATION => {
                    walk.relations.push(rte);
                    visit_relation(q, rte, varno, &quals, walk);
                }
                pg_sys::RTEKind::RTE_TABLEFUNC | pg_sys::RTEKind::RTE_NAMEDTUPLESTORE => {
                    walk.spread("it reads a table function or transition table".into());
                }
                _ => {}
            }
        }
        query_tree_walker(q, walker, (walk as *mut Walk).cast(), 0);
    }
}

unsafe fn visit_relation(
    q: *mut pg_sys::Query,
    rte: *mut pg_sys::RangeTblEntry,
    varno: u32,
    quals: &[*mut pg_sys::Node],
    walk: &mut Walk,
) {
    // SAFETY: valid Query and range table entry.
    unsafe {
        let relid = (*rte).relid;
        if guard::is_distributed(relid) {
            walk.distributed = true;
            let (schema, name) = crate::distribution::ddl::names(relid);
            let Some(entry) = metadata::table_entry(&schema, &name) else {
                walk.spread(format!("\"{name}\" is missing from the catalog"));
                return;
            };
            let shard_count = entry.shard_count.unwrap_or(1);
            let key =
                std::ffi::CString::new(entry.shard_key.unwrap_or_default()).unwrap_or_default();
            let key_attno = pg_sys::get_attnum(relid, key.as_ptr());
            let Some(opfamily) = guard::key_opfamily(relid) else {
                return;
            };
            let before = walk.pins.len();
            if (*q).commandType == pg_sys::CmdType::CMD_INSERT
                && (*q).resultRelation as u32 == varno
            {
                insert_pins(q, key_attno, shard_count, walk);
                if walk.pins.len() == before {
                    walk.spread(format!("the shard key of the rows inserted into \"{name}\" is not a constant or parameter"));
                }
                return;
            }
            if let Some(value) = quals
                .iter()
                .find_map(|c| pins::key_value(*c, varno, key_attno, opfamily))
            {
                walk.pins.push(Pin { shard_count, value });
            } else {
                walk.spread(format!(
                    "\"{name}\" is not pinned to one shard by its key (key = value)"
                ));
            }
            if (*q).commandType == pg_sys::CmdType::CMD_UPDATE
                && (*q).resultRelation as u32 == varno
            {
                for te in PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList).iter_ptr() {
                    if (*te).resno == key_attno && !(*te).resjunk {
                        walk.spread(format!("it updates the shard key of \"{name}\""));
                    }
                }
            }
        } else if (*rte).relkind != pg_sys::RELKIND_VIEW as std::os::raw::c_char {
            walk.others
                .push((relid, (*q).resultRelation as u32 == varno));
        }
    }
}

/// The kind of a table in the distribution catalog, if any.
pub(crate) fn metadata_kind(relid: pg_sys::Oid) -> Option<String> {
    let (schema, name) = crate::distribution::ddl::names(relid);
    if schema == "pg_catalog" || schema == "information_schema" {
        return None;
    }
    metadata::table_entry(&schema, &name).map(|e| e.kind)
}

/// The key values of the rows an INSERT adds: from its target list, or from the rows of
/// its VALUES list.
unsafe fn insert_pins(q: *mut pg_sys::Query, key_attno: i16, shard_count: u32, walk: &mut Walk) {
    // SAFETY: a valid INSERT Query.
    unsafe {
        let Some(te) = PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList)
            .iter_ptr()
            .find(|te| (**te).resno == key_attno)
        else {
            // No key value: NULL, shard 0.
            let null = pg_sys::makeNullConst(pg_sys::INT4OID, -1, pg_sys::InvalidOid);
            walk.pins.push(Pin {
                shard_count,
                value: null.cast(),
            });
            return;
        };
        let expr = pins::strip_relabel((*te).expr.cast());
        if let Some(value) = pins::folded_value(expr) {
            walk.pins.push(Pin { shard_count, value });
            return;
        }
        if (*expr).type_ != pg_sys::NodeTag::T_Var {
            return;
        }
        let var = expr as *mut pg_sys::Var;
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
        let Some(values) = rtable.get_ptr((*var).varno as usize - 1) else {
            return;
        };
        if (*values).rtekind != pg_sys::RTEKind::RTE_VALUES {
            return;
        }
        for row in PgList::<pg_sys::List>::from_pg((*values).values_lists).iter_ptr() {
            let Some(v) =
                PgList::<pg_sys::Node>::from_pg(row).get_ptr((*var).varattno as usize - 1)
            else {
                return;
            };
            let Some(value) = pins::folded_value(v) else {
                walk.spread("a row's shard key is not a constant or parameter".into());
                return;
            };
            walk.pins.push(Pin { shard_count, value });
        }
    }
}

/// Visits sub-queries and checks that every function, operator and aggregate is built in.
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is the Walk of `route`; `node` a valid node.
    unsafe {
        let walk = &mut *(context as *mut Walk);
        use pg_sys::NodeTag::*;
        match (*node).type_ {
            T_Query => {
                visit_query(node as *mut pg_sys::Query, walk);
                return false;
            }
            T_FuncExpr if !builtin((*(node as *mut pg_sys::FuncExpr)).funcid) => {
                walk.spread("it calls a function defined on this node".into());
            }
            T_OpExpr | T_DistinctExpr | T_NullIfExpr
                if !builtin((*(node as *mut pg_sys::OpExpr)).opno) =>
            {
                walk.spread("it uses an operator defined on this node".into());
            }
            T_Aggref if !builtin((*(node as *mut pg_sys::Aggref)).aggfnoid) => {
                walk.spread("it uses an aggregate defined on this node".into());
            }
            T_WindowFunc if !builtin((*(node as *mut pg_sys::WindowFunc)).winfnoid) => {
                walk.spread("it uses a window function defined on this node".into());
            }
            _ => {}
        }
        expression_tree_walker(node, walker, context)
    }
}

/// The plan of a statement routed whole to one node: a `SynapseRouter` scan returning
/// the statement's result (its target list, or its RETURNING list).
///
/// # Safety
/// `parse` must be the valid rewritten Query that [`route`] accepted; the relations its
/// range table entries.
pub unsafe fn plan(
    parse: *mut pg_sys::Query,
    pins: Vec<Pin>,
    node: Option<i64>,
    relations: Vec<*mut pg_sys::RangeTblEntry>,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: valid planner input; every node is palloc'd in the planner's context.
    unsafe {
        let sql = crate::distribution::ddl::deparse_query(parse);
        let max_param = max_param(parse);
        let command = (*parse).commandType;
        let mut pin_list = PgList::<pg_sys::Node>::new();
        let pin_count = pins.len();
        for pin in pins {
            let mut one = PgList::<pg_sys::Node>::new();
            one.push(pg_sys::makeInteger(pin.shard_count as i32).cast());
            one.push(pg_sys::copyObjectImpl(pin.value.cast()) as *mut pg_sys::Node);
            pin_list.push(one.into_pg().cast());
        }
        // A statement over one distributed table pinned to one shard can run on that
        // shard's partition when the shard turns out to be here (a generic plan).
        let one_table = if node.is_none() && pin_count == 1 {
            single_distributed_table(parse)
        } else {
            0
        };
        // 2: it changes rows; 1: it locks rows (FOR UPDATE/SHARE), which must live in the
        // remote transaction like writes; 0: it reads.
        let writes = if command != pg_sys::CmdType::CMD_SELECT {
            2
        } else {
            i32::from(!(*parse).rowMarks.is_null())
        };
        let mut private = PgList::<pg_sys::Node>::new();
        private.push(pg_sys::makeString(super::pullup::pstrdup(&sql)).cast());
        private.push(pg_sys::makeInteger(max_param).cast());
        private.push(pg_sys::makeInteger(writes).cast());
        private.push(
            pg_sys::makeString(super::pullup::pstrdup(&node.unwrap_or(-1).to_string())).cast(),
        );
        private.push(pin_list.into_pg().cast());
        private.push(pg_sys::makeInteger(one_table as i32).cast());
        if one_table > 0 {
            private.push(pg_sys::copyObjectImpl(parse.cast()) as *mut pg_sys::Node);
        }

        // Cheap: a prepared statement should keep this (generic) plan, resolving the
        // node at run time, rather than plan every execution anew (PostgreSQL's plan
        // cache compares it with the custom plans' cost plus their planning).
        custom_plan(
            parse,
            relations,
            &crate::executor::router_scan::SCAN_METHODS.0,
            private.into_pg(),
        )
    }
}

/// A plan that is one custom scan returning the statement's result (its target list, or
/// its RETURNING list), given the scan's methods and private list.
///
/// # Safety
/// `parse` must be a valid rewritten Query, `relations` its relations' range table
/// entries; planner memory context.
pub unsafe fn custom_plan(
    parse: *mut pg_sys::Query,
    relations: Vec<*mut pg_sys::RangeTblEntry>,
    methods: &'static pg_sys::CustomScanMethods,
    private: *mut pg_sys::List,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: valid planner input; every node is palloc'd in the planner's context.
    unsafe {
        let command = (*parse).commandType;
        let output = if command == pg_sys::CmdType::CMD_SELECT {
            (*parse).targetList
        } else {
            (*parse).returningList
        };
        let mut scan_tlist = PgList::<pg_sys::TargetEntry>::new();
        let mut tlist = PgList::<pg_sys::TargetEntry>::new();
        let mut resno = 0i16;
        for te in PgList::<pg_sys::TargetEntry>::from_pg(output).iter_ptr() {
            if (*te).resjunk {
                continue;
            }
            resno += 1;
            let expr = (*te).expr as *mut pg_sys::Node;
            let (typ, typmod, coll) = (
                pg_sys::exprType(expr),
                pg_sys::exprTypmod(expr),
                pg_sys::exprCollation(expr),
            );
            let null = pg_sys::makeNullConst(typ, typmod, coll);
            scan_tlist.push(pg_sys::makeTargetEntry(
                null.cast(),
                resno,
                (*te).resname,
                false,
            ));
            let var = pg_sys::makeVar(pg_sys::INDEX_VAR, resno, typ, typmod, coll, 0);
            tlist.push(pg_sys::makeTargetEntry(
                var.cast(),
                resno,
                (*te).resname,
                false,
            ));
        }
        let cscan =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomScan>()) as *mut pg_sys::CustomScan;
        (*cscan).scan.plan.type_ = pg_sys::NodeTag::T_CustomScan;
        (*cscan).scan.plan.targetlist = tlist.into_pg();
        (*cscan).scan.plan.startup_cost = 0.0;
        (*cscan).scan.plan.total_cost = 1.0;
        (*cscan).scan.plan.plan_rows = 1.0;
        (*cscan).scan.scanrelid = 0;
        (*cscan).custom_scan_tlist = scan_tlist.into_pg();
        (*cscan).custom_private = private;
        (*cscan).methods = methods;

        let mut rtable = PgList::<pg_sys::RangeTblEntry>::new();
        let mut oids: *mut pg_sys::List = std::ptr::null_mut();
        for rte in relations {
            rtable.push(pg_sys::copyObjectImpl(rte.cast()) as *mut pg_sys::RangeTblEntry);
            oids = pg_sys::lappend_oid(oids, (*rte).relid);
        }
        let stmt =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannedStmt>()) as *mut pg_sys::PlannedStmt;
        (*stmt).type_ = pg_sys::NodeTag::T_PlannedStmt;
        (*stmt).commandType = command;
        (*stmt).queryId = (*parse).queryId;
        (*stmt).hasReturning = !(*parse).returningList.is_null();
        (*stmt).hasModifyingCTE = (*parse).hasModifyingCTE;
        (*stmt).canSetTag = (*parse).canSetTag;
        (*stmt).planTree = cscan.cast();
        (*stmt).rtable = rtable.into_pg();
        (*stmt).relationOids = oids;
        (*stmt).stmt_location = (*parse).stmt_location;
        (*stmt).stmt_len = (*parse).stmt_len;
        stmt
    }
}

/// The range table index of the statement's one distributed table, if it reads no other
/// relation and has no sub-queries; else 0.
unsafe fn single_distributed_table(parse: *mut pg_sys::Query) -> u32 {
    // SAFETY: a valid Query.
    unsafe {
        let q = &*parse;
        if q.hasSubLinks || !q.cteList.is_null() || !q.setOperations.is_null() {
            return 0;
        }
        let mut found = 0;
        for (i, rte) in PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable)
            .iter_ptr()
            .enumerate()
        {
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_RELATION => {
                    if found != 0 || !guard::is_distributed((*rte).relid) {
                        return 0;
                    }
                    found = i as u32 + 1;
                }
                pg_sys::RTEKind::RTE_SUBQUERY | pg_sys::RTEKind::RTE_CTE => return 0,
                _ => {}
            }
        }
        found
    }
}

/// The SQL of a statement routed to one shard, run on that shard's partition instead of
/// its table: PostgreSQL plans it once for all executions (over the table, a generic
/// plan would lock every partition and a custom plan is planned every time). `None` if
/// the partition is not here.
///
/// # Safety
/// `query` must be the statement's Query, `rtindex` its distributed table's entry.
pub unsafe fn partition_sql(query: *mut pg_sys::Query, rtindex: u32, shard: u32) -> Option<String> {
    // SAFETY: as documented.
    unsafe {
        let copy = on_partition(query, rtindex, shard)?;
        Some(crate::distribution::ddl::deparse_query(copy))
    }
}

/// A copy of `query` with its distributed table (entry `rtindex`) replaced by shard
/// `shard`'s partition on this node; `None` if the partition is not here.
unsafe fn on_partition(
    query: *mut pg_sys::Query,
    rtindex: u32,
    shard: u32,
) -> Option<*mut pg_sys::Query> {
    // SAFETY: a copy of a valid Query; catalog lookups.
    unsafe {
        let copy = pg_sys::copyObjectImpl(query.cast()) as *mut pg_sys::Query;
        let rte = PgList::<pg_sys::RangeTblEntry>::from_pg((*copy).rtable)
            .get_ptr(rtindex as usize - 1)?;
        let (schema, name) = crate::distribution::ddl::names((*rte).relid);
        let partition = std::ffi::CString::new(crate::distribution::operations::partition_name(
            &name, shard,
        ))
        .ok()?;
        let schema = std::ffi::CString::new(schema).ok()?;
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        let oid = pg_sys::get_relname_relid(partition.as_ptr(), namespace);
        if oid == pg_sys::InvalidOid {
            return None;
        }
        // As the planner locks the partitions it keeps.
        pg_sys::LockRelationOid(oid, (*rte).rellockmode);
        (*rte).relid = oid;
        (*rte).inh = false;
        (*rte).relkind = pg_sys::RELKIND_RELATION as std::os::raw::c_char;
        Some(copy)
    }
}

/// Where a statement another node sent here (a fragment session) runs, when it is a
/// SELECT, UPDATE or DELETE of one distributed table pinned to one shard.
pub enum OnePartition {
    /// Planned on the shard's partition (the value is known now).
    Now(*mut pg_sys::Query),
    /// The value is a parameter of a generic plan: known at run time only.
    Later,
}

/// See [`OnePartition`]: the partition replaces the table in a copy of the statement only
/// when its columns are the table's, number for number (the statement's column numbers are
/// the table's). `None`: the statement is planned as it is.
///
/// # Safety
/// `parse` must be a valid rewritten Query, `params` the planner's parameters.
pub unsafe fn one_partition(
    parse: *mut pg_sys::Query,
    params: pg_sys::ParamListInfo,
) -> Option<OnePartition> {
    // SAFETY: reads of a valid Query and catalog lookups.
    unsafe {
        if !matches!(
            (*parse).commandType,
            pg_sys::CmdType::CMD_SELECT | pg_sys::CmdType::CMD_UPDATE | pg_sys::CmdType::CMD_DELETE
        ) || !(*parse).utilityStmt.is_null()
        {
            return None;
        }
        let rtindex = single_distributed_table(parse);
        if rtindex == 0 {
            return None;
        }
        let mut walk = Walk::default();
        visit_query(parse, &mut walk);
        if walk.spread.is_some() || walk.pins.len() != 1 {
            return None;
        }
        let pin = &walk.pins[0];
        let Some(shard) = pins::shard_of_value(pin.value, params, pin.shard_count) else {
            return Some(OnePartition::Later);
        };
        let copy = on_partition(parse, rtindex, shard)?;
        let parent = PgList::<pg_sys::RangeTblEntry>::from_pg((*parse).rtable)
            .get_ptr(rtindex as usize - 1)?;
        let part = PgList::<pg_sys::RangeTblEntry>::from_pg((*copy).rtable)
            .get_ptr(rtindex as usize - 1)?;
        same_columns((*parent).relid, (*part).relid).then_some(OnePartition::Now(copy))
    }
}

/// Whether two relations have the same column names (dropped ones included) at the same
/// numbers.
fn same_columns(a: pg_sys::Oid, b: pg_sys::Oid) -> bool {
    // SAFETY: relation descriptors opened and closed here, under the statement's locks.
    unsafe {
        let (ra, rb) = (
            pg_sys::RelationIdGetRelation(a),
            pg_sys::RelationIdGetRelation(b),
        );
        if ra.is_null() || rb.is_null() {
            for r in [ra, rb] {
                if !r.is_null() {
                    pg_sys::RelationClose(r);
                }
            }
            return false;
        }
        let (da, db) = ((*ra).rd_att, (*rb).rd_att);
        let same = (*da).natts == (*db).natts
            && (0..(*da).natts as usize).all(|i| {
                let (x, y) = ((*da).attrs.as_ptr().add(i), (*db).attrs.as_ptr().add(i));
                (*x).attisdropped == (*y).attisdropped
                    && (*x).atttypid == (*y).atttypid
                    && std::ffi::CStr::from_ptr((*x).attname.data.as_ptr())
                        == std::ffi::CStr::from_ptr((*y).attname.data.as_ptr())
            });
        pg_sys::RelationClose(ra);
        pg_sys::RelationClose(rb);
        same
    }
}

/// The highest external parameter number `query` uses.
///
/// # Safety
/// `query` must be a valid Query.
pub unsafe fn max_param(query: *mut pg_sys::Query) -> i32 {
    let mut max = 0i32;
    // SAFETY: as documented.
    unsafe { query_tree_walker(query, max_param_walker, (&mut max as *mut i32).cast(), 0) };
    max
}

/// The highest external parameter number in the expression `node` (0: none).
///
/// # Safety
/// `node` must be a valid expression node.
pub unsafe fn max_param_of(node: *mut pg_sys::Node) -> i32 {
    let mut max = 0i32;
    // SAFETY: as documented.
    unsafe { max_param_walker(node, (&mut max as *mut i32).cast()) };
    max
}

unsafe extern "C-unwind" fn max_param_walker(
    node: *mut pg_sys::Node,
    context: *mut c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is an i32; `node` a valid node.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_Query => {
                return query_tree_walker(node as *mut pg_sys::Query, max_param_walker, context, 0);
            }
            pg_sys::NodeTag::T_Param => {
                let p = node as *mut pg_sys::Param;
                if (*p).paramkind == pg_sys::ParamKind::PARAM_EXTERN {
                    let max = &mut *(context as *mut i32);
                    *max = (*max).max((*p).paramid);
                }
            }
            _ => {}
        }
        expression_tree_walker(node, max_param_walker, context)
    }
}
