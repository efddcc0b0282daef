//! The network thread of the raft worker: starts the [`RaftNode`] with a sink that hands
//! applied batches to the worker's main thread, then serves gRPC and the backends' socket.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::node::{RaftNode, RaftSettings};
use super::probe::PgProbe;
use super::service::{bind_local, serve_grpc, serve_local};
use super::state_machine::{AppliedBatch, CatalogSink, CatalogState};
use crate::mailbox::Mailbox;
use crate::supervisor::LogLevel;
use crate::thread::NetThread;

/// Work for the raft worker's main thread (which owns the catalog tables).
#[derive(Debug)]
pub enum RaftMainRequest {
    /// Write an applied batch and its applied state in one transaction.
    Persist(AppliedBatch),
    /// Replace the whole catalog (snapshot installed).
    Replace(Box<CatalogState>),
    /// Write a line to the server log.
    Log(LogLevel, String),
    /// The node left its cluster: restart the worker, which then starts outside any.
    Restart(String),
}

pub type RaftMailbox = Mailbox<RaftMainRequest, Result<(), String>>;

/// Runtime threads of the raft worker: log fsyncs on one do not stall replication and
/// requests on the other.
const RUNTIME_WORKERS: usize = 2;

/// How long applying a batch may take on the main thread before Raft gives up (fatal).
const APPLY_DEADLINE: Duration = Duration::from_secs(120);

/// The catalog sink of a running worker: the main thread's SPI.
pub struct MailboxSink(pub RaftMailbox);

impl MailboxSink {
    async fn send(&self, request: RaftMainRequest) -> io::Result<()> {
        match self.0.call(request, APPLY_DEADLINE).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(io::Error::other(message)),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

impl CatalogSink for MailboxSink {
    /// A batch of commit decisions only is written behind: it counts as applied once it
    /// is in the state machine, which serves decisions to whoever needs them current (the
    /// coordinator that proposed one, `synapse.transactions`), while recovery asks Raft
    /// before acting on a missing one. The main thread writes batches in order, and any
    /// failure restarts the worker, which replays the log from what the tables hold.
    /// Waiting for that transaction took a quarter of a distributed commit's latency.
    /// Anything else is written before it counts as applied: backends read metadata from
    /// the tables once their proposal is applied.
    async fn persist(&self, batch: AppliedBatch) -> io::Result<()> {
        if batch.written_behind() {
            return self
                .0
                .post(RaftMainRequest::Persist(batch))
                .map(|_| ())
                .map_err(|e| io::Error::other(e.to_string()));
        }
        self.send(RaftMainRequest::Persist(batch)).await
    }

    async fn replace(&self, state: CatalogState) -> io::Result<()> {
        self.send(RaftMainRequest::Replace(Box::new(state))).await
    }
}

fn log(mailbox: &RaftMailbox, level: LogLevel, message: String) {
    let _ = mailbox.post(RaftMainRequest::Log(level, message));
}

/// Starts the raft network thread. `socket` is the backends' Unix socket path.
pub fn start(
    settings: RaftSettings,
    state: CatalogState,
    probe: PgProbe,
    socket: PathBuf,
    mailbox: RaftMailbox,
) -> io::Result<NetThread> {
    NetThread::spawn("synapse-raft", RUNTIME_WORKERS, async move {
        let listen = settings.listen;
        let node = match RaftNode::open(settings, MailboxSink(mailbox.clone()), state, probe).await
        {
            Ok(node) => node,
            Err(e) => {
                return log(
                    &mailbox,
                    LogLevel::Warning,
                    format!("synapse raft could not start: {e}"),
                )
            }
        };
        let local = match bind_local(&socket) {
            Ok(l) => l,
            Err(e) => {
                return log(
                    &mailbox,
                    LogLevel::Warning,
                    format!("synapse raft could not listen on {}: {e}", socket.display()),
                )
            }
        };
        tokio::spawn(serve_local(node.clone(), local));
        let left = node.clone();
        let counts = std::sync::Arc::new(crate::tls::HandshakeCounts::default());
        match serve_grpc(node, listen, counts, async move { left.left().await }).await {
            Ok(()) => {
                let _ = mailbox.post(RaftMainRequest::Restart(
                    "synapse raft: this node left its cluster; restarting the worker".into(),
                ));
            }
            Err(e) => log(
                &mailbox,
                LogLevel::Warning,
                format!("synapse raft RPC server on {listen} stopped: {e}"),
            ),
        }
    })
}
