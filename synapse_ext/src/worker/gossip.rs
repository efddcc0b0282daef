//! The gossip worker's main thread: reads the members (`synapse.node_catalog`, written by
//! Raft) and the cluster's gossip key (the node's identity file) once a second, hands them
//! to SWIM on the network thread, and writes its log lines. On a clean shutdown the node
//! tells the others it leaves, so they show it LEFT rather than FAILED.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use synapse_core::breaker::Swim;
use synapse_core::mailbox::{mailbox, Envelope};
use synapse_core::raft::node::Identity;
use synapse_core::supervisor::LogLevel;
use synapse_core::swim::service::{run, GossipSettings, Roster};
use synapse_core::swim::{Config, State};
use synapse_core::thread::NetThread;
use tokio::sync::watch;

use crate::gucs;
use crate::pg::signals;
use crate::pg::wait::WaitSet;
use crate::pg::xact::in_transaction;
use crate::shmem::{self, WorkerKind};

/// How often the member list and key are read again.
const ROSTER_POLL: Duration = Duration::from_secs(1);

/// How long a clean shutdown waits for the goodbye to go out.
const LEAVE_GRACE: Duration = Duration::from_millis(300);

/// Entry point, called by the postmaster in a new process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synapse_gossip_main(_arg: pg_sys::Datum) {
    signals::install();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    shmem::register_worker(WorkerKind::Gossip);

    let (mailbox, inbox) =
        mailbox::<GossipNews, ()>(256).unwrap_or_else(|e| error!("synapse gossip: mailbox: {e}"));
    let (roster_tx, roster_rx) = watch::channel(Roster::default());
    let (leave_tx, leave_rx) = watch::channel(false);
    let settings = settings();
    let states = mailbox.clone();
    let net = NetThread::spawn("synapse-gossip", 1, async move {
        let log = move |level, line| {
            let _ = mailbox.post(GossipNews::Log(level, line));
        };
        let on_state = move |name: &str, state: State| {
            let _ = states.post(GossipNews::Member(name.to_owned(), state));
        };
        run(settings, roster_rx, leave_rx, log, on_state).await;
    })
    .unwrap_or_else(|e| error!("synapse gossip: could not start its network thread: {e}"));

    let mut waits = WaitSet::new(1);
    waits.add_readable(inbox.wake_fd());
    while !signals::shutdown_pending() {
        if signals::take_reload_request() {
            signals::reload_config();
        }
        inbox.drain(handle);
        if let Some(roster) = roster() {
            roster_tx.send_if_modified(|current| {
                let changed = *current != roster;
                *current = roster;
                changed
            });
        }
        if net.is_finished() {
            error!("synapse gossip: the gossip stopped; restarting");
        }
        waits.wait(Some(ROSTER_POLL));
    }
    let _ = leave_tx.send(true);
    let _ = net.stop_after(LEAVE_GRACE, Duration::from_millis(200));
    inbox.drain(handle);
    signals::exit_if_shutdown_pending();
}

/// What the network thread tells the main thread.
enum GossipNews {
    Log(LogLevel, String),
    /// SWIM's view of a member changed: it feeds the member's circuit breaker.
    Member(String, State),
}

fn handle(envelope: Envelope<GossipNews, ()>) {
    match &envelope.request {
        GossipNews::Member(name, state) => {
            let view = match state {
                State::Alive => Swim::Alive,
                State::Suspected => Swim::Suspected,
                State::Failed | State::Left => Swim::Failed,
            };
            shmem::breaker_swim(name, view);
        }
        GossipNews::Log(LogLevel::Log, line) => log!("{line}"),
        GossipNews::Log(LogLevel::Warning, line) => warning!("{line}"),
    }
    envelope.answer(());
}

fn settings() -> GossipSettings {
    let (interval, timeout, indirect, mult) = gucs::gossip_parameters();
    let dir = crate::pg::synapse_dir();
    GossipSettings {
        name: gucs::node_name(),
        listen: SocketAddr::new(gucs::listen_ip(), gucs::gossip_port()),
        config: Config {
            probe_interval: Duration::from_millis(interval),
            probe_timeout: Duration::from_millis(timeout),
            indirect_checks: indirect,
            suspicion_mult: mult,
            ..Config::default()
        },
        state_file: dir.join("gossip.json"),
        socket: dir.join("gossip.sock"),
    }
}

/// The members and key as they are now; `None` when they cannot be read (yet).
fn roster() -> Option<Roster> {
    let identity: Option<Identity> =
        std::fs::read(crate::pg::synapse_dir().join("raft/identity.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let rows = in_transaction(|| -> Option<Vec<(String, String, i32)>> {
        let exists = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'synapse')",
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !exists {
            return Some(Vec::new());
        }
        Spi::connect(|client| {
            let table = client
                .select(
                    "SELECT name, host, gossip_port FROM synapse.node_catalog ORDER BY id",
                    None,
                    &[],
                )
                .ok()?;
            let mut rows = Vec::new();
            for row in table {
                rows.push((
                    row.get::<String>(1).ok()??,
                    row.get::<String>(2).ok()??,
                    row.get::<i32>(3).ok()??,
                ));
            }
            Some(rows)
        })
    })
    .ok()??;
    let members = rows
        .into_iter()
        .filter_map(|(name, host, port)| {
            let addr = (host.as_str(), port as u16)
                .to_socket_addrs()
                .ok()?
                .next()?;
            Some((name, addr))
        })
        .collect();
    Some(Roster {
        key: identity.map(|i| i.gossip_key).filter(|k| !k.is_empty()),
        members,
    })
}
