//! The deadlock worker: every `synapse.deadlock_scan_interval` (by default twice
//! `deadlock_timeout`), on the node that leads Raft with its lease, it collects every
//! node's wait-for edges, finds the cycles that span nodes, collects again to make sure
//! each cycle still exists, and cancels each victim on every node. Detected cycles are kept
//! in `synapse.deadlock_history` on the detecting node (the last 1000).

use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use synapse_core::deadlock::{find_cycles, still_deadlocked, Cycle};

use crate::gucs;
use crate::pg::signals;
use crate::pg::wait::WaitSet;
use crate::pg::xact::in_transaction;
use crate::remote::pool;
use crate::shmem::{self, WorkerKind};

/// Cycles kept in `synapse.deadlock_history`.
const HISTORY: i64 = 1000;

/// Entry point, called by the postmaster in a new process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synapse_deadlock_main(_arg: pg_sys::Datum) {
    signals::install();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    shmem::register_worker(WorkerKind::Deadlock);
    let mut waits = WaitSet::new(0);
    while !signals::shutdown_pending() {
        if signals::take_reload_request() {
            signals::reload_config();
        }
        if crate::worker::member_ready() && crate::worker::leads_with_lease() {
            match in_transaction(scan).and_then(|r| r) {
                Ok(broken) => {
                    for c in broken {
                        log!(
                            "synapse deadlock: cancelled {} to break {}",
                            c.victim.name,
                            c.describe()
                        );
                    }
                }
                Err(e) => warning!("synapse deadlock: scan failed: {e}"),
            }
        }
        waits.wait(Some(Duration::from_millis(
            gucs::deadlock_scan_interval_ms(),
        )));
    }
    signals::exit_if_shutdown_pending();
}

/// One scan; returns the cycles it broke.
fn scan() -> Result<Vec<Cycle>, String> {
    let (edges, _) = super::edges_everywhere();
    let cycles = find_cycles(&edges);
    if cycles.is_empty() {
        return Ok(vec![]);
    }
    // A cycle assembled from edges read at different moments may be gone already.
    let (again, _) = super::edges_everywhere();
    let mut broken = Vec::new();
    for cycle in cycles {
        if !still_deadlocked(&again, &cycle.victim.name) {
            continue;
        }
        let detail = format!(
            "{} is the youngest transaction of the cycle {}.",
            cycle.victim.name,
            cycle.describe()
        );
        let mut cancelled = super::cancel_here(&cycle.victim.name, &detail).len() as i64;
        for (_, answer) in pool::on_other_nodes(
            "SELECT synapse.cancel_deadlock_victim($1, $2)",
            &[Some(cycle.victim.name.as_str()), Some(detail.as_str())],
        ) {
            if let Ok(rows) = answer {
                cancelled += rows
                    .rows
                    .first()
                    .and_then(|r| r.first().cloned().flatten())
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(0);
            }
        }
        record(&cycle, cancelled)?;
        broken.push(cycle);
    }
    Ok(broken)
}

fn record(cycle: &Cycle, cancelled: i64) -> Result<(), String> {
    Spi::run_with_args(
        "INSERT INTO synapse.deadlock_history (victim, victim_started_at, cycle, nodes, cancelled_backends) \
         VALUES ($1, to_timestamp($2 / 1e6), $3, $4, $5)",
        &[
            cycle.victim.name.clone().into(),
            (cycle.victim.started_us as f64).into(),
            cycle.members.clone().into(),
            cycle.nodes.clone().into(),
            cancelled.into(),
        ],
    )
    .map_err(|e| e.to_string())?;
    Spi::run_with_args(
        "DELETE FROM synapse.deadlock_history WHERE ctid IN \
         (SELECT ctid FROM synapse.deadlock_history ORDER BY detected_at DESC OFFSET $1)",
        &[HISTORY.into()],
    )
    .map_err(|e| e.to_string())
}
