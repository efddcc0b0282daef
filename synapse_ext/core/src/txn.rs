//! Distributed transactions: global transaction ids, the states a coordinator moves
//! through, the commit decisions kept in the Raft catalog, and what recovery does with a
//! prepared transaction it finds.
//!
//! The protocol (the `synapse` extension's `remote::twophase` drives it):
//!
//! 1. A transaction gets a global id ([`Gxid`]) when it first opens a transaction on
//!    another node; every participant learns it.
//! 2. At commit, one writing participant commits plainly. With several, each prepares
//!    (`PREPARE TRANSACTION '<gid>'`, the coordinator's own part included), then the
//!    coordinator proposes [`Outcome::Commit`] to Raft. The **first decision recorded for
//!    a gid wins**: recovery may have recorded [`Outcome::Abort`] first, and then the
//!    coordinator rolls back. Once the decision is in the Raft log it survives the loss
//!    of the coordinator.
//! 3. Then `COMMIT PREPARED` everywhere; a failure is a warning, recovery finishes it.
//!
//! Recovery runs on every node over the prepared transactions of that node
//! ([`recovery_action`]): it carries out the decision, or, for a transaction prepared
//! longer ago than the timeout without any decision, records an abort (first wins, so it
//! cannot race a coordinator into a split outcome) and rolls back.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::raft::types::NodeId;

/// A global transaction id: the coordinator node, the coordinator's transaction start
/// (Unix µs: the youngest transaction of a deadlock is the one with the latest start), and
/// a counter of that node (unique among the node's transactions since its start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gxid {
    pub node: NodeId,
    pub start_us: i64,
    pub counter: u64,
}

/// Every gid synapse prepares starts with this.
pub const GID_PREFIX: &str = "synapse_";

impl Gxid {
    /// The transaction's name in `PREPARE TRANSACTION`, `pg_prepared_xacts` and every view.
    pub fn gid(&self) -> String {
        self.to_string()
    }

    /// Reads a gid made by [`Gxid::gid`]; `None` for anything else (another tool's gid).
    pub fn parse(gid: &str) -> Option<Gxid> {
        let mut parts = gid.strip_prefix(GID_PREFIX)?.split('_');
        let node = parts.next()?.parse().ok()?;
        let start_us = parts.next()?.parse().ok()?;
        let counter = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Gxid {
            node,
            start_us,
            counter,
        })
    }
}

impl fmt::Display for Gxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{GID_PREFIX}{}_{}_{}",
            self.node, self.start_us, self.counter
        )
    }
}

/// Where a distributed transaction is, as its coordinator shows it in
/// `synapse.transactions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum TxnState {
    /// Statements run on several nodes; nothing prepared yet.
    Active = 0,
    /// `PREPARE TRANSACTION` sent to the participants.
    Preparing = 1,
    /// Every participant prepared; the decision is being recorded.
    Prepared = 2,
    /// Commit decided (in the Raft log); `COMMIT PREPARED` being sent.
    Committing = 3,
    /// Committed on every participant.
    Committed = 4,
    /// Rolling back (a participant failed to prepare, or the decision was abort).
    Aborting = 5,
    /// Rolled back everywhere.
    Aborted = 6,
    /// The coordinator could not finish: what is left is recovery's (a participant
    /// unreachable after the decision, or the decision's outcome unknown).
    Failed = 7,
}

impl TxnState {
    pub const ALL: [TxnState; 8] = [
        TxnState::Active,
        TxnState::Preparing,
        TxnState::Prepared,
        TxnState::Committing,
        TxnState::Committed,
        TxnState::Aborting,
        TxnState::Aborted,
        TxnState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Active => "ACTIVE",
            TxnState::Preparing => "PREPARING",
            TxnState::Prepared => "PREPARED",
            TxnState::Committing => "COMMITTING",
            TxnState::Committed => "COMMITTED",
            TxnState::Aborting => "ABORTING",
            TxnState::Aborted => "ABORTED",
            TxnState::Failed => "FAILED",
        }
    }

    pub fn from_u8(v: u8) -> Option<TxnState> {
        TxnState::ALL.get(v as usize).copied()
    }

    /// Whether the transaction is over as far as its coordinator is concerned.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TxnState::Committed | TxnState::Aborted | TxnState::Failed
        )
    }
}

/// A commit decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Commit,
    Abort,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Commit => "commit",
            Outcome::Abort => "abort",
        }
    }
}

/// A decision in the catalog (`synapse.transaction_catalog`), kept until recovery has
/// seen that no participant still holds the prepared transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub gid: String,
    pub outcome: Outcome,
    /// The coordinator's node id.
    pub coordinator: NodeId,
    /// The participants' node names (the coordinator's included when it wrote).
    pub participants: Vec<String>,
    pub decided_at_unix_ms: i64,
    /// Who recorded it: `coordinator`, or `recovery on <node>`.
    pub decided_by: String,
}

/// What recovery does with a prepared transaction of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// `COMMIT PREPARED`.
    Commit,
    /// `ROLLBACK PREPARED`.
    Rollback,
    /// Record an abort decision (first wins), then act on the decision in force.
    DecideAbort,
    /// Leave it: its coordinator is presumably still finishing it.
    Wait,
}

/// How long a decided transaction is left to its coordinator before recovery finishes it
/// (the coordinator normally sends `COMMIT PREPARED` within milliseconds).
pub const DECIDED_GRACE_MS: i64 = 1_000;

/// What to do with a transaction prepared `age_ms` ago, given the decision recorded for it
/// (`None`: none yet) and `synapse.two_phase_timeout`.
pub fn recovery_action(decision: Option<Outcome>, age_ms: i64, timeout_ms: i64) -> RecoveryAction {
    match decision {
        Some(_) if age_ms < DECIDED_GRACE_MS.min(timeout_ms) => RecoveryAction::Wait,
        Some(Outcome::Commit) => RecoveryAction::Commit,
        Some(Outcome::Abort) => RecoveryAction::Rollback,
        None if age_ms >= timeout_ms => RecoveryAction::DecideAbort,
        None => RecoveryAction::Wait,
    }
}

/// Which decisions can be forgotten: those older than `keep_ms` whose gid no node still
/// holds prepared. `prepared_anywhere` must list the gids prepared on *every* member
/// (recovery asks them all; a node it could not reach makes it forget nothing).
pub fn forgettable<'a>(
    decisions: impl IntoIterator<Item = &'a Decision>,
    prepared_anywhere: &std::collections::BTreeSet<String>,
    now_unix_ms: i64,
    keep_ms: i64,
) -> Vec<String> {
    decisions
        .into_iter()
        .filter(|d| {
            now_unix_ms - d.decided_at_unix_ms >= keep_ms && !prepared_anywhere.contains(&d.gid)
        })
        .map(|d| d.gid.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_round_trips_and_rejects_foreign_names() {
        let g = Gxid {
            node: 3,
            start_us: 1_790_000_000_123_456,
            counter: 42,
        };
        assert_eq!(g.gid(), "synapse_3_1790000000123456_42");
        assert_eq!(Gxid::parse(&g.gid()), Some(g));
        assert!(g.gid().len() < 200, "PostgreSQL's GIDSIZE");
        for other in [
            "",
            "synapse_",
            "synapse_1_2",
            "synapse_1_2_3_4",
            "synapse_x_2_3",
            "citus_1_2_3",
            "synapse_node1_1_2",
        ] {
            assert_eq!(Gxid::parse(other), None, "{other}");
        }
        let max = Gxid {
            node: u64::MAX,
            start_us: i64::MAX,
            counter: u64::MAX,
        };
        assert_eq!(Gxid::parse(&max.gid()), Some(max));
        assert!(max.gid().len() < 200);
    }

    #[test]
    fn states_round_trip() {
        for s in TxnState::ALL {
            assert_eq!(TxnState::from_u8(s as u8), Some(s));
        }
        assert_eq!(TxnState::from_u8(8), None);
        assert!(TxnState::Committed.is_final() && !TxnState::Committing.is_final());
    }

    #[test]
    fn recovery_follows_the_decision_and_times_out_undecided_ones() {
        use RecoveryAction::*;
        let t = 30_000;
        assert_eq!(recovery_action(Some(Outcome::Commit), 0, t), Wait);
        assert_eq!(
            recovery_action(Some(Outcome::Commit), DECIDED_GRACE_MS, t),
            Commit
        );
        assert_eq!(recovery_action(Some(Outcome::Abort), 5_000, t), Rollback);
        assert_eq!(recovery_action(None, 5_000, t), Wait);
        assert_eq!(recovery_action(None, t, t), DecideAbort);
        // A tiny timeout (tests) shortens the grace too.
        assert_eq!(recovery_action(Some(Outcome::Commit), 10, 10), Commit);
    }

    #[test]
    fn only_old_decisions_nobody_holds_are_forgotten() {
        let d = |gid: &str, at| Decision {
            gid: gid.into(),
            outcome: Outcome::Commit,
            coordinator: 1,
            participants: vec![],
            decided_at_unix_ms: at,
            decided_by: "coordinator".into(),
        };
        let decisions = [d("a", 0), d("b", 0), d("c", 9_000)];
        let prepared = ["b".to_string()].into_iter().collect();
        assert_eq!(
            forgettable(&decisions, &prepared, 10_000, 5_000),
            vec!["a".to_string()]
        );
    }
}
