//! PostgreSQL's standard signal handling for our background workers.
//!
//! SIGTERM gets PostgreSQL's own `die` handler, so a worker stuck in a lock wait or a long
//! query is interrupted exactly like a backend; the next `CHECK_FOR_INTERRUPTS()` ends it
//! with FATAL (exit code 1, so the postmaster restarts it unless the server is stopping).
//! SIGHUP only sets `ConfigReloadPending`; the worker reloads at a safe point.

use std::ffi::c_int;

use pgrx::pg_sys;

// The C functions themselves: pgrx's `pg_sys::die` is a Rust wrapper, which must not run
// inside a signal handler.
unsafe extern "C-unwind" {
    fn die(signal: c_int);
    fn SignalHandlerForConfigReload(signal: c_int);
}

/// Installs the handlers and unblocks signals. Call first thing in a worker's main.
pub fn install() {
    // SAFETY: main thread of a new background worker; both handlers are PostgreSQL's own
    // async-signal-safe handlers.
    unsafe {
        pg_sys::pqsignal(libc::SIGTERM, Some(die));
        pg_sys::pqsignal(libc::SIGHUP, Some(SignalHandlerForConfigReload));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// Whether SIGTERM (or another termination request) is pending.
pub fn shutdown_pending() -> bool {
    // SAFETY: reads a sig_atomic_t flag set by the handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0 }
}

/// Exits through PostgreSQL's interrupt processing when termination is pending.
pub fn exit_if_shutdown_pending() {
    pg_sys::check_for_interrupts!();
}

/// Takes a pending SIGHUP: returns true (and clears the flag) when one arrived.
pub fn take_reload_request() -> bool {
    // SAFETY: reads and clears a sig_atomic_t flag, on the main thread.
    unsafe {
        let pending = std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0;
        if pending {
            std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
        }
        pending
    }
}

/// Rereads the configuration files (after [`take_reload_request`]).
pub fn reload_config() {
    // SAFETY: main thread, outside any transaction: the standard reload point.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}
