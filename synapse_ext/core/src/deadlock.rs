//! Distributed deadlock detection: the global wait-for graph and its victims.
//!
//! Every node reports its lock waits as edges between transactions (a distributed
//! transaction is one vertex on every node, named by its gxid; a local one is named by its
//! node and backend). A cycle whose edges all come from one node is PostgreSQL's own to
//! break (its detector runs after `deadlock_timeout`); a cycle that spans nodes is
//! invisible to every node alone, so the detector breaks it by cancelling the *youngest*
//! transaction of the cycle (latest start; ties by name) — the one that has done the
//! least work, as in Citus and CockroachDB.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;
use serde::{Deserialize, Serialize};

/// A transaction in the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Txn {
    /// Its gxid, or `<node>:<pid>` for a transaction local to one node.
    pub name: String,
    /// When it started (Unix µs).
    pub started_us: i64,
}

/// "`waiter` waits for a lock `blocker` holds", as `node` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEdge {
    pub node: String,
    pub waiter: Txn,
    pub waiter_pid: i32,
    pub blocker: Txn,
    pub blocker_pid: i32,
    /// One of the two transactions has several sessions on `node` (a statement writing
    /// on several nodes reaches this node's shards through a connection of its own),
    /// one of which waits for the other's answer, not for a lock: PostgreSQL cannot see
    /// a cycle through it even on one node.
    #[serde(default)]
    pub hidden: bool,
}

/// A cycle that spans nodes, and the transaction to cancel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// The transactions in wait order, starting with the victim: each waits for the next,
    /// the last for the first.
    pub members: Vec<String>,
    /// The nodes whose edges make up the cycle.
    pub nodes: Vec<String>,
    pub victim: Txn,
}

impl Cycle {
    /// The cycle in words, for the victim's error message and `synapse.deadlocks`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<&str> = self.members.iter().map(String::as_str).collect();
        if let Some(first) = parts.first().copied() {
            parts.push(first);
        }
        format!(
            "{} (nodes {})",
            parts.join(" waits for "),
            self.nodes.join(", ")
        )
    }
}

/// The cycles of `edges` that span more than one node (or pass through a session waiting
/// for another session of its transaction, see [`WaitEdge::hidden`]), one per strongly
/// connected component, each with its youngest transaction as the victim.
pub fn find_cycles(edges: &[WaitEdge]) -> Vec<Cycle> {
    let mut txns: BTreeMap<&str, &Txn> = BTreeMap::new();
    let mut graph: DiGraphMap<&str, ()> = DiGraphMap::new();
    // Which nodes reported each edge.
    let mut reported: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut cycles = Vec::new();
    for e in edges {
        if e.waiter.name == e.blocker.name {
            // A transaction waiting for itself: across its sessions on several nodes that is
            // no cycle; but a session of it waiting for a lock that another session of it
            // holds on the same node, which waits for the first one's answer, never ends.
            if e.hidden && !cycles.iter().any(|c: &Cycle| c.victim == e.waiter) {
                cycles.push(Cycle {
                    members: vec![e.waiter.name.clone()],
                    nodes: vec![e.node.clone()],
                    victim: e.waiter.clone(),
                });
            }
            continue;
        }
        txns.insert(&e.waiter.name, &e.waiter);
        txns.insert(&e.blocker.name, &e.blocker);
        graph.add_edge(&e.waiter.name, &e.blocker.name, ());
        reported
            .entry((&e.waiter.name, &e.blocker.name))
            .or_default()
            .insert(&e.node);
    }
    for component in tarjan_scc(&graph) {
        if component.len() < 2 {
            continue;
        }
        let members: BTreeSet<&str> = component.iter().copied().collect();
        let nodes: BTreeSet<&str> = reported
            .iter()
            .filter(|((a, b), _)| members.contains(a) && members.contains(b))
            .flat_map(|(_, n)| n.iter().copied())
            .collect();
        let hidden = edges.iter().any(|e| {
            e.hidden
                && members.contains(e.waiter.name.as_str())
                && members.contains(e.blocker.name.as_str())
        });
        if nodes.len() < 2 && !hidden {
            continue;
        }
        let victim = members
            .iter()
            .map(|m| txns[m])
            .max_by(|a, b| a.started_us.cmp(&b.started_us).then(a.name.cmp(&b.name)))
            .expect("a component has members");
        let path = cycle_through(&graph, &members, &victim.name);
        cycles.push(Cycle {
            members: path.into_iter().map(str::to_owned).collect(),
            nodes: nodes.into_iter().map(str::to_owned).collect(),
            victim: victim.clone(),
        });
    }
    cycles.sort_by(|a, b| a.victim.cmp(&b.victim));
    cycles
}

/// A shortest cycle from `start` back to itself inside `members` (breadth first).
fn cycle_through<'a>(
    graph: &DiGraphMap<&'a str, ()>,
    members: &BTreeSet<&'a str>,
    start: &'a str,
) -> Vec<&'a str> {
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.neighbors(at) {
            if !members.contains(next) {
                continue;
            }
            if next == start {
                let mut path = vec![at];
                let mut cur = at;
                while cur != start {
                    cur = previous[cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if !previous.contains_key(next) {
                previous.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    vec![start]
}

/// Whether `victim` is still in a cycle spanning nodes in `edges` (the re-check before
/// cancelling: a cycle may have resolved itself between two scans).
pub fn still_deadlocked(edges: &[WaitEdge], victim: &str) -> bool {
    find_cycles(edges)
        .iter()
        .any(|c| c.members.iter().any(|m| m == victim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, started_us: i64) -> Txn {
        Txn {
            name: name.into(),
            started_us,
        }
    }

    fn edge(node: &str, waiter: &Txn, blocker: &Txn) -> WaitEdge {
        WaitEdge {
            node: node.into(),
            waiter: waiter.clone(),
            waiter_pid: 1,
            blocker: blocker.clone(),
            blocker_pid: 2,
            hidden: false,
        }
    }

    fn hidden(node: &str, waiter: &Txn, blocker: &Txn) -> WaitEdge {
        WaitEdge {
            hidden: true,
            ..edge(node, waiter, blocker)
        }
    }

    #[test]
    fn a_cycle_through_a_transactions_own_sessions_on_one_node_is_broken() {
        let (g, t1) = (t("g1", 10), t("node1:77", 20));
        // g's session on its own shards waits for t1, which waits for g's coordinator
        // session (waiting for g's other session's answer): one node, no lock cycle that
        // PostgreSQL could see.
        let cycles = find_cycles(&[hidden("node1", &g, &t1), hidden("node1", &t1, &g)]);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].victim, t1);
        // g's session waits for a lock its coordinator session holds: g never ends.
        let cycles = find_cycles(&[hidden("node1", &g, &g)]);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].victim, g);
        assert_eq!(cycles[0].describe(), "g1 waits for g1 (nodes node1)");
        assert!(still_deadlocked(&[hidden("node1", &g, &g)], "g1"));
    }

    #[test]
    fn a_two_node_cycle_cancels_the_youngest() {
        let (a, b) = (t("g1", 100), t("g2", 200));
        let edges = [edge("node2", &a, &b), edge("node3", &b, &a)];
        let cycles = find_cycles(&edges);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].victim, b);
        assert_eq!(cycles[0].members, vec!["g2", "g1"]);
        assert_eq!(cycles[0].nodes, vec!["node2", "node3"]);
        assert_eq!(
            cycles[0].describe(),
            "g2 waits for g1 waits for g2 (nodes node2, node3)"
        );
        assert!(still_deadlocked(&edges, "g2"));
        assert!(!still_deadlocked(&edges[..1], "g2"));
    }

    #[test]
    fn a_three_node_cycle_with_a_bystander() {
        let (a, b, c, d) = (t("g1", 300), t("g2", 100), t("g3", 200), t("g4", 999));
        let edges = [
            edge("node1", &a, &b),
            edge("node2", &b, &c),
            edge("node3", &c, &a),
            // d waits for a but is not in the cycle: it is not the victim although youngest.
            edge("node1", &d, &a),
        ];
        let cycles = find_cycles(&edges);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].victim, a);
        assert_eq!(cycles[0].members, vec!["g1", "g2", "g3"]);
    }

    #[test]
    fn one_node_cycles_and_chains_are_left_alone() {
        let (a, b, c) = (t("g1", 1), t("g2", 2), t("g3", 3));
        // PostgreSQL breaks a cycle seen whole on one node.
        assert!(find_cycles(&[edge("node1", &a, &b), edge("node1", &b, &a)]).is_empty());
        // A long chain of waits is contention, not a deadlock.
        assert!(find_cycles(&[edge("node1", &a, &b), edge("node2", &b, &c),]).is_empty());
        // A transaction "waiting for itself" across its sessions is no cycle.
        assert!(find_cycles(&[edge("node1", &a, &a), edge("node2", &a, &a)]).is_empty());
    }

    #[test]
    fn equal_start_times_pick_one_victim_deterministically() {
        let (a, b) = (t("g1", 5), t("g2", 5));
        let one = find_cycles(&[edge("n1", &a, &b), edge("n2", &b, &a)]);
        let two = find_cycles(&[edge("n2", &b, &a), edge("n1", &a, &b)]);
        assert_eq!(one, two);
        assert_eq!(one[0].victim.name, "g2");
    }

    #[test]
    fn two_separate_cycles_have_two_victims() {
        let (a, b, c, d) = (t("a", 1), t("b", 2), t("c", 3), t("d", 4));
        let edges = [
            edge("n1", &a, &b),
            edge("n2", &b, &a),
            edge("n1", &c, &d),
            edge("n3", &d, &c),
        ];
        let victims: Vec<String> = find_cycles(&edges)
            .into_iter()
            .map(|c| c.victim.name)
            .collect();
        assert_eq!(victims, vec!["b", "d"]);
    }
}
