//! SynapseDB's pure-Rust core: protocol logic and network services that never call into
//! PostgreSQL. The `synapse` extension (`synapse_ext/src`) is a thin adapter over this
//! crate, so everything here is tested with plain `cargo test`.

pub mod breaker;
pub mod deadlock;
pub mod distribution;
pub mod health;
pub mod linearizability;
pub mod mailbox;
pub mod raft;
pub mod rpc;
pub mod supervisor;
pub mod swim;
pub mod thread;
pub mod tls;
pub mod txn;
