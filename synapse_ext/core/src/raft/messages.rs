//! Requests and answers around the Raft node: from the node's own backends (over its local
//! socket) and between nodes (the `Cluster.Call` RPC).

use serde::{Deserialize, Serialize};

use super::types::{Command, CommandResult, NodeAddr, NodeId};
use crate::txn::Decision;

/// A backend's request with how long the backend waits for it (its own
/// `synapse.raft_timeout`, which a session may set): the worker gives up no sooner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalCall {
    pub request: LocalRequest,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What a backend of this node asks its raft worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LocalRequest {
    /// Bootstrap a one-node cluster here.
    InitCluster { name: String },
    /// Admit the PostgreSQL server at host:port.
    AddNode { host: String, port: u16 },
    /// Remove a node, named by id or name.
    RemoveNode { node: String },
    /// Replicate a command; answers once it is applied on this node.
    Propose(Command),
    /// Replicate a command; answers once it is committed (durable on a majority) and
    /// applied on the leader, without waiting for this node to apply it (a transaction's
    /// commit decision: only recovery reads it here, and recovery asks Raft again).
    ProposeDurable(Command),
    /// Linearizable read barrier: answers once this node has applied everything committed
    /// before the request arrived.
    ReadBarrier,
    /// This node's Raft status.
    Status,
    /// Make `node` (id or name) the leader.
    TransferLeadership { node: String },
    /// This node's certificate, CA and revocation list (`synapse.tls_status()`).
    TlsStatus,
    /// An admission request from a leader, relayed by `synapse.admission_call()`.
    Admission(PeerRequest),
    /// Revoke certificates; answers once the new CRL is applied on this node.
    Revoke(RevokeTarget),
    /// Renew now the certificate of `node` (name or id), or of every member; answers with
    /// the names of the nodes that renewed.
    RotateCertificates { node: Option<String> },
    /// The commit decisions this node has applied for these transactions (those it has).
    Decisions { gids: Vec<String> },
}

/// Which certificates to revoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    /// One certificate, by serial (hex).
    Serial(String),
    /// Every unrevoked certificate of a node, by name or id (also of a removed node).
    Node(String),
}

/// SQLSTATE-like classes of failures, mapped to PostgreSQL error codes by the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is wrong (unknown node, bad name...).
    InvalidRequest,
    /// The cluster is not in a state that allows it (not initialized, already member...).
    WrongState,
    /// No quorum or leader within the deadline.
    Unavailable,
    /// A peer could not be reached or answered badly.
    Connection,
    /// A bug or storage failure.
    Internal,
}

/// A failure with a message for the user and an optional hint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl NodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        NodeError {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// One row of `synapse.raft_status()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub node_id: Option<NodeId>,
    pub term: u64,
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    pub lease_remaining_ms: Option<u64>,
}

/// One row of `synapse.tls_status()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    pub serial: Option<String>,
    pub sans: Vec<String>,
    pub not_after_unix: Option<i64>,
    pub seconds_left: Option<i64>,
    pub ca_fingerprint: Option<String>,
    pub crl_number: Option<u64>,
}

/// Answers to [`LocalRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LocalReply {
    NodeId(NodeId),
    Applied(CommandResult),
    Status(RaftStatus),
    Tls(TlsStatus),
    Peer(PeerReply),
    Names(Vec<String>),
    Decisions(Vec<Decision>),
    Done,
    Failed(NodeError),
}

/// Node-to-node requests (`Cluster.Call`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// To the leader: replicate this command.
    Propose(Command),
    /// To the leader: confirm leadership and return the index reads must wait for.
    ReadIndex,
    /// To the leader: admit host:port.
    AddNode { host: String, port: u16 },
    /// To the leader: remove a node.
    RemoveNode { node: String },
    /// To the leader: hand leadership to `node`.
    TransferLeadership { node: String },
    /// From the leader to a joining node: this is your id in cluster `cluster_id`.
    Join {
        node_id: NodeId,
        cluster_id: String,
        gossip_key: String,
        /// What this node needs to take part in TLS (absent for a cluster without a CA).
        #[serde(default)]
        tls: Option<JoinTls>,
    },
    /// From the leader to a node it is about to admit: make a key and send a request to
    /// certify it (the key stays on the node).
    CertificateRequest,
    /// To the leader: revoke certificates and publish the new CRL.
    Revoke(RevokeTarget),
    /// From a member to another: renew your certificate now.
    RenewNow,
    /// To the leader, from member `node_id` itself (its certificate must say so): certify
    /// this new key of mine.
    Renew { node_id: NodeId, csr: String },
    /// From the leader handing over leadership: start an election now (the leader has let
    /// its lease run out, and this node's log is as long as the leader's).
    StartElection,
    /// From the leader to a node removed from the membership: forget the cluster (its log,
    /// identity and catalog) so that it can be added again later.
    Leave { node_id: NodeId, cluster_id: String },
}

/// The TLS part of a [`PeerRequest::Join`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTls {
    /// The cluster secret (hex), which opens the CA key when this node leads.
    pub cluster_secret: String,
    pub ca_pem: String,
    pub crl_pem: String,
    /// The node's certificate, for the key of its last [`PeerRequest::CertificateRequest`].
    pub cert_pem: String,
}

impl std::fmt::Debug for JoinTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTls").finish_non_exhaustive()
    }
}

/// What a node says about itself (`synapse.node_info()`) before a leader admits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub addr: NodeAddr,
    /// The node id, when the node already belongs to a cluster.
    pub node_id: Option<NodeId>,
    pub cluster_id: Option<String>,
}

/// Answers to [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerReply {
    Applied {
        index: u64,
        result: CommandResult,
    },
    ReadIndex(u64),
    /// A signing request (PEM), the answer to [`PeerRequest::CertificateRequest`].
    Csr(String),
    /// The answer to [`PeerRequest::Renew`]: the certificate, recorded at log `index`.
    Certified {
        cert_pem: String,
        index: u64,
    },
    NodeId(NodeId),
    Done,
    /// Not the leader; the leader's id and RPC address when known.
    NotLeader {
        leader: Option<(NodeId, String)>,
    },
    /// The request did not reach the node (made up by the caller, never sent).
    Unreachable(String),
    Failed(NodeError),
}
