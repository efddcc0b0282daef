//! SWIM in a simulated network with simulated time: the same state machine as the gossip
//! worker, with every datagram encoded, authenticated and decoded, delivered after a
//! random latency or lost. Crashed members stop answering; lossy members drop a share
//! of everything they send and receive.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use synapse_core::swim::wire::{decode, encode, Key};
use synapse_core::swim::{Config, Event, State, Swim};

enum Kind {
    Tick,
    Deliver { from: SocketAddr, datagram: Vec<u8> },
}

struct Sim {
    now: Duration,
    nodes: Vec<Swim>,
    addrs: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    crashed: Vec<bool>,
    loss: Vec<f64>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    payloads: HashMap<u64, Kind>,
    next_id: u64,
    rng: u64,
    /// When each node's pending tick is due (older queued ticks are stale).
    tick_at: Vec<Duration>,
    key: Key,
    /// (observer, subject, state, time) of every state change.
    changes: Vec<(usize, String, State, Duration)>,
    sent: u64,
}

fn name(i: usize) -> String {
    format!("n{i}")
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 7946)))
            .collect();
        let list: Vec<(String, SocketAddr)> = (0..n).map(|i| (name(i), addrs[i])).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut s = Swim::new(
                    &name(i),
                    addrs[i],
                    0,
                    Config::default(),
                    Duration::ZERO,
                    seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1),
                );
                s.set_members(&list, Duration::ZERO);
                s
            })
            .collect();
        let mut sim = Sim {
            now: Duration::ZERO,
            nodes,
            index: addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            addrs,
            crashed: vec![false; n],
            loss: vec![0.0; n],
            queue: BinaryHeap::new(),
            payloads: HashMap::new(),
            next_id: 0,
            rng: seed | 1,
            tick_at: vec![Duration::MAX; n],
            key: Key::new(b"simulated cluster key".to_vec()),
            changes: Vec::new(),
            sent: 0,
        };
        for i in 0..n {
            // Start the members' clocks out of step.
            let at = Duration::from_micros(sim.random() % 1_000_000);
            sim.schedule_tick(i, at);
        }
        sim
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.random() as f64 / (1u64 << 53) as f64) < p
    }

    fn push(&mut self, at: Duration, node: usize, kind: Kind) {
        self.next_id += 1;
        self.payloads.insert(self.next_id, kind);
        self.queue.push(Reverse((at, self.next_id, node)));
    }

    fn schedule_tick(&mut self, node: usize, at: Duration) {
        if at < self.tick_at[node] || self.tick_at[node] <= self.now {
            self.tick_at[node] = at;
            self.push(at, node, Kind::Tick);
        }
    }

    /// Whether a popped tick is the node's pending one.
    fn take_tick(&mut self, node: usize, at: Duration) -> bool {
        if self.tick_at[node] == at {
            self.tick_at[node] = Duration::MAX;
            true
        } else {
            false
        }
    }

    fn flush(&mut self, i: usize) {
        let out = self.nodes[i].take_outbox();
        for (to, msg) in out {
            self.sent += 1;
            let Some(&j) = self.index.get(&to) else {
                continue;
            };
            let (li, lj) = (self.loss[i], self.loss[j]);
            if self.chance(li) || self.chance(lj) {
                continue;
            }
            let latency = Duration::from_micros(500 + self.random() % 4_500);
            let datagram = encode(&self.key, &msg);
            let at = self.now + latency;
            let from = self.addrs[i];
            self.push(at, j, Kind::Deliver { from, datagram });
        }
        for e in self.nodes[i].take_events() {
            if let Event::StateChanged { name, to, at, .. } = e {
                self.changes.push((i, name, to, at));
            }
        }
        let next = self.nodes[i]
            .next_timer()
            .max(self.now + Duration::from_millis(1));
        self.schedule_tick(i, next);
    }

    /// Runs until `until`, or until `stop` holds (checked after every event).
    fn run_until(&mut self, until: Duration, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        while let Some(Reverse((at, id, node))) = self.queue.pop() {
            if at > until {
                self.queue.push(Reverse((at, id, node)));
                self.now = until;
                return false;
            }
            self.now = at;
            let kind = self.payloads.remove(&id).expect("payload");
            if self.crashed[node] {
                continue;
            }
            match kind {
                Kind::Tick => {
                    if !self.take_tick(node, at) {
                        continue;
                    }
                    self.nodes[node].tick(at);
                }
                Kind::Deliver { from, datagram } => {
                    let msg = decode(&self.key, &datagram).expect("authentic");
                    self.nodes[node].receive(from, msg, at);
                }
            }
            self.flush(node);
            if stop(self) {
                return true;
            }
        }
        false
    }

    fn state(&self, observer: usize, subject: usize) -> State {
        self.nodes[observer].member(&name(subject)).unwrap().state
    }

    fn everyone_sees(&self, subject: usize, state: State) -> bool {
        (0..self.nodes.len())
            .filter(|&o| o != subject && !self.crashed[o])
            .all(|o| self.state(o, subject) == state)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Crashes one member after a warm-up; returns each observer's detection delay, and the
/// delay until all of them saw it FAILED.
fn detect(n: usize, seed: u64) -> (Vec<Duration>, Duration) {
    let mut sim = Sim::new(n, seed);
    sim.run_until(Duration::from_secs(10), |_| false);
    for o in 0..n {
        for s in 0..n {
            assert_eq!(sim.state(o, s), State::Alive, "warm-up: n{o} sees n{s}");
        }
    }
    let victim = n / 2;
    let crash = sim.now;
    sim.crashed[victim] = true;
    let done = sim.run_until(crash + Duration::from_secs(120), |s| {
        s.everyone_sees(victim, State::Failed)
    });
    assert!(done, "n={n}: not every member saw the crash within 120 s");
    let victim_name = name(victim);
    let mut first: HashMap<usize, Duration> = HashMap::new();
    for (o, subject, state, at) in &sim.changes {
        if *subject == victim_name && *state == State::Failed && *at >= crash {
            first.entry(*o).or_insert(*at - crash);
        }
    }
    let delays: Vec<Duration> = first.into_values().collect();
    assert_eq!(delays.len(), n - 1);
    (delays, sim.now - crash)
}

#[test]
fn a_crashed_member_is_declared_failed_by_all_others() {
    for (n, trials) in [(5usize, 20u64), (50, 5), (1000, 1)] {
        let mut observers = Vec::new();
        let mut everyone = Vec::new();
        for t in 0..trials {
            let (delays, all) = detect(n, 7 + t);
            observers.extend(delays);
            everyone.push(all);
        }
        observers.sort();
        everyone.sort();
        println!(
            "n={n:5}: detection per observer p50 {:.2?} p99 {:.2?}; by all: p50 {:.2?} max {:.2?} ({trials} trials)",
            percentile(&observers, 0.5),
            percentile(&observers, 0.99),
            percentile(&everyone, 0.5),
            everyone.last().unwrap(),
        );
    }
}

#[test]
fn a_member_losing_thirty_percent_of_its_packets_is_never_declared_failed() {
    for (n, seed) in [(5usize, 3u64), (20, 4), (50, 5)] {
        let mut sim = Sim::new(n, seed);
        let lossy = 1;
        sim.loss[lossy] = 0.3;
        sim.run_until(Duration::from_secs(300), |_| false);
        let lossy_name = name(lossy);
        let failed = sim
            .changes
            .iter()
            .filter(|(_, s, state, _)| *s == lossy_name && *state == State::Failed)
            .count();
        let suspected = sim
            .changes
            .iter()
            .filter(|(_, s, state, _)| *s == lossy_name && *state == State::Suspected)
            .count();
        println!(
            "n={n}: lossy member suspected {suspected} times in 300 s, declared failed {failed} times; its health score {}",
            sim.nodes[lossy].awareness()
        );
        assert_eq!(failed, 0, "n={n}");
        // And no healthy member was declared failed either.
        let others = sim
            .changes
            .iter()
            .filter(|(_, _, state, _)| *state == State::Failed)
            .count();
        assert_eq!(others, 0, "n={n}");
    }
}

#[test]
fn dissemination_reaches_everyone_in_logarithmic_periods() {
    for n in [5usize, 50, 1000] {
        let mut sim = Sim::new(n, 11);
        sim.run_until(Duration::from_secs(5), |_| false);
        let leaver = 0;
        let start = sim.now;
        sim.nodes[leaver].leave(start);
        sim.flush(leaver);
        sim.crashed[leaver] = true;
        let done = sim.run_until(start + Duration::from_secs(60), |s| {
            s.everyone_sees(leaver, State::Left)
        });
        assert!(done, "n={n}: the leave did not reach everyone");
        let periods =
            (sim.now - start).as_secs_f64() / Config::default().gossip_interval.as_secs_f64();
        let log2n = (n as f64).log2();
        println!(
            "n={n:5}: a leave reached every member in {:.1} gossip periods (log2 n = {log2n:.1}); {:.0} datagrams per member per second",
            periods,
            sim.sent as f64 / n as f64 / sim.now.as_secs_f64()
        );
        assert!(periods <= 2.0 * log2n + 4.0, "n={n}: {periods} periods");
    }
}

#[test]
fn partitioned_sides_fail_each_other_and_heal() {
    let n = 5;
    let mut sim = Sim::new(n, 21);
    sim.run_until(Duration::from_secs(5), |_| false);
    // Cut {0,1} from {2,3,4}: a member of each side drops everything to the other side.
    // (Modelled by crashing the other side from each side's point of view is not possible
    // in one network, so: loss 100% across the cut through a link filter.)
    let side = |i: usize| i < 2;
    let mut cut = CutSim { sim, side };
    cut.run(Duration::from_secs(60));
    for o in 0..n {
        for s in 0..n {
            let want = if side(o) == side(s) {
                State::Alive
            } else {
                State::Failed
            };
            assert_eq!(cut.sim.state(o, s), want, "n{o} about n{s}");
        }
    }
    assert!(!cut.sim.nodes[0].partition().majority);
    assert!(cut.sim.nodes[3].partition().majority);
    // Heal: failed members are probed again now and then, refute, and come back.
    let healed = cut.sim.now;
    let done = cut.sim.run_until(healed + Duration::from_secs(60), |s| {
        (0..n).all(|o| (0..n).all(|x| s.state(o, x) == State::Alive))
    });
    assert!(done, "the sides did not find each other again");
    println!("partition healed in {:.2?}", cut.sim.now - healed);
    assert!(cut.sim.nodes[0].partition().majority);
}

/// A simulation whose network drops every datagram between the two sides of a cut.
struct CutSim<F: Fn(usize) -> bool> {
    sim: Sim,
    side: F,
}

impl<F: Fn(usize) -> bool> CutSim<F> {
    fn run(&mut self, for_: Duration) {
        let until = self.sim.now + for_;
        while let Some(Reverse((at, id, node))) = self.sim.queue.pop() {
            if at > until {
                self.sim.queue.push(Reverse((at, id, node)));
                self.sim.now = until;
                return;
            }
            self.sim.now = at;
            let kind = self.sim.payloads.remove(&id).expect("payload");
            match kind {
                Kind::Tick => {
                    if !self.sim.take_tick(node, at) {
                        continue;
                    }
                    self.sim.nodes[node].tick(at)
                }
                Kind::Deliver { from, datagram } => {
                    let sender = self.sim.index[&from];
                    if (self.side)(sender) != (self.side)(node) {
                        continue;
                    }
                    let msg = decode(&self.sim.key, &datagram).expect("authentic");
                    self.sim.nodes[node].receive(from, msg, at);
                }
            }
            self.sim.flush(node);
        }
    }
}
