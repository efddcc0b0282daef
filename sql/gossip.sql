-- The members' health from SWIM, next to what Raft agreed about them.
CREATE OR REPLACE VIEW synapse.nodes AS
    SELECT n.id, n.name, n.host, n.port, n.rpc_port, n.role,
           to_timestamp(n.joined_at_unix_ms / 1000.0) AS joined_at,
           n.gossip_port, m.state AS health
    FROM synapse.node_catalog n
    LEFT JOIN synapse.members() m ON m.name = n.name;
COMMENT ON VIEW synapse.nodes IS 'Members of the cluster, as agreed through Raft, with their health as seen by SWIM on this node';
