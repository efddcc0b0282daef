-- SynapseDB cluster catalog: the state machine of the Raft log.
--
-- Only the raft worker writes these tables, when it applies committed log entries (the
-- trigger synapse.catalog_write_guard() refuses everyone else). Every node therefore holds
-- the same rows at the same applied log index, and reads them locally.

-- The applied Raft state: log id and membership of the last applied entry (JSON).
CREATE TABLE synapse.raft_applied (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    state jsonb NOT NULL
);

CREATE TABLE synapse.cluster_catalog (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster_id text NOT NULL,
    name text NOT NULL,
    created_at_unix_ms bigint NOT NULL,
    last_node_id bigint NOT NULL DEFAULT 0
);

CREATE TABLE synapse.node_catalog (
    id bigint PRIMARY KEY,
    name text NOT NULL UNIQUE,
    host text NOT NULL,
    port int NOT NULL,
    rpc_port int NOT NULL,
    gossip_port int NOT NULL DEFAULT 0,
    role text NOT NULL CHECK (role IN ('voter', 'learner')),
    joined_at_unix_ms bigint NOT NULL
);

CREATE TABLE synapse.setting_catalog (
    name text PRIMARY KEY,
    value text NOT NULL,
    version bigint NOT NULL,
    updated_at_unix_ms bigint NOT NULL
);

CREATE VIEW synapse.nodes AS
    SELECT id, name, host, port, rpc_port, role, to_timestamp(joined_at_unix_ms / 1000.0) AS joined_at
    FROM synapse.node_catalog;
COMMENT ON VIEW synapse.nodes IS 'Members of the cluster, as agreed through Raft';

CREATE VIEW synapse.cluster_settings AS
    SELECT name, value, version, to_timestamp(updated_at_unix_ms / 1000.0) AS updated_at
    FROM synapse.setting_catalog;
COMMENT ON VIEW synapse.cluster_settings IS 'Cluster-wide settings, as agreed through Raft (version = log index of the last write)';
