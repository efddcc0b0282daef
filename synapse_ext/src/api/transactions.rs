//! SQL over distributed transactions: `synapse.transactions`,
//! `synapse.distributed_activity`, `synapse.recover_transactions()`, and
//! `synapse.join_transaction()`, which a coordinator's connection calls to make its
//! session a participant.

use std::collections::BTreeSet;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use synapse_core::txn::Gxid;

use crate::gucs;
use crate::pg::errors::raise;
use crate::remote::pool;
use crate::txn::{activity, recovery};

use crate::pg::time::timestamptz_us as timestamp_us;

/// `synapse.join_transaction(gid)`: this session works for global transaction `gid` until
/// its transaction ends. Called by coordinators on the sessions they open.
#[pg_extern(volatile)]
fn join_transaction(gid: &str) {
    if !gucs::fragment() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "synapse.join_transaction() is for sessions opened by another node",
            "",
        );
    }
    let Some(gxid) = Gxid::parse(gid) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("\"{gid}\" is not a synapse global transaction id"),
            "",
        );
    };
    activity::join(gxid, false);
}

/// `synapse.distributed_activity_here()`: the backends of this node working for a
/// distributed transaction (the view `synapse.distributed_activity` adds what
/// `pg_stat_activity` knows of them).
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn distributed_activity_here() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(gxid, String),
        name!(coordinator_node, i64),
        name!(role, String),
        name!(transaction_started_at, TimestampWithTimeZone),
    ),
> {
    let rows: Vec<_> = activity::members()
        .into_iter()
        .map(|m| {
            (
                m.pid,
                m.gxid.gid(),
                m.gxid.node as i64,
                if m.coordinator {
                    "coordinator"
                } else {
                    "participant"
                }
                .to_owned(),
                timestamp_us(m.gxid.start_us),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// `synapse.transactions()`: the distributed transactions this node coordinated recently
/// (state as its coordinator last knew it), and the prepared transactions of ours on this
/// node (state PREPARED), each with the commit decision recorded for it, if any.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn transactions() -> TableIterator<
    'static,
    (
        name!(gxid, String),
        name!(coordinator_node, i64),
        name!(state, String),
        name!(participant_nodes, Vec<i64>),
        name!(coordinator_pid, Option<i32>),
        name!(started_at, TimestampWithTimeZone),
        name!(updated_at, TimestampWithTimeZone),
        name!(prepared_here, bool),
        name!(decision, Option<String>),
        name!(decided_by, Option<String>),
    ),
> {
    let prepared: BTreeSet<String> = recovery::prepared_gids_here().into_iter().collect();
    let recent = activity::recent();
    let seen: BTreeSet<String> = recent.iter().map(|r| r.gxid.gid()).collect();
    let only_prepared: Vec<&String> = prepared.iter().filter(|g| !seen.contains(*g)).collect();
    let decisions = recovery::decisions(
        seen.iter()
            .chain(only_prepared.iter().copied())
            .cloned()
            .collect(),
    );
    let decided = |gid: &str| {
        let d = decisions.get(gid);
        (
            d.map(|d| d.outcome.as_str().to_owned()),
            d.map(|d| d.decided_by.clone()),
        )
    };
    let mut rows = Vec::new();
    for r in recent {
        let gid = r.gxid.gid();
        let (decision, decided_by) = decided(&gid);
        rows.push((
            gid.clone(),
            r.gxid.node as i64,
            r.state.as_str().to_owned(),
            r.participants.iter().map(|n| *n as i64).collect(),
            Some(r.pid),
            timestamp_us(r.gxid.start_us),
            timestamp_us(r.updated_ms * 1000),
            prepared.contains(&gid),
            decision,
            decided_by,
        ));
    }
    for gid in only_prepared {
        let g = Gxid::parse(gid).expect("ours");
        let (decision, decided_by) = decided(gid);
        rows.push((
            gid.clone(),
            g.node as i64,
            "PREPARED".to_owned(),
            vec![],
            None,
            timestamp_us(g.start_us),
            timestamp_us(g.start_us),
            true,
            decision,
            decided_by,
        ));
    }
    TableIterator::new(rows)
}

/// A row of `recover_local_transactions()` / `recover_transactions()`: the node, the
/// transaction, what was done and why.
type RecoveryRow = (String, Option<String>, String, String);

/// What this node's recovery did now, as rows.
fn recovered_here() -> Vec<RecoveryRow> {
    recovery::recover_here()
        .into_iter()
        .map(|r| (r.node, r.gid, r.action, r.detail))
        .collect()
}

/// `synapse.recover_local_transactions()`: resolves this node's prepared transactions of
/// ours now (what the maintenance worker does every `synapse.recovery_interval`).
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn recover_local_transactions() -> TableIterator<
    'static,
    (
        name!(node, String),
        name!(gxid, Option<String>),
        name!(action, String),
        name!(detail, String),
    ),
> {
    TableIterator::new(recovered_here())
}

/// `synapse.recover_transactions()`: resolves the prepared transactions of ours on every
/// node now; a node that cannot be reached is a row (and a WARNING), not an error.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn recover_transactions() -> TableIterator<
    'static,
    (
        name!(node, String),
        name!(gxid, Option<String>),
        name!(action, String),
        name!(detail, String),
    ),
> {
    let mut rows = recovered_here();
    for (node, answer) in pool::on_other_nodes(
        "SELECT node, gxid, action, detail FROM synapse.recover_local_transactions()",
        &[],
    ) {
        match answer {
            Ok(result) => {
                for row in result.rows {
                    let mut row = row.into_iter();
                    rows.push((
                        row.next().flatten().unwrap_or_default(),
                        row.next().flatten(),
                        row.next().flatten().unwrap_or_default(),
                        row.next().flatten().unwrap_or_default(),
                    ));
                }
            }
            Err(e) => {
                warning!(
                    "could not recover the prepared transactions of node \"{}\": {}",
                    node.name,
                    e.message
                );
                rows.push((
                    node.name.clone(),
                    None,
                    "unreachable".to_owned(),
                    format!(
                        "{}; its maintenance worker recovers them once it runs",
                        e.message
                    ),
                ));
            }
        }
    }
    TableIterator::new(rows)
}
