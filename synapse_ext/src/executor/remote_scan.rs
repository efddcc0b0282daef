//! `SynapseScan` at run time, for both levels that ask every node: pull-up (a table's
//! needed columns, filtered by the shipped clauses) and pushdown (a fragment of the
//! statement, see `planner::pushdown`). Sends the SQL to every node holding a shard it
//! may need (in parallel, with the statement's parameters), reads this node's shards
//! through SPI meanwhile, and materializes all rows in a tuplestore (spilling past
//! `work_mem`), which rescans replay: the SQL never depends on per-rescan values.
//!
//! Rows of other nodes arrive as text and are read with each column type's input
//! function; rows of this node are copied as datums. PostgreSQL then evaluates every
//! clause of the scan again (`ExecScan`), shipped or not.

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgList;

use super::common::{clear, drop_with_query, recheck, str_val, Params, Rows, TextInput};
use crate::distribution::{ddl, guard, metadata, pins};
use crate::remote::connection::NodeTarget;
use crate::remote::pool;

super::common::custom_scan!(c"SynapseScan", ScanNode);

/// The scan's node: PostgreSQL's part first, then ours.
#[repr(C)]
struct ScanNode {
    css: pg_sys::CustomScanState,
    run: *mut Runtime,
}

/// One column fetched: its number in the table and how to read its text.
struct Column {
    attno: usize,
    input: TextInput,
}

struct Target {
    node: NodeTarget,
    local: bool,
}

struct Runtime {
    /// "pull-up": the rows of a table; "pushdown": the rows of a fragment of a statement.
    level: String,
    rows: Rows,
    /// Parameters $1..$max_param go with the SQL.
    max_param: i32,
    sql: String,
    targets: Vec<Target>,
    /// Shards the clauses leave (pruned by the shard key), of the table's shard count.
    shards: (usize, usize),
    columns: Vec<Column>,
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(
    css: *mut pg_sys::CustomScanState,
    estate: *mut pg_sys::EState,
    _eflags: i32,
) {
    // SAFETY: called by ExecInitCustomScan with our node, after it set up the scan slot.
    unsafe {
        let node = css as *mut ScanNode;
        let cscan = (*css).ss.ps.plan as *mut pg_sys::CustomScan;
        let private = PgList::<pg_sys::Node>::from_pg((*cscan).custom_private);
        let level = str_val(private.get_ptr(0).expect("level"));
        let desc = (*(*css).ss.ss_ScanTupleSlot).tts_tupleDescriptor;
        let (sql, targets, shards, columns, max_param) = if level == "pushdown" {
            begin_fragment(&private, desc, estate)
        } else {
            begin_table(css, &private, desc, estate)
        };
        let run = Box::into_raw(Box::new(Runtime {
            level,
            rows: Rows::new(estate, desc),
            max_param,
            sql,
            targets,
            shards,
            columns,
        }));
        (*node).run = run;
        drop_with_query(estate, run);
    }
}

type Begun = (String, Vec<Target>, (usize, usize), Vec<Column>, i32);

/// A table's rows (pull-up): the needed columns, filtered by the shipped clauses.
unsafe fn begin_table(
    css: *mut pg_sys::CustomScanState,
    private: &PgList<pg_sys::Node>,
    desc: pg_sys::TupleDesc,
    estate: *mut pg_sys::EState,
) -> Begun {
    // SAFETY: our plan's private list (see planner::pullup) and scan state.
    unsafe {
        let cscan = (*css).ss.ps.plan as *mut pg_sys::CustomScan;
        let schema = str_val(private.get_ptr(1).expect("schema"));
        let name = str_val(private.get_ptr(2).expect("table"));
        let needed = PgList::<pg_sys::Node>::from_pg(
            private.get_ptr(3).expect("columns") as *mut pg_sys::List
        );
        let max_param = (*(private.get_ptr(4).expect("parameters") as *mut pg_sys::Integer)).ival;
        let relid = (*(*css).ss.ss_currentRelation).rd_id;
        let scanrelid = (*cscan).scan.scanrelid;

        let mut columns = Vec::new();
        let mut select = Vec::new();
        for n in needed.iter_ptr() {
            let attno = (*(n as *mut pg_sys::Integer)).ival as usize;
            let attr = (*desc).attrs.as_ptr().add(attno - 1);
            if (*attr).attisdropped {
                continue;
            }
            let attname = CStr::from_ptr((*attr).attname.data.as_ptr()).to_string_lossy();
            select.push(format!("s.{}", ddl::quote_ident(&attname)));
            columns.push(Column {
                attno,
                input: TextInput::new((*attr).atttypid, (*attr).atttypmod, (*estate).es_query_cxt),
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
        (sql, targets, shards, columns, max_param)
    }
}

/// A fragment's rows (pushdown): its SQL, run on every node holding shards.
unsafe fn begin_fragment(
    private: &PgList<pg_sys::Node>,
    desc: pg_sys::TupleDesc,
    estate: *mut pg_sys::EState,
) -> Begun {
    // SAFETY: our plan's private list (see planner::pushdown) and scan tuple descriptor.
    unsafe {
        let sql = str_val(private.get_ptr(1).expect("sql"));
        let shard_count =
            (*(private.get_ptr(2).expect("shard count") as *mut pg_sys::Integer)).ival;
        let max_param = (*(private.get_ptr(3).expect("parameters") as *mut pg_sys::Integer)).ival;
        let columns = (0..(*desc).natts as usize)
            .map(|i| {
                let attr = (*desc).attrs.as_ptr().add(i);
                Column {
                    attno: i + 1,
                    input: TextInput::new(
                        (*attr).atttypid,
                        (*attr).atttypmod,
                        (*estate).es_query_cxt,
                    ),
                }
            })
            .collect();
        let map = metadata::placements(shard_count as u32);
        let all: Vec<usize> = (0..map.len()).collect();
        let targets = holding(&map, &all, metadata::local_node_id());
        (sql, targets, (map.len(), map.len()), columns, max_param)
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
        if let Some(shard) =
            unsafe { pinned_shard(relid, scanrelid, key, shard_count, quals, estate) }
        {
            shards = vec![shard as usize];
        }
    }
    (holding(&map, &shards, me), (shards.len(), map.len()))
}

/// The nodes holding any of `shards` (placed by `map`), this node (`me`) last: the others
/// are asked first, and this node's rows are read while they work.
fn holding(map: &[i64], shards: &[usize], me: i64) -> Vec<Target> {
    let mut targets: Vec<Target> = metadata::nodes()
        .into_iter()
        .filter(|n| shards.iter().any(|s| map.get(*s) == Some(&n.id)))
        .map(|n| Target {
            local: n.id == me,
            node: n,
        })
        .collect();
    targets.sort_by_key(|t| t.local);
    targets
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
        quals.iter_ptr().find_map(|q| {
            let value = pins::key_value(q, scanrelid, key_attno, opfamily)?;
            pins::shard_of_value(value, (*estate).es_param_list_info, shard_count)
        })
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
        let node = ss as *mut ScanNode;
        let run = &mut *(*node).run;
        if !run.rows.filled {
            fill(node, run);
        }
        run.rows.next((*ss).ss_ScanTupleSlot)
    }
}

/// Fetches all rows into the tuplestore.
unsafe fn fill(node: *mut ScanNode, run: &mut Runtime) {
    // SAFETY: called from `next` with our node and runtime; all PostgreSQL calls are on
    // the main thread, inside the executor.
    unsafe {
        let estate = (*node).css.ss.ps.state;
        run.rows.start(estate);

        let remote = run.targets.iter().any(|t| !t.local);
        let params = Params::of((*estate).es_param_list_info, run.max_param, remote);
        let texts = params.text_refs();
        let sql = run.sql.clone();
        // An unavailable node fails the scan before any node is asked.
        for t in run.targets.iter().filter(|t| !t.local) {
            pool::check_available(&t.node);
        }
        for t in run.targets.iter().filter(|t| !t.local) {
            pool::in_transaction(&t.node, false, |c| {
                c.send_prepared(&sql, &texts, &params.types)
            });
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
                    *(*slot).tts_values.add(column.attno - 1) = column.input.read(&value);
                    *(*slot).tts_isnull.add(column.attno - 1) = false;
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                run.rows.put(slot);
                pg_sys::MemoryContextSwitchTo(old);
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            }
        }
        pg_sys::ExecClearTuple((*node).css.ss.ss_ScanTupleSlot);
        run.rows.filled = true;
    }
}

/// This node's rows, through SPI, as a fragment (the guard is off).
unsafe fn read_local(node: *mut ScanNode, run: &mut Runtime, params: &Params) {
    // SAFETY: SPI is connected and finished here; tuples are copied into the tuplestore
    // before SPI frees them.
    unsafe {
        pg_sys::SPI_connect();
        let mut values = params.values.clone();
        let nulls = params.spi_nulls();
        let portal = guard::bypassed(|| {
            let plan = crate::pg::plans::kept(&run.sql, &params.types);
            pg_sys::SPI_cursor_open(
                std::ptr::null(),
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                true,
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
                    let value =
                        pg_sys::SPI_getbinval(tuple, (*table).tupdesc, j as i32 + 1, &mut isnull);
                    *(*slot).tts_values.add(column.attno - 1) = value;
                    *(*slot).tts_isnull.add(column.attno - 1) = isnull;
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                run.rows.put(slot);
            }
            pg_sys::SPI_freetuptable(table);
        }
        pg_sys::SPI_cursor_close(portal);
        pg_sys::SPI_finish();
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
        property(c"Routing", &run.level);
        let nodes: Vec<String> = run
            .targets
            .iter()
            .map(|t| {
                if t.local {
                    format!("{} (local)", t.node.name)
                } else {
                    t.node.name.clone()
                }
            })
            .collect();
        property(c"Nodes", &nodes.join(", "));
        property(c"Shards", &format!("{} of {}", run.shards.0, run.shards.1));
        property(c"Remote SQL", &run.sql);
    }
}
