//! The SQL surface of the extension: every `#[pg_extern]` lives under this module, in
//! schema `synapse` (set by the control file).

use pgrx::prelude::*;

use crate::shmem;

mod cluster;
mod distribution;
mod gossip;
mod transactions;

/// `synapse.version()`: the versions of the loaded library and of the installed extension.
/// They differ after a library upgrade until `ALTER EXTENSION synapse UPDATE` runs.
#[pg_extern(stable, parallel_safe)]
fn version() -> String {
    let extension = crate::pg::spi::select_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'synapse'",
        &[],
    )
    .unwrap_or_else(|| "not installed".to_owned());
    format!(
        "SynapseDB library {}, extension {extension}",
        env!("CARGO_PKG_VERSION")
    )
}

/// `synapse.workers()`: the synapse background workers running on this node.
#[pg_extern(volatile, parallel_safe)]
fn workers() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(pid, i32),
        name!(started_at, pgrx::datum::TimestampWithTimeZone),
    ),
> {
    let rows = shmem::running_workers()
        .into_iter()
        .map(|(kind, pid, started)| {
            // SAFETY: any i64 is a valid TimestampTz bit pattern.
            let started = unsafe {
                pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(started), false)
            }
            .expect("timestamp");
            (kind.name().to_owned(), pid, started)
        });
    TableIterator::new(rows.collect::<Vec<_>>())
}
