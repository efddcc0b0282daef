//! The supervisor worker under signals: SIGHUP reloads settings it then serves, SIGTERM
//! stops it within a second (and the postmaster restarts it), SIGKILL makes the postmaster
//! reinitialise and restart it.

use std::time::{Duration, Instant};

use synapse_pg_test::{alive, signal, wait_for, Cluster};

const SUPERVISOR: &str = "synapse supervisor";

fn health_node_name(cluster: &Cluster) -> Option<String> {
    let (code, body) = cluster.http_get(1, "/health").ok()?;
    (code == 200).then(|| body["node_name"].as_str().unwrap().to_owned())
}

#[test]
fn sighup_reload_is_seen_by_the_worker() {
    let cluster = Cluster::up("failure_sighup", 1, 7200);
    assert_eq!(health_node_name(&cluster).as_deref(), Some("node1"));
    let pid = cluster.worker_pid(1, SUPERVISOR).unwrap();

    let mut client = cluster.connect(1);
    client
        .batch_execute("ALTER SYSTEM SET synapse.node_name = 'reloaded'")
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "/health to show the reloaded name",
        Duration::from_secs(5),
        || (health_node_name(&cluster)? == "reloaded").then_some(()),
    );
    assert_eq!(
        cluster.worker_pid(1, SUPERVISOR),
        Some(pid),
        "a reload must not restart the worker"
    );

    client
        .batch_execute("ALTER SYSTEM RESET synapse.node_name")
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "/health to show the original name again",
        Duration::from_secs(5),
        || (health_node_name(&cluster)? == "node1").then_some(()),
    );
}

#[test]
fn sigterm_stops_the_worker_within_one_second_and_it_is_restarted() {
    let cluster = Cluster::up("failure_sigterm", 1, 7230);
    let pid = cluster.worker_pid(1, SUPERVISOR).unwrap();
    let sent = Instant::now();
    signal(pid, libc::SIGTERM);
    wait_for("the supervisor to exit", Duration::from_secs(1), || {
        (!alive(pid)).then_some(())
    });
    let stopped_after = sent.elapsed();
    println!("supervisor stopped {stopped_after:?} after SIGTERM");
    assert!(stopped_after < Duration::from_secs(1));

    // Exit code 1: the postmaster restarts it after the restart delay (1 s).
    let new_pid = wait_for("a new supervisor", Duration::from_secs(10), || {
        cluster.worker_pid(1, SUPERVISOR).filter(|&p| p != pid)
    });
    wait_for(
        "/health from the new supervisor",
        Duration::from_secs(5),
        || {
            let (code, body) = cluster.http_get(1, "/health").ok()?;
            (code == 200 && body["worker_pid"] == new_pid).then_some(())
        },
    );
}

#[test]
fn a_killed_worker_is_restarted_by_the_postmaster() {
    let cluster = Cluster::up("failure_sigkill", 1, 7260);
    let postmaster = cluster.postmaster_pid(1);
    let pid = cluster.worker_pid(1, SUPERVISOR).unwrap();
    signal(pid, libc::SIGKILL);
    // A killed child makes the postmaster reset shared memory and restart all processes;
    // the postmaster itself survives.
    let new_pid = wait_for("a restarted supervisor", Duration::from_secs(30), || {
        let mut client = postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                cluster.pg_port(1)
            ),
            postgres::NoTls,
        )
        .ok()?;
        let row = client
            .query_opt(
                "SELECT pid FROM synapse.workers() WHERE name = $1",
                &[&SUPERVISOR],
            )
            .ok()??;
        Some(row.get::<_, i32>(0)).filter(|&p| p != pid)
    });
    assert!(
        alive(postmaster),
        "the postmaster must survive a worker crash"
    );
    assert_eq!(cluster.postmaster_pid(1), postmaster);
    wait_for("/health after the restart", Duration::from_secs(10), || {
        let (code, body) = cluster.http_get(1, "/health").ok()?;
        (code == 200 && body["worker_pid"] == new_pid).then_some(())
    });
}

#[test]
fn health_is_unavailable_while_the_database_cannot_answer() {
    let cluster = Cluster::up("failure_health_503", 1, 7290);
    let mut client = cluster.connect(1);
    client
        .batch_execute("ALTER SYSTEM SET synapse.health_timeout = '200ms'")
        .unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    // Hold an exclusive lock on pg_extension: the health query blocks behind it.
    let mut locker = cluster.connect(1);
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let body = wait_for("/health to report 503", Duration::from_secs(10), || {
        let (code, body) = cluster.http_get(1, "/health").ok()?;
        (code == 503).then_some(body)
    });
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"]["answered"], false);
    tx.rollback().unwrap();
    wait_for("/health to recover", Duration::from_secs(10), || {
        let (code, _) = cluster.http_get(1, "/health").ok()?;
        (code == 200).then_some(())
    });
}
