//! The replicated commands and openraft's type configuration.
//!
//! A [`Command`] is one change to the cluster catalog; every node applies the same
//! commands in the same order, so every node's catalog is the same function of the log.
//! Commands therefore carry every value they need (ids, timestamps) — applying one never
//! consults a clock or a random source.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Node ids are small integers assigned by the leader when a node joins.
pub type NodeId = u64;

/// Where a node is reached: its PostgreSQL and RPC endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub name: String,
    pub host: String,
    pub pg_port: u16,
    pub rpc_port: u16,
    /// UDP port of its SWIM gossip.
    #[serde(default)]
    pub gossip_port: u16,
}

impl NodeAddr {
    /// `host:rpc_port`, the address other nodes' Raft traffic goes to.
    pub fn rpc_endpoint(&self) -> String {
        format!("{}:{}", self.host, self.rpc_port)
    }
}

/// A voter takes part in elections and quorums; a learner only receives the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Voter,
    Learner,
}

/// One change to the cluster catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a cluster: its identity.
    InitCluster {
        cluster_id: String,
        name: String,
        at_unix_ms: i64,
    },
    /// A node joined (or changed its role or address).
    UpsertNode {
        id: NodeId,
        addr: NodeAddr,
        role: Role,
        at_unix_ms: i64,
    },
    /// A node left the cluster.
    RemoveNode { id: NodeId },
    /// Sets a cluster setting unconditionally.
    SetSetting {
        name: String,
        value: String,
        at_unix_ms: i64,
    },
    /// Sets a cluster setting only if its current value is `expected` (`None`: unset).
    CompareAndSetSetting {
        name: String,
        expected: Option<String>,
        value: String,
        at_unix_ms: i64,
    },
    /// The cluster's certificate authority, made by `init_cluster`, and its first CRL.
    InitTls {
        ca: crate::tls::CaBundle,
        crl_pem: String,
    },
    /// The CA issued a certificate.
    RecordCertificate(super::catalog::CertRecord),
    /// Certificates revoked, with the CRL (numbered `crl_number`) that lists them all.
    RevokeCertificates {
        serials: Vec<String>,
        at_unix_ms: i64,
        crl_number: u64,
        crl_pem: String,
    },
    /// Expired certificates dropped from the catalog (their files are gone too).
    ForgetCertificates { serials: Vec<String> },
    /// Gives the shards of `shard_count` their nodes, on the consistent-hash ring of the
    /// current members with `vnodes` virtual nodes each; nothing if they have them already
    /// (all tables of one shard count share one placement map, so they are co-located).
    PlaceShards { shard_count: u32, vnodes: u32 },
    /// A table became distributed or reference (refused if it already is one).
    AddTable(super::catalog::TableRecord),
    /// A table is local again (refused if it is not distributed or reference).
    RemoveTable {
        schema_name: String,
        table_name: String,
    },
    /// A distributed transaction's commit decision; the first one recorded for a gid wins
    /// (the result is the decision in force).
    DecideTransaction(crate::txn::Decision),
    /// Decisions no participant needs any more.
    ForgetTransactions { gids: Vec<String> },
    /// Commands proposed concurrently, applied in order in one log entry (the leader
    /// batches proposals that arrive while the previous entry commits).
    Batch(Vec<Command>),
}

/// What applying a command produced, returned to the proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied (also the result of Raft's own blank and membership entries).
    #[default]
    Done,
    /// A compare-and-set: whether it applied, and the value it found.
    CompareAndSet {
        applied: bool,
        current: Option<String>,
    },
    /// The command was valid Raft-wise but refused by the catalog (e.g. a duplicate name);
    /// the message is for the user.
    Refused(String),
    /// The decision in force for a [`Command::DecideTransaction`].
    Decided(crate::txn::Outcome),
    /// The results of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata log.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
