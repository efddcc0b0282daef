//! Small, safe wrappers over PostgreSQL internals used by several components: waiting on
//! latches and descriptors, and running work in a transaction that survives errors.
//! Everything here runs on a process's main thread.

pub mod local_rpc;
pub mod signals;
pub mod wait;
pub mod xact;
