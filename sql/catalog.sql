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
