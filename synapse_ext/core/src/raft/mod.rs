//! Raft consensus for the cluster's metadata: storage, the replicated commands, and the
//! state kept by every node. Everything here is pure Rust; the raft worker runs it on its
//! network thread and applies committed commands to the catalog on its main thread.

pub mod log_file;
