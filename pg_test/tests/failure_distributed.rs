//! A node of a 3-node cluster is killed with SIGKILL: statements that need only the
//! other nodes keep working; statements that need it fail at once with a clear error
//! naming it; its circuit breaker opens (visible in synapse.circuit_breakers()) and then
//! skips it without a connection attempt; once it is back, everything works again.

use std::time::{Duration, Instant};

use synapse_pg_test::{wait_for, Cluster};

/// A key of table `kv` whose shard is on `node`.
fn key_on(client: &mut postgres::Client, node: &str) -> i32 {
    client
        .query_one(
            "SELECT g FROM generate_series(1, 1000) g JOIN synapse.placements p \
             ON p.table_name = 'public.kv' AND p.shard = synapse.shard_of(g, 32) \
             WHERE p.node = $1 ORDER BY g LIMIT 1",
            &[&node],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_killed_node_fails_only_the_statements_that_need_it() {
    let cluster = Cluster::up("failure_distributed", 3, 9200);
    let mut c1 = cluster.connect(1);
    c1.batch_execute(
        "CREATE TABLE kv (k int PRIMARY KEY, v int);
         INSERT INTO kv SELECT g, g * 10 FROM generate_series(1, 1000) g;
         SELECT synapse.create_distributed_table('kv', 'k', 32);",
    )
    .unwrap();
    let (k1, k2, k3) = (
        key_on(&mut c1, "node1"),
        key_on(&mut c1, "node2"),
        key_on(&mut c1, "node3"),
    );
    let read = |c: &mut postgres::Client, k: i32| -> Result<i32, postgres::Error> {
        c.query_one("SELECT v FROM kv WHERE k = $1", &[&k])
            .map(|r| r.get(0))
    };
    assert_eq!(
        read(&mut c1, k3).unwrap(),
        k3 * 10,
        "node 3 answers before the crash"
    );

    // Phase 0: a remote wait (a row lock held on node 2) ends at statement_timeout, the
    // remote statement is cancelled, and the session goes on.
    let mut holder = cluster.connect(2);
    holder
        .batch_execute(&format!(
            "SET synapse.fragment = on; BEGIN; UPDATE kv SET v = v WHERE k = {k2}"
        ))
        .unwrap();
    c1.batch_execute("SET statement_timeout = '500ms'").unwrap();
    let started = Instant::now();
    let e = c1
        .batch_execute(&format!("UPDATE kv SET v = 0 WHERE k = {k2}"))
        .expect_err("the row is locked");
    let waited = started.elapsed();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{e:?}"
    );
    assert!(
        waited < Duration::from_millis(600),
        "statement_timeout took {waited:?}"
    );
    eprintln!("remote lock wait ended by statement_timeout after {waited:?}");
    c1.batch_execute("RESET statement_timeout").unwrap();
    // The cancelled remote statement is gone: node 2 shows no backend of ours waiting.
    let waiting: i64 = wait_for(
        "the remote statement to be cancelled",
        Duration::from_secs(5),
        || {
            let n: i64 = holder
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'synapse' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
            (n == 0).then_some(n)
        },
    );
    assert_eq!(waiting, 0);
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(read(&mut c1, k2).unwrap(), k2 * 10);

    // Phase 1: node 3 dies.
    cluster.crash(3);

    // Statements that need node 1 or node 2 only keep working.
    assert_eq!(read(&mut c1, k1).unwrap(), k1 * 10);
    assert_eq!(read(&mut c1, k2).unwrap(), k2 * 10);
    c1.execute("UPDATE kv SET v = v + 1 WHERE k = $1", &[&k2])
        .unwrap();
    assert_eq!(read(&mut c1, k2).unwrap(), k2 * 10 + 1);

    // Statements that need node 3 fail fast, naming it, and leave the session usable.
    for sql in [
        format!("SELECT v FROM kv WHERE k = {k3}"),
        "SELECT count(*) FROM kv".to_owned(),
        format!("INSERT INTO kv VALUES ({}, 1)", k3 + 100_000),
    ] {
        let started = Instant::now();
        let e = c1.batch_execute(&sql).expect_err("node 3 is down");
        let elapsed = started.elapsed();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e:?}"));
        assert!(
            db.code().code().starts_with("08"),
            "{sql}: {} {}",
            db.code().code(),
            db.message()
        );
        assert!(db.message().contains("node3"), "{sql}: {}", db.message());
        assert!(elapsed < Duration::from_secs(2), "{sql} took {elapsed:?}");
        eprintln!("{sql}: failed in {elapsed:?}: {}", db.message());
    }
    assert_eq!(
        read(&mut c1, k1).unwrap(),
        k1 * 10,
        "the session still works"
    );

    // Node 3's circuit breaker opens (from these failures, or from SWIM declaring it
    // FAILED), is visible, and then skips node 3 without trying to connect.
    let state = |c: &mut postgres::Client| -> (String, i32) {
        let r = c
            .query_one(
                "SELECT state, connections FROM synapse.circuit_breakers() WHERE node = 'node3'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    wait_for("node 3's breaker to open", Duration::from_secs(15), || {
        (state(&mut c1).0 == "open").then_some(())
    });
    let started = Instant::now();
    let e = c1
        .batch_execute("SELECT count(*) FROM kv")
        .expect_err("node 3 is down");
    let db = e.as_db_error().unwrap();
    assert!(
        db.message().contains("circuit breaker is open"),
        "{}",
        db.message()
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "an open breaker took {:?}",
        started.elapsed()
    );
    let (_, connections) = state(&mut c1);
    assert_eq!(connections, 0, "no connection to node 3 is held");
    assert_eq!(read(&mut c1, k2).unwrap(), k2 * 10 + 1);
    let node2: (String, i32) = {
        let r = c1
            .query_one(
                "SELECT state, connections FROM synapse.circuit_breakers() WHERE node = 'node2'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(node2.0, "closed");
    assert!(node2.1 >= 1, "node 2's connection is counted: {node2:?}");

    // Phase 2: node 3 restarts; the same session reaches it again.
    let out = cluster.script(&["start", "3"]);
    assert!(out.status.success(), "{}", synapse_pg_test::text(&out));
    let total: i64 = wait_for("node 3 to answer again", Duration::from_secs(60), || {
        c1.query_one("SELECT count(*) FROM kv", &[])
            .ok()
            .map(|r| r.get(0))
    });
    assert_eq!(total, 1000);
    assert_eq!(read(&mut c1, k3).unwrap(), k3 * 10);
    assert_eq!(
        state(&mut c1).0,
        "closed",
        "a successful trial closes the breaker"
    );
}
