//! Default placement of shards on nodes: a consistent-hash ring with virtual nodes.
//!
//! Each node owns `vnodes` points on a 64-bit ring (MD5 of `node:<id>:<vnode>`); a shard
//! (MD5 of `shard:<shard_count>:<shard>`) goes to the owner of the first point at or after
//! its own, wrapping around, unless that node already holds its bound of
//! ⌈(1 + ε)·shards/nodes⌉ (consistent hashing with bounded loads, ε = 1/4), in which case
//! the walk goes on to the next point of another node. Adding a node therefore moves few
//! more than the shards that now fall to it (about 1/N), no node holds more than 5/4 of
//! its fair share, and every node computes the same map. The map is proposed through
//! Raft when a shard count is first used; from then on the placement catalog, not this
//! function, is authoritative.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

/// Virtual nodes per node unless `synapse.placement_vnodes` says otherwise.
pub const DEFAULT_VNODES: u32 = 128;

/// The ring of a set of nodes.
#[derive(Clone, Debug)]
pub struct Ring {
    points: BTreeMap<u64, u64>,
}

impl Ring {
    /// The ring of `nodes` (ids), each with `vnodes` points (at least 1).
    pub fn new(nodes: impl IntoIterator<Item = u64>, vnodes: u32) -> Ring {
        let mut points = BTreeMap::new();
        for node in nodes {
            for v in 0..vnodes.max(1) {
                // Two points of different nodes never collide in practice (2^-64); if one
                // did, the smaller node id keeps it, the same on every node.
                let point = point(format!("node:{node}:{v}").as_bytes());
                points
                    .entry(point)
                    .and_modify(|n: &mut u64| *n = (*n).min(node))
                    .or_insert(node);
            }
        }
        Ring { points }
    }

    /// The nodes met walking clockwise from `shard`'s point (each point's owner, so a node
    /// appears once per virtual node).
    fn walk(&self, shard_count: u32, shard: u32) -> impl Iterator<Item = u64> + '_ {
        let p = point(format!("shard:{shard_count}:{shard}").as_bytes());
        self.points
            .range(p..)
            .chain(self.points.range(..p))
            .map(|(_, node)| *node)
    }
}

/// The node of every shard `0..shard_count` on the ring of `nodes` (not empty).
pub fn place_shards(nodes: &[u64], vnodes: u32, shard_count: u32) -> Vec<u64> {
    assert!(!nodes.is_empty(), "shards need at least one node");
    let ring = Ring::new(nodes.iter().copied(), vnodes);
    let n = nodes.len() as u64;
    let bound = (u64::from(shard_count) * 5).div_ceil(4 * n).max(1);
    let mut load: BTreeMap<u64, u64> = BTreeMap::new();
    (0..shard_count)
        .map(|s| {
            let node = ring
                .walk(shard_count, s)
                .find(|node| load.get(node).copied().unwrap_or(0) < bound)
                .expect("the bounds add up to more than the shard count");
            *load.entry(node).or_default() += 1;
            node
        })
        .collect()
}

fn point(bytes: &[u8]) -> u64 {
    let digest = Md5::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("an MD5 digest has 16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(map: &[u64]) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for n in map {
            *c.entry(*n).or_default() += 1;
        }
        c
    }

    #[test]
    fn every_node_gets_a_fair_share() {
        for nodes in [
            vec![1, 2, 3],
            vec![1, 2, 3, 4, 5],
            vec![4, 9, 17, 23, 30, 31, 40],
        ] {
            let map = place_shards(&nodes, DEFAULT_VNODES, 256);
            let c = counts(&map);
            let fair = 256.0 / nodes.len() as f64;
            for n in &nodes {
                let got = *c.get(n).unwrap_or(&0) as f64;
                assert!(
                    got > fair * 0.6 && got <= (fair * 1.25).ceil(),
                    "node {n}: {got} shards, fair share {fair:.0} ({c:?})"
                );
            }
        }
    }

    #[test]
    fn adding_a_node_moves_about_one_nth() {
        let before = place_shards(&[1, 2, 3], DEFAULT_VNODES, 256);
        let after = place_shards(&[1, 2, 3, 4], DEFAULT_VNODES, 256);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        // Nearly all the shards that move go to the new node.
        let to_new = moved.iter().filter(|(_, to)| **to == 4).count();
        assert!(
            to_new * 10 >= moved.len() * 8,
            "{to_new} of {} to node 4",
            moved.len()
        );
        let share = moved.len() as f64 / 256.0;
        assert!((0.15..0.40).contains(&share), "moved {share}");
    }

    #[test]
    fn the_map_depends_only_on_the_node_set() {
        assert_eq!(
            place_shards(&[3, 1, 2], 64, 32),
            place_shards(&[1, 2, 3], 64, 32)
        );
        assert_eq!(place_shards(&[7], 1, 8), vec![7; 8]);
    }
}
