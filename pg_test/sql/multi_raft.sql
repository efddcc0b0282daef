--
-- Raft-managed cluster metadata on the 3-node cluster formed by scripts/cluster up:
-- one leader that every node agrees on, the members, cluster settings with
-- read-your-writes from any node, and clear errors for bad requests.
--
\c - - - :node1_port
-- Node 1 bootstrapped the cluster and leads it; every node names the same leader.
SELECT node_id, term > 0 AS has_term, role, leader_id, applied_index = commit_index AS caught_up,
       lease_remaining_ms > 0 AS holds_lease
  FROM synapse.raft_status();
SELECT id, name, host, port = :node1_port AS node1_port_ok, role FROM synapse.nodes ORDER BY id;
\c - - - :node2_port
SELECT node_id, role, leader_id, lease_remaining_ms IS NULL AS no_lease FROM synapse.raft_status();
SELECT synapse.set_cluster_setting('regress.color', 'blue');
\c - - - :node3_port
SELECT node_id, role, leader_id FROM synapse.raft_status();
-- A linearizable read on another node sees the write.
SELECT synapse.cluster_setting('regress.color');
SELECT synapse.compare_and_set_cluster_setting('regress.color', 'red', 'green') AS applied_on_wrong_value;
SELECT synapse.compare_and_set_cluster_setting('regress.color', 'blue', 'green') AS applied_on_right_value;
SELECT synapse.compare_and_set_cluster_setting('regress.new', NULL, 'created') AS created_when_unset;
SELECT name, value FROM synapse.cluster_settings WHERE name LIKE 'regress.%' ORDER BY name;
SELECT synapse.cluster_setting('regress.never_set') IS NULL AS unset_is_null;
-- Every node applied the same log: same applied settings everywhere.
\c - - - :node1_port
SELECT value FROM synapse.cluster_settings WHERE name = 'regress.color';
-- The catalog is written only by Raft.
INSERT INTO synapse.setting_catalog VALUES ('x', 'y', 1, 1);
UPDATE synapse.node_catalog SET name = 'renamed';
DELETE FROM synapse.raft_applied;
TRUNCATE synapse.cluster_catalog;
-- Bad requests leave the membership unchanged.
SELECT synapse.init_cluster();
SELECT synapse.add_node('127.0.0.1', :node2_port);
SELECT synapse.add_node('127.0.0.1', 0);
SELECT synapse.add_node('', 5432);
SELECT synapse.remove_node('no_such_node');
SELECT synapse.remove_node(42);
SELECT synapse.set_cluster_setting('', 'x');
SELECT count(*) AS members FROM synapse.nodes;
