//! The catalog as table rows: the JSON shapes the raft worker writes to and reads from the
//! `synapse.*_catalog` tables (see `sql/catalog.sql`), converted from and to [`Catalog`].

use serde::{Deserialize, Serialize};

use super::catalog::{
    Catalog, CatalogChange, CertRecord, ClusterInfo, NodeRecord, SettingRecord, TableRecord,
    TlsCatalog,
};
use super::state_machine::{CatalogState, Membership};
use super::types::{LogId, NodeAddr, NodeId, Role};
use crate::tls::CaBundle;
use crate::txn::Decision;

/// A row of `synapse.node_catalog`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub rpc_port: u16,
    #[serde(default)]
    pub gossip_port: u16,
    pub role: String,
    pub joined_at_unix_ms: i64,
}

impl From<&NodeRecord> for NodeRow {
    fn from(n: &NodeRecord) -> Self {
        NodeRow {
            id: n.id,
            name: n.addr.name.clone(),
            host: n.addr.host.clone(),
            port: n.addr.pg_port,
            rpc_port: n.addr.rpc_port,
            gossip_port: n.addr.gossip_port,
            role: match n.role {
                Role::Voter => "voter".into(),
                Role::Learner => "learner".into(),
            },
            joined_at_unix_ms: n.joined_at_unix_ms,
        }
    }
}

impl From<NodeRow> for NodeRecord {
    fn from(r: NodeRow) -> Self {
        NodeRecord {
            id: r.id,
            addr: NodeAddr {
                name: r.name,
                host: r.host,
                pg_port: r.port,
                rpc_port: r.rpc_port,
                gossip_port: r.gossip_port,
            },
            role: if r.role == "voter" {
                Role::Voter
            } else {
                Role::Learner
            },
            joined_at_unix_ms: r.joined_at_unix_ms,
        }
    }
}

/// The row of `synapse.tls_catalog`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRow {
    pub ca_cert_pem: String,
    /// The CA key, sealed under the cluster secret: never in clear.
    pub sealed_ca_key: String,
    pub crl_number: u64,
    pub crl_pem: String,
}

impl From<&TlsCatalog> for TlsRow {
    fn from(t: &TlsCatalog) -> Self {
        TlsRow {
            ca_cert_pem: t.ca.cert_pem.clone(),
            sealed_ca_key: t.ca.sealed_key.clone(),
            crl_number: t.crl_number,
            crl_pem: t.crl_pem.clone(),
        }
    }
}

impl From<TlsRow> for TlsCatalog {
    fn from(r: TlsRow) -> Self {
        TlsCatalog {
            ca: CaBundle {
                cert_pem: r.ca_cert_pem,
                sealed_key: r.sealed_ca_key,
            },
            crl_number: r.crl_number,
            crl_pem: r.crl_pem,
        }
    }
}

/// `synapse.raft_applied.state`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedRow {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

/// Everything in the catalog tables, as one JSON document.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CatalogRows {
    pub applied: Option<AppliedRow>,
    pub cluster: Option<ClusterInfo>,
    pub nodes: Vec<NodeRow>,
    pub settings: Vec<SettingRecord>,
    #[serde(default)]
    pub tls: Option<TlsRow>,
    #[serde(default)]
    pub certificates: Vec<CertRecord>,
    #[serde(default)]
    pub tables: Vec<TableRecord>,
    #[serde(default)]
    pub placements: Vec<PlacementRow>,
    #[serde(default)]
    pub decisions: Vec<Decision>,
}

/// A row of `synapse.placement_catalog`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRow {
    pub shard_count: u32,
    pub shard: u32,
    pub node_id: NodeId,
}

/// The rows of one shard count's placement map.
pub fn placement_rows(shard_count: u32, nodes: &[NodeId]) -> Vec<PlacementRow> {
    nodes
        .iter()
        .enumerate()
        .map(|(shard, node_id)| PlacementRow {
            shard_count,
            shard: shard as u32,
            node_id: *node_id,
        })
        .collect()
}

impl From<CatalogRows> for CatalogState {
    fn from(rows: CatalogRows) -> Self {
        let applied = rows.applied.unwrap_or_default();
        CatalogState {
            catalog: Catalog {
                cluster: rows.cluster,
                nodes: rows
                    .nodes
                    .into_iter()
                    .map(|r| (r.id, NodeRecord::from(r)))
                    .collect(),
                settings: rows
                    .settings
                    .into_iter()
                    .map(|s| (s.name.clone(), s))
                    .collect(),
                tls: rows.tls.map(TlsCatalog::from),
                certificates: rows
                    .certificates
                    .into_iter()
                    .map(|c| (c.serial.clone(), c))
                    .collect(),
                tables: rows.tables.into_iter().map(|t| (t.id, t)).collect(),
                placements: {
                    let mut maps = std::collections::BTreeMap::<u32, Vec<NodeId>>::new();
                    let mut rows = rows.placements;
                    rows.sort_by_key(|p| (p.shard_count, p.shard));
                    for p in rows {
                        maps.entry(p.shard_count).or_default().push(p.node_id);
                    }
                    maps
                },
                decisions: rows
                    .decisions
                    .into_iter()
                    .map(|d| (d.gid.clone(), d))
                    .collect(),
            },
            last_applied: applied.last_applied,
            membership: applied.membership,
        }
    }
}

impl From<&CatalogState> for CatalogRows {
    fn from(state: &CatalogState) -> Self {
        CatalogRows {
            applied: Some(AppliedRow {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
            }),
            cluster: state.catalog.cluster.clone(),
            nodes: state.catalog.nodes.values().map(NodeRow::from).collect(),
            settings: state.catalog.settings.values().cloned().collect(),
            tls: state.catalog.tls.as_ref().map(TlsRow::from),
            certificates: state.catalog.certificates.values().cloned().collect(),
            tables: state.catalog.tables.values().cloned().collect(),
            placements: state
                .catalog
                .placements
                .iter()
                .flat_map(|(count, nodes)| placement_rows(*count, nodes))
                .collect(),
            decisions: state.catalog.decisions.values().cloned().collect(),
        }
    }
}

/// One SQL statement's worth of a change: which statement, and its JSON argument.
pub fn change_row(change: &CatalogChange) -> (ChangeKind, String) {
    match change {
        CatalogChange::SetCluster(c) => (ChangeKind::SetCluster, json(c)),
        CatalogChange::UpsertNode(n) => (ChangeKind::UpsertNode, json(&NodeRow::from(n))),
        CatalogChange::DeleteNode(id) => (ChangeKind::DeleteNode, id.to_string()),
        CatalogChange::UpsertSetting(s) => (ChangeKind::UpsertSetting, json(s)),
        CatalogChange::SetTls(t) => (ChangeKind::SetTls, json(&TlsRow::from(t))),
        CatalogChange::UpsertCertificate(c) => (ChangeKind::UpsertCertificate, json(c)),
        CatalogChange::DeleteCertificate(serial) => (ChangeKind::DeleteCertificate, serial.clone()),
        CatalogChange::UpsertTable(t) => (ChangeKind::UpsertTable, json(t)),
        CatalogChange::DeleteTable(id) => (ChangeKind::DeleteTable, id.to_string()),
        CatalogChange::SetPlacements { shard_count, nodes } => (
            ChangeKind::SetPlacements,
            json(&serde_json::json!({
                "shard_count": shard_count,
                "rows": placement_rows(*shard_count, nodes),
            })),
        ),
        CatalogChange::UpsertDecision(d) => (ChangeKind::UpsertDecision, json(d)),
        CatalogChange::DeleteDecisions(gids) => (ChangeKind::DeleteDecisions, json(gids)),
    }
}

/// The kinds of row change, each one SQL statement of the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    SetCluster,
    UpsertNode,
    DeleteNode,
    UpsertSetting,
    SetTls,
    UpsertCertificate,
    DeleteCertificate,
    UpsertTable,
    DeleteTable,
    /// Replaces the rows of one shard count (`{"shard_count", "rows"}`).
    SetPlacements,
    UpsertDecision,
    /// A JSON array of gids.
    DeleteDecisions,
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_the_trip_through_rows() {
        let mut catalog = Catalog::default();
        catalog.apply(
            1,
            &super::super::types::Command::UpsertNode {
                id: 3,
                addr: NodeAddr {
                    name: "n3".into(),
                    host: "h".into(),
                    pg_port: 5432,
                    rpc_port: 8081,
                    gossip_port: 8082,
                },
                role: Role::Learner,
                at_unix_ms: 7,
            },
        );
        catalog.apply(
            2,
            &super::super::types::Command::SetSetting {
                name: "a".into(),
                value: "b".into(),
                at_unix_ms: 8,
            },
        );
        catalog.apply(
            3,
            &super::super::types::Command::InitTls {
                ca: CaBundle {
                    cert_pem: "ca".into(),
                    sealed_key: "sealed".into(),
                },
                crl_pem: "crl".into(),
            },
        );
        catalog.apply(
            4,
            &super::super::types::Command::RecordCertificate(CertRecord {
                serial: "0a".into(),
                node_id: 3,
                node_name: "n3".into(),
                sans: vec!["h".into()],
                not_before_unix_ms: 1,
                not_after_unix_ms: 2,
                revoked_at_unix_ms: Some(2),
            }),
        );
        catalog.apply(
            5,
            &super::super::types::Command::PlaceShards {
                shard_count: 4,
                vnodes: 8,
            },
        );
        catalog.apply(
            6,
            &super::super::types::Command::AddTable(TableRecord {
                id: 0,
                schema_name: "s".into(),
                table_name: "t".into(),
                kind: super::super::catalog::TableKind::Distributed,
                shard_key: Some("k".into()),
                key_type: Some("text".into()),
                shard_count: Some(4),
                created_at_unix_ms: 9,
            }),
        );
        assert_eq!(catalog.tables.len(), 1);
        let state = CatalogState {
            catalog,
            last_applied: None,
            membership: Membership::default(),
        };
        let rows: CatalogRows =
            serde_json::from_str(&serde_json::to_string(&CatalogRows::from(&state)).unwrap())
                .unwrap();
        assert_eq!(CatalogState::from(rows), state);
    }
}
