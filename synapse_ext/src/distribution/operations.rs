//! Distributing a table, making it a reference table, and undoing either.
//!
//! Each operation runs in the caller's transaction: the other nodes' part runs in remote
//! transactions of the connection pool, prepared at local pre-commit and committed after
//! the local commit, and the catalog change goes through Raft last. A failure anywhere
//! before the commit leaves every node's table as it was.
//!
//! Physical layout: on every node a distributed table is a table partitioned by
//! `HASH (key synapse.<type>_shard_ops)` holding the partitions (`<table>_shard_<n>`) of
//! the shards placed on that node; the operator class makes PostgreSQL's partition routing
//! and pruning agree with `synapse.shard_of()`. A reference table is an ordinary table on
//! every node, with a statement trigger that refuses writes not made on all nodes at once.

use std::collections::BTreeMap;

use pgrx::pg_sys;
use pgrx::prelude::*;
use synapse_core::raft::catalog::{TableKind, TableRecord};
use synapse_core::raft::types::Command;

use super::ddl::{self, quote_ident, TableDef};
use super::guard::bypassed;
use super::metadata;
use super::shard_key::KeyType;
use crate::gucs;
use crate::remote::connection::{copy_text, NodeTarget, RemoteError};
use crate::remote::pool;

/// Rows fetched per batch when moving data.
const BATCH: i64 = 10_000;
/// COPY data buffered per node before it is sent.
const COPY_CHUNK: usize = 4 << 20;

/// The trigger that guards a reference table's copies.
pub const REFERENCE_TRIGGER: &str = "synapse_reference_writes";

use crate::pg::errors::raise as error;
use crate::pg::time::now_ms;

fn check_owner(table: pg_sys::Oid) {
    // SAFETY: catalog lookups on the main thread.
    let owner = unsafe { pg_sys::pg_class_ownercheck(table, pg_sys::GetUserId()) };
    if !owner {
        // SAFETY: as above; the name is palloc'd.
        let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_rel_name(table)) }
            .to_string_lossy()
            .into_owned();
        error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {name}"),
            "",
        );
    }
}

fn check_not_in_catalog(table: pg_sys::Oid) {
    let (schema, name) = ddl::names(table);
    if let Some(entry) = metadata::table_entry(&schema, &name) {
        error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "table {} is already a {} table",
                ddl::qualified(&schema, &name),
                entry.kind
            ),
            "Run synapse.undistribute_table() first to change how it is distributed.",
        );
    }
}

/// Sends `data` (COPY text rows) to node `node` with `copy_sql` (`COPY ... FROM STDIN`),
/// in this transaction, and empties it.
pub fn copy_to_node(nodes: &[NodeTarget], node: i64, copy_sql: &str, data: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let target = nodes
        .iter()
        .find(|n| n.id == node)
        .unwrap_or_else(|| pgrx::error!("synapse: the node of a shard is not a member"));
    pool::in_transaction(target, true, |c| c.copy_in(copy_sql, data));
    data.clear();
}

/// The name of shard `shard`'s partition of table `name` (at most 63 bytes).
pub fn partition_name(name: &str, shard: u32) -> String {
    let suffix = format!("_shard_{shard}");
    let mut base = name.to_owned();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    base + &suffix
}

fn partition_ddl(def: &TableDef, parent: &str, shard_count: u32, shard: u32) -> String {
    format!(
        "CREATE TABLE {} PARTITION OF {parent} FOR VALUES WITH (MODULUS {shard_count}, REMAINDER {shard})",
        ddl::qualified(&def.schema, &partition_name(&def.name, shard))
    )
}

fn run(sql: &str) {
    bypassed(|| Spi::run(sql))
        .unwrap_or_else(|e| error(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), ""));
}

/// A node lacks an object the table's definition uses (a type, a function of a default or
/// check, a collation): says what to do about it.
fn missing_object(e: RemoteError) -> RemoteError {
    if matches!(e.sqlstate.as_str(), "42704" | "42883") {
        let hint = format!(
            "synapse copies the table's definition to every node, not the types, functions or \
             other objects it uses: create them on node \"{}\" (and every other node) with the \
             same definition, then run this again. Nothing was changed.",
            e.node
        );
        e.or_hint(hint)
    } else {
        e
    }
}

/// `synapse.create_distributed_table()`.
pub fn distribute(table: pg_sys::Oid, key: &str, shard_count: u32) {
    check_owner(table);
    pool::allow_several_writers();
    check_not_in_catalog(table);
    let def = ddl::read(table);
    let Some(key_column) = def.columns.iter().find(|c| c.name == key) else {
        error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column \"{key}\" of table {} does not exist",
                def.qualified()
            ),
            "The shard key names one column of the table, spelled as in the table (case matters).",
        );
    };
    let Some(key_type) = KeyType::of(key_column.typid) else {
        super::shard_key::unsupported(key_column.typid);
    };
    let me = metadata::local_node_id();
    let nodes = metadata::nodes();
    metadata::propose(
        Command::PlaceShards {
            shard_count,
            vnodes: gucs::placement_vnodes(),
        },
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
    let map = metadata::placements(shard_count);
    let shards_of = |node: i64| -> Vec<u32> {
        map.iter()
            .enumerate()
            .filter(|(_, n)| **n == node)
            .map(|(s, _)| s as u32)
            .collect()
    };
    let table_sql = def.qualified();
    run(&format!("LOCK TABLE {table_sql} IN ACCESS EXCLUSIVE MODE"));
    let partition_by = format!(
        "PARTITION BY HASH ({} synapse.{})",
        quote_ident(key),
        key_type.opclass()
    );

    // The other nodes: the partitioned table with their partitions.
    let remotes: Vec<&NodeTarget> = nodes.iter().filter(|n| n.id != me).collect();
    for node in &remotes {
        let mut sql = vec![
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&def.schema)),
            format!(
                "CREATE TABLE {table_sql} {} {partition_by}",
                def.column_list()
            ),
        ];
        sql.extend(
            shards_of(node.id)
                .into_iter()
                .map(|s| partition_ddl(&def, &table_sql, shard_count, s)),
        );
        let sql = sql.join(";\n");
        pool::in_transaction(node, true, |c| c.exec(&sql, &[]).map_err(missing_object));
    }

    // Here: a new partitioned table beside the old one, with the local rows.
    let new_name = format!(
        "{}_synapse_new",
        def.name.chars().take(40).collect::<String>()
    );
    let new_sql = ddl::qualified(&def.schema, &new_name);
    run(&format!(
        "CREATE TABLE {new_sql} {} {partition_by}",
        def.column_list()
    ));
    let local = shards_of(me);
    for s in &local {
        run(&partition_ddl(&def, &new_sql, shard_count, *s));
    }
    let stored: Vec<String> = def
        .stored_columns()
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let column_list = stored.join(", ");
    let local_array = format!(
        "'{{{}}}'::int[]",
        local
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let shard_expr = format!("synapse.shard_of({}, {shard_count})", quote_ident(key));
    run(&format!(
        "INSERT INTO {new_sql} ({column_list}) SELECT {column_list} FROM {table_sql} \
         WHERE {shard_expr} = ANY ({local_array})"
    ));

    // The other nodes' rows, sent with COPY.
    let node_of: BTreeMap<u32, i64> = map
        .iter()
        .enumerate()
        .map(|(s, n)| (s as u32, *n))
        .collect();
    let texts = def.stored_as_text();
    let copy_sql = format!("COPY {table_sql} ({column_list}) FROM STDIN");
    let mut buffers: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    let flush = |node: i64, data: &mut Vec<u8>| copy_to_node(&nodes, node, &copy_sql, data);
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(
            &format!(
                "SELECT {shard_expr}, {texts} FROM {table_sql} WHERE NOT {shard_expr} = ANY ({local_array})"
            ),
            &[],
        );
        loop {
            let batch = cursor.fetch(BATCH).expect("fetch rows to move");
            if batch.is_empty() {
                break;
            }
            for row in batch {
                let shard = row.get::<i32>(1).ok().flatten().unwrap_or(0) as u32;
                let node = node_of[&shard];
                let out = buffers.entry(node).or_default();
                for i in 0..stored.len() {
                    if i > 0 {
                        out.push(b'\t');
                    }
                    let value = row.get::<String>(i + 2).ok().flatten();
                    copy_text(value.as_deref(), out);
                }
                out.push(b'\n');
                if out.len() >= COPY_CHUNK {
                    flush(node, out);
                }
            }
        }
    });
    for (node, data) in buffers.iter_mut() {
        flush(*node, data);
    }

    // Swap the tables here, then give both sides their keys, indexes, owner, privileges.
    run(&format!("DROP TABLE {table_sql}"));
    run(&format!(
        "ALTER TABLE {new_sql} RENAME TO {}",
        quote_ident(&def.name)
    ));
    let finishing = def.finishing_statements(&table_sql);
    for statement in &finishing {
        run(statement);
    }
    let finishing = finishing.join(";\n");
    for node in &remotes {
        pool::in_transaction(node, true, |c| c.exec(&finishing, &[]));
    }

    metadata::propose(
        Command::AddTable(TableRecord {
            id: 0,
            schema_name: def.schema.clone(),
            table_name: def.name.clone(),
            kind: TableKind::Distributed,
            shard_key: Some(key.to_owned()),
            key_type: Some(key_column.type_sql.clone()),
            shard_count: Some(shard_count),
            created_at_unix_ms: now_ms(),
        }),
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
}

fn reference_trigger_ddl(table_sql: &str) -> String {
    format!(
        "CREATE TRIGGER {REFERENCE_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table_sql} \
         FOR EACH STATEMENT EXECUTE FUNCTION synapse.reference_table_write_guard()"
    )
}

/// `synapse.create_reference_table()`.
pub fn make_reference(table: pg_sys::Oid) {
    check_owner(table);
    pool::allow_several_writers();
    check_not_in_catalog(table);
    let def = ddl::read(table);
    let me = metadata::local_node_id();
    let nodes = metadata::nodes();
    let table_sql = def.qualified();
    // Writers wait; readers go on reading the local copy.
    run(&format!("LOCK TABLE {table_sql} IN EXCLUSIVE MODE"));
    let remotes: Vec<&NodeTarget> = nodes.iter().filter(|n| n.id != me).collect();
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS {};\nCREATE TABLE {table_sql} {}",
        quote_ident(&def.schema),
        def.column_list()
    );
    for node in &remotes {
        pool::in_transaction(node, true, |c| c.exec(&create, &[]).map_err(missing_object));
    }
    let stored: Vec<String> = def
        .stored_columns()
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let copy_sql = format!("COPY {table_sql} ({}) FROM STDIN", stored.join(", "));
    let texts = def.stored_as_text();
    let mut data = Vec::new();
    let send = |data: &mut Vec<u8>| {
        if data.is_empty() {
            return;
        }
        for node in &remotes {
            pool::in_transaction(node, true, |c| c.copy_in(&copy_sql, data));
        }
        data.clear();
    };
    Spi::connect(|client| {
        let mut cursor = client.open_cursor(&format!("SELECT {texts} FROM {table_sql}"), &[]);
        loop {
            let batch = cursor.fetch(BATCH).expect("fetch rows to copy");
            if batch.is_empty() {
                break;
            }
            for row in batch {
                for i in 0..stored.len() {
                    if i > 0 {
                        data.push(b'\t');
                    }
                    copy_text(
                        row.get::<String>(i + 1).ok().flatten().as_deref(),
                        &mut data,
                    );
                }
                data.push(b'\n');
                if data.len() >= COPY_CHUNK {
                    send(&mut data);
                }
            }
        }
    });
    send(&mut data);
    let mut finishing = def.finishing_statements(&table_sql);
    finishing.push(reference_trigger_ddl(&table_sql));
    let finishing = finishing.join(";\n");
    for node in &remotes {
        pool::in_transaction(node, true, |c| c.exec(&finishing, &[]));
    }
    run(&reference_trigger_ddl(&table_sql));
    metadata::propose(
        Command::AddTable(TableRecord {
            id: 0,
            schema_name: def.schema.clone(),
            table_name: def.name.clone(),
            kind: TableKind::Reference,
            shard_key: None,
            key_type: None,
            shard_count: None,
            created_at_unix_ms: now_ms(),
        }),
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
}

/// `synapse.undistribute_table()`.
pub fn undistribute(table: pg_sys::Oid) {
    check_owner(table);
    pool::allow_several_writers();
    let (schema, name) = ddl::names(table);
    let table_sql = ddl::qualified(&schema, &name);
    let Some(entry) = metadata::table_entry(&schema, &name) else {
        error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {table_sql} is not distributed"),
            "Only tables made with synapse.create_distributed_table() or create_reference_table() can be undistributed.",
        );
    };
    let me = metadata::local_node_id();
    let nodes = metadata::nodes();
    let remotes: Vec<&NodeTarget> = nodes.iter().filter(|n| n.id != me).collect();
    run(&format!("LOCK TABLE {table_sql} IN ACCESS EXCLUSIVE MODE"));
    let drop_remote = format!("DROP TABLE IF EXISTS {table_sql}");
    if entry.kind == "reference" {
        for node in &remotes {
            pool::in_transaction(node, true, |c| c.exec(&drop_remote, &[]));
        }
        run(&format!(
            "DROP TRIGGER IF EXISTS {REFERENCE_TRIGGER} ON {table_sql}"
        ));
    } else {
        let def = ddl::read_distributed(table);
        let new_name = format!("{}_synapse_new", name.chars().take(40).collect::<String>());
        let new_sql = ddl::qualified(&schema, &new_name);
        run(&format!("CREATE TABLE {new_sql} {}", def.column_list()));
        let stored = def.stored_columns();
        let column_list = stored
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        run(&format!(
            "INSERT INTO {new_sql} ({column_list}) SELECT {column_list} FROM {table_sql}"
        ));
        let texts = def.stored_as_text();
        let insert = format!(
            "INSERT INTO {new_sql} ({column_list}) SELECT {} FROM unnest({}) AS u({})",
            stored
                .iter()
                .enumerate()
                .map(|(i, c)| format!("CAST(u.c{i} AS {})", c.type_sql))
                .collect::<Vec<_>>()
                .join(", "),
            (1..=stored.len())
                .map(|i| format!("${i}::text[]"))
                .collect::<Vec<_>>()
                .join(", "),
            (0..stored.len())
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        for node in &remotes {
            let declare = format!(
                "DECLARE synapse_undistribute NO SCROLL CURSOR FOR SELECT {texts} FROM {table_sql}"
            );
            pool::in_transaction(node, true, |c| c.exec(&declare, &[]));
            loop {
                let rows = pool::in_transaction(node, true, |c| {
                    c.exec(&format!("FETCH {BATCH} FROM synapse_undistribute"), &[])
                });
                if rows.rows.is_empty() {
                    break;
                }
                let mut columns: Vec<Vec<Option<String>>> =
                    vec![Vec::with_capacity(rows.rows.len()); stored.len()];
                for row in rows.rows {
                    for (i, v) in row.into_iter().enumerate() {
                        columns[i].push(v);
                    }
                }
                let args: Vec<pgrx::datum::DatumWithOid> =
                    columns.into_iter().map(|c| c.into()).collect();
                bypassed(|| Spi::run_with_args(&insert, &args)).unwrap_or_else(|e| {
                    error(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), "")
                });
            }
            pool::in_transaction(node, true, |c| {
                c.exec(&format!("CLOSE synapse_undistribute; {drop_remote}"), &[])
            });
        }
        run(&format!("DROP TABLE {table_sql}"));
        run(&format!(
            "ALTER TABLE {new_sql} RENAME TO {}",
            quote_ident(&name)
        ));
        for statement in def.finishing_statements(&table_sql) {
            run(&statement);
        }
    }
    metadata::propose(
        Command::RemoveTable {
            schema_name: schema,
            table_name: name,
        },
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
    );
}
