//! openraft's network: one lazily connected gRPC channel per peer, over mutual TLS (the
//! peer's certificate must name the node openraft addresses).
//!
//! Transport failures become `Unreachable` (openraft backs off before retrying) when the
//! peer cannot be reached at all, and `NetworkError` (retried at once) otherwise; an error
//! the peer's Raft returned travels back as `RemoteError`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::types::{NodeId, TypeConfig};
use crate::rpc::pb::raft_client::RaftClient;
use crate::rpc::{from_json, to_json};
use crate::tls::Tls;

/// How long connecting to a peer (TCP and TLS) may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Creates [`Peer`] clients for openraft.
pub struct Network {
    /// The node's TLS configurations (none before it is certified).
    pub tls: tokio::sync::watch::Receiver<Option<Tls>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let mut peer = Peer {
            target,
            addr: node.addr.clone(),
            tls: self.tls.clone(),
            client: None,
        };
        peer.connect();
        peer
    }
}

/// The client side of one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    tls: tokio::sync::watch::Receiver<Option<Tls>>,
    client: Option<RaftClient<Channel>>,
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    /// Makes the channel, once this node has its certificate.
    fn connect(&mut self) {
        if self.client.is_some() {
            return;
        }
        let tls = self.tls.borrow().clone();
        self.client = tls.and_then(|tls| {
            crate::tls::transport::channel(&self.addr, tls, Some(self.target), CONNECT_TIMEOUT)
                .ok()
                .map(RaftClient::new)
        });
    }

    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.connect();
        let Some(client) = self.client.as_mut() else {
            let e = TransportError(format!(
                "no TLS channel to {:?} (bad address, or no certificate yet)",
                self.addr
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let mut grpc = tonic::Request::new(to_json(request));
        grpc.set_timeout(option.hard_ttl());
        let reply = match method {
            "append_entries" => client.append_entries(grpc).await,
            "vote" => client.vote(grpc).await,
            _ => client.install_snapshot(grpc).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&status))),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            from_json(&reply).map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        self.call("append_entries", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("install_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        self.call("vote", &rpc, &option).await
    }
}
