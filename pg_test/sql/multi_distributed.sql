--
-- Distributed and reference tables on the 3-node cluster: the shard hash, placement of
-- shards on nodes, moving rows when a table is distributed, undistributing, and clear
-- errors that leave the table as it was.
--
\c - - - :node1_port
-- The shard hash is fixed for good: these values must never change.
SELECT synapse.shard_of(1) AS int_1, synapse.shard_of(-7::bigint) AS bigint_minus_7,
       synapse.shard_of('hello'::text) AS text_hello, synapse.shard_of(''::text) AS empty_text,
       synapse.shard_of('00000000-0000-0000-0000-000000000000'::uuid) AS nil_uuid,
       synapse.shard_of(NULL::int) AS null_key;
-- Equal keys hash equally whatever their width, scale or spelling.
SELECT synapse.shard_of(42::int2) = synapse.shard_of(42::int8) AS int_widths,
       synapse.shard_of(1.50::numeric) = synapse.shard_of(1.5::numeric) AS numeric_scales,
       synapse.shard_of('abc'::varchar) = synapse.shard_of('abc'::text) AS varchar_text,
       synapse.shard_of('2026-01-02'::date, 64) AS a_date,
       synapse.shard_of('2026-01-02 03:04:05'::timestamp, 64) AS a_timestamp,
       synapse.shard_of('2026-01-02 03:04:05+00'::timestamptz, 64) AS a_timestamptz;
SELECT synapse.shard_of(1.5::float8);
SELECT synapse.shard_of(1, 0);

-- PostgreSQL's hash partitioning with synapse's operator classes agrees with shard_of,
-- for routing and for pruning, for every key type.
SET synapse.fragment = on;
CREATE TABLE agree_int (k int8) PARTITION BY HASH (k synapse.int8_shard_ops);
CREATE TABLE agree_text (k text) PARTITION BY HASH (k synapse.text_shard_ops);
CREATE TABLE agree_num (k numeric) PARTITION BY HASH (k synapse.numeric_shard_ops);
CREATE TABLE agree_uuid (k uuid) PARTITION BY HASH (k synapse.uuid_shard_ops);
CREATE TABLE agree_ts (k timestamptz) PARTITION BY HASH (k synapse.timestamptz_shard_ops);
DO $$
DECLARE t text; s int;
BEGIN
  FOREACH t IN ARRAY ARRAY['agree_int', 'agree_text', 'agree_num', 'agree_uuid', 'agree_ts'] LOOP
    FOR s IN 0..7 LOOP
      EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 8, REMAINDER %s)', t || '_' || s, t, s);
    END LOOP;
  END LOOP;
END $$;
INSERT INTO agree_int SELECT g FROM generate_series(-500, 500) g;
INSERT INTO agree_text SELECT 'key ' || g FROM generate_series(1, 500) g;
INSERT INTO agree_num SELECT g / 7.0 FROM generate_series(1, 500) g;
INSERT INTO agree_uuid SELECT md5(g::text)::uuid FROM generate_series(1, 500) g;
INSERT INTO agree_ts SELECT '2026-01-01'::timestamptz + g * interval '37 minutes' FROM generate_series(1, 500) g;
SELECT 'int' AS t, count(*) FILTER (WHERE split_part(tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(k, 8)) AS misplaced FROM agree_int
UNION ALL SELECT 'text', count(*) FILTER (WHERE split_part(tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(k, 8)) FROM agree_text
UNION ALL SELECT 'numeric', count(*) FILTER (WHERE split_part(tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(k, 8)) FROM agree_num
UNION ALL SELECT 'uuid', count(*) FILTER (WHERE split_part(tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(k, 8)) FROM agree_uuid
UNION ALL SELECT 'timestamptz', count(*) FILTER (WHERE split_part(tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(k, 8)) FROM agree_ts;
-- Pruning: a key's lookup scans the one partition shard_of names, also across int widths.
EXPLAIN (COSTS OFF) SELECT * FROM agree_int WHERE k = 1;
EXPLAIN (COSTS OFF) SELECT * FROM agree_int WHERE k = 1::int2;
SELECT synapse.shard_of(1, 8) AS shard_of_1;
DROP TABLE agree_int, agree_text, agree_num, agree_uuid, agree_ts;
RESET synapse.fragment;

-- Distributing a table with rows moves each row to the node of its shard.
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(10,2) CHECK (amount >= 0),
                     note text DEFAULT 'none', total numeric GENERATED ALWAYS AS (amount * 2) STORED);
CREATE INDEX orders_customer ON orders (customer);
INSERT INTO orders (id, customer, amount) SELECT g, 'c' || (g % 17), g % 100 FROM generate_series(1, 1000) g;
SELECT synapse.create_distributed_table('orders', 'id', 32);
SELECT table_name, kind, shard_key, key_type, shard_count FROM synapse.distributed_tables;
-- Every node holds a share of the shards and of the rows; nothing is lost.
SELECT node, shards, rows, bytes > 0 AS has_bytes FROM synapse.table_distribution('orders') ORDER BY node;
SELECT sum(rows) AS total_rows FROM synapse.table_distribution('orders');
SELECT count(*) AS shards, count(DISTINCT node) AS nodes FROM synapse.placements WHERE table_name = 'public.orders';
SELECT count(*) AS shard_partitions, sum(row_estimate) >= 0 AS estimated FROM synapse.shards WHERE table_name = 'public.orders';
-- Reads are routed: every node's rows.
SELECT count(*) FROM orders;
-- On each node, as a fragment: only rows of shards the placement catalog gives that node,
-- each in the partition of its shard, and the table keeps its keys, checks and defaults.
SET synapse.fragment = on;
SELECT count(*) > 0 AS has_rows,
       count(*) FILTER (WHERE p.node <> 'node1') AS rows_of_other_nodes,
       count(*) FILTER (WHERE split_part(o.tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(o.id, 32)) AS misplaced
  FROM orders o JOIN synapse.placements p ON p.table_name = 'public.orders' AND p.shard = synapse.shard_of(o.id, 32);
SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1;
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'orders'::regclass ORDER BY 1;
\c - - - :node2_port
SET synapse.fragment = on;
SELECT count(*) > 0 AS has_rows,
       count(*) FILTER (WHERE p.node <> 'node2') AS rows_of_other_nodes,
       count(*) FILTER (WHERE split_part(o.tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(o.id, 32)) AS misplaced,
       count(*) FILTER (WHERE o.total <> o.amount * 2 OR o.note <> 'none') AS bad_values
  FROM orders o JOIN synapse.placements p ON p.table_name = 'public.orders' AND p.shard = synapse.shard_of(o.id, 32);
SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1;
\c - - - :node3_port
SET synapse.fragment = on;
SELECT count(*) > 0 AS has_rows,
       count(*) FILTER (WHERE p.node <> 'node3') AS rows_of_other_nodes,
       count(*) FILTER (WHERE split_part(o.tableoid::regclass::text, '_', 3)::int <> synapse.shard_of(o.id, 32)) AS misplaced
  FROM orders o JOIN synapse.placements p ON p.table_name = 'public.orders' AND p.shard = synapse.shard_of(o.id, 32);
-- A row for another node's shard has no partition here.
INSERT INTO orders (id, customer, amount)
  SELECT g, 'x', 1 FROM generate_series(2000, 2100) g
  WHERE (SELECT node FROM synapse.placements WHERE table_name = 'public.orders' AND shard = synapse.shard_of(g, 32)) <> 'node3'
  LIMIT 1;
RESET synapse.fragment;

-- Statements pinned to one shard by the key run whole on the shard's node; others read
-- every node; writes spanning nodes run on each (see multi_modify).
\c - - - :node1_port
SELECT id, customer, amount FROM orders WHERE id = 17;
EXPLAIN (COSTS OFF) SELECT id, customer FROM orders WHERE id = 17;
-- A key computed from parameters by immutable functions and operators pins one shard too:
-- a generic plan routes by it at run time (PL/pgSQL passes `WHERE id = ids[i]` so).
SET plan_cache_mode = force_generic_plan;
PREPARE by_sum(bigint) AS SELECT id, customer FROM orders WHERE id = $1 + 1;
EXPLAIN (COSTS OFF) EXECUTE by_sum(16);
EXECUTE by_sum(16);
-- Each node gets the parameters' types: `$1 + 1` is bigint there too, not integer.
EXECUTE by_sum(4999999999);
PREPARE above(bigint) AS SELECT count(*) FROM orders WHERE id > $1 + 1;
EXECUTE above(4999999999);
EXECUTE above(990);
PREPARE by_subscript(bigint[], int) AS SELECT id, customer FROM orders WHERE id = $1[$2];
EXECUTE by_subscript(ARRAY[3, 17], 2);
EXECUTE by_subscript(ARRAY[3, 17], 5);
PREPARE by_division(bigint) AS SELECT id FROM orders WHERE id = 17 / $1;
EXECUTE by_division(0);
-- Not immutable: every node computes and reads for itself.
PREPARE by_random(bigint) AS SELECT id FROM orders WHERE id = $1 + (random() * 0)::int;
EXPLAIN (COSTS OFF) EXECUTE by_random(17);
EXECUTE by_random(17);
RESET plan_cache_mode;
DEALLOCATE ALL;
-- PL/pgSQL: its statements' parameters are numbered by variable, so a statement may use
-- $2 and $4 and not $1 or $3; each node gets the ones it uses.
DO $$
DECLARE ids bigint[] := ARRAY[17, 3, 4000]; found_customer text; one_id bigint;
BEGIN
  FOR i IN 1..3 LOOP
    SELECT customer INTO found_customer FROM orders WHERE id = ids[i];
    RAISE NOTICE 'order % of customer %', ids[i], found_customer;
    one_id := ids[i];
    SELECT customer INTO found_customer FROM orders WHERE id = one_id;
    RAISE NOTICE 'again: order % of customer %', one_id, found_customer;
  END LOOP;
END $$;
INSERT INTO orders (id, customer, amount) VALUES (5000, 'x', 1) RETURNING id, customer, note, total;
UPDATE orders SET amount = amount + 1 WHERE id = 5000 RETURNING id, amount, total;
DELETE FROM orders WHERE id = 5000;
BEGIN;
UPDATE orders SET amount = 0;
SELECT sum(amount) FROM orders;
ROLLBACK;
UPDATE orders SET id = 6000 WHERE id = 17;
SELECT customer, count(*), sum(amount) FROM orders GROUP BY customer ORDER BY customer LIMIT 3;
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders WHERE amount > 50;
-- Pushdown: each node groups its shards' rows and computes partial aggregates; this
-- node combines them, then sorts and limits.
EXPLAIN (COSTS OFF) SELECT customer, count(*), avg(amount) FROM orders GROUP BY customer
    HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT 3;
SELECT customer, count(*), avg(amount) FROM orders GROUP BY customer
    HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT 3;
-- Rows: each node sorts and returns LIMIT + OFFSET rows.
EXPLAIN (COSTS OFF) SELECT id FROM orders ORDER BY amount DESC, id LIMIT 2 OFFSET 1;
-- The function standing for a fragment's rows runs nothing when called directly.
SELECT * FROM synapse.fragment_rows('SELECT 1', 32, 0) AS f(x int);
-- Pull-up: count(DISTINCT ...) has no partial form, so rows come to this node.
EXPLAIN (COSTS OFF) SELECT count(DISTINCT customer) FROM orders;
SELECT count(DISTINCT customer) FROM orders;
-- DDL reaches every node.
ALTER TABLE orders ADD COLUMN extra int DEFAULT 7;
CREATE INDEX orders_amount ON orders (amount);
SELECT count(*), sum(extra) FROM orders;
-- Statements this session prepared on other nodes are retired when a table changes
-- (a prepared statement refuses a new row type).
SELECT customer FROM orders WHERE id = 17;
SELECT max(customer) FROM orders;
ALTER TABLE orders ALTER COLUMN customer TYPE varchar(20);
SELECT customer FROM orders WHERE id = 17;
SELECT max(customer), pg_typeof(max(customer)) FROM orders;
ALTER TABLE orders ALTER COLUMN customer TYPE text;
\c - - - :node3_port
SET synapse.fragment = on;
SELECT attname FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'extra';
SELECT indexname FROM pg_indexes WHERE tablename = 'orders' AND indexname = 'orders_amount';
RESET synapse.fragment;
\c - - - :node1_port
ALTER TABLE orders RENAME TO orders2;
ALTER TABLE orders RENAME COLUMN id TO order_id;
-- COPY FROM sends each row to the node of its shard (in any COPY format).
CREATE TABLE copy_in (id int PRIMARY KEY, name text, n numeric DEFAULT 7,
                      twice int GENERATED ALWAYS AS (id * 2) STORED);
SELECT synapse.create_distributed_table('copy_in', 'id', 16);
COPY (SELECT id, 'name ' || id FROM generate_series(1, 200) id
      WHERE (SELECT node FROM synapse.placements
             WHERE table_name = 'public.copy_in' AND shard = synapse.shard_of(id, 16)) = 'node2')
  TO '/tmp/synapse_regress_copy_node2.txt';
COPY (SELECT id, 'name ' || id, -id FROM generate_series(1, 200) id
      WHERE (SELECT node FROM synapse.placements
             WHERE table_name = 'public.copy_in' AND shard = synapse.shard_of(id, 16)) = 'node1')
  TO '/tmp/synapse_regress_copy_node1.csv' WITH (FORMAT csv, HEADER);
COPY copy_in (id, name) FROM '/tmp/synapse_regress_copy_node2.txt';
COPY copy_in (id, name, n) FROM '/tmp/synapse_regress_copy_node1.csv' WITH (FORMAT csv, HEADER);
SELECT count(*), sum(id), sum(twice) = 2 * sum(id) AS generated, count(*) FILTER (WHERE n = 7) AS defaulted
  FROM copy_in;
SELECT count(*) AS misplaced FROM copy_in c
  JOIN synapse.placements p ON p.table_name = 'public.copy_in' AND p.shard = synapse.shard_of(c.id, 16)
 WHERE (p.node = 'node1') <> (c.n < 0);
COPY (SELECT id + 1000, 'x' FROM generate_series(1, 50) id) TO '/tmp/synapse_regress_copy_all.txt';
-- Rows for every node commit together (two-phase commit), in a transaction block or not.
COPY copy_in (id, name) FROM '/tmp/synapse_regress_copy_all.txt';
SELECT count(*) AS copied_everywhere FROM copy_in WHERE id > 1000;
DELETE FROM copy_in WHERE id > 1000;
BEGIN;
COPY copy_in (id, name) FROM '/tmp/synapse_regress_copy_all.txt';
COMMIT;
SELECT count(*) AS copied_everywhere FROM copy_in WHERE id > 1000;
COPY copy_in (id, name) FROM PROGRAM 'printf "7\tok\nseven\tbad\n"';
SELECT count(*) FROM copy_in;
\c - - - :node2_port
SET synapse.fragment = on;
SELECT count(*) AS on_node2 FROM copy_in;
RESET synapse.fragment;
\c - - - :node1_port
DROP TABLE copy_in;
-- Errors of statements synapse passes on keep their CONTEXT.
DO $$ BEGIN RAISE EXCEPTION 'from a DO block'; END $$;
-- COPY TO reads every node (as COPY (SELECT ...) TO).
COPY orders (id, amount) TO '/tmp/synapse_regress_orders.copy';
CREATE TEMP TABLE copied (id bigint, amount numeric);
COPY copied FROM '/tmp/synapse_regress_orders.copy';
SELECT count(*), sum(amount), count(DISTINCT id) FROM copied;
SELECT count(*), sum(amount) FROM orders;
COPY orders (nope) TO STDOUT;
DROP TABLE copied;

-- Bad input: clear errors, and the table stays as it was.
\c - - - :node1_port
CREATE TABLE items (id int PRIMARY KEY, price float8, name text);
INSERT INTO items SELECT g, g * 1.5, 'item ' || g FROM generate_series(1, 100) g;
SELECT synapse.create_distributed_table('items', 'missing');
SELECT synapse.create_distributed_table('items', 'price');
SELECT synapse.create_distributed_table('items', 'id', 0);
SELECT synapse.create_distributed_table('no_such_table', 'id');
SELECT synapse.create_distributed_table('orders', 'id');
CREATE TABLE item_tags (item_id int REFERENCES items (id), tag text);
SELECT synapse.create_distributed_table('item_tags', 'item_id');
SELECT synapse.create_distributed_table('items', 'id');
CREATE TABLE counters (id int GENERATED ALWAYS AS IDENTITY, v int);
SELECT synapse.create_distributed_table('counters', 'id');
CREATE TABLE serials (id serial, v int);
SELECT synapse.create_distributed_table('serials', 'id');
SELECT synapse.create_distributed_table('synapse.node_catalog', 'id');
-- A type the other nodes do not have: the table stays here, with a hint.
CREATE TYPE only_here AS ENUM ('a', 'b');
CREATE TABLE typed (id int PRIMARY KEY, t only_here);
INSERT INTO typed VALUES (1, 'a'), (2, 'b');
SELECT synapse.create_distributed_table('typed', 'id');
SELECT synapse.create_reference_table('typed');
SELECT relkind, (SELECT count(*) FROM typed) AS typed_rows FROM pg_class WHERE relname = 'typed';
DROP TABLE typed;
DROP TYPE only_here;
SELECT relkind, (SELECT count(*) FROM items) AS item_rows FROM pg_class WHERE relname = 'items';
SELECT count(*) AS catalog_entries FROM synapse.distributed_tables;
\c - - - :node2_port
SELECT count(*) AS items_tables_elsewhere FROM pg_class WHERE relname IN ('items', 'item_tags', 'counters', 'serials');
\c - - - :node1_port
DROP TABLE item_tags, counters, serials;

-- A reference table: a full copy on every node; reads are local, writes reach every copy.
CREATE TABLE regions (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO regions VALUES ('eu', 'Europe'), ('us', 'Americas'), ('ap', 'Asia Pacific');
SELECT synapse.create_reference_table('regions');
SELECT node, shards, rows FROM synapse.table_distribution('regions') ORDER BY node;
SELECT table_name, shard, node, role FROM synapse.placements WHERE table_name = 'public.regions' ORDER BY node;
\c - - - :node3_port
SELECT * FROM regions ORDER BY code;
INSERT INTO regions VALUES ('af', 'Africa');
\c - - - :node1_port
SELECT * FROM regions ORDER BY code;
DELETE FROM regions WHERE code = 'af';

-- TRUNCATE and DROP reach every node; DROP also leaves the catalog.
CREATE TABLE scratch (k text PRIMARY KEY, v int);
INSERT INTO scratch SELECT 'k' || g, g FROM generate_series(1, 50) g;
SELECT synapse.create_distributed_table('scratch', 'k', 8);
SELECT count(*) FROM scratch;
TRUNCATE scratch;
SELECT count(*) FROM scratch;
DROP TABLE scratch;
SELECT count(*) AS scratch_entries FROM synapse.distributed_tables WHERE table_name = 'public.scratch';
\c - - - :node2_port
SELECT count(*) AS scratch_tables FROM pg_class WHERE relname = 'scratch';
\c - - - :node1_port

-- Undistributing brings every row back into an ordinary table here, and drops the others.
SELECT synapse.undistribute_table('orders');
SELECT relkind, (SELECT count(*) FROM orders) AS rows, (SELECT sum(amount) FROM orders) AS amount FROM pg_class WHERE relname = 'orders';
SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1;
SELECT synapse.undistribute_table('regions');
INSERT INTO regions VALUES ('af', 'Africa');
SELECT count(*) AS catalog_entries FROM synapse.distributed_tables;
SELECT synapse.undistribute_table('items');
\c - - - :node2_port
SELECT count(*) AS orders_or_regions_left FROM pg_class WHERE relname IN ('orders', 'regions');
\c - - - :node1_port
DROP TABLE orders, items, regions;
