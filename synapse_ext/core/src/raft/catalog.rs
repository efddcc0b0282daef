//! The cluster catalog as a pure, deterministic state machine.
//!
//! [`Catalog::apply`] decides what a committed [`Command`] does — the result for the
//! proposer and the row changes — from the catalog alone. The raft worker's main thread
//! writes those changes to the `synapse` catalog tables, in the same transaction as the
//! applied log id, so the tables always equal this model at that log id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{Command, CommandResult, NodeAddr, NodeId, Role};
use crate::tls::CaBundle;
use crate::txn::Decision;

/// The cluster's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub name: String,
    pub created_at_unix_ms: i64,
    /// The highest node id ever given: ids of removed nodes are never given again, so no
    /// message for a removed node can reach its successor.
    #[serde(default)]
    pub last_node_id: NodeId,
}

/// A member node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub role: Role,
    pub joined_at_unix_ms: i64,
}

/// A cluster setting; `version` is the log index that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRecord {
    pub name: String,
    pub value: String,
    pub version: u64,
    pub updated_at_unix_ms: i64,
}

/// The cluster CA (its key sealed under the cluster secret) and the revocation list in
/// force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCatalog {
    pub ca: CaBundle,
    pub crl_number: u64,
    pub crl_pem: String,
}

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Lower-case hex.
    pub serial: String,
    pub node_id: NodeId,
    pub node_name: String,
    pub sans: Vec<String>,
    pub not_before_unix_ms: i64,
    pub not_after_unix_ms: i64,
    pub revoked_at_unix_ms: Option<i64>,
}

/// How a table is spread over the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Rows spread over shards by the hash of the shard key.
    Distributed,
    /// A full copy on every node.
    Reference,
}

/// A distributed or reference table (`synapse.table_catalog`). Tables are named, not
/// numbered: a relation's oid differs from node to node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    /// The log index that added it (set by the catalog).
    #[serde(default)]
    pub id: u64,
    pub schema_name: String,
    pub table_name: String,
    pub kind: TableKind,
    /// Distributed tables only: the key column, its type (`format_type`), the shard count.
    pub shard_key: Option<String>,
    pub key_type: Option<String>,
    pub shard_count: Option<u32>,
    pub created_at_unix_ms: i64,
}

/// One row change, as the catalog tables must see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogChange {
    SetCluster(ClusterInfo),
    UpsertNode(NodeRecord),
    DeleteNode(NodeId),
    UpsertSetting(SettingRecord),
    SetTls(TlsCatalog),
    UpsertCertificate(CertRecord),
    DeleteCertificate(String),
    UpsertTable(TableRecord),
    DeleteTable(u64),
    /// The node of each shard `0..nodes.len()` of `shard_count`.
    SetPlacements {
        shard_count: u32,
        nodes: Vec<NodeId>,
    },
    UpsertDecision(Decision),
    DeleteDecisions(Vec<String>),
}

impl CatalogChange {
    /// Whether backends' cached distribution metadata must be read again after it:
    /// transaction decisions are not metadata (recovery and `synapse.transactions` read
    /// them), and a batch of decisions only is written to the tables behind its apply.
    pub fn affects_metadata(&self) -> bool {
        !matches!(
            self,
            CatalogChange::UpsertDecision(_) | CatalogChange::DeleteDecisions(_)
        )
    }
}

/// The whole catalog; also the content of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub cluster: Option<ClusterInfo>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub settings: BTreeMap<String, SettingRecord>,
    #[serde(default)]
    pub tls: Option<TlsCatalog>,
    /// By serial.
    #[serde(default)]
    pub certificates: BTreeMap<String, CertRecord>,
    /// Distributed and reference tables, by id.
    #[serde(default)]
    pub tables: BTreeMap<u64, TableRecord>,
    /// Shard count → the node of each shard.
    #[serde(default)]
    pub placements: BTreeMap<u32, Vec<NodeId>>,
    /// Distributed transactions' commit decisions, by gid.
    #[serde(default)]
    pub decisions: BTreeMap<String, Decision>,
}

impl Catalog {
    /// Applies the command committed at log `index`; returns the proposer's result and the
    /// row changes (empty when the command was refused).
    pub fn apply(&mut self, index: u64, command: &Command) -> (CommandResult, Vec<CatalogChange>) {
        match command {
            Command::Batch(commands) => {
                let mut results = Vec::with_capacity(commands.len());
                let mut changes = Vec::new();
                for command in commands {
                    let (result, mut c) = self.apply(index, command);
                    results.push(result);
                    changes.append(&mut c);
                }
                (CommandResult::Batch(results), changes)
            }
            Command::InitCluster {
                cluster_id,
                name,
                at_unix_ms,
            } => {
                if let Some(existing) = &self.cluster {
                    return refused(format!(
                        "the cluster is already initialized as \"{}\"",
                        existing.name
                    ));
                }
                let info = ClusterInfo {
                    cluster_id: cluster_id.clone(),
                    name: name.clone(),
                    created_at_unix_ms: *at_unix_ms,
                    last_node_id: 0,
                };
                self.cluster = Some(info.clone());
                (CommandResult::Done, vec![CatalogChange::SetCluster(info)])
            }
            Command::UpsertNode {
                id,
                addr,
                role,
                at_unix_ms,
            } => {
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.id != *id && n.addr.name == addr.name)
                {
                    return refused(format!(
                        "node name \"{}\" is already used by node {}",
                        addr.name, other.id
                    ));
                }
                if let Some(other) = self.nodes.values().find(|n| {
                    n.id != *id && n.addr.host == addr.host && n.addr.pg_port == addr.pg_port
                }) {
                    return refused(format!(
                        "{}:{} is already node {} (\"{}\")",
                        addr.host, addr.pg_port, other.id, other.addr.name
                    ));
                }
                let joined_at_unix_ms = self
                    .nodes
                    .get(id)
                    .map_or(*at_unix_ms, |n| n.joined_at_unix_ms);
                let record = NodeRecord {
                    id: *id,
                    addr: addr.clone(),
                    role: *role,
                    joined_at_unix_ms,
                };
                self.nodes.insert(*id, record.clone());
                let mut changes = vec![CatalogChange::UpsertNode(record)];
                if let Some(cluster) = self.cluster.as_mut().filter(|c| c.last_node_id < *id) {
                    cluster.last_node_id = *id;
                    changes.push(CatalogChange::SetCluster(cluster.clone()));
                }
                (CommandResult::Done, changes)
            }
            Command::RemoveNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return refused(format!("node {id} is not a member"));
                }
                (CommandResult::Done, vec![CatalogChange::DeleteNode(*id)])
            }
            Command::InitTls { ca, crl_pem } => {
                if self.tls.is_some() {
                    return refused("the cluster already has its certificate authority".into());
                }
                let tls = TlsCatalog {
                    ca: ca.clone(),
                    crl_number: 1,
                    crl_pem: crl_pem.clone(),
                };
                self.tls = Some(tls.clone());
                (CommandResult::Done, vec![CatalogChange::SetTls(tls)])
            }
            Command::RecordCertificate(record) => {
                if self.certificates.contains_key(&record.serial) {
                    return refused(format!("certificate {} is already recorded", record.serial));
                }
                self.certificates
                    .insert(record.serial.clone(), record.clone());
                (
                    CommandResult::Done,
                    vec![CatalogChange::UpsertCertificate(record.clone())],
                )
            }
            Command::RevokeCertificates {
                serials,
                at_unix_ms,
                crl_number,
                crl_pem,
            } => {
                let Some(tls) = self.tls.as_mut() else {
                    return refused("the cluster has no certificate authority".into());
                };
                if *crl_number <= tls.crl_number {
                    // Signed against an older list: the leader signs again and retries.
                    return refused(format!(
                        "revocation list {crl_number} is not newer than list {}",
                        tls.crl_number
                    ));
                }
                if let Some(unknown) = serials.iter().find(|s| !self.certificates.contains_key(*s))
                {
                    return refused(format!("no certificate has serial {unknown}"));
                }
                tls.crl_number = *crl_number;
                tls.crl_pem = crl_pem.clone();
                let mut changes = vec![CatalogChange::SetTls(tls.clone())];
                for serial in serials {
                    let record = self.certificates.get_mut(serial).expect("checked");
                    if record.revoked_at_unix_ms.is_none() {
                        record.revoked_at_unix_ms = Some(*at_unix_ms);
                        changes.push(CatalogChange::UpsertCertificate(record.clone()));
                    }
                }
                (CommandResult::Done, changes)
            }
            Command::ForgetCertificates { serials } => {
                let changes = serials
                    .iter()
                    .filter(|s| self.certificates.remove(*s).is_some())
                    .map(|s| CatalogChange::DeleteCertificate(s.clone()))
                    .collect();
                (CommandResult::Done, changes)
            }
            Command::PlaceShards {
                shard_count,
                vnodes,
            } => {
                if *shard_count == 0 || *shard_count > crate::distribution::MAX_SHARD_COUNT {
                    return refused(format!(
                        "a table has 1 to {} shards, not {shard_count}",
                        crate::distribution::MAX_SHARD_COUNT
                    ));
                }
                if self.placements.contains_key(shard_count) {
                    return (CommandResult::Done, vec![]);
                }
                if self.nodes.is_empty() {
                    return refused("the cluster has no nodes to place shards on".into());
                }
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                let nodes = crate::distribution::place_shards(&ids, *vnodes, *shard_count);
                self.placements.insert(*shard_count, nodes.clone());
                (
                    CommandResult::Done,
                    vec![CatalogChange::SetPlacements {
                        shard_count: *shard_count,
                        nodes,
                    }],
                )
            }
            Command::AddTable(table) => {
                if let Some(existing) = self.table(&table.schema_name, &table.table_name) {
                    return refused(format!(
                        "table {}.{} is already a {} table",
                        table.schema_name,
                        table.table_name,
                        match existing.kind {
                            TableKind::Distributed => "distributed",
                            TableKind::Reference => "reference",
                        }
                    ));
                }
                if table.kind == TableKind::Distributed {
                    let count = table.shard_count.unwrap_or(0);
                    if table.shard_key.is_none() || !self.placements.contains_key(&count) {
                        return refused(format!(
                            "table {}.{} needs a shard key and placed shards",
                            table.schema_name, table.table_name
                        ));
                    }
                }
                let record = TableRecord {
                    id: index,
                    ..table.clone()
                };
                self.tables.insert(index, record.clone());
                (
                    CommandResult::Done,
                    vec![CatalogChange::UpsertTable(record)],
                )
            }
            Command::RemoveTable {
                schema_name,
                table_name,
            } => {
                let Some(id) = self.table(schema_name, table_name).map(|t| t.id) else {
                    return refused(format!(
                        "table {schema_name}.{table_name} is not distributed"
                    ));
                };
                self.tables.remove(&id);
                (CommandResult::Done, vec![CatalogChange::DeleteTable(id)])
            }
            Command::DecideTransaction(decision) => {
                if let Some(existing) = self.decisions.get(&decision.gid) {
                    return (CommandResult::Decided(existing.outcome), vec![]);
                }
                self.decisions
                    .insert(decision.gid.clone(), decision.clone());
                (
                    CommandResult::Decided(decision.outcome),
                    vec![CatalogChange::UpsertDecision(decision.clone())],
                )
            }
            Command::ForgetTransactions { gids } => {
                let gone: Vec<String> = gids
                    .iter()
                    .filter(|g| self.decisions.remove(*g).is_some())
                    .cloned()
                    .collect();
                let changes = if gone.is_empty() {
                    vec![]
                } else {
                    vec![CatalogChange::DeleteDecisions(gone)]
                };
                (CommandResult::Done, changes)
            }
            Command::SetSetting {
                name,
                value,
                at_unix_ms,
            } => {
                let record = self.set(name, value, index, *at_unix_ms);
                (
                    CommandResult::Done,
                    vec![CatalogChange::UpsertSetting(record)],
                )
            }
            Command::CompareAndSetSetting {
                name,
                expected,
                value,
                at_unix_ms,
            } => {
                let current = self.settings.get(name).map(|s| s.value.clone());
                if current != *expected {
                    return (
                        CommandResult::CompareAndSet {
                            applied: false,
                            current,
                        },
                        vec![],
                    );
                }
                let record = self.set(name, value, index, *at_unix_ms);
                (
                    CommandResult::CompareAndSet {
                        applied: true,
                        current: Some(value.clone()),
                    },
                    vec![CatalogChange::UpsertSetting(record)],
                )
            }
        }
    }

    /// The distributed or reference table `schema.name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableRecord> {
        self.tables
            .values()
            .find(|t| t.schema_name == schema && t.table_name == name)
    }

    /// How many shards (of all shard counts) `node` holds.
    pub fn shards_on(&self, node: NodeId) -> usize {
        self.placements
            .values()
            .map(|nodes| nodes.iter().filter(|n| **n == node).count())
            .sum()
    }

    fn set(&mut self, name: &str, value: &str, index: u64, at_unix_ms: i64) -> SettingRecord {
        let record = SettingRecord {
            name: name.to_owned(),
            value: value.to_owned(),
            version: index,
            updated_at_unix_ms: at_unix_ms,
        };
        self.settings.insert(name.to_owned(), record.clone());
        record
    }
}

fn refused(message: String) -> (CommandResult, Vec<CatalogChange>) {
    (CommandResult::Refused(message), vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_transaction_decision_wins_and_forgetting_is_idempotent() {
        use crate::txn::{Decision, Outcome};
        let decision = |outcome| {
            Command::DecideTransaction(Decision {
                gid: "synapse_1_2_3".into(),
                outcome,
                coordinator: 1,
                participants: vec!["node2".into()],
                decided_at_unix_ms: 5,
                decided_by: "coordinator".into(),
            })
        };
        let mut catalog = Catalog::default();
        let (result, changes) = catalog.apply(1, &decision(Outcome::Abort));
        assert_eq!(result, CommandResult::Decided(Outcome::Abort));
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].affects_metadata());
        // A late commit (a coordinator after recovery's abort) gets the abort in force.
        let (result, changes) = catalog.apply(2, &decision(Outcome::Commit));
        assert_eq!(result, CommandResult::Decided(Outcome::Abort));
        assert!(changes.is_empty());
        let forget = Command::ForgetTransactions {
            gids: vec!["synapse_1_2_3".into(), "unknown".into()],
        };
        let (_, changes) = catalog.apply(3, &forget);
        assert_eq!(
            changes,
            vec![CatalogChange::DeleteDecisions(vec!["synapse_1_2_3".into()])]
        );
        assert!(catalog.apply(4, &forget).1.is_empty());
        assert!(catalog.decisions.is_empty());
    }

    fn addr(name: &str, port: u16) -> NodeAddr {
        NodeAddr {
            name: name.into(),
            host: "127.0.0.1".into(),
            pg_port: port,
            rpc_port: port + 2,
            gossip_port: port + 3,
        }
    }

    #[test]
    fn compare_and_set_applies_only_on_the_expected_value() {
        let mut c = Catalog::default();
        let cas = |expected: Option<&str>, value: &str| Command::CompareAndSetSetting {
            name: "k".into(),
            expected: expected.map(str::to_owned),
            value: value.into(),
            at_unix_ms: 0,
        };
        assert_eq!(
            c.apply(1, &cas(None, "a")).0,
            CommandResult::CompareAndSet {
                applied: true,
                current: Some("a".into())
            }
        );
        let (result, changes) = c.apply(2, &cas(None, "b"));
        assert_eq!(
            result,
            CommandResult::CompareAndSet {
                applied: false,
                current: Some("a".into())
            }
        );
        assert!(changes.is_empty());
        assert_eq!(
            c.apply(3, &cas(Some("a"), "c")).0,
            CommandResult::CompareAndSet {
                applied: true,
                current: Some("c".into())
            }
        );
        assert_eq!(c.settings["k"].version, 3);
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let mut c = Catalog::default();
        let up = |id, a| Command::UpsertNode {
            id,
            addr: a,
            role: Role::Voter,
            at_unix_ms: 5,
        };
        assert_eq!(c.apply(1, &up(1, addr("n1", 6410))).0, CommandResult::Done);
        assert!(
            matches!(c.apply(2, &up(2, addr("n1", 6420))).0, CommandResult::Refused(m) if m.contains("already used"))
        );
        assert!(
            matches!(c.apply(3, &up(2, addr("n2", 6410))).0, CommandResult::Refused(m) if m.contains("already node 1"))
        );
        // Re-upserting a node keeps its join time.
        let (_, changes) = c.apply(
            4,
            &Command::UpsertNode {
                id: 1,
                addr: addr("n1", 6410),
                role: Role::Learner,
                at_unix_ms: 9,
            },
        );
        assert!(
            matches!(&changes[..], [CatalogChange::UpsertNode(n)] if n.joined_at_unix_ms == 5 && n.role == Role::Learner)
        );
        assert!(matches!(
            c.apply(5, &Command::RemoveNode { id: 7 }).0,
            CommandResult::Refused(_)
        ));
    }

    #[test]
    fn a_cluster_is_initialized_once() {
        let mut c = Catalog::default();
        let init = Command::InitCluster {
            cluster_id: "x".into(),
            name: "a".into(),
            at_unix_ms: 0,
        };
        assert_eq!(c.apply(1, &init).0, CommandResult::Done);
        assert!(matches!(c.apply(2, &init).0, CommandResult::Refused(_)));
    }

    #[test]
    fn the_highest_node_id_is_remembered_after_removal() {
        let mut c = Catalog::default();
        let init = Command::InitCluster {
            cluster_id: "c".into(),
            name: "n".into(),
            at_unix_ms: 0,
        };
        c.apply(1, &init);
        let up = |id| Command::UpsertNode {
            id,
            addr: addr(&format!("n{id}"), 5000 + id as u16),
            role: Role::Voter,
            at_unix_ms: 0,
        };
        let (_, changes) = c.apply(2, &up(3));
        assert_eq!(changes.len(), 2, "{changes:?}");
        c.apply(3, &Command::RemoveNode { id: 3 });
        let (_, changes) = c.apply(4, &up(2));
        assert_eq!(changes.len(), 1, "a lower id leaves the mark alone");
        assert_eq!(c.cluster.unwrap().last_node_id, 3);
    }

    #[test]
    fn revocations_need_a_newer_list_and_known_serials() {
        let mut c = Catalog::default();
        let ca = CaBundle {
            cert_pem: "ca".into(),
            sealed_key: "sealed".into(),
        };
        let init = Command::InitTls {
            ca,
            crl_pem: "crl1".into(),
        };
        assert_eq!(c.apply(1, &init).0, CommandResult::Done);
        assert!(matches!(c.apply(2, &init).0, CommandResult::Refused(_)));
        let cert = |serial: &str| CertRecord {
            serial: serial.into(),
            node_id: 2,
            node_name: "n2".into(),
            sans: vec!["127.0.0.1".into()],
            not_before_unix_ms: 0,
            not_after_unix_ms: 10,
            revoked_at_unix_ms: None,
        };
        c.apply(3, &Command::RecordCertificate(cert("aa")));
        c.apply(4, &Command::RecordCertificate(cert("bb")));
        let revoke = |serials: &[&str], number| Command::RevokeCertificates {
            serials: serials.iter().map(|s| s.to_string()).collect(),
            at_unix_ms: 5,
            crl_number: number,
            crl_pem: format!("crl{number}"),
        };
        assert!(
            matches!(c.apply(5, &revoke(&["aa"], 1)).0, CommandResult::Refused(m) if m.contains("not newer"))
        );
        assert!(
            matches!(c.apply(6, &revoke(&["zz"], 2)).0, CommandResult::Refused(m) if m.contains("zz"))
        );
        let (result, changes) = c.apply(7, &revoke(&["aa"], 2));
        assert_eq!(result, CommandResult::Done);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(c.tls.as_ref().unwrap().crl_number, 2);
        assert_eq!(c.certificates["aa"].revoked_at_unix_ms, Some(5));
        assert_eq!(c.certificates["bb"].revoked_at_unix_ms, None);
        let (_, changes) = c.apply(
            8,
            &Command::ForgetCertificates {
                serials: vec!["aa".into(), "cc".into()],
            },
        );
        assert_eq!(changes, vec![CatalogChange::DeleteCertificate("aa".into())]);
    }

    #[test]
    fn a_batch_applies_its_commands_in_order_with_one_result_each() {
        let mut c = Catalog::default();
        let set = |v: &str| Command::SetSetting {
            name: "k".into(),
            value: v.into(),
            at_unix_ms: 0,
        };
        let cas = |expected: &str, v: &str| Command::CompareAndSetSetting {
            name: "k".into(),
            expected: Some(expected.into()),
            value: v.into(),
            at_unix_ms: 0,
        };
        let (result, changes) = c.apply(
            7,
            &Command::Batch(vec![set("a"), cas("a", "b"), cas("a", "c")]),
        );
        assert_eq!(
            result,
            CommandResult::Batch(vec![
                CommandResult::Done,
                CommandResult::CompareAndSet {
                    applied: true,
                    current: Some("b".into())
                },
                CommandResult::CompareAndSet {
                    applied: false,
                    current: Some("b".into())
                },
            ])
        );
        assert_eq!(changes.len(), 2, "the refused one changes nothing");
        assert_eq!(c.settings["k"].value, "b");
        assert_eq!(c.settings["k"].version, 7);
    }

    fn orders(kind: TableKind) -> TableRecord {
        TableRecord {
            id: 0,
            schema_name: "public".into(),
            table_name: "orders".into(),
            kind,
            shard_key: (kind == TableKind::Distributed).then(|| "id".into()),
            key_type: (kind == TableKind::Distributed).then(|| "bigint".into()),
            shard_count: (kind == TableKind::Distributed).then_some(8),
            created_at_unix_ms: 0,
        }
    }

    #[test]
    fn a_table_is_distributed_once_over_placed_shards() {
        let mut c = Catalog::default();
        for id in 1..=3 {
            c.apply(
                id,
                &Command::UpsertNode {
                    id,
                    addr: addr(&format!("n{id}"), 5000 + id as u16 * 10),
                    role: Role::Voter,
                    at_unix_ms: 0,
                },
            );
        }
        // No placements for 8 shards yet.
        assert!(matches!(
            c.apply(4, &Command::AddTable(orders(TableKind::Distributed)))
                .0,
            CommandResult::Refused(_)
        ));
        let (result, changes) = c.apply(
            5,
            &Command::PlaceShards {
                shard_count: 8,
                vnodes: 16,
            },
        );
        assert_eq!(result, CommandResult::Done);
        assert_eq!(changes.len(), 1);
        let map = c.placements[&8].clone();
        assert_eq!(map, crate::distribution::place_shards(&[1, 2, 3], 16, 8));
        // Placing again changes nothing, even with other nodes.
        c.apply(6, &Command::RemoveNode { id: 3 });
        assert_eq!(
            c.apply(
                7,
                &Command::PlaceShards {
                    shard_count: 8,
                    vnodes: 16
                }
            )
            .1,
            vec![]
        );
        assert_eq!(c.placements[&8], map);

        assert_eq!(
            c.apply(8, &Command::AddTable(orders(TableKind::Distributed)))
                .0,
            CommandResult::Done
        );
        assert_eq!(c.table("public", "orders").unwrap().id, 8);
        let (again, changes) = c.apply(9, &Command::AddTable(orders(TableKind::Reference)));
        assert_eq!(
            again,
            CommandResult::Refused("table public.orders is already a distributed table".into())
        );
        assert!(changes.is_empty());
        assert_eq!(
            c.apply(
                10,
                &Command::RemoveTable {
                    schema_name: "public".into(),
                    table_name: "orders".into()
                }
            )
            .1,
            vec![CatalogChange::DeleteTable(8)]
        );
        assert!(c.table("public", "orders").is_none());
        assert!(matches!(
            c.apply(
                11,
                &Command::PlaceShards {
                    shard_count: 0,
                    vnodes: 16
                }
            )
            .0,
            CommandResult::Refused(_)
        ));
    }
}
