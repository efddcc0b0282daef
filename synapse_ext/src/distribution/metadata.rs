//! Reads of the distribution catalog (`synapse.table_catalog`, `placement_catalog`,
//! `node_catalog`) and proposals to change it through Raft.

use std::time::Duration;

use pgrx::prelude::*;
use synapse_core::raft::messages::{ErrorKind, LocalReply, LocalRequest, NodeError};
use synapse_core::raft::types::{Command, CommandResult};

use crate::gucs;
use crate::pg::local_rpc::{call, report};
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

/// Every member node.
pub fn nodes() -> Vec<NodeTarget> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT id, name, host, port FROM synapse.node_catalog ORDER BY id",
                None,
                &[],
            )
            .expect("node catalog")
            .map(|row| NodeTarget {
                id: row.get::<i64>(1).ok().flatten().unwrap_or_default(),
                name: row.get::<String>(2).ok().flatten().unwrap_or_default(),
                host: row.get::<String>(3).ok().flatten().unwrap_or_default(),
                port: row.get::<i32>(4).ok().flatten().unwrap_or_default() as u16,
            })
            .collect()
    })
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
        &[gucs::node_name().into()],
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
    Spi::connect(|client| {
        client
            .select(
                "SELECT node_id FROM synapse.placement_catalog WHERE shard_count = $1 ORDER BY shard",
                None,
                &[(shard_count as i32).into()],
            )
            .expect("placement catalog")
            .map(|row| row.get::<i64>(1).ok().flatten().unwrap_or_default())
            .collect()
    })
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
    Spi::connect(|client| {
        client
            .select(
                "SELECT kind, shard_key, shard_count FROM synapse.table_catalog \
                 WHERE schema_name = $1 AND table_name = $2",
                None,
                &[schema.into(), name.into()],
            )
            .expect("table catalog")
            .next()
            .map(|row| TableEntry {
                kind: row.get::<String>(1).ok().flatten().unwrap_or_default(),
                shard_key: row.get::<String>(2).ok().flatten(),
                shard_count: row.get::<i32>(3).ok().flatten().map(|c| c as u32),
            })
    })
}
