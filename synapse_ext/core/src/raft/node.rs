//! A node's Raft runtime: the openraft instance, its gRPC services, forwarding to the
//! leader, and the answers to the node's own backends.
//!
//! A node starts without Raft until it either bootstraps a cluster (`InitCluster`) or is
//! told its id by a leader admitting it (`Join`); the identity is then kept in
//! `identity.json` and Raft starts from the durable log at every later start.
//!
//! Proposals from any node go to the leader; the caller is answered only once the command
//! is applied on the caller's own node (read-your-writes). Reads use a read index from the
//! leader, confirmed by a quorum, and wait until the local catalog has caught up to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::catalog::CertRecord;
use super::log_store::{write_json_atomic, FileLogStore};
use super::messages::{
    ErrorKind, LocalReply, LocalRequest, NodeError, PeerReply, PeerRequest, RaftStatus,
};
use super::messages::{JoinTls, RevokeTarget, TlsStatus};
use super::network::{Network, CONNECT_TIMEOUT};
use super::state_machine::{CatalogSink, CatalogState, CatalogStateMachine};
use super::types::{Command, CommandResult, NodeAddr, NodeId, Role, TypeConfig};
use crate::rpc::pb::cluster_client::ClusterClient;
use crate::rpc::{from_json, to_json};
use crate::tls::{self, CertInfo, ClusterSecret, NodeCertSpec, Signer, Tls, TlsFiles};
use tonic::transport::Channel;

/// Settings of a node's Raft runtime (from the `synapse.*` GUCs).
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// `$PGDATA/synapse/raft`: log, vote, snapshot, identity.
    pub dir: PathBuf,
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// How other nodes reach this one.
    pub addr: NodeAddr,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub heartbeat_interval: Duration,
    pub leadership_lease: Duration,
    /// How long a proposal or read may wait for a quorum.
    pub raft_timeout: Duration,
    pub max_voters: usize,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_after_entries: u64,
    /// `$PGDATA/synapse/tls`: the node's certificate, key, CA and CRL.
    pub tls_dir: PathBuf,
    /// How long the certificates this node issues (when it leads) are valid.
    pub cert_lifetime: Duration,
    /// Renew this node's certificate when less than this remains.
    pub cert_renew_before: Duration,
    /// Called after this node's TLS files changed (the worker asks PostgreSQL to reload
    /// its configuration, so its SSL uses them).
    pub tls_changed: Option<fn()>,
}

/// Which cluster this node belongs to, and as which node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// The key authenticating the cluster's gossip datagrams (hex), made at
    /// `init_cluster` and handed to each node as it joins.
    #[serde(default)]
    pub gossip_key: String,
    /// The cluster secret (hex), which opens the CA key: made at `init_cluster` and
    /// handed to each node as it joins. Back it up (see README, "TLS").
    #[serde(default)]
    pub cluster_secret: String,
}

/// Admits a PostgreSQL server into the cluster: asks it (over SQL) for its name and ports.
/// Provided by the adapter, which knows how to reach PostgreSQL servers.
pub trait NodeProbe: Send + Sync + 'static {
    fn describe(
        &self,
        host: &str,
        port: u16,
    ) -> impl std::future::Future<Output = Result<super::messages::NodeDescription, NodeError>> + Send;

    /// Sends an admission request ([`PeerRequest::CertificateRequest`], `Join`, `Leave`)
    /// to the server at host:port over SQL: such a node holds no certificate of ours yet
    /// (or no longer a valid one), so it cannot be reached over mutual TLS.
    fn admit(
        &self,
        host: &str,
        port: u16,
        request: &PeerRequest,
    ) -> impl std::future::Future<Output = PeerReply> + Send;
}

struct Running<S> {
    id: NodeId,
    raft: Raft<TypeConfig>,
    sm: CatalogStateMachine<S>,
    log: FileLogStore,
    /// To the proposal batcher (see [`batch_proposals`]).
    proposals: mpsc::Sender<Proposal>,
    /// Held while a proposal of this node is in Raft: one at a time, so that the ones
    /// arriving meanwhile are batched.
    proposing: Arc<tokio::sync::Mutex<()>>,
}

/// What [`RaftNode::renew`] returns.
type RenewFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NodeError>> + Send + 'a>>;

/// A command waiting to be proposed, and who waits for its outcome.
type Proposal = (Command, oneshot::Sender<Result<PeerReply, NodeError>>);

/// The most commands in one log entry.
const MAX_BATCH: usize = 256;

/// A node's Raft runtime. Cheap to clone.
pub struct RaftNode<S, P> {
    shared: Arc<Shared<S, P>>,
}

impl<S, P> Clone for RaftNode<S, P> {
    fn clone(&self) -> Self {
        RaftNode {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<S, P> {
    settings: RaftSettings,
    probe: P,
    /// The sink and the catalog state it holds, until Raft starts with them.
    pending: Mutex<Option<(S, CatalogState)>>,
    running: OnceCell<Running<S>>,
    /// Serialises membership changes and leadership transfers started on this node.
    membership: tokio::sync::Mutex<()>,
    /// Writes and read indexes hold it shared; a leadership transfer holds it exclusively,
    /// because every message from the leader renews the lease it is waiting to run out.
    leading: tokio::sync::RwLock<()>,
    /// Requests from this node's backends hold it shared while they run.
    local: tokio::sync::RwLock<()>,
    /// Becomes true once this node has left its cluster (the worker then restarts).
    left: tokio::sync::watch::Sender<bool>,
    /// The TLS configurations in force, once this node has its certificate.
    tls: tokio::sync::watch::Sender<Option<Tls>>,
    /// Channels to other members, by "id@address" (each reconnects by itself).
    channels: Mutex<HashMap<String, Channel>>,
}

fn failed(kind: ErrorKind, message: impl Into<String>) -> NodeError {
    NodeError::new(kind, message)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<S: CatalogSink, P: NodeProbe> RaftNode<S, P> {
    /// Creates the runtime; starts Raft at once when this node already has an identity.
    pub async fn open(
        settings: RaftSettings,
        sink: S,
        state: CatalogState,
        probe: P,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&settings.dir)?;
        let node = RaftNode {
            shared: Arc::new(Shared {
                settings,
                probe,
                pending: Mutex::new(Some((sink, state))),
                running: OnceCell::new(),
                membership: tokio::sync::Mutex::new(()),
                leading: tokio::sync::RwLock::new(()),
                local: tokio::sync::RwLock::new(()),
                left: tokio::sync::watch::channel(false).0,
                tls: tokio::sync::watch::channel(None).0,
                channels: Mutex::new(HashMap::new()),
            }),
        };
        if let Some(identity) = node.identity()? {
            node.load_tls(&identity.cluster_id)?;
            node.start_raft(identity.node_id).await?;
        }
        Ok(node)
    }

    /// Puts this node's TLS files in force, when it has them.
    /// Every channel and the server share one [`Tls`]: a renewal updates it in place.
    fn load_tls(&self, cluster_id: &str) -> io::Result<()> {
        let Some(material) = self.tls_files().load()? else {
            return Ok(());
        };
        if let Some(changed) = self.shared.settings.tls_changed {
            changed();
        }
        let current = self.shared.tls.borrow().clone();
        match current {
            Some(tls) => tls.update(&material).map_err(io::Error::other),
            None => {
                let tls = Tls::new(&material, cluster_id).map_err(io::Error::other)?;
                self.shared.tls.send_replace(Some(tls));
                Ok(())
            }
        }
    }

    /// The TLS configurations in force; `None` until this node is certified.
    pub fn tls(&self) -> tokio::sync::watch::Receiver<Option<Tls>> {
        self.shared.tls.subscribe()
    }

    fn identity_path(&self) -> PathBuf {
        self.shared.settings.dir.join("identity.json")
    }

    /// This node's identity, if it belongs to a cluster.
    pub fn identity(&self) -> io::Result<Option<Identity>> {
        match std::fs::read(self.identity_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn start_raft(&self, id: NodeId) -> io::Result<&Running<S>> {
        let s = &self.shared.settings;
        let (sink, state) = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("raft already started"))?;
        let (openraft_min, openraft_max) = openraft_election_timeouts(s);
        let config = Config {
            cluster_name: "synapse".into(),
            election_timeout_min: openraft_min,
            election_timeout_max: openraft_max,
            heartbeat_interval: s.heartbeat_interval.as_millis() as u64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_after_entries),
            max_in_snapshot_log_to_keep: 100,
            snapshot_max_chunk_size: 512 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(io::Error::other)?;
        let log = FileLogStore::open(s.dir.join("log"))?;
        let sm = CatalogStateMachine::open(s.dir.join("snapshot"), state, sink).await?;
        let network = Network {
            tls: self.shared.tls.subscribe(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log.clone(), sm.clone())
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(self.clone().follow_crl(raft.metrics()));
        tokio::spawn(self.clone().maintain_certificates());
        let (proposals, queue) = mpsc::channel(4 * MAX_BATCH);
        let proposing = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(batch_proposals(raft.clone(), queue, proposing.clone()));
        let _ = self.shared.running.set(Running {
            id,
            raft,
            sm,
            log,
            proposals,
            proposing,
        });
        Ok(self.shared.running.get().expect("just set"))
    }

    fn running(&self) -> Result<&Running<S>, NodeError> {
        self.shared.running.get().ok_or_else(|| {
            failed(ErrorKind::WrongState, "this node is not a member of a cluster")
                .hint("Run SELECT synapse.init_cluster() on this node, or synapse.add_node() for it on a member.")
        })
    }

    /// The settings this runtime was opened with.
    pub fn settings(&self) -> &RaftSettings {
        &self.shared.settings
    }

    /// The Raft handle, once started (for the gRPC service).
    pub fn raft(&self) -> Option<Raft<TypeConfig>> {
        self.shared.running.get().map(|r| r.raft.clone())
    }

    /// Completes once this node has left its cluster (see [`PeerRequest::Leave`]) and no
    /// request from its backends is still running; the runtime should then stop.
    pub async fn left(&self) {
        let mut left = self.shared.left.subscribe();
        let _ = left.wait_for(|l| *l).await;
        let _idle = self.shared.local.write().await;
    }

    /// The current catalog of this node.
    pub fn catalog_state(&self) -> Option<CatalogState> {
        self.shared.running.get().map(|r| r.sm.state())
    }

    /// Reads this node's current catalog in place (see [`CatalogStateMachine::read`]).
    pub fn read_catalog<R>(&self, f: impl FnOnce(&CatalogState) -> R) -> Option<R> {
        self.shared.running.get().map(|r| r.sm.read(f))
    }

    /// Answers a request from one of this node's backends within this node's
    /// `synapse.raft_timeout`.
    pub async fn handle_local(&self, request: LocalRequest) -> LocalReply {
        self.handle_local_within(request, self.shared.settings.raft_timeout)
            .await
    }

    /// Answers a request from one of this node's backends, giving up after `timeout`.
    pub async fn handle_local_within(
        &self,
        request: LocalRequest,
        timeout: Duration,
    ) -> LocalReply {
        let _running = self.shared.local.read().await;
        let work = async {
            match request {
                LocalRequest::InitCluster { name } => {
                    self.init_cluster(name).await.map(LocalReply::NodeId)
                }
                LocalRequest::Propose(command) => self
                    .propose_and_wait(command)
                    .await
                    .map(LocalReply::Applied),
                LocalRequest::ProposeDurable(command) => {
                    match self.on_leader(PeerRequest::Propose(command)).await {
                        Ok(PeerReply::Applied { result, .. }) => Ok(LocalReply::Applied(result)),
                        Ok(other) => Err(unexpected(other)),
                        Err(e) => Err(e),
                    }
                }
                LocalRequest::ReadBarrier => self.read_barrier().await.map(|()| LocalReply::Done),
                LocalRequest::Status => Ok(LocalReply::Status(self.status())),
                LocalRequest::TlsStatus => self.tls_status().map(LocalReply::Tls),
                LocalRequest::Decisions { gids } => Ok(LocalReply::Decisions(
                    self.read_catalog(|s| {
                        gids.iter()
                            .filter_map(|g| s.catalog.decisions.get(g).cloned())
                            .collect()
                    })
                    .unwrap_or_default(),
                )),
                LocalRequest::Admission(request) => {
                    Ok(LocalReply::Peer(self.handle_admission(request).await))
                }
                LocalRequest::RotateCertificates { node } => {
                    self.rotate(node).await.map(LocalReply::Names)
                }
                LocalRequest::Revoke(target) => {
                    match self.on_leader(PeerRequest::Revoke(target)).await? {
                        PeerReply::Applied { index, result } => {
                            self.wait_applied(index).await?;
                            match result {
                                CommandResult::Refused(m) => {
                                    Err(failed(ErrorKind::InvalidRequest, m))
                                }
                                other => Ok(LocalReply::Applied(other)),
                            }
                        }
                        other => Err(unexpected(other)),
                    }
                }
                LocalRequest::AddNode { host, port } => self
                    .on_leader(PeerRequest::AddNode { host, port })
                    .await
                    .and_then(|reply| match reply {
                        PeerReply::NodeId(id) => Ok(LocalReply::NodeId(id)),
                        other => Err(unexpected(other)),
                    }),
                LocalRequest::RemoveNode { node } => self
                    .on_leader(PeerRequest::RemoveNode { node })
                    .await
                    .map(|_| LocalReply::Done),
                LocalRequest::TransferLeadership { node } => {
                    match self
                        .on_leader(PeerRequest::TransferLeadership { node })
                        .await
                    {
                        Ok(PeerReply::NodeId(leader)) => self
                            .wait_for_leader(leader)
                            .await
                            .map(|()| LocalReply::Done),
                        Ok(other) => Err(unexpected(other)),
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => LocalReply::Failed(e),
            Err(_) => LocalReply::Failed(
                failed(ErrorKind::Unavailable, format!("no Raft quorum answered within {} ms", timeout.as_millis()))
                    .hint("Check that a majority of the voting nodes is up (SELECT * FROM synapse.raft_status()); the change may still be applied later."),
            ),
        }
    }

    async fn init_cluster(&self, name: String) -> Result<NodeId, NodeError> {
        if let Some(identity) = self.identity().map_err(internal)? {
            return Err(failed(
                ErrorKind::WrongState,
                format!(
                    "this node is already node {} of a cluster",
                    identity.node_id
                ),
            ));
        }
        let identity = Identity {
            node_id: 1,
            cluster_id: random_id(),
            gossip_key: random_id() + &random_id(),
            cluster_secret: ClusterSecret::generate().to_hex().to_string(),
        };
        write_json_atomic(&self.identity_path(), &identity).map_err(internal)?;
        let running = self.start_raft(identity.node_id).await.map_err(internal)?;
        let me = BasicNode::new(self.shared.settings.addr.rpc_endpoint());
        running
            .raft
            .initialize(BTreeMap::from([(identity.node_id, me)]))
            .await
            .map_err(raft_error)?;
        running
            .raft
            .wait(Some(self.shared.settings.raft_timeout))
            .state(ServerState::Leader, "become leader of the new cluster")
            .await
            .map_err(|e| failed(ErrorKind::Unavailable, e.to_string()))?;
        let at_unix_ms = now_ms();
        self.propose_and_wait(Command::InitCluster {
            cluster_id: identity.cluster_id.clone(),
            name,
            at_unix_ms,
        })
        .await?;
        self.propose_and_wait(Command::UpsertNode {
            id: identity.node_id,
            addr: self.shared.settings.addr.clone(),
            role: Role::Voter,
            at_unix_ms,
        })
        .await?;
        self.init_tls(&identity).await?;
        Ok(identity.node_id)
    }

    fn tls_files(&self) -> TlsFiles {
        TlsFiles::new(self.shared.settings.tls_dir.clone())
    }

    /// Creates the cluster's CA and certifies this first node.
    async fn init_tls(&self, identity: &Identity) -> Result<(), NodeError> {
        let secret = ClusterSecret::from_hex(&identity.cluster_secret).map_err(internal)?;
        let now = SystemTime::now();
        let ca = tls::create_ca(&identity.cluster_id, &secret, now).map_err(internal)?;
        let signer = Signer::open(&ca, &identity.cluster_id, &secret).map_err(internal)?;
        let crl_pem = signer
            .crl(1, &[], now, now + tls::ca::CA_LIFETIME)
            .map_err(internal)?;
        self.propose_and_wait(Command::InitTls {
            ca: ca.clone(),
            crl_pem: crl_pem.clone(),
        })
        .await?;
        let files = self.tls_files();
        let csr = files
            .certificate_request(&self.shared.settings.addr.name)
            .map_err(internal)?;
        let spec = self.cert_spec(
            identity.node_id,
            &identity.cluster_id,
            &self.shared.settings.addr,
        );
        let cert_pem = signer
            .issue(&csr, &spec, now, self.shared.settings.cert_lifetime)
            .map_err(internal)?;
        self.propose_and_wait(Command::RecordCertificate(cert_record(&cert_pem, &spec)?))
            .await?;
        files
            .install_issued(&ca.cert_pem, &crl_pem, &cert_pem)
            .map_err(internal)?;
        self.load_tls(&identity.cluster_id).map_err(internal)
    }

    fn cert_spec(&self, node_id: NodeId, cluster_id: &str, addr: &NodeAddr) -> NodeCertSpec {
        NodeCertSpec {
            cluster_id: cluster_id.to_string(),
            node_id,
            name: addr.name.clone(),
            hosts: vec![addr.host.clone()],
        }
    }

    /// On the leader: certifies the key of `csr` for node `spec`; the [`JoinTls`] to hand
    /// to the node and the record for the catalog. `None` for a cluster without a CA.
    fn certify(
        &self,
        running: &Running<S>,
        csr: &str,
        spec: &NodeCertSpec,
    ) -> Result<Option<(JoinTls, CertRecord)>, NodeError> {
        let state = running.sm.state();
        let Some(ca) = state.catalog.tls.as_ref() else {
            return Ok(None);
        };
        let (signer, identity) = self.open_signer(&ca.ca)?;
        let cert_pem = signer
            .issue(
                csr,
                spec,
                SystemTime::now(),
                self.shared.settings.cert_lifetime,
            )
            .map_err(internal)?;
        let record = cert_record(&cert_pem, spec)?;
        Ok(Some((
            JoinTls {
                cluster_secret: identity.cluster_secret.clone(),
                ca_pem: ca.ca.cert_pem.clone(),
                crl_pem: ca.crl_pem.clone(),
                cert_pem,
            },
            record,
        )))
    }

    /// On the leader: the CA `ca` with its key opened by this node's cluster secret, and
    /// this node's identity (which holds the secret).
    fn open_signer(&self, ca: &tls::CaBundle) -> Result<(Signer, Identity), NodeError> {
        let identity = self
            .identity()
            .map_err(internal)?
            .ok_or_else(|| internal("the leader has no identity"))?;
        let cannot_sign = |e: tls::TlsError| {
            failed(
                ErrorKind::Internal,
                format!("this node cannot sign certificates: {e}"),
            )
        };
        let secret = ClusterSecret::from_hex(&identity.cluster_secret).map_err(cannot_sign)?;
        let signer = Signer::open(ca, &identity.cluster_id, &secret).map_err(cannot_sign)?;
        Ok((signer, identity))
    }

    /// On the leader, holding the membership lock: revokes `target`'s certificates with a
    /// new CRL that lists every revoked certificate.
    async fn revoke(
        &self,
        running: &Running<S>,
        target: RevokeTarget,
    ) -> Result<PeerReply, NodeError> {
        let state = running.sm.state();
        let catalog = &state.catalog;
        let tls = catalog.tls.as_ref().ok_or_else(|| {
            failed(
                ErrorKind::WrongState,
                "the cluster has no certificate authority",
            )
        })?;
        let serials: Vec<String> = match &target {
            RevokeTarget::Serial(serial) => {
                let serial = serial.trim().to_ascii_lowercase().replace(':', "");
                if !catalog.certificates.contains_key(&serial) {
                    return Err(failed(
                        ErrorKind::InvalidRequest,
                        format!("no certificate has serial \"{serial}\""),
                    )
                    .hint("SELECT serial, node FROM synapse.certificates lists them."));
                }
                vec![serial]
            }
            RevokeTarget::Node(node) => {
                let id = node.parse::<NodeId>().ok();
                let known = catalog
                    .certificates
                    .values()
                    .any(|c| c.node_name == *node || Some(c.node_id) == id);
                if !known {
                    return Err(failed(
                        ErrorKind::InvalidRequest,
                        format!("no certificate was issued to node \"{node}\""),
                    )
                    .hint("SELECT serial, node FROM synapse.certificates lists them."));
                }
                catalog
                    .certificates
                    .values()
                    .filter(|c| c.node_name == *node || Some(c.node_id) == id)
                    .filter(|c| c.revoked_at_unix_ms.is_none())
                    .map(|c| c.serial.clone())
                    .collect()
            }
        };
        let at_unix_ms = now_ms();
        let listed: Vec<tls::Revoked> = catalog
            .certificates
            .values()
            .filter_map(|c| {
                let at = c
                    .revoked_at_unix_ms
                    .or(serials.contains(&c.serial).then_some(at_unix_ms))?;
                Some(tls::Revoked {
                    serial: c.serial.clone(),
                    at_unix_ms: at.max(0) as u64,
                })
            })
            .collect();
        let (signer, _) = self.open_signer(&tls.ca)?;
        let now = SystemTime::now();
        let crl_number = tls.crl_number + 1;
        let crl_pem = signer
            .crl(crl_number, &listed, now, now + tls::ca::CA_LIFETIME)
            .map_err(internal)?;
        propose(
            &running.raft,
            vec![Command::RevokeCertificates {
                serials,
                at_unix_ms,
                crl_number,
                crl_pem,
            }],
        )
        .await
        .pop()
        .expect("one outcome")
    }

    /// Keeps this node's CRL file and TLS configurations at the catalog's revocation list:
    /// new connections are checked against a new list as soon as it is applied here.
    async fn follow_crl(
        self,
        mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    ) {
        let mut installed = 0;
        loop {
            let newer = self
                .read_catalog(|s| {
                    s.catalog
                        .tls
                        .as_ref()
                        .filter(|t| t.crl_number > installed)
                        .map(|t| (t.crl_number, t.crl_pem.clone()))
                })
                .flatten();
            // On failure, tried again at the next change.
            if let Some((number, crl_pem)) = newer {
                if self.install_crl(&crl_pem).is_ok() {
                    installed = number;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
            // Applied entries arrive in bursts: look at most every few milliseconds.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The maintenance loop: renews this node's certificate when less than
    /// `cert_renew_before` remains, and, on the leader, drops expired certificates from the
    /// catalog. Failures are retried at the next round.
    async fn maintain_certificates(self) {
        let every = (self.shared.settings.cert_renew_before / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut left = self.shared.left.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = left.wait_for(|l| *l) => return,
            }
            let Ok(running) = self.running() else {
                continue;
            };
            let _ = self.forget_expired(running).await;
            let tls = self.shared.tls.borrow().clone();
            let Some(tls) = tls else {
                continue;
            };
            if tls.cert().remaining(SystemTime::now()) < self.shared.settings.cert_renew_before {
                let _ = self.renew().await;
            }
        }
    }

    /// Renews the certificate of `node` (or of every member) now, each node its own.
    async fn rotate(&self, node: Option<String>) -> Result<Vec<String>, NodeError> {
        self.read_barrier().await?;
        let running = self.running()?;
        let state = running.sm.state();
        let targets: Vec<NodeId> = match node {
            Some(node) => vec![self.resolve(running, &node)?],
            None => state.catalog.nodes.keys().copied().collect(),
        };
        let mut renewed = vec![];
        for id in targets {
            let node = &state.catalog.nodes[&id];
            if id == running.id {
                self.renew().await?;
            } else {
                match self
                    .call_member(id, &node.addr.rpc_endpoint(), &PeerRequest::RenewNow)
                    .await
                {
                    PeerReply::Done => {}
                    PeerReply::Failed(e) => return Err(e),
                    PeerReply::Unreachable(m) => {
                        return Err(failed(ErrorKind::Connection, m).hint(format!(
                            "Node {} is down or unreachable; it renews by itself once it is back.",
                            node.addr.name
                        )))
                    }
                    other => return Err(unexpected(other)),
                }
            }
            renewed.push(node.addr.name.clone());
        }
        Ok(renewed)
    }

    /// Asks the leader to certify a new key of this node, then puts it in force.
    /// Boxed, because renewing goes through the leader, which may answer a `RenewNow`
    /// by renewing: the future is recursive.
    fn renew(&self) -> RenewFuture<'_> {
        Box::pin(async move {
            let running = self.running()?;
            let files = self.tls_files();
            let csr = files
                .certificate_request(&self.shared.settings.addr.name)
                .map_err(internal)?;
            let request = PeerRequest::Renew {
                node_id: running.id,
                csr,
            };
            let (cert_pem, index) = match self.on_leader(request).await? {
                PeerReply::Certified { cert_pem, index } => (cert_pem, index),
                other => return Err(unexpected(other)),
            };
            self.wait_applied(index).await?;
            let state = running.sm.state();
            let ca = state
                .catalog
                .tls
                .as_ref()
                .ok_or_else(|| internal("the cluster has no certificate authority"))?;
            files
                .install_issued(&ca.ca.cert_pem, &ca.crl_pem, &cert_pem)
                .map_err(internal)?;
            let cluster_id = self.cluster_id(running).unwrap_or_default();
            self.load_tls(&cluster_id).map_err(internal)
        })
    }

    /// On the leader: certifies a new key of member `node_id` (the caller's certificate
    /// named it) and records the certificate.
    async fn certify_renewal(
        &self,
        running: &Running<S>,
        node_id: NodeId,
        csr: &str,
    ) -> Result<PeerReply, NodeError> {
        let state = running.sm.state();
        let node = state.catalog.nodes.get(&node_id).ok_or_else(|| {
            failed(
                ErrorKind::WrongState,
                format!("node {node_id} is not a member"),
            )
        })?;
        let cluster_id = self.cluster_id(running).unwrap_or_default();
        let spec = self.cert_spec(node_id, &cluster_id, &node.addr);
        let (join_tls, record) = self.certify(running, csr, &spec)?.ok_or_else(|| {
            failed(
                ErrorKind::WrongState,
                "the cluster has no certificate authority",
            )
        })?;
        let outcome = propose(&running.raft, vec![Command::RecordCertificate(record)])
            .await
            .pop()
            .expect("one outcome")?;
        match outcome {
            PeerReply::Applied {
                index,
                result: CommandResult::Done,
            } => Ok(PeerReply::Certified {
                cert_pem: join_tls.cert_pem,
                index,
            }),
            PeerReply::Applied {
                result: CommandResult::Refused(m),
                ..
            } => Err(failed(ErrorKind::InvalidRequest, m)),
            other => Ok(other),
        }
    }

    /// On the leader: drops certificates that expired from the catalog.
    async fn forget_expired(&self, running: &Running<S>) -> Result<(), NodeError> {
        if running.raft.current_leader().await != Some(running.id) {
            return Ok(());
        }
        let now = now_ms();
        let serials: Vec<String> = running
            .sm
            .state()
            .catalog
            .certificates
            .values()
            .filter(|c| c.not_after_unix_ms < now)
            .map(|c| c.serial.clone())
            .collect();
        if serials.is_empty() {
            return Ok(());
        }
        propose(&running.raft, vec![Command::ForgetCertificates { serials }])
            .await
            .pop()
            .expect("one outcome")
            .map(|_| ())
    }

    fn install_crl(&self, crl_pem: &str) -> io::Result<()> {
        let files = self.tls_files();
        let Some(mut material) = files.load()? else {
            return Ok(());
        };
        if material.crl_pems.concat() == crl_pem {
            return Ok(());
        }
        material.crl_pems = vec![crl_pem.to_string()];
        let tls = self.shared.tls.borrow().clone();
        if let Some(tls) = tls {
            tls.update(&material).map_err(io::Error::other)?;
        }
        files.write_crl(crl_pem)?;
        if let Some(changed) = self.shared.settings.tls_changed {
            changed();
        }
        Ok(())
    }

    /// This node's row of `synapse.tls_status()`.
    fn tls_status(&self) -> Result<TlsStatus, NodeError> {
        let Some(material) = self.tls_files().load().map_err(internal)? else {
            return Ok(TlsStatus::default());
        };
        let cert = CertInfo::from_pem(&material.cert_pem).map_err(internal)?;
        let ca = CertInfo::from_pem(&material.ca_pem).map_err(internal)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(TlsStatus {
            serial: Some(cert.serial.clone()),
            sans: cert.sans.clone(),
            not_after_unix: Some(cert.not_after_unix),
            seconds_left: Some(cert.not_after_unix - now),
            ca_fingerprint: Some(ca.fingerprint),
            crl_number: self
                .read_catalog(|s| s.catalog.tls.as_ref().map(|t| t.crl_number))
                .flatten(),
        })
    }

    /// Proposes on the leader (forwarding when needed), then waits until this node applied it.
    async fn propose_and_wait(&self, command: Command) -> Result<CommandResult, NodeError> {
        match self.on_leader(PeerRequest::Propose(command)).await? {
            PeerReply::Applied { index, result } => {
                self.wait_applied(index).await?;
                match result {
                    CommandResult::Refused(message) => {
                        Err(failed(ErrorKind::InvalidRequest, message))
                    }
                    other => Ok(other),
                }
            }
            other => Err(unexpected(other)),
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), NodeError> {
        let running = self.running()?;
        running
            .raft
            .wait(Some(self.shared.settings.raft_timeout))
            .applied_index_at_least(Some(index), "apply locally")
            .await
            .map(|_| ())
            .map_err(|e| {
                failed(
                    ErrorKind::Unavailable,
                    format!("this node did not catch up: {e}"),
                )
            })
    }

    async fn read_barrier(&self) -> Result<(), NodeError> {
        match self.on_leader(PeerRequest::ReadIndex).await? {
            PeerReply::ReadIndex(index) => self.wait_applied(index).await,
            other => Err(unexpected(other)),
        }
    }

    /// Runs `request` on the leader: here when this node leads, else over RPC. Retries
    /// while leadership moves or the leader is unreachable; the caller bounds the time.
    async fn on_leader(&self, request: PeerRequest) -> Result<PeerReply, NodeError> {
        let settings = &self.shared.settings;
        loop {
            let running = self.running()?;
            let leader = running.raft.current_leader().await;
            let reply = match leader {
                Some(leader) if leader == running.id => self.handle_peer(request.clone()).await,
                Some(leader) => match leader_addr(&running.raft, leader) {
                    Some(addr) => self.call_member(leader, &addr, &request).await,
                    None => {
                        PeerReply::Unreachable(format!("the address of leader {leader} is unknown"))
                    }
                },
                None => PeerReply::Unreachable("no leader is known".into()),
            };
            match reply {
                PeerReply::NotLeader { .. } | PeerReply::Unreachable(_) => {
                    // Wait for the next heartbeat or election before trying again.
                    let _ = running
                        .raft
                        .wait(Some(settings.election_timeout_max))
                        .metrics(
                            |m| m.current_leader.is_some() && m.current_leader != leader,
                            "a new leader",
                        )
                        .await;
                    tokio::time::sleep(settings.heartbeat_interval / 2).await;
                }
                PeerReply::Failed(e) => return Err(e),
                other => return Ok(other),
            }
        }
    }

    /// Answers an admission request from a leader, which came over SQL (see
    /// [`NodeProbe::admit`]).
    pub async fn handle_admission(&self, request: PeerRequest) -> PeerReply {
        let result = match request {
            PeerRequest::Join {
                node_id,
                cluster_id,
                gossip_key,
                tls,
            } => self.join(node_id, cluster_id, gossip_key, tls).await,
            PeerRequest::CertificateRequest => self
                .tls_files()
                .certificate_request(&self.shared.settings.addr.name)
                .map(PeerReply::Csr)
                .map_err(internal),
            PeerRequest::Leave {
                node_id,
                cluster_id,
            } => self.leave(node_id, cluster_id).await,
            other => Err(failed(
                ErrorKind::InvalidRequest,
                format!("{other:?} is not an admission request"),
            )),
        };
        result.unwrap_or_else(PeerReply::Failed)
    }

    /// Answers a request from another member over mutual TLS (or from `on_leader` on the
    /// leader itself).
    pub async fn handle_peer(&self, request: PeerRequest) -> PeerReply {
        if self
            .raft()
            .is_some_and(|r| r.metrics().borrow().state == ServerState::Shutdown)
        {
            // Leaving, or stopping: the caller should find the cluster elsewhere.
            return PeerReply::Unreachable("this node's Raft has stopped".into());
        }
        let result = match request {
            PeerRequest::Join { .. }
            | PeerRequest::CertificateRequest
            | PeerRequest::Leave { .. } => Err(failed(
                ErrorKind::InvalidRequest,
                "admission requests come over SQL, not from members",
            )),
            PeerRequest::StartElection => self.start_election().await,
            PeerRequest::RenewNow => self.renew().await.map(|()| PeerReply::Done),
            leader_only => match self.running() {
                Err(e) => Err(e),
                Ok(running) => {
                    if running.raft.current_leader().await != Some(running.id) {
                        let leader = running.raft.current_leader().await;
                        return PeerReply::NotLeader {
                            leader: leader
                                .and_then(|l| leader_addr(&running.raft, l).map(|a| (l, a))),
                        };
                    }
                    self.lead(running, leader_only).await
                }
            },
        };
        result.unwrap_or_else(PeerReply::Failed)
    }

    async fn lead(
        &self,
        running: &Running<S>,
        request: PeerRequest,
    ) -> Result<PeerReply, NodeError> {
        // A leadership transfer waits for these to finish, and they for it.
        let _leading = match request {
            PeerRequest::Propose(_) | PeerRequest::ReadIndex => {
                Some(self.shared.leading.read().await)
            }
            _ => None,
        };
        match request {
            PeerRequest::Propose(command) => {
                if let Ok(_alone) = running.proposing.try_lock() {
                    // Nothing in flight: no batch to wait for.
                    return propose(&running.raft, vec![command])
                        .await
                        .pop()
                        .expect("one outcome");
                }
                let (reply, outcome) = oneshot::channel();
                let stopped = || internal("the proposal batcher stopped");
                running
                    .proposals
                    .send((command, reply))
                    .await
                    .map_err(|_| stopped())?;
                outcome.await.map_err(|_| stopped())?
            }
            PeerRequest::ReadIndex => match running.raft.ensure_linearizable().await {
                Ok(log_id) => Ok(PeerReply::ReadIndex(log_id.map_or(0, |l| l.index))),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                    Ok(PeerReply::NotLeader { leader: None })
                }
                Err(e) => Err(failed(
                    ErrorKind::Unavailable,
                    format!("leadership could not be confirmed: {e}"),
                )),
            },
            PeerRequest::AddNode { host, port } => self
                .add_node(running, host, port)
                .await
                .map(PeerReply::NodeId),
            PeerRequest::RemoveNode { node } => {
                let id = self.resolve(running, &node)?;
                if id == running.id {
                    // A leader cannot see its own removal through: hand leadership over
                    // first, then the caller retries on the new leader.
                    let _serial = self.shared.membership.lock().await;
                    let target = self.successor(running)?;
                    self.transfer_leadership(running, target).await?;
                    return Ok(PeerReply::NotLeader { leader: None });
                }
                self.remove_node(running, id)
                    .await
                    .map(|()| PeerReply::Done)
            }
            PeerRequest::Revoke(target) => {
                let _serial = self.shared.membership.lock().await;
                self.revoke(running, target).await
            }
            PeerRequest::Renew { node_id, csr } => {
                self.certify_renewal(running, node_id, &csr).await
            }
            PeerRequest::TransferLeadership { node } => {
                let target = self.resolve(running, &node)?;
                let _serial = self.shared.membership.lock().await;
                self.transfer_leadership(running, target)
                    .await
                    .map(|()| PeerReply::NodeId(target))
            }
            other => Err(failed(
                ErrorKind::InvalidRequest,
                format!("unexpected request {other:?}"),
            )),
        }
    }

    async fn join(
        &self,
        node_id: NodeId,
        cluster_id: String,
        gossip_key: String,
        tls: Option<JoinTls>,
    ) -> Result<PeerReply, NodeError> {
        match self.identity().map_err(internal)? {
            Some(existing) if existing.node_id == node_id && existing.cluster_id == cluster_id => {
                Ok(PeerReply::Done)
            }
            Some(existing) => Err(failed(
                ErrorKind::WrongState,
                format!(
                    "the node is already node {} of another cluster",
                    existing.node_id
                ),
            )),
            None => {
                let identity_cluster = cluster_id.clone();
                let mut cluster_secret = String::new();
                if let Some(tls) = tls {
                    self.tls_files()
                        .install_issued(&tls.ca_pem, &tls.crl_pem, &tls.cert_pem)
                        .map_err(internal)?;
                    cluster_secret = tls.cluster_secret;
                }
                write_json_atomic(
                    &self.identity_path(),
                    &Identity {
                        node_id,
                        cluster_id,
                        gossip_key,
                        cluster_secret,
                    },
                )
                .map_err(internal)?;
                self.load_tls(&identity_cluster).map_err(internal)?;
                self.start_raft(node_id).await.map_err(internal)?;
                Ok(PeerReply::Done)
            }
        }
    }

    fn resolve(&self, running: &Running<S>, node: &str) -> Result<NodeId, NodeError> {
        let state = running.sm.state();
        let found = match node.parse::<NodeId>() {
            Ok(id) => state.catalog.nodes.get(&id),
            Err(_) => state.catalog.nodes.values().find(|n| n.addr.name == node),
        };
        found.map(|n| n.id).ok_or_else(|| {
            failed(
                ErrorKind::InvalidRequest,
                format!("node \"{node}\" is not a member of the cluster"),
            )
            .hint("SELECT id, name FROM synapse.nodes lists the members.")
        })
    }

    async fn add_node(
        &self,
        running: &Running<S>,
        host: String,
        port: u16,
    ) -> Result<NodeId, NodeError> {
        let _serial = self.shared.membership.lock().await;
        let state = running.sm.state();
        if let Some(n) = state
            .catalog
            .nodes
            .values()
            .find(|n| n.addr.host == host && n.addr.pg_port == port)
        {
            return Err(failed(
                ErrorKind::WrongState,
                format!(
                    "{host}:{port} is already node {} (\"{}\")",
                    n.id, n.addr.name
                ),
            ));
        }
        let mut description = self.shared.probe.describe(&host, port).await?;
        let ours = self.cluster_id(running);
        if let (Some(id), Some(cluster_id)) = (description.node_id, &ours) {
            if description.cluster_id.as_ref() == Some(cluster_id)
                && !state.catalog.nodes.contains_key(&id)
            {
                // Removed while it was unreachable, it still thinks it is a member.
                let leave = PeerRequest::Leave {
                    node_id: id,
                    cluster_id: cluster_id.clone(),
                };
                match self.shared.probe.admit(&host, port, &leave).await {
                    PeerReply::Done => {}
                    PeerReply::Failed(e) => return Err(e),
                    PeerReply::Unreachable(m) => return Err(failed(ErrorKind::Connection, m)),
                    other => return Err(unexpected(other)),
                }
                description = self.describe_after_leave(&host, port).await;
            }
        }
        if let Some(id) = description.node_id {
            return Err(failed(
                ErrorKind::WrongState,
                format!("the server at {host}:{port} is already node {id} of a cluster"),
            )
            .hint("Remove it from its cluster first, or add a server that belongs to none."));
        }
        if let Some(n) = state
            .catalog
            .nodes
            .values()
            .find(|n| n.addr.name == description.addr.name)
        {
            return Err(failed(
                ErrorKind::WrongState,
                format!(
                    "the server at {host}:{port} is named \"{}\", the name of node {}",
                    n.addr.name, n.id
                ),
            )
            .hint("Give it another synapse.node_name."));
        }
        let id = state
            .catalog
            .nodes
            .keys()
            .copied()
            .chain(state.catalog.cluster.as_ref().map(|c| c.last_node_id))
            .max()
            .unwrap_or(0)
            .max(running.id)
            + 1;
        let addr = NodeAddr {
            name: description.addr.name,
            host: host.clone(),
            pg_port: port,
            rpc_port: description.addr.rpc_port,
            gossip_port: description.addr.gossip_port,
        };
        let cluster_id = state
            .catalog
            .cluster
            .as_ref()
            .map(|c| c.cluster_id.clone())
            .unwrap_or_default();
        let csr = match self
            .shared
            .probe
            .admit(&host, port, &PeerRequest::CertificateRequest)
            .await
        {
            PeerReply::Csr(csr) => csr,
            PeerReply::Failed(e) => return Err(e),
            PeerReply::Unreachable(m) => return Err(failed(ErrorKind::Connection, m)),
            other => return Err(unexpected(other)),
        };
        let certified = self.certify(running, &csr, &self.cert_spec(id, &cluster_id, &addr))?;
        let (join_tls, cert) = certified.unzip();
        match self
            .shared
            .probe
            .admit(
                &host,
                port,
                &PeerRequest::Join {
                    node_id: id,
                    cluster_id,
                    gossip_key: self
                        .identity()
                        .map_err(internal)?
                        .map(|i| i.gossip_key)
                        .unwrap_or_default(),
                    tls: join_tls,
                },
            )
            .await
        {
            PeerReply::Done => {}
            PeerReply::Failed(e) => return Err(e),
            other => return Err(unexpected(other)),
        }
        let node = BasicNode::new(addr.rpc_endpoint());
        running
            .raft
            .add_learner(id, node, true)
            .await
            .map_err(raft_error)?;
        let metrics = running.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let role = if voters.len() < self.shared.settings.max_voters {
            running
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(raft_error)?;
            Role::Voter
        } else {
            Role::Learner
        };
        let command = Command::UpsertNode {
            id,
            addr,
            role,
            at_unix_ms: now_ms(),
        };
        match running
            .raft
            .client_write(command)
            .await
            .map_err(raft_error)?
            .data
        {
            CommandResult::Refused(m) => Err(failed(ErrorKind::InvalidRequest, m)),
            _ => {
                if let Some(cert) = cert {
                    running
                        .raft
                        .client_write(Command::RecordCertificate(cert))
                        .await
                        .map_err(raft_error)?;
                }
                Ok(id)
            }
        }
    }

    /// Describes host:port once its worker has restarted outside any cluster.
    async fn describe_after_leave(
        &self,
        host: &str,
        port: u16,
    ) -> super::messages::NodeDescription {
        loop {
            match self.shared.probe.describe(host, port).await {
                Ok(d) if d.node_id.is_none() => return d,
                // Still the old worker, or restarting: the caller's deadline bounds this.
                _ => tokio::time::sleep(self.shared.settings.heartbeat_interval / 4).await,
            }
        }
    }

    async fn remove_node(&self, running: &Running<S>, id: NodeId) -> Result<(), NodeError> {
        let _serial = self.shared.membership.lock().await;
        let metrics = running.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(failed(
                    ErrorKind::WrongState,
                    format!("node {id} is the last voter of the cluster"),
                )
                .hint("Add another node first; a cluster cannot run without voters."));
            }
            running
                .raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(raft_error)?;
        }
        if running
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
        {
            running
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(raft_error)?;
        }
        let addr = running
            .sm
            .state()
            .catalog
            .nodes
            .get(&id)
            .map(|n| (n.addr.host.clone(), n.addr.pg_port));
        running
            .raft
            .client_write(Command::RemoveNode { id })
            .await
            .map_err(raft_error)?;
        // A removed node may no longer speak for the cluster.
        let has_certificates = running
            .sm
            .state()
            .catalog
            .certificates
            .values()
            .any(|c| c.node_id == id && c.revoked_at_unix_ms.is_none());
        if has_certificates {
            self.revoke(running, RevokeTarget::Node(id.to_string()))
                .await?;
        }
        // The node is out; tell it to forget the cluster so it can be added again. Sent
        // after this answer, and best effort: a node that misses it is told when it is
        // added again (see `add_node`).
        if let (Some((host, port)), Some(cluster_id)) = (addr, self.cluster_id(running)) {
            let node = self.clone();
            tokio::spawn(async move {
                let leave = PeerRequest::Leave {
                    node_id: id,
                    cluster_id,
                };
                node.shared.probe.admit(&host, port, &leave).await
            });
        }
        Ok(())
    }

    fn cluster_id(&self, running: &Running<S>) -> Option<String> {
        running.sm.state().catalog.cluster.map(|c| c.cluster_id)
    }

    /// The voter other than this leader with the longest replicated log.
    fn successor(&self, running: &Running<S>) -> Result<NodeId, NodeError> {
        let m = running.raft.metrics().borrow().clone();
        let replication = m.replication.unwrap_or_default();
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|&v| v != running.id)
            .max_by_key(|v| replication.get(v).copied().flatten().map(|l| l.index))
            .ok_or_else(|| {
                failed(
                    ErrorKind::WrongState,
                    format!("node {} is the last voter of the cluster", running.id),
                )
                .hint("Add another node first; a cluster cannot run without voters.")
            })
    }

    /// Hands leadership to the voter `target`. openraft 0.9 has no TimeoutNow message,
    /// and voters refuse to vote while the leader's lease lasts, so the leader stops its
    /// heartbeats and writes, waits for `target` to hold its whole log, lets the lease run
    /// out, and asks `target` to start an election, which it wins before any other
    /// follower's election timer fires (they wait the lease plus a random timeout).
    async fn transfer_leadership(
        &self,
        running: &Running<S>,
        target: NodeId,
    ) -> Result<(), NodeError> {
        if target == running.id {
            return Ok(());
        }
        let m = running.raft.metrics().borrow().clone();
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == target)
        {
            return Err(failed(
                ErrorKind::InvalidRequest,
                format!("node {target} is a learner and cannot lead"),
            )
            .hint("Only voters can lead (SELECT id, name, voter FROM synapse.nodes)."));
        }
        let addr = leader_addr(&running.raft, target)
            .ok_or_else(|| internal(format!("node {target} has no address")))?;
        let settings = &self.shared.settings;
        let _leading = self.shared.leading.write().await;
        let last = running.raft.metrics().borrow().last_log_index;
        running
            .raft
            .wait(Some(settings.election_timeout_max))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten())
                        .map(|l| l.index)
                        >= last
                },
                "the new leader holds the whole log",
            )
            .await
            .map_err(|_| {
                failed(
                    ErrorKind::Unavailable,
                    format!("node {target} has not caught up with the leader's log; leadership stays with node {}", running.id),
                )
                .hint("Check that the node is up (SELECT * FROM synapse.raft_status() on it).")
            })?;
        running.raft.runtime_config().heartbeat(false);
        let handed = async {
            // Followers refuse votes until the lease has passed since they last heard from
            // this leader; allow for a message still in flight.
            let (min, lease) = openraft_election_timeouts(settings);
            let margin = (min / 4).clamp(1, LEASE_MARGIN_MS);
            tokio::time::sleep(Duration::from_millis(lease + margin)).await;
            match self
                .call_member(target, &addr, &PeerRequest::StartElection)
                .await
            {
                PeerReply::Done => {}
                PeerReply::Failed(e) => return Err(e),
                PeerReply::Unreachable(m) => return Err(failed(ErrorKind::Connection, m)),
                other => return Err(unexpected(other)),
            }
            let new = running
                .raft
                .wait(Some(settings.election_timeout_max))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != running.id),
                    "a new leader",
                )
                .await
                .map_err(|_| {
                    failed(
                        ErrorKind::Unavailable,
                        format!(
                            "node {target} did not win its election; node {} still leads",
                            running.id
                        ),
                    )
                })?;
            match new.current_leader {
                Some(l) if l == target => Ok(()),
                other => Err(failed(
                    ErrorKind::Unavailable,
                    format!(
                        "node {} won the election instead of node {target}",
                        other.unwrap_or_default()
                    ),
                )
                .hint("Call synapse.transfer_leadership() again.")),
            }
        }
        .await;
        running.raft.runtime_config().heartbeat(true);
        handed
    }

    async fn wait_for_leader(&self, leader: NodeId) -> Result<(), NodeError> {
        self.running()?
            .raft
            .wait(Some(self.shared.settings.raft_timeout))
            .current_leader(leader, "the new leader")
            .await
            .map(|_| ())
            .map_err(|e| {
                failed(
                    ErrorKind::Unavailable,
                    format!("this node has not heard from the new leader {leader}: {e}"),
                )
            })
    }

    async fn start_election(&self) -> Result<PeerReply, NodeError> {
        self.running()?
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| failed(ErrorKind::Internal, format!("Raft stopped: {e}")))?;
        Ok(PeerReply::Done)
    }

    /// Forgets the cluster: Raft stops, its directory (identity, log, vote, snapshot)
    /// goes in one rename, and the catalog tables are emptied.
    async fn leave(&self, node_id: NodeId, cluster_id: String) -> Result<PeerReply, NodeError> {
        let identity = self.identity().map_err(internal)?;
        if !identity.is_some_and(|i| i.node_id == node_id && i.cluster_id == cluster_id) {
            return Err(failed(
                ErrorKind::WrongState,
                "this node is not that member of that cluster",
            ));
        }
        let running = self.running()?;
        running.raft.shutdown().await.map_err(internal)?;
        let dir = &self.shared.settings.dir;
        let gone = dir.with_extension("left");
        let _ = std::fs::remove_dir_all(&gone);
        std::fs::rename(dir, &gone).map_err(internal)?;
        let _ = std::fs::remove_dir_all(&gone);
        self.tls_files().remove_all().map_err(internal)?;
        running.sm.clear().await.map_err(internal)?;
        self.shared.left.send_replace(true);
        Ok(PeerReply::Done)
    }

    /// This node's row of `synapse.raft_status()`.
    pub fn status(&self) -> RaftStatus {
        let Some(running) = self.shared.running.get() else {
            return RaftStatus {
                role: "none".into(),
                ..RaftStatus::default()
            };
        };
        let m = running.raft.metrics().borrow().clone();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == running.id);
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if is_voter => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let lease = effective_lease_ms(&self.shared.settings);
        RaftStatus {
            node_id: Some(running.id),
            term: m.current_term,
            role: role.into(),
            leader_id: m.current_leader,
            commit_index: running.log.committed_index(),
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            lease_remaining_ms: (m.state == ServerState::Leader).then(|| {
                m.millis_since_quorum_ack
                    .map_or(0, |ack| lease.saturating_sub(ack))
            }),
        }
    }
}

/// openraft 0.9 starts an election only after its leader lease (= its
/// `election_timeout_max`) *plus* a random timeout in its [min, max] has passed since the
/// last heartbeat. To make elections start between our `election_timeout_min` and
/// `election_timeout_max`, openraft gets half our maximum as its maximum (and lease), and
/// a minimum that makes lease + minimum our minimum (but above the heartbeat interval).
fn openraft_election_timeouts(s: &RaftSettings) -> (u64, u64) {
    let max = (s.election_timeout_max.as_millis() as u64 / 2).max(2);
    let floor = s.heartbeat_interval.as_millis() as u64 + 1;
    let min = (s.election_timeout_min.as_millis() as u64)
        .saturating_sub(max)
        .max(floor)
        .min(max - 1);
    (min, max)
}

/// The leader lease actually in force: followers refuse to vote for another leader for
/// openraft's lease after hearing from the leader, so the leader can trust its leadership
/// no longer than that, whatever `synapse.leadership_lease` says.
pub fn effective_lease_ms(s: &RaftSettings) -> u64 {
    (s.leadership_lease.as_millis() as u64).min(openraft_election_timeouts(s).1)
}

/// Proposes the commands queued on this node, one log entry at a time: those that arrive
/// while an entry commits go together into the next one ([`Command::Batch`]), so under
/// load one append, one replication round and one catalog transaction serve many writes.
/// A lone command is proposed as itself, without waiting for company.
async fn batch_proposals(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::Receiver<Proposal>,
    proposing: Arc<tokio::sync::Mutex<()>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let _turn = proposing.lock().await;
        // More may have come while the previous proposal was in flight.
        if batch.len() < MAX_BATCH {
            while let Ok(more) = queue.try_recv() {
                batch.push(more);
                if batch.len() == MAX_BATCH {
                    break;
                }
            }
        }
        let (commands, waiters): (Vec<Command>, Vec<_>) = batch.drain(..).unzip();
        for (waiter, outcome) in waiters.into_iter().zip(propose(&raft, commands).await) {
            let _ = waiter.send(outcome);
        }
    }
}

/// Proposes `commands` in one log entry; one outcome per command, in order.
async fn propose(
    raft: &Raft<TypeConfig>,
    mut commands: Vec<Command>,
) -> Vec<Result<PeerReply, NodeError>> {
    let n = commands.len();
    let command = if n == 1 {
        commands.pop().expect("one command")
    } else {
        Command::Batch(commands)
    };
    match raft.client_write(command).await {
        Ok(response) => {
            let results = match response.data {
                CommandResult::Batch(results) if n > 1 => results,
                result => vec![result],
            };
            results
                .into_iter()
                .map(|result| {
                    Ok(PeerReply::Applied {
                        index: response.log_id.index,
                        result,
                    })
                })
                .collect()
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            vec![Ok(PeerReply::NotLeader { leader: None }); n]
        }
        Err(e) => vec![Err(raft_error(e)); n],
    }
}

/// How long past the lease a leader handing over waits before the election starts, at
/// most: a quarter of the time the other followers still wait before their own elections.
const LEASE_MARGIN_MS: u64 = 250;

fn leader_addr(raft: &Raft<TypeConfig>, leader: NodeId) -> Option<String> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
}

impl<S: CatalogSink, P: NodeProbe> RaftNode<S, P> {
    /// Sends a [`PeerRequest`] to member `id` at `addr`, over mutual TLS.
    async fn call_member(&self, id: NodeId, addr: &str, request: &PeerRequest) -> PeerReply {
        let channel = match self.member_channel(id, addr) {
            Ok(c) => c,
            Err(m) => return PeerReply::Unreachable(m),
        };
        call_channel(channel, addr, request).await
    }

    fn member_channel(&self, id: NodeId, addr: &str) -> Result<Channel, String> {
        let key = format!("{id}@{addr}");
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        let tls = self
            .shared
            .tls
            .borrow()
            .clone()
            .ok_or_else(|| "this node has no certificate yet".to_string())?;
        let channel = tls::transport::channel(addr, tls, Some(id), CONNECT_TIMEOUT)
            .map_err(|e| format!("bad address {addr}: {e}"))?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }
}

async fn call_channel(channel: Channel, addr: &str, request: &PeerRequest) -> PeerReply {
    match ClusterClient::new(channel).call(to_json(request)).await {
        Ok(reply) => from_json(&reply.into_inner()).unwrap_or_else(|e| {
            PeerReply::Failed(failed(ErrorKind::Connection, e.message().to_owned()))
        }),
        Err(status) => PeerReply::Unreachable(format!(
            "could not reach the node at {addr}: {}",
            status.message()
        )),
    }
}

/// The catalog's record of the certificate `cert_pem`, issued as `spec` says.
fn cert_record(cert_pem: &str, spec: &NodeCertSpec) -> Result<CertRecord, NodeError> {
    let info = CertInfo::from_pem(cert_pem).map_err(internal)?;
    Ok(CertRecord {
        serial: info.serial,
        node_id: spec.node_id,
        node_name: spec.name.clone(),
        sans: info.sans,
        not_before_unix_ms: info.not_before_unix * 1000,
        not_after_unix_ms: info.not_after_unix * 1000,
        revoked_at_unix_ms: None,
    })
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    failed(ErrorKind::Internal, e.to_string())
}

fn unexpected(reply: PeerReply) -> NodeError {
    failed(ErrorKind::Internal, format!("unexpected answer {reply:?}"))
}

fn raft_error<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> NodeError {
    match e {
        RaftError::APIError(e) => failed(ErrorKind::WrongState, e.to_string()),
        RaftError::Fatal(e) => failed(ErrorKind::Internal, format!("Raft stopped: {e}")),
    }
}
