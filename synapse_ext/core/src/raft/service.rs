//! The node's servers: gRPC (`Raft` and `Cluster` services) for other nodes, over mutual
//! TLS, and a Unix socket for this node's own backends (one JSON request line, one JSON
//! reply line).
//!
//! The gRPC port opens once the node holds a certificate of its cluster's CA, and admits
//! only peers presenting one (see [`crate::tls::transport`]). A peer speaks only for
//! itself: Raft messages must come from the node they name as candidate or leader, and
//! cluster calls from a current member.
//!
//! The Unix socket lives in the data directory with mode 0600, so only the PostgreSQL OS
//! user can reach it; backends use it because they must not start threads and can wait on
//! a plain socket through PostgreSQL's latch machinery.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tonic::{Request, Response, Status};

use super::messages::{ErrorKind, LocalCall, LocalReply, NodeError, PeerRequest};
use super::node::{NodeProbe, RaftNode};
use super::state_machine::CatalogSink;
use crate::rpc::pb::cluster_server::{Cluster, ClusterServer};
use crate::rpc::pb::raft_server::{Raft as RaftRpc, RaftServer};
use crate::rpc::pb::Json;
use crate::rpc::{from_json, to_json};
use crate::tls::transport::incoming;
use crate::tls::{HandshakeCounts, PeerIdentity};

/// The largest message a peer may send (snapshots are chunked below this).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

struct RaftSvc<S, P>(RaftNode<S, P>);
struct ClusterSvc<S, P>(RaftNode<S, P>);

impl<S: CatalogSink, P: NodeProbe> RaftSvc<S, P> {
    fn raft(&self) -> Result<openraft::Raft<super::types::TypeConfig>, Status> {
        self.0
            .raft()
            .ok_or_else(|| Status::failed_precondition("this node has not joined a cluster"))
    }
}

/// The authenticated peer of a request (always there: the server only accepts such).
fn peer<T>(request: &Request<T>) -> Result<&PeerIdentity, Status> {
    request
        .extensions()
        .get::<PeerIdentity>()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))
}

/// Refuses a Raft message whose sender is not the node it names.
fn speaks_for_itself<T>(request: &Request<T>, vote: &super::types::Vote) -> Result<(), Status> {
    let peer = peer(request)?;
    match vote.leader_id().voted_for() {
        Some(id) if id == peer.node_id => Ok(()),
        claimed => Err(Status::permission_denied(format!(
            "node {} ({}) sent a Raft message for node {claimed:?}",
            peer.node_id, peer.name
        ))),
    }
}

#[tonic::async_trait]
impl<S: CatalogSink, P: NodeProbe> RaftRpc for RaftSvc<S, P> {
    async fn append_entries(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<super::types::TypeConfig> =
            from_json(request.get_ref())?;
        speaks_for_itself(&request, &rpc.vote)?;
        let result = self.raft()?.append_entries(rpc).await;
        Ok(Response::new(to_json(&result)))
    }

    async fn vote(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let rpc: openraft::raft::VoteRequest<super::types::NodeId> = from_json(request.get_ref())?;
        speaks_for_itself(&request, &rpc.vote)?;
        let result = self.raft()?.vote(rpc).await;
        Ok(Response::new(to_json(&result)))
    }

    async fn install_snapshot(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let rpc: openraft::raft::InstallSnapshotRequest<super::types::TypeConfig> =
            from_json(request.get_ref())?;
        speaks_for_itself(&request, &rpc.vote)?;
        let result = self.raft()?.install_snapshot(rpc).await;
        Ok(Response::new(to_json(&result)))
    }
}

#[tonic::async_trait]
impl<S: CatalogSink, P: NodeProbe> Cluster for ClusterSvc<S, P> {
    async fn call(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let peer = peer(&request)?;
        let member = self
            .0
            .read_catalog(|s| s.catalog.nodes.contains_key(&peer.node_id))
            .unwrap_or(false);
        if !member {
            return Err(Status::permission_denied(format!(
                "node {} ({}) is not a member of the cluster",
                peer.node_id, peer.name
            )));
        }
        let peer_id = peer.node_id;
        let request: PeerRequest = from_json(request.get_ref())?;
        if let PeerRequest::Renew { node_id, .. } = &request {
            if *node_id != peer_id {
                return Err(Status::permission_denied(format!(
                    "node {peer_id} asked to renew the certificate of node {node_id}"
                )));
            }
        }
        Ok(Response::new(to_json(&self.0.handle_peer(request).await)))
    }
}

/// Serves gRPC over mutual TLS on `listen` until `shutdown` completes; listens only once
/// the node holds its certificate. `counts` tallies the handshakes.
pub async fn serve_grpc<S: CatalogSink, P: NodeProbe>(
    node: RaftNode<S, P>,
    listen: SocketAddr,
    counts: std::sync::Arc<HandshakeCounts>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut watch = node.tls();
    let tls = tokio::select! {
        tls = watch.wait_for(|t| t.is_some()) => match tls {
            Ok(tls) => tls.clone().expect("waited for it"),
            Err(_) => return Ok(()),
        },
        () = &mut shutdown => return Ok(()),
    };
    let listener = TcpListener::bind(listen).await?;
    tonic::transport::Server::builder()
        .add_service(RaftServer::new(RaftSvc(node.clone())).max_decoding_message_size(MAX_MESSAGE))
        .add_service(ClusterServer::new(ClusterSvc(node)).max_decoding_message_size(MAX_MESSAGE))
        .serve_with_incoming_shutdown(incoming(listener, tls, counts), shutdown)
        .await?;
    Ok(())
}

/// Binds the backends' Unix socket at `path` (replacing a stale one), mode 0600, creating
/// its directory when needed (workers may start before the first one made it).
pub fn bind_local(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers backends on `listener`, one task per connection.
pub async fn serve_local<S: CatalogSink, P: NodeProbe>(
    node: RaftNode<S, P>,
    listener: UnixListener,
) {
    serve_json_lines(listener, LocalReply::Failed, move |call: LocalCall| {
        let node = node.clone();
        async move {
            match call.timeout_ms {
                Some(ms) => {
                    node.handle_local_within(call.request, Duration::from_millis(ms.max(1)))
                        .await
                }
                None => node.handle_local(call.request).await,
            }
        }
    })
    .await
}

/// Serves a node's backends on `listener`: per connection, JSON request lines in and one
/// JSON reply line out for each, from `answer`, in order (a backend keeps its connection
/// for its next requests); a request that does not parse gets `refuse(error)`.
pub async fn serve_json_lines<Q, A, F, Fut>(
    listener: UnixListener,
    refuse: fn(NodeError) -> A,
    answer: F,
) where
    Q: serde::de::DeserializeOwned + Send + 'static,
    A: serde::Serialize + Send + 'static,
    F: Fn(Q) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = A> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let mut line = String::new();
            loop {
                line.clear();
                match read.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let reply = match serde_json::from_str::<Q>(&line) {
                    Ok(request) => answer(request).await,
                    Err(e) => refuse(NodeError::new(
                        ErrorKind::InvalidRequest,
                        format!("bad request: {e}"),
                    )),
                };
                let mut out = serde_json::to_vec(&reply).expect("serializable");
                out.push(b'\n');
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
