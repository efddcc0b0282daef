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

-- The cluster CA: its certificate, its key sealed under the cluster secret (never in
-- clear), and the revocation list in force.
CREATE TABLE synapse.tls_catalog (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    ca_cert_pem text NOT NULL,
    sealed_ca_key text NOT NULL,
    crl_number bigint NOT NULL,
    crl_pem text NOT NULL
);
REVOKE ALL ON synapse.tls_catalog FROM PUBLIC;

-- Every certificate the CA issued and has not forgotten (expired ones are dropped).
CREATE TABLE synapse.certificate_catalog (
    serial text PRIMARY KEY,
    node_id bigint NOT NULL,
    node_name text NOT NULL,
    sans text[] NOT NULL,
    not_before_unix_ms bigint NOT NULL,
    not_after_unix_ms bigint NOT NULL,
    revoked_at_unix_ms bigint
);

CREATE VIEW synapse.certificates AS
    SELECT serial, node_name AS node, sans,
           to_timestamp(not_before_unix_ms / 1000.0) AS not_before,
           to_timestamp(not_after_unix_ms / 1000.0) AS not_after,
           CASE
               WHEN revoked_at_unix_ms IS NOT NULL THEN 'revoked'
               WHEN to_timestamp(not_after_unix_ms / 1000.0) <= now() THEN 'expired'
               WHEN to_timestamp(not_after_unix_ms / 1000.0)
                    - current_setting('synapse.cert_renew_before')::interval <= now() THEN 'renewing'
               ELSE 'valid'
           END AS status
    FROM synapse.certificate_catalog;
COMMENT ON VIEW synapse.certificates IS 'Certificates issued by the cluster CA, as agreed through Raft';

CREATE VIEW synapse.nodes AS
    SELECT id, name, host, port, rpc_port, role, to_timestamp(joined_at_unix_ms / 1000.0) AS joined_at
    FROM synapse.node_catalog;
COMMENT ON VIEW synapse.nodes IS 'Members of the cluster, as agreed through Raft';

CREATE VIEW synapse.cluster_settings AS
    SELECT name, value, version, to_timestamp(updated_at_unix_ms / 1000.0) AS updated_at
    FROM synapse.setting_catalog;
COMMENT ON VIEW synapse.cluster_settings IS 'Cluster-wide settings, as agreed through Raft (version = log index of the last write)';

-- Distributed and reference tables, by name (a relation's oid differs between nodes).
CREATE TABLE synapse.table_catalog (
    id bigint PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('distributed', 'reference')),
    shard_key text,
    key_type text,
    shard_count int,
    created_at_unix_ms bigint NOT NULL,
    UNIQUE (schema_name, table_name),
    CHECK ((kind = 'distributed') = (shard_key IS NOT NULL AND shard_count IS NOT NULL))
);

-- The node of each shard. All tables with the same shard count share these rows, so a
-- key's rows are on one node whatever table they are in (co-location).
CREATE TABLE synapse.placement_catalog (
    shard_count int NOT NULL,
    shard int NOT NULL,
    node_id bigint NOT NULL,
    PRIMARY KEY (shard_count, shard)
);
CREATE INDEX ON synapse.placement_catalog (node_id);

CREATE VIEW synapse.distributed_tables AS
    SELECT format('%I.%I', schema_name, table_name) AS table_name, kind, shard_key, key_type,
           shard_count, to_timestamp(created_at_unix_ms / 1000.0) AS created_at
    FROM synapse.table_catalog;
COMMENT ON VIEW synapse.distributed_tables IS 'Distributed and reference tables, as agreed through Raft';

-- One row per shard of each distributed table, and per node of each reference table.
CREATE VIEW synapse.placements AS
    SELECT format('%I.%I', t.schema_name, t.table_name) AS table_name, p.shard, n.name AS node,
           p.node_id, 'primary'::text AS role
    FROM synapse.table_catalog t
    JOIN synapse.placement_catalog p ON p.shard_count = t.shard_count
    LEFT JOIN synapse.node_catalog n ON n.id = p.node_id
    WHERE t.kind = 'distributed'
    UNION ALL
    SELECT format('%I.%I', t.schema_name, t.table_name), NULL, n.name, n.id, 'replica'
    FROM synapse.table_catalog t CROSS JOIN synapse.node_catalog n
    WHERE t.kind = 'reference';
COMMENT ON VIEW synapse.placements IS 'Where each shard of a distributed table, and each copy of a reference table, lives';

-- Commit decisions of distributed transactions (synapse_core::txn): the first decision
-- recorded for a gid wins; recovery on every node reads them, and they are forgotten once
-- no node holds the transaction prepared.
CREATE TABLE synapse.transaction_catalog (
    gid text PRIMARY KEY,
    outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')),
    coordinator bigint NOT NULL,
    participants text[] NOT NULL,
    decided_at_unix_ms bigint NOT NULL,
    decided_by text NOT NULL
);
