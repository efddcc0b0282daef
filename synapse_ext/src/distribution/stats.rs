//! Where the rows and bytes of distributed tables are: asked of every node.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::ddl::{self, literal};
use super::guard::bypassed;
use super::metadata;
use crate::remote::pool;

/// Runs a read-only `sql` on node `id` (here through SPI, elsewhere through the pool);
/// returns its rows as text.
fn on_node(
    me: i64,
    node: &crate::remote::connection::NodeTarget,
    sql: &str,
) -> Vec<Vec<Option<String>>> {
    if node.id == me {
        return bypassed(|| {
            Spi::connect(|client| {
                let table = client.select(sql, None, &[]).expect("local statistics");
                let n = table.columns().unwrap_or(0);
                table
                    .map(|row| {
                        (1..=n)
                            .map(|i| row.get::<String>(i).ok().flatten())
                            .collect()
                    })
                    .collect()
            })
        });
    }
    pool::in_transaction(node, false, |c| c.exec(sql, &[])).rows
}

fn number(v: &Option<String>) -> i64 {
    v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Per node: shards, rows (counted) and bytes of `table`.
pub fn table_distribution(table: pg_sys::Oid) -> Vec<(String, i64, i64, i64)> {
    let (schema, name) = ddl::names(table);
    let table_sql = ddl::qualified(&schema, &name);
    let Some(entry) = metadata::table_entry(&schema, &name) else {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {table_sql} is not distributed"),
            "synapse",
        )
        .report(PgLogLevel::ERROR);
        unreachable!()
    };
    let me = metadata::local_node_id();
    let map = entry
        .shard_count
        .map(metadata::placements)
        .unwrap_or_default();
    let relation = literal(&table_sql);
    let sql = format!(
        "SELECT (SELECT count(*) FROM {table_sql})::text, \
           (SELECT pg_total_relation_size({relation}::regclass) \
              + coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i \
            WHERE i.inhparent = {relation}::regclass)::bigint::text"
    );
    metadata::nodes()
        .iter()
        .map(|node| {
            let shards = if entry.kind == "reference" {
                0
            } else {
                map.iter().filter(|n| **n == node.id).count() as i64
            };
            let rows = on_node(me, node, &sql);
            let row = rows.first().cloned().unwrap_or_default();
            (
                node.name.clone(),
                shards,
                row.first().map(number).unwrap_or(0),
                row.get(1).map(number).unwrap_or(0),
            )
        })
        .collect()
}

/// Every shard partition of every distributed table on every node.
pub fn shard_sizes() -> Vec<(String, i32, String, String, i64, i64)> {
    let tables: Vec<(String, String)> = Spi::connect(|client| {
        client
            .select(
                "SELECT schema_name, table_name FROM synapse.table_catalog WHERE kind = 'distributed' ORDER BY 1, 2",
                None,
                &[],
            )
            .expect("table catalog")
            .map(|row| {
                (
                    row.get::<String>(1).ok().flatten().unwrap_or_default(),
                    row.get::<String>(2).ok().flatten().unwrap_or_default(),
                )
            })
            .collect()
    });
    if tables.is_empty() {
        return vec![];
    }
    let me = metadata::local_node_id();
    let mut out = Vec::new();
    for node in metadata::nodes() {
        for (schema, name) in &tables {
            let table_sql = ddl::qualified(schema, name);
            let sql = format!(
                "SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'remainder (\\d+)'), \
                        pg_total_relation_size(c.oid)::text, greatest(c.reltuples, 0)::bigint::text \
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = {}::regclass ORDER BY 1::int",
                literal(&table_sql)
            );
            for row in on_node(me, &node, &sql) {
                out.push((
                    table_sql.clone(),
                    number(&row[0]) as i32,
                    node.name.clone(),
                    "primary".to_owned(),
                    number(&row[1]),
                    number(&row[2]),
                ));
            }
        }
    }
    out
}
