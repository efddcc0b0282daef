-- Distributed transactions: two-phase commit across nodes, its views, failpoints, and the
-- statements it refuses. Keys are chosen by the node the placement catalog names.
CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO acct SELECT g, 100 FROM generate_series(1, 60) g;
SELECT synapse.create_distributed_table('acct', 'id', 16);
CREATE FUNCTION pg_temp.key_on(node text) RETURNS int LANGUAGE sql AS $$
  SELECT min(g) FROM generate_series(1, 60) g JOIN synapse.placements p
    ON p.table_name = 'public.acct' AND p.shard = synapse.shard_of(g, 16) WHERE p.node = $1 $$;
SELECT pg_temp.key_on('node1') AS k1, pg_temp.key_on('node2') AS k2, pg_temp.key_on('node3') AS k3 \gset
-- Two other nodes, then this node and two others: both commit whole.
BEGIN;
UPDATE acct SET balance = balance - 10 WHERE id = :k2;
UPDATE acct SET balance = balance + 10 WHERE id = :k3;
COMMIT;
BEGIN;
UPDATE acct SET balance = balance - 5 WHERE id = :k1;
UPDATE acct SET balance = balance + 3 WHERE id = :k2;
UPDATE acct SET balance = balance + 2 WHERE id = :k3;
SELECT role, count(*) FROM synapse.distributed_activity GROUP BY role;
COMMIT;
SELECT id = :k1 AS k1, id = :k2 AS k2, balance FROM acct WHERE id IN (:k1, :k2, :k3) ORDER BY id;
SELECT sum(balance) FROM acct;
SELECT state, cardinality(participant_nodes) AS participants, decision, decided_by
  FROM synapse.transactions ORDER BY started_at DESC LIMIT 2;
-- A failpoint before the decision rolls back every node.
SET synapse.failpoints = 'after_prepare:error';
BEGIN;
UPDATE acct SET balance = balance - 50 WHERE id = :k1;
UPDATE acct SET balance = balance + 50 WHERE id = :k2;
COMMIT;
-- After the decision: committed, the participants left to recovery (a WARNING).
SET synapse.failpoints = 'after_decision:error';
BEGIN;
UPDATE acct SET balance = balance - 1 WHERE id = :k2;
UPDATE acct SET balance = balance + 1 WHERE id = :k3;
COMMIT;
RESET synapse.failpoints;
SELECT state, decision FROM synapse.transactions ORDER BY started_at DESC LIMIT 2;
-- Recovery (the maintenance workers, or recover_transactions() here) finishes them.
DO $$
BEGIN
  FOR i IN 1..200 LOOP
    EXIT WHEN NOT EXISTS (SELECT FROM synapse.recover_transactions() WHERE action <> 'committed');
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
SELECT count(*) AS left_anywhere FROM synapse.recover_transactions();
SELECT id = :k2 AS k2, balance FROM acct WHERE id IN (:k1, :k2, :k3) ORDER BY id;
SELECT count(*) AS prepared_here FROM pg_prepared_xacts WHERE gid LIKE 'synapse\_%';
-- Refused, with nothing committed.
SET synapse.failpoints = 'nowhere:crash';
BEGIN;
UPDATE acct SET balance = 0 WHERE id = :k2;
UPDATE acct SET balance = 0 WHERE id = :k3;
COMMIT;
RESET synapse.failpoints;
BEGIN;
UPDATE acct SET balance = 0 WHERE id = :k1;
UPDATE acct SET balance = 0 WHERE id = :k2;
COMMIT AND CHAIN;
ROLLBACK;
BEGIN;
UPDATE acct SET balance = 0 WHERE id = :k2;
PREPARE TRANSACTION 'mine';
CREATE TEMP TABLE scratch (x int);
BEGIN;
INSERT INTO scratch VALUES (1);
UPDATE acct SET balance = 0 WHERE id = :k1;
UPDATE acct SET balance = 0 WHERE id = :k2;
COMMIT;
-- Several statements in one query string write here and elsewhere: no COMMIT statement.
UPDATE acct SET balance = 0 WHERE id = :k1 \; UPDATE acct SET balance = 0 WHERE id = :k2;
SELECT sum(balance) FROM acct;
SELECT synapse.join_transaction('synapse_1_2_3');
COMMIT PREPARED 'synapse_9_9_9';
DROP TABLE acct;
