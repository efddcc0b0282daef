//! Distributed transactions (component 2): global ids, two-phase commit with the decision
//! in the Raft log, and recovery of what a failed commit leaves prepared. The protocol
//! and its rules are in `synapse_core::txn`; this is the PostgreSQL side.

pub mod activity;
pub mod coordinator;
pub mod failpoints;
pub mod recovery;

use std::time::Duration;

use synapse_core::raft::messages::{LocalReply, LocalRequest};
use synapse_core::raft::types::{Command, CommandResult};
use synapse_core::txn::{Decision, Outcome};

/// Proposes `outcome` for `gid` through Raft; returns the decision in force once it is
/// durable (the first one recorded for the gid wins), or why it could not be learnt.
pub fn propose_decision(
    gid: &str,
    outcome: Outcome,
    coordinator: u64,
    participants: Vec<String>,
    decided_by: String,
) -> Result<Outcome, String> {
    let decision = Decision {
        gid: gid.to_owned(),
        outcome,
        coordinator,
        participants,
        decided_at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        decided_by,
    };
    let timeout = Duration::from_millis(crate::gucs::raft_timeout_ms());
    match crate::pg::local_rpc::try_call(
        &LocalRequest::ProposeDurable(Command::DecideTransaction(decision)),
        timeout,
    ) {
        Ok(LocalReply::Applied(CommandResult::Decided(o))) => Ok(o),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.message),
    }
}
