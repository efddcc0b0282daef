//! Mutual TLS on the gRPC port, with real handshakes over TCP: who gets in, who does not,
//! and what changes when certificates are revoked or renewed. Also checked with
//! `openssl s_client`, a TLS client that shares no code with ours.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use synapse_core::rpc::pb::cluster_client::ClusterClient;
use synapse_core::rpc::pb::cluster_server::{Cluster, ClusterServer};
use synapse_core::rpc::pb::Json;
use synapse_core::rpc::{from_json, to_json};
use synapse_core::tls::transport::{channel, incoming};
use synapse_core::tls::{
    create_ca, new_node_key, CaBundle, CertInfo, ClusterSecret, HandshakeCounts, NodeCertSpec,
    NodeTls, PeerIdentity, Revoked, Signer, Tls,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Answers every call with the node id the caller's certificate names.
struct WhoAmI;

#[tonic::async_trait]
impl Cluster for WhoAmI {
    async fn call(&self, request: Request<Json>) -> Result<Response<Json>, Status> {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .ok_or_else(|| Status::unauthenticated("no peer identity"))?;
        Ok(Response::new(to_json(&peer.node_id)))
    }
}

struct Ca {
    cluster_id: String,
    bundle: CaBundle,
    signer: Signer,
}

impl Ca {
    fn new(cluster_id: &str) -> Ca {
        let secret = ClusterSecret::generate();
        let bundle = create_ca(cluster_id, &secret, SystemTime::now()).unwrap();
        let signer = Signer::open(&bundle, cluster_id, &secret).unwrap();
        Ca {
            cluster_id: cluster_id.into(),
            bundle,
            signer,
        }
    }

    /// Material for node `id`, certified from `now` for `lifetime`.
    fn node_at(&self, id: u64, now: SystemTime, lifetime: Duration) -> NodeTls {
        let key = new_node_key(&format!("node{id}")).unwrap();
        let spec = NodeCertSpec {
            cluster_id: self.cluster_id.clone(),
            node_id: id,
            name: format!("node{id}"),
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
        };
        let cert_pem = self
            .signer
            .issue(&key.csr_pem, &spec, now, lifetime)
            .unwrap();
        NodeTls {
            ca_pem: self.bundle.cert_pem.clone(),
            cert_pem,
            key_pem: key.key_pem,
            crl_pems: vec![self.crl(1, &[])],
        }
    }

    fn node(&self, id: u64) -> NodeTls {
        self.node_at(id, SystemTime::now(), 90 * DAY)
    }

    fn crl(&self, number: u64, revoked: &[&str]) -> String {
        let revoked: Vec<Revoked> = revoked
            .iter()
            .map(|s| Revoked {
                serial: s.to_string(),
                at_unix_ms: 1,
            })
            .collect();
        let now = SystemTime::now();
        self.signer.crl(number, &revoked, now, now + DAY).unwrap()
    }
}

async fn serve(material: &NodeTls, cluster_id: &str) -> (SocketAddr, Tls, Arc<HandshakeCounts>) {
    let tls = Tls::new(material, cluster_id).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(HandshakeCounts::default());
    let stream = incoming(listener, tls.clone(), counts.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServer::new(WhoAmI))
            .serve_with_incoming(stream),
    );
    (addr, tls, counts)
}

/// Calls the server as the holder of `material`; `Ok(node id the server saw)`.
async fn call_as(
    addr: SocketAddr,
    material: &NodeTls,
    cluster_id: &str,
    expect: Option<u64>,
) -> Result<u64, String> {
    let tls = Tls::new(material, cluster_id).unwrap();
    let channel = channel(&addr.to_string(), tls, expect, Duration::from_secs(2)).unwrap();
    let reply = ClusterClient::new(channel)
        .call(Request::new(to_json(&())))
        .await
        .map_err(|s| format!("{s:?}"))?;
    from_json(reply.get_ref()).map_err(|s| s.to_string())
}

/// The call failed because the server sent the TLS alert `alert`.
#[track_caller]
fn refused_with(outcome: Result<u64, String>, alert: &str) {
    match outcome {
        Err(e) if e.contains(&format!("received fatal alert: {alert}")) => {}
        other => panic!("expected the server's {alert} alert, got {other:?}"),
    }
}

#[tokio::test]
async fn only_current_certificates_of_our_ca_get_in() {
    let ca = Ca::new("cluster-a");
    let (addr, server_tls, counts) = serve(&ca.node(1), "cluster-a").await;

    // A node of the cluster gets in, and the server knows which one it is.
    let node2 = ca.node(2);
    assert_eq!(call_as(addr, &node2, "cluster-a", Some(1)).await, Ok(2));

    // The client checks the server's identity too.
    let wrong = call_as(addr, &node2, "cluster-a", Some(3)).await;
    assert!(wrong.is_err(), "{wrong:?}");

    // A certificate of another cluster's CA, even one naming our cluster.
    let other = Ca::new("cluster-a");
    let mut stranger = other.node(2);
    stranger.ca_pem = ca.bundle.cert_pem.clone();
    stranger.crl_pems = vec![ca.crl(1, &[])];
    // (Its CA has our CA's name, so the signature is what fails to verify.)
    refused_with(
        call_as(addr, &stranger, "cluster-a", None).await,
        "DecryptError",
    );
    let mut stranger = Ca::new("cluster-b").node(2);
    stranger.ca_pem = ca.bundle.cert_pem.clone();
    stranger.crl_pems = vec![ca.crl(1, &[])];
    refused_with(
        call_as(addr, &stranger, "cluster-a", None).await,
        "UnknownCA",
    );

    // A self-made certificate claiming to be node 2.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "synapse://cluster-a/node/2".try_into().unwrap(),
    ));
    let forged = NodeTls {
        cert_pem: params.self_signed(&key).unwrap().pem(),
        key_pem: key.serialize_pem().into(),
        ..ca.node(2)
    };
    refused_with(call_as(addr, &forged, "cluster-a", None).await, "UnknownCA");

    // An expired certificate of our own CA.
    let expired = ca.node_at(2, SystemTime::now() - 3 * DAY, DAY);
    assert!(
        CertInfo::from_pem(&expired.cert_pem)
            .unwrap()
            .remaining(SystemTime::now())
            == Duration::ZERO
    );
    refused_with(
        call_as(addr, &expired, "cluster-a", None).await,
        "CertificateExpired",
    );

    // Revoked: once the server has the new CRL, node 2's next connection is refused while
    // node 3 still gets in.
    let serial = CertInfo::from_pem(&node2.cert_pem).unwrap().serial;
    let mut with_crl = ca.node(1);
    with_crl.crl_pems = vec![ca.crl(2, &[&serial])];
    server_tls.update(&with_crl).unwrap();
    refused_with(
        call_as(addr, &node2, "cluster-a", None).await,
        "CertificateRevoked",
    );
    assert_eq!(call_as(addr, &ca.node(3), "cluster-a", None).await, Ok(3));

    let accepted = counts.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let rejected = counts.refused.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        accepted >= 2 && rejected >= 4,
        "accepted {accepted}, refused {rejected}"
    );
}

#[tokio::test]
async fn a_renewed_server_certificate_serves_new_connections_without_a_restart() {
    let ca = Ca::new("cluster-r");
    let first = ca.node(1);
    let (addr, server_tls, _) = serve(&first, "cluster-r").await;
    let client = ca.node(2);
    assert_eq!(call_as(addr, &client, "cluster-r", Some(1)).await, Ok(2));
    let before = server_tls.cert().serial;

    let renewed = ca.node(1);
    server_tls.update(&renewed).unwrap();
    assert_ne!(server_tls.cert().serial, before);
    assert_eq!(call_as(addr, &client, "cluster-r", Some(1)).await, Ok(2));
    // What a new connection is shown is the renewed certificate.
    let shown = tokio::task::spawn_blocking(move || openssl_server_cert(addr, &client))
        .await
        .unwrap();
    assert_eq!(
        CertInfo::from_pem(&shown).unwrap().serial,
        server_tls.cert().serial
    );
}

#[test]
fn node_certificates_name_the_node_and_its_hosts() {
    let ca = Ca::new("cluster-s");
    let info = CertInfo::from_pem(&ca.node(7).cert_pem).unwrap();
    assert_eq!(info.node_id, Some(7));
    assert_eq!(info.cluster_id.as_deref(), Some("cluster-s"));
    assert_eq!(info.common_name, "node7");
    assert_eq!(info.sans, vec!["127.0.0.1", "localhost", "node7"]);
    let lifetime = info.not_after_unix - info.not_before_unix;
    assert!(lifetime >= 90 * 24 * 3600, "{lifetime}");
    // The sealed CA key is not the key in clear.
    assert!(!ca.bundle.sealed_key.contains("PRIVATE KEY"));
}

/// Files for openssl in a fresh directory.
fn write_files(material: &NodeTls) -> tempdir::Dir {
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path("ca.pem"), &material.ca_pem).unwrap();
    std::fs::write(dir.path("cert.pem"), &material.cert_pem).unwrap();
    std::fs::write(dir.path("key.pem"), material.key_pem.as_bytes()).unwrap();
    dir
}

/// Runs `openssl s_client` against `addr` and returns its output and exit status.
fn s_client(addr: SocketAddr, files: &tempdir::Dir, with_cert: bool) -> (String, bool) {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-verify_return_error",
    ])
    .args(["-CAfile", files.path("ca.pem").to_str().unwrap()])
    .args(["-verify_ip", "127.0.0.1", "-alpn", "h2", "-showcerts"]);
    if with_cert {
        cmd.args(["-cert", files.path("cert.pem").to_str().unwrap()])
            .args(["-key", files.path("key.pem").to_str().unwrap()]);
    }
    // Send an HTTP/2 preface so the server must read (and so judge) the connection.
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (scripts/test installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

fn openssl_server_cert(addr: SocketAddr, client: &NodeTls) -> String {
    let files = write_files(client);
    let (out, _) = s_client(addr, &files, true);
    let start = out.find("-----BEGIN CERTIFICATE-----").expect(&out);
    let end = out[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    out[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_needs_a_certificate_of_the_cluster() {
    let ca = Ca::new("cluster-o");
    let (addr, _, counts) = serve(&ca.node(1), "cluster-o").await;
    let member = write_files(&ca.node(2));

    let (out, _) = tokio::task::spawn_blocking(move || {
        let r = s_client(addr, &member, true);
        drop(member);
        r
    })
    .await
    .unwrap();
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!out.contains("alert"), "{out}");

    // No certificate at all, then a certificate of another CA (openssl itself trusts our
    // server: it is given our CA file).
    let stranger = Ca::new("cluster-o").node(2);
    for (what, material, with_cert) in [
        ("no certificate", ca.node(2), false),
        ("another CA's", stranger, true),
    ] {
        let files = write_files(&material);
        std::fs::write(files.path("ca.pem"), &ca.bundle.cert_pem).unwrap();
        let before = counts.refused.load(std::sync::atomic::Ordering::Relaxed);
        let (out, _) = tokio::task::spawn_blocking(move || s_client(addr, &files, with_cert))
            .await
            .unwrap();
        assert!(out.contains("alert"), "{what}: {out}");
        let after = counts.refused.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            after > before,
            "{what}: the server counted no refusal:\n{out}"
        );
    }
}

/// A temporary directory removed on drop.
mod tempdir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            static N: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "synapse-tls-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
