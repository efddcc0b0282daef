//! The supervisor worker's main thread: answers the network thread's requests with SPI,
//! reloads configuration on SIGHUP and stops promptly on SIGTERM.
//!
//! The loop sleeps in one `WaitEventSet` on the latch (signals), postmaster death and the
//! mailbox's eventfd (requests), so it wakes for exactly the events it must handle.

use std::net::SocketAddr;
use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use synapse_core::health::{DatabaseCheck, NodeSettings};
use synapse_core::mailbox::{mailbox, Envelope};
use synapse_core::supervisor::{LogLevel, MainReply, MainRequest, SupervisorNet};

use crate::gucs;
use crate::pg::signals;
use crate::pg::wait::WaitSet;
use crate::pg::xact::in_transaction;
use crate::shmem::{self, WorkerKind};

/// Requests the network thread may have waiting for the main thread at once.
const MAILBOX_CAPACITY: usize = 256;

/// How long shutdown waits for the network thread.
const NET_STOP_DEADLINE: Duration = Duration::from_millis(500);

/// Entry point, called by the postmaster in a new process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn synapse_supervisor_main(_arg: pg_sys::Datum) {
    signals::install();
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::database()), None);
    shmem::register_worker(WorkerKind::Supervisor);

    let (mailbox, inbox) = mailbox(MAILBOX_CAPACITY).unwrap_or_else(|e| {
        error!("synapse supervisor: could not create its mailbox: {e}");
    });
    let net = SupervisorNet::start(http_address(), settings(), mailbox).unwrap_or_else(|e| {
        error!("synapse supervisor: could not start its network thread: {e}");
    });
    log!(
        "synapse supervisor started (HTTP on {})",
        describe(http_address())
    );

    let mut waits = WaitSet::new(1);
    waits.add_readable(inbox.wake_fd());
    while !signals::shutdown_pending() {
        if signals::take_reload_request() {
            signals::reload_config();
            net.publish(settings());
        }
        inbox.drain(handle);
        waits.wait(None);
    }

    if !net.stop(NET_STOP_DEADLINE) {
        warning!("synapse supervisor: network thread did not stop within {NET_STOP_DEADLINE:?}");
    }
    // Ends the process with PostgreSQL's usual FATAL "terminating background worker";
    // exit code 1 makes the postmaster restart us unless the server is shutting down.
    signals::exit_if_shutdown_pending();
}

fn handle(envelope: Envelope<MainRequest, MainReply>) {
    match &envelope.request {
        MainRequest::CheckDatabase => {
            let answer = in_transaction(check_database).and_then(|r| r);
            envelope.answer(MainReply::Database(answer));
        }
        MainRequest::Log(level, message) => {
            match level {
                LogLevel::Log => log!("{message}"),
                LogLevel::Warning => warning!("{message}"),
            }
            envelope.answer(MainReply::Logged);
        }
    }
}

fn check_database() -> Result<DatabaseCheck, String> {
    // Never wait behind a lock longer than the caller waits for us.
    Spi::run(&format!(
        "SET LOCAL lock_timeout = {}",
        gucs::health_timeout_ms()
    ))
    .map_err(|e| e.to_string())?;
    let (postgres_version, extension_version) = Spi::get_two::<String, String>(
        "SELECT current_setting('server_version'), \
                (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'synapse')",
    )
    .map_err(|e| e.to_string())?;
    Ok(DatabaseCheck {
        postgres_version: postgres_version.unwrap_or_default(),
        extension_version,
    })
}

fn settings() -> NodeSettings {
    NodeSettings {
        node_name: gucs::node_name(),
        health_timeout_ms: gucs::health_timeout_ms(),
    }
}

/// The HTTP listen address, or `None` when `synapse.http_port` is 0.
fn http_address() -> Option<SocketAddr> {
    let port = gucs::http_port();
    if port == 0 {
        return None;
    }
    Some(SocketAddr::new(gucs::listen_ip(), port))
}

fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(
        || "nothing: synapse.http_port = 0".to_owned(),
        |a| a.to_string(),
    )
}
