//! SQL API of the Raft-managed cluster: membership, status and cluster settings.
//!
//! Every change goes through the Raft log (forwarded to the leader by this node's raft
//! worker) and returns once it is applied on this node, so the caller reads its own
//! writes from the catalog views right after.

use std::time::Duration;

use pgrx::prelude::*;
use synapse_core::raft::messages::{
    ErrorKind, LocalReply, LocalRequest, NodeDescription, NodeError, PeerRequest, RevokeTarget,
};
use synapse_core::raft::types::{Command, CommandResult, NodeAddr};

use crate::gucs;
use crate::pg::local_rpc::{call, report};
use crate::pg::time::now_ms;
use crate::shmem::{self, WorkerKind};

fn ask(request: LocalRequest) -> LocalReply {
    call(&request, Duration::from_millis(gucs::raft_timeout_ms()))
}

fn node_id(reply: LocalReply) -> i64 {
    match reply {
        LocalReply::NodeId(id) => id as i64,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    }
}

fn applied(reply: LocalReply) -> CommandResult {
    match reply {
        LocalReply::Applied(result) => result,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    }
}

fn check_name(what: &str, name: &str) {
    if name.trim().is_empty() {
        report(NodeError::new(
            ErrorKind::InvalidRequest,
            format!("{what} must not be empty"),
        ));
    }
}

/// `synapse.init_cluster(name)`: bootstraps a one-node cluster on this node; returns its id.
#[pg_extern(volatile)]
fn init_cluster(name: default!(&str, "'synapse'")) -> i64 {
    check_name("the cluster name", name);
    node_id(ask(LocalRequest::InitCluster {
        name: name.to_owned(),
    }))
}

/// `synapse.add_node(host, port)`: admits the PostgreSQL server at host:port; returns its id.
#[pg_extern(volatile)]
fn add_node(host: &str, port: default!(i32, 5432)) -> i64 {
    check_name("the host", host);
    if !(1..=65535).contains(&port) {
        report(NodeError::new(
            ErrorKind::InvalidRequest,
            format!("port {port} is out of range (1 to 65535)"),
        ));
    }
    node_id(ask(LocalRequest::AddNode {
        host: host.to_owned(),
        port: port as u16,
    }))
}

/// `synapse.remove_node(node)`: removes a node by name.
#[pg_extern(volatile, name = "remove_node")]
fn remove_node_by_name(node: &str) {
    check_name("the node", node);
    ask(LocalRequest::RemoveNode {
        node: node.to_owned(),
    });
}

/// `synapse.remove_node(node)`: removes a node by id.
#[pg_extern(volatile, name = "remove_node")]
fn remove_node_by_id(node: i64) {
    ask(LocalRequest::RemoveNode {
        node: node.to_string(),
    });
}

/// `synapse.transfer_leadership(node)`: makes the voter `node` (by name) the Raft leader;
/// returns once this node has heard from it as leader.
#[pg_extern(volatile, name = "transfer_leadership")]
fn transfer_leadership_by_name(node: &str) {
    check_name("the node", node);
    ask(LocalRequest::TransferLeadership {
        node: node.to_owned(),
    });
}

/// `synapse.transfer_leadership(node)`: the same, by node id.
#[pg_extern(volatile, name = "transfer_leadership")]
fn transfer_leadership_by_id(node: i64) {
    ask(LocalRequest::TransferLeadership {
        node: node.to_string(),
    });
}

/// `synapse.raft_status()`: this node's view of Raft.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn raft_status() -> TableIterator<
    'static,
    (
        name!(node_id, Option<i64>),
        name!(term, i64),
        name!(role, String),
        name!(leader_id, Option<i64>),
        name!(commit_index, Option<i64>),
        name!(applied_index, Option<i64>),
        name!(last_log_index, Option<i64>),
        name!(lease_remaining_ms, Option<i64>),
    ),
> {
    let status = match ask(LocalRequest::Status) {
        LocalReply::Status(s) => s,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    };
    let i = |v: Option<u64>| v.map(|v| v as i64);
    TableIterator::once((
        i(status.node_id),
        status.term as i64,
        status.role,
        i(status.leader_id),
        i(status.commit_index),
        i(status.applied_index),
        i(status.last_log_index),
        i(status.lease_remaining_ms),
    ))
}

/// `synapse.set_cluster_setting(name, value)`.
#[pg_extern(volatile)]
fn set_cluster_setting(name: &str, value: &str) {
    check_name("the setting name", name);
    applied(ask(LocalRequest::Propose(Command::SetSetting {
        name: name.to_owned(),
        value: value.to_owned(),
        at_unix_ms: now_ms(),
    })));
}

/// `synapse.compare_and_set_cluster_setting(name, expected, new)`: sets `name` to `new` if
/// its value is `expected` (NULL: not set); returns whether it did.
#[pg_extern(volatile)]
fn compare_and_set_cluster_setting(name: &str, expected: Option<&str>, new: &str) -> bool {
    check_name("the setting name", name);
    match applied(ask(LocalRequest::Propose(Command::CompareAndSetSetting {
        name: name.to_owned(),
        expected: expected.map(str::to_owned),
        value: new.to_owned(),
        at_unix_ms: now_ms(),
    }))) {
        CommandResult::CompareAndSet { applied, .. } => applied,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected result {other:?}"),
        )),
    }
}

/// `synapse.cluster_setting(name)`: a linearizable read of a cluster setting (NULL if unset).
#[pg_extern(volatile)]
fn cluster_setting(name: &str) -> Option<String> {
    ask(LocalRequest::ReadBarrier);
    crate::pg::spi::select_one::<String>(
        "SELECT value FROM synapse.setting_catalog WHERE name = $1",
        &[name],
    )
}

/// `synapse.tls_status()`: this node's certificate, the CA's fingerprint and the number of
/// the revocation list in force (all NULL on a node outside any cluster).
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn tls_status() -> TableIterator<
    'static,
    (
        name!(serial, Option<String>),
        name!(sans, Vec<String>),
        name!(not_after, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(days_left, Option<f64>),
        name!(ca_fingerprint, Option<String>),
        name!(crl_number, Option<i64>),
    ),
> {
    let status = match ask(LocalRequest::TlsStatus) {
        LocalReply::Tls(s) => s,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    };
    let not_after = status
        .not_after_unix
        .map(|t| pgrx::datum::datetime_support::to_timestamp(t as f64));
    TableIterator::once((
        status.serial,
        status.sans,
        not_after,
        status.seconds_left.map(|s| s as f64 / 86_400.0),
        status.ca_fingerprint,
        status.crl_number.map(|n| n as i64),
    ))
}

/// `synapse.rotate_certificates(node DEFAULT NULL)`: renews now the certificate of `node`
/// (name or id), or of every member; returns the nodes that renewed.
#[pg_extern(volatile)]
fn rotate_certificates(node: default!(Option<&str>, "NULL")) -> SetOfIterator<'static, String> {
    match ask(LocalRequest::RotateCertificates {
        node: node.map(str::to_owned),
    }) {
        LocalReply::Names(names) => SetOfIterator::new(names),
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// `synapse.revoke_certificate(serial)`: revokes one certificate of the cluster CA; every
/// node refuses it for new connections once the new revocation list reaches it.
#[pg_extern(volatile)]
fn revoke_certificate(serial: &str) {
    applied(ask(LocalRequest::Revoke(RevokeTarget::Serial(
        serial.into(),
    ))));
}

/// `synapse.revoke_node_certificates(node)`: revokes every certificate of a node (by name
/// or id, also of a removed node); returns how many of its certificates are now revoked.
#[pg_extern(volatile)]
fn revoke_node_certificates(node: &str) -> i64 {
    applied(ask(LocalRequest::Revoke(RevokeTarget::Node(node.into()))));
    Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM synapse.certificate_catalog \
         WHERE (node_name = $1 OR node_id::text = $1) AND revoked_at_unix_ms IS NOT NULL",
        &[node.into()],
    )
    .unwrap_or_else(|e| report(NodeError::new(ErrorKind::Internal, e.to_string())))
    .unwrap_or(0)
}

/// `synapse.admission_call(request)`: how a leader reaches a node that holds no valid
/// certificate of its cluster (being admitted, or removed): the request goes to this
/// node's raft worker, the answer comes back as JSON. Superusers only: it is what
/// `add_node` and `remove_node` on the leader use, authorised by this server's pg_hba.
#[pg_extern(volatile)]
fn admission_call(request: &str) -> String {
    // SAFETY: superuser() reads the session's role; we are on the main thread.
    if !unsafe { pg_sys::superuser() } {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may call synapse.admission_call()",
            "admission_call",
        )
        .set_hint("The cluster's leader calls it while adding or removing this node.")
        .report(PgLogLevel::ERROR);
    }
    let request: PeerRequest = serde_json::from_str(request).unwrap_or_else(|e| {
        report(
            NodeError::new(
                ErrorKind::InvalidRequest,
                format!("not an admission request: {e}"),
            )
            .hint("Run the same SynapseDB version on every node."),
        )
    });
    let reply = match ask(LocalRequest::Admission(request)) {
        LocalReply::Peer(reply) => reply,
        other => report(NodeError::new(
            ErrorKind::Internal,
            format!("unexpected answer {other:?}"),
        )),
    };
    serde_json::to_string(&reply).expect("serializable")
}

/// `synapse.node_info()`: how this node describes itself to a leader admitting it.
#[pg_extern(volatile)]
fn node_info() -> pgrx::JsonB {
    let status = match ask(LocalRequest::Status) {
        LocalReply::Status(s) => s,
        _ => Default::default(),
    };
    let cluster_id =
        crate::pg::spi::select_one::<String>("SELECT cluster_id FROM synapse.cluster_catalog", &[]);
    // SAFETY: PostPortNumber is set at server start.
    let pg_port = unsafe { pg_sys::PostPortNumber } as u16;
    let description = NodeDescription {
        addr: NodeAddr {
            name: gucs::node_name(),
            host: gucs::listen_address(),
            pg_port,
            rpc_port: gucs::rpc_port(),
            gossip_port: gucs::gossip_port(),
        },
        node_id: status.node_id,
        cluster_id,
    };
    pgrx::JsonB(serde_json::to_value(description).expect("serializable"))
}

/// Trigger on the catalog tables: only the raft worker, applying the Raft log, writes them.
#[pg_trigger]
fn catalog_write_guard<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, pgrx::heap_tuple::PgHeapTupleError> {
    if !shmem::is_worker(WorkerKind::Raft) {
        let table = trigger.table_name().unwrap_or_else(|_| "catalog".into());
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("synapse.{table} is changed only through Raft"),
            "catalog_write_guard",
        )
        .set_hint("Use the synapse SQL functions, e.g. synapse.set_cluster_setting() or synapse.add_node().")
        .report(PgLogLevel::ERROR);
    }
    Ok(trigger.new())
}
