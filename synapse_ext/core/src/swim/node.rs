//! One member's SWIM state machine.
//!
//! Time is a [`Duration`] since an arbitrary origin, given with every call. The caller
//! feeds received messages to [`Swim::receive`], calls [`Swim::tick`] when
//! [`Swim::next_timer`] is due, and sends what [`Swim::take_outbox`] returns.
//!
//! The protocol, per probe period (scaled by the local health score, see below):
//! 1. ping the next member in a shuffled round-robin order;
//! 2. without an ack after the probe timeout, ask `indirect_checks` other members to ping
//!    it (they answer a nack when they hear nothing either, so we can tell a dead target
//!    from our own slowness);
//! 3. without any ack by the end of the period, suspect it. A suspicion becomes a failure
//!    after a timeout that starts at `suspicion_max_timeout_mult` times the minimum and
//!    falls towards the minimum (`suspicion_mult * max(1, log10 n) * probe_interval`) as
//!    other members independently confirm it (Lifeguard's dynamic suspicion).
//!
//! State changes travel piggybacked on every message, and in gossip messages to a few
//! random members per gossip interval. A member refutes a suspicion (or a failure, or a
//! stale leave) about itself by raising its incarnation number; the precedence rules make
//! the newest incarnation win everywhere.
//!
//! Lifeguard's local health: a member whose probes fail without the nacks it expected
//! (or that has to refute suspicions) is probably the slow one; it raises its health
//! score, which stretches its probe interval and timeout, so it does not accuse members
//! that are fine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::broadcast::{retransmit_limit, Broadcasts};

/// A member's state as one member sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Alive,
    Suspected,
    Failed,
    Left,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "ALIVE",
            State::Suspected => "SUSPECTED",
            State::Failed => "FAILED",
            State::Left => "LEFT",
        }
    }
}

/// Protocol parameters; the defaults are memberlist's LAN profile.
#[derive(Clone, Debug)]
pub struct Config {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub indirect_checks: usize,
    pub suspicion_mult: u32,
    pub suspicion_max_timeout_mult: u32,
    pub retransmit_mult: u32,
    pub gossip_interval: Duration,
    pub gossip_nodes: usize,
    /// Largest local health score (probe periods stretch up to `awareness_max` times).
    pub awareness_max: u32,
    /// Most updates piggybacked on one message.
    pub max_piggyback: usize,
    /// Every this many probe periods, one failed member is pinged as well, so members
    /// separated by a partition find each other again once it heals.
    pub reprobe_failed_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 3,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            awareness_max: 8,
            max_piggyback: 12,
            reprobe_failed_every: 3,
        }
    }
}

/// A state change about one member, as gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub name: String,
    pub state: State,
    pub incarnation: u64,
    /// Who declared it (a suspicion's confirmations count distinct declarers).
    pub by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// "Are you alive?" `target` names the intended receiver.
    Ping {
        seq: u64,
        target: String,
    },
    /// "Please ping `target` for me."
    PingReq {
        seq: u64,
        target: String,
    },
    Ack {
        seq: u64,
    },
    /// From an intermediary: `target` did not answer me in time either.
    Nack {
        seq: u64,
    },
    /// Only piggybacked updates.
    Gossip,
}

/// One datagram's content. Every message also says the sender is alive at `incarnation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: String,
    pub incarnation: u64,
    pub body: Body,
    pub updates: Vec<Update>,
}

/// A member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    pub state: State,
    pub incarnation: u64,
    /// When this node saw the state change.
    pub since: Duration,
}

/// Whether this node sees a majority of the members up (ALIVE or SUSPECTED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub majority: bool,
    pub up: usize,
    pub members: usize,
    pub since: Duration,
}

/// Something the embedding may want to log or record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    StateChanged {
        name: String,
        from: State,
        to: State,
        incarnation: u64,
        at: Duration,
    },
    /// This node refuted a suspicion about itself.
    Refuted {
        incarnation: u64,
        at: Duration,
    },
    PartitionChanged(Partition),
}

struct Probe {
    seq: u64,
    target: String,
    /// When the indirect checks go out.
    indirect_at: Duration,
    /// End of the probe period: no ack by then means suspicion.
    end: Duration,
    acked: bool,
    indirect_sent: bool,
    expected_nacks: usize,
    nacks: usize,
    /// A ping to a failed member, to notice it is back: no suspicion if it stays silent.
    revival: bool,
}

struct Relay {
    requester: SocketAddr,
    seq: u64,
    nack_at: Duration,
    nacked: bool,
    expires: Duration,
}

struct Suspicion {
    incarnation: u64,
    start: Duration,
    /// Whether this node's own suspicion was passed on (once).
    mine: bool,
    /// Other members that suspect it too.
    confirmations: BTreeSet<String>,
    min: Duration,
    max: Duration,
}

impl Suspicion {
    /// Lifeguard: from `max` down to `min` as confirmations arrive, logarithmically; `k`
    /// confirmations reach the minimum.
    fn deadline(&self, k: u32) -> Duration {
        let c = self.confirmations.len() as f64;
        let frac = if k == 0 {
            1.0
        } else {
            ((c + 1.0).ln() / (k as f64 + 1.0).ln()).min(1.0)
        };
        let span = self.max.saturating_sub(self.min).as_secs_f64();
        let timeout = self.max.as_secs_f64() - span * frac;
        self.start + Duration::from_secs_f64(timeout.max(self.min.as_secs_f64()))
    }
}

/// A small deterministic PRNG (xorshift64*): shuffles and random picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// Up to `k` distinct picks from `v`.
    fn pick<T: Clone>(&mut self, v: &[T], k: usize) -> Vec<T> {
        let mut v = v.to_vec();
        self.shuffle(&mut v);
        v.truncate(k);
        v
    }
}

/// One member's view of the group and its protocol state.
pub struct Swim {
    me: String,
    incarnation: u64,
    config: Config,
    members: BTreeMap<String, Member>,
    by_addr: HashMap<SocketAddr, String>,
    leaving: bool,
    rng: Rng,
    seq: u64,
    probe_order: Vec<String>,
    probe: Option<Probe>,
    next_probe: Duration,
    probes_started: u64,
    relays: HashMap<u64, Relay>,
    suspicions: HashMap<String, Suspicion>,
    broadcasts: Broadcasts,
    next_gossip: Duration,
    awareness: u32,
    partition: Partition,
    outbox: Vec<(SocketAddr, Message)>,
    events: Vec<Event>,
    /// Newer facts for the sender of stale claims, gathered while handling its message.
    corrections: Vec<Update>,
    /// Members ALIVE or SUSPECTED (kept up to date by `change`).
    up: usize,
    /// The members the catalog lists; only they are heard, and only they count.
    listed: BTreeSet<String>,
}

impl Swim {
    /// A member named `me` at `addr`, starting at `incarnation` (one above any it used
    /// before, so that it is seen alive again after a restart).
    pub fn new(
        me: &str,
        addr: SocketAddr,
        incarnation: u64,
        config: Config,
        now: Duration,
        seed: u64,
    ) -> Swim {
        let mut swim = Swim {
            me: me.to_owned(),
            incarnation,
            members: BTreeMap::new(),
            by_addr: HashMap::new(),
            leaving: false,
            rng: Rng(seed | 1),
            seq: 0,
            probe_order: Vec::new(),
            probe: None,
            next_probe: now + config.probe_interval,
            probes_started: 0,
            relays: HashMap::new(),
            suspicions: HashMap::new(),
            broadcasts: Broadcasts::default(),
            next_gossip: now + config.gossip_interval,
            awareness: 0,
            partition: Partition {
                majority: true,
                up: 1,
                members: 1,
                since: now,
            },
            outbox: Vec::new(),
            events: Vec::new(),
            corrections: Vec::new(),
            up: 0,
            listed: BTreeSet::from([me.to_owned()]),
            config,
        };
        swim.insert(me, addr, now);
        swim
    }

    fn insert(&mut self, name: &str, addr: SocketAddr, now: Duration) {
        let incarnation = if name == self.me { self.incarnation } else { 0 };
        self.up += 1;
        self.members.insert(
            name.to_owned(),
            Member {
                name: name.to_owned(),
                addr,
                state: State::Alive,
                incarnation,
                since: now,
            },
        );
        self.by_addr.insert(addr, name.to_owned());
    }

    pub fn name(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The local health score (0 = healthy).
    pub fn awareness(&self) -> u32 {
        self.awareness
    }

    /// Sets the member list (from the Raft catalog). New members start ALIVE; members no
    /// longer listed are LEFT (they were removed); a LEFT member listed again is ALIVE.
    pub fn set_members(&mut self, list: &[(String, SocketAddr)], now: Duration) {
        let listed: BTreeSet<String> = list.iter().map(|(n, _)| n.clone()).collect();
        for (name, addr) in list {
            match self.members.get_mut(name) {
                None => self.insert(name, *addr, now),
                Some(m) => {
                    if m.addr != *addr {
                        self.by_addr.remove(&m.addr);
                        m.addr = *addr;
                        self.by_addr.insert(*addr, name.clone());
                    }
                    // Removed earlier and added again: back, until SWIM says otherwise.
                    let returned = !self.listed.contains(name) && *name != self.me;
                    if returned && m.state == State::Left {
                        let incarnation = m.incarnation;
                        self.change(name, State::Alive, incarnation, now);
                    }
                }
            }
        }
        let gone: Vec<(String, u64)> = self
            .members
            .values()
            .filter(|m| m.name != self.me && m.state != State::Left)
            .filter(|m| !listed.contains(&m.name))
            .map(|m| (m.name.clone(), m.incarnation))
            .collect();
        for (name, incarnation) in gone {
            self.suspicions.remove(&name);
            self.change(&name, State::Left, incarnation, now);
        }
        self.listed = listed;
        self.listed.insert(self.me.clone());
        self.update_partition(now);
    }

    /// Every member, this one included, as this node sees them.
    pub fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// Messages to send, with their destinations.
    pub fn take_outbox(&mut self) -> Vec<(SocketAddr, Message)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// When [`Swim::tick`] should run next.
    pub fn next_timer(&self) -> Duration {
        let mut next = self.next_probe.min(self.next_gossip);
        if let Some(p) = &self.probe {
            next = next.min(if p.indirect_sent || p.acked {
                p.end
            } else {
                p.indirect_at
            });
        }
        for r in self.relays.values() {
            next = next.min(if r.nacked { r.expires } else { r.nack_at });
        }
        let k = self.confirmations_needed();
        for s in self.suspicions.values() {
            next = next.min(s.deadline(k));
        }
        next
    }

    /// Leaves the group gracefully: tells a few members, who spread it.
    pub fn leave(&mut self, now: Duration) {
        self.leaving = true;
        let me = self.me.clone();
        let incarnation = self.incarnation;
        self.change(&me, State::Left, incarnation, now);
        self.broadcasts.push(Update {
            name: me.clone(),
            state: State::Left,
            incarnation,
            by: me,
        });
        let peers = self.peers(|s| matches!(s, State::Alive | State::Suspected));
        let fanout = self.config.gossip_nodes.max(self.config.indirect_checks);
        for peer in self.rng.pick(&peers, fanout) {
            self.send(peer, Body::Gossip);
        }
    }

    /// Runs the timers due at `now`.
    pub fn tick(&mut self, now: Duration) {
        if self.leaving {
            return;
        }
        self.run_probe(now);
        self.run_relays(now);
        self.run_suspicions(now);
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            if !self.broadcasts.is_empty() {
                let peers = self.peers(|s| matches!(s, State::Alive | State::Suspected));
                for peer in self.rng.pick(&peers, self.config.gossip_nodes) {
                    self.send(peer, Body::Gossip);
                }
            }
        }
    }

    /// Handles a message that arrived from `from` (already authenticated).
    pub fn receive(&mut self, from: SocketAddr, msg: Message, now: Duration) {
        if self.leaving {
            return;
        }
        if !self.listed.contains(&msg.from) {
            return; // not a member (yet): the catalog decides who is
        }
        // The sender says it is alive at its incarnation.
        self.apply(
            Update {
                name: msg.from.clone(),
                state: State::Alive,
                incarnation: msg.incarnation,
                by: msg.from.clone(),
            },
            now,
        );
        for update in msg.updates {
            self.apply(update, now);
        }
        match msg.body {
            Body::Ping { seq, target } => {
                if target == self.me {
                    self.send(from, Body::Ack { seq });
                }
            }
            Body::PingReq { seq, target } => {
                if let Some(addr) = self.members.get(&target).map(|m| m.addr) {
                    self.seq += 1;
                    let our = self.seq;
                    let timeout = self.scaled(self.config.probe_timeout);
                    self.relays.insert(
                        our,
                        Relay {
                            requester: from,
                            seq,
                            nack_at: now + timeout.mul_f64(0.8),
                            nacked: false,
                            expires: now + self.scaled(self.config.probe_interval),
                        },
                    );
                    self.send(addr, Body::Ping { seq: our, target });
                }
            }
            Body::Ack { seq } => {
                if let Some(relay) = self.relays.remove(&seq) {
                    self.send(relay.requester, Body::Ack { seq: relay.seq });
                } else if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    if !p.acked {
                        p.acked = true;
                        if !p.indirect_sent {
                            self.awareness = self.awareness.saturating_sub(1);
                        }
                    }
                }
            }
            Body::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Body::Gossip => {}
        }
        if !self.corrections.is_empty() {
            // The sender believes an old suspicion or failure: tell it what we know.
            let corrections = std::mem::take(&mut self.corrections);
            self.send_with(from, Body::Gossip, corrections);
        }
        self.update_partition(now);
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.awareness + 1)
    }

    fn peers(&self, wanted: impl Fn(State) -> bool) -> Vec<SocketAddr> {
        self.members
            .values()
            .filter(|m| m.name != self.me && wanted(m.state))
            .map(|m| m.addr)
            .collect()
    }

    fn live_count(&self) -> usize {
        self.up
    }

    /// Lifeguard's K: independent suspicions that bring the timeout to its minimum; none
    /// when too few members could give them.
    fn confirmations_needed(&self) -> u32 {
        let k = self.config.suspicion_mult.saturating_sub(2);
        if (self.live_count() as u32).saturating_sub(2) < k {
            0
        } else {
            k
        }
    }

    fn run_probe(&mut self, now: Duration) {
        if let Some(p) = &mut self.probe {
            if !p.acked && !p.indirect_sent && now >= p.indirect_at {
                p.indirect_sent = true;
                if !p.revival {
                    let (seq, target) = (p.seq, p.target.clone());
                    let helpers: Vec<SocketAddr> = self
                        .members
                        .values()
                        .filter(|m| m.name != self.me && m.name != target)
                        .filter(|m| m.state == State::Alive)
                        .map(|m| m.addr)
                        .collect();
                    let helpers = self.rng.pick(&helpers, self.config.indirect_checks);
                    if let Some(p) = &mut self.probe {
                        p.expected_nacks = helpers.len();
                    }
                    for helper in helpers {
                        self.send(
                            helper,
                            Body::PingReq {
                                seq,
                                target: target.clone(),
                            },
                        );
                    }
                }
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.end) {
            let p = self.probe.take().expect("checked");
            if !p.acked && !p.revival {
                // Lifeguard: missing nacks mean we are the slow one, not the target.
                let penalty = if p.expected_nacks > 0 {
                    p.expected_nacks.saturating_sub(p.nacks) as u32
                } else {
                    1
                };
                self.awareness = (self.awareness + penalty).min(self.config.awareness_max - 1);
                if let Some(m) = self.members.get(&p.target) {
                    // Also when already suspected: our failed probe is a confirmation.
                    if matches!(m.state, State::Alive | State::Suspected) {
                        let incarnation = m.incarnation;
                        let me = self.me.clone();
                        self.apply(
                            Update {
                                name: p.target,
                                state: State::Suspected,
                                incarnation,
                                by: me,
                            },
                            now,
                        );
                    }
                }
            }
        }
        if self.probe.is_none() && now >= self.next_probe {
            self.next_probe = now + self.scaled(self.config.probe_interval);
            self.probes_started += 1;
            let revive = self.config.reprobe_failed_every > 0
                && self
                    .probes_started
                    .is_multiple_of(self.config.reprobe_failed_every as u64);
            let target = if revive {
                let failed: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.state == State::Failed)
                    .map(|m| m.name.clone())
                    .collect();
                self.rng
                    .pick(&failed, 1)
                    .pop()
                    .map(|t| (t, true))
                    .or_else(|| self.next_target().map(|t| (t, false)))
            } else {
                self.next_target().map(|t| (t, false))
            };
            if let Some((target, revival)) = target {
                self.seq += 1;
                let seq = self.seq;
                let addr = self.members[&target].addr;
                self.probe = Some(Probe {
                    seq,
                    target: target.clone(),
                    indirect_at: now + self.scaled(self.config.probe_timeout),
                    end: self.next_probe,
                    acked: false,
                    indirect_sent: false,
                    expected_nacks: 0,
                    nacks: 0,
                    revival,
                });
                self.send(addr, Body::Ping { seq, target });
            }
        }
    }

    /// The next member to probe, in a shuffled round-robin over the live members.
    fn next_target(&mut self) -> Option<String> {
        loop {
            if self.probe_order.is_empty() {
                let mut order: Vec<String> = self
                    .members
                    .values()
                    .filter(|m| m.name != self.me)
                    .filter(|m| matches!(m.state, State::Alive | State::Suspected))
                    .map(|m| m.name.clone())
                    .collect();
                if order.is_empty() {
                    return None;
                }
                self.rng.shuffle(&mut order);
                self.probe_order = order;
            }
            let name = self.probe_order.pop().expect("not empty");
            if self
                .members
                .get(&name)
                .is_some_and(|m| matches!(m.state, State::Alive | State::Suspected))
            {
                return Some(name);
            }
        }
    }

    fn run_relays(&mut self, now: Duration) {
        let mut nacks = Vec::new();
        self.relays.retain(|_, r| {
            if !r.nacked && now >= r.nack_at {
                r.nacked = true;
                nacks.push((r.requester, r.seq));
            }
            now < r.expires
        });
        for (to, seq) in nacks {
            self.send(to, Body::Nack { seq });
        }
    }

    fn run_suspicions(&mut self, now: Duration) {
        let k = self.confirmations_needed();
        let due: Vec<(String, u64)> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now >= s.deadline(k))
            .map(|(n, s)| (n.clone(), s.incarnation))
            .collect();
        for (name, incarnation) in due {
            self.suspicions.remove(&name);
            let me = self.me.clone();
            self.apply(
                Update {
                    name,
                    state: State::Failed,
                    incarnation,
                    by: me,
                },
                now,
            );
        }
    }

    /// Applies an update by SWIM's precedence rules; accepted ones are passed on.
    fn apply(&mut self, u: Update, now: Duration) {
        if u.name == self.me {
            self.about_me(&u, now);
            return;
        }
        if !self.listed.contains(&u.name) {
            return; // removed from the cluster: nothing to learn about it
        }
        let Some(m) = self.members.get(&u.name) else {
            return;
        };
        let (state, inc) = (m.state, m.incarnation);
        if u.incarnation < inc && u.state != State::Alive && u.by != self.me {
            self.corrections.push(Update {
                name: u.name.clone(),
                state,
                incarnation: inc,
                by: self.me.clone(),
            });
        }
        let accept = match u.state {
            // A LEFT member comes back only with a higher incarnation.
            State::Alive => u.incarnation > inc,
            State::Suspected => {
                if state == State::Suspected && u.incarnation == inc {
                    if let Some(s) = self.suspicions.get_mut(&u.name) {
                        let new = if u.by == self.me {
                            !std::mem::replace(&mut s.mine, true)
                        } else {
                            s.confirmations.insert(u.by.clone())
                        };
                        if new {
                            // A new independent suspicion: pass it on.
                            self.broadcasts.push(u);
                        }
                    }
                    return;
                }
                match state {
                    State::Alive => u.incarnation >= inc,
                    State::Suspected => u.incarnation > inc,
                    State::Failed | State::Left => false,
                }
            }
            State::Failed => u.incarnation >= inc && !matches!(state, State::Failed | State::Left),
            State::Left => u.incarnation >= inc && state != State::Left,
        };
        if !accept {
            return;
        }
        if u.state == State::Suspected {
            let n = self.live_count().max(1) as f64;
            let min = self
                .config
                .probe_interval
                .mul_f64(self.config.suspicion_mult as f64 * n.log10().max(1.0));
            let max = min * self.config.suspicion_max_timeout_mult;
            let mut confirmations = BTreeSet::new();
            let mine = u.by == self.me;
            if !mine {
                confirmations.insert(u.by.clone());
            }
            self.suspicions.insert(
                u.name.clone(),
                Suspicion {
                    incarnation: u.incarnation,
                    start: now,
                    mine,
                    confirmations,
                    min,
                    max,
                },
            );
        } else {
            self.suspicions.remove(&u.name);
        }
        self.change(&u.name, u.state, u.incarnation, now);
        self.broadcasts.push(u);
        self.update_partition(now);
    }

    /// Someone says something about this node: refute anything but "alive at our
    /// incarnation or below" by raising the incarnation above theirs.
    fn about_me(&mut self, u: &Update, now: Duration) {
        if self.leaving {
            return;
        }
        let refute = match u.state {
            State::Alive => u.incarnation > self.incarnation,
            _ => u.incarnation >= self.incarnation,
        };
        if !refute {
            if u.state != State::Alive && u.by != self.me {
                // A stale suspicion: the refutation was missed somewhere.
                self.corrections.push(Update {
                    name: self.me.clone(),
                    state: State::Alive,
                    incarnation: self.incarnation,
                    by: self.me.clone(),
                });
            }
            return;
        }
        if u.state != State::Alive {
            self.awareness = (self.awareness + 1).min(self.config.awareness_max - 1);
        }
        self.incarnation = u.incarnation + 1;
        let me = self.me.clone();
        if let Some(m) = self.members.get_mut(&me) {
            m.incarnation = self.incarnation;
        }
        self.events.push(Event::Refuted {
            incarnation: self.incarnation,
            at: now,
        });
        self.broadcasts.push(Update {
            name: me.clone(),
            state: State::Alive,
            incarnation: self.incarnation,
            by: me,
        });
    }

    fn change(&mut self, name: &str, to: State, incarnation: u64, now: Duration) {
        let Some(m) = self.members.get_mut(name) else {
            return;
        };
        let from = m.state;
        m.incarnation = incarnation;
        if from != to {
            let is_up = |s: State| matches!(s, State::Alive | State::Suspected);
            self.up = self.up + usize::from(is_up(to)) - usize::from(is_up(from));
            m.state = to;
            m.since = now;
            self.events.push(Event::StateChanged {
                name: name.to_owned(),
                from,
                to,
                incarnation,
                at: now,
            });
        }
    }

    fn update_partition(&mut self, now: Duration) {
        // Members that left cleanly still count (they may come back); removed ones do not.
        let members = self.listed.len().max(1);
        let up = self.live_count().clamp(1, members);
        let majority = up * 2 > members;
        if majority != self.partition.majority {
            self.partition = Partition {
                majority,
                up,
                members,
                since: now,
            };
            self.events.push(Event::PartitionChanged(self.partition));
        } else {
            self.partition.up = up;
            self.partition.members = members;
        }
    }

    /// Queues `body` to `to` with piggybacked updates: first what we believe about the
    /// receiver when it is not "alive" (so it can refute at once), then the queue.
    fn send(&mut self, to: SocketAddr, body: Body) {
        self.send_with(to, body, Vec::new());
    }

    /// [`Swim::send`] with `first` ahead of everything else.
    fn send_with(&mut self, to: SocketAddr, body: Body, first: Vec<Update>) {
        let mut updates = first;
        if let Some(m) = self.by_addr.get(&to).and_then(|n| self.members.get(n)) {
            if m.state != State::Alive {
                updates.push(Update {
                    name: m.name.clone(),
                    state: m.state,
                    incarnation: m.incarnation,
                    by: self.me.clone(),
                });
            }
        }
        let limit = retransmit_limit(self.config.retransmit_mult, self.members.len());
        let room = self.config.max_piggyback.saturating_sub(updates.len());
        updates.extend(self.broadcasts.take(room, limit));
        self.outbox.push((
            to,
            Message {
                from: self.me.clone(),
                incarnation: self.incarnation,
                body,
                updates,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 7000 + i))
    }

    fn pair() -> (Swim, Swim) {
        let list = vec![("a".to_string(), addr(1)), ("b".to_string(), addr(2))];
        let mut a = Swim::new("a", addr(1), 0, Config::default(), Duration::ZERO, 1);
        let mut b = Swim::new("b", addr(2), 0, Config::default(), Duration::ZERO, 2);
        a.set_members(&list, Duration::ZERO);
        b.set_members(&list, Duration::ZERO);
        (a, b)
    }

    #[test]
    fn a_suspicion_about_oneself_is_refuted_with_a_higher_incarnation() {
        let (_, mut b) = pair();
        let msg = Message {
            from: "a".into(),
            incarnation: 0,
            body: Body::Gossip,
            updates: vec![Update {
                name: "b".into(),
                state: State::Suspected,
                incarnation: 0,
                by: "a".into(),
            }],
        };
        b.receive(addr(1), msg, Duration::from_secs(1));
        assert_eq!(b.incarnation(), 1);
        assert_eq!(b.awareness(), 1);
        b.tick(Duration::from_secs(2));
        let out = b.take_outbox();
        assert!(out.iter().any(|(_, m)| m
            .updates
            .iter()
            .any(|u| u.name == "b" && u.state == State::Alive && u.incarnation == 1)));
    }

    #[test]
    fn precedence_follows_incarnations() {
        let (mut a, _) = pair();
        let t = Duration::from_secs(1);
        let up = |state, incarnation| Update {
            name: "b".into(),
            state,
            incarnation,
            by: "c".into(),
        };
        a.apply(up(State::Suspected, 0), t);
        assert_eq!(a.member("b").unwrap().state, State::Suspected);
        a.apply(up(State::Alive, 0), t);
        assert_eq!(
            a.member("b").unwrap().state,
            State::Suspected,
            "same incarnation"
        );
        a.apply(up(State::Alive, 1), t);
        assert_eq!(a.member("b").unwrap().state, State::Alive);
        a.apply(up(State::Failed, 1), t);
        assert_eq!(a.member("b").unwrap().state, State::Failed);
        a.apply(up(State::Suspected, 5), t);
        assert_eq!(
            a.member("b").unwrap().state,
            State::Failed,
            "no suspicion of the dead"
        );
        a.apply(up(State::Alive, 2), t);
        assert_eq!(a.member("b").unwrap().state, State::Alive);
        a.apply(up(State::Left, 2), t);
        assert_eq!(a.member("b").unwrap().state, State::Left);
        a.apply(up(State::Failed, 9), t);
        assert_eq!(a.member("b").unwrap().state, State::Left);
    }

    #[test]
    fn removed_members_are_left_and_come_back_when_listed_again() {
        let (mut a, _) = pair();
        a.set_members(&[("a".into(), addr(1))], Duration::from_secs(1));
        assert_eq!(a.member("b").unwrap().state, State::Left);
        assert!(a.partition().majority, "removed members do not count");
        assert_eq!(a.partition().members, 1);
        a.set_members(
            &[("a".into(), addr(1)), ("b".into(), addr(2))],
            Duration::from_secs(2),
        );
        assert_eq!(a.member("b").unwrap().state, State::Alive);
    }
}
