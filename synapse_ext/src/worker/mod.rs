//! Registration of the node's background workers.
//!
//! Each worker is a separate PostgreSQL process started by the postmaster. Its main thread
//! is the only one that calls into PostgreSQL; network code runs on a helper thread (see
//! `synapse_core::supervisor`). A worker that exits with code 1 (SIGTERM, an error) is
//! restarted after [`RESTART_DELAY`]; a crash makes the postmaster reinitialise and restart
//! everything.

use std::time::Duration;

use pgrx::bgworkers::BackgroundWorkerBuilder;

use crate::shmem::WorkerKind;

pub mod gossip;
pub mod raft;
pub mod supervisor;

/// How long the postmaster waits before restarting a worker that exited.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Registers every worker with the postmaster. Called once from `_PG_init`.
pub fn register() {
    load(WorkerKind::Supervisor, "synapse_supervisor_main");
    load(WorkerKind::Raft, "synapse_raft_main");
    load(WorkerKind::Gossip, "synapse_gossip_main");
}

/// Registers one worker whose entry point is the exported function `main`.
fn load(kind: WorkerKind, main: &str) {
    BackgroundWorkerBuilder::new(kind.name())
        .set_type(kind.name())
        .set_library("synapse")
        .set_function(main)
        .enable_spi_access()
        .set_restart_time(Some(RESTART_DELAY))
        .load();
}
