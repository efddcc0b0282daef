//! Recovery of prepared transactions: every node's maintenance worker resolves the
//! prepared transactions of ours on its node every `synapse.recovery_interval`, and
//! `synapse.recover_transactions()` does it now on every node.
//!
//! A prepared transaction is committed or rolled back as its decision in the Raft catalog
//! says; one prepared longer ago than `synapse.two_phase_timeout` without a decision gets
//! an abort decision first (the first decision recorded wins, so this cannot overrule a
//! coordinator that decided to commit meanwhile). Decisions no node needs any more are
//! forgotten by the Raft leader's maintenance worker, once every member has answered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use synapse_core::raft::messages::{LocalReply, LocalRequest};
use synapse_core::raft::types::Command;
use synapse_core::txn::{self, Decision, Gxid, Outcome, RecoveryAction};

use crate::gucs;
use crate::pg::local_rpc;
use crate::pg::spi;
use crate::pg::time::now_ms;

/// What recovery did with one prepared transaction.
pub struct Resolution {
    pub node: String,
    pub gid: Option<String>,
    /// committed, rolled back, waiting, failed, unreachable.
    pub action: String,
    pub detail: String,
}

/// Our prepared transactions on this node, with their age in ms.
fn prepared_here() -> Vec<(String, i64)> {
    spi::select_rows(
        "SELECT gid, (extract(epoch FROM clock_timestamp() - prepared) * 1000)::bigint \
         FROM pg_catalog.pg_prepared_xacts \
         WHERE gid LIKE 'synapse\\_%' AND database = current_database() ORDER BY prepared",
        &[],
    )
    .into_iter()
    .filter_map(|row| {
        let gid = row.first()?.clone()?;
        let age = row.get(1)?.as_deref()?.parse().ok()?;
        Gxid::parse(&gid).is_some().then_some((gid, age))
    })
    .collect()
}

/// The commit decisions recorded for `gids`, by gid: as this node's Raft state machine
/// has applied them (the catalog table is written behind it), or from the table when the
/// raft worker does not answer.
pub fn decisions(gids: Vec<String>) -> BTreeMap<String, Decision> {
    if gids.is_empty() {
        return BTreeMap::new();
    }
    let timeout = Duration::from_millis(gucs::raft_timeout_ms());
    if let Ok(LocalReply::Decisions(found)) =
        local_rpc::try_call(&LocalRequest::Decisions { gids: gids.clone() }, timeout)
    {
        return found.into_iter().map(|d| (d.gid.clone(), d)).collect();
    }
    table_decisions(
        " WHERE gid = ANY($1::text[])",
        &[format!("{{{}}}", gids.join(",")).as_str()],
    )
    .into_iter()
    .map(|d| (d.gid.clone(), d))
    .collect()
}

/// The decisions in `synapse.transaction_catalog` (`filter`: a WHERE clause over it, with
/// `args`), without their participants.
fn table_decisions(filter: &str, args: &[&str]) -> Vec<Decision> {
    spi::select_rows(
        &format!(
            "SELECT gid, outcome, coordinator, decided_at_unix_ms, decided_by \
             FROM synapse.transaction_catalog{filter}"
        ),
        args,
    )
    .into_iter()
    .filter_map(|row| {
        let mut row = row.into_iter();
        let (gid, outcome, coordinator, at, by) = (
            row.next()??,
            row.next()??,
            row.next()??,
            row.next()??,
            row.next()??,
        );
        Some(Decision {
            gid,
            outcome: outcome_of(&outcome),
            coordinator: coordinator.parse().ok()?,
            participants: vec![],
            decided_at_unix_ms: at.parse().ok()?,
            decided_by: by,
        })
    })
    .collect()
}

/// An outcome as the catalog table writes it (`commit` or `abort`).
fn outcome_of(text: &str) -> Outcome {
    if text == "commit" {
        Outcome::Commit
    } else {
        Outcome::Abort
    }
}

fn decision_of(gid: &str) -> Option<Outcome> {
    let outcome = spi::select_one::<String>(
        "SELECT outcome FROM synapse.transaction_catalog WHERE gid = $1",
        &[gid],
    )?;
    Some(outcome_of(&outcome))
}

/// Records an abort decision for `gid` unless one is recorded; the decision in force.
fn decide_abort(gid: &str, coordinator: u64) -> Result<Outcome, String> {
    super::propose_decision(
        gid,
        Outcome::Abort,
        coordinator,
        vec![],
        format!("recovery on {}", gucs::node_name()),
    )
}

/// Resolves this node's prepared transactions of ours; called inside a transaction.
pub fn recover_here() -> Vec<Resolution> {
    let node = gucs::node_name();
    let timeout = gucs::two_phase_timeout_ms();
    let mut out = Vec::new();
    for (gid, age) in prepared_here() {
        let gxid = Gxid::parse(&gid).expect("filtered");
        let decision = decision_of(&gid);
        let mut action = txn::recovery_action(decision, age, timeout);
        let mut detail = match decision {
            Some(o) => format!("decision: {}", o.as_str()),
            None => format!("no decision after {age} ms"),
        };
        if action == RecoveryAction::DecideAbort {
            match decide_abort(&gid, gxid.node) {
                Ok(Outcome::Abort) => {
                    action = RecoveryAction::Rollback;
                    detail = format!("no decision after {age} ms: recorded abort");
                }
                Ok(Outcome::Commit) => {
                    action = RecoveryAction::Commit;
                    detail = "decision: commit".into();
                }
                Err(e) => {
                    out.push(Resolution {
                        node: node.clone(),
                        gid: Some(gid),
                        action: "failed".into(),
                        detail: format!("could not record an abort decision: {e}"),
                    });
                    continue;
                }
            }
        }
        let (commit, verb) = match action {
            RecoveryAction::Commit => (true, "committed"),
            RecoveryAction::Rollback => (false, "rolled back"),
            _ => {
                out.push(Resolution {
                    node: node.clone(),
                    gid: Some(gid),
                    action: "waiting".into(),
                    detail,
                });
                continue;
            }
        };
        match super::coordinator::finish_here(&gid, commit) {
            Ok(()) => out.push(Resolution {
                node: node.clone(),
                gid: Some(gid),
                action: verb.into(),
                detail,
            }),
            Err(e) => out.push(Resolution {
                node: node.clone(),
                gid: Some(gid),
                action: "failed".into(),
                detail: format!("{detail}; {e}"),
            }),
        }
    }
    out
}

/// Forgets decisions older than `keep_ms` that no member holds prepared; `prepared` must
/// list what every member holds. Returns how many it forgot.
pub fn forget(prepared: &BTreeSet<String>, keep_ms: i64) -> Result<usize, String> {
    let decisions = table_decisions("", &[]);
    let gids = txn::forgettable(&decisions, prepared, now_ms(), keep_ms);
    if gids.is_empty() {
        return Ok(0);
    }
    let n = gids.len();
    let timeout = Duration::from_millis(gucs::raft_timeout_ms());
    local_rpc::try_call(
        &LocalRequest::Propose(Command::ForgetTransactions { gids }),
        timeout,
    )
    .map(|_| n)
    .map_err(|e| e.message)
}

/// Our prepared gids on this node.
pub fn prepared_gids_here() -> Vec<String> {
    prepared_here().into_iter().map(|(gid, _)| gid).collect()
}
