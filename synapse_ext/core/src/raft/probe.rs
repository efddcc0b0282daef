//! Asking a PostgreSQL server whether it can join, over SQL (`synapse.node_info()`), before
//! the leader admits it. The server's answer includes the RPC port it listens on, so
//! operators only ever name PostgreSQL host:port pairs.

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::messages::{ErrorKind, NodeDescription, NodeError, PeerReply, PeerRequest};
use super::node::NodeProbe;

/// Connects as `user` to `database` on the candidate server.
pub struct PgProbe {
    pub user: String,
    pub database: String,
}

impl PgProbe {
    async fn connect(&self, host: &str, port: u16) -> Result<tokio_postgres::Client, NodeError> {
        let conninfo = format!(
            "host='{host}' port={port} user='{}' dbname='{}' connect_timeout=5 application_name='synapse add_node'",
            self.user, self.database
        );
        let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await.map_err(|e| {
            NodeError::new(ErrorKind::Connection, format!("could not connect to the PostgreSQL server at {host}:{port}: {e}"))
                .hint("Check the host and port, and that this node may connect to it as user postgres.")
        })?;
        tokio::spawn(connection);
        Ok(client)
    }
}

impl NodeProbe for PgProbe {
    async fn admit(&self, host: &str, port: u16, request: &PeerRequest) -> PeerReply {
        let client = match self.connect(host, port).await {
            Ok(c) => c,
            Err(e) => return PeerReply::Unreachable(e.message),
        };
        let request = serde_json::to_string(request).expect("serializable");
        let answer = client
            .query_one("SELECT synapse.admission_call($1)", &[&request])
            .await;
        match answer {
            Ok(row) => serde_json::from_str(row.get::<_, &str>(0)).unwrap_or_else(|e| {
                PeerReply::Failed(NodeError::new(
                    ErrorKind::Internal,
                    format!("the server at {host}:{port} answered an unknown format: {e}"),
                ))
            }),
            Err(e) => PeerReply::Failed(NodeError::new(
                ErrorKind::Connection,
                format!("the server at {host}:{port} refused the request: {e}"),
            )),
        }
    }

    async fn describe(&self, host: &str, port: u16) -> Result<NodeDescription, NodeError> {
        let client = self.connect(host, port).await?;
        let row = client.query_one("SELECT synapse.node_info()::text", &[]).await.map_err(|e| {
            let missing = matches!(
                e.code(),
                Some(&SqlState::UNDEFINED_FUNCTION) | Some(&SqlState::INVALID_SCHEMA_NAME)
            );
            if missing {
                NodeError::new(
                    ErrorKind::WrongState,
                    format!("the PostgreSQL server at {host}:{port} does not have the synapse extension"),
                )
                .hint("Add synapse to its shared_preload_libraries, restart it, and run CREATE EXTENSION synapse there.")
            } else {
                NodeError::new(ErrorKind::Connection, format!("the server at {host}:{port} failed to describe itself: {e}"))
            }
        })?;
        let text: String = row.get(0);
        serde_json::from_str(&text).map_err(|e| {
            NodeError::new(
                ErrorKind::Internal,
                format!("the server at {host}:{port} answered an unknown format: {e}"),
            )
            .hint("Run the same SynapseDB version on every node.")
        })
    }
}
