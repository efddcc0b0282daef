//! Three Raft nodes in one process on loopback gRPC, with in-memory catalogs: bootstrap,
//! admission, proposals through followers, linearizable reads, and failover when the
//! leader's server stops. The PostgreSQL side is tested by the cluster tests.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use synapse_core::raft::messages::{
    ErrorKind, LocalReply, LocalRequest, NodeDescription, NodeError, PeerReply, PeerRequest,
};
use synapse_core::raft::node::{NodeProbe, RaftNode, RaftSettings};
use synapse_core::raft::service::serve_grpc;
use synapse_core::raft::state_machine::{CatalogState, MemorySink};
use synapse_core::raft::types::{Command, CommandResult, NodeAddr};
use tokio::sync::oneshot;

/// Answers "describe host:port" from a fixed table, and hands admission requests to the
/// node at host:port, as SQL would on real servers.
#[derive(Clone, Default)]
struct Directory(
    Arc<std::sync::Mutex<HashMap<u16, NodeAddr>>>,
    Arc<std::sync::Mutex<HashMap<u16, Node>>>,
);

impl NodeProbe for Directory {
    async fn admit(&self, host: &str, port: u16, request: &PeerRequest) -> PeerReply {
        let node = self.1.lock().unwrap().get(&port).cloned();
        match node {
            Some(node) => node.handle_admission(request.clone()).await,
            None => PeerReply::Unreachable(format!("no server at {host}:{port}")),
        }
    }

    async fn describe(&self, host: &str, port: u16) -> Result<NodeDescription, NodeError> {
        let addr = self.0.lock().unwrap().get(&port).cloned();
        addr.map(|addr| NodeDescription {
            addr,
            node_id: None,
            cluster_id: None,
        })
        .ok_or_else(|| NodeError::new(ErrorKind::Connection, format!("no server at {host}:{port}")))
    }
}

type Node = RaftNode<MemorySink, Directory>;

struct Member {
    node: Node,
    stop: Option<oneshot::Sender<()>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Certificate lifetime and renewal margin of the nodes `start` makes.
const CERTS: (Duration, Duration) = (Duration::from_secs(3600), Duration::from_secs(600));

async fn start(name: &str, dir: &std::path::Path, directory: &Directory) -> Member {
    start_with(name, dir, directory, CERTS).await
}

async fn start_with(
    name: &str,
    dir: &std::path::Path,
    directory: &Directory,
    (cert_lifetime, cert_renew_before): (Duration, Duration),
) -> Member {
    let rpc_port = free_port();
    let pg_port = free_port();
    let addr = NodeAddr {
        name: name.into(),
        host: "127.0.0.1".into(),
        pg_port,
        rpc_port,
        gossip_port: 0,
    };
    directory.0.lock().unwrap().insert(pg_port, addr.clone());
    let settings = RaftSettings {
        dir: dir.join(name),
        listen: SocketAddr::from(([127, 0, 0, 1], rpc_port)),
        addr,
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        heartbeat_interval: Duration::from_millis(100),
        leadership_lease: Duration::from_millis(500),
        raft_timeout: Duration::from_secs(10),
        max_voters: 5,
        snapshot_after_entries: 50,
        tls_dir: dir.join(name).join("tls"),
        cert_lifetime,
        cert_renew_before,
        tls_changed: None,
    };
    let listen = settings.listen;
    let node = RaftNode::open(
        settings,
        MemorySink,
        CatalogState::default(),
        directory.clone(),
    )
    .await
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    directory.1.lock().unwrap().insert(pg_port, node.clone());
    let counts = Arc::new(synapse_core::tls::HandshakeCounts::default());
    tokio::spawn(serve_grpc(node.clone(), listen, counts, async {
        let _ = stopped.await;
    }));
    Member {
        node,
        stop: Some(stop),
    }
}

async fn set(node: &Node, name: &str, value: &str) -> LocalReply {
    node.handle_local(LocalRequest::Propose(Command::SetSetting {
        name: name.into(),
        value: value.into(),
        at_unix_ms: 0,
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_and_survive_the_loss_of_their_leader() {
    let dir = std::env::temp_dir().join(format!("synapse-raft-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let directory = Directory::default();
    let mut members = vec![];
    for name in ["n1", "n2", "n3"] {
        members.push(start(name, &dir, &directory).await);
    }

    // Phase 1: bootstrap on n1, admit n2 and n3 through their PostgreSQL ports.
    let init = members[0]
        .node
        .handle_local(LocalRequest::InitCluster {
            name: "test".into(),
        })
        .await;
    assert_eq!(init, LocalReply::NodeId(1));
    let again = members[0]
        .node
        .handle_local(LocalRequest::InitCluster {
            name: "test".into(),
        })
        .await;
    assert!(
        matches!(
            again,
            LocalReply::Failed(NodeError {
                kind: ErrorKind::WrongState,
                ..
            })
        ),
        "{again:?}"
    );
    for (i, m) in members.iter().enumerate().skip(1) {
        // Ask through n2 for n3 (unlike `form`): requests are forwarded to the leader.
        let via = &members[i - 1].node;
        let reply = via
            .handle_local(LocalRequest::AddNode {
                host: "127.0.0.1".into(),
                port: pg_port(&directory, &m.node),
            })
            .await;
        assert_eq!(reply, LocalReply::NodeId(i as u64 + 1), "{reply:?}");
        assert!(m.node.identity().unwrap().is_some());
    }
    let unknown = members[1]
        .node
        .handle_local(LocalRequest::AddNode {
            host: "127.0.0.1".into(),
            port: 1,
        })
        .await;
    assert!(
        matches!(
            unknown,
            LocalReply::Failed(NodeError {
                kind: ErrorKind::Connection,
                ..
            })
        ),
        "{unknown:?}"
    );

    // Phase 2: a write through a follower is applied on that follower when it returns.
    assert_eq!(
        set(&members[2].node, "color", "blue").await,
        LocalReply::Applied(CommandResult::Done)
    );
    let state = members[2].node.catalog_state().unwrap();
    assert_eq!(state.catalog.settings["color"].value, "blue");
    assert_eq!(state.catalog.nodes.len(), 3);
    assert_eq!(
        members[1]
            .node
            .handle_local(LocalRequest::ReadBarrier)
            .await,
        LocalReply::Done
    );
    assert_eq!(
        members[1].node.catalog_state().unwrap().catalog.settings["color"].value,
        "blue"
    );

    // Phase 3: the leader's server stops; the other two elect a leader and keep writing.
    let leader = members[0].node.status().leader_id.unwrap();
    let idx = leader as usize - 1;
    members[idx].stop.take().unwrap().send(()).unwrap();
    members[idx].node.raft().unwrap().shutdown().await.unwrap();
    let survivor = &members[(idx + 1) % 3].node;
    let reply = set(survivor, "color", "green").await;
    assert_eq!(reply, LocalReply::Applied(CommandResult::Done));
    let status = survivor.status();
    assert_ne!(status.leader_id, Some(leader));
    let other = &members[(idx + 2) % 3].node;
    assert_eq!(
        other.handle_local(LocalRequest::ReadBarrier).await,
        LocalReply::Done
    );
    assert_eq!(
        other.catalog_state().unwrap().catalog.settings["color"].value,
        "green"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_is_certified_by_the_cluster_ca() {
    use std::os::unix::fs::PermissionsExt;
    use synapse_core::tls::{CertInfo, TlsFiles};
    let dir = std::env::temp_dir().join(format!("synapse-raft-tls-{}", std::process::id()));
    let (members, _directory) = form(&dir, 3).await;
    let last = &members[2].node;
    assert_eq!(
        last.handle_local(LocalRequest::ReadBarrier).await,
        LocalReply::Done
    );
    let state = last.catalog_state().unwrap();
    let tls = state
        .catalog
        .tls
        .as_ref()
        .expect("the CA is in the catalog");
    let catalog_json = serde_json::to_string(&state.catalog).unwrap();
    assert!(
        !catalog_json.contains("PRIVATE KEY"),
        "the CA key is in clear"
    );
    assert_eq!(state.catalog.certificates.len(), 3);
    for (i, m) in members.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let files = TlsFiles::new(dir.join(&name).join("tls"));
        let material = files.load().unwrap().expect("installed TLS files");
        assert_eq!(material.ca_pem, tls.ca.cert_pem);
        let info = CertInfo::from_pem(&material.cert_pem).unwrap();
        assert_eq!(info.node_id, Some(i as u64 + 1));
        assert_eq!(info.common_name, name);
        assert!(
            info.sans.contains(&"127.0.0.1".to_string()),
            "{:?}",
            info.sans
        );
        let record = &state.catalog.certificates[&info.serial];
        assert_eq!(record.node_name, name);
        let mode = std::fs::metadata(files.path("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!files.path("pending.key").exists());
        let identity = m.node.identity().unwrap().unwrap();
        assert_eq!(identity.cluster_secret.len(), 64);
        // Every member can open the CA key (any of them may lead).
        let secret = synapse_core::tls::ClusterSecret::from_hex(&identity.cluster_secret).unwrap();
        synapse_core::tls::Signer::open(&tls.ca, &identity.cluster_id, &secret).unwrap();
    }

    // Rotation on demand: one node, then every node, each renewing its own certificate.
    let serial = |m: &Member| m.node.tls().borrow().clone().unwrap().cert().serial;
    let before: Vec<String> = members.iter().map(serial).collect();
    let reply = members[0]
        .node
        .handle_local(LocalRequest::RotateCertificates {
            node: Some("n2".into()),
        })
        .await;
    assert_eq!(reply, LocalReply::Names(vec!["n2".into()]));
    assert_eq!(serial(&members[0]), before[0]);
    assert_ne!(serial(&members[1]), before[1]);
    let reply = members[2]
        .node
        .handle_local(LocalRequest::RotateCertificates { node: None })
        .await;
    assert_eq!(
        reply,
        LocalReply::Names(vec!["n1".into(), "n2".into(), "n3".into()])
    );
    assert!(members.iter().zip(&before).all(|(m, b)| serial(m) != *b));
    let unknown = members[0]
        .node
        .handle_local(LocalRequest::RotateCertificates {
            node: Some("n9".into()),
        })
        .await;
    assert!(
        matches!(&unknown, LocalReply::Failed(e) if e.kind == ErrorKind::InvalidRequest),
        "{unknown:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_by_themselves_while_writes_go_on() {
    let dir = std::env::temp_dir().join(format!("synapse-raft-renew-{}", std::process::id()));
    // Certificates of 6 s, renewed when less than 4 s remain: every 2-3 s.
    let certs = (Duration::from_secs(6), Duration::from_secs(4));
    let (members, _directory) = form_with(&dir, 3, certs).await;
    let serial = |m: &Member| m.node.tls().borrow().clone().unwrap().cert().serial;
    let first: Vec<String> = members.iter().map(serial).collect();
    let started = std::time::Instant::now();
    let mut writes = 0;
    // Longer than a certificate lives: without renewal, the cluster would stop.
    while started.elapsed() < Duration::from_secs(9) {
        for (i, m) in members.iter().enumerate() {
            let reply = set(&m.node, "k", &format!("{writes}")).await;
            assert_eq!(
                reply,
                LocalReply::Applied(CommandResult::Done),
                "write {writes} through n{} after {:?}",
                i + 1,
                started.elapsed()
            );
            writes += 1;
        }
    }
    for (i, m) in members.iter().enumerate() {
        assert_ne!(serial(m), first[i], "n{} kept its first certificate", i + 1);
    }
    // Expired certificates leave the catalog.
    let leader = &members[0].node;
    assert_eq!(
        leader.handle_local(LocalRequest::ReadBarrier).await,
        LocalReply::Done
    );
    let state = leader.catalog_state().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let stale = state
        .catalog
        .certificates
        .values()
        .filter(|c| c.not_after_unix_ms + 2_000 < now_ms)
        .count();
    assert_eq!(stale, 0, "expired certificates are still recorded");
    println!("{writes} writes through every node while certificates renewed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `n` nodes and forms a cluster of them through `init_cluster` and `add_node`.
async fn form(dir: &std::path::Path, n: usize) -> (Vec<Member>, Directory) {
    form_with(dir, n, CERTS).await
}

async fn form_with(
    dir: &std::path::Path,
    n: usize,
    certs: (Duration, Duration),
) -> (Vec<Member>, Directory) {
    let _ = std::fs::remove_dir_all(dir);
    let directory = Directory::default();
    let mut members = vec![];
    for i in 1..=n {
        members.push(start_with(&format!("n{i}"), dir, &directory, certs).await);
    }
    let init = members[0]
        .node
        .handle_local(LocalRequest::InitCluster {
            name: "test".into(),
        })
        .await;
    assert_eq!(init, LocalReply::NodeId(1));
    for m in &members[1..] {
        let reply = members[0]
            .node
            .handle_local(LocalRequest::AddNode {
                host: "127.0.0.1".into(),
                port: pg_port(&directory, &m.node),
            })
            .await;
        assert!(matches!(reply, LocalReply::NodeId(_)), "{reply:?}");
    }
    (members, directory)
}

fn pg_port(directory: &Directory, node: &Node) -> u16 {
    let name = node.settings().addr.name.clone();
    directory
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(_, a)| a.name == name)
        .map(|(p, _)| *p)
        .unwrap()
}

fn transfer(node: &str) -> LocalRequest {
    LocalRequest::TransferLeadership { node: node.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_on_request_and_a_removed_leader_hands_over_and_leaves() {
    let dir = std::env::temp_dir().join(format!("synapse-raft-transfer-{}", std::process::id()));
    let (members, _directory) = form(&dir, 3).await;
    let leader_of = |i: usize| members[i].node.status().leader_id;

    // Asked through a follower, leadership moves to n3; everyone agrees, writes go on.
    assert_eq!(leader_of(1), Some(1));
    assert_eq!(
        members[1].node.handle_local(transfer("n3")).await,
        LocalReply::Done
    );
    assert_eq!(leader_of(1), Some(3));
    assert_eq!(members[2].node.status().role, "leader");
    assert_eq!(
        set(&members[0].node, "k", "1").await,
        LocalReply::Applied(CommandResult::Done)
    );
    for m in &members {
        assert_eq!(m.node.status().leader_id, Some(3));
    }
    // To the leader itself: nothing to do. To a stranger: a clear error.
    assert_eq!(
        members[0].node.handle_local(transfer("3")).await,
        LocalReply::Done
    );
    let unknown = members[0].node.handle_local(transfer("n9")).await;
    assert!(
        matches!(
            unknown,
            LocalReply::Failed(NodeError {
                kind: ErrorKind::InvalidRequest,
                ..
            })
        ),
        "{unknown:?}"
    );

    // Removing the leader: it hands leadership over first, then is removed and leaves.
    let removed = members[0]
        .node
        .handle_local(LocalRequest::RemoveNode { node: "n3".into() })
        .await;
    assert_eq!(removed, LocalReply::Done);
    tokio::time::timeout(Duration::from_secs(10), members[2].node.left())
        .await
        .expect("the removed node was told to leave");
    assert_eq!(members[2].node.identity().unwrap(), None);
    assert_eq!(
        set(&members[1].node, "k", "2").await,
        LocalReply::Applied(CommandResult::Done)
    );
    assert_eq!(
        members[0]
            .node
            .handle_local(LocalRequest::ReadBarrier)
            .await,
        LocalReply::Done
    );
    let state = members[0].node.catalog_state().unwrap();
    assert_eq!(
        state.catalog.nodes.keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(state.catalog.settings["k"].value, "2");
    let _ = std::fs::remove_dir_all(&dir);
}
