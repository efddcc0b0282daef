//! SWIM on real 5-node clusters: crashes are detected by every other node (detection
//! time measured over repeated trials), a restarted node comes back ALIVE with a higher
//! incarnation, a short SIGSTOP or 10% packet loss is never taken for a failure, a clean
//! shutdown shows LEFT, and a 2|3 partition (nodes in their own network namespaces) is
//! seen from both sides and heals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use synapse_pg_test::{signal, text, wait_for, Cluster};

fn view(cluster: &Cluster, observer: usize) -> Option<HashMap<String, (String, i64)>> {
    cluster.members_seen_by(observer)
}

fn state_of(cluster: &Cluster, observer: usize, node: usize) -> Option<String> {
    cluster.state_seen_by(observer, node)
}

fn everyone_sees(cluster: &Cluster, node: usize, state: &str) -> bool {
    cluster.everyone_sees(node, state)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[test]
fn crashes_are_detected_by_all_and_restarted_nodes_return_with_a_higher_incarnation() {
    let cluster = Cluster::up("gossip_crash", 5, 8100);
    wait_for("all ALIVE", Duration::from_secs(30), || {
        (1..=5)
            .all(|n| everyone_sees(&cluster, n, "ALIVE"))
            .then_some(())
    });
    let mut detections = Vec::new();
    for trial in 0..10 {
        // Crash in steady state, at a different phase of the probe schedule each time
        // (right after a node rejoins, every member has just probed the others).
        std::thread::sleep(Duration::from_millis(3000 + (trial as u64 * 370) % 1000));
        let victim = 2 + trial % 4;
        let before = view(&cluster, 1).unwrap()[&format!("node{victim}")].1;
        let crashed = Instant::now();
        cluster.crash(victim);
        wait_for(
            "every other node to see the crash",
            Duration::from_secs(30),
            || everyone_sees(&cluster, victim, "FAILED").then_some(()),
        );
        detections.push(crashed.elapsed());

        let out = cluster.script(&["start", &victim.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        wait_for(
            "the restarted node to be ALIVE everywhere",
            Duration::from_secs(30),
            || everyone_sees(&cluster, victim, "ALIVE").then_some(()),
        );
        let after = view(&cluster, 1).unwrap()[&format!("node{victim}")].1;
        assert!(
            after > before,
            "node{victim} came back at incarnation {after}, was {before}"
        );
    }
    detections.sort();
    println!(
        "crash detected by all 4 other nodes: p50 {:.2?}, p99 {:.2?}, max {:.2?} over {} trials",
        percentile(&detections, 0.5),
        percentile(&detections, 0.99),
        detections.last().unwrap(),
        detections.len()
    );
    assert!(
        percentile(&detections, 0.5) <= Duration::from_secs(10),
        "{detections:?}"
    );
}

#[test]
fn a_short_sigstop_is_not_a_failure_and_a_clean_stop_is_left() {
    let cluster = Cluster::up("gossip_pause", 5, 8160);
    wait_for("all ALIVE", Duration::from_secs(30), || {
        (1..=5)
            .all(|n| everyone_sees(&cluster, n, "ALIVE"))
            .then_some(())
    });
    // Freeze node 3 whole for 2 s, shorter than the suspicion timeout (3 s after the
    // first suspicion, which itself needs a missed probe period).
    let pids = cluster.node_pids(3);
    let watch_from = Instant::now();
    for &p in &pids {
        signal(p, libc::SIGSTOP);
    }
    let mut seen = Vec::new();
    while watch_from.elapsed() < Duration::from_secs(2) {
        for o in [1, 2, 4, 5] {
            seen.push(state_of(&cluster, o, 3));
        }
    }
    for &p in &pids {
        signal(p, libc::SIGCONT);
    }
    // Watch until everyone is back to ALIVE, and a little beyond: never FAILED.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(8) {
        for o in [1, 2, 4, 5] {
            seen.push(state_of(&cluster, o, 3));
        }
    }
    assert!(
        !seen.iter().any(|s| s.as_deref() == Some("FAILED")),
        "node 3 was taken for FAILED: {seen:?}"
    );
    assert!(everyone_sees(&cluster, 3, "ALIVE"));

    // Forged and corrupted datagrams are dropped and counted, and change nothing.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gossip = (cluster.host(1), cluster.pg_port(1) + 3);
    udp.send_to(
        b"SW1 a forged datagram without the cluster's key.....",
        gossip,
    )
    .unwrap();
    udp.send_to(b"not even ours", gossip).unwrap();
    wait_for("the forgeries counted", Duration::from_secs(10), || {
        let rejected: i64 = cluster
            .connect(1)
            .query_one(
                "SELECT datagrams_rejected FROM synapse.gossip_status()",
                &[],
            )
            .ok()?
            .get(0);
        (rejected >= 2).then_some(())
    });
    assert!(everyone_sees(&cluster, 1, "ALIVE"));

    // A clean shutdown says goodbye: LEFT, not FAILED; the others stay on the majority side.
    let out = cluster.script(&["stop", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("node 5 LEFT everywhere", Duration::from_secs(10), || {
        (1..=4)
            .all(|o| state_of(&cluster, o, 5).as_deref() == Some("LEFT"))
            .then_some(())
    });
    let side: String = cluster
        .connect(1)
        .query_one("SELECT side FROM synapse.partition_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(side, "majority");
    let health: Option<String> = cluster
        .connect(2)
        .query_one("SELECT health FROM synapse.nodes WHERE name = 'node5'", &[])
        .unwrap()
        .get(0);
    assert_eq!(health.as_deref(), Some("LEFT"));
}

#[test]
fn packet_loss_is_not_failure_and_a_partition_is_seen_from_both_sides() {
    let cluster = Cluster::up_with("gossip_netns", 5, 8220, &["--netns"]);
    assert_ne!(
        cluster.host(1),
        "127.0.0.1",
        "nodes have their own addresses"
    );
    wait_for("all ALIVE", Duration::from_secs(30), || {
        (1..=5)
            .all(|n| everyone_sees(&cluster, n, "ALIVE"))
            .then_some(())
    });

    // 10% of node 4's packets are lost for 60 s: never FAILED in anyone's view.
    let out = cluster.script(&["netem", "4", "loss=10"]);
    assert!(out.status.success(), "{}", text(&out));
    let lossy_from = Instant::now();
    let mut observations = 0;
    while lossy_from.elapsed() < Duration::from_secs(60) {
        for o in [1, 2, 3, 5] {
            let state = state_of(&cluster, o, 4);
            assert_ne!(
                state.as_deref(),
                Some("FAILED"),
                "node {o} took node 4 for FAILED"
            );
            observations += 1;
        }
    }
    let out = cluster.script(&["netem", "4", "clear"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(everyone_sees(&cluster, 4, "ALIVE"));
    println!("10% loss on node 4 for 60 s: {observations} observations, never FAILED");

    // 200 ms of delay on everything node 4 sends for 20 s: its answers to a client arrive
    // that much later, and a slow node is still no failed node.
    let mut client = cluster.connect(4);
    let round_trip = |client: &mut postgres::Client| {
        let t = Instant::now();
        client.simple_query("SELECT 1").unwrap();
        t.elapsed()
    };
    let before = round_trip(&mut client);
    let out = cluster.script(&["netem", "4", "delay=200"]);
    assert!(out.status.success(), "{}", text(&out));
    let delayed = round_trip(&mut client);
    assert!(
        delayed >= Duration::from_millis(200) && delayed < Duration::from_millis(1000),
        "a query to node 4 took {delayed:?} with 200 ms of delay"
    );
    let slow_from = Instant::now();
    while slow_from.elapsed() < Duration::from_secs(20) {
        for o in [1, 2, 3, 5] {
            let state = state_of(&cluster, o, 4);
            assert_ne!(
                state.as_deref(),
                Some("FAILED"),
                "node {o} took node 4 for FAILED"
            );
        }
    }
    let out = cluster.script(&["netem", "4", "clear"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = round_trip(&mut client);
    assert!(
        after < Duration::from_millis(100),
        "a query to node 4 still took {after:?}"
    );
    assert!(everyone_sees(&cluster, 4, "ALIVE"));
    println!(
        "200 ms delay on node 4 for 20 s: never FAILED; a query's round trip {before:.1?} → {delayed:.1?} → {after:.1?}"
    );

    // Partition {1,2} | {3,4,5}: each side sees the other FAILED.
    let out = cluster.script(&["partition", "1,2", "3,4,5"]);
    assert!(out.status.success(), "{}", text(&out));
    let cut = Instant::now();
    let side = |n: usize| n <= 2;
    wait_for(
        "both sides to fail each other",
        Duration::from_secs(60),
        || {
            (1..=5)
                .all(|o| {
                    let Some(v) = view(&cluster, o) else {
                        return false;
                    };
                    (1..=5).all(|n| {
                        let want = if side(n) == side(o) {
                            "ALIVE"
                        } else {
                            "FAILED"
                        };
                        v.get(&format!("node{n}")).map(|(s, _)| s.as_str()) == Some(want)
                    })
                })
                .then_some(())
        },
    );
    println!(
        "partition 2|3 seen from both sides after {:.2?}",
        cut.elapsed()
    );
    let side_of = |n: usize| -> String {
        cluster
            .connect(n)
            .query_one("SELECT side FROM synapse.partition_status()", &[])
            .unwrap()
            .get(0)
    };
    for n in 1..=2 {
        assert_eq!(side_of(n), "minority", "node {n}");
    }
    for n in 3..=5 {
        assert_eq!(side_of(n), "majority", "node {n}");
    }

    let out = cluster.script(&["heal"]);
    assert!(out.status.success(), "{}", text(&out));
    let healed = Instant::now();
    wait_for("everyone ALIVE again", Duration::from_secs(60), || {
        (1..=5)
            .all(|n| everyone_sees(&cluster, n, "ALIVE"))
            .then_some(())
    });
    println!(
        "after heal, everyone ALIVE again in {:.2?}",
        healed.elapsed()
    );
    for n in 1..=5 {
        assert_eq!(side_of(n), "majority", "node {n}");
    }
}
