--
-- synapse.* settings: the port plan of scripts/cluster, the reserved prefix, and reloads.
--
\c - - - :node1_port
SELECT current_setting('synapse.node_name') AS node_name,
       current_setting('synapse.http_port')::int = :node1_http_port AS http_port_matches,
       current_setting('synapse.rpc_port')::int = :node1_port + 2 AS rpc_port_matches,
       current_setting('synapse.gossip_port')::int = :node1_port + 3 AS gossip_port_matches;
\c - - - :node3_port
SELECT current_setting('synapse.node_name') AS node_name;
-- Unknown names in the synapse namespace are rejected rather than silently kept.
SET synapse.no_such_setting = 1;
-- Ports are fixed at server start.
SET synapse.http_port = 9999;
ALTER SYSTEM SET synapse.health_timeout = -5;
SHOW synapse.health_timeout;
SHOW synapse.database;
