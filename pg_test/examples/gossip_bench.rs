//! `scripts/bench/gossip`: SWIM with default parameters on local clusters of 3, 5 and 9
//! nodes. For each size: crash-detection time (SIGKILL of a whole node until every other
//! node shows it FAILED) over repeated trials, and datagrams sent per node per second.
//! Prints the goal ratios: p50 against 5 s, p99 against 10 s, and each size's datagrams per
//! node against the 3-node cluster measured in the same run (constant is 1.0).

use std::time::{Duration, Instant};

use synapse_pg_test::{text, wait_for, Cluster};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// 3 s of steady state plus a phase that moves by 0.37 s per trial.
fn steady_pause(trial: usize) -> Duration {
    Duration::from_millis(3000 + (trial as u64 * 370) % 1000)
}

fn sent(cluster: &Cluster, node: usize) -> i64 {
    cluster
        .connect(node)
        .query_one("SELECT datagrams_sent FROM synapse.gossip_status()", &[])
        .unwrap()
        .get(0)
}

fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(6);
    let window = Duration::from_secs(10);
    let mut baseline = None;
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>14}   goal: p50 <= 5 s, p99 <= 10 s, constant datagrams/node",
        "nodes", "p50", "p99", "trials", "datagrams/s"
    );
    for (n, port) in [(3usize, 8700u16), (5, 8800), (9, 8900)] {
        let cluster = Cluster::up(&format!("bench_gossip_{n}"), n, port);
        wait_for("all ALIVE", Duration::from_secs(60), || {
            (1..=n)
                .all(|m| cluster.everyone_sees(m, "ALIVE"))
                .then_some(())
        });
        // Steady-state traffic.
        let before: i64 = (1..=n).map(|m| sent(&cluster, m)).sum();
        std::thread::sleep(window);
        let after: i64 = (1..=n).map(|m| sent(&cluster, m)).sum();
        let per_node = (after - before) as f64 / n as f64 / window.as_secs_f64();

        let mut detections = Vec::new();
        for t in 0..trials {
            // Crash at a different phase of the probe schedule each time, in steady state:
            // right after a node rejoins, every member has just probed the others.
            std::thread::sleep(steady_pause(t));
            let victim = 2 + t % (n - 1);
            let crashed = Instant::now();
            cluster.crash(victim);
            wait_for(
                "every other node to see the crash",
                Duration::from_secs(60),
                || cluster.everyone_sees(victim, "FAILED").then_some(()),
            );
            detections.push(crashed.elapsed());
            let out = cluster.script(&["start", &victim.to_string()]);
            assert!(out.status.success(), "{}", text(&out));
            wait_for("the node back ALIVE", Duration::from_secs(60), || {
                cluster.everyone_sees(victim, "ALIVE").then_some(())
            });
        }
        detections.sort();
        let (p50, p99) = (percentile(&detections, 0.5), percentile(&detections, 0.99));
        println!(
            "{n:>5} {:>7.2}s {:>7.2}s {:>8} {per_node:>14.1}",
            p50.as_secs_f64(),
            p99.as_secs_f64(),
            detections.len()
        );
        let base = *baseline.get_or_insert(per_node);
        println!(
            "ratio {n} nodes: p50/5s = {:.2}, p99/10s = {:.2}, datagrams per node vs 3 nodes = {:.2}",
            p50.as_secs_f64() / 5.0,
            p99.as_secs_f64() / 10.0,
            per_node / base
        );
    }
}
