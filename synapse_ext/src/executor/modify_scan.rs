//! `SynapseModify` at run time: a write whose rows are on several nodes (see
//! `planner::modify`). Other nodes' parts run in the remote transactions tied to the local
//! one, so the transaction commits them all or none (two-phase commit). This node's part
//! runs here through SPI inside a transaction block; in a statement of its own (no
//! BEGIN) it runs through a connection to this node instead, so that it too is prepared
//! before the commit decision and a crash cannot commit the other nodes' parts without it
//! (the rest of such a transaction may then not read distributed tables here, see
//! `pool::wrote_through_loopback`).
//!
//! Returns the RETURNING rows of every node and counts every node's rows as processed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use super::common::{self, drop_with_query, int_val, recheck, str_val, Params, Rows, TextInput};
use crate::distribution::metadata;
use crate::distribution::shard_key::{self, KeyType};
use crate::planner::modify;
use crate::remote::connection::NodeTarget;
use crate::remote::pool;

extern "C-unwind" {
    // utils/datum.h, not in pgrx's bindings.
    fn datumCopy(value: pg_sys::Datum, by_value: bool, len: std::os::raw::c_int) -> pg_sys::Datum;
}

super::common::custom_scan!(c"SynapseModify", ModifyNode);

/// At most this many rows in one INSERT sent to a node (and at most 65535 parameters).
const BATCH_ROWS: usize = 1000;

#[repr(C)]
struct ModifyNode {
    css: pg_sys::CustomScanState,
    run: *mut Runtime,
}

struct Runtime {
    /// `modify::STATEMENT` or `modify::ROWS`.
    mode: String,
    /// The statement (run by every node), or the SELECT computing the rows to insert.
    sql: String,
    max_param: i32,
    reference: bool,
    shard_count: u32,
    /// Column of the shard key among the rows to insert (-1: none, NULL).
    key_position: i32,
    /// The INSERT (rows mode), whose rows each node's INSERT replaces.
    template: *mut pg_sys::Query,
    /// Every node, and the ones the statement runs on (statement mode).
    nodes: Vec<NodeTarget>,
    targets: Vec<i64>,
    me: i64,
    /// This node's part through a connection to itself (no transaction block).
    loopback: bool,
    /// How to read RETURNING rows arriving as text.
    columns: Vec<TextInput>,
    /// A reference table: the row count of the first copy that answered (per batch).
    reference_count: Option<u64>,
    rows: Rows,
}

impl Runtime {
    fn target(&self, id: i64) -> &NodeTarget {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| {
            pgrx::error!("synapse: the node of a shard is not a member of the cluster")
        })
    }

    /// Whether node `id`'s part runs through SPI here.
    fn here(&self, id: i64) -> bool {
        id == self.me && !self.loopback
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(
    css: *mut pg_sys::CustomScanState,
    estate: *mut pg_sys::EState,
    _eflags: i32,
) {
    // SAFETY: called by ExecInitCustomScan with our node; the private list is
    // planner::modify's.
    unsafe {
        let node = css as *mut ModifyNode;
        let cscan = (*css).ss.ps.plan as *mut pg_sys::CustomScan;
        let private = PgList::<pg_sys::Node>::from_pg((*cscan).custom_private);
        let mode = str_val(private.get_ptr(0).expect("mode"));
        let sql = str_val(private.get_ptr(1).expect("sql"));
        let max_param = int_val(private.get_ptr(2).expect("parameters"));
        let reference = int_val(private.get_ptr(3).expect("reference")) != 0;
        let shard_count = int_val(private.get_ptr(4).expect("shard count")).max(1) as u32;
        let (key_position, template) = if mode == modify::ROWS {
            (
                int_val(private.get_ptr(5).expect("key")),
                private.get_ptr(6).expect("insert") as *mut pg_sys::Query,
            )
        } else {
            (-1, std::ptr::null_mut())
        };
        let nodes = metadata::nodes();
        let mut targets: Vec<i64> = if reference || mode == modify::ROWS {
            nodes.iter().map(|n| n.id).collect()
        } else {
            metadata::placements(shard_count)
        };
        targets.sort();
        targets.dedup();
        let desc = (*(*css).ss.ss_ScanTupleSlot).tts_tupleDescriptor;
        let mut columns = Vec::new();
        for i in 0..(*desc).natts as usize {
            let attr = (*desc).attrs.as_ptr().add(i);
            columns.push(TextInput::new(
                (*attr).atttypid,
                (*attr).atttypmod,
                (*estate).es_query_cxt,
            ));
        }
        let run = Box::into_raw(Box::new(Runtime {
            mode,
            sql,
            max_param,
            reference,
            shard_count,
            key_position,
            template,
            nodes,
            targets,
            me: metadata::local_node_id(),
            loopback: !pg_sys::IsTransactionBlock(),
            columns,
            reference_count: None,
            rows: Rows::new(estate, desc),
        }));
        (*node).run = run;
        drop_with_query(estate, run);
    }
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
        let node = ss as *mut ModifyNode;
        let run = &mut *(*node).run;
        if !run.rows.filled {
            let estate = (*node).css.ss.ps.state;
            run.rows.start(estate);
            let params = Params::of((*estate).es_param_list_info, run.max_param, true);
            if run.mode == modify::ROWS {
                insert_rows(node, run, &params);
            } else {
                run_statement(node, run, &params);
            }
            pg_sys::ExecClearTuple((*ss).ss_ScanTupleSlot);
            run.rows.filled = true;
        }
        run.rows.next((*ss).ss_ScanTupleSlot)
    }
}

/// UPDATE or DELETE: the statement on every target node at once.
unsafe fn run_statement(node: *mut ModifyNode, run: &mut Runtime, params: &Params) {
    // SAFETY: our node and runtime, main thread, inside the executor.
    unsafe {
        let texts = params.text_refs();
        let remote: Vec<i64> = run
            .targets
            .iter()
            .copied()
            .filter(|id| !run.here(*id))
            .collect();
        // An unavailable node fails the statement before any node is asked.
        for id in &remote {
            pool::check_available(run.target(*id));
        }
        if run.loopback && run.targets.contains(&run.me) {
            pool::wrote_through_loopback();
        }
        for id in &remote {
            pool::with_access(run.target(*id), pool::Access::Write, |c| {
                c.send_prepared(&run.sql, &texts, &params.types)
            });
        }
        if run.targets.iter().any(|id| run.here(*id)) {
            let sql = run.sql.clone();
            pg_sys::SPI_connect();
            run_here(
                node,
                run,
                &sql,
                &params.types,
                params.values.clone(),
                &params.nulls,
            );
            pg_sys::SPI_finish();
        }
        for id in &remote {
            let rows = pool::with_access(run.target(*id), pool::Access::Write, |c| c.finish(None));
            put_remote_rows(node, run, rows);
        }
    }
}

/// Runs `sql` on this node's shards through SPI (connected) and keeps its RETURNING rows.
unsafe fn run_here(
    node: *mut ModifyNode,
    run: &mut Runtime,
    sql: &str,
    types: &[pg_sys::Oid],
    mut values: Vec<pg_sys::Datum>,
    nulls: &[bool],
) {
    // SAFETY: SPI is connected; our node, main thread. This node's part runs before any
    // other node's answer is read, so for a reference table its copy is the one that
    // answers.
    unsafe {
        let slot = (*node).css.ss.ss_ScanTupleSlot;
        let n = common::run_here(sql, types, &mut values, nulls, false, slot, &mut run.rows);
        if !(run.reference && answered(run, n)) {
            (*(*node).css.ss.ps.state).es_processed += n;
        }
    }
}

/// Keeps another node's RETURNING rows (text) and counts its rows. Every copy of a
/// reference table answers alike: the first answer is kept, the others only compared.
unsafe fn put_remote_rows(
    node: *mut ModifyNode,
    run: &mut Runtime,
    rows: crate::remote::connection::Rows,
) {
    // SAFETY: our node and runtime, main thread.
    unsafe {
        if run.reference && answered(run, rows.affected) {
            return;
        }
        let slot = (*node).css.ss.ss_ScanTupleSlot;
        let econtext = (*node).css.ss.ps.ps_ExprContext;
        common::put_text_rows(rows.rows, &mut run.columns, slot, econtext, &mut run.rows);
        (*(*node).css.ss.ps.state).es_processed += rows.affected;
    }
}

/// For a reference table: whether a copy answered already (then `affected` must match
/// its count: copies that differ are an ERROR, not a silent answer).
fn answered(run: &mut Runtime, affected: u64) -> bool {
    match run.reference_count {
        None => {
            run.reference_count = Some(affected);
            false
        }
        Some(first) if first == affected => true,
        Some(first) => {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("the copies of a reference table differ: one node changed {first} rows, another {affected}"),
                "synapse",
            )
            .set_hint("Compare the table's rows on every node; the statement is rolled back on all of them.")
            .report(PgLogLevel::ERROR);
            unreachable!()
        }
    }
}

/// One node's rows waiting to be sent: as text for another node, as datums (copied into
/// the batch's memory context) for SPI here.
#[derive(Default)]
struct Batch {
    texts: Vec<Option<String>>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    rows: usize,
}

/// INSERT: computes every row first (so the rows read never include rows this statement
/// inserts), then sends each node its rows in batches.
unsafe fn insert_rows(node: *mut ModifyNode, run: &mut Runtime, params: &Params) {
    // SAFETY: main thread, inside the executor; SPI connected for the whole function;
    // the source rows live in a tuplestore in the query's memory context, each batch's
    // copies in a context reset after it is sent.
    unsafe {
        let estate = (*node).css.ss.ps.state;
        pg_sys::SPI_connect();
        let mut values = params.values.clone();
        let nulls = params.spi_nulls();
        // The SELECT is routed like any other statement (not bypassed).
        let plan = crate::pg::plans::kept(&run.sql, &params.types);
        let portal = pg_sys::SPI_cursor_open(
            std::ptr::null(),
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true,
        );
        let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
        let desc = pg_sys::CreateTupleDescCopy((*portal).tupDesc);
        let store = pg_sys::tuplestore_begin_heap(false, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);
        loop {
            pg_sys::SPI_cursor_fetch(portal, true, 1000);
            let n = pg_sys::SPI_processed as usize;
            if n == 0 {
                break;
            }
            let table = pg_sys::SPI_tuptable;
            for i in 0..n {
                pg_sys::tuplestore_puttuple(store, *(*table).vals.add(i));
            }
            pg_sys::SPI_freetuptable(table);
        }
        pg_sys::SPI_cursor_close(portal);

        let width = (*desc).natts as usize;
        let mut types = Vec::with_capacity(width);
        let mut outputs = Vec::with_capacity(width);
        for i in 0..width {
            let attr = (*desc).attrs.as_ptr().add(i);
            types.push(((*attr).atttypid, (*attr).atttypmod, (*attr).attcollation));
            let (mut out, mut varlena) = (pg_sys::Oid::INVALID, false);
            pg_sys::getTypeOutputInfo((*attr).atttypid, &mut out, &mut varlena);
            let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info_cxt(out, &mut finfo, (*estate).es_query_cxt);
            outputs.push(finfo);
        }
        let key_type = if run.key_position >= 0 && !run.reference {
            let typ = types[run.key_position as usize].0;
            Some(KeyType::of(typ).unwrap_or_else(|| shard_key::unsupported(typ)))
        } else {
            None
        };
        let placements = metadata::placements(run.shard_count);
        // A statement takes at most 65535 parameters: the client's, then the rows'.
        let batch_rows = BATCH_ROWS.min((65535 - params.types.len()) / width.max(1));
        let batch_cxt = pg_sys::AllocSetContextCreateInternal(
            (*estate).es_query_cxt,
            c"synapse insert batch".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let mut sql_by_rows: HashMap<usize, String> = HashMap::new();
        let mut batches: BTreeMap<i64, Batch> = BTreeMap::new();
        let all: Vec<i64> = run.targets.clone();
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
        let old = pg_sys::MemoryContextSwitchTo(batch_cxt);
        while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
            pg_sys::slot_getallattrs(slot);
            let destinations: Vec<i64> = match key_type {
                _ if run.reference => all.clone(),
                Some(kt) => {
                    let isnull = *(*slot).tts_isnull.add(run.key_position as usize);
                    let datum = *(*slot).tts_values.add(run.key_position as usize);
                    let hash = shard_key::hash_datum(kt, (!isnull).then_some(datum));
                    let shard = (hash % u64::from(run.shard_count)) as usize;
                    vec![placements.get(shard).copied().unwrap_or(-1)]
                }
                None => vec![placements.first().copied().unwrap_or(-1)],
            };
            let mut full = false;
            for id in destinations {
                let batch = batches.entry(id).or_default();
                if run.here(id) {
                    for j in 0..width {
                        let attr = (*desc).attrs.as_ptr().add(j);
                        let isnull = *(*slot).tts_isnull.add(j);
                        batch.nulls.push(isnull);
                        batch.values.push(if isnull {
                            pg_sys::Datum::from(0)
                        } else {
                            datumCopy(
                                *(*slot).tts_values.add(j),
                                (*attr).attbyval,
                                (*attr).attlen.into(),
                            )
                        });
                    }
                } else {
                    for (j, output) in outputs.iter_mut().enumerate() {
                        batch.texts.push(if *(*slot).tts_isnull.add(j) {
                            None
                        } else {
                            let text =
                                pg_sys::OutputFunctionCall(output, *(*slot).tts_values.add(j));
                            Some(CStr::from_ptr(text).to_string_lossy().into_owned())
                        });
                    }
                }
                batch.rows += 1;
                full |= batch.rows >= batch_rows;
            }
            // One node's batch is full: every node's goes (this node's datums live in
            // the batch context, reset after).
            if full {
                send_batches(node, run, params, &mut batches, &types, &mut sql_by_rows);
                pg_sys::MemoryContextReset(batch_cxt);
            }
        }
        send_batches(node, run, params, &mut batches, &types, &mut sql_by_rows);
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::tuplestore_end(store);
        pg_sys::MemoryContextDelete(batch_cxt);
        pg_sys::SPI_finish();
    }
}

/// Sends every node its batch, as one INSERT each, with the client's parameters first.
unsafe fn send_batches(
    node: *mut ModifyNode,
    run: &mut Runtime,
    params: &Params,
    batches: &mut BTreeMap<i64, Batch>,
    types: &[(pg_sys::Oid, i32, pg_sys::Oid)],
    sql_by_rows: &mut HashMap<usize, String>,
) {
    // SAFETY: main thread, SPI connected; the datums live until the batch context reset.
    unsafe {
        run.reference_count = None;
        let ready: Vec<i64> = batches
            .iter()
            .filter(|(_, b)| b.rows > 0)
            .map(|(id, _)| *id)
            .collect();
        let remote: Vec<i64> = ready.iter().copied().filter(|id| !run.here(*id)).collect();
        for id in &remote {
            pool::check_available(run.target(*id));
        }
        if run.loopback && ready.contains(&run.me) {
            pool::wrote_through_loopback();
        }
        let template = run.template;
        let mut sql_of = |rows: usize| -> String {
            sql_by_rows
                .entry(rows)
                .or_insert_with(|| modify::insert_sql(template, types, rows, params.types.len()))
                .clone()
        };
        // Every other node's batch at once, then this node's, then their answers.
        let mut sent = Vec::new();
        for id in &remote {
            let batch = batches.remove(id).expect("a ready batch");
            let sql = sql_of(batch.rows);
            let mut texts = params.text_refs();
            texts.extend(batch.texts.iter().map(|t| t.as_deref()));
            pool::with_access(run.target(*id), pool::Access::Write, |c| {
                // The client's parameters typed; each value of a row goes into its
                // column, whose type the node knows.
                c.send_prepared(&sql, &texts, &params.types)
            });
            sent.push(*id);
        }
        if let Some(batch) = ready
            .iter()
            .find(|id| run.here(**id))
            .and_then(|id| batches.remove(id))
        {
            let sql = sql_of(batch.rows);
            let param_types: Vec<pg_sys::Oid> = params
                .types
                .iter()
                .copied()
                .chain((0..batch.rows).flat_map(|_| types.iter().map(|t| t.0)))
                .collect();
            let mut values = params.values.clone();
            values.extend(batch.values);
            let mut nulls = params.nulls.clone();
            nulls.extend(batch.nulls);
            run_here(node, run, &sql, &param_types, values, &nulls);
        }
        for id in sent {
            let rows = pool::with_access(run.target(id), pool::Access::Write, |c| c.finish(None));
            put_remote_rows(node, run, rows);
        }
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
        let run = &*(*(css as *mut ModifyNode)).run;
        let property = |name: &CStr, value: &str| {
            let value = CString::new(value).expect("no NUL");
            pg_sys::ExplainPropertyText(name.as_ptr(), value.as_ptr(), es);
        };
        let names: Vec<String> = run
            .targets
            .iter()
            .map(|id| {
                let name = run
                    .nodes
                    .iter()
                    .find(|n| n.id == *id)
                    .map_or(id.to_string(), |n| n.name.clone());
                if *id == run.me {
                    format!("{name} (local)")
                } else {
                    name
                }
            })
            .collect();
        if run.mode == modify::ROWS {
            property(c"Routing", "multi-node write: rows routed by shard key");
            property(c"Nodes", &names.join(", "));
            property(c"Rows SQL", &run.sql);
        } else {
            property(c"Routing", "multi-node write: statement on every node");
            property(c"Nodes", &names.join(", "));
            property(c"Remote SQL", &run.sql);
        }
    }
}
