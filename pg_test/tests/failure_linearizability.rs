//! Linearizability of cluster settings under leader crashes: clients set, read and
//! compare-and-set a few settings through every node while the leader is killed with
//! SIGKILL and restarted, twice. The recorded history must have a linearization
//! (checked by synapse_core::linearizability, a Porcupine-style checker).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use synapse_core::linearizability::{check, Event, Op};
use synapse_pg_test::{signal, text, wait_for, Cluster};

const KEYS: [&str; 3] = ["lin.a", "lin.b", "lin.c"];

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn connect(cluster: &Cluster, node: usize) -> Option<postgres::Client> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
        cluster.pg_port(node)
    );
    let mut client = postgres::Client::connect(&conninfo, postgres::NoTls).ok()?;
    client
        .batch_execute("SET synapse.raft_timeout = '4s'")
        .ok()?;
    Some(client)
}

fn leader(cluster: &Cluster) -> Option<usize> {
    (1..=cluster.nodes).find_map(|node| {
        let mut c = connect(cluster, node)?;
        let row = c
            .query_one("SELECT role FROM synapse.raft_status()", &[])
            .ok()?;
        (row.get::<_, String>(0) == "leader").then_some(node)
    })
}

fn client_loop(
    id: u64,
    cluster: &Cluster,
    stop: &AtomicBool,
    start: Instant,
    history: &Mutex<Vec<Event>>,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id + 1) * 0x1234_5678));
    let mut clients: Vec<Option<postgres::Client>> = (0..=cluster.nodes).map(|_| None).collect();
    let now = || start.elapsed().as_micros() as u64;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let node = 1 + rng.next(cluster.nodes as u64) as usize;
        let key = KEYS[rng.next(KEYS.len() as u64) as usize];
        if clients[node].is_none() {
            clients[node] = connect(cluster, node);
        }
        let Some(client) = clients[node].as_mut() else {
            continue;
        };
        let value = format!("c{id}-{n}");
        let invoked = now();
        let (op, failed) = match rng.next(3) {
            0 => {
                let r = client.execute(
                    "SELECT synapse.set_cluster_setting($1, $2)",
                    &[&key, &value],
                );
                (
                    Op::Set {
                        value,
                        ok: r.is_ok(),
                    },
                    r.is_err(),
                )
            }
            1 => {
                let r = client.query_one("SELECT synapse.cluster_setting($1)", &[&key]);
                let failed = r.is_err();
                (
                    Op::Get {
                        observed: r.ok().map(|row| row.get::<_, Option<String>>(0)),
                    },
                    failed,
                )
            }
            _ => {
                // Expect a recent value of the key, or "unset".
                let expected = {
                    let h = history.lock().unwrap();
                    h.iter()
                        .rev()
                        .filter(|e| e.key == key)
                        .find_map(|e| match &e.op {
                            Op::Set { value, .. } => Some(value.clone()),
                            _ => None,
                        })
                };
                let r = client.query_one(
                    "SELECT synapse.compare_and_set_cluster_setting($1, $2, $3)",
                    &[&key, &expected, &value],
                );
                let failed = r.is_err();
                (
                    Op::Cas {
                        expected,
                        value,
                        applied: r.ok().map(|row| row.get::<_, bool>(0)),
                    },
                    failed,
                )
            }
        };
        let returned = now();
        history.lock().unwrap().push(Event {
            key: key.into(),
            op,
            invoked,
            returned,
        });
        if failed {
            clients[node] = None; // reconnect: the node may have been killed
        }
    }
}

#[test]
fn settings_stay_linearizable_while_the_leader_is_killed_repeatedly() {
    let cluster = Arc::new(Cluster::up("raft_linearizability", 3, 7780));
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|id| {
            let (cluster, stop, history) = (cluster.clone(), stop.clone(), history.clone());
            std::thread::spawn(move || client_loop(id, &cluster, &stop, start, &history))
        })
        .collect();

    for round in 0..2 {
        std::thread::sleep(Duration::from_secs(2)); // let clients run against a stable leader
        let victim = wait_for("a leader", Duration::from_secs(20), || leader(&cluster));
        signal(cluster.postmaster_pid(victim), libc::SIGKILL);
        println!("round {round}: killed leader node {victim}");
        wait_for("a new leader", Duration::from_secs(20), || {
            leader(&cluster).filter(|&l| l != victim)
        });
        let out = cluster.script(&["start", &victim.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let history = history.lock().unwrap();
    let completed = history
        .iter()
        .filter(|e| {
            matches!(
                e.op,
                Op::Set { ok: true, .. }
                    | Op::Get { observed: Some(_) }
                    | Op::Cas {
                        applied: Some(_),
                        ..
                    }
            )
        })
        .count();
    println!(
        "{} operations, {completed} with a known outcome",
        history.len()
    );
    assert!(
        completed >= 100,
        "too few completed operations to judge: {completed}"
    );
    let violations = check(&history);
    assert!(
        violations.is_empty(),
        "not linearizable on keys {violations:?}"
    );
}
