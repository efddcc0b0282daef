//! What a node reports about itself on `GET /health`.
//!
//! The report is assembled on the network thread from two sources: the node's settings
//! (published by the main thread whenever it (re)loads its configuration) and a fresh
//! answer from the database, which only the main thread can obtain. A node is healthy when
//! the database answered within the configured deadline.

use serde::{Deserialize, Serialize};

/// Settings the network thread needs, published by the main thread at start and on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// `synapse.node_name`, or a name derived from host and port when unset.
    pub node_name: String,
    /// How long `/health` waits for the database, in milliseconds (`synapse.health_timeout`).
    pub health_timeout_ms: u64,
}

/// The database's answer to a health probe, produced by the main thread through SPI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseCheck {
    /// `server_version` as the server reports it.
    pub postgres_version: String,
    /// The installed version of the `synapse` extension in the worker's database, if created.
    pub extension_version: Option<String>,
}

/// The body of `GET /health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `"ok"` when the database answered, `"unavailable"` otherwise.
    pub status: String,
    pub node_name: String,
    /// Version of the loaded shared library.
    pub library_version: String,
    /// Version of the extension installed in the worker's database, when it answered.
    pub extension_version: Option<String>,
    pub postgres_version: Option<String>,
    /// Seconds since the worker serving this report started.
    pub uptime_seconds: f64,
    /// Process id of the worker serving this report.
    pub worker_pid: u32,
    pub database: DatabaseStatus,
}

/// Whether the database answered the probe and how quickly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    pub answered: bool,
    pub latency_ms: f64,
    /// Why it did not answer.
    pub error: Option<String>,
}

impl HealthReport {
    /// Builds the report from the settings and the outcome of the database probe.
    pub fn new(
        settings: &NodeSettings,
        probe: Result<DatabaseCheck, String>,
        latency_ms: f64,
        uptime_seconds: f64,
    ) -> Self {
        let library_version = env!("CARGO_PKG_VERSION").to_owned();
        let worker_pid = std::process::id();
        match probe {
            Ok(check) => HealthReport {
                status: "ok".into(),
                node_name: settings.node_name.clone(),
                library_version,
                extension_version: check.extension_version,
                postgres_version: Some(check.postgres_version),
                uptime_seconds,
                worker_pid,
                database: DatabaseStatus {
                    answered: true,
                    latency_ms,
                    error: None,
                },
            },
            Err(error) => HealthReport {
                status: "unavailable".into(),
                node_name: settings.node_name.clone(),
                library_version,
                extension_version: None,
                postgres_version: None,
                uptime_seconds,
                worker_pid,
                database: DatabaseStatus {
                    answered: false,
                    latency_ms,
                    error: Some(error),
                },
            },
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.database.answered
    }
}
