//! gRPC over mutual TLS: the server's accepted connections and the clients' connector.
//!
//! Handshakes run in their own tasks (a slow or silent client holds up nobody) and must
//! finish within [`HANDSHAKE_TIMEOUT`]. A connection is handed to tonic only when the peer
//! presented a certificate of our cluster's CA, unexpired and not revoked, that names a
//! node of our cluster; its [`PeerIdentity`] travels with every request on it (request
//! extensions), so services can check that a peer speaks only for itself.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use super::cert::CertInfo;
use super::config::Tls;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub remote: Option<SocketAddr>,
    pub node_id: u64,
    pub name: String,
    pub serial: String,
}

impl PeerIdentity {
    /// Reads the identity from the peer's certificate; it must name a node of `cluster_id`.
    fn from_peer(
        remote: Option<SocketAddr>,
        certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
        cluster_id: &str,
    ) -> io::Result<PeerIdentity> {
        let refused = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
        let cert = certs
            .and_then(|c| c.first())
            .ok_or_else(|| refused("the peer presented no certificate".into()))?;
        let info = CertInfo::from_der(cert).map_err(|e| refused(e.to_string()))?;
        match (info.cluster_id.as_deref(), info.node_id) {
            (Some(c), Some(node_id)) if c == cluster_id => Ok(PeerIdentity {
                remote,
                node_id,
                name: info.common_name,
                serial: info.serial,
            }),
            _ => Err(refused(format!(
                "certificate {} does not name a node of cluster {cluster_id}",
                info.serial
            ))),
        }
    }
}

/// An accepted, authenticated connection.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts of the server's handshakes, for `synapse.tls_status()` and tests.
#[derive(Debug, Default)]
pub struct HandshakeCounts {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

/// Accepts connections on `listener` and completes their TLS handshakes; the stream ends
/// when the receiving side (the gRPC server) is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Tls,
    counts: Arc<HandshakeCounts>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => {
                        // Out of descriptors and the like: try again shortly.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (tls, tx, counts) = (tls.clone(), tx.clone(), counts.clone());
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let stream = TlsAcceptor::from(tls.server()).accept(tcp).await?;
                    let peer = PeerIdentity::from_peer(
                        Some(remote),
                        stream.get_ref().1.peer_certificates(),
                        &tls.cluster_id(),
                    )?;
                    Ok::<_, io::Error>(TlsConn { stream, peer })
                })
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "handshake")));
                let counter = if outcome.is_ok() {
                    &counts.accepted
                } else {
                    &counts.refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(outcome).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A lazily connected channel to `addr` (`host:port`) over mutual TLS. The server must
/// be certified for `host`; when `expect` names a node id, its certificate must be that
/// node's.
pub fn channel(
    addr: &str,
    tls: Tls,
    expect: Option<u64>,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(connect_timeout);
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = TlsConnector::from(tls.client()).connect(name, tcp).await?;
            let peer = PeerIdentity::from_peer(
                None,
                stream.get_ref().1.peer_certificates(),
                &tls.cluster_id(),
            )?;
            if let Some(id) = expect {
                if peer.node_id != id {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{host}:{port} is node {}, not node {id}", peer.node_id),
                    ));
                }
            }
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
