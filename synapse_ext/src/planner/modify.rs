//! Writes whose rows are on several nodes: one statement, every node's part, committed
//! together (two-phase commit, see `txn::coordinator`).
//!
//! - **UPDATE / DELETE** run as they are on every node holding a shard of their table
//!   (a reference table: on every node), each over its own shards, like a fragment. Only
//!   when that gives one server's answer: besides its target, the statement reads
//!   reference tables only (anything else differs between nodes), every function is
//!   immutable (`now()` or `random()` would be evaluated by each node), and it does not
//!   change the shard key (the row would have to move to another shard).
//! - **INSERT** (several rows, `INSERT … SELECT`, a key computed per row): this node
//!   computes the rows to insert once — a SELECT routed like any other, so it may read
//!   anything — then sends each node its rows as a multi-row `INSERT … VALUES` with
//!   parameters (a reference table: every node all rows), `ON CONFLICT` and `RETURNING`
//!   included; those run on the nodes, so they too must be immutable and read nothing else.
//!
//! See `executor::modify_scan` for the run time.

use std::ffi::c_void;

use pgrx::pg_sys;
use pgrx::PgList;

use super::router::{
    custom_plan, expression_tree_walker, max_param, metadata_kind, query_tree_walker,
};
use crate::distribution::{ddl, guard, metadata};
use crate::pg::errors::not_supported;

/// What a multi-node write does, in the plan's private list.
pub const STATEMENT: &str = "statement";
pub const ROWS: &str = "rows";

const HINT: &str = "Pin the statement to one shard with its key (WHERE key = value), or run \
                    one statement per node's rows in a transaction block.";

fn rel_name(oid: pg_sys::Oid) -> String {
    ddl::names(oid).1
}

/// Whether `parse` writes a table (INSERT, UPDATE, DELETE or MERGE with a result relation).
///
/// # Safety
/// `parse` must be a valid Query.
pub unsafe fn writes(parse: *mut pg_sys::Query) -> bool {
    // SAFETY: as documented.
    unsafe {
        matches!(
            (*parse).commandType,
            pg_sys::CmdType::CMD_INSERT
                | pg_sys::CmdType::CMD_UPDATE
                | pg_sys::CmdType::CMD_DELETE
                | pg_sys::CmdType::CMD_MERGE
        ) && (*parse).resultRelation > 0
    }
}

/// The target of a write to a distributed or reference table, if the statement is one.
///
/// # Safety
/// `parse` must be a valid Query.
pub unsafe fn target(parse: *mut pg_sys::Query) -> Option<(pg_sys::Oid, String)> {
    // SAFETY: as documented.
    unsafe {
        if !writes(parse) {
            return None;
        }
        let rte = PgList::<pg_sys::RangeTblEntry>::from_pg((*parse).rtable)
            .get_ptr((*parse).resultRelation as usize - 1)?;
        let kind = metadata_kind((*rte).relid)?;
        (kind == "distributed" || kind == "reference").then_some(((*rte).relid, kind))
    }
}

/// The plan of a write to `table` (of `kind`) spanning nodes, or an ERROR naming why it
/// cannot run correctly (`why`: why it is not on one node).
///
/// # Safety
/// `parse` must be a valid rewritten Query writing `table`; `relations` its relations.
pub unsafe fn plan(
    parse: *mut pg_sys::Query,
    relations: Vec<*mut pg_sys::RangeTblEntry>,
    table: pg_sys::Oid,
    kind: &str,
    why: &str,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: as documented; every node made here is palloc'd in the planner's context.
    unsafe {
        let name = rel_name(table);
        let command = (*parse).commandType;
        let verb = match command {
            pg_sys::CmdType::CMD_INSERT => "INSERT into",
            pg_sys::CmdType::CMD_UPDATE => "UPDATE of",
            pg_sys::CmdType::CMD_DELETE => "DELETE from",
            _ => "MERGE into",
        };
        let refuse = Refuse {
            verb,
            kind,
            name: &name,
        };
        let refuse = |reason: String| refuse.with(reason);
        if command == pg_sys::CmdType::CMD_MERGE {
            not_supported(
                format!("MERGE into {kind} table \"{name}\" is not supported when its rows are on several nodes ({why})"),
                HINT,
            );
        }
        if (*parse).hasModifyingCTE {
            refuse("a WITH clause writes too".into());
        }
        let reference = kind == "reference";
        let (schema, table_name) = ddl::names(table);
        let entry = metadata::table_entry(&schema, &table_name);
        let shard_count = entry.as_ref().and_then(|e| e.shard_count).unwrap_or(1);
        let key_attno = match entry.as_ref().and_then(|e| e.shard_key.clone()) {
            Some(key) if !reference => {
                let key = std::ffi::CString::new(key).unwrap_or_default();
                pg_sys::get_attnum(table, key.as_ptr())
            }
            _ => 0,
        };
        let mut private = PgList::<pg_sys::Node>::new();
        let text = |s: &str| pg_sys::makeString(super::pullup::pstrdup(s)).cast::<pg_sys::Node>();
        if command == pg_sys::CmdType::CMD_INSERT {
            let (source_sql, key_position) = insert_source(parse, key_attno, &refuse);
            private.push(text(ROWS));
            private.push(text(&source_sql));
            private.push(pg_sys::makeInteger(max_param(parse)).cast());
            private.push(pg_sys::makeInteger(i32::from(reference)).cast());
            private.push(pg_sys::makeInteger(shard_count as i32).cast());
            private.push(pg_sys::makeInteger(key_position).cast());
            private.push(pg_sys::copyObjectImpl(parse.cast()) as *mut pg_sys::Node);
        } else {
            // Each node runs the statement over its own rows: it must read nothing that
            // differs between nodes, and give every node's rows what one server would.
            let mut check = Check {
                top: parse,
                ..Check::default()
            };
            check_query(parse, &mut check);
            if let Some(reason) = check.refused {
                refuse(reason);
            }
            if pg_sys::contain_mutable_functions(parse.cast()) {
                refuse(
                    "it calls a function that is not immutable (now(), random(), nextval() ...): \
                     each node would compute its own value; pass the value as a constant or parameter"
                        .into(),
                );
            }
            if command == pg_sys::CmdType::CMD_UPDATE && key_attno > 0 {
                for te in PgList::<pg_sys::TargetEntry>::from_pg((*parse).targetList).iter_ptr() {
                    if (*te).resno == key_attno && !(*te).resjunk {
                        refuse(
                            "it changes the shard key (the rows would move to other shards)".into(),
                        );
                    }
                }
            }
            private.push(text(STATEMENT));
            private.push(text(&ddl::deparse_query(parse)));
            private.push(pg_sys::makeInteger(max_param(parse)).cast());
            private.push(pg_sys::makeInteger(i32::from(reference)).cast());
            private.push(pg_sys::makeInteger(shard_count as i32).cast());
        }
        custom_plan(
            parse,
            relations,
            &crate::executor::modify_scan::SCAN_METHODS.0,
            private.into_pg(),
        )
    }
}

/// The SELECT computing an INSERT's rows (its target list over its source), and where
/// the shard key is among its columns (-1: not given, NULL). Refuses what the nodes
/// could not run alike: `ON CONFLICT` or `RETURNING` reading other tables or calling
/// functions that are not immutable.
unsafe fn insert_source(
    parse: *mut pg_sys::Query,
    key_attno: i16,
    refuse: &dyn Fn(String),
) -> (String, i32) {
    // SAFETY: a valid INSERT Query; the copy is ours to change.
    unsafe {
        let on_nodes: Vec<*mut pg_sys::Node> = [
            (*parse).returningList.cast(),
            if (*parse).onConflict.is_null() {
                std::ptr::null_mut()
            } else {
                (*parse).onConflict.cast()
            },
        ]
        .into_iter()
        .filter(|n: &*mut pg_sys::Node| !n.is_null())
        .collect();
        for node in on_nodes {
            if pg_sys::checkExprHasSubLink(node) {
                refuse("its ON CONFLICT or RETURNING clause has a sub-query".into());
            }
            if pg_sys::contain_mutable_functions(node) {
                refuse(
                    "its ON CONFLICT or RETURNING clause calls a function that is not immutable"
                        .into(),
                );
            }
            let mut check = Check::default();
            expression_tree_walker(node, check_walker, (&mut check as *mut Check).cast());
            if let Some(reason) = check.refused {
                refuse(reason);
            }
        }
        if !(*parse).onConflict.is_null() && key_attno > 0 {
            for te in PgList::<pg_sys::TargetEntry>::from_pg((*(*parse).onConflict).onConflictSet)
                .iter_ptr()
            {
                if (*te).resno == key_attno && !(*te).resjunk {
                    refuse("its ON CONFLICT DO UPDATE changes the shard key".into());
                }
            }
        }
        let select = pg_sys::copyObjectImpl(parse.cast()) as *mut pg_sys::Query;
        (*select).commandType = pg_sys::CmdType::CMD_SELECT;
        (*select).resultRelation = 0;
        (*select).onConflict = std::ptr::null_mut();
        (*select).returningList = std::ptr::null_mut();
        (*select).withCheckOptions = std::ptr::null_mut();
        let mut tlist = PgList::<pg_sys::TargetEntry>::new();
        let mut key_position = -1;
        for te in PgList::<pg_sys::TargetEntry>::from_pg((*select).targetList).iter_ptr() {
            if (*te).resjunk {
                continue;
            }
            if (*te).resno == key_attno {
                key_position = tlist.len() as i32;
            }
            (*te).resno = tlist.len() as i16 + 1;
            tlist.push(te);
        }
        (*select).targetList = tlist.into_pg();
        // The deparser prints only FROM items written in a FROM clause; an INSERT's
        // source (`*SELECT*`) is not one.
        let rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*select).rtable);
        for item in PgList::<pg_sys::Node>::from_pg((*(*select).jointree).fromlist).iter_ptr() {
            if (*item).type_ == pg_sys::NodeTag::T_RangeTblRef {
                let index = (*(item as *mut pg_sys::RangeTblRef)).rtindex;
                if let Some(rte) = rtable.get_ptr(index as usize - 1) {
                    (*rte).inFromCl = true;
                }
            }
        }
        (ddl::deparse_query(select), key_position)
    }
}

/// The refusal of a write spanning nodes.
struct Refuse<'a> {
    verb: &'a str,
    kind: &'a str,
    name: &'a str,
}

impl Refuse<'_> {
    fn with(&self, reason: String) -> ! {
        not_supported(
            format!(
                "{} {} table \"{}\" on several nodes is not supported when {reason}",
                self.verb, self.kind, self.name
            ),
            HINT,
        )
    }
}

struct Check {
    /// The statement itself: its target is the one relation that may be distributed.
    top: *mut pg_sys::Query,
    refused: Option<String>,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            top: std::ptr::null_mut(),
            refused: None,
        }
    }
}

/// Checks what every node would read alike: reference tables, built-in functions.
unsafe fn check_query(q: *mut pg_sys::Query, check: &mut Check) {
    // SAFETY: a valid Query.
    unsafe {
        for (i, rte) in PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable)
            .iter_ptr()
            .enumerate()
        {
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_RELATION => {
                    if q == check.top && i as i32 + 1 == (*q).resultRelation {
                        continue;
                    }
                    if (*rte).relkind == pg_sys::RELKIND_VIEW as std::os::raw::c_char {
                        continue;
                    }
                    let relid = (*rte).relid;
                    match metadata_kind(relid).as_deref() {
                        Some("reference") => {}
                        Some(_) if guard::is_distributed(relid) => {
                            check.refused.get_or_insert(format!(
                                "it reads distributed table \"{}\" (each node would see only its own shards)",
                                rel_name(relid)
                            ));
                        }
                        _ => {
                            check.refused.get_or_insert(format!(
                                "it reads \"{}\", a table of this node only",
                                rel_name(relid)
                            ));
                        }
                    }
                }
                pg_sys::RTEKind::RTE_TABLEFUNC | pg_sys::RTEKind::RTE_NAMEDTUPLESTORE => {
                    check
                        .refused
                        .get_or_insert("it reads a table function or transition table".into());
                }
                _ => {}
            }
        }
        query_tree_walker(q, check_walker, (check as *mut Check).cast(), 0);
    }
}

unsafe extern "C-unwind" fn check_walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is a Check; `node` a valid node.
    unsafe {
        let check = &mut *(context as *mut Check);
        // Built-in objects have oids below FirstNormalObjectId.
        let builtin = |oid: pg_sys::Oid| oid.to_u32() < 16384;
        use pg_sys::NodeTag::*;
        match (*node).type_ {
            T_Query => {
                check_query(node as *mut pg_sys::Query, check);
                return false;
            }
            T_FuncExpr if !builtin((*(node as *mut pg_sys::FuncExpr)).funcid) => {
                check
                    .refused
                    .get_or_insert("it calls a function defined on this node".into());
            }
            T_OpExpr | T_DistinctExpr | T_NullIfExpr
                if !builtin((*(node as *mut pg_sys::OpExpr)).opno) =>
            {
                check
                    .refused
                    .get_or_insert("it uses an operator defined on this node".into());
            }
            T_Aggref if !builtin((*(node as *mut pg_sys::Aggref)).aggfnoid) => {
                check
                    .refused
                    .get_or_insert("it uses an aggregate defined on this node".into());
            }
            _ => {}
        }
        expression_tree_walker(node, check_walker, context)
    }
}

/// The INSERT of `rows` rows of parameters into the table of `template` (the client's
/// INSERT): its source replaced by `VALUES ($n, …), …` of the types of its target list,
/// its ON CONFLICT and RETURNING kept. Each node's part of an INSERT. The client's own
/// parameters, which ON CONFLICT and RETURNING may use, keep their numbers `$1..$first`;
/// the rows' values are the parameters after them.
///
/// # Safety
/// `template` must be the INSERT Query kept in the plan; `types` the (type, typmod,
/// collation) of each of its non-junk target entries.
pub unsafe fn insert_sql(
    template: *mut pg_sys::Query,
    types: &[(pg_sys::Oid, i32, pg_sys::Oid)],
    rows: usize,
    first: usize,
) -> String {
    // SAFETY: as documented; nodes in the current memory context.
    unsafe {
        let q = pg_sys::copyObjectImpl(template.cast()) as *mut pg_sys::Query;
        let width = types.len();
        let mut values = PgList::<pg_sys::List>::new();
        for r in 0..rows {
            let mut row = PgList::<pg_sys::Node>::new();
            for (j, (typ, _, coll)) in types.iter().enumerate() {
                let p = pg_sys::palloc0(std::mem::size_of::<pg_sys::Param>()) as *mut pg_sys::Param;
                (*p).xpr.type_ = pg_sys::NodeTag::T_Param;
                (*p).paramkind = pg_sys::ParamKind::PARAM_EXTERN;
                (*p).paramid = (first + r * width + j + 1) as i32;
                (*p).paramtype = *typ;
                (*p).paramtypmod = -1;
                (*p).paramcollid = *coll;
                (*p).location = -1;
                row.push(p.cast());
            }
            values.push(row.into_pg());
        }
        let mut names = PgList::<pg_sys::Node>::new();
        let (mut coltypes, mut coltypmods, mut colls) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        for (j, (typ, typmod, coll)) in types.iter().enumerate() {
            names.push(
                pg_sys::makeString(super::pullup::pstrdup(&format!("column{}", j + 1))).cast(),
            );
            coltypes = pg_sys::lappend_oid(coltypes, *typ);
            coltypmods = pg_sys::lappend_int(coltypmods, *typmod);
            colls = pg_sys::lappend_oid(colls, *coll);
        }
        let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>())
            as *mut pg_sys::RangeTblEntry;
        (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
        (*rte).rtekind = pg_sys::RTEKind::RTE_VALUES;
        (*rte).values_lists = values.into_pg();
        (*rte).coltypes = coltypes;
        (*rte).coltypmods = coltypmods;
        (*rte).colcollations = colls;
        (*rte).eref = pg_sys::makeAlias(c"*VALUES*".as_ptr(), names.into_pg());
        (*rte).inFromCl = true;

        // The source's place in the range table (a sub-query or VALUES), or a new one.
        let mut rtable = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
        let from = PgList::<pg_sys::Node>::from_pg((*(*q).jointree).fromlist);
        let source = from
            .get_ptr(0)
            .filter(|n| (**n).type_ == pg_sys::NodeTag::T_RangeTblRef)
            .map(|n| (*(n as *mut pg_sys::RangeTblRef)).rtindex);
        let index = match source {
            Some(i) => {
                let mut new = PgList::<pg_sys::RangeTblEntry>::new();
                for (k, e) in rtable.iter_ptr().enumerate() {
                    new.push(if k as i32 + 1 == i { rte } else { e });
                }
                (*q).rtable = new.into_pg();
                i
            }
            None => {
                rtable.push(rte);
                (*q).rtable = rtable.into_pg();
                let len = PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable).len() as i32;
                let r = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>())
                    as *mut pg_sys::RangeTblRef;
                (*r).type_ = pg_sys::NodeTag::T_RangeTblRef;
                (*r).rtindex = len;
                let mut list = PgList::<pg_sys::Node>::new();
                list.push(r.cast());
                (*(*q).jointree).fromlist = list.into_pg();
                len
            }
        };
        let mut j = 0;
        for te in PgList::<pg_sys::TargetEntry>::from_pg((*q).targetList).iter_ptr() {
            if (*te).resjunk {
                continue;
            }
            let (typ, typmod, coll) = types[j];
            j += 1;
            (*te).expr = pg_sys::makeVar(index as _, j as i16, typ, typmod, coll, 0).cast();
        }
        (*q).cteList = std::ptr::null_mut();
        (*q).hasSubLinks = false;
        (*q).hasAggs = false;
        (*q).hasWindowFuncs = false;
        (*q).hasTargetSRFs = false;
        // The client's own OVERRIDING was checked here; the values of identity columns
        // computed here must be taken as they are.
        (*q).override_ = pg_sys::OverridingKind::OVERRIDING_SYSTEM_VALUE;
        ddl::deparse_query(q)
    }
}
