//! `SynapseRouter` at run time: runs a statement whole on the one node holding every
//! shard it needs — another node through the pool (in the remote transaction tied to
//! the local one), or this node through SPI when its parameters put it here — and
//! returns its rows (or RETURNING rows) and its affected row count.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use super::common::{
    drop_with_query, int_val, put_text_rows, recheck, run_here, str_val, Params, Rows, TextInput,
};
use crate::distribution::{metadata, pins};
use crate::planner::router;
use crate::remote::connection::NodeTarget;
use crate::remote::pool;

super::common::custom_scan!(c"SynapseRouter", RouterNode);

#[repr(C)]
struct RouterNode {
    css: pg_sys::CustomScanState,
    run: *mut Runtime,
}

struct Runtime {
    sql: String,
    max_param: i32,
    /// 2: the statement changes rows (counted as processed); 1: it locks rows; 0: reads.
    writes: i32,
    /// The node that runs the statement; `None` under EXPLAIN of an unresolved plan.
    target: Option<NodeTarget>,
    local: bool,
    columns: Vec<TextInput>,
    rows: Rows,
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(
    css: *mut pg_sys::CustomScanState,
    estate: *mut pg_sys::EState,
    eflags: i32,
) {
    // SAFETY: called by ExecInitCustomScan with our node.
    unsafe {
        let node = css as *mut RouterNode;
        let cscan = (*css).ss.ps.plan as *mut pg_sys::CustomScan;
        let private = PgList::<pg_sys::Node>::from_pg((*cscan).custom_private);
        let sql = str_val(private.get_ptr(0).expect("sql"));
        let max_param = int_val(private.get_ptr(1).expect("parameters"));
        let writes = int_val(private.get_ptr(2).expect("writes"));
        let fixed: i64 = str_val(private.get_ptr(3).expect("node"))
            .parse()
            .unwrap_or(-1);
        let pin_list =
            PgList::<pg_sys::Node>::from_pg(private.get_ptr(4).expect("pins") as *mut pg_sys::List);

        let explain_only = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0;
        let mut shard = None;
        let node_id = if fixed >= 0 {
            Some(fixed)
        } else {
            let mut ids = Vec::new();
            for pin in pin_list.iter_ptr() {
                let pin = PgList::<pg_sys::Node>::from_pg(pin as *mut pg_sys::List);
                let count = int_val(pin.get_ptr(0).expect("shard count")) as u32;
                let value = pin.get_ptr(1).expect("value");
                match pins::shard_of_value(value, (*estate).es_param_list_info, count) {
                    Some(pinned) => ids.push({
                        let shard = shard.insert(pinned);
                        metadata::placements(count)
                            .get(*shard as usize)
                            .copied()
                            .unwrap_or(-1)
                    }),
                    None if explain_only => {}
                    None => pgrx::error!("synapse: a shard key parameter has no value"),
                }
            }
            ids.sort();
            ids.dedup();
            if ids.len() > 1 {
                pg_sys::panic::ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "the statement's shard key values are on several nodes",
                    "synapse",
                )
                .set_hint("Write each node's rows in a statement of its own; a transaction block of such statements commits them together.")
                .report(PgLogLevel::ERROR);
            }
            ids.first().copied()
        };
        let me = metadata::local_node_id();
        let target = node_id.and_then(|id| metadata::nodes().into_iter().find(|n| n.id == id));
        if node_id.is_some() && target.is_none() {
            pgrx::error!("synapse: the node of a shard is not a member of the cluster");
        }
        let local = target.as_ref().is_some_and(|t| t.id == me);
        // Here, a statement over one shard of one table runs on its partition.
        let one_table = private.get_ptr(5).map_or(0, int_val);
        let sql = match (local && one_table > 0 && pin_list.len() == 1, shard) {
            (true, Some(shard)) => partition_sql(&sql, private.get_ptr(6), one_table as u32, shard),
            _ => sql,
        };

        let desc = (*(*css).ss.ss_ScanTupleSlot).tts_tupleDescriptor;
        let mut columns = Vec::new();
        // Only another node's rows arrive as text.
        let natts = if local { 0 } else { (*desc).natts as usize };
        for i in 0..natts {
            let attr = (*desc).attrs.as_ptr().add(i);
            columns.push(TextInput::new(
                (*attr).atttypid,
                (*attr).atttypmod,
                (*estate).es_query_cxt,
            ));
        }
        let run = Box::into_raw(Box::new(Runtime {
            sql,
            max_param,
            writes,
            target,
            local,
            columns,
            rows: Rows::new(estate, desc),
        }));
        (*node).run = run;
        drop_with_query(estate, run);
    }
}

/// Partition SQL by (table SQL, shard), with the relations generation it was made in.
type PartitionSqlCache = (u64, std::collections::HashMap<(String, u32), String>);

thread_local! {
    /// Partition SQL by (table SQL, shard): deparsed once per backend (and again after
    /// a relation changed).
    static PARTITION_SQL: std::cell::RefCell<PartitionSqlCache> =
        std::cell::RefCell::new((0, std::collections::HashMap::new()));
}

/// The statement's SQL on shard `shard`'s partition (see `router::partition_sql`), or
/// `sql` itself if there is none.
unsafe fn partition_sql(
    sql: &str,
    query: Option<*mut pg_sys::Node>,
    rtindex: u32,
    shard: u32,
) -> String {
    let key = (sql.to_owned(), shard);
    let generation = crate::remote::connection::relations_generation();
    let found = PARTITION_SQL.with(|m| {
        let mut m = m.borrow_mut();
        if m.0 != generation {
            *m = (generation, Default::default());
        }
        m.1.get(&key).cloned()
    });
    if let Some(found) = found {
        return found;
    }
    let Some(query) = query else {
        return sql.to_owned();
    };
    // SAFETY: the statement's Query, kept in the plan.
    let Some(text) = (unsafe { router::partition_sql(query.cast(), rtindex, shard) }) else {
        return sql.to_owned();
    };
    PARTITION_SQL.with(|m| {
        let mut m = m.borrow_mut();
        if m.1.len() >= 1024 {
            m.1.clear();
        }
        m.1.insert(key, text.clone());
    });
    text
}

#[pg_guard]
unsafe extern "C-unwind" fn exec(css: *mut pg_sys::CustomScanState) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our node; ExecScan calls back with its ScanState.
    unsafe { pg_sys::ExecScan(&mut (*css).ss, Some(next), Some(recheck)) }
}

#[pg_guard]
unsafe extern "C-unwind" fn next(ss: *mut pg_sys::ScanState) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: `ss` is the ScanState of our node.
    unsafe {
        let node = ss as *mut RouterNode;
        let run = &mut *(*node).run;
        if !run.rows.filled {
            fill(node, run);
        }
        run.rows.next((*ss).ss_ScanTupleSlot)
    }
}

unsafe fn fill(node: *mut RouterNode, run: &mut Runtime) {
    // SAFETY: our node and runtime, on the main thread inside the executor.
    unsafe {
        let estate = (*node).css.ss.ps.state;
        run.rows.start(estate);
        let params = Params::of((*estate).es_param_list_info, run.max_param, !run.local);
        let slot = (*node).css.ss.ss_ScanTupleSlot;
        let target = run.target.clone().expect("a node to run on");
        if run.local {
            let mut values = params.values.clone();
            pg_sys::SPI_connect();
            let n = run_here(
                &run.sql,
                &params.types,
                &mut values,
                &params.nulls,
                run.writes == 0,
                slot,
                &mut run.rows,
            );
            if run.writes == 2 {
                (*estate).es_processed += n;
            }
            pg_sys::SPI_finish();
        } else {
            let texts = params.text_refs();
            let sql = run.sql.clone();
            let access = match run.writes {
                2 => pool::Access::Write,
                1 => pool::Access::Lock,
                _ => pool::Access::Read,
            };
            let rows = pool::with_access(&target, access, |c| {
                c.exec_prepared(&sql, &texts, &params.types)
            });
            let econtext = (*node).css.ss.ps.ps_ExprContext;
            put_text_rows(rows.rows, &mut run.columns, slot, econtext, &mut run.rows);
            if run.writes == 2 {
                (*estate).es_processed += rows.affected;
            }
        }
        pg_sys::ExecClearTuple(slot);
        run.rows.filled = true;
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
        let run = &*(*(css as *mut RouterNode)).run;
        let property = |name: &CStr, value: &str| {
            let value = CString::new(value).expect("no NUL");
            pg_sys::ExplainPropertyText(name.as_ptr(), value.as_ptr(), es);
        };
        property(c"Routing", "router");
        property(
            c"Node",
            &match &run.target {
                Some(t) if run.local => format!("{} (local)", t.name),
                Some(t) => t.name.clone(),
                None => "chosen at run time by the shard key parameters".into(),
            },
        );
        property(c"Remote SQL", &run.sql);
    }
}
