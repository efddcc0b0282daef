//! Raft on real clusters under failures: elections with 5 nodes, SIGKILL of the leader,
//! and a leader frozen with SIGSTOP. Every observation checks that no term ever has two
//! leaders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use synapse_pg_test::{signal, text, wait_for, Cluster};

type Status = (usize, i64, String, Option<i64>);

/// (node, term, role, leader) as each reachable node reports it.
fn statuses(cluster: &Cluster) -> Vec<Status> {
    (1..=cluster.nodes)
        .filter_map(|node| {
            let conninfo = format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
                cluster.pg_port(node)
            );
            let mut client = postgres::Client::connect(&conninfo, postgres::NoTls).ok()?;
            client.batch_execute("SET statement_timeout = '3s'").ok()?;
            let row = client
                .query_one(
                    "SELECT term, role, leader_id FROM synapse.raft_status()",
                    &[],
                )
                .ok()?;
            Some((node, row.get(0), row.get(1), row.get(2)))
        })
        .collect()
}

/// Remembers which node claimed leadership in which term; fails on two leaders in a term.
#[derive(Default)]
struct LeaderLog(HashMap<i64, usize>);

impl LeaderLog {
    fn observe(&mut self, cluster: &Cluster) -> Vec<Status> {
        let seen = statuses(cluster);
        for (node, term, role, _) in &seen {
            if role == "leader" {
                let first = *self.0.entry(*term).or_insert(*node);
                assert_eq!(
                    first, *node,
                    "two leaders in term {term}: nodes {first} and {node}"
                );
            }
        }
        seen
    }
}

/// Waits until every node in `nodes` names the same leader, and exactly one says it leads.
fn agreed_leader(
    cluster: &Cluster,
    log: &mut LeaderLog,
    nodes: &[usize],
    timeout: Duration,
) -> usize {
    wait_for("the nodes to agree on one leader", timeout, || {
        let seen: Vec<Status> = log
            .observe(cluster)
            .into_iter()
            .filter(|s| nodes.contains(&s.0))
            .collect();
        if seen.len() != nodes.len() {
            return None;
        }
        let leader = seen[0].3?;
        let all_agree = seen.iter().all(|s| s.3 == Some(leader));
        let leaders = seen.iter().filter(|s| s.2 == "leader").count();
        (all_agree && leaders == 1).then_some(leader as usize)
    })
}

fn set(cluster: &Cluster, node: usize, value: &str) -> Result<(), postgres::Error> {
    let mut client = cluster.connect(node);
    client
        .execute(
            "SELECT synapse.set_cluster_setting('test.value', $1)",
            &[&value],
        )
        .map(|_| ())
}

fn local_value(cluster: &Cluster, node: usize) -> Option<String> {
    let mut client = cluster.connect(node);
    client
        .query_opt(
            "SELECT value FROM synapse.cluster_settings WHERE name = 'test.value'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
}

/// A process stopped with SIGSTOP until dropped (also when the test fails).
struct Frozen(i32);

impl Frozen {
    fn new(pid: i32) -> Frozen {
        signal(pid, libc::SIGSTOP);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn five_nodes_elect_exactly_one_leader() {
    let cluster = Cluster::up("raft_five", 5, 7600);
    let mut log = LeaderLog::default();
    let leader = agreed_leader(
        &cluster,
        &mut log,
        &[1, 2, 3, 4, 5],
        Duration::from_secs(30),
    );
    assert_eq!(leader, 1, "the bootstrapping node leads a quiet cluster");
    let voters: i64 = cluster
        .connect(3)
        .query_one(
            "SELECT count(*) FROM synapse.nodes WHERE role = 'voter'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(voters, 5);
}

#[test]
fn killing_the_leader_elects_a_new_one_and_the_old_one_catches_up() {
    let cluster = Cluster::up("raft_kill_leader", 3, 7660);
    let mut log = LeaderLog::default();
    let leader = agreed_leader(&cluster, &mut log, &[1, 2, 3], Duration::from_secs(30));
    set(&cluster, leader, "before").unwrap();
    let survivors: Vec<usize> = (1..=3).filter(|&n| n != leader).collect();

    let pid = cluster.postmaster_pid(leader);
    let killed_at = Instant::now();
    signal(pid, libc::SIGKILL);
    // Keep writing through a survivor until a write succeeds.
    wait_for(
        "a write after the leader died",
        Duration::from_secs(20),
        || {
            log.observe(&cluster);
            set(&cluster, survivors[0], "after").ok()
        },
    );
    let failover = killed_at.elapsed();
    println!("write succeeded {failover:?} after SIGKILL of the leader");
    // synapse.election_timeout_max (6 s) + 2 s
    assert!(
        failover <= Duration::from_secs(8),
        "failover took {failover:?}"
    );
    let new_leader = agreed_leader(&cluster, &mut log, &survivors, Duration::from_secs(10));
    assert_ne!(new_leader, leader);

    // The killed node restarts, catches up and agrees.
    let out = cluster.script(&["start", &leader.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        agreed_leader(&cluster, &mut log, &[1, 2, 3], Duration::from_secs(30)),
        new_leader
    );
    wait_for(
        "the restarted node to apply the write",
        Duration::from_secs(10),
        || (local_value(&cluster, leader)? == "after").then_some(()),
    );
}

#[test]
fn a_frozen_leader_cannot_commit_and_rejoins_as_follower() {
    let cluster = Cluster::up("raft_sigstop", 3, 7720);
    let mut log = LeaderLog::default();
    let leader = agreed_leader(&cluster, &mut log, &[1, 2, 3], Duration::from_secs(30));
    let raft_pid = cluster.worker_pid(leader, "synapse raft").unwrap();
    let others: Vec<usize> = (1..=3).filter(|&n| n != leader).collect();

    // Freeze the leader's Raft for longer than the election timeout (thawed on any exit).
    let frozen_worker = Frozen::new(raft_pid);
    let frozen_at = Instant::now();
    // A write on the frozen node cannot commit.
    let mut frozen = cluster.connect(leader);
    frozen
        .batch_execute("SET synapse.raft_timeout = '2s'")
        .unwrap();
    let err = frozen
        .execute(
            "SELECT synapse.set_cluster_setting('test.value', 'frozen')",
            &[],
        )
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string());
    assert!(
        message.contains("raft worker") && message.contains("outcome is unknown"),
        "{message}"
    );
    // The majority elects a new leader and commits.
    wait_for("the majority to commit", Duration::from_secs(20), || {
        set(&cluster, others[0], "majority").ok()
    });
    let new_leader = agreed_leader(&cluster, &mut log, &others, Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    let frozen_for = Duration::from_secs(7); // longer than synapse.election_timeout_max
    if let Some(left) = frozen_for.checked_sub(frozen_at.elapsed()) {
        std::thread::sleep(left);
    }

    drop(frozen_worker);
    // It rejoins as a follower of the new leader, with no second leader in any term.
    assert_eq!(
        agreed_leader(&cluster, &mut log, &[1, 2, 3], Duration::from_secs(30)),
        new_leader
    );
    wait_for(
        "the old leader to apply the majority's write",
        Duration::from_secs(10),
        || (local_value(&cluster, leader)? == "majority").then_some(()),
    );
}

#[test]
fn a_restart_after_ten_thousand_entries_replays_from_a_snapshot() {
    let cluster = std::sync::Arc::new(Cluster::up("raft_restart_10k", 3, 7960));
    let mut log = LeaderLog::default();
    let leader = agreed_leader(&cluster, &mut log, &[1, 2, 3], Duration::from_secs(30));
    // Writers until the log holds 10,000 entries (concurrent writes share entries, so a
    // few writers make entries fastest).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = cluster.connect(leader);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let name = format!("bulk.{}", (t * 25 + i) % 100);
                    client
                        .execute(
                            "SELECT synapse.set_cluster_setting($1, $2)",
                            &[&name, &i.to_string()],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    let mut status = cluster.connect(leader);
    let commit: i64 = wait_for("10,000 log entries", Duration::from_secs(180), || {
        let commit: i64 = status
            .query_one("SELECT commit_index FROM synapse.raft_status()", &[])
            .unwrap()
            .get(0);
        (commit >= 10_000).then_some(commit)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let commit: i64 = status
        .query_one("SELECT commit_index FROM synapse.raft_status()", &[])
        .unwrap()
        .get::<_, i64>(0)
        .max(commit);
    let raft_dir = cluster
        .dir
        .join(format!("node{follower}/data/synapse/raft"));
    wait_for("the follower to snapshot", Duration::from_secs(10), || {
        raft_dir
            .join("snapshot/snapshot.json")
            .exists()
            .then_some(())
    });

    let out = cluster.script(&["stop", &follower.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let restarted = Instant::now();
    let out = cluster.script(&["start", &follower.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(
        "the restarted follower to catch up",
        Duration::from_secs(60),
        || {
            let mut client = postgres::Client::connect(
                &format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres",
                    cluster.pg_port(follower)
                ),
                postgres::NoTls,
            )
            .ok()?;
            let applied: Option<i64> = client
                .query_one("SELECT applied_index FROM synapse.raft_status()", &[])
                .ok()?
                .get(0);
            (applied? >= commit).then_some(())
        },
    );
    let took = restarted.elapsed();
    println!("follower restarted and caught up with {commit} entries in {took:?}");
    assert!(took < Duration::from_secs(20), "restart took {took:?}");
    // The restarted node's catalog equals the leader's.
    let settings = |node: usize| -> Vec<(String, String)> {
        cluster
            .connect(node)
            .query(
                "SELECT name, value FROM synapse.cluster_settings ORDER BY name",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    assert_eq!(settings(follower), settings(leader));
}

/// A backend keeps its connection to the raft worker between requests; when the worker
/// restarts, the same session's next request finds the new worker.
#[test]
fn a_session_outlives_a_restart_of_its_raft_worker() {
    let cluster = Cluster::up("raft_worker_restart", 1, 7760);
    let mut session = cluster.connect(1);
    let term = |session: &mut postgres::Client| {
        session
            .query_one("SELECT term FROM synapse.raft_status()", &[])
            .map(|row| row.get::<_, i64>(0))
    };
    let before = term(&mut session).unwrap();
    let old = cluster.worker_pid(1, "synapse raft").unwrap();
    signal(old, libc::SIGTERM);
    wait_for("a new raft worker", Duration::from_secs(30), || {
        cluster
            .worker_pid(1, "synapse raft")
            .filter(|&pid| pid != old)
    });
    // The kept connection is to the old worker, which closed it: the request goes on a
    // new one (waiting while the new worker opens its socket), not to an error.
    let after = term(&mut session).unwrap_or_else(|e| panic!("after the restart: {e}"));
    assert!(after >= before, "term {before} then {after}");
}

/// A session's own `synapse.raft_timeout` is how long its request waits, in the raft
/// worker too: with the server's setting at 3 s, a write from a session that allows 30 s
/// waits out a quorum that is gone for longer, and one from a session that keeps the
/// server's setting fails after about 3 s.
#[test]
fn a_sessions_raft_timeout_holds_in_the_worker() {
    let cluster = Cluster::up_with(
        "raft_session_timeout",
        3,
        8400,
        &["--conf", "synapse.raft_timeout = 3000"],
    );
    let mut log = LeaderLog::default();
    let leader = agreed_leader(&cluster, &mut log, &[1, 2, 3], Duration::from_secs(30));
    let mut patient = cluster.connect(leader);
    patient
        .batch_execute("SET synapse.raft_timeout = '30s'")
        .unwrap();
    let mut hasty = cluster.connect(leader);
    let followers: Vec<i32> = (1..=3)
        .filter(|&n| n != leader)
        .map(|n| cluster.worker_pid(n, "synapse raft").unwrap())
        .collect();

    // No quorum for 6 s: both followers' Raft frozen, thawed by a thread.
    let frozen: Vec<Frozen> = followers.iter().map(|&pid| Frozen::new(pid)).collect();
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(6));
        drop(frozen);
    });
    let started = Instant::now();
    let err = hasty
        .execute(
            "SELECT synapse.set_cluster_setting('test.value', 'hasty')",
            &[],
        )
        .unwrap_err();
    let hasty_took = started.elapsed();
    assert!(
        hasty_took < Duration::from_secs(6),
        "the server's 3 s applied, took {hasty_took:?}: {err}"
    );
    patient
        .execute(
            "SELECT synapse.set_cluster_setting('test.value', 'patient')",
            &[],
        )
        .unwrap_or_else(|e| panic!("the session's 30 s did not hold: {e}"));
    assert!(started.elapsed() >= Duration::from_secs(5));
    thaw.join().unwrap();
    let value: Option<String> = patient
        .query_one("SELECT synapse.cluster_setting('test.value')", &[])
        .unwrap()
        .get(0);
    assert_eq!(value.as_deref(), Some("patient"));
}
