//! A backend's requests to its node's workers (raft, gossip), over their Unix sockets.
//!
//! Backends never start threads: the socket is non-blocking and every wait goes through
//! `WaitLatchOrSocket`, followed by `CHECK_FOR_INTERRUPTS()`, so a cancel,
//! `statement_timeout` or termination interrupts the wait at once. A backend keeps its
//! connection to each worker for its next requests (connecting costs as much as a short
//! request); one that failed or was interrupted half-way is closed, never reused.

use std::cell::RefCell;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use synapse_core::raft::messages::{ErrorKind, LocalCall, LocalReply, LocalRequest, NodeError};

thread_local! {
    /// The connection to each worker, between requests.
    static CONNECTIONS: RefCell<Vec<(String, UnixStream)>> = const { RefCell::new(Vec::new()) };
}

/// The kept connection to `worker`, unless the worker closed it meanwhile (it restarted):
/// an idle connection has nothing to read, so one that polls readable is at its end.
fn kept(worker: &str) -> Option<UnixStream> {
    let stream = CONNECTIONS.with(|c| {
        let mut c = c.borrow_mut();
        let at = c.iter().position(|(w, _)| w == worker)?;
        Some(c.swap_remove(at).1)
    })?;
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd for a descriptor we own; zero timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    (ready == 0).then_some(stream)
}

/// Keeps `stream` for the next request to `worker`.
fn keep(worker: &str, stream: UnixStream) {
    CONNECTIONS.with(|c| c.borrow_mut().push((worker.to_owned(), stream)));
}

/// The socket of this node's `worker` (`raft`, `gossip`).
fn socket_path(worker: &str) -> PathBuf {
    super::synapse_dir().join(format!("{worker}.sock"))
}

/// Asks the raft worker; waits up to `timeout` for the answer; failures become ERRORs.
pub fn call(request: &LocalRequest, timeout: Duration) -> LocalReply {
    match exchange::<_, LocalReply>("raft", &raft_call(request, timeout), timeout) {
        LocalReply::Failed(e) => report(e),
        reply => reply,
    }
}

/// Like [`call`], but a failure (the raft worker's, or no answer in time) is returned,
/// not raised. An interrupt still raises unless interrupts are held off.
pub fn try_call(request: &LocalRequest, timeout: Duration) -> Result<LocalReply, NodeError> {
    match try_exchange::<_, LocalReply>("raft", &raft_call(request, timeout), timeout)? {
        LocalReply::Failed(e) => Err(e),
        reply => Ok(reply),
    }
}

/// `request` for the raft worker, which then waits as long as this backend does.
fn raft_call(request: &LocalRequest, timeout: Duration) -> LocalCall {
    LocalCall {
        request: request.clone(),
        timeout_ms: Some(timeout.as_millis() as u64),
    }
}

/// Sends `request` to this node's `worker` and waits up to `timeout` for its answer.
pub fn exchange<Q: Serialize, A: DeserializeOwned>(
    worker: &str,
    request: &Q,
    timeout: Duration,
) -> A {
    try_exchange(worker, request, timeout).unwrap_or_else(|e| report(e))
}

/// [`exchange`], returning failures.
pub fn try_exchange<Q: Serialize, A: DeserializeOwned>(
    worker: &str,
    request: &Q,
    timeout: Duration,
) -> Result<A, NodeError> {
    let deadline = Instant::now() + timeout;
    let mut out = serde_json::to_vec(request).expect("serializable");
    out.push(b'\n');
    let unavailable = |e: std::io::Error| {
        NodeError::new(
            ErrorKind::Unavailable,
            format!("{worker} worker socket: {e}"),
        )
    };
    // A kept connection the worker closed just now fails the write: the request did not
    // reach it, so it goes on a new connection.
    let sent = kept(worker).filter(|mut stream| {
        stream.set_nonblocking(false).is_ok() && stream.write_all(&out).is_ok()
    });
    let mut stream = match sent {
        Some(stream) => stream,
        None => {
            let mut stream = connect(worker, deadline)?;
            // The request is small: the socket buffer takes it whole.
            stream.write_all(&out).map_err(unavailable)?;
            stream
        }
    };
    stream.set_nonblocking(true).map_err(unavailable)?;

    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(NodeError::new(
                    ErrorKind::Unavailable,
                    format!("the synapse {worker} worker closed the connection before answering (it restarted); the outcome is unknown"),
                ))
            }
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.ends_with(b"\n") {
                    break;
                }
                continue;
            }
            Err(e) if e.kind() == IoKind::WouldBlock => {}
            Err(e) if e.kind() == IoKind::Interrupted => continue,
            Err(e) => {
                return Err(NodeError::new(
                    ErrorKind::Unavailable,
                    format!("{worker} worker socket: {e}"),
                ))
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(
                NodeError::new(ErrorKind::Unavailable, format!("no answer from the synapse {worker} worker within {} ms; the outcome is unknown", timeout.as_millis()))
                    .hint("Check SELECT * FROM synapse.raft_status(); raise synapse.raft_timeout if the cluster is just slow."),
            );
        }
        // SAFETY: waits on our own latch and a descriptor we own, on the main thread.
        unsafe {
            pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET
                    | pg_sys::WL_SOCKET_READABLE
                    | pg_sys::WL_TIMEOUT
                    | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                stream.as_raw_fd(),
                left.as_millis().min(i32::MAX as u128) as libc::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::check_for_interrupts!();
    }
    let answer = serde_json::from_slice::<A>(&answer).map_err(|e| {
        NodeError::new(
            ErrorKind::Internal,
            format!("bad answer from the {worker} worker: {e}"),
        )
    })?;
    keep(worker, stream);
    Ok(answer)
}

/// A new connection to `worker`. Right after CREATE EXTENSION the worker needs a moment to
/// open its socket: waits for it (interruptibly) until `deadline` rather than fail.
fn connect(worker: &str, deadline: Instant) -> Result<UnixStream, NodeError> {
    let path = socket_path(worker);
    loop {
        match UnixStream::connect(&path) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline || !matches!(e.kind(), IoKind::NotFound | IoKind::ConnectionRefused) => {
                return Err(
                    NodeError::new(ErrorKind::Unavailable, format!("the synapse {worker} worker of this node is not running ({e})"))
                        .hint("Check the server log; the worker starts after CREATE EXTENSION synapse and restarts after failures."),
                )
            }
            Err(_) => wait_latch(SOCKET_RETRY),
        }
    }
}

/// How often a backend looks for the raft worker's socket while the worker starts.
const SOCKET_RETRY: Duration = Duration::from_millis(100);

/// Sleeps on the latch for `pause`, then processes interrupts (cancel, termination).
fn wait_latch(pause: Duration) {
    // SAFETY: waits on our own latch on the main thread.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            pause.as_millis() as libc::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pg_sys::check_for_interrupts!();
}

/// Raises `e` as an ERROR with a SQLSTATE matching its kind.
pub fn report(e: NodeError) -> ! {
    let code = match e.kind {
        ErrorKind::InvalidRequest => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::WrongState => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        ErrorKind::Unavailable => PgSqlErrorCode::ERRCODE_CONNECTION_EXCEPTION,
        ErrorKind::Connection => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        ErrorKind::Internal => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
    };
    let mut report = ErrorReport::new(code, e.message, "synapse");
    if let Some(hint) = e.hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
