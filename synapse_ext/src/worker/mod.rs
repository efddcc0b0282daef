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
pub mod maintenance;
pub mod raft;
pub mod supervisor;

/// How long the postmaster waits before restarting a worker that exited.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Registers every worker with the postmaster. Called once from `_PG_init`.
pub fn register() {
    load(WorkerKind::Supervisor, "synapse_supervisor_main");
    load(WorkerKind::Raft, "synapse_raft_main");
    load(WorkerKind::Gossip, "synapse_gossip_main");
    load(WorkerKind::Maintenance, "synapse_maintenance_main");
    load(WorkerKind::Deadlock, "synapse_deadlock_main");
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

/// Whether the extension exists in the workers' database and this node is a member
/// (workers that act on the cluster wait for both).
pub fn member_ready() -> bool {
    crate::pg::xact::in_transaction(|| {
        crate::pg::spi::select_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'synapse') \
             AND EXISTS (SELECT 1 FROM synapse.node_catalog WHERE name = $1)",
            &[&crate::gucs::node_name()],
        )
        .unwrap_or(false)
    })
    .unwrap_or(false)
}

/// Whether this node leads Raft and holds its lease (leader-only work).
pub fn leads_with_lease() -> bool {
    use synapse_core::raft::messages::{LocalReply, LocalRequest};
    matches!(
        crate::pg::local_rpc::try_call(&LocalRequest::Status, Duration::from_secs(2)),
        Ok(LocalReply::Status(s)) if s.node_id.is_some()
            && s.node_id == s.leader_id
            && s.lease_remaining_ms.unwrap_or(0) > 0
    )
}
