//! The pushdown level: a read over co-located distributed tables (and reference tables)
//! that every node can answer for its own shards runs on those nodes, and this node
//! only combines their answers.
//!
//! The statement is split in two queries:
//! - the *fragment* runs on every node holding shards (this one through SPI): the
//!   statement's joins and WHERE clause, and, when it aggregates, its grouping and a
//!   partial form of each aggregate (`count` → `count`, `avg` → `sum` and `count`, ...);
//!   without aggregates, its target list, DISTINCT, and ORDER BY with LIMIT raised by
//!   OFFSET; when it groups by a shard key (inner joins only), every group is whole on
//!   one node, so the fragment finishes the grouping: HAVING and any aggregate. Its SQL
//!   is deparsed by PostgreSQL (`pg_get_querydef`).
//! - the *combining* query reads the fragments' rows (a `SynapseScan` standing for
//!   `synapse.fragment_rows()`) and finishes the statement: aggregates combined
//!   (`sum` of counts, `min` of minimums, `sum`/`count` for `avg`), HAVING, DISTINCT,
//!   ORDER BY, LIMIT/OFFSET, and every expression that is not shippable. PostgreSQL plans
//!   it like any query.
//!
//! A statement qualifies when splitting it cannot change its answer: every distributed
//! table shares one shard count and is joined to the others by equal shard keys (so
//! matching rows are on one node), a reference table is never the preserved side of an
//! outer join, the fragment is shippable (built-in immutable functions only, see
//! [`super::shippable`]), and each aggregate has a combining form. Anything else is
//! left to the pull-up level, which is always exact.

use std::ffi::{c_void, CString};

use pgrx::pg_sys;
use pgrx::PgList;

use super::shippable;
use crate::distribution::{ddl, guard, metadata};

extern "C-unwind" {
    // Declared with a prototype for the mutator (pgrx's has none).
    fn expression_tree_mutator(
        node: *mut pg_sys::Node,
        mutator: unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> *mut pg_sys::Node,
        context: *mut c_void,
    ) -> *mut pg_sys::Node;
}

const AGGKIND_NORMAL: std::os::raw::c_char = b'n' as _;

/// A distributed table of the statement: its range table index and shard key.
struct Distributed {
    varno: u32,
    key_attno: i16,
    opfamily: pg_sys::Oid,
}

/// The oid of function `schema.name(args)`, if it exists.
unsafe fn function(schema: &str, name: &str, args: &[pg_sys::Oid]) -> Option<pg_sys::Oid> {
    // SAFETY: a catalog lookup with a palloc'd name list.
    unsafe {
        let mut names = PgList::<pg_sys::Node>::new();
        names.push(pg_sys::makeString(super::pullup::pstrdup(schema)).cast());
        names.push(pg_sys::makeString(super::pullup::pstrdup(name)).cast());
        let mut args = args.to_vec();
        let oid =
            pg_sys::LookupFuncName(names.into_pg(), args.len() as i32, args.as_mut_ptr(), true);
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// The oid of `synapse.fragment_rows(text, int, int)`, which stands for a fragment's rows.
pub fn fragment_rows_oid() -> Option<pg_sys::Oid> {
    // SAFETY: a catalog lookup on the main thread.
    unsafe {
        function(
            "synapse",
            "fragment_rows",
            &[pg_sys::TEXTOID, pg_sys::INT4OID, pg_sys::INT4OID],
        )
    }
}

/// The statement split for the pushdown level: the combining query, whose one range
/// table entry of its own is `synapse.fragment_rows(fragment SQL, ...)`; or `None` when
/// the statement does not qualify.
///
/// # Safety
/// `parse` must be a valid rewritten SELECT; it is not changed.
pub unsafe fn split(parse: *mut pg_sys::Query) -> Option<*mut pg_sys::Query> {
    // SAFETY: reads of a valid Query; every new node is palloc'd in the planner's context.
    unsafe {
        let q = &*parse;
        if q.commandType != pg_sys::CmdType::CMD_SELECT
            || !q.utilityStmt.is_null()
            || !q.cteList.is_null()
            || !q.setOperations.is_null()
            || q.hasWindowFuncs
            || q.hasTargetSRFs
            || q.hasSubLinks
            || q.hasDistinctOn
            || q.hasRecursive
            || q.hasModifyingCTE
            || q.hasForUpdate
            || !q.rowMarks.is_null()
            || !q.groupingSets.is_null()
            || q.jointree.is_null()
        {
            return None;
        }
        let (tables, shard_count) = tables(parse)?;
        if !colocated(parse, &tables) {
            return None;
        }
        let mut max_param = 0;
        if !shippable::is_shippable_part(q.jointree.cast(), &mut max_param) {
            return None;
        }
        // Grouped by a shard key (without outer joins), every group is whole on one node:
        // the nodes finish the grouping, HAVING included, and any aggregate.
        let whole_groups = group_by_key(parse, &tables);
        let aggregates =
            !whole_groups && (q.hasAggs || !q.groupClause.is_null() || !q.havingQual.is_null());
        let (fragment, master_tlist, master_having) = if aggregates {
            split_aggregates(parse, &mut max_param)?
        } else {
            if whole_groups && !shippable::is_shippable_part(q.havingQual, &mut max_param) {
                return None;
            }
            split_rows(parse, &mut max_param)?
        };
        let sql = ddl::deparse_query(fragment);

        // The combining query.
        let master = pg_sys::copyObjectImpl(parse.cast()) as *mut pg_sys::Query;
        let fragment_tlist = PgList::<pg_sys::TargetEntry>::from_pg((*fragment).targetList);
        let function_rte = fragment_rte(&sql, shard_count, max_param, &fragment_tlist)?;
        let mut rtable = PgList::<pg_sys::RangeTblEntry>::new();
        rtable.push(function_rte);
        // The tables stay in the range table, unreferenced: the executor checks the
        // user's privileges on them and the plan cache watches them.
        for rte in PgList::<pg_sys::RangeTblEntry>::from_pg(q.rtable).iter_ptr() {
            if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION {
                let copy = pg_sys::copyObjectImpl(rte.cast()) as *mut pg_sys::RangeTblEntry;
                (*copy).inh = false;
                rtable.push(copy);
            }
        }
        (*master).rtable = rtable.into_pg();
        let rtr =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblRef>()) as *mut pg_sys::RangeTblRef;
        (*rtr).type_ = pg_sys::NodeTag::T_RangeTblRef;
        (*rtr).rtindex = 1;
        let mut from = PgList::<pg_sys::Node>::new();
        from.push(rtr.cast());
        (*master).jointree = pg_sys::makeFromExpr(from.into_pg(), std::ptr::null_mut());
        (*master).targetList = master_tlist;
        (*master).havingQual = master_having;
        if whole_groups {
            (*master).groupClause = std::ptr::null_mut();
        }
        (*master).hasAggs = aggregates && pg_sys::contain_agg_clause(master_tlist.cast())
            || pg_sys::contain_agg_clause(master_having);
        Some(master)
    }
}

/// The distributed tables of the statement and their common shard count; `None` if
/// it reads anything but distributed and reference tables, or shard counts differ.
unsafe fn tables(parse: *mut pg_sys::Query) -> Option<(Vec<Distributed>, u32)> {
    // SAFETY: a valid Query's range table.
    unsafe {
        let mut tables = Vec::new();
        let mut shard_count = None;
        for (i, rte) in PgList::<pg_sys::RangeTblEntry>::from_pg((*parse).rtable)
            .iter_ptr()
            .enumerate()
        {
            match (*rte).rtekind {
                pg_sys::RTEKind::RTE_JOIN => continue,
                pg_sys::RTEKind::RTE_RELATION if (*rte).tablesample.is_null() => {}
                _ => return None,
            }
            let relid = (*rte).relid;
            if !guard::is_distributed(relid) {
                if super::router::metadata_kind(relid).as_deref() != Some("reference") {
                    return None;
                }
                continue;
            }
            let (schema, name) = ddl::names(relid);
            let entry = metadata::table_entry(&schema, &name)?;
            let count = entry.shard_count?;
            if *shard_count.get_or_insert(count) != count {
                return None;
            }
            let key = CString::new(entry.shard_key?).ok()?;
            tables.push(Distributed {
                varno: i as u32 + 1,
                key_attno: pg_sys::get_attnum(relid, key.as_ptr()),
                opfamily: guard::key_opfamily(relid)?,
            });
        }
        let shard_count = shard_count?;
        Some((tables, shard_count))
    }
}

/// Whether the statement groups by the shard key of one of its distributed tables, with
/// inner joins only (an outer join could make a NULL key group of rows from every node).
unsafe fn group_by_key(parse: *mut pg_sys::Query, tables: &[Distributed]) -> bool {
    // SAFETY: a valid Query.
    unsafe {
        let q = &*parse;
        if q.groupClause.is_null() || has_outer_join(q.jointree.cast()) {
            return false;
        }
        let groups = PgList::<pg_sys::SortGroupClause>::from_pg(q.groupClause);
        PgList::<pg_sys::TargetEntry>::from_pg(q.targetList)
            .iter_ptr()
            .any(|te| {
                let reference = (*te).ressortgroupref;
                if reference == 0 || !groups.iter_ptr().any(|g| (*g).tleSortGroupRef == reference) {
                    return false;
                }
                let expr = crate::distribution::pins::strip_relabel((*te).expr.cast());
                if (*expr).type_ != pg_sys::NodeTag::T_Var {
                    return false;
                }
                let var = expr as *mut pg_sys::Var;
                (*var).varlevelsup == 0
                    && tables
                        .iter()
                        .any(|t| t.varno == (*var).varno as u32 && t.key_attno == (*var).varattno)
            })
    }
}

unsafe fn has_outer_join(node: *mut pg_sys::Node) -> bool {
    // SAFETY: a valid join tree.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_FromExpr => {
                PgList::<pg_sys::Node>::from_pg((*(node as *mut pg_sys::FromExpr)).fromlist)
                    .iter_ptr()
                    .any(|n| has_outer_join(n))
            }
            pg_sys::NodeTag::T_JoinExpr => {
                let join = node as *mut pg_sys::JoinExpr;
                (*join).jointype != pg_sys::JoinType::JOIN_INNER
                    || has_outer_join((*join).larg)
                    || has_outer_join((*join).rarg)
            }
            _ => false,
        }
    }
}

/// Whether matching rows of the statement's distributed tables are always on one node:
/// every table is linked to the others by equal shard keys (in WHERE or a join's ON),
/// and each outer join either links its two sides by their keys or has only reference
/// tables on its nullable side.
unsafe fn colocated(parse: *mut pg_sys::Query, tables: &[Distributed]) -> bool {
    let mut links: Vec<(u32, u32)> = Vec::new();
    // SAFETY: a valid join tree.
    let ok = unsafe { visit_join_tree((*parse).jointree.cast(), tables, &mut links).is_some() };
    if !ok {
        return false;
    }
    // Union-find over the key equalities.
    let mut parent: Vec<usize> = (0..tables.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let index = |varno: u32| tables.iter().position(|t| t.varno == varno);
    for (a, b) in links {
        if let (Some(a), Some(b)) = (index(a), index(b)) {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            parent[ra] = rb;
        }
    }
    let first = root(&mut parent, 0);
    (1..tables.len()).all(|i| root(&mut parent, i) == first)
}

/// Collects key equalities of a join tree node; returns the distributed tables under it,
/// or `None` if an outer join there could pair rows of different nodes.
unsafe fn visit_join_tree(
    node: *mut pg_sys::Node,
    tables: &[Distributed],
    links: &mut Vec<(u32, u32)>,
) -> Option<Vec<u32>> {
    // SAFETY: a valid join tree.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_RangeTblRef => {
                let varno = (*(node as *mut pg_sys::RangeTblRef)).rtindex as u32;
                Some(
                    tables
                        .iter()
                        .filter(|t| t.varno == varno)
                        .map(|t| t.varno)
                        .collect(),
                )
            }
            pg_sys::NodeTag::T_FromExpr => {
                let from = node as *mut pg_sys::FromExpr;
                let mut under = Vec::new();
                for item in PgList::<pg_sys::Node>::from_pg((*from).fromlist).iter_ptr() {
                    under.extend(visit_join_tree(item, tables, links)?);
                }
                links.extend(key_links((*from).quals, tables));
                Some(under)
            }
            pg_sys::NodeTag::T_JoinExpr => {
                let join = node as *mut pg_sys::JoinExpr;
                let left = visit_join_tree((*join).larg, tables, links)?;
                let right = visit_join_tree((*join).rarg, tables, links)?;
                let own = key_links((*join).quals, tables);
                let linked = own.iter().any(|(a, b)| {
                    (left.contains(a) && right.contains(b))
                        || (left.contains(b) && right.contains(a))
                });
                let ok = match (*join).jointype {
                    pg_sys::JoinType::JOIN_INNER => true,
                    // The preserved side must hold a distributed table (each of its rows
                    // is then on one node); a distributed nullable side must be matched
                    // by key.
                    pg_sys::JoinType::JOIN_LEFT => !left.is_empty() && (right.is_empty() || linked),
                    pg_sys::JoinType::JOIN_RIGHT => {
                        !right.is_empty() && (left.is_empty() || linked)
                    }
                    pg_sys::JoinType::JOIN_FULL => linked,
                    _ => false,
                };
                if !ok {
                    return None;
                }
                links.extend(own);
                let mut under = left;
                under.extend(right);
                Some(under)
            }
            _ => None,
        }
    }
}

/// The pairs of distributed tables an AND-ed clause list equates by shard key.
unsafe fn key_links(quals: *mut pg_sys::Node, tables: &[Distributed]) -> Vec<(u32, u32)> {
    let mut links = Vec::new();
    // SAFETY: valid clauses.
    unsafe {
        for clause in crate::distribution::pins::and_clauses(quals) {
            if (*clause).type_ != pg_sys::NodeTag::T_OpExpr {
                continue;
            }
            let op = clause as *mut pg_sys::OpExpr;
            let args = PgList::<pg_sys::Node>::from_pg((*op).args);
            if args.len() != 2 {
                continue;
            }
            let key_of = |n: *mut pg_sys::Node| -> Option<&Distributed> {
                let n = crate::distribution::pins::strip_relabel(n);
                if (*n).type_ != pg_sys::NodeTag::T_Var {
                    return None;
                }
                let var = n as *mut pg_sys::Var;
                tables.iter().find(|t| {
                    t.varno == (*var).varno as u32
                        && t.key_attno == (*var).varattno
                        && (*var).varlevelsup == 0
                })
            };
            let (Some(a), Some(b)) = (
                key_of(args.get_ptr(0).unwrap()),
                key_of(args.get_ptr(1).unwrap()),
            ) else {
                continue;
            };
            // Equal keys hash alike only within one operator family of the shard hash.
            if a.opfamily == b.opfamily && pg_sys::op_in_opfamily((*op).opno, a.opfamily) {
                links.push((a.varno, b.varno));
            }
        }
    }
    links
}

/// A Var of the combining query: column `attno` of the fragment rows, typed as `expr`.
unsafe fn fragment_var(attno: usize, expr: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: a valid expression.
    unsafe {
        pg_sys::makeVar(
            1,
            attno as i16,
            pg_sys::exprType(expr),
            pg_sys::exprTypmod(expr),
            pg_sys::exprCollation(expr),
            0,
        )
        .cast()
    }
}

/// A fragment without aggregates: the statement's target list (sort columns included),
/// DISTINCT, and ORDER BY with LIMIT + OFFSET. The combining query reads its columns.
unsafe fn split_rows(
    parse: *mut pg_sys::Query,
    max_param: &mut i32,
) -> Option<(*mut pg_sys::Query, *mut pg_sys::List, *mut pg_sys::Node)> {
    // SAFETY: a valid Query; copies are changed, never the statement.
    unsafe {
        let fragment = pg_sys::copyObjectImpl(parse.cast()) as *mut pg_sys::Query;
        let mut master = PgList::<pg_sys::TargetEntry>::new();
        let mut k = 0usize;
        for te in PgList::<pg_sys::TargetEntry>::from_pg((*fragment).targetList).iter_ptr() {
            if !shippable::is_shippable_part((*te).expr.cast(), max_param) {
                return None;
            }
            k += 1;
            // Every column travels, sort columns too.
            let var = fragment_var(k, (*te).expr.cast());
            let mte = pg_sys::flatCopyTargetEntry(te);
            (*mte).expr = var.cast();
            master.push(mte);
            (*te).resjunk = false;
        }
        let limit = fragment_limit(parse);
        if limit.is_null() {
            (*fragment).sortClause = std::ptr::null_mut();
        } else if !shippable::is_shippable_part(limit, max_param) {
            return None;
        }
        (*fragment).limitCount = limit;
        (*fragment).limitOffset = std::ptr::null_mut();
        (*fragment).limitOption = pg_sys::LimitOption::LIMIT_OPTION_COUNT;
        Some((fragment, master.into_pg(), std::ptr::null_mut()))
    }
}

/// The fragment's LIMIT: the statement's LIMIT plus its OFFSET, when both are constants
/// or parameters (and not WITH TIES); else none.
unsafe fn fragment_limit(parse: *mut pg_sys::Query) -> *mut pg_sys::Node {
    // SAFETY: a valid Query.
    unsafe {
        let q = &*parse;
        if q.limitCount.is_null() || q.limitOption != pg_sys::LimitOption::LIMIT_OPTION_COUNT {
            return std::ptr::null_mut();
        }
        // LIMIT 10 is int8(10) until folded.
        let folded = |n: *mut pg_sys::Node| {
            if n.is_null() {
                return n;
            }
            let copy = pg_sys::copyObjectImpl(n.cast()) as *mut pg_sys::Node;
            pg_sys::eval_const_expressions(std::ptr::null_mut(), copy)
        };
        let count = folded(q.limitCount);
        let simple = |n: *mut pg_sys::Node| {
            (*n).type_ == pg_sys::NodeTag::T_Param
                || ((*n).type_ == pg_sys::NodeTag::T_Const
                    && !(*(n as *mut pg_sys::Const)).constisnull)
        };
        if !simple(count) {
            return std::ptr::null_mut();
        }
        let offset = folded(q.limitOffset);
        if offset.is_null() {
            return count;
        }
        if !simple(offset) {
            return std::ptr::null_mut();
        }
        let mut args = PgList::<pg_sys::Node>::new();
        args.push(count);
        args.push(offset);
        let Some(plus) = function("pg_catalog", "int8pl", &[pg_sys::INT8OID, pg_sys::INT8OID])
        else {
            return std::ptr::null_mut();
        };
        let sum = pg_sys::makeFuncExpr(
            plus,
            pg_sys::INT8OID,
            args.into_pg(),
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        folded(sum.cast())
    }
}

/// What the combining query puts in place of a fragment's expressions.
struct Rewrite {
    /// Grouping expressions of the statement and their fragment column.
    groups: Vec<(*mut pg_sys::Node, usize)>,
    /// Aggregates of the statement and their combining expression.
    aggregates: Vec<(*mut pg_sys::Node, *mut pg_sys::Node)>,
    /// The fragment's target list, grown as aggregates are split.
    fragment_tlist: PgList<pg_sys::TargetEntry>,
    max_param: i32,
    /// Set when the statement cannot be split (an aggregate without a combining form, a
    /// column outside aggregates and grouping, an unshippable argument).
    failed: bool,
}

/// A fragment that groups and computes partial aggregates; the combining query groups
/// their rows again and combines them.
unsafe fn split_aggregates(
    parse: *mut pg_sys::Query,
    max_param: &mut i32,
) -> Option<(*mut pg_sys::Query, *mut pg_sys::List, *mut pg_sys::Node)> {
    // SAFETY: a valid Query; copies are changed, never the statement.
    unsafe {
        let q = &*parse;
        let mut rw = Rewrite {
            groups: Vec::new(),
            aggregates: Vec::new(),
            fragment_tlist: PgList::new(),
            max_param: *max_param,
            failed: false,
        };
        // Grouping columns first, with their sort/group references (GROUP BY refers to
        // them in the fragment and in the combining query alike).
        let groups = PgList::<pg_sys::SortGroupClause>::from_pg(q.groupClause);
        for te in PgList::<pg_sys::TargetEntry>::from_pg(q.targetList).iter_ptr() {
            let reference = (*te).ressortgroupref;
            if reference == 0 || !groups.iter_ptr().any(|g| (*g).tleSortGroupRef == reference) {
                continue;
            }
            if !shippable::is_shippable_part((*te).expr.cast(), &mut rw.max_param) {
                return None;
            }
            let fte = pg_sys::flatCopyTargetEntry(te);
            (*fte).expr = pg_sys::copyObjectImpl((*te).expr.cast()).cast();
            (*fte).resjunk = false;
            (*fte).resno = rw.fragment_tlist.len() as i16 + 1;
            rw.fragment_tlist.push(fte);
            rw.groups.push(((*te).expr.cast(), rw.fragment_tlist.len()));
        }
        let context = (&mut rw as *mut Rewrite).cast();
        let master_tlist = combine(q.targetList.cast(), context) as *mut pg_sys::List;
        let master_having = combine(q.havingQual, context);
        if rw.failed {
            return None;
        }
        let fragment = pg_sys::copyObjectImpl(parse.cast()) as *mut pg_sys::Query;
        (*fragment).targetList = rw.fragment_tlist.into_pg();
        (*fragment).hasAggs = !rw.aggregates.is_empty();
        (*fragment).havingQual = std::ptr::null_mut();
        (*fragment).sortClause = std::ptr::null_mut();
        (*fragment).distinctClause = std::ptr::null_mut();
        (*fragment).limitCount = std::ptr::null_mut();
        (*fragment).limitOffset = std::ptr::null_mut();
        (*fragment).limitOption = pg_sys::LimitOption::LIMIT_OPTION_COUNT;
        *max_param = rw.max_param;
        Some((fragment, master_tlist, master_having))
    }
}

/// The combining form of an expression of the statement (a copy).
unsafe fn combine(node: *mut pg_sys::Node, context: *mut c_void) -> *mut pg_sys::Node {
    // SAFETY: the mutator below, on a valid tree.
    unsafe { mutate(node, context) }
}

unsafe extern "C-unwind" fn mutate(
    node: *mut pg_sys::Node,
    context: *mut c_void,
) -> *mut pg_sys::Node {
    if node.is_null() {
        return node;
    }
    // SAFETY: `context` is the Rewrite of split_aggregates; `node` a valid node.
    unsafe {
        let rw = &mut *(context as *mut Rewrite);
        if rw.failed {
            return node;
        }
        if let Some((expr, attno)) = rw
            .groups
            .iter()
            .find(|(g, _)| pg_sys::equal(node.cast(), (*g).cast()))
        {
            return fragment_var(*attno, *expr);
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_Aggref => {
                if let Some((_, combined)) = rw
                    .aggregates
                    .iter()
                    .find(|(a, _)| pg_sys::equal(node.cast(), (*a).cast()))
                {
                    return pg_sys::copyObjectImpl((*combined).cast()).cast();
                }
                match split_aggregate(node as *mut pg_sys::Aggref, rw) {
                    Some(combined) => {
                        rw.aggregates.push((node, combined));
                        pg_sys::copyObjectImpl(combined.cast()).cast()
                    }
                    None => {
                        rw.failed = true;
                        node
                    }
                }
            }
            // A column outside aggregates and grouping expressions (functionally
            // dependent on a grouped primary key): not available after grouping.
            pg_sys::NodeTag::T_Var => {
                rw.failed = true;
                node
            }
            _ => expression_tree_mutator(node, mutate, context),
        }
    }
}

/// Adds an aggregate's partial form to the fragment; returns its combining expression.
unsafe fn split_aggregate(a: *mut pg_sys::Aggref, rw: &mut Rewrite) -> Option<*mut pg_sys::Node> {
    // SAFETY: a valid Aggref of the statement; catalog lookups.
    unsafe {
        if !(*a).aggdistinct.is_null()
            || !(*a).aggdirectargs.is_null()
            || (*a).aggkind != AGGKIND_NORMAL
            || (*a).agglevelsup != 0
            || (*a).aggfnoid.to_u32() >= 16384
            || !shippable::is_shippable_part(a.cast(), &mut rw.max_param)
        {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(pg_sys::get_func_name((*a).aggfnoid))
            .to_string_lossy()
            .into_owned();
        let argtypes = PgList::<pg_sys::Oid>::from_pg((*a).aggargtypes);
        let argtype = if argtypes.is_empty() {
            pg_sys::InvalidOid
        } else {
            pg_sys::list_nth_oid((*a).aggargtypes, 0)
        };
        let result = (*a).aggtype;
        let int8 = pg_sys::INT8OID;
        match name.as_str() {
            "count" => {
                let attno = rw.add(a.cast());
                let sum = function("synapse", "sum_count", &[int8])?;
                Some(aggregate(
                    sum,
                    int8,
                    pg_sys::InvalidOid,
                    fragment_var(attno, a.cast()),
                ))
            }
            "min" | "max" | "bool_and" | "bool_or" | "every" | "bit_and" | "bit_or" | "bit_xor"
                if argtype == result =>
            {
                let attno = rw.add(a.cast());
                let var = fragment_var(attno, a.cast());
                Some(aggregate((*a).aggfnoid, result, (*a).aggcollid, var))
            }
            "sum" => {
                let combining = if result == int8
                    && (argtype == pg_sys::INT2OID || argtype == pg_sys::INT4OID)
                {
                    function("synapse", "sum_int8", &[int8])?
                } else {
                    let sum = function("pg_catalog", "sum", &[result])?;
                    if pg_sys::get_func_rettype(sum) != result {
                        return None;
                    }
                    sum
                };
                let attno = rw.add(a.cast());
                let var = fragment_var(attno, a.cast());
                Some(aggregate(combining, result, (*a).aggcollid, var))
            }
            "avg"
                if [
                    pg_sys::INT2OID,
                    pg_sys::INT4OID,
                    int8,
                    pg_sys::NUMERICOID,
                    pg_sys::FLOAT8OID,
                ]
                .contains(&argtype) =>
            {
                // Partial sum and count; avg = sum of sums / sum of counts.
                let partial_sum = function("pg_catalog", "sum", &[argtype])?;
                let sum_type = pg_sys::get_func_rettype(partial_sum);
                let count = function("pg_catalog", "count", &[pg_sys::ANYOID])?;
                let sum_of_sums = function("pg_catalog", "sum", &[sum_type])?;
                let total_type = pg_sys::get_func_rettype(sum_of_sums);
                let finish = function("synapse", "avg_final", &[total_type, int8])?;
                if pg_sys::get_func_rettype(finish) != result {
                    return None;
                }
                let s = pg_sys::copyObjectImpl(a.cast()) as *mut pg_sys::Aggref;
                (*s).aggfnoid = partial_sum;
                (*s).aggtype = sum_type;
                let c = pg_sys::copyObjectImpl(a.cast()) as *mut pg_sys::Aggref;
                (*c).aggfnoid = count;
                (*c).aggtype = int8;
                let s_attno = rw.add(s.cast());
                let c_attno = rw.add(c.cast());
                let mut args = PgList::<pg_sys::Node>::new();
                args.push(aggregate(
                    sum_of_sums,
                    total_type,
                    pg_sys::InvalidOid,
                    fragment_var(s_attno, s.cast()),
                ));
                let sum_count = function("synapse", "sum_count", &[int8])?;
                args.push(aggregate(
                    sum_count,
                    int8,
                    pg_sys::InvalidOid,
                    fragment_var(c_attno, c.cast()),
                ));
                Some(
                    pg_sys::makeFuncExpr(
                        finish,
                        result,
                        args.into_pg(),
                        pg_sys::InvalidOid,
                        pg_sys::InvalidOid,
                        pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                    )
                    .cast(),
                )
            }
            _ => None,
        }
    }
}

impl Rewrite {
    /// Adds a column to the fragment; returns its number.
    unsafe fn add(&mut self, expr: *mut pg_sys::Node) -> usize {
        let resno = self.fragment_tlist.len() as i16 + 1;
        // SAFETY: a valid expression, copied.
        unsafe {
            let copy = pg_sys::copyObjectImpl(expr.cast()) as *mut pg_sys::Expr;
            self.fragment_tlist.push(pg_sys::makeTargetEntry(
                copy,
                resno,
                std::ptr::null_mut(),
                false,
            ));
        }
        self.fragment_tlist.len()
    }
}

/// `fnoid(arg)`, an aggregate of the combining query.
unsafe fn aggregate(
    fnoid: pg_sys::Oid,
    result: pg_sys::Oid,
    collation: pg_sys::Oid,
    arg: *mut pg_sys::Node,
) -> *mut pg_sys::Node {
    // SAFETY: a new node; the planner fills the transition fields.
    unsafe {
        let a = pg_sys::palloc0(std::mem::size_of::<pg_sys::Aggref>()) as *mut pg_sys::Aggref;
        (*a).xpr.type_ = pg_sys::NodeTag::T_Aggref;
        (*a).aggfnoid = fnoid;
        (*a).aggtype = result;
        (*a).aggcollid = collation;
        (*a).inputcollid = pg_sys::exprCollation(arg);
        (*a).aggargtypes = pg_sys::lappend_oid(std::ptr::null_mut(), pg_sys::exprType(arg));
        let mut args = PgList::<pg_sys::TargetEntry>::new();
        args.push(pg_sys::makeTargetEntry(
            arg.cast(),
            1,
            std::ptr::null_mut(),
            false,
        ));
        (*a).args = args.into_pg();
        (*a).aggkind = AGGKIND_NORMAL;
        (*a).aggsplit = pg_sys::AggSplit::AGGSPLIT_SIMPLE;
        (*a).aggno = -1;
        (*a).aggtransno = -1;
        (*a).location = -1;
        a.cast()
    }
}

/// `synapse.fragment_rows(sql, shard_count, max_param) AS fragment(c1 type1, ...)`.
unsafe fn fragment_rte(
    sql: &str,
    shard_count: u32,
    max_param: i32,
    tlist: &PgList<pg_sys::TargetEntry>,
) -> Option<*mut pg_sys::RangeTblEntry> {
    let oid = fragment_rows_oid()?;
    // SAFETY: new nodes in the planner's memory context.
    unsafe {
        let text = pg_sys::cstring_to_text(super::pullup::pstrdup(sql));
        let mut args = PgList::<pg_sys::Node>::new();
        args.push(
            pg_sys::makeConst(
                pg_sys::TEXTOID,
                -1,
                pg_sys::DEFAULT_COLLATION_OID,
                -1,
                pg_sys::Datum::from(text as *mut c_void),
                false,
                false,
            )
            .cast(),
        );
        for n in [shard_count as i32, max_param] {
            args.push(
                pg_sys::makeConst(
                    pg_sys::INT4OID,
                    -1,
                    pg_sys::InvalidOid,
                    4,
                    pg_sys::Datum::from(n),
                    false,
                    true,
                )
                .cast(),
            );
        }
        let call = pg_sys::makeFuncExpr(
            oid,
            pg_sys::RECORDOID,
            args.into_pg(),
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        (*call).funcretset = true;

        let rtf = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblFunction>())
            as *mut pg_sys::RangeTblFunction;
        (*rtf).type_ = pg_sys::NodeTag::T_RangeTblFunction;
        (*rtf).funcexpr = call.cast();
        (*rtf).funccolcount = tlist.len() as i32;
        let mut names = PgList::<pg_sys::Node>::new();
        for (i, te) in tlist.iter_ptr().enumerate() {
            let expr = (*te).expr.cast();
            names.push(pg_sys::makeString(super::pullup::pstrdup(&format!("c{}", i + 1))).cast());
            (*rtf).funccoltypes = pg_sys::lappend_oid((*rtf).funccoltypes, pg_sys::exprType(expr));
            (*rtf).funccoltypmods =
                pg_sys::lappend_int((*rtf).funccoltypmods, pg_sys::exprTypmod(expr));
            (*rtf).funccolcollations =
                pg_sys::lappend_oid((*rtf).funccolcollations, pg_sys::exprCollation(expr));
        }
        let names = names.into_pg();
        (*rtf).funccolnames = names;

        let rte = pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>())
            as *mut pg_sys::RangeTblEntry;
        (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
        (*rte).rtekind = pg_sys::RTEKind::RTE_FUNCTION;
        let mut functions = PgList::<pg_sys::RangeTblFunction>::new();
        functions.push(rtf);
        (*rte).functions = functions.into_pg();
        let alias = pg_sys::makeAlias(c"fragment".as_ptr(), pg_sys::list_copy(names));
        (*rte).eref = alias;
        (*rte).inFromCl = true;
        Some(rte)
    }
}

static PATH_METHODS: super::pullup::PathMethods =
    super::pullup::PathMethods(pg_sys::CustomPathMethods {
        CustomName: c"SynapseScan".as_ptr(),
        PlanCustomPath: Some(plan_fragment_path),
        ReparameterizeCustomPathByChild: None,
    });

thread_local! {
    /// The fragment rows entry of the combining query PostgreSQL is planning, if any.
    static PLANNING_SPLIT: std::cell::Cell<*const pg_sys::RangeTblEntry> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// Runs `plan` (PostgreSQL planning `master`, a combining query [`split`] built) with its
/// fragment rows entry recognized. Only that entry stands for a fragment: a call of
/// `synapse.fragment_rows()` written by a client (even one planned meanwhile, say by a
/// function evaluated at planning) stays an ordinary call, which raises an error, so no
/// client can run SQL of its choosing on other nodes through it.
///
/// # Safety
/// `master` must be a Query [`split`] returned.
pub unsafe fn planning_split<R>(master: *mut pg_sys::Query, plan: impl FnOnce() -> R) -> R {
    struct Reset(*const pg_sys::RangeTblEntry);
    impl Drop for Reset {
        fn drop(&mut self) {
            PLANNING_SPLIT.with(|p| p.set(self.0));
        }
    }
    // SAFETY: the combining query's range table starts with the fragment rows (the
    // planner keeps range table entries in place).
    let entry = unsafe {
        PgList::<pg_sys::RangeTblEntry>::from_pg((*master).rtable)
            .get_ptr(0)
            .map_or(std::ptr::null(), |e| e as *const _)
    };
    let _reset = Reset(PLANNING_SPLIT.with(|p| p.replace(entry)));
    plan()
}

/// Whether a range table entry is the fragment rows of a split statement being planned.
///
/// # Safety
/// `rte` must be a valid range table entry.
pub unsafe fn is_fragment_rows(rte: *mut pg_sys::RangeTblEntry) -> bool {
    // SAFETY: a valid entry.
    unsafe {
        if (*rte).rtekind != pg_sys::RTEKind::RTE_FUNCTION
            || !std::ptr::eq(PLANNING_SPLIT.with(|p| p.get()), rte)
        {
            return false;
        }
        let functions = PgList::<pg_sys::RangeTblFunction>::from_pg((*rte).functions);
        let Some(rtf) = functions.get_ptr(0) else {
            return false;
        };
        let call = (*rtf).funcexpr;
        functions.len() == 1
            && !call.is_null()
            && (*call).type_ == pg_sys::NodeTag::T_FuncExpr
            && Some((*(call as *mut pg_sys::FuncExpr)).funcid) == fragment_rows_oid()
    }
}

/// Replaces the paths of the fragment rows with the one custom path that fetches them.
///
/// # Safety
/// Planner arguments of `set_rel_pathlist_hook` for a fragment rows entry.
pub unsafe fn set_fragment_path(rel: *mut pg_sys::RelOptInfo) {
    // SAFETY: a valid base relation.
    unsafe {
        let path = super::pullup::only_path(rel, &PATH_METHODS.0);
        pg_sys::add_path(rel, path.cast());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn plan_fragment_path(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    _best_path: *mut pg_sys::CustomPath,
    tlist: *mut pg_sys::List,
    clauses: *mut pg_sys::List,
    _custom_plans: *mut pg_sys::List,
) -> *mut pg_sys::Plan {
    // SAFETY: called by create_plan with valid pointers; nodes are palloc'd in the
    // planner's memory context.
    unsafe {
        let relid = (*rel).relid;
        let rte = *(*root).simple_rte_array.add(relid as usize);
        let rtf = PgList::<pg_sys::RangeTblFunction>::from_pg((*rte).functions)
            .get_ptr(0)
            .expect("fragment rows");
        let args =
            PgList::<pg_sys::Node>::from_pg((*((*rtf).funcexpr as *mut pg_sys::FuncExpr)).args);
        let constant = |i: usize| {
            let c = args.get_ptr(i).expect("fragment_rows argument") as *mut pg_sys::Const;
            assert_eq!((*c).xpr.type_, pg_sys::NodeTag::T_Const);
            (*c).constvalue
        };
        let sql = pg_sys::text_to_cstring(constant(0).cast_mut_ptr());
        let shard_count = constant(1).value() as i32;
        let max_param = constant(2).value() as i32;

        // The scan's tuple: every column of the fragment.
        let mut scan_tlist = PgList::<pg_sys::TargetEntry>::new();
        let types = (*rtf).funccoltypes;
        for i in 0..(*rtf).funccolcount {
            let var = pg_sys::makeVar(
                relid as i32,
                i as i16 + 1,
                pg_sys::list_nth_oid(types, i),
                pg_sys::list_nth_int((*rtf).funccoltypmods, i),
                pg_sys::list_nth_oid((*rtf).funccolcollations, i),
                0,
            );
            scan_tlist.push(pg_sys::makeTargetEntry(
                var.cast(),
                i as i16 + 1,
                std::ptr::null_mut(),
                false,
            ));
        }
        let cscan =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomScan>()) as *mut pg_sys::CustomScan;
        (*cscan).scan.plan.type_ = pg_sys::NodeTag::T_CustomScan;
        (*cscan).scan.plan.targetlist = tlist;
        (*cscan).scan.plan.qual = pg_sys::extract_actual_clauses(clauses, false);
        (*cscan).scan.scanrelid = 0;
        (*cscan).custom_scan_tlist = scan_tlist.into_pg();
        let mut private = PgList::<pg_sys::Node>::new();
        private.push(pg_sys::makeString(super::pullup::pstrdup("pushdown")).cast());
        private.push(pg_sys::makeString(sql).cast());
        private.push(pg_sys::makeInteger(shard_count).cast());
        private.push(pg_sys::makeInteger(max_param).cast());
        (*cscan).custom_private = private.into_pg();
        (*cscan).methods = &crate::executor::remote_scan::SCAN_METHODS.0;
        cscan.cast()
    }
}
