//! SQL over SWIM: `synapse.members()`, `synapse.partition_status()` and
//! `synapse.gossip_status()`, answered by this node's gossip worker.

use std::time::Duration;

use pgrx::prelude::*;
use synapse_core::raft::messages::{ErrorKind, NodeError};
use synapse_core::swim::service::{GossipReply, GossipRequest, GossipStatus, MemberRow};

use crate::pg::local_rpc::{exchange, report};

/// How long a backend waits for the gossip worker.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

use crate::pg::time::timestamptz_ms as timestamp;

fn ask(request: GossipRequest) -> GossipReply {
    match exchange::<_, GossipReply>("gossip", &request, ASK_TIMEOUT) {
        GossipReply::Failed(e) => report(e),
        reply => reply,
    }
}

fn members_now() -> Vec<MemberRow> {
    match ask(GossipRequest::Members) {
        GossipReply::Members(rows) => rows,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    }
}

fn status_now() -> GossipStatus {
    match ask(GossipRequest::Status) {
        GossipReply::Status(s) => s,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// `synapse.members()`: every member as SWIM on this node sees it.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn members() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(address, String),
        name!(state, String),
        name!(incarnation, i64),
        name!(since, TimestampWithTimeZone),
    ),
> {
    TableIterator::new(members_now().into_iter().map(|m| {
        (
            m.name,
            m.address,
            m.state,
            m.incarnation as i64,
            timestamp(m.since_unix_ms),
        )
    }))
}

/// `synapse.partition_status()`: whether this node sees a majority of the members up
/// (ALIVE or SUSPECTED), and since when.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn partition_status() -> TableIterator<
    'static,
    (
        name!(side, String),
        name!(members_up, i32),
        name!(members, i32),
        name!(since, TimestampWithTimeZone),
    ),
> {
    let s = status_now();
    if !s.active {
        report(
            NodeError::new(ErrorKind::WrongState, "this node is not a member of a cluster")
                .hint("Run SELECT synapse.init_cluster() on this node, or synapse.add_node() for it on a member."),
        );
    }
    let side = if s.majority { "majority" } else { "minority" };
    TableIterator::once((
        side.to_owned(),
        s.members_up as i32,
        s.members as i32,
        timestamp(s.since_unix_ms),
    ))
}

/// `synapse.gossip_status()`: this node's SWIM counters.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn gossip_status() -> TableIterator<
    'static,
    (
        name!(active, bool),
        name!(incarnation, i64),
        name!(health_score, i32),
        name!(datagrams_sent, i64),
        name!(datagrams_received, i64),
        name!(datagrams_rejected, i64),
    ),
> {
    let s = status_now();
    TableIterator::once((
        s.active,
        s.incarnation as i64,
        s.health_score as i32,
        s.datagrams_sent as i64,
        s.datagrams_received as i64,
        s.datagrams_rejected as i64,
    ))
}
