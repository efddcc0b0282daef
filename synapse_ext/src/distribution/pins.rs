//! Shard keys pinned by a statement: clauses `key = value` whose value is a constant, a
//! parameter, or an expression of parameters through immutable functions (`$1 + 1`,
//! `$1[$2]`: PL/pgSQL passes `arr[i]` so), and the shard such a value belongs to.

use std::ffi::c_void;

use pgrx::pg_sys;
use pgrx::PgList;

use super::shard_key::{self, KeyType};
use crate::executor::common::param;

/// `node` without binary-compatible relabelings (`varchar` read as `text`).
///
/// # Safety
/// `node` must be a valid expression node.
pub unsafe fn strip_relabel(mut node: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: reading valid nodes.
    unsafe {
        while (*node).type_ == pg_sys::NodeTag::T_RelabelType {
            node = (*(node as *mut pg_sys::RelabelType)).arg.cast();
        }
        node
    }
}

/// Whether `node` is column `attno` of range table entry `varno` at this query level.
///
/// # Safety
/// `node` must be a valid expression node.
pub unsafe fn is_column(node: *mut pg_sys::Node, varno: u32, attno: i16) -> bool {
    // SAFETY: reading a valid node.
    unsafe {
        let node = strip_relabel(node);
        (*node).type_ == pg_sys::NodeTag::T_Var && {
            let v = node as *mut pg_sys::Var;
            (*v).varno as u32 == varno && (*v).varattno == attno && (*v).varlevelsup == 0
        }
    }
}

/// Whether `node` is a value known before the statement reads any row: a constant, an
/// external parameter, or an expression of those through immutable functions and
/// operators only — every node computes it alike, so it names one shard.
///
/// # Safety
/// `node` must be a valid expression node.
pub unsafe fn is_value(node: *mut pg_sys::Node) -> bool {
    // SAFETY: reading a valid node; catalog lookups for the functions' volatility.
    unsafe {
        let node = strip_relabel(node);
        match (*node).type_ {
            pg_sys::NodeTag::T_Const => true,
            pg_sys::NodeTag::T_Param => {
                (*(node as *mut pg_sys::Param)).paramkind == pg_sys::ParamKind::PARAM_EXTERN
            }
            _ => {
                !pg_sys::contain_mutable_functions(node)
                    && !pg_sys::expression_returns_set(node)
                    && !not_a_value(node, std::ptr::null_mut())
            }
        }
    }
}

/// Finds what a value cannot hold: a column, a parameter other than an external one, a
/// sub-query, an aggregate or window function.
unsafe extern "C-unwind" fn not_a_value(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: a valid node of the expression being walked.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_Param => {
                (*(node as *mut pg_sys::Param)).paramkind != pg_sys::ParamKind::PARAM_EXTERN
            }
            pg_sys::NodeTag::T_Var
            | pg_sys::NodeTag::T_SubLink
            | pg_sys::NodeTag::T_SubPlan
            | pg_sys::NodeTag::T_Aggref
            | pg_sys::NodeTag::T_WindowFunc
            | pg_sys::NodeTag::T_GroupingFunc
            | pg_sys::NodeTag::T_CurrentOfExpr
            | pg_sys::NodeTag::T_NextValueExpr
            | pg_sys::NodeTag::T_PlaceHolderVar => true,
            _ => crate::planner::router::expression_tree_walker(node, not_a_value, context),
        }
    }
}

/// `node` as a constant or external parameter, after folding immutable functions of
/// constants (`5::bigint` arrives as a call of `int8(5)`), if it is one.
///
/// # Safety
/// `node` must be a valid expression node; it is copied, not changed.
pub unsafe fn folded_value(node: *mut pg_sys::Node) -> Option<*mut pg_sys::Node> {
    // SAFETY: folding a copy; without planner state, parameters are left as they are.
    unsafe {
        if is_value(node) {
            return Some(strip_relabel(node));
        }
        let copy = pg_sys::copyObjectImpl(node.cast()) as *mut pg_sys::Node;
        let folded = pg_sys::eval_const_expressions(std::ptr::null_mut(), copy);
        is_value(folded).then(|| strip_relabel(folded))
    }
}

/// If `clause` is `key = value` (either way round, with an equality of the key's hash
/// operator family `opfamily`), the value.
///
/// # Safety
/// `clause` must be a valid expression node.
pub unsafe fn key_value(
    clause: *mut pg_sys::Node,
    varno: u32,
    key_attno: i16,
    opfamily: pg_sys::Oid,
) -> Option<*mut pg_sys::Node> {
    // SAFETY: reading valid nodes; a catalog lookup.
    unsafe {
        if (*clause).type_ != pg_sys::NodeTag::T_OpExpr {
            return None;
        }
        let op = clause as *mut pg_sys::OpExpr;
        let args = PgList::<pg_sys::Node>::from_pg((*op).args);
        if args.len() != 2 || !pg_sys::op_in_opfamily((*op).opno, opfamily) {
            return None;
        }
        let (a, b) = (args.get_ptr(0)?, args.get_ptr(1)?);
        if is_column(a, varno, key_attno) {
            folded_value(b)
        } else if is_column(b, varno, key_attno) {
            folded_value(a)
        } else {
            None
        }
    }
}

/// The clauses ANDed at the top of `quals` (an expression, an implicit-AND list, or NULL).
///
/// # Safety
/// `quals` must be NULL or a valid expression node or list.
pub unsafe fn and_clauses(quals: *mut pg_sys::Node) -> Vec<*mut pg_sys::Node> {
    let mut out = Vec::new();
    // SAFETY: reading valid nodes.
    unsafe { collect_and(quals, &mut out) };
    out
}

unsafe fn collect_and(node: *mut pg_sys::Node, out: &mut Vec<*mut pg_sys::Node>) {
    if node.is_null() {
        return;
    }
    // SAFETY: reading valid nodes.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_List => {
                for n in PgList::<pg_sys::Node>::from_pg(node as *mut pg_sys::List).iter_ptr() {
                    collect_and(n, out);
                }
            }
            pg_sys::NodeTag::T_BoolExpr
                if (*(node as *mut pg_sys::BoolExpr)).boolop == pg_sys::BoolExprType::AND_EXPR =>
            {
                collect_and((*(node as *mut pg_sys::BoolExpr)).args.cast(), out);
            }
            _ => out.push(node),
        }
    }
}

/// Computes the expression `node` (an [`is_value`] one) with the parameters `params` and
/// returns `with(value)`; `None` while the parameters are not known (a generic plan). An
/// error computing it (`1 / $1` with 0) is raised, as PostgreSQL raises it when it folds the
/// expression for a custom plan or prunes partitions with it.
///
/// # Safety
/// As [`value_of`].
unsafe fn evaluated<T>(
    node: *mut pg_sys::Node,
    params: pg_sys::ParamListInfo,
    with: impl FnOnce((pg_sys::Datum, bool)) -> T,
) -> Option<T> {
    // SAFETY: a standalone expression context in the current memory context, freed after
    // the value (which may live in it) was used.
    unsafe {
        let no_params = params.is_null() || (*params).numParams == 0;
        if no_params && crate::planner::router::max_param_of(node) > 0 {
            return None;
        }
        let econtext = pg_sys::CreateStandaloneExprContext();
        (*econtext).ecxt_param_list_info = params;
        let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_query_memory);
        let state = pg_sys::ExecInitExpr(strip_relabel(node).cast(), std::ptr::null_mut());
        pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
        let mut isnull = false;
        let evalfunc = (*state).evalfunc.expect("an initialized expression");
        let datum = evalfunc(state, econtext, &mut isnull);
        pg_sys::MemoryContextSwitchTo(old);
        let result = with((datum, isnull));
        pg_sys::FreeExprContext(econtext, true);
        Some(result)
    }
}

/// The value of a constant, or of an external parameter of `params`; `None` when it is
/// not known yet (a parameter of a generic plan) or is an expression.
///
/// # Safety
/// `node` must be a valid expression node, `params` NULL or a valid parameter list.
pub unsafe fn value_of(
    node: *mut pg_sys::Node,
    params: pg_sys::ParamListInfo,
) -> Option<(pg_sys::Datum, bool)> {
    // SAFETY: reading valid nodes and the parameter list.
    unsafe {
        let node = strip_relabel(node);
        match (*node).type_ {
            pg_sys::NodeTag::T_Const => {
                let c = node as *mut pg_sys::Const;
                Some(((*c).constvalue, (*c).constisnull))
            }
            pg_sys::NodeTag::T_Param => {
                let p = node as *mut pg_sys::Param;
                if (*p).paramkind != pg_sys::ParamKind::PARAM_EXTERN {
                    return None;
                }
                let param = param(params, (*p).paramid)?;
                (param.ptype == (*p).paramtype).then_some((param.value, param.isnull))
            }
            _ => None,
        }
    }
}

/// The shard of a value among `shard_count`, when the value is known. A NULL key value
/// is in shard 0 (where the rows with a NULL key are; `key = NULL` matches none anyway).
///
/// # Safety
/// As [`value_of`].
pub unsafe fn shard_of_value(
    node: *mut pg_sys::Node,
    params: pg_sys::ParamListInfo,
    shard_count: u32,
) -> Option<u32> {
    // SAFETY: forwarded from the caller.
    unsafe {
        let kt = KeyType::of(pg_sys::exprType(strip_relabel(node)))?;
        let shard = |(datum, isnull): (pg_sys::Datum, bool)| {
            let hash = shard_key::hash_datum(kt, (!isnull).then_some(datum));
            (hash % u64::from(shard_count)) as u32
        };
        match value_of(node, params) {
            Some(value) => Some(shard(value)),
            None => evaluated(node, params, shard),
        }
    }
}
