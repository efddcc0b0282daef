//! Raft consensus for the cluster's metadata: storage, the replicated commands, and the
//! state kept by every node. Everything here is pure Rust; the raft worker runs it on its
//! network thread and applies committed commands to the catalog on its main thread.

// openraft's StorageError is large by its design; storage functions must return it as is.
#![allow(clippy::result_large_err)]

pub mod catalog;
pub mod log_file;
pub mod log_store;
pub mod messages;
pub mod network;
pub mod node;
pub mod probe;
pub mod rows;
pub mod service;
pub mod state_machine;
pub mod types;
pub mod worker_net;
