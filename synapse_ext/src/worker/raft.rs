//! The raft worker's main thread: owns the catalog tables. It loads the applied catalog at
//! start, hands it to the Raft runtime on the network thread, and then writes every
//! applied batch (row changes plus the applied log id) in one transaction.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use synapse_core::mailbox::{mailbox, Envelope};
use synapse_core::raft::catalog::CatalogChange;
use synapse_core::raft::node::RaftSettings;
use synapse_core::raft::probe::PgProbe;
use synapse_core::raft::rows::{change_row, AppliedRow, CatalogRows, ChangeKind};
use synapse_core::raft::state_machine::{AppliedBatch, CatalogState};
use synapse_core::raft::types::NodeAddr;
use synapse_core::raft::worker_net::{self, RaftMainRequest};
use synapse_core::supervisor::LogLevel;

use crate::gucs;
use crate::pg::signals;
use crate::pg::wait::WaitSet;
use crate::pg::xact::in_transaction;
use crate::shmem::{self, WorkerKind};

/// How often the worker looks for `CREATE EXTENSION synapse` before it can start.
const EXTENSION_POLL: Duration = Duration::from_secs(1);

/// Entry point, called by the postmaster in a new process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synapse_raft_main(_arg: pg_sys::Datum) {
    signals::install();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    shmem::register_worker(WorkerKind::Raft);
    let mut waits = WaitSet::new(1);

    // The catalog tables exist once the extension is created.
    let mut said = false;
    while !extension_exists() {
        if !said {
            log!(
                "synapse raft: waiting for CREATE EXTENSION synapse in database \"{}\"",
                gucs::database()
            );
            said = true;
        }
        waits.wait(Some(EXTENSION_POLL));
        signals::exit_if_shutdown_pending();
    }
    let state = in_transaction(load_state)
        .and_then(|r| r)
        .unwrap_or_else(|e| error!("synapse raft: could not read the catalog: {e}"));

    let (mailbox, inbox) = mailbox(1024).unwrap_or_else(|e| error!("synapse raft: mailbox: {e}"));
    let dir = crate::pg::synapse_dir();
    let net = worker_net::start(
        settings(&dir),
        state,
        probe(),
        dir.join("raft.sock"),
        mailbox,
    )
    .unwrap_or_else(|e| error!("synapse raft: could not start its network thread: {e}"));
    waits.add_readable(inbox.wake_fd());
    let mut held = Held::default();
    while !signals::shutdown_pending() {
        if signals::take_reload_request() {
            signals::reload_config();
        }
        let mut queued = Vec::new();
        inbox.drain(|envelope| queued.push(envelope));
        let mut restart = None;
        for envelope in queued {
            if let RaftMainRequest::Restart(why) = &envelope.request {
                restart = Some(why.clone());
            }
            if let Err(why) = handle(envelope, &mut held) {
                restart = Some(why);
                break;
            }
        }
        if restart.is_none() && held.due() {
            restart = held.write().err();
        }
        if let Some(why) = restart {
            log!("{why}");
            let _ = net.stop(Duration::from_millis(500));
            // Exit code 1: the postmaster starts the worker again after its restart delay.
            unsafe { pg_sys::proc_exit(1) };
        }
        if net.is_finished() {
            // The Raft runtime stopped (it logged why): restart the worker to retry.
            error!("synapse raft: the Raft runtime stopped; restarting");
        }
        waits.wait(Some(held.wait().unwrap_or(Duration::from_secs(1))));
    }
    let _ = held.write();
    let _ = net.stop(Duration::from_millis(500));
    signals::exit_if_shutdown_pending();
}

fn extension_exists() -> bool {
    in_transaction(|| {
        Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'synapse')",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    })
    .unwrap_or(false)
}

type RaftEnvelope = Envelope<RaftMainRequest, Result<(), String>>;

/// How long batches written behind may wait for more before they are written.
const HOLD_BEHIND: Duration = Duration::from_millis(20);
/// How many batches written behind are written at once, at most.
const MAX_HELD: usize = 512;

/// Applied batches the main thread has not written yet: batches written behind (commit
/// decisions only) wait up to HOLD_BEHIND for more, so that many are written in one
/// transaction, away from the commits that follow a decision; any other request first
/// writes them, so the tables follow the log's order.
#[derive(Default)]
struct Held {
    batches: Vec<RaftEnvelope>,
    since: Option<Instant>,
}

impl Held {
    fn push(&mut self, envelope: RaftEnvelope) {
        self.since.get_or_insert_with(Instant::now);
        self.batches.push(envelope);
    }

    /// Whether the batches held have waited long enough, or are enough.
    fn due(&self) -> bool {
        self.since
            .is_some_and(|t| t.elapsed() >= HOLD_BEHIND || self.batches.len() >= MAX_HELD)
    }

    /// How long until they are due, while batches are held.
    fn wait(&self) -> Option<Duration> {
        self.since.map(|t| HOLD_BEHIND.saturating_sub(t.elapsed()))
    }

    /// Writes every batch held in one transaction and answers each. On failure, the
    /// reason to restart: a batch written behind may be lost, so the worker starts again
    /// from what the tables hold, replaying the Raft log from there.
    fn write(&mut self) -> Result<(), String> {
        self.since = None;
        let envelopes = std::mem::take(&mut self.batches);
        if envelopes.is_empty() {
            return Ok(());
        }
        let batches: Vec<&AppliedBatch> = envelopes
            .iter()
            .filter_map(|e| match &e.request {
                RaftMainRequest::Persist(batch) => Some(batch),
                _ => None,
            })
            .collect();
        let changed = batches
            .iter()
            .any(|b| b.changes.iter().any(CatalogChange::affects_metadata));
        let done = in_transaction(|| persist(&batches)).and_then(|r| r);
        if done.is_ok() && changed {
            crate::shmem::bump_catalog_generation();
        }
        for envelope in envelopes {
            envelope.answer(done.clone());
        }
        done.map_err(|e| format!("synapse raft: could not write the catalog ({e}); restarting"))
    }
}

/// Handles one request of the network thread; `Err`: why the worker must restart.
fn handle(envelope: RaftEnvelope, held: &mut Held) -> Result<(), String> {
    if !matches!(envelope.request, RaftMainRequest::Persist(_)) {
        held.write()?;
    }
    let answer = match &envelope.request {
        RaftMainRequest::Persist(batch) => {
            let behind = batch.written_behind();
            held.push(envelope);
            return if behind { Ok(()) } else { held.write() };
        }
        RaftMainRequest::Replace(state) => {
            let state = state.clone();
            let done = in_transaction(move || replace(&state)).and_then(|r| r);
            crate::shmem::bump_catalog_generation();
            done
        }
        RaftMainRequest::Restart(_) => Ok(()),
        RaftMainRequest::Log(level, message) => {
            match level {
                LogLevel::Log => log!("{message}"),
                LogLevel::Warning => warning!("{message}"),
            }
            Ok(())
        }
    };
    if let Err(e) = &answer {
        warning!("synapse raft: could not write the catalog: {e}");
    }
    envelope.answer(answer);
    Ok(())
}

fn run(sql: &str, arg: &str) -> Result<(), String> {
    Spi::run_with_args(sql, &[arg.into()]).map_err(|e| e.to_string())
}

const UPSERT_CLUSTER: &str = "INSERT INTO synapse.cluster_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.cluster_catalog, $1::jsonb || '{\"singleton\": true}') \
     ON CONFLICT (singleton) DO UPDATE SET cluster_id = EXCLUDED.cluster_id, name = EXCLUDED.name, \
     created_at_unix_ms = EXCLUDED.created_at_unix_ms, last_node_id = EXCLUDED.last_node_id";
const UPSERT_NODE: &str = "INSERT INTO synapse.node_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.node_catalog, $1::jsonb) \
     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, host = EXCLUDED.host, port = EXCLUDED.port, \
     rpc_port = EXCLUDED.rpc_port, gossip_port = EXCLUDED.gossip_port, role = EXCLUDED.role, joined_at_unix_ms = EXCLUDED.joined_at_unix_ms";
const DELETE_NODE: &str = "DELETE FROM synapse.node_catalog WHERE id = $1::bigint";
const UPSERT_SETTING: &str = "INSERT INTO synapse.setting_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.setting_catalog, $1::jsonb) \
     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version, \
     updated_at_unix_ms = EXCLUDED.updated_at_unix_ms";
const UPSERT_TLS: &str = "INSERT INTO synapse.tls_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.tls_catalog, $1::jsonb || '{\"singleton\": true}') \
     ON CONFLICT (singleton) DO UPDATE SET ca_cert_pem = EXCLUDED.ca_cert_pem, \
     sealed_ca_key = EXCLUDED.sealed_ca_key, crl_number = EXCLUDED.crl_number, crl_pem = EXCLUDED.crl_pem";
const UPSERT_CERTIFICATE: &str = "INSERT INTO synapse.certificate_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.certificate_catalog, $1::jsonb) \
     ON CONFLICT (serial) DO UPDATE SET revoked_at_unix_ms = EXCLUDED.revoked_at_unix_ms";
const DELETE_CERTIFICATE: &str = "DELETE FROM synapse.certificate_catalog WHERE serial = $1";
const UPSERT_TABLE: &str = "INSERT INTO synapse.table_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.table_catalog, $1::jsonb) \
     ON CONFLICT (id) DO UPDATE SET shard_key = EXCLUDED.shard_key, key_type = EXCLUDED.key_type";
const DELETE_TABLE: &str = "DELETE FROM synapse.table_catalog WHERE id = $1::bigint";
const DELETE_PLACEMENTS: &str =
    "DELETE FROM synapse.placement_catalog WHERE shard_count = ($1::jsonb->>'shard_count')::int";
const INSERT_PLACEMENTS: &str = "INSERT INTO synapse.placement_catalog \
     SELECT * FROM jsonb_populate_recordset(NULL::synapse.placement_catalog, $1::jsonb->'rows')";
const UPSERT_DECISION: &str = "INSERT INTO synapse.transaction_catalog \
     SELECT * FROM jsonb_populate_record(NULL::synapse.transaction_catalog, $1::jsonb) \
     ON CONFLICT (gid) DO NOTHING";
const DELETE_DECISIONS: &str = "DELETE FROM synapse.transaction_catalog \
     WHERE gid IN (SELECT jsonb_array_elements_text($1::jsonb))";
const SET_APPLIED: &str = "INSERT INTO synapse.raft_applied (state) VALUES ($1::jsonb) \
     ON CONFLICT (singleton) DO UPDATE SET state = EXCLUDED.state";

fn apply_change(change: &CatalogChange) -> Result<(), String> {
    let (kind, arg) = change_row(change);
    let sql = match kind {
        ChangeKind::SetPlacements => {
            run(DELETE_PLACEMENTS, &arg)?;
            INSERT_PLACEMENTS
        }
        ChangeKind::UpsertTable => UPSERT_TABLE,
        ChangeKind::DeleteTable => DELETE_TABLE,
        ChangeKind::SetCluster => UPSERT_CLUSTER,
        ChangeKind::UpsertNode => UPSERT_NODE,
        ChangeKind::DeleteNode => DELETE_NODE,
        ChangeKind::UpsertSetting => UPSERT_SETTING,
        ChangeKind::SetTls => UPSERT_TLS,
        ChangeKind::UpsertCertificate => UPSERT_CERTIFICATE,
        ChangeKind::DeleteCertificate => DELETE_CERTIFICATE,
        ChangeKind::UpsertDecision => UPSERT_DECISION,
        ChangeKind::DeleteDecisions => DELETE_DECISIONS,
    };
    run(sql, &arg)
}

fn set_applied(applied: &AppliedRow) -> Result<(), String> {
    run(
        SET_APPLIED,
        &serde_json::to_string(applied).map_err(|e| e.to_string())?,
    )
}

fn persist(batches: &[&AppliedBatch]) -> Result<(), String> {
    // The Raft log is the durable record: after a crash, entries past the applied id that
    // reached the tables are re-applied from it. No WAL flush per batch is needed.
    Spi::run("SET LOCAL synchronous_commit = off").map_err(|e| e.to_string())?;
    for change in batches.iter().flat_map(|b| &b.changes) {
        apply_change(change)?;
    }
    let Some(last) = batches.last() else {
        return Ok(());
    };
    set_applied(&AppliedRow {
        last_applied: Some(last.last_applied),
        membership: last.membership.clone(),
    })
}

fn replace(state: &CatalogState) -> Result<(), String> {
    for table in [
        "cluster_catalog",
        "node_catalog",
        "setting_catalog",
        "tls_catalog",
        "certificate_catalog",
        "table_catalog",
        "placement_catalog",
        "transaction_catalog",
    ] {
        Spi::run(&format!("DELETE FROM synapse.{table}")).map_err(|e| e.to_string())?;
    }
    let rows = CatalogRows::from(state);
    if let Some(cluster) = &rows.cluster {
        run(
            UPSERT_CLUSTER,
            &serde_json::to_string(cluster).map_err(|e| e.to_string())?,
        )?;
    }
    for node in &rows.nodes {
        run(
            UPSERT_NODE,
            &serde_json::to_string(node).map_err(|e| e.to_string())?,
        )?;
    }
    for setting in &rows.settings {
        run(
            UPSERT_SETTING,
            &serde_json::to_string(setting).map_err(|e| e.to_string())?,
        )?;
    }
    if let Some(tls) = &rows.tls {
        run(
            UPSERT_TLS,
            &serde_json::to_string(tls).map_err(|e| e.to_string())?,
        )?;
    }
    for certificate in &rows.certificates {
        run(
            UPSERT_CERTIFICATE,
            &serde_json::to_string(certificate).map_err(|e| e.to_string())?,
        )?;
    }
    for table in &rows.tables {
        run(
            UPSERT_TABLE,
            &serde_json::to_string(table).map_err(|e| e.to_string())?,
        )?;
    }
    if !rows.placements.is_empty() {
        run(
            INSERT_PLACEMENTS,
            &serde_json::json!({ "rows": rows.placements }).to_string(),
        )?;
    }
    for decision in &rows.decisions {
        run(
            UPSERT_DECISION,
            &serde_json::to_string(decision).map_err(|e| e.to_string())?,
        )?;
    }
    set_applied(&rows.applied.unwrap_or_default())
}

fn load_state() -> Result<CatalogState, String> {
    let text = Spi::get_one::<String>(
        "SELECT jsonb_build_object(\
           'applied', (SELECT state FROM synapse.raft_applied), \
           'cluster', (SELECT to_jsonb(c) - 'singleton' FROM synapse.cluster_catalog c), \
           'nodes', (SELECT coalesce(jsonb_agg(to_jsonb(n)), '[]') FROM synapse.node_catalog n), \
           'settings', (SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]') FROM synapse.setting_catalog s), \
           'tls', (SELECT to_jsonb(t) - 'singleton' FROM synapse.tls_catalog t), \
           'certificates', (SELECT coalesce(jsonb_agg(to_jsonb(c)), '[]') FROM synapse.certificate_catalog c), \
           'tables', (SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') FROM synapse.table_catalog t), \
           'placements', (SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]') FROM synapse.placement_catalog p), \
           'decisions', (SELECT coalesce(jsonb_agg(to_jsonb(d)), '[]') FROM synapse.transaction_catalog d))::text",
    )
    .map_err(|e| e.to_string())?
    .unwrap_or_default();
    let rows: CatalogRows = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(CatalogState::from(rows))
}

fn settings(dir: &std::path::Path) -> RaftSettings {
    let (min, max) = gucs::election_timeout_ms();
    let ip = gucs::listen_ip();
    let address = ip.to_string();
    // SAFETY: PostPortNumber is set by the postmaster before any worker starts.
    let pg_port = unsafe { pg_sys::PostPortNumber } as u16;
    RaftSettings {
        dir: dir.join("raft"),
        listen: SocketAddr::new(ip, gucs::rpc_port()),
        addr: NodeAddr {
            name: gucs::node_name(),
            host: address,
            pg_port,
            rpc_port: gucs::rpc_port(),
            gossip_port: gucs::gossip_port(),
        },
        election_timeout_min: Duration::from_millis(min),
        election_timeout_max: Duration::from_millis(max),
        heartbeat_interval: Duration::from_millis(gucs::heartbeat_interval_ms()),
        leadership_lease: Duration::from_millis(gucs::leadership_lease_ms()),
        raft_timeout: Duration::from_millis(gucs::raft_timeout_ms()),
        max_voters: gucs::max_voters(),
        snapshot_after_entries: gucs::raft_snapshot_entries(),
        tls_dir: crate::pg::synapse_dir().join("tls"),
        cert_lifetime: gucs::cert_lifetimes().0,
        cert_renew_before: gucs::cert_lifetimes().1,
        tls_changed: Some(reload_postgres),
    }
}

fn probe() -> PgProbe {
    PgProbe {
        user: "postgres".into(),
        database: gucs::database(),
    }
}

/// Asks the postmaster to reload its configuration, so PostgreSQL's SSL picks up new TLS
/// files. A plain signal: safe from the worker's network thread, which must not call into
/// PostgreSQL.
fn reload_postgres() {
    // SAFETY: getppid and kill are async-signal-safe system calls; a background worker's
    // parent is the postmaster.
    unsafe {
        libc::kill(libc::getppid(), libc::SIGHUP);
    }
}
