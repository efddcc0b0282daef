//! Which expressions may run on another node, and their SQL text there.
//!
//! An expression is shippable when every node computes the same value for it: it reads
//! only the scanned table's columns, constants of built-in types and the statement's
//! parameters, calls only immutable built-in functions and operators, and compares with
//! the database's default or the C collation. Anything else (volatile or stable functions
//! such as `now()`, subqueries, outer references, user-defined functions) stays on the
//! coordinator, which evaluates every clause again anyway.
//!
//! The text comes from PostgreSQL's deparser (`deparse_expression`), never from the
//! client's SQL.

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;

use pgrx::pg_sys;

extern "C-unwind" {
    // Not in pgrx's bindings (its walker argument has no prototype in PostgreSQL 15).
    fn expression_tree_walker(
        node: *mut pg_sys::Node,
        walker: unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> bool,
        context: *mut c_void,
    ) -> bool;
}

/// The first oid of user-created objects: below it, objects are the same on every node.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

pub(crate) fn builtin(oid: pg_sys::Oid) -> bool {
    oid.to_u32() < FIRST_NORMAL_OBJECT_ID
}

struct Context {
    /// The relation whose Vars may appear; `None`: any relation of the statement's own
    /// level (a whole query part, see [`is_shippable_part`]).
    varno: Option<u32>,
    max_param: i32,
}

/// Whether `expr` (a clause on the relation numbered `varno`) can be evaluated remotely;
/// raises `max_param` to the highest parameter it uses.
///
/// # Safety
/// `expr` must be a valid expression tree.
pub unsafe fn is_shippable(expr: *mut pg_sys::Node, varno: u32, max_param: &mut i32) -> bool {
    // SAFETY: as documented above.
    unsafe { shippable(expr, Some(varno), max_param) }
}

/// Whether a part of a query (an expression, target entry or join tree over any of its
/// relations, aggregates included) can be evaluated remotely; raises `max_param` to the
/// highest parameter it uses. Whole-row references are refused: they print as `t.*`.
///
/// # Safety
/// `expr` must be a valid tree of a query without sub-queries.
pub unsafe fn is_shippable_part(expr: *mut pg_sys::Node, max_param: &mut i32) -> bool {
    // SAFETY: as documented above.
    unsafe { shippable(expr, None, max_param) }
}

unsafe fn shippable(expr: *mut pg_sys::Node, varno: Option<u32>, max_param: &mut i32) -> bool {
    // SAFETY: a valid tree, checked for mutable functions by PostgreSQL's own walker.
    if unsafe { pg_sys::contain_mutable_functions(expr) } {
        return false;
    }
    let mut ctx = Context {
        varno,
        max_param: *max_param,
    };
    // SAFETY: the walker only reads the tree.
    let refused = unsafe { walk(expr, (&mut ctx as *mut Context).cast()) };
    if !refused {
        *max_param = ctx.max_param;
    }
    !refused
}

fn collation_ok(c: pg_sys::Oid) -> bool {
    c == pg_sys::InvalidOid
        || c == pg_sys::DEFAULT_COLLATION_OID
        || c == pg_sys::C_COLLATION_OID
        || c == pg_sys::POSIX_COLLATION_OID
}

/// Returns true to stop: the node is not shippable.
unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `context` is the Context passed by is_shippable; `node` a valid node.
    unsafe {
        let ctx = &mut *(context as *mut Context);
        use pg_sys::NodeTag::*;
        // The structure of a query part: no values of its own.
        if ctx.varno.is_none()
            && matches!(
                (*node).type_,
                T_TargetEntry | T_FromExpr | T_JoinExpr | T_RangeTblRef | T_SortGroupClause
            )
        {
            return expression_tree_walker(node, walk, context);
        }
        // Lists and CASE arms carry no collation of their own.
        if !matches!((*node).type_, T_List | T_CaseWhen)
            && (!collation_ok(pg_sys::exprCollation(node))
                || !collation_ok(pg_sys::exprInputCollation(node)))
        {
            return true;
        }
        match (*node).type_ {
            T_Var => {
                let var = node as *mut pg_sys::Var;
                let attno_ok = match ctx.varno {
                    Some(_) => (*var).varattno >= 0,
                    None => (*var).varattno > 0,
                };
                if ctx.varno.is_some_and(|v| (*var).varno as u32 != v)
                    || (*var).varlevelsup != 0
                    || !attno_ok
                {
                    return true;
                }
                false
            }
            T_Const => !builtin((*(node as *mut pg_sys::Const)).consttype),
            T_Param => {
                let p = node as *mut pg_sys::Param;
                if (*p).paramkind != pg_sys::ParamKind::PARAM_EXTERN {
                    return true;
                }
                ctx.max_param = ctx.max_param.max((*p).paramid);
                false
            }
            T_OpExpr | T_DistinctExpr | T_NullIfExpr => {
                let op = node as *mut pg_sys::OpExpr;
                !builtin((*op).opno) || expression_tree_walker(node, walk, context)
            }
            T_ScalarArrayOpExpr => {
                let op = node as *mut pg_sys::ScalarArrayOpExpr;
                !builtin((*op).opno) || expression_tree_walker(node, walk, context)
            }
            T_FuncExpr => {
                let f = node as *mut pg_sys::FuncExpr;
                !builtin((*f).funcid) || expression_tree_walker(node, walk, context)
            }
            T_Aggref if ctx.varno.is_none() => {
                let a = node as *mut pg_sys::Aggref;
                !builtin((*a).aggfnoid) || expression_tree_walker(node, walk, context)
            }
            T_RelabelType | T_CoerceViaIO | T_ArrayCoerceExpr | T_CoerceToDomain => {
                !builtin(pg_sys::exprType(node)) || expression_tree_walker(node, walk, context)
            }
            T_BoolExpr | T_NullTest | T_BooleanTest | T_CaseExpr | T_CaseWhen | T_CaseTestExpr
            | T_ArrayExpr | T_CoalesceExpr | T_MinMaxExpr | T_List => {
                if matches!(
                    (*node).type_,
                    T_ArrayExpr | T_CaseExpr | T_CoalesceExpr | T_MinMaxExpr
                ) && !builtin(pg_sys::exprType(node))
                {
                    return true;
                }
                expression_tree_walker(node, walk, context)
            }
            _ => true,
        }
    }
}

/// The SQL text of `expr`, whose Vars belong to relation `varno`, printed as columns of
/// alias `alias` of relation `relid`.
///
/// # Safety
/// `expr` must be a valid expression tree; it is copied, not changed.
pub unsafe fn deparse(
    expr: *mut pg_sys::Node,
    varno: u32,
    alias: &CStr,
    relid: pg_sys::Oid,
) -> String {
    // SAFETY: copies the tree and renumbers its Vars to the one-relation context.
    unsafe {
        let copy = pg_sys::copyObjectImpl(expr.cast()) as *mut pg_sys::Node;
        if varno != 1 {
            pg_sys::ChangeVarNodes(copy, varno as i32, 1, 0);
        }
        let context = pg_sys::deparse_context_for(alias.as_ptr(), relid);
        let text: *mut c_char = pg_sys::deparse_expression(copy, context, true, false);
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}
