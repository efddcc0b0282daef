//! The `synapse` PostgreSQL extension: the PostgreSQL-facing adapter of SynapseDB.
//!
//! The library is loaded into the postmaster through `shared_preload_libraries`.
//! `_PG_init` checks that, then registers GUCs, shared memory, hooks and background
//! workers, in that order. Protocol logic and network services live in `synapse_core`,
//! which never calls into PostgreSQL; this crate is the thin layer that does.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

mod api;
mod deadlock;
mod distribution;
mod executor;
mod gucs;
mod pg;
mod planner;
mod remote;
mod shmem;
mod txn;
mod worker;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!(
    "../../sql/synapse.sql",
    name = "synapse_bootstrap",
    bootstrap
);
pgrx::extension_sql_file!(
    "../../sql/catalog.sql",
    name = "synapse_catalog",
    requires = ["synapse_bootstrap"]
);
pgrx::extension_sql_file!(
    "../../sql/gossip.sql",
    name = "synapse_gossip",
    requires = ["synapse_catalog", members]
);
pgrx::extension_sql_file!(
    "../../sql/distribution.sql",
    name = "synapse_distribution",
    finalize
);
pgrx::extension_sql_file!(
    "../../sql/transactions.sql",
    name = "synapse_transactions",
    requires = [
        "synapse_catalog",
        transactions,
        distributed_activity_here,
        recover_transactions,
        wait_graph
    ]
);
pgrx::extension_sql_file!(
    "../../sql/catalog_guard.sql",
    name = "synapse_catalog_guard",
    requires = ["synapse_catalog", catalog_write_guard]
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Background workers and shared memory exist only when the postmaster loads us.
    // SAFETY: reads a flag the postmaster sets while it loads preload libraries.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "synapse must be loaded via shared_preload_libraries",
            "_PG_init",
        )
        .set_hint(
            "Add 'synapse' to shared_preload_libraries in postgresql.conf and restart the \
             server, then run CREATE EXTENSION synapse.",
        )
        .report(PgLogLevel::ERROR);
    }
    gucs::init();
    shmem::init();
    txn::activity::init();
    // Deadlock victims' cancels are reported as SQLSTATE 40P01 (emit_log_hook).
    deadlock::init();
    // Planner hooks: route statements over distributed tables (planner_hook,
    // set_rel_pathlist_hook), with the SynapseScan custom scan.
    planner::install();
    worker::register();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_names_library_and_extension() {
        let v = Spi::get_one::<String>("SELECT synapse.version()")
            .unwrap()
            .unwrap();
        let lib = env!("CARGO_PKG_VERSION");
        assert_eq!(v, format!("SynapseDB library {lib}, extension {lib}"));
    }

    #[pg_test]
    fn the_supervisor_runs_and_is_listed() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM synapse.workers() w JOIN pg_stat_activity a USING (pid) \
             WHERE w.name = 'synapse supervisor' AND a.backend_type = 'synapse supervisor'",
        )
        .unwrap();
        assert_eq!(n, Some(1));
    }

    #[pg_test]
    fn settings_are_registered_with_their_defaults() {
        let default = |name: &str| {
            Spi::get_one_with_args::<String>(
                "SELECT boot_val FROM pg_settings WHERE name = $1",
                &[name.into()],
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(default("synapse.http_port"), "8080");
        assert_eq!(default("synapse.rpc_port"), "8081");
        assert_eq!(default("synapse.gossip_port"), "8082");
        assert_eq!(default("synapse.health_timeout"), "2000");
        assert_eq!(default("synapse.election_timeout_min"), "3000");
        assert_eq!(default("synapse.election_timeout_max"), "6000");
        assert_eq!(default("synapse.heartbeat_interval"), "1000");
        assert_eq!(default("synapse.leadership_lease"), "5000");
        assert_eq!(default("synapse.max_voters"), "5");
    }

    #[pg_test(error = "invalid configuration parameter name \"synapse.nonexistent\"")]
    fn the_synapse_prefix_is_reserved() {
        Spi::run("SET synapse.nonexistent = 1").unwrap();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'synapse'",
            "synapse.http_port = 0",
            "synapse.rpc_port = 28817",
        ]
    }
}
