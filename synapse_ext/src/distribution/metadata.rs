//! Reads of the distribution catalog (`synapse.table_catalog`, `placement_catalog`,
//! `node_catalog`) and proposals to change it through Raft.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use pgrx::prelude::*;
use synapse_core::raft::messages::{ErrorKind, LocalReply, LocalRequest, NodeError};
use synapse_core::raft::types::{Command, CommandResult};

use crate::gucs;
use crate::pg::local_rpc::{call, report};
use crate::pg::spi::select_rows;
use crate::remote::connection::NodeTarget;

/// Proposes `command`; returns once it is applied on this node. A refusal is an ERROR
/// with `refused` as its SQLSTATE.
pub fn propose(command: Command, refused: PgSqlErrorCode) {
    let reply = call(
        &LocalRequest::Propose(command),
        Duration::from_millis(gucs::raft_timeout_ms()),
    );
    match reply {
        LocalReply::Applied(CommandResult::Refused(message)) => {
            pgrx::pg_sys::panic::ErrorReport::new(refused, message, "synapse")
                .report(PgLogLevel::ERROR);
        }
        LocalReply::Applied(_) => {}
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// The distribution catalog as this backend last read it, tagged with the catalog
/// generation it read it at; reloaded whenever the raft worker has changed the catalog
/// since (planning a routed statement must not cost catalog queries).
struct Cache {
    generation: u64,
    nodes: Vec<NodeTarget>,
    tables: HashMap<(String, String), TableEntry>,
    placements: HashMap<u32, Vec<i64>>,
    /// Whether any table is a reference table.
    any_reference: bool,
}

thread_local! {
    static CACHE: RefCell<Option<Rc<Cache>>> = const { RefCell::new(None) };
}

fn cache() -> Rc<Cache> {
    let generation = crate::shmem::catalog_generation();
    if let Some(c) = CACHE
        .with(|c| c.borrow().clone())
        .filter(|c| c.generation == generation)
    {
        return c;
    }
    // Read the generation before the rows: the rows are then at least that new.
    let nodes = select_rows(
        "SELECT id, name, host, port FROM synapse.node_catalog ORDER BY id",
        &[],
    )
    .into_iter()
    .map(|r| NodeTarget {
        id: number(&r[0]),
        name: r[1].clone().unwrap_or_default(),
        host: r[2].clone().unwrap_or_default(),
        port: number(&r[3]) as u16,
    })
    .collect();
    let tables: HashMap<(String, String), TableEntry> = select_rows(
        "SELECT schema_name, table_name, kind, shard_key, shard_count FROM synapse.table_catalog",
        &[],
    )
    .into_iter()
    .map(|r| {
        (
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            ),
            TableEntry {
                kind: r[2].clone().unwrap_or_default(),
                shard_key: r[3].clone(),
                shard_count: r[4].as_deref().and_then(|s| s.parse().ok()),
            },
        )
    })
    .collect();
    let mut placements: HashMap<u32, Vec<i64>> = HashMap::new();
    for r in select_rows(
        "SELECT shard_count, node_id FROM synapse.placement_catalog ORDER BY shard_count, shard",
        &[],
    ) {
        placements
            .entry(number(&r[0]) as u32)
            .or_default()
            .push(number(&r[1]));
    }
    let any_reference = tables.values().any(|e| e.kind == "reference");
    let c = Rc::new(Cache {
        generation,
        nodes,
        tables,
        placements,
        any_reference,
    });
    CACHE.with(|slot| *slot.borrow_mut() = Some(c.clone()));
    c
}

/// Whether the catalog holds any reference table.
pub fn any_reference_table() -> bool {
    cache().any_reference
}

/// Every member node.
pub fn nodes() -> Vec<NodeTarget> {
    cache().nodes.clone()
}

fn number(v: &Option<String>) -> i64 {
    v.as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// This node's id; an ERROR when it is not a member of a cluster. Cached by the backend
/// once known: a node's id never changes (ids are never given twice).
pub fn local_node_id() -> i64 {
    thread_local! {
        static ID: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
    }
    if let Some(id) = ID.with(|c| c.get()) {
        return id;
    }
    let id = crate::pg::spi::select_one::<i64>(
        "SELECT id FROM synapse.node_catalog WHERE name = $1",
        &[&gucs::node_name()],
    );
    if let Some(id) = id {
        ID.with(|c| c.set(Some(id)));
    }
    id.unwrap_or_else(|| {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "this node is not a member of a cluster",
            "synapse",
        )
        .set_hint("Run SELECT synapse.init_cluster() here, or synapse.add_node() on a member.")
        .report(PgLogLevel::ERROR);
        unreachable!()
    })
}

/// The node of each shard of `shard_count` (index = shard), if placed.
pub fn placements(shard_count: u32) -> Vec<i64> {
    cache()
        .placements
        .get(&shard_count)
        .cloned()
        .unwrap_or_default()
}

/// A distributed or reference table's catalog entry.
#[derive(Clone, Debug)]
pub struct TableEntry {
    pub kind: String,
    pub shard_key: Option<String>,
    pub shard_count: Option<u32>,
}

/// The catalog entry of `schema.name`, if it is distributed or reference.
pub fn table_entry(schema: &str, name: &str) -> Option<TableEntry> {
    cache()
        .tables
        .get(&(schema.to_owned(), name.to_owned()))
        .cloned()
}
