//! The gossip worker's network side: one [`Swim`] on a UDP socket, fed the member list by
//! the worker's main thread (from the Raft catalog), answering the node's backends on a
//! Unix socket (`synapse.members()`, `synapse.partition_status()`, `synapse.gossip_status()`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::node::{Config, Event, State, Swim};
use super::wire::{decode, encode, Key};
use crate::raft::messages::{ErrorKind, NodeError};
use crate::raft::service::{bind_local, serve_json_lines};
use crate::supervisor::LogLevel;

/// What the worker's main thread decides the network side runs with.
#[derive(Clone, Debug)]
pub struct GossipSettings {
    /// This node's name (as in `synapse.nodes`).
    pub name: String,
    pub listen: SocketAddr,
    pub config: Config,
    /// Where the last incarnation is kept, so a restarted node comes back with a higher one.
    pub state_file: PathBuf,
    /// The backends' Unix socket.
    pub socket: PathBuf,
}

/// The members to watch and the key to talk to them with; `key` is `None` while this node
/// belongs to no cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    pub key: Option<String>,
    pub members: Vec<(String, SocketAddr)>,
}

/// Told a member's name and new state.
type StateListener = dyn Fn(&str, State) + Send;

/// A backend's question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipRequest {
    Members,
    Status,
}

/// One row of `synapse.members()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub name: String,
    pub address: String,
    pub state: String,
    pub incarnation: u64,
    pub since_unix_ms: i64,
}

/// `synapse.partition_status()` and `synapse.gossip_status()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStatus {
    /// Whether this node gossips (it belongs to a cluster).
    pub active: bool,
    pub majority: bool,
    pub members_up: usize,
    pub members: usize,
    pub since_unix_ms: i64,
    pub incarnation: u64,
    pub health_score: u32,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Datagrams dropped: forged, corrupted, or from another cluster.
    pub datagrams_rejected: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipReply {
    Members(Vec<MemberRow>),
    Status(GossipStatus),
    Failed(NodeError),
}

#[derive(Serialize, Deserialize)]
struct Stored {
    incarnation: u64,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Gossip {
    settings: GossipSettings,
    origin: Instant,
    origin_unix_ms: i64,
    swim: Option<(Swim, Key, String)>,
    status: GossipStatus,
    log: Box<dyn Fn(LogLevel, String) + Send>,
    /// Told each member's new state (by name) as SWIM changes its view.
    on_state: Box<StateListener>,
}

impl Gossip {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn unix(&self, t: Duration) -> i64 {
        self.origin_unix_ms + t.as_millis() as i64
    }

    fn load_incarnation(&self) -> u64 {
        std::fs::read(&self.settings.state_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
            .map_or(0, |s| s.incarnation)
    }

    fn store_incarnation(&self, incarnation: u64) {
        let stored = Stored { incarnation };
        if let Err(e) =
            crate::raft::log_store::write_json_atomic(&self.settings.state_file, &stored)
        {
            (self.log)(
                LogLevel::Warning,
                format!("synapse gossip: could not keep the incarnation: {e}"),
            );
        }
    }

    /// Follows a new roster: start, re-key, update the members, or leave.
    fn follow(&mut self, roster: Roster) -> Option<Vec<(SocketAddr, Vec<u8>)>> {
        let now = self.now();
        let listed = roster.members.iter().any(|(n, _)| *n == self.settings.name);
        match (&roster.key, listed) {
            (Some(key), true) => {
                let same = self.swim.as_ref().is_some_and(|(_, _, k)| k == key);
                if !same {
                    let Some(parsed) = Key::from_hex(key) else {
                        (self.log)(
                            LogLevel::Warning,
                            "synapse gossip: the cluster's gossip key is malformed".into(),
                        );
                        return None;
                    };
                    let incarnation = self.load_incarnation() + 1;
                    self.store_incarnation(incarnation);
                    let seed = (unix_ms() as u64) ^ u64::from(std::process::id());
                    let swim = Swim::new(
                        &self.settings.name,
                        self.settings.listen,
                        incarnation,
                        self.settings.config.clone(),
                        now,
                        seed,
                    );
                    (self.log)(
                        LogLevel::Log,
                        format!(
                            "synapse gossip: {} joins the gossip on {} at incarnation {incarnation}",
                            self.settings.name, self.settings.listen
                        ),
                    );
                    self.swim = Some((swim, parsed, key.clone()));
                }
                let (swim, _, _) = self.swim.as_mut().expect("just set");
                swim.set_members(&roster.members, now);
                None
            }
            _ => {
                // Removed from the cluster (or never in one): say goodbye, then go quiet.
                let (mut swim, key, _) = self.swim.take()?;
                swim.leave(now);
                let out = swim
                    .take_outbox()
                    .into_iter()
                    .map(|(to, msg)| (to, encode(&key, &msg)))
                    .collect();
                (self.log)(
                    LogLevel::Log,
                    format!("synapse gossip: {} left the gossip", self.settings.name),
                );
                Some(out)
            }
        }
    }

    /// Datagrams to send, and what to tell the log.
    fn drain(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let Some((swim, key, _)) = self.swim.as_mut() else {
            return Vec::new();
        };
        let out: Vec<(SocketAddr, Vec<u8>)> = swim
            .take_outbox()
            .into_iter()
            .map(|(to, msg)| (to, encode(key, &msg)))
            .collect();
        let events = swim.take_events();
        let mut refuted = None;
        for event in events {
            match event {
                Event::StateChanged {
                    name,
                    from,
                    to,
                    incarnation,
                    ..
                } => {
                    (self.on_state)(&name, to);
                    (self.log)(
                        if to == State::Failed {
                            LogLevel::Warning
                        } else {
                            LogLevel::Log
                        },
                        format!(
                            "synapse gossip: {name} is {} (was {}, incarnation {incarnation})",
                            to.as_str(),
                            from.as_str()
                        ),
                    )
                }
                Event::Refuted { incarnation, .. } => refuted = Some(incarnation),
                Event::PartitionChanged(p) => (self.log)(
                    if p.majority {
                        LogLevel::Log
                    } else {
                        LogLevel::Warning
                    },
                    if p.majority {
                        format!(
                            "synapse gossip: this node is on the majority side again ({} of {} members up)",
                            p.up, p.members
                        )
                    } else {
                        format!(
                            "synapse gossip: this node is on the minority side: it sees {} of {} members up",
                            p.up, p.members
                        )
                    },
                ),
            }
        }
        if let Some(incarnation) = refuted {
            self.store_incarnation(incarnation);
        }
        out
    }

    fn answer(&self, request: GossipRequest) -> GossipReply {
        let Some((swim, _, _)) = &self.swim else {
            return match request {
                GossipRequest::Members => GossipReply::Members(Vec::new()),
                GossipRequest::Status => GossipReply::Status(GossipStatus {
                    active: false,
                    ..self.status.clone()
                }),
            };
        };
        match request {
            GossipRequest::Members => GossipReply::Members(
                swim.members()
                    .into_iter()
                    .map(|m| MemberRow {
                        name: m.name,
                        address: m.addr.to_string(),
                        state: m.state.as_str().into(),
                        incarnation: m.incarnation,
                        since_unix_ms: self.unix(m.since),
                    })
                    .collect(),
            ),
            GossipRequest::Status => {
                let p = swim.partition();
                GossipReply::Status(GossipStatus {
                    active: true,
                    majority: p.majority,
                    members_up: p.up,
                    members: p.members,
                    since_unix_ms: self.unix(p.since),
                    incarnation: swim.incarnation(),
                    health_score: swim.awareness(),
                    ..self.status.clone()
                })
            }
        }
    }
}

type Question = (GossipRequest, oneshot::Sender<GossipReply>);

/// Runs the gossip until `leave` turns true (a clean shutdown: the node says goodbye first)
/// or the roster's sender is gone.
pub async fn run(
    settings: GossipSettings,
    mut roster: watch::Receiver<Roster>,
    mut leave: watch::Receiver<bool>,
    log: impl Fn(LogLevel, String) + Send + 'static,
    on_state: impl Fn(&str, State) + Send + 'static,
) {
    let socket = match UdpSocket::bind(settings.listen).await {
        Ok(s) => s,
        Err(e) => {
            return log(
                LogLevel::Warning,
                format!(
                    "synapse gossip could not listen on UDP {}: {e}",
                    settings.listen
                ),
            )
        }
    };
    let local = match bind_local(&settings.socket) {
        Ok(l) => l,
        Err(e) => {
            return log(
                LogLevel::Warning,
                format!(
                    "synapse gossip could not listen on {}: {e}",
                    settings.socket.display()
                ),
            )
        }
    };
    let (questions, mut asked) = mpsc::channel::<Question>(64);
    tokio::spawn(serve_local(local, questions));
    let mut g = Gossip {
        settings,
        origin: Instant::now(),
        origin_unix_ms: unix_ms(),
        swim: None,
        status: GossipStatus::default(),
        log: Box::new(log),
        on_state: Box::new(on_state),
    };
    let first = roster.borrow_and_update().clone();
    let mut out = g.follow(first).unwrap_or_default();
    let mut buf = vec![0u8; 65_536];
    loop {
        out.extend(g.drain());
        for (to, datagram) in out.drain(..) {
            if socket.send_to(&datagram, to).await.is_ok() {
                g.status.datagrams_sent += 1;
            }
        }
        let next = g
            .swim
            .as_ref()
            .map_or(Duration::from_secs(3600), |(s, _, _)| s.next_timer());
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                g.status.datagrams_received += 1;
                let now = g.now();
                if let Some((swim, key, _)) = g.swim.as_mut() {
                    match decode(key, &buf[..n]) {
                        Ok(msg) => swim.receive(from, msg, now),
                        Err(_) => g.status.datagrams_rejected += 1,
                    }
                }
            }
            _ = tokio::time::sleep_until(g.origin + next) => {
                let now = g.now();
                if let Some((swim, _, _)) = g.swim.as_mut() {
                    swim.tick(now);
                }
            }
            changed = roster.changed() => {
                if changed.is_err() {
                    break;
                }
                let r = roster.borrow_and_update().clone();
                if let Some(goodbye) = g.follow(r) {
                    out.extend(goodbye);
                }
            }
            Some((question, reply)) = asked.recv() => {
                let _ = reply.send(g.answer(question));
            }
            changed = leave.changed() => {
                let leaving = changed.is_err() || *leave.borrow_and_update();
                if !leaving {
                    continue;
                }
                let now = g.now();
                if let Some((swim, key, _)) = g.swim.as_mut() {
                    swim.leave(now);
                    for (to, msg) in swim.take_outbox() {
                        let _ = socket.send_to(&encode(key, &msg), to).await;
                    }
                }
                break;
            }
        }
    }
}

/// Answers backends on the Unix socket, through the gossip loop.
async fn serve_local(listener: tokio::net::UnixListener, questions: mpsc::Sender<Question>) {
    serve_json_lines(
        listener,
        GossipReply::Failed,
        move |request: GossipRequest| {
            let questions = questions.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                let _ = questions.send((request, tx)).await;
                rx.await.unwrap_or_else(|_| {
                    GossipReply::Failed(NodeError::new(
                        ErrorKind::Unavailable,
                        "the gossip stopped",
                    ))
                })
            }
        },
    )
    .await
}
