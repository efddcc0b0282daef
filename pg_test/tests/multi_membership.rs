//! Membership changes while a client keeps writing: nodes are added one by one and two are
//! removed (one by name, one by id); no acknowledged write may be lost, and the remaining
//! members agree. Also: admitting a server without synapse is a clear error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synapse_pg_test::{wait_for, Cluster, PlainServer};

/// The members as `node` sees them after a read barrier (so it has applied every change
/// committed before the call).
fn members(cluster: &Cluster, node: usize) -> Vec<i64> {
    let mut client = cluster.connect(node);
    client
        .query_one("SELECT synapse.cluster_setting('barrier')", &[])
        .unwrap();
    client
        .query("SELECT id FROM synapse.nodes ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn no_acknowledged_write_is_lost_while_membership_changes() {
    let cluster = Arc::new(Cluster::up_with("membership", 4, 7840, &["--no-init"]));
    let id: i64 = cluster
        .connect(1)
        .query_one("SELECT synapse.init_cluster('churn')", &[])
        .unwrap()
        .get(0);
    assert_eq!(id, 1);

    // A writer acknowledges each setting it wrote successfully.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let writer = {
        let (cluster, stop, acked) = (cluster.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut client = cluster.connect(1);
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("churn.{n}");
                if client
                    .execute(
                        "SELECT synapse.set_cluster_setting($1, $2)",
                        &[&name, &n.to_string()],
                    )
                    .is_ok()
                {
                    acked.lock().unwrap().push(n);
                }
            }
        })
    };

    let mut admin = cluster.connect(1);
    for node in 2..=4 {
        let port = cluster.pg_port(node) as i32;
        let id: i64 = admin
            .query_one("SELECT synapse.add_node('127.0.0.1', $1)", &[&port])
            .unwrap()
            .get(0);
        assert_eq!(id, node as i64);
    }
    assert_eq!(members(&cluster, 4), vec![1, 2, 3, 4]);
    // Duplicate add: a clear error, membership unchanged.
    let port = cluster.pg_port(3) as i32;
    let err = admin
        .execute("SELECT synapse.add_node('127.0.0.1', $1)", &[&port])
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("already node 3"),
        "{err:?}"
    );

    // Remove through another node, by name and by id.
    let mut other = cluster.connect(3);
    other
        .execute("SELECT synapse.remove_node('node4')", &[])
        .unwrap();
    other
        .execute("SELECT synapse.remove_node(2::bigint)", &[])
        .unwrap();
    assert_eq!(members(&cluster, 3), vec![1, 3]);
    let voters: Vec<i64> = other
        .query(
            "SELECT id FROM synapse.nodes WHERE role = 'voter' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(voters, vec![1, 3]);

    wait_for(
        "more writes after the changes",
        Duration::from_secs(20),
        || {
            let before = acked.lock().unwrap().len();
            (before > 50).then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Every acknowledged write is on both remaining members.
    let acked = acked.lock().unwrap().clone();
    for node in [1, 3] {
        let mut client = cluster.connect(node);
        client
            .query_one("SELECT synapse.cluster_setting('churn.1')", &[])
            .unwrap(); // read barrier
        let stored: Vec<String> = client
            .query(
                "SELECT name FROM synapse.cluster_settings WHERE name LIKE 'churn.%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stored: std::collections::HashSet<String> = stored.into_iter().collect();
        let lost: Vec<&i64> = acked
            .iter()
            .filter(|n| !stored.contains(&format!("churn.{n}")))
            .collect();
        assert!(
            lost.is_empty(),
            "node {node} lost acknowledged writes {lost:?}"
        );
    }
    println!(
        "{} acknowledged writes survived the membership changes",
        acked.len()
    );
}

#[test]
fn adding_a_server_without_synapse_is_a_clear_error() {
    let cluster = Cluster::up("membership_plain", 1, 7900);
    let plain = PlainServer::start("membership_plain_server", 7915, "");
    let err = cluster
        .connect(1)
        .execute(
            "SELECT synapse.add_node('127.0.0.1', $1)",
            &[&(plain.port as i32)],
        )
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(
        db.message().contains("does not have the synapse extension"),
        "{db:?}"
    );
    assert!(
        db.hint().unwrap().contains("shared_preload_libraries"),
        "{db:?}"
    );
    // An unreachable server.
    let err = cluster
        .connect(1)
        .execute("SELECT synapse.add_node('127.0.0.1', 7929)", &[])
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08006", "{db:?}");
    // The last voter cannot be removed.
    let err = cluster
        .connect(1)
        .execute("SELECT synapse.remove_node('node1')", &[])
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("last voter"), "{db:?}");
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert_eq!(members(&cluster, 1), vec![1]);
}

#[test]
fn nodes_beyond_max_voters_join_as_learners() {
    let cluster = Cluster::up_with(
        "membership_learners",
        3,
        7930,
        &["--conf", "synapse.max_voters = 2"],
    );
    let roles: Vec<(i64, String)> = cluster
        .connect(1)
        .query("SELECT id, role FROM synapse.nodes ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        roles,
        vec![
            (1, "voter".into()),
            (2, "voter".into()),
            (3, "learner".into())
        ]
    );
    let mut learner = cluster.connect(3);
    let role: String = learner
        .query_one("SELECT role FROM synapse.raft_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(role, "learner");
    // A learner forwards writes to the leader and reads its own write.
    learner
        .execute("SELECT synapse.set_cluster_setting('learner.k', 'v')", &[])
        .unwrap();
    let v: Option<String> = learner
        .query_one("SELECT synapse.cluster_setting('learner.k')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v.as_deref(), Some("v"));
}

fn leader_seen_by(cluster: &Cluster, node: usize) -> Option<i64> {
    cluster
        .connect(node)
        .query_one("SELECT leader_id FROM synapse.raft_status()", &[])
        .unwrap()
        .get(0)
}

fn role_of(cluster: &Cluster, node: usize) -> String {
    cluster
        .connect(node)
        .query_one("SELECT role FROM synapse.raft_status()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn leadership_moves_on_request_and_removed_nodes_can_come_back() {
    let cluster = Cluster::up("membership_transfer", 3, 8010);
    assert_eq!(leader_seen_by(&cluster, 1), Some(1));

    // Asked through node 2, leadership moves to node 3; the call returns once node 2 knows.
    let started = std::time::Instant::now();
    cluster
        .connect(2)
        .execute("SELECT synapse.transfer_leadership('node3')", &[])
        .unwrap();
    println!(
        "leadership moved from node 1 to node 3 in {:?}",
        started.elapsed()
    );
    assert_eq!(leader_seen_by(&cluster, 2), Some(3));
    assert_eq!(role_of(&cluster, 3), "leader");
    cluster
        .connect(1)
        .execute(
            "SELECT synapse.set_cluster_setting('after.transfer', '1')",
            &[],
        )
        .unwrap();
    // By id, to the leader itself: nothing to do. To a stranger: a clear error.
    cluster
        .connect(1)
        .execute("SELECT synapse.transfer_leadership(3::bigint)", &[])
        .unwrap();
    let err = cluster
        .connect(1)
        .execute("SELECT synapse.transfer_leadership('node9')", &[])
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("not a member"), "{db:?}");
    assert_eq!(db.code().code(), "22023", "{db:?}");

    // Removing the leader: it hands over, is removed, and forgets the cluster.
    cluster
        .connect(1)
        .execute("SELECT synapse.remove_node('node3')", &[])
        .unwrap();
    assert_eq!(members(&cluster, 1), vec![1, 2]);
    // SWIM shows the removed node LEFT, not FAILED.
    wait_for("node 3 LEFT in SWIM", Duration::from_secs(10), || {
        (cluster.state_seen_by(1, 3).as_deref() == Some("LEFT")).then_some(())
    });
    wait_for(
        "node 3 to leave its cluster",
        Duration::from_secs(20),
        || {
            let mut client = cluster.connect(3);
            let role: String = client
                .query_one("SELECT role FROM synapse.raft_status()", &[])
                .ok()?
                .get(0);
            let rows = client.query("SELECT 1 FROM synapse.nodes", &[]).ok()?;
            (role == "none" && rows.is_empty()).then_some(())
        },
    );

    // Node 3 comes back with a new id: ids of removed nodes are never given again.
    // (Admission waits for the node's worker to restart outside the cluster and for it to
    // catch up as a learner: more than the default 10 s on a loaded 2-core machine.)
    let mut admin = cluster.connect(1);
    admin
        .batch_execute("SET synapse.raft_timeout = '60s'")
        .unwrap();
    let add = |admin: &mut postgres::Client, node: usize| -> i64 {
        let port = cluster.pg_port(node) as i32;
        admin
            .query_one("SELECT synapse.add_node('127.0.0.1', $1)", &[&port])
            .unwrap()
            .get(0)
    };
    assert_eq!(add(&mut admin, 3), 4);
    assert_eq!(members(&cluster, 3), vec![1, 2, 4]);
    let v: Option<String> = cluster
        .connect(3)
        .query_one("SELECT synapse.cluster_setting('after.transfer')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v.as_deref(), Some("1"));

    // Node 2 is removed while it is down: it misses the news, and is told when it is added
    // again.
    let out = cluster.script(&["stop", "2"]);
    assert!(out.status.success(), "{}", synapse_pg_test::text(&out));
    admin
        .execute("SELECT synapse.remove_node('node2')", &[])
        .unwrap();
    let out = cluster.script(&["start", "2"]);
    assert!(out.status.success(), "{}", synapse_pg_test::text(&out));
    let stale: Option<i64> = cluster
        .connect(2)
        .query_one("SELECT node_id FROM synapse.raft_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(stale, Some(2), "node 2 still thinks it is a member");
    assert_eq!(add(&mut admin, 2), 5);
    assert_eq!(members(&cluster, 2), vec![1, 4, 5]);
    wait_for(
        "the returned nodes ALIVE in SWIM",
        Duration::from_secs(20),
        || (cluster.everyone_sees(2, "ALIVE") && cluster.everyone_sees(3, "ALIVE")).then_some(()),
    );
}
