-- Distributed transactions: what this node coordinated or holds prepared, and which of
-- its backends work for which global transaction.
CREATE VIEW synapse.transactions AS
    SELECT t.gxid, t.coordinator_node, t.state, t.participant_nodes, t.coordinator_pid,
           t.started_at, t.updated_at, t.prepared_here, t.decision, t.decided_by
    FROM synapse.transactions() t;
COMMENT ON VIEW synapse.transactions IS 'Distributed transactions this node coordinated recently (their states) and those prepared on this node, with their commit decisions';

CREATE VIEW synapse.distributed_activity AS
    SELECT d.pid, d.gxid, d.coordinator_node, d.role, d.transaction_started_at,
           a.usename, a.application_name, a.state, a.wait_event_type, a.wait_event,
           a.xact_start, a.query
    FROM synapse.distributed_activity_here() d
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = d.pid;
COMMENT ON VIEW synapse.distributed_activity IS 'Backends of this node working for a distributed transaction, as coordinator or participant';

CREATE VIEW synapse.transaction_decisions AS
    SELECT gid AS gxid, outcome, coordinator AS coordinator_node, participants,
           to_timestamp(decided_at_unix_ms / 1000.0) AS decided_at, decided_by
    FROM synapse.transaction_catalog;
COMMENT ON VIEW synapse.transaction_decisions IS 'Commit decisions recorded through Raft that a participant may still need';

-- Deadlocks that spanned nodes, as the detector on the Raft leader broke them (kept on the
-- node that detected them; the last 1000).
CREATE TABLE synapse.deadlock_history (
    detected_at timestamptz NOT NULL DEFAULT now(),
    victim text NOT NULL,
    victim_started_at timestamptz NOT NULL,
    cycle text[] NOT NULL,
    nodes text[] NOT NULL,
    cancelled_backends bigint NOT NULL
);
CREATE VIEW synapse.deadlocks AS
    SELECT detected_at, victim, victim_started_at, cycle, nodes, cancelled_backends
    FROM synapse.deadlock_history ORDER BY detected_at DESC;
COMMENT ON VIEW synapse.deadlocks IS 'Deadlocks across nodes detected on this node (while it led Raft), with their victims';
