//! Three gossip services on loopback UDP with fast timers: they see each other ALIVE, a
//! clean stop shows LEFT, a crash (the task dropped without a word) shows FAILED, and
//! forged datagrams are counted and ignored.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use synapse_core::swim::service::{run, GossipReply, GossipRequest, GossipSettings, Roster};
use synapse_core::swim::Config;
use tokio::sync::watch;

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn ask(socket: &Path, request: &GossipRequest) -> GossipReply {
    let mut s = UnixStream::connect(socket).unwrap();
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

fn states(socket: &Path) -> Vec<(String, String)> {
    match ask(socket, &GossipRequest::Members) {
        GossipReply::Members(rows) => rows.into_iter().map(|r| (r.name, r.state)).collect(),
        other => panic!("{other:?}"),
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_each_other_leave_and_fail() {
    let dir = std::env::temp_dir().join(format!("synapse-gossip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp()).collect();
    let roster = Roster {
        key: Some("0123456789abcdef0123456789abcdef".into()),
        members: (0..3).map(|i| (format!("g{i}"), addrs[i])).collect(),
    };
    let config = Config {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(50),
        gossip_interval: Duration::from_millis(30),
        ..Config::default()
    };
    let mut sockets: Vec<PathBuf> = vec![];
    let mut leaves = vec![];
    let mut tasks = vec![];
    let mut rosters = vec![];
    for (i, &addr) in addrs.iter().enumerate() {
        let socket = dir.join(format!("g{i}.sock"));
        let settings = GossipSettings {
            name: format!("g{i}"),
            listen: addr,
            config: config.clone(),
            state_file: dir.join(format!("g{i}.json")),
            socket: socket.clone(),
        };
        let (roster_tx, roster_rx) = watch::channel(roster.clone());
        let (leave_tx, leave_rx) = watch::channel(false);
        tasks.push(tokio::spawn(run(
            settings,
            roster_rx,
            leave_rx,
            |_, m| eprintln!("{m}"),
            |_, _| {},
        )));
        sockets.push(socket);
        leaves.push(leave_tx);
        rosters.push(roster_tx);
    }
    let all = |s: &str| -> Vec<(String, String)> {
        (0..3).map(|i| (format!("g{i}"), s.to_string())).collect()
    };
    for socket in &sockets {
        wait_until("the sockets", || socket.exists()).await;
    }
    wait_until("everyone ALIVE", || {
        sockets.iter().all(|s| states(s) == all("ALIVE"))
    })
    .await;

    // Forged datagrams are counted and change nothing.
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    forger
        .send_to(b"SW1 forged datagram with a wrong tag......", addrs[0])
        .unwrap();
    wait_until("the forgery counted", || {
        match ask(&sockets[0], &GossipRequest::Status) {
            GossipReply::Status(s) => s.datagrams_rejected >= 1 && s.active && s.majority,
            _ => false,
        }
    })
    .await;

    // A clean stop: LEFT.
    leaves[2].send(true).unwrap();
    wait_until("g2 LEFT", || {
        (0..2).all(|i| states(&sockets[i]).contains(&("g2".into(), "LEFT".into())))
    })
    .await;
    // A crash: FAILED. g0 is then alone of three members (one that left still counts: it
    // is still a member of the cluster) and on the minority side.
    tasks[1].abort();
    wait_until("g1 FAILED", || {
        states(&sockets[0]).contains(&("g1".into(), "FAILED".into()))
    })
    .await;
    match ask(&sockets[0], &GossipRequest::Status) {
        GossipReply::Status(s) => {
            assert!(!s.majority, "{s:?}");
            assert_eq!((s.members_up, s.members), (1, 3));
        }
        other => panic!("{other:?}"),
    }
    drop(rosters);
    let _ = std::fs::remove_dir_all(&dir);
}
