//! Small, safe wrappers over PostgreSQL internals used by several components: waiting on
//! latches and descriptors, and running work in a transaction that survives errors.
//! Everything here runs on a process's main thread.

pub mod errors;
pub mod local_rpc;
pub mod plans;
pub mod signals;
pub mod spi;
pub mod time;
pub mod wait;
pub mod xact;

use std::path::PathBuf;

/// `$PGDATA/synapse`: this node's SynapseDB files (Raft log, identity, sockets, TLS).
pub fn synapse_dir() -> PathBuf {
    // SAFETY: DataDir is set by the postmaster before any backend or worker starts and
    // never changes afterwards.
    let dir = unsafe { std::ffi::CStr::from_ptr(pgrx::pg_sys::DataDir) };
    PathBuf::from(dir.to_string_lossy().into_owned()).join("synapse")
}
