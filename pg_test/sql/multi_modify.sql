--
-- Single statements writing on several nodes (SynapseModify): UPDATE and DELETE on every
-- node holding shards, INSERT rows routed to their shards' nodes, writes to reference
-- tables on every copy; what is refused because the nodes could not give one server's
-- answer; committed together or not at all.
--
\c - - - :node1_port
CREATE TABLE mod_items (id int PRIMARY KEY, grp int, qty int);
INSERT INTO mod_items SELECT g, g % 5, g FROM generate_series(1, 200) g;
SELECT synapse.create_distributed_table('mod_items', 'id', 16);
CREATE TABLE mod_codes (code text PRIMARY KEY, label text);
INSERT INTO mod_codes VALUES ('a', 'alpha'), ('b', 'beta');
SELECT synapse.create_reference_table('mod_codes');
CREATE TABLE mod_local (id int, qty int);
INSERT INTO mod_local VALUES (1001, 1), (1002, 2), (1003, 3), (1004, NULL);

-- UPDATE and DELETE without the key: the statement runs on every node holding shards.
EXPLAIN (COSTS OFF) UPDATE mod_items SET qty = qty + 1 WHERE grp = 2;
UPDATE mod_items SET qty = qty + 1 WHERE grp = 2;
SELECT count(*), sum(qty) FROM mod_items WHERE grp = 2;
UPDATE mod_items SET qty = 0 WHERE grp = 3 AND qty > 190 RETURNING grp, qty;
DELETE FROM mod_items WHERE grp = 4;
SELECT count(*) FROM mod_items;
-- Reading reference tables alike on every node is fine.
UPDATE mod_items SET grp = 9 WHERE grp = 1 AND EXISTS (SELECT 1 FROM mod_codes WHERE code = 'a');
SELECT grp, count(*) FROM mod_items GROUP BY grp ORDER BY grp;

-- INSERT with rows for several nodes: computed here, sent to their nodes.
EXPLAIN (COSTS OFF) INSERT INTO mod_items SELECT id + 1000, 0, qty FROM mod_items;
INSERT INTO mod_items VALUES (501, 1, 1), (502, 1, 2), (503, 1, 3), (504, 1, 4);
INSERT INTO mod_items SELECT id, 7, qty FROM mod_local;
INSERT INTO mod_items SELECT id + 2000, grp, qty FROM mod_items WHERE grp = 0;
INSERT INTO mod_items SELECT id, 8, -1 FROM mod_items WHERE id BETWEEN 501 AND 504
  ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty * 10 + mod_items.qty;
SELECT count(*), sum(qty), count(*) FILTER (WHERE id > 2000) AS copied FROM mod_items;
SELECT id, qty FROM mod_items WHERE id BETWEEN 501 AND 504 ORDER BY id;
-- Every node holds a share of the rows, each row on its shard's node.
SELECT count(*) > 0 AS has_rows FROM synapse.table_distribution('mod_items') WHERE rows > 0;
-- A generic plan's rows are routed when it runs.
SET plan_cache_mode = force_generic_plan;
PREPARE mod_ins(int, int) AS INSERT INTO mod_items VALUES ($1, 6, 1), ($2, 6, 2);
EXECUTE mod_ins(3001, 3002);
EXECUTE mod_ins(3003, 3004);
RESET plan_cache_mode;
SELECT count(*), sum(qty) FROM mod_items WHERE grp = 6;

-- In a transaction block: this node's part runs here, later statements see every part.
BEGIN;
UPDATE mod_items SET qty = -5 WHERE grp = 6;
SELECT count(*) FROM mod_items WHERE qty = -5;
INSERT INTO mod_items SELECT g, 5, 5 FROM generate_series(4001, 4020) g;
SELECT count(*) FROM mod_items WHERE grp = 5;
ROLLBACK;
SELECT count(*) FROM mod_items WHERE qty = -5 OR grp = 5;

-- Outside a transaction block this node's part goes through a connection of its own:
-- the rest of the transaction may not use distributed tables here any more.
CREATE FUNCTION mod_then_read() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  UPDATE mod_items SET qty = qty + 1 WHERE grp = 0;
  RETURN (SELECT sum(qty) FROM mod_items WHERE grp = 0);
END $$;
SELECT mod_then_read();
BEGIN;
SELECT mod_then_read() > 0 AS read_own_writes;
COMMIT;

-- Reference tables: every copy is written.
INSERT INTO mod_codes VALUES ('c', 'gamma'), ('d', 'delta');
UPDATE mod_codes SET label = upper(label) WHERE code IN ('a', 'c') RETURNING code, label;
DELETE FROM mod_codes WHERE code = 'b';
INSERT INTO mod_codes SELECT 'n' || g, 'number ' || g FROM generate_series(1, 3) g;
\c - - - :node2_port
SELECT string_agg(code || '=' || label, ', ' ORDER BY code) FROM mod_codes;
\c - - - :node3_port
SELECT string_agg(code || '=' || label, ', ' ORDER BY code) FROM mod_codes;
-- Any node writes every copy.
UPDATE mod_codes SET label = 'written on node3' WHERE code = 'd';
\c - - - :node1_port
SELECT label FROM mod_codes WHERE code = 'd';

-- Refused with 0A000, nothing written: what the nodes could not do alike.
UPDATE mod_items SET qty = extract(epoch FROM now())::int;
UPDATE mod_items SET qty = random() * 10;
UPDATE mod_items SET id = id + 1;
UPDATE mod_items SET qty = 1 WHERE id IN (SELECT id FROM mod_items WHERE qty > 100);
UPDATE mod_items SET qty = 1 FROM mod_local WHERE mod_items.id = mod_local.id;
DELETE FROM mod_codes WHERE code IN (SELECT grp::text FROM mod_items);
UPDATE mod_codes SET label = label || now()::text;
INSERT INTO mod_items SELECT id + 5000, 0, 0 FROM mod_local RETURNING id, now();
INSERT INTO mod_items SELECT id + 5000, 0, 0 FROM mod_local
  ON CONFLICT (id) DO UPDATE SET qty = (SELECT max(qty) FROM mod_local);
INSERT INTO mod_items SELECT id + 5000, 0, 0 FROM mod_local
  ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id + 1;
WITH moved AS (DELETE FROM mod_items WHERE grp = 0 RETURNING *) SELECT count(*) FROM moved;
MERGE INTO mod_items USING mod_local ON mod_items.id = mod_local.id
  WHEN MATCHED THEN UPDATE SET qty = 0;
SELECT count(*), sum(qty) FROM mod_items;
-- An error on one node rolls back every node's part.
INSERT INTO mod_items SELECT g, 0, 0 FROM generate_series(9001, 9050) g
  UNION ALL SELECT 1, 0, 0;
SELECT count(*) FROM mod_items WHERE id > 9000;

DROP FUNCTION mod_then_read();
DROP TABLE mod_items, mod_codes, mod_local;
