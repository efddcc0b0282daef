//! Two-phase commit under failures: a bank workload moves money between accounts spread
//! over every shard of a 3-node cluster, in transactions that write on 2–3 nodes, while a
//! participant is killed with SIGKILL, coordinators crash mid-commit (failpoints after
//! PREPARE and after the decision), and a node is partitioned away. Afterwards the total
//! is unchanged, every balance matches the ledger, every acknowledged commit is there,
//! nothing acknowledged as aborted is, and no prepared transaction is left anywhere.
//! Meanwhile single statements outside a transaction block (an UPDATE of two rows on
//! different nodes, committed with two-phase commit too) mark rows through nodes 2 and 3;
//! each marks both rows or neither.
//!
//! A second test destroys the coordinator for good (data directory removed) after its
//! decision: the surviving nodes still commit its in-doubt transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synapse_pg_test::{alive, connect_to, text, wait_for, Cluster};

const ACCOUNTS: i32 = 300;
const START_BALANCE: i64 = 1000;
/// Rows of the `marks` table, which single statements mark two at a time.
const MARK_ROWS: i32 = 40;

/// What the client was told about a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    Committed,
    Aborted,
    /// The connection broke during COMMIT, or SQLSTATE 08007: either outcome is allowed.
    Unknown,
}

fn setup(c: &mut postgres::Client) {
    c.batch_execute(&format!(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, applied bigint[] NOT NULL DEFAULT '{{}}');
         INSERT INTO accounts SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g;
         SELECT synapse.create_distributed_table('accounts', 'id', 32);
         CREATE TABLE ledger (id bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount int NOT NULL);
         SELECT synapse.create_distributed_table('ledger', 'id', 32);
         CREATE TABLE marks (k int PRIMARY KEY, ids bigint[] NOT NULL DEFAULT '{{}}');
         INSERT INTO marks SELECT g FROM generate_series(1, {MARK_ROWS}) g;
         SELECT synapse.create_distributed_table('marks', 'k', 32);"
    ))
    .unwrap();
}

/// One transfer in a transaction block: both accounts (in id order, so transfers never
/// wait for each other in a cycle) and the ledger row, usually on 2–3 nodes.
fn transfer(c: &mut postgres::Client, id: i64, src: i32, dst: i32, amount: i32) -> Told {
    let (first, second) = if src < dst { (src, dst) } else { (dst, src) };
    let delta = |acct: i32| if acct == src { -amount } else { amount };
    let body = format!(
        "BEGIN;
         SET LOCAL application_name = 'transfer {id}';
         UPDATE accounts SET balance = balance + {}, applied = applied || {id}::bigint WHERE id = {first};
         UPDATE accounts SET balance = balance + {}, applied = applied || {id}::bigint WHERE id = {second};
         INSERT INTO ledger VALUES ({id}, {src}, {dst}, {amount});",
        delta(first),
        delta(second)
    );
    if let Err(e) = c.batch_execute(&body) {
        if std::env::var_os("TWOPHASE_DEBUG").is_some() {
            eprintln!(
                "transfer {id} failed before COMMIT: {}",
                e.as_db_error().map_or(e.to_string(), |d| format!(
                    "{} {}",
                    d.code().code(),
                    d.message()
                ))
            );
        }
        let _ = c.batch_execute("ROLLBACK");
        return Told::Aborted;
    }
    // 08007: the commit decision could not be recorded; 08xxx: a connection broke.
    told(c.batch_execute("COMMIT"), |code| code.starts_with("08"))
}

/// One statement outside a transaction block marking rows `a` and `b` with `id`: not
/// pinned to one shard, so it runs on every node holding shards of `marks` (this node's
/// part through a connection of its own), prepared everywhere before the decision.
fn mark(c: &mut postgres::Client, id: i64, a: i32, b: i32) -> Told {
    let result = c.batch_execute(&format!(
        "UPDATE marks SET ids = ids || {id}::bigint WHERE k IN ({a}, {b})"
    ));
    // An ERROR rolled the statement back (a node down: 08006; not prepared: 40000),
    // except 08007: the commit decision's fate is unknown.
    told(result, |code| code == "08007")
}

/// What the client is told by the statement that commits: committed; unknown when the
/// session ended (a FATAL error), no server answered, or `unknown(SQLSTATE)` says so;
/// otherwise (an ERROR) rolled back.
fn told(result: Result<(), postgres::Error>, unknown: impl Fn(&str) -> bool) -> Told {
    let Err(e) = result else {
        return Told::Committed;
    };
    if std::env::var_os("TWOPHASE_DEBUG").is_some() {
        eprintln!("commit failed: {e:?}");
    }
    match e.as_db_error() {
        Some(d) if d.severity() != "ERROR" => Told::Unknown,
        Some(d) if unknown(d.code().code()) => Told::Unknown,
        Some(_) => Told::Aborted,
        None => Told::Unknown,
    }
}

/// Runs `step` through a client of node `node` until `stop`: reconnects after its node
/// crashed (trying every 100 ms while it is down), and after a step that did not commit
/// on a connection that no longer answers.
fn keep_running(
    cluster: &Cluster,
    node: usize,
    stop: Arc<AtomicBool>,
    mut step: impl FnMut(&mut postgres::Client) -> Told + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let mut connect = reconnecting(cluster, node);
    std::thread::spawn(move || {
        let mut client = None;
        while !stop.load(Ordering::Relaxed) {
            let Some(c) = client.as_mut() else {
                client = connect();
                if client.is_none() {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
                continue;
            };
            let told = step(c);
            if c.is_closed() || (told != Told::Committed && c.simple_query("SELECT 1").is_err()) {
                client = None;
            }
        }
    })
}

/// Rows of `sql` (one bigint column) through `c`.
fn ids(c: &mut postgres::Client, sql: &str) -> BTreeSet<i64> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn prepared_left(cluster: &Cluster) -> i64 {
    (1..=cluster.nodes)
        .map(|n| {
            cluster
                .connect(n)
                .query_one(
                    "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'synapse\\_%'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
        })
        .sum()
}

/// A client of node `node` that survives its node's crash: it reconnects.
fn reconnecting(cluster: &Cluster, node: usize) -> impl FnMut() -> Option<postgres::Client> {
    let (host, port) = (cluster.host(node).to_owned(), cluster.pg_port(node));
    move || {
        let mut c = postgres::Config::new()
            .host(&host)
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2))
            .connect(postgres::NoTls)
            .ok()?;
        c.batch_execute("SET statement_timeout = '4s'").ok()?;
        Some(c)
    }
}

/// Runs one transfer through node `node` with `failpoint` set, so that its coordinator
/// crashes during COMMIT (retrying while a statement fails before COMMIT, e.g. while a
/// node's circuit breaker is still open after a restart); then starts the node again.
/// Returns the transfer's id.
fn crash_coordinator(
    cluster: &Cluster,
    node: usize,
    failpoint: &str,
    first_id: i64,
    src: i32,
    dst: i32,
) -> i64 {
    let postmaster = cluster.postmaster_pid(node);
    let mut c = cluster.connect(node);
    c.batch_execute(&format!("SET synapse.failpoints = '{failpoint}'"))
        .unwrap();
    let mut id = first_id;
    wait_for(
        "a transfer to reach COMMIT",
        Duration::from_secs(60),
        || {
            id += 1;
            match transfer(&mut c, id, src, dst, 7) {
                Told::Aborted => None,
                told => {
                    assert_eq!(told, Told::Unknown, "the coordinator crashed during COMMIT");
                    Some(())
                }
            }
        },
    );
    // The node is down: wait until its postmaster is gone, then start it again (the
    // script waits for the orphaned children).
    wait_for(
        "the node's postmaster to go",
        Duration::from_secs(30),
        || (!alive(postmaster) && connect_attempt(cluster, node).is_none()).then_some(()),
    );
    let out = cluster.script(&["start", &node.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    id
}

fn connect_attempt(cluster: &Cluster, node: usize) -> Option<postgres::Client> {
    postgres::Config::new()
        .host(cluster.host(node))
        .port(cluster.pg_port(node))
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1))
        .connect(postgres::NoTls)
        .ok()
}

/// An account on `node` and one on another node.
fn accounts_across(c: &mut postgres::Client, node: &str) -> (i32, i32) {
    let on = |c: &mut postgres::Client, same: bool| -> i32 {
        c.query_one(
            "SELECT g FROM generate_series(1, $2::int) g JOIN synapse.placements p \
             ON p.table_name = 'public.accounts' AND p.shard = synapse.shard_of(g, 32) \
             WHERE (p.node = $1) = $3 ORDER BY g LIMIT 1",
            &[&node, &ACCOUNTS, &same],
        )
        .unwrap()
        .get(0)
    };
    (on(c, true), on(c, false))
}

#[test]
fn bank_transfers_stay_atomic_through_kills_crashes_and_partitions() {
    let cluster = Cluster::up_with(
        "twophase_bank",
        3,
        9400,
        &[
            "--netns",
            "--conf",
            "synapse.two_phase_timeout = 3000",
            "--conf",
            "synapse.recovery_interval = 500",
            "--conf",
            "synapse.raft_timeout = 3000",
            "--conf",
            "synapse.trace_transactions = on",
        ],
    );
    let mut admin = cluster.connect(1);
    setup(&mut admin);

    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicI64::new(1));
    let outcomes: Arc<Mutex<BTreeMap<i64, Told>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..6 {
        let (next_id, outcomes) = (next_id.clone(), outcomes.clone());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        workers.push(keep_running(&cluster, w % 3 + 1, stop.clone(), move |c| {
            let src = rand(ACCOUNTS as u64) as i32 + 1;
            let mut dst = rand(ACCOUNTS as u64) as i32 + 1;
            if dst == src {
                dst = dst % ACCOUNTS + 1;
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let told = transfer(c, id, src, dst, rand(50) as i32 + 1);
            outcomes.lock().unwrap().insert(id, told);
            told
        }));
    }
    // Single statements marking two rows, through nodes 2 and 3 (coordinators that crash
    // and are partitioned away), each on its own rows: no waits between them.
    let marked: Arc<Mutex<BTreeMap<i64, Told>>> = Arc::default();
    for w in 0..2i32 {
        let marked = marked.clone();
        let mut n = 0i64;
        workers.push(keep_running(
            &cluster,
            w as usize + 2,
            stop.clone(),
            move |c| {
                n += 1;
                // Two different rows of this worker's: k = 2i + 1 + w.
                let half = i64::from(MARK_ROWS / 2);
                let i = n % half;
                let mut j = (n * 7 + 3) % half;
                if j == i {
                    j = (j + 1) % half;
                }
                let (a, b) = ((2 * i + 1) as i32 + w, (2 * j + 1) as i32 + w);
                let id = 3_000_000_000 + i64::from(w) * 100_000_000 + n;
                let told = mark(c, id, a, b);
                marked.lock().unwrap().insert(id, told);
                if told != Told::Committed {
                    // A node is down, most likely: not every few microseconds.
                    std::thread::park_timeout(Duration::from_millis(20));
                }
                told
            },
        ));
    }
    let committed = |outcomes: &Arc<Mutex<BTreeMap<i64, Told>>>| {
        outcomes
            .lock()
            .unwrap()
            .values()
            .filter(|t| **t == Told::Committed)
            .count()
    };
    let wait_progress = |what: &str, outcomes: &Arc<Mutex<BTreeMap<i64, Told>>>| {
        let before = committed(outcomes);
        wait_for(what, Duration::from_secs(60), || {
            (committed(outcomes) >= before + 30).then_some(())
        });
    };
    wait_progress("transfers to commit", &outcomes);

    // 1. A participant is killed with SIGKILL and comes back.
    cluster.crash(3);
    wait_progress(
        "transfers among nodes 1 and 2 while node 3 is down",
        &outcomes,
    );
    let out = cluster.script(&["start", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_progress("transfers after node 3 is back", &outcomes);

    // 2. Coordinators crash mid-commit: after PREPARE (no decision: rolled back) and after
    // the decision (committed on every node by recovery).
    let (a, b) = accounts_across(&mut admin, "node2");
    let id_prepared = crash_coordinator(&cluster, 2, "after_prepare:crash", 1_000_000_000, a, b);
    wait_progress("transfers after node 2 restarted", &outcomes);
    let (a, b) = accounts_across(&mut admin, "node3");
    let id_decided = crash_coordinator(&cluster, 3, "after_decision:crash", 2_000_000_000, a, b);
    wait_progress("transfers after node 3 restarted", &outcomes);

    // 3. Node 3 is cut off from the others for a while.
    let out = cluster.script(&["partition", "1,2", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_progress("transfers while node 3 is partitioned away", &outcomes);
    let out = cluster.script(&["heal"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_progress("transfers after the partition healed", &outcomes);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    // Recovery leaves nothing prepared.
    let settled = Instant::now();
    wait_for(
        "recovery to resolve every prepared transaction",
        Duration::from_secs(60),
        || (prepared_left(&cluster) == 0).then_some(()),
    );
    println!(
        "every prepared transaction resolved {:.1?} after the workload",
        settled.elapsed()
    );

    let mut c = cluster.connect(1);
    // Every transfer applied to both accounts and the ledger, or to none of them.
    // (Once node 1 reaches every node again: a breaker opened by the partition closes
    // after its backoff.)
    let torn: Vec<(i64, i64, i64)> = wait_for(
        "every node to answer node 1",
        Duration::from_secs(60),
        || {
            c.query(
                "WITH parts AS (SELECT unnest(applied) AS id FROM accounts),
                  per AS (SELECT id, count(*) AS n FROM parts GROUP BY id)
             SELECT coalesce(p.id, l.id), coalesce(p.n, 0), (l.id IS NOT NULL)::int::bigint
             FROM per p FULL JOIN ledger l ON l.id = p.id
             WHERE coalesce(p.n, 0) <> 2 OR l.id IS NULL",
                &[],
            )
            .ok()
        },
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    if !torn.is_empty() {
        let outcomes = outcomes.lock().unwrap();
        let described: Vec<String> = torn
            .iter()
            .map(|(id, accounts, ledger)| {
                format!("transfer {id}: {accounts} account(s), {ledger} ledger row(s), client told {:?}", outcomes.get(id))
            })
            .collect();
        panic!("torn transfers:\n{}", described.join("\n"));
    }
    // Every single statement marked both its rows or neither; as its client was told.
    let marks: BTreeMap<i64, i64> = c
        .query(
            "SELECT id, count(*) FROM (SELECT unnest(ids) AS id FROM marks) m GROUP BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let torn_marks: Vec<_> = marks.iter().filter(|(_, n)| **n != 2).collect();
    assert!(
        torn_marks.is_empty(),
        "statements that marked one row of two: {torn_marks:?}"
    );
    {
        let marked = marked.lock().unwrap();
        let lost: Vec<_> = marked
            .iter()
            .filter(|(id, t)| **t == Told::Committed && !marks.contains_key(id))
            .collect();
        let ghosts: Vec<_> = marked
            .iter()
            .filter(|(id, t)| **t == Told::Aborted && marks.contains_key(id))
            .collect();
        assert!(lost.is_empty(), "acknowledged statements missing: {lost:?}");
        assert!(
            ghosts.is_empty(),
            "statements acknowledged as failed are visible: {ghosts:?}"
        );
        let count = |t: Told| marked.values().filter(|o| **o == t).count();
        println!(
            "{} single statements on two nodes: {} committed, {} failed, {} unknown",
            marked.len(),
            count(Told::Committed),
            count(Told::Aborted),
            count(Told::Unknown)
        );
        assert!(
            count(Told::Committed) >= 50,
            "too few single statements committed"
        );
    }
    let total: i64 = c
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        total,
        i64::from(ACCOUNTS) * START_BALANCE,
        "money was created or lost"
    );
    let mismatched: i64 = c
        .query_one(
            &format!(
                "WITH moves AS (
                    SELECT src AS id, -amount AS delta FROM ledger
                    UNION ALL SELECT dst, amount FROM ledger)
                 SELECT count(*) FROM accounts a
                 LEFT JOIN (SELECT id, sum(delta) AS delta FROM moves GROUP BY id) m USING (id)
                 WHERE a.balance <> {START_BALANCE} + coalesce(m.delta, 0)"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0, "balances that do not match the ledger");
    let in_ledger = ids(&mut c, "SELECT id FROM ledger");
    let outcomes = outcomes.lock().unwrap();
    let count = |t: Told| outcomes.values().filter(|o| **o == t).count();
    let lost: Vec<_> = outcomes
        .iter()
        .filter(|(id, t)| **t == Told::Committed && !in_ledger.contains(id))
        .map(|(id, _)| *id)
        .collect();
    let ghosts: Vec<_> = outcomes
        .iter()
        .filter(|(id, t)| **t == Told::Aborted && in_ledger.contains(id))
        .map(|(id, _)| *id)
        .collect();
    assert!(lost.is_empty(), "acknowledged commits missing: {lost:?}");
    assert!(
        ghosts.is_empty(),
        "transfers acknowledged as aborted are visible: {ghosts:?}"
    );
    assert!(
        !in_ledger.contains(&id_prepared),
        "a transfer prepared but never decided committed"
    );
    assert!(
        in_ledger.contains(&id_decided),
        "a transfer whose commit was decided is missing"
    );
    let multi_node: i64 = c
        .query_one(
            "SELECT count(*) FROM synapse.transaction_decisions WHERE cardinality(participants) >= 2",
            &[],
        )
        .unwrap()
        .get(0);
    println!(
        "{} transfers: {} committed, {} aborted, {} unknown ({} of them committed); total {total}; \
         {multi_node} multi-node decisions still recorded",
        outcomes.len(),
        count(Told::Committed),
        count(Told::Aborted),
        count(Told::Unknown),
        outcomes
            .iter()
            .filter(|(id, t)| **t == Told::Unknown && in_ledger.contains(id))
            .count(),
    );
    assert!(count(Told::Committed) >= 200, "too little work was done");
    // Transfers lock their accounts in id order: heavy contention, but never a cycle, so
    // the deadlock detector cancelled nothing.
    let cancelled: i64 = (1..=3)
        .map(|n| {
            cluster
                .connect(n)
                .query_one("SELECT count(*) FROM synapse.deadlocks", &[])
                .unwrap()
                .get::<_, i64>(0)
        })
        .sum();
    assert_eq!(cancelled, 0, "deadlock cancellations without a cycle");
}

/// Keys of table `dl` (16 shards) on nodes 1, 2 and 3.
fn keys_by_node(c: &mut postgres::Client) -> [i32; 3] {
    let on = |c: &mut postgres::Client, node: &str| -> i32 {
        c.query_one(
            "SELECT min(g) FROM generate_series(1, 100) g JOIN synapse.placements p \
             ON p.table_name = 'public.dl' AND p.shard = synapse.shard_of(g, 16) WHERE p.node = $1",
            &[&node],
        )
        .unwrap()
        .get(0)
    };
    [on(c, "node1"), on(c, "node2"), on(c, "node3")]
}

#[test]
fn deadlocks_across_nodes_are_broken_in_time_with_the_youngest_as_victim() {
    let cluster = Cluster::up("twophase_deadlock", 3, 9600);
    let mut c = cluster.connect(1);
    c.batch_execute(
        "CREATE TABLE dl (k int PRIMARY KEY, v int NOT NULL);
         INSERT INTO dl SELECT g, 0 FROM generate_series(1, 100) g;
         SELECT synapse.create_distributed_table('dl', 'k', 16);",
    )
    .unwrap();
    let keys = keys_by_node(&mut c);
    let deadlock_timeout_ms: i64 = c
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout'",
            &[],
        )
        .unwrap()
        .get(0);
    let interval_ms = 2 * deadlock_timeout_ms;
    let bound = Duration::from_millis((2 * deadlock_timeout_ms + interval_ms) as u64);
    // Cycles over 2 and over 3 nodes, each session coordinated by a different node: session
    // i holds key i and then wants key i+1 (mod n). Sessions begin in order, so the last
    // is the youngest.
    for n in [2usize, 3] {
        let mut sessions: Vec<postgres::Client> = (0..n).map(|i| cluster.connect(i + 1)).collect();
        for (i, s) in sessions.iter_mut().enumerate() {
            s.batch_execute(&format!(
                "BEGIN; UPDATE dl SET v = v + 1 WHERE k = {}",
                keys[i]
            ))
            .unwrap();
        }
        let started = Instant::now();
        let waits: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                let key = keys[(i + 1) % n];
                std::thread::spawn(move || {
                    let r = s.batch_execute(&format!("UPDATE dl SET v = v + 1 WHERE k = {key}"));
                    let finished = started.elapsed();
                    let outcome = match r {
                        Ok(()) => s.batch_execute("COMMIT").map(|_| "committed".to_owned()),
                        Err(e) => {
                            let code = e.as_db_error().map(|d| d.code().code().to_owned());
                            let _ = s.batch_execute("ROLLBACK");
                            Ok(format!("error {}", code.unwrap_or_default()))
                        }
                    };
                    (outcome.unwrap(), finished)
                })
            })
            .collect();
        let results: Vec<(String, Duration)> =
            waits.into_iter().map(|w| w.join().unwrap()).collect();
        println!("{n}-node cycle: {results:?}");
        let victim = &results[n - 1];
        assert_eq!(
            victim.0, "error 40P01",
            "the youngest transaction is the victim"
        );
        assert!(
            victim.1 <= bound,
            "the {n}-node deadlock took {:?} to break (bound {bound:?})",
            victim.1
        );
        for r in &results[..n - 1] {
            assert_eq!(r.0, "committed", "the survivors commit");
        }
        let (deadlocks, nodes): (i64, i32) = wait_for(
            "the deadlock in the history",
            Duration::from_secs(10),
            || {
                (1..=3).find_map(|node| {
                let row = cluster
                    .connect(node)
                    .query_one(
                        "SELECT count(*), coalesce(max(cardinality(nodes)), 0) FROM synapse.deadlocks \
                         WHERE cardinality(cycle) = $1",
                        &[&(n as i32)],
                    )
                    .unwrap();
                (row.get::<_, i64>(0) == 1).then(|| (row.get(0), row.get(1)))
            })
            },
        );
        assert_eq!((deadlocks, nodes as usize), (1, n));
    }
    // A statement outside a transaction block writing on several nodes reaches this
    // node's shards through a session of its own: after LOCK TABLE here, that session
    // waits for the lock its own coordinator holds, which waits for its answer. No lock
    // cycle PostgreSQL could see; the detector breaks it.
    let started = Instant::now();
    let err = c
        .batch_execute(
            "DO $$ BEGIN LOCK TABLE dl IN EXCLUSIVE MODE; UPDATE dl SET v = v + 1; END $$",
        )
        .expect_err("a statement waiting for itself");
    let took = started.elapsed();
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("40P01"),
        "{err:?}"
    );
    assert!(
        took <= bound,
        "the self-deadlock took {took:?} to break (bound {bound:?})"
    );
    println!("a statement waiting for its own session: broken after {took:?}");
    let total: i64 = c
        .query_one("SELECT sum(v)::bigint FROM dl", &[])
        .unwrap()
        .get(0);
    c.batch_execute("UPDATE dl SET v = v + 1").unwrap();
    let after: i64 = c
        .query_one("SELECT sum(v)::bigint FROM dl", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        after,
        total + 100,
        "the same statement without the lock runs"
    );
}

#[test]
fn a_destroyed_coordinators_decided_transaction_commits_on_the_survivors() {
    let cluster = Cluster::up_with(
        "twophase_destroyed",
        3,
        9500,
        &["--conf", "synapse.recovery_interval = 500"],
    );
    let mut c1 = cluster.connect(1);
    setup(&mut c1);
    // A transfer between an account on node 2 and one on node 3, coordinated by node 1,
    // which pauses after the decision: then node 1 is destroyed.
    let pick = |c: &mut postgres::Client, node: &str| -> i32 {
        c.query_one(
            "SELECT g FROM generate_series(1, 300) g JOIN synapse.placements p \
             ON p.table_name = 'public.accounts' AND p.shard = synapse.shard_of(g, 32) \
             WHERE p.node = $1 ORDER BY g LIMIT 1",
            &[&node],
        )
        .unwrap()
        .get(0)
    };
    let (a, b) = (pick(&mut c1, "node2"), pick(&mut c1, "node3"));
    let ledger_id: i64 = (1..1000i64)
        .find(|id| {
            let node: String = c1
                .query_one(
                    "SELECT node FROM synapse.placements WHERE table_name = 'public.ledger' \
                     AND shard = synapse.shard_of($1::bigint, 32)",
                    &[id],
                )
                .unwrap()
                .get(0);
            node != "node1"
        })
        .unwrap();
    let (host, port) = (cluster.host(1).to_owned(), cluster.pg_port(1));
    let coordinator = std::thread::spawn(move || {
        let mut c = connect_to(&host, port);
        c.batch_execute("SET synapse.failpoints = 'after_decision:pause'")
            .unwrap();
        transfer(&mut c, ledger_id, a, b, 100)
    });
    let gid: String = wait_for(
        "the coordinator to pause after its decision",
        Duration::from_secs(30),
        || {
            c1.query_opt(
                "SELECT gxid FROM synapse.transactions WHERE state = 'COMMITTING'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
        },
    );
    let mut c2 = cluster.connect(2);
    // The decision is in the Raft log: it reaches node 2 whatever happens to node 1.
    let outcome: String = wait_for(
        "the decision to reach node 2",
        Duration::from_secs(10),
        || {
            c2.query_opt(
                "SELECT outcome FROM synapse.transaction_decisions WHERE gxid = $1",
                &[&gid],
            )
            .unwrap()
            .map(|r| r.get(0))
        },
    );
    assert_eq!(outcome, "commit");
    cluster.crash(1);
    std::fs::remove_dir_all(cluster.dir.join("node1")).expect("node 1's data directory");
    assert_eq!(coordinator.join().unwrap(), Told::Unknown);

    // Nodes 2 and 3 commit their parts; each sees the new balances.
    wait_for("the survivors to commit", Duration::from_secs(30), || {
        (cluster
            .connect(2)
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                &[&gid],
            )
            .unwrap()
            .get::<_, i64>(0)
            + cluster
                .connect(3)
                .query_one(
                    "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                    &[&gid],
                )
                .unwrap()
                .get::<_, i64>(0)
            == 0)
            .then_some(())
    });
    let mut c3 = cluster.connect(3);
    let balance = |c: &mut postgres::Client, id: i32| -> i64 {
        c.query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
            .unwrap()
            .get(0)
    };
    assert_eq!(balance(&mut c2, a), START_BALANCE - 100);
    assert_eq!(balance(&mut c3, b), START_BALANCE + 100);
    let n: i64 = c2
        .query_one("SELECT count(*) FROM ledger WHERE id = $1", &[&ledger_id])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the ledger row committed");
    // recover_transactions() says the lost node cannot be reached, and loses nothing.
    let rows = c2
        .query(
            "SELECT node, action FROM synapse.recover_transactions()",
            &[],
        )
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.get::<_, String>(0) == "node1" && r.get::<_, String>(1) == "unreachable"),
        "node 1 is reported unreachable"
    );
    // COMMIT PREPARED of a transaction that does not exist is PostgreSQL's clear error.
    let e = c2
        .batch_execute("COMMIT PREPARED 'synapse_9_9_9'")
        .expect_err("no such transaction");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42704"),
        "{e:?}"
    );
    println!("decided transaction {gid} committed on nodes 2 and 3 after node 1 was destroyed");
}
