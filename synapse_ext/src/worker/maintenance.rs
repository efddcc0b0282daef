//! The maintenance worker: every `synapse.recovery_interval` it resolves this node's
//! prepared transactions of ours (`txn::recovery`); on the Raft leader it also forgets
//! the commit decisions no member needs any more.

use std::collections::BTreeSet;
use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::gucs;
use crate::pg::signals;
use crate::pg::wait::WaitSet;
use crate::pg::xact::in_transaction;
use crate::remote::pool;
use crate::shmem::{self, WorkerKind};
use crate::txn::recovery;

/// How long a decision is kept after it was recorded, at least. Keeping it longer buys
/// nothing: it is only ever needed while a member holds its transaction prepared, which
/// the forgetting checks on every member. Decisions are part of every Raft snapshot, so
/// keeping them long makes snapshots (and commits under load) slow.
const KEEP_DECISIONS_MS: i64 = 10_000;

/// Entry point, called by the postmaster in a new process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synapse_maintenance_main(_arg: pg_sys::Datum) {
    signals::install();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    shmem::register_worker(WorkerKind::Maintenance);
    let mut waits = WaitSet::new(0);
    while !signals::shutdown_pending() {
        if signals::take_reload_request() {
            signals::reload_config();
        }
        if super::member_ready() {
            recover();
            if super::leads_with_lease() {
                forget();
            }
        }
        waits.wait(Some(Duration::from_millis(gucs::recovery_interval_ms())));
    }
    signals::exit_if_shutdown_pending();
}

fn recover() {
    match in_transaction(recovery::recover_here) {
        Ok(done) => {
            for r in done.iter().filter(|r| r.action != "waiting") {
                log!(
                    "synapse recovery: {} transaction {} ({})",
                    r.action,
                    r.gid.as_deref().unwrap_or("?"),
                    r.detail
                );
            }
        }
        Err(e) => warning!("synapse recovery: {e}"),
    }
}

/// Forgets old decisions, if every member answered which gids it still holds prepared.
fn forget() {
    let result = in_transaction(|| -> Result<usize, String> {
        let mut prepared: BTreeSet<String> = recovery::prepared_gids_here().into_iter().collect();
        for (node, answer) in pool::on_other_nodes(
            "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE gid LIKE 'synapse\\_%'",
            &[],
        ) {
            let rows = answer.map_err(|e| format!("node \"{}\": {}", node.name, e.message))?;
            prepared.extend(
                rows.rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten()),
            );
        }
        recovery::forget(&prepared, KEEP_DECISIONS_MS)
    })
    .and_then(|r| r);
    if let Err(e) = result {
        // Another interval will do; a member down keeps every decision until it is back.
        debug1!("synapse recovery: decisions kept for now: {e}");
    }
}
