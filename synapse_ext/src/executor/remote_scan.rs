//! `SynapseScan` at run time: sends the scan's SQL to every node holding a shard it may
//! need (in parallel, with the statement's parameters), reads this node's shards through
//! SPI meanwhile, and materializes all rows in a tuplestore (spilling past `work_mem`),
//! which rescans replay: the shipped clauses never depend on per-rescan values.
//!
//! Rows of other nodes arrive as text and are read with each column type's input
//! function; rows of this node are copied as datums. PostgreSQL then evaluates every
//! clause of the scan again (`ExecScan`), shipped or not.

use std::ffi::{c_void, CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use crate::distribution::{ddl, guard, metadata, shard_key};
use crate::remote::connection::NodeTarget;
use crate::remote::pool;

pub struct ScanMethods(pub pg_sys::CustomScanMethods);
// SAFETY: immutable tables of function pointers; backends are single-threaded.
unsafe impl Sync for ScanMethods {}
struct ExecMethods(pg_sys::CustomExecMethods);
// SAFETY: as above.
unsafe impl Sync for ExecMethods {}

pub static SCAN_METHODS: ScanMethods = ScanMethods(pg_sys::CustomScanMethods {
    CustomName: c"SynapseScan".as_ptr(),
    CreateCustomScanState: Some(create_state),
});

static EXEC_METHODS: ExecMethods = ExecMethods(pg_sys::CustomExecMethods {
    CustomName: c"SynapseScan".as_ptr(),
    BeginCustomScan: Some(begin),
    ExecCustomScan: Some(exec),
    EndCustomScan: Some(end),
    ReScanCustomScan: Some(rescan),
    MarkPosCustomScan: None,
    RestrPosCustomScan: None,
    EstimateDSMCustomScan: None,
    InitializeDSMCustomScan: None,
    ReInitializeDSMCustomScan: None,
    InitializeWorkerCustomScan: None,
    ShutdownCustomScan: None,
    ExplainCustomScan: Some(explain),
});

/// Registers the scan's methods by name (plans are copied and serialized by name).
pub fn register() {
    // SAFETY: _PG_init; the methods live as long as the library.
    unsafe { pg_sys::RegisterCustomScanMethods(&SCAN_METHODS.0) };
}

/// The scan's node: PostgreSQL's part first, then ours.
#[repr(C)]
struct ScanNode {
    css: pg_sys::CustomScanState,
    run: *mut Runtime,
}

/// One column fetched: its number in the table and how to read its text.
struct Column {
    attno: usize,
    input: pg_sys::FmgrInfo,
    ioparam: pg_sys::Oid,
    typmod: i32,
}

struct Target {
    node: NodeTarget,
    local: bool,
}

struct Runtime {
    /// Reads the tuplestore's minimal tuples; copied into the (virtual) scan slot.
    read_slot: *mut pg_sys::TupleTableSlot,
    /// Parameters $1..$max_param go with the SQL.
    max_param: i32,
    sql: String,
    targets: Vec<Target>,
    /// Shards the clauses leave (pruned by the shard key), of the table's shard count.
    shards: (usize, usize),
    columns: Vec<Column>,
    store: *mut pg_sys::Tuplestorestate,
    filled: bool,
}

#[pg_guard]
unsafe extern "C-unwind" fn create_state(_cscan: *mut pg_sys::CustomScan) -> *mut pg_sys::Node {
    // SAFETY: a zeroed node of our size, in the executor's memory context.
    unsafe {
        let node = pg_sys::palloc0(std::mem::size_of::<ScanNode>()) as *mut ScanNode;
        (*node).css.ss.ps.type_ = pg_sys::NodeTag::T_CustomScanState;
        (*node).css.methods = &EXEC_METHODS.0;
        node.cast()
    }
}

unsafe extern "C-unwind" fn free_runtime(arg: *mut c_void) {
    // SAFETY: `arg` is the Box leaked in `begin`, freed once, when the query's memory
    // context goes away.
    drop(unsafe { Box::from_raw(arg as *mut Runtime) });
}

fn str_val(node: *mut pg_sys::Node) -> String {
    // SAFETY: a String node made by the planner.
    unsafe { CStr::from_ptr((*(node as *mut pg_sys::String)).sval) }
        .to_string_lossy()
        .into_owned()
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(css: *mut pg_sys::CustomScanState, estate: *mut pg_sys::EState, _eflags: i32) {
    // SAFETY: called by ExecInitCustomScan with our node, after it set up the scan slot.
    unsafe {
        let node = css as *mut ScanNode;
        let cscan = (*css).ss.ps.plan as *mut pg_sys::CustomScan;
        let private = PgList::<pg_sys::Node>::from_pg((*cscan).custom_private);
        let schema = str_val(private.get_ptr(0).expect("schema"));
        let name = str_val(private.get_ptr(1).expect("table"));
        let needed = PgList::<pg_sys::Node>::from_pg(private.get_ptr(2).expect("columns") as *mut pg_sys::List);
        let max_param = (*(private.get_ptr(3).expect("parameters") as *mut pg_sys::Integer)).ival;
        let relid = (*(*css).ss.ss_currentRelation).rd_id;
        let scanrelid = (*cscan).scan.scanrelid;

        let desc = (*(*css).ss.ss_ScanTupleSlot).tts_tupleDescriptor;
        let mut columns = Vec::new();
        let mut select = Vec::new();
        for n in needed.iter_ptr() {
            let attno = (*(n as *mut pg_sys::Integer)).ival as usize;
            let attr = (*desc).attrs.as_ptr().add(attno - 1);
            if (*attr).attisdropped {
                continue;
            }
            let mut input = pg_sys::Oid::INVALID;
            let mut ioparam = pg_sys::Oid::INVALID;
            pg_sys::getTypeInputInfo((*attr).atttypid, &mut input, &mut ioparam);
            let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info_cxt(input, &mut finfo, (*estate).es_query_cxt);
            let attname = CStr::from_ptr((*attr).attname.data.as_ptr()).to_string_lossy();
            select.push(format!("s.{}", ddl::quote_ident(&attname)));
            columns.push(Column {
                attno,
                input: finfo,
                ioparam,
                typmod: (*attr).atttypmod,
            });
        }
        if select.is_empty() {
            select.push("1".into());
        }
        let quals = PgList::<pg_sys::Node>::from_pg((*cscan).custom_exprs);
        let mut sql = format!(
            "SELECT {} FROM {} s",
            select.join(", "),
            ddl::qualified(&schema, &name)
        );
        let clauses: Vec<String> = quals
            .iter_ptr()
            .map(|q| super::super::planner::shippable::deparse(q, scanrelid, c"s", relid))
            .collect();
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }

        let (targets, shards) = targets(&schema, &name, relid, scanrelid, &quals, estate);
        let read_slot = pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsMinimalTuple);
        let run = Box::into_raw(Box::new(Runtime {
            read_slot,
            max_param,
            sql,
            targets,
            shards,
            columns,
            store: std::ptr::null_mut(),
            filled: false,
        }));
        (*node).run = run;
        let callback = pg_sys::MemoryContextAllocZero(
            (*estate).es_query_cxt,
            std::mem::size_of::<pg_sys::MemoryContextCallback>(),
        ) as *mut pg_sys::MemoryContextCallback;
        (*callback).func = Some(free_runtime);
        (*callback).arg = run.cast();
        pg_sys::MemoryContextRegisterResetCallback((*estate).es_query_cxt, callback);
    }
}

/// The nodes to ask: those holding shards the clauses do not rule out. A clause
/// `key = constant` (or parameter) leaves one shard.
unsafe fn targets(
    schema: &str,
    name: &str,
    relid: pg_sys::Oid,
    scanrelid: u32,
    quals: &PgList<pg_sys::Node>,
    estate: *mut pg_sys::EState,
) -> (Vec<Target>, (usize, usize)) {
    let entry = metadata::table_entry(schema, name).unwrap_or_else(|| {
        pgrx::error!("table {schema}.{name} is partitioned by synapse but missing from synapse.table_catalog")
    });
    let shard_count = entry.shard_count.unwrap_or(1);
    let map = metadata::placements(shard_count);
    let me = metadata::local_node_id();
    let mut shards: Vec<usize> = (0..map.len()).collect();
    // SAFETY: quals are valid expression trees of this scan; estate is the executor's.
    if let Some(key) = entry.shard_key.as_deref() {
        if let Some(shard) = unsafe { pinned_shard(relid, scanrelid, key, shard_count, quals, estate) } {
            shards = vec![shard as usize];
        }
    }
    let nodes = metadata::nodes();
    let mut targets: Vec<Target> = nodes
        .into_iter()
        .filter(|n| shards.iter().any(|s| map.get(*s) == Some(&n.id)))
        .map(|n| Target {
            local: n.id == me,
            node: n,
        })
        .collect();
    targets.sort_by_key(|t| t.local);
    (targets, (shards.len(), map.len()))
}

/// The shard a `key = value` clause pins the scan to, if there is one.
unsafe fn pinned_shard(
    relid: pg_sys::Oid,
    scanrelid: u32,
    key: &str,
    shard_count: u32,
    quals: &PgList<pg_sys::Node>,
    estate: *mut pg_sys::EState,
) -> Option<u32> {
    // SAFETY: catalog lookups and reads of valid expression nodes.
    unsafe {
        let key_c = CString::new(key).ok()?;
        let key_attno = pg_sys::get_attnum(relid, key_c.as_ptr());
        let opfamily = guard::key_opfamily(relid)?;
        for q in quals.iter_ptr() {
            if (*q).type_ != pg_sys::NodeTag::T_OpExpr {
                continue;
            }
            let op = q as *mut pg_sys::OpExpr;
            let args = PgList::<pg_sys::Node>::from_pg((*op).args);
            if args.len() != 2 || !pg_sys::op_in_opfamily((*op).opno, opfamily) {
                continue;
            }
            let (a, b) = (args.get_ptr(0)?, args.get_ptr(1)?);
            let value = if is_key_var(a, scanrelid, key_attno) {
                b
            } else if is_key_var(b, scanrelid, key_attno) {
                a
            } else {
                continue;
            };
            let Some((datum, isnull)) = value_of(value, estate) else {
                continue;
            };
            let Some(kt) = shard_key::KeyType::of(pg_sys::exprType(value)) else {
                continue;
            };
            // `key = NULL` is never true: no shard; still, ask shard 0's node (empty answer).
            let hash = shard_key::hash_datum(kt, (!isnull).then_some(datum));
            return Some((hash % u64::from(shard_count)) as u32);
        }
        None
    }
}

unsafe fn is_key_var(node: *mut pg_sys::Node, scanrelid: u32, attno: i16) -> bool {
    // SAFETY: reading a valid node.
    unsafe {
        let node = strip_relabel(node);
        (*node).type_ == pg_sys::NodeTag::T_Var && {
            let v = node as *mut pg_sys::Var;
            (*v).varno as u32 == scanrelid && (*v).varattno == attno && (*v).varlevelsup == 0
        }
    }
}

unsafe fn strip_relabel(mut node: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: reading valid nodes.
    unsafe {
        while (*node).type_ == pg_sys::NodeTag::T_RelabelType {
            node = (*(node as *mut pg_sys::RelabelType)).arg.cast();
        }
        node
    }
}

/// The value of a constant or external parameter.
unsafe fn value_of(node: *mut pg_sys::Node, estate: *mut pg_sys::EState) -> Option<(pg_sys::Datum, bool)> {
    // SAFETY: reading valid nodes and the executor's parameter list.
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
                let param = param((*estate).es_param_list_info, (*p).paramid)?;
                (param.ptype == (*p).paramtype).then_some((param.value, param.isnull))
            }
            _ => None,
        }
    }
}

/// External parameter `id` (1-based) of a parameter list.
unsafe fn param(list: pg_sys::ParamListInfo, id: i32) -> Option<pg_sys::ParamExternData> {
    // SAFETY: a valid parameter list; fetch hooks are called as PostgreSQL documents.
    unsafe {
        if list.is_null() || id < 1 || id > (*list).numParams {
            return None;
        }
        if let Some(fetch) = (*list).paramFetch {
            let mut workspace: pg_sys::ParamExternData = std::mem::zeroed();
            let p = fetch(list, id, false, &mut workspace);
            return (!p.is_null()).then(|| *p);
        }
        Some(*(*list).params.as_ptr().add(id as usize - 1))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn exec(css: *mut pg_sys::CustomScanState) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our node; ExecScan calls back with its ScanState.
    unsafe { pg_sys::ExecScan(&mut (*css).ss, Some(next), Some(recheck)) }
}

#[pg_guard]
unsafe extern "C-unwind" fn recheck(_ss: *mut pg_sys::ScanState, _slot: *mut pg_sys::TupleTableSlot) -> bool {
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn next(ss: *mut pg_sys::ScanState) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: `ss` is the ScanState of our node.
    unsafe {
        let node = ss as *mut ScanNode;
        let run = &mut *(*node).run;
        if !run.filled {
            fill(node, run);
        }
        let slot = (*ss).ss_ScanTupleSlot;
        if pg_sys::tuplestore_gettupleslot(run.store, true, false, run.read_slot) {
            pg_sys::ExecCopySlot(slot, run.read_slot)
        } else {
            pg_sys::ExecClearTuple(slot)
        }
    }
}

/// Fetches all rows into the tuplestore.
unsafe fn fill(node: *mut ScanNode, run: &mut Runtime) {
    // SAFETY: called from `next` with our node and runtime; all PostgreSQL calls are on
    // the main thread, inside the executor.
    unsafe {
        let estate = (*node).css.ss.ps.state;
        let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
        run.store = pg_sys::tuplestore_begin_heap(false, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);

        let params = Params::of((*estate).es_param_list_info, run.max_param);
        let texts: Vec<Option<&str>> = params.texts.iter().map(|t| t.as_deref()).collect();
        let sql = run.sql.clone();
        for t in run.targets.iter().filter(|t| !t.local) {
            pool::in_transaction(&t.node, false, |c| c.send(&sql, &texts));
        }
        if run.targets.iter().any(|t| t.local) {
            read_local(node, run, &params);
        }
        for t in run.targets.iter().filter(|t| !t.local) {
            let rows = pool::in_transaction(&t.node, false, |c| c.finish(None));
            let slot = (*node).css.ss.ss_ScanTupleSlot;
            let econtext = (*node).css.ss.ps.ps_ExprContext;
            for row in rows.rows {
                let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
                clear(slot);
                for (column, value) in run.columns.iter_mut().zip(row) {
                    let Some(value) = value else {
                        continue;
                    };
                    let text = CString::new(value).expect("no NUL in a value's text");
                    *(*slot).tts_values.add(column.attno - 1) = pg_sys::InputFunctionCall(
                        &mut column.input,
                        text.as_ptr() as *mut _,
                        column.ioparam,
                        column.typmod,
                    );
                    *(*slot).tts_isnull.add(column.attno - 1) = false;
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                pg_sys::tuplestore_puttupleslot(run.store, slot);
                pg_sys::MemoryContextSwitchTo(old);
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            }
        }
        pg_sys::ExecClearTuple((*node).css.ss.ss_ScanTupleSlot);
        run.filled = true;
    }
}

/// Empties a virtual slot: every column NULL.
unsafe fn clear(slot: *mut pg_sys::TupleTableSlot) {
    // SAFETY: a valid slot with natts values.
    unsafe {
        pg_sys::ExecClearTuple(slot);
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        for i in 0..natts {
            *(*slot).tts_isnull.add(i) = true;
            *(*slot).tts_values.add(i) = pg_sys::Datum::from(0);
        }
    }
}

/// This node's rows, through SPI, as a fragment (the guard is off).
unsafe fn read_local(node: *mut ScanNode, run: &mut Runtime, params: &Params) {
    // SAFETY: SPI is connected and finished here; tuples are copied into the tuplestore
    // before SPI frees them.
    unsafe {
        let sql = CString::new(run.sql.as_str()).expect("no NUL in SQL");
        pg_sys::SPI_connect();
        let mut types = params.types.clone();
        let mut values = params.values.clone();
        let nulls: Vec<std::os::raw::c_char> =
            params.nulls.iter().map(|n| if *n { b'n' as _ } else { b' ' as _ }).collect();
        let portal = guard::bypassed(|| {
            pg_sys::SPI_cursor_open_with_args(
                std::ptr::null(),
                sql.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                true,
                0,
            )
        });
        let slot = (*node).css.ss.ss_ScanTupleSlot;
        loop {
            guard::bypassed(|| pg_sys::SPI_cursor_fetch(portal, true, 1000));
            let n = pg_sys::SPI_processed as usize;
            if n == 0 {
                break;
            }
            let table = pg_sys::SPI_tuptable;
            for i in 0..n {
                let tuple = *(*table).vals.add(i);
                clear(slot);
                for (j, column) in run.columns.iter().enumerate() {
                    let mut isnull = false;
                    let value = pg_sys::SPI_getbinval(tuple, (*table).tupdesc, j as i32 + 1, &mut isnull);
                    *(*slot).tts_values.add(column.attno - 1) = value;
                    *(*slot).tts_isnull.add(column.attno - 1) = isnull;
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                pg_sys::tuplestore_puttupleslot(run.store, slot);
            }
            pg_sys::SPI_freetuptable(table);
        }
        pg_sys::SPI_cursor_close(portal);
        pg_sys::SPI_finish();
    }
}

/// The statement's external parameters: types, values, and text for other nodes.
struct Params {
    types: Vec<pg_sys::Oid>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    texts: Vec<Option<String>>,
}

impl Params {
    unsafe fn of(list: pg_sys::ParamListInfo, max: i32) -> Params {
        let mut p = Params {
            types: vec![],
            values: vec![],
            nulls: vec![],
            texts: vec![],
        };
        // SAFETY: a valid (or NULL) parameter list.
        let n = if list.is_null() { 0 } else { unsafe { (*list).numParams }.min(max) };
        for id in 1..=n {
            // SAFETY: as above; output functions of the parameters' own types.
            unsafe {
                let param = param(list, id).unwrap_or_else(|| std::mem::zeroed());
                p.types.push(param.ptype);
                p.values.push(param.value);
                p.nulls.push(param.isnull || param.ptype == pg_sys::Oid::INVALID);
                p.texts.push(if param.isnull || param.ptype == pg_sys::Oid::INVALID {
                    None
                } else {
                    let mut out = pg_sys::Oid::INVALID;
                    let mut varlena = false;
                    pg_sys::getTypeOutputInfo(param.ptype, &mut out, &mut varlena);
                    let text = pg_sys::OidOutputFunctionCall(out, param.value);
                    Some(CStr::from_ptr(text).to_string_lossy().into_owned())
                });
            }
        }
        p
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn end(css: *mut pg_sys::CustomScanState) {
    // SAFETY: our node; the tuplestore (if any) is ours. The runtime itself is freed with
    // the query's memory context.
    unsafe {
        let run = (*(css as *mut ScanNode)).run;
        if !run.is_null() && !(*run).store.is_null() {
            pg_sys::tuplestore_end((*run).store);
            (*run).store = std::ptr::null_mut();
            (*run).filled = false;
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn rescan(css: *mut pg_sys::CustomScanState) {
    // SAFETY: our node.
    unsafe {
        let run = &mut *(*(css as *mut ScanNode)).run;
        if run.filled {
            pg_sys::tuplestore_rescan(run.store);
        }
        pg_sys::ExecScanReScan(&mut (*css).ss);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn explain(
    css: *mut pg_sys::CustomScanState,
    _ancestors: *mut pg_sys::List,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: our node; ExplainProperty* copy the strings.
    unsafe {
        let run = &*(*(css as *mut ScanNode)).run;
        let property = |name: &CStr, value: &str| {
            let value = CString::new(value).expect("no NUL");
            pg_sys::ExplainPropertyText(name.as_ptr(), value.as_ptr(), es);
        };
        property(c"Routing", "pull-up");
        let nodes: Vec<String> = run
            .targets
            .iter()
            .map(|t| if t.local { format!("{} (local)", t.node.name) } else { t.node.name.clone() })
            .collect();
        property(c"Nodes", &nodes.join(", "));
        property(c"Shards", &format!("{} of {}", run.shards.0, run.shards.1));
        property(c"Remote SQL", &run.sql);
    }
}
