//! TLS certificate management (component 9): the cluster's internal CA, node
//! certificates with SANs, revocation lists, and gRPC over mutual TLS.
//!
//! - [`secret`]: the cluster secret and sealing under it (the CA key is stored sealed).
//! - [`ca`]: creating the CA, certifying node keys from signing requests, signing CRLs.
//! - [`cert`]: reading certificates back (serial, SANs, validity, node identity).
//! - [`config`]: rustls configurations from a node's files, swapped on renewal.
//! - [`transport`]: tonic's server connections and client connector over mutual TLS.

pub mod ca;
pub mod cert;
pub mod config;
pub mod files;
pub mod secret;
pub mod transport;

pub use ca::{create_ca, new_node_key, CaBundle, NodeCertSpec, NodeKey, Revoked, Signer};
pub use cert::CertInfo;
pub use config::{NodeTls, Tls};
pub use files::TlsFiles;
pub use secret::ClusterSecret;
pub use transport::{HandshakeCounts, PeerIdentity};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Secret(String),
    #[error("{0}")]
    Certificate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}
