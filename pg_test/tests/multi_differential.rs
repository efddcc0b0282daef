//! Differential test: the same schema and rows in a 3-node cluster (distributed and
//! reference tables) and in one plain PostgreSQL server; every query must give the same
//! result on both (as a multiset of rows, and in the same order where the query fixes
//! one), or fail on the cluster with a clear "not supported" error — never differ.

use synapse_pg_test::{Cluster, PlainServer};

/// Tables, rows with NULLs and every supported key type, and how the cluster spreads them.
const SCHEMA: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, region text, joined date);
CREATE TABLE orders (customer_id bigint NOT NULL, id bigint NOT NULL, amount numeric(12,2),
                     status text, placed date, note text, PRIMARY KEY (customer_id, id));
CREATE TABLE events (id uuid PRIMARY KEY, at timestamp NOT NULL, kind varchar(20), payload text);
CREATE TABLE tags (name text PRIMARY KEY, weight smallint);
CREATE TABLE prices (sku numeric PRIMARY KEY, price numeric(10,2), currency text);
CREATE TABLE days (d date PRIMARY KEY, n int);
CREATE TABLE stamps (ts timestamptz PRIMARY KEY, v int);
CREATE TABLE counts (k int PRIMARY KEY, c int);
CREATE TABLE regions (code text PRIMARY KEY, name text NOT NULL);

INSERT INTO customers SELECT g, 'customer ' || g,
       CASE WHEN g % 7 = 0 THEN NULL ELSE (ARRAY['eu','us','ap'])[1 + g % 3] END,
       DATE '2024-01-01' + (g * 3)
  FROM generate_series(1, 300) g;
INSERT INTO orders SELECT 1 + (g % 300), g, CASE WHEN g % 11 = 0 THEN NULL ELSE (g % 97) * 1.25 END,
       (ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], DATE '2025-01-01' + (g % 365),
       CASE WHEN g % 5 = 0 THEN 'gift' END
  FROM generate_series(1, 3000) g;
INSERT INTO events SELECT md5('e' || g)::uuid, TIMESTAMP '2026-01-01' + g * interval '17 minutes',
       (ARRAY['click','view','buy', NULL])[1 + g % 4], repeat('x', g % 13)
  FROM generate_series(1, 1000) g;
INSERT INTO tags SELECT 'tag' || g, (g % 9)::smallint FROM generate_series(1, 200) g;
INSERT INTO prices SELECT g / 4.0, (g % 50) + 0.99, CASE WHEN g % 3 = 0 THEN 'EUR' ELSE 'USD' END
  FROM generate_series(1, 400) g;
INSERT INTO days SELECT DATE '2026-01-01' + g, g % 10 FROM generate_series(0, 364) g;
INSERT INTO stamps SELECT TIMESTAMPTZ '2026-03-01 00:00+00' + g * interval '1 hour', g FROM generate_series(1, 500) g;
INSERT INTO counts SELECT g, g * g % 101 FROM generate_series(1, 500) g;
INSERT INTO regions VALUES ('eu', 'Europe'), ('us', 'Americas'), ('ap', 'Asia Pacific');
";

const DISTRIBUTE: &str = "
SELECT synapse.create_distributed_table('customers', 'id');
SELECT synapse.create_distributed_table('orders', 'customer_id');
SELECT synapse.create_distributed_table('events', 'id', 64);
SELECT synapse.create_distributed_table('tags', 'name', 16);
SELECT synapse.create_distributed_table('prices', 'sku', 32);
SELECT synapse.create_distributed_table('days', 'd', 8);
SELECT synapse.create_distributed_table('stamps', 'ts', 8);
SELECT synapse.create_distributed_table('counts', 'k');
SELECT synapse.create_reference_table('regions');
";

/// The queries. Those whose ORDER BY fixes the order completely are marked ordered.
fn queries() -> Vec<(String, bool)> {
    let mut q: Vec<(String, bool)> = Vec::new();
    let mut add = |sql: &str, ordered: bool| q.push((sql.to_owned(), ordered));

    // Whole tables and counts.
    for t in [
        "customers",
        "orders",
        "events",
        "tags",
        "prices",
        "days",
        "stamps",
        "counts",
        "regions",
    ] {
        add(&format!("SELECT * FROM {t}"), false);
        add(&format!("SELECT count(*) FROM {t}"), false);
    }
    // Point lookups by key, for every key type, hits and misses.
    for id in [1, 2, 150, 299, 300, 301, -1] {
        add(&format!("SELECT * FROM customers WHERE id = {id}"), false);
        add(
            &format!("SELECT id, amount FROM orders WHERE customer_id = {id} ORDER BY id"),
            true,
        );
    }
    for e in [1, 500, 999, 2000] {
        add(
            &format!("SELECT * FROM events WHERE id = md5('e{e}')::uuid"),
            false,
        );
    }
    for t in ["tag1", "tag77", "tag200", "nope"] {
        add(&format!("SELECT * FROM tags WHERE name = '{t}'"), false);
    }
    for s in ["0.25", "50", "50.00", "99.75", "1000"] {
        add(&format!("SELECT * FROM prices WHERE sku = {s}"), false);
    }
    for d in ["2026-01-01", "2026-07-04", "2027-01-01"] {
        add(&format!("SELECT * FROM days WHERE d = DATE '{d}'"), false);
    }
    for ts in [
        "2026-03-01 05:00+00",
        "2026-03-10 07:00+02",
        "2030-01-01 00:00+00",
    ] {
        add(
            &format!("SELECT * FROM stamps WHERE ts = TIMESTAMPTZ '{ts}'"),
            false,
        );
    }
    add("SELECT * FROM counts WHERE k = 7::smallint", false);
    add("SELECT * FROM counts WHERE k = 7::bigint", false);
    add("SELECT * FROM counts WHERE k IN (1, 2, 3, 400)", false);
    add("SELECT * FROM counts WHERE k = ANY (ARRAY[5, 6, 7])", false);
    add("SELECT * FROM customers WHERE id = 3 OR id = 4", false);
    // Filters: ranges, NULLs, expressions, LIKE, functions the nodes share and do not.
    add("SELECT * FROM customers WHERE region IS NULL", false);
    add(
        "SELECT * FROM customers WHERE region IS NOT NULL AND id < 20",
        false,
    );
    add(
        "SELECT id FROM customers WHERE region = 'eu' AND joined > DATE '2024-06-01'",
        false,
    );
    add(
        "SELECT * FROM orders WHERE amount IS NULL ORDER BY customer_id, id",
        true,
    );
    add(
        "SELECT * FROM orders WHERE amount > 100 AND status <> 'cancelled'",
        false,
    );
    add(
        "SELECT * FROM orders WHERE note IS DISTINCT FROM 'gift' AND id < 40",
        false,
    );
    add(
        "SELECT * FROM orders WHERE coalesce(note, 'none') = 'none' AND id % 100 = 1",
        false,
    );
    add("SELECT * FROM tags WHERE name LIKE 'tag1%'", false);
    add("SELECT * FROM tags WHERE upper(name) = 'TAG42'", false);
    add(
        "SELECT * FROM events WHERE kind IS NULL AND at < TIMESTAMP '2026-01-03'",
        false,
    );
    add("SELECT id FROM events WHERE length(payload) = 12", false);
    add(
        "SELECT * FROM days WHERE d BETWEEN DATE '2026-02-01' AND DATE '2026-02-10'",
        false,
    );
    add(
        "SELECT * FROM stamps WHERE ts > TIMESTAMPTZ '2026-03-20 00:00+00' AND v % 2 = 0",
        false,
    );
    add(
        "SELECT * FROM prices WHERE currency = 'EUR' AND price > 40",
        false,
    );
    add("SELECT count(*) FROM orders WHERE placed < now()", false);
    add("SELECT count(*) FROM customers WHERE random() >= 0", false);
    add(
        "SELECT * FROM orders WHERE amount > (SELECT avg(amount) FROM orders) AND id < 200",
        false,
    );
    add("SELECT * FROM orders WHERE false", false);
    add("SELECT * FROM counts WHERE c = k % 101 AND k < 30", false);
    // Aggregates, GROUP BY, HAVING, DISTINCT.
    add(
        "SELECT count(*), sum(amount), avg(amount), min(amount), max(amount) FROM orders",
        false,
    );
    add(
        "SELECT count(amount), count(note), count(DISTINCT status) FROM orders",
        false,
    );
    add(
        "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status",
        true,
    );
    add(
        "SELECT customer_id, count(*) FROM orders GROUP BY customer_id ORDER BY customer_id",
        true,
    );
    add("SELECT customer_id, sum(amount) FROM orders GROUP BY customer_id HAVING sum(amount) > 600 ORDER BY 1", true);
    add(
        "SELECT region, count(*) FROM customers GROUP BY region ORDER BY region NULLS FIRST",
        true,
    );
    add("SELECT DISTINCT status FROM orders ORDER BY 1", true);
    add("SELECT DISTINCT region FROM customers", false);
    add(
        "SELECT DISTINCT ON (status) status, id FROM orders ORDER BY status, id",
        true,
    );
    add(
        "SELECT kind, count(*), max(at) FROM events GROUP BY kind",
        false,
    );
    add(
        "SELECT n, count(*), min(d), max(d) FROM days GROUP BY n ORDER BY n",
        true,
    );
    add("SELECT weight, string_agg(name, ',' ORDER BY name) FROM tags GROUP BY weight ORDER BY weight", true);
    add(
        "SELECT currency, round(avg(price), 4) FROM prices GROUP BY currency ORDER BY 1",
        true,
    );
    add(
        "SELECT date_trunc('day', ts) AS day, sum(v) FROM stamps GROUP BY 1 ORDER BY 1",
        true,
    );
    add(
        "SELECT extract(month FROM placed) AS m, count(*) FROM orders GROUP BY 1 ORDER BY 1",
        true,
    );
    add("SELECT status, percentile_disc(0.5) WITHIN GROUP (ORDER BY amount) FROM orders GROUP BY status ORDER BY 1", true);
    add("SELECT status, bool_and(amount > 0), bool_or(note IS NULL) FROM orders GROUP BY 1 ORDER BY 1", true);
    add(
        "SELECT array_agg(id ORDER BY id) FROM customers WHERE id < 10",
        false,
    );
    add("SELECT count(*) FILTER (WHERE amount > 50), count(*) FILTER (WHERE note = 'gift') FROM orders", false);
    add("SELECT status, placed, count(*) FROM orders GROUP BY GROUPING SETS ((status), (placed)) HAVING count(*) > 40", false);
    add(
        "SELECT status, count(*) FROM orders GROUP BY ROLLUP (status) ORDER BY 1 NULLS LAST",
        true,
    );
    // ORDER BY, LIMIT, OFFSET.
    add("SELECT * FROM customers ORDER BY id LIMIT 5", true);
    add(
        "SELECT * FROM customers ORDER BY id DESC LIMIT 5 OFFSET 10",
        true,
    );
    add(
        "SELECT id, amount FROM orders ORDER BY amount DESC NULLS LAST, id LIMIT 20",
        true,
    );
    add(
        "SELECT id, amount FROM orders ORDER BY amount NULLS FIRST, id LIMIT 20",
        true,
    );
    add("SELECT * FROM events ORDER BY at LIMIT 3", true);
    add(
        "SELECT * FROM tags ORDER BY weight DESC, name LIMIT 10",
        true,
    );
    add("SELECT * FROM days ORDER BY d OFFSET 360", true);
    add(
        "SELECT * FROM stamps ORDER BY ts DESC FETCH FIRST 4 ROWS ONLY",
        true,
    );
    add("SELECT sku FROM prices ORDER BY sku LIMIT 0", true);
    add("SELECT * FROM counts ORDER BY c, k LIMIT 15", true);
    // Joins: co-located on the key, not co-located, with reference tables, outer joins.
    add("SELECT c.id, c.name, o.id, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id < 5 ORDER BY o.id", true);
    add("SELECT c.region, count(*) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.region ORDER BY 1 NULLS FIRST", true);
    add("SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.status = 'paid' GROUP BY c.id ORDER BY c.id", true);
    add("SELECT c.id FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.amount > 110)", false);
    add("SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.note = 'gift' AND o.amount > 115)", false);
    add("SELECT c.name, r.name FROM customers c JOIN regions r ON r.code = c.region WHERE c.id < 30", false);
    add("SELECT r.name, count(*) FROM customers c RIGHT JOIN regions r ON r.code = c.region GROUP BY r.name ORDER BY 1", true);
    add("SELECT c.id, r.code FROM customers c FULL JOIN regions r ON r.code = c.region WHERE c.id IS NULL OR c.id < 4", false);
    add(
        "SELECT o.id, k.c FROM orders o JOIN counts k ON k.k = o.id WHERE o.id < 50",
        false,
    );
    add(
        "SELECT t.name, k.c FROM tags t JOIN counts k ON k.k = t.weight",
        false,
    );
    add(
        "SELECT a.k, b.k FROM counts a JOIN counts b ON a.c = b.c AND a.k < b.k WHERE a.k < 60",
        false,
    );
    add("SELECT count(*) FROM orders o1 JOIN orders o2 ON o1.customer_id = o2.customer_id AND o1.id < o2.id", false);
    add("SELECT d.d, count(e.id) FROM days d LEFT JOIN events e ON e.at::date = d.d GROUP BY d.d ORDER BY d.d LIMIT 20", true);
    add("SELECT p.sku, p.price, t.name FROM prices p JOIN tags t ON t.weight = p.price::int % 9 WHERE p.sku < 3", false);
    add("SELECT c.id, x.total FROM customers c CROSS JOIN LATERAL (SELECT sum(amount) AS total FROM orders o WHERE o.customer_id = c.id) x WHERE c.id < 15", false);
    add(
        "SELECT * FROM customers c, regions r WHERE c.region = r.code AND c.id BETWEEN 100 AND 110",
        false,
    );
    add(
        "SELECT c.id, o.id FROM customers c JOIN orders o USING (id) WHERE c.id < 50",
        false,
    );
    // Subqueries.
    add(
        "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE amount > 119)",
        false,
    );
    add("SELECT * FROM customers WHERE id NOT IN (SELECT customer_id FROM orders WHERE customer_id IS NOT NULL)", false);
    add("SELECT id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) FROM customers c WHERE id < 25", false);
    add("SELECT max(cnt) FROM (SELECT customer_id, count(*) AS cnt FROM orders GROUP BY customer_id) s", false);
    add("SELECT * FROM (SELECT status, sum(amount) AS s FROM orders GROUP BY status) x WHERE s > 10000", false);
    add(
        "SELECT name FROM tags WHERE weight = (SELECT max(weight) FROM tags)",
        false,
    );
    add(
        "SELECT * FROM counts WHERE c > ALL (SELECT c FROM counts WHERE k < 5)",
        false,
    );
    add(
        "SELECT * FROM counts WHERE c = ANY (SELECT weight FROM tags WHERE name < 'tag15')",
        false,
    );
    add("SELECT (SELECT name FROM regions r WHERE r.code = c.region) FROM customers c WHERE id < 10", false);
    // CTEs, recursive and materialized.
    add("WITH big AS (SELECT * FROM orders WHERE amount > 110) SELECT status, count(*) FROM big GROUP BY status", false);
    add("WITH t AS MATERIALIZED (SELECT customer_id, sum(amount) s FROM orders GROUP BY 1) SELECT * FROM t WHERE s > 700", false);
    add("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT k.* FROM r JOIN counts k ON k.k = r.n", false);
    add("WITH c AS (SELECT id FROM customers WHERE region = 'ap') SELECT count(*) FROM orders WHERE customer_id IN (SELECT id FROM c)", false);
    add("WITH a AS (SELECT * FROM days), b AS (SELECT * FROM days WHERE n = 3) SELECT count(*) FROM a JOIN b USING (d)", false);
    // Window functions.
    add("SELECT id, customer_id, amount, row_number() OVER (PARTITION BY customer_id ORDER BY id) FROM orders WHERE customer_id < 5", false);
    add("SELECT id, sum(amount) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM orders WHERE id < 30", false);
    add("SELECT status, id, rank() OVER (PARTITION BY status ORDER BY amount DESC NULLS LAST, id) FROM orders WHERE id < 60", false);
    add("SELECT d, n, lag(n) OVER (ORDER BY d), lead(n, 2) OVER (ORDER BY d) FROM days WHERE d < DATE '2026-01-20'", false);
    add(
        "SELECT name, weight, dense_rank() OVER (ORDER BY weight) FROM tags",
        false,
    );
    add(
        "SELECT k, c, avg(c) OVER (PARTITION BY c % 5) FROM counts WHERE k < 40",
        false,
    );
    add("SELECT kind, count(*) OVER (PARTITION BY kind) FROM events WHERE at < TIMESTAMP '2026-01-02'", false);
    add("SELECT ts, v, first_value(v) OVER w, last_value(v) OVER w FROM stamps WINDOW w AS (ORDER BY ts ROWS BETWEEN 3 PRECEDING AND 3 FOLLOWING) ORDER BY ts LIMIT 10", true);
    add(
        "SELECT customer_id, ntile(4) OVER (ORDER BY customer_id, id) FROM orders WHERE id < 20",
        false,
    );
    // Set operations.
    add(
        "SELECT region FROM customers UNION SELECT code FROM regions",
        false,
    );
    add(
        "SELECT region FROM customers UNION ALL SELECT code FROM regions",
        false,
    );
    add(
        "SELECT customer_id FROM orders INTERSECT SELECT id FROM customers WHERE id < 50",
        false,
    );
    add(
        "SELECT id FROM customers EXCEPT SELECT customer_id FROM orders WHERE status = 'paid'",
        false,
    );
    add(
        "SELECT k FROM counts WHERE k < 10 UNION SELECT weight FROM tags ORDER BY 1",
        true,
    );
    add("(SELECT id FROM customers ORDER BY id LIMIT 3) UNION ALL (SELECT id FROM orders ORDER BY id DESC LIMIT 3)", false);
    add(
        "SELECT name FROM tags EXCEPT ALL SELECT name FROM tags WHERE weight > 2",
        false,
    );
    // Expressions over rows, types and NULL handling.
    add(
        "SELECT id, amount * 2, amount / 3, status || '!' FROM orders WHERE id < 15",
        false,
    );
    add("SELECT c FROM customers c WHERE id < 4", false);
    add("SELECT row_to_json(t) FROM tags t WHERE weight = 3", false);
    add(
        "SELECT sku::text, price::float8 FROM prices WHERE sku < 1",
        false,
    );
    add("SELECT id, CASE WHEN amount IS NULL THEN 'none' WHEN amount > 60 THEN 'big' ELSE 'small' END FROM orders WHERE id < 25", false);
    add("SELECT nullif(status, 'new'), greatest(amount, 10), least(amount, 10) FROM orders WHERE id < 12", false);
    add(
        "SELECT id::text, md5(name) FROM customers WHERE id % 50 = 0",
        false,
    );
    add(
        "SELECT at::date, kind FROM events WHERE id::text LIKE 'a%'",
        false,
    );
    add(
        "SELECT sum(v) FILTER (WHERE extract(hour FROM ts AT TIME ZONE 'UTC') = 0) FROM stamps",
        false,
    );
    add("SELECT count(*) FROM orders WHERE (amount, status) IN ((12.50, 'shipped'), (25.00, 'paid'))", false);
    add(
        "SELECT * FROM orders WHERE customer_id = 7 AND id = 2107",
        false,
    );
    add("SELECT * FROM orders WHERE customer_id = 7 AND amount IS NOT NULL ORDER BY id DESC LIMIT 2", true);
    add(
        "SELECT count(*) FROM customers WHERE joined + 30 > DATE '2026-06-01'",
        false,
    );
    add(
        "SELECT generate_series(1, 2) AS g, id FROM customers WHERE id < 3",
        false,
    );
    add(
        "SELECT * FROM customers TABLESAMPLE BERNOULLI (100) WHERE id < 3",
        false,
    );
    add("SELECT id FROM customers WHERE id < 5 FOR UPDATE", false);
    // Variants over the whole key space, to reach every shard of every table.
    for m in [2, 3, 5, 7, 13] {
        add(
            &format!("SELECT count(*), sum(c) FROM counts WHERE k % {m} = 1"),
            false,
        );
        add(&format!("SELECT customer_id % {m} AS b, count(*), sum(amount) FROM orders GROUP BY 1 ORDER BY 1"), true);
        add(
            &format!("SELECT weight % {m}, count(*) FROM tags GROUP BY 1 ORDER BY 1"),
            true,
        );
        add(
            &format!("SELECT n % {m}, count(*) FROM days GROUP BY 1 ORDER BY 1"),
            true,
        );
    }
    for s in ["new", "paid", "shipped", "cancelled"] {
        add(&format!("SELECT c.region, sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.status = '{s}' GROUP BY 1 ORDER BY 1 NULLS FIRST"), true);
        add(
            &format!("SELECT count(DISTINCT customer_id) FROM orders WHERE status = '{s}'"),
            false,
        );
    }
    // More shapes: nested aggregates, joins of three tables, ordered set functions,
    // expressions on keys (which cannot pin a shard), and empty results.
    add(
        "SELECT avg(s) FROM (SELECT customer_id, sum(amount) s FROM orders GROUP BY 1) x",
        false,
    );
    add("SELECT c.region, o.status, count(*) FROM customers c JOIN orders o ON o.customer_id = c.id JOIN regions r ON r.code = c.region GROUP BY 1, 2 ORDER BY 1, 2", true);
    add("SELECT * FROM customers WHERE id + 0 = 17", false);
    add("SELECT * FROM customers WHERE id = 17 AND id = 18", false);
    add("SELECT * FROM customers WHERE id IS NULL", false);
    add(
        "SELECT * FROM tags WHERE name = 'tag5' OR weight = 100",
        false,
    );
    add(
        "SELECT count(*) FROM orders WHERE customer_id BETWEEN 10 AND 20",
        false,
    );
    add(
        "SELECT mode() WITHIN GROUP (ORDER BY status) FROM orders",
        false,
    );
    add(
        "SELECT k, c FROM counts ORDER BY c DESC, k DESC LIMIT 7 OFFSET 3",
        true,
    );
    add(
        "SELECT json_agg(name ORDER BY name) FROM tags WHERE weight = 8",
        false,
    );
    add(
        "SELECT count(*) FROM events e JOIN days d ON d.d = e.at::date WHERE d.n = 4",
        false,
    );
    add(
        "SELECT sum(price * 2) FROM prices WHERE sku > 50 AND currency = 'USD'",
        false,
    );
    add(
        "SELECT min(ts), max(ts), count(*) FROM stamps WHERE v BETWEEN 100 AND 200",
        false,
    );
    add(
        "SELECT status FROM orders GROUP BY status HAVING count(*) > 750 ORDER BY 1",
        true,
    );
    add(
        "SELECT EXISTS (SELECT 1 FROM customers WHERE id = 250)",
        false,
    );
    add(
        "SELECT (SELECT count(*) FROM orders) - (SELECT count(*) FROM customers)",
        false,
    );
    add(
        "VALUES ((SELECT max(id) FROM customers), (SELECT min(d) FROM days))",
        false,
    );
    add("SELECT c.id FROM customers c WHERE c.id = (SELECT max(customer_id) FROM orders WHERE amount < 2)", false);
    add(
        "SELECT stddev_samp(c)::numeric(10,4), var_pop(c)::numeric(12,4) FROM counts",
        false,
    );
    add("SELECT count(*) FROM customers c1, customers c2 WHERE c1.id = c2.id - 1 AND c1.region = c2.region", false);
    for k in ["click", "view", "buy"] {
        add(
            &format!("SELECT count(*), min(at), max(at) FROM events WHERE kind = '{k}'"),
            false,
        );
    }
    // Split between the nodes and this one (pushdown): partial aggregates of every kind
    // and key type, FILTER, HAVING, expressions over aggregates, empty inputs, DISTINCT,
    // ORDER BY with LIMIT/OFFSET, joins co-located on the key (inner and outer) and with
    // reference tables.
    for sql in [
        "SELECT count(*), count(amount), sum(amount), avg(amount), min(placed), max(status) FROM orders",
        "SELECT sum(c), avg(c), sum(k::int2), avg(k::int2), sum(k::bigint), avg(k::bigint) FROM counts",
        "SELECT avg(c::float8), sum(c::float8), min(c::float8) FROM counts",
        "SELECT avg(price), sum(price), min(sku), max(sku), count(currency) FROM prices",
        "SELECT bit_or(c), bit_and(c), bit_xor(c), bool_and(c > 0), bool_or(c > 99), every(k > 0) FROM counts",
        "SELECT count(*), sum(c), avg(c), min(c), max(c), bool_or(c > 1) FROM counts WHERE k < 0",
        "SELECT status, count(*) FROM orders WHERE amount < 0 GROUP BY status",
        "SELECT count(*) > 0 FROM customers HAVING count(*) > 10",
        "SELECT count(*) FROM customers HAVING count(*) > 1000",
        "SELECT sum(v), avg(v), min(ts), max(ts) FROM stamps",
        "SELECT min(at), max(at), count(DISTINCT kind) FROM events",
        "SELECT count(DISTINCT region), string_agg(DISTINCT region, ',' ORDER BY region) FROM customers",
        "SELECT stddev(amount)::numeric(12,6), variance(c)::numeric(14,4) FROM orders, counts WHERE counts.k = orders.customer_id",
        "SELECT count(*), sum(o.amount), avg(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id",
        "SELECT count(*), count(c.id), count(o.id) FROM customers c FULL JOIN orders o ON o.customer_id = c.id AND o.amount > 100",
        "SELECT count(*) FROM regions r LEFT JOIN customers c ON r.code = c.region",
        "SELECT count(*), sum(k.c) FROM customers c JOIN counts k ON k.k = c.id",
        "SELECT sum(o.amount) FROM orders o JOIN customers c ON c.id = o.id",
        "SELECT count(*) FROM customers c JOIN orders o ON o.customer_id = c.id JOIN counts k ON k.k = o.customer_id WHERE k.c > 50",
        "SELECT k, c FROM counts ORDER BY c FETCH FIRST 3 ROWS WITH TIES",
    ] {
        add(sql, false);
    }
    for sql in [
        "SELECT weight, count(*), avg(weight), sum(weight) FROM tags GROUP BY weight ORDER BY weight",
        "SELECT region, count(*) * 2 + 1, sum(id) / count(*), max(joined) - min(joined) FROM customers GROUP BY region ORDER BY region NULLS LAST",
        "SELECT upper(status), count(*) FROM orders GROUP BY upper(status) ORDER BY 1",
        "SELECT status, count(*) FILTER (WHERE note IS NOT NULL), sum(amount) FILTER (WHERE amount > 50), avg(amount) FILTER (WHERE placed > DATE '2025-06-01') FROM orders GROUP BY status ORDER BY status",
        "SELECT status, count(*) FROM orders GROUP BY status HAVING avg(amount) > 60 AND count(*) > 10 ORDER BY 1",
        "SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY n DESC, status LIMIT 2",
        "SELECT status, placed, count(*) FROM orders GROUP BY status, placed ORDER BY 3 DESC, 1, 2 LIMIT 10 OFFSET 5",
        "SELECT DISTINCT status, note FROM orders ORDER BY 1, 2 NULLS FIRST",
        "SELECT DISTINCT c % 10 FROM counts ORDER BY 1 LIMIT 5",
        "SELECT kind, count(*), min(payload), max(length(payload)) FROM events GROUP BY kind ORDER BY kind NULLS FIRST",
        "SELECT date_trunc('month', at), count(*) FROM events GROUP BY 1 ORDER BY 1",
        "SELECT n, count(*), min(d) FROM days GROUP BY n HAVING min(d) > DATE '2026-01-05' ORDER BY n",
        "SELECT currency, count(*), avg(price), max(sku) FROM prices GROUP BY currency ORDER BY currency",
        "SELECT c.region, count(o.id), sum(o.amount) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.region ORDER BY 1 NULLS FIRST",
        "SELECT r.name, count(*), avg(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id JOIN regions r ON r.code = c.region GROUP BY r.name ORDER BY 1",
        "SELECT c.id, o.id, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.amount DESC NULLS LAST, o.id LIMIT 7",
        "SELECT c.id, c.name, r.name FROM customers c LEFT JOIN regions r ON r.code = c.region ORDER BY c.id LIMIT 12",
        "SELECT id, name FROM customers ORDER BY name, id LIMIT 5 OFFSET 3",
        "SELECT * FROM counts ORDER BY c DESC, k LIMIT 5 OFFSET 0",
        "SELECT k FROM counts ORDER BY k LIMIT ALL",
        "SELECT ts, v FROM stamps ORDER BY v DESC LIMIT 3 OFFSET 497",
        // Grouped by the shard key: each group is whole on one node, which finishes it
        // (any aggregate, HAVING, ORDER BY with LIMIT).
        "SELECT customer_id, count(DISTINCT status), string_agg(status, ',' ORDER BY id), percentile_disc(0.5) WITHIN GROUP (ORDER BY amount) FROM orders GROUP BY customer_id HAVING count(*) > 9 ORDER BY customer_id",
        "SELECT customer_id, count(*), max(amount) FROM orders GROUP BY customer_id ORDER BY 2 DESC, 3 DESC NULLS LAST, 1 LIMIT 5",
        "SELECT c.id, c.name, count(o.id), array_agg(DISTINCT o.status ORDER BY o.status) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.id < 40 GROUP BY c.id, c.name ORDER BY c.id",
        "SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.amount > 110 GROUP BY c.id ORDER BY 2 DESC, 1 LIMIT 8",
        "SELECT o.customer_id, count(*) FROM customers c RIGHT JOIN orders o ON o.customer_id = c.id GROUP BY o.customer_id ORDER BY 1 LIMIT 5",
        "SELECT kind, id, count(*) FROM events GROUP BY id, kind ORDER BY 3 DESC, 2 LIMIT 4",
    ] {
        add(sql, true);
    }
    q
}

/// Prepared statements with parameters: (statement, list of parameter sets).
const PREPARED: &[(&str, &[&[&str]])] = &[
    (
        "SELECT * FROM customers WHERE id = $1::bigint",
        &[&["1"], &["42"], &["300"], &["999"]],
    ),
    (
        "SELECT id, amount FROM orders WHERE customer_id = $1::bigint AND amount > $2::numeric",
        &[&["5", "10"], &["77", "0"], &["301", "1"]],
    ),
    (
        "SELECT * FROM tags WHERE name = $1::text",
        &[&["tag3"], &["tag150"], &["none"]],
    ),
    (
        "SELECT count(*) FROM events WHERE at >= $1::timestamp AND kind = $2::varchar",
        &[&["2026-01-05", "view"], &["2026-01-08", "buy"]],
    ),
    (
        "SELECT * FROM prices WHERE sku = $1::numeric",
        &[&["2.5"], &["2.50"], &["77"]],
    ),
    (
        "SELECT * FROM days WHERE d = $1::date",
        &[&["2026-05-05"], &["2026-12-31"]],
    ),
    (
        "SELECT * FROM events WHERE id = $1::uuid",
        &[&["0b60d06f-7b37-a5cd-01c2-8e3d1ed6a6d3"]],
    ),
    (
        "SELECT status, count(*) FROM orders WHERE placed > $1::date GROUP BY status",
        &[&["2025-06-01"], &["2025-12-01"]],
    ),    (
        "SELECT status, count(*), avg(amount) FROM orders GROUP BY status HAVING count(*) > $1::int ORDER BY 2 DESC, 1 LIMIT $2",
        &[&["700", "2"], &["0", "10"]],
    ),
    (
        "SELECT k, c FROM counts WHERE c > $1::int ORDER BY c, k LIMIT $2 OFFSET $3",
        &[&["90", "5", "2"], &["0", "3", "0"], &["200", "1", "1"]],
    ),
];

/// Writes, compared by their results (RETURNING, row counts) and by the tables after.
const WRITES: &[&str] = &[
    "INSERT INTO customers VALUES (1001, 'new one', 'eu', '2026-11-29') RETURNING *",
    "INSERT INTO customers (id, name) VALUES (1002, 'no region')",
    "INSERT INTO orders VALUES (1001, 1, 10.50, 'new', '2026-11-29', NULL), (1001, 2, 20.00, 'new', '2026-11-29', 'gift') RETURNING customer_id, id, amount",
    "INSERT INTO orders VALUES (5, 90001, 1.00, 'new', '2026-11-29', NULL) ON CONFLICT DO NOTHING",
    "INSERT INTO orders VALUES (5, 90001, 2.00, 'paid', '2026-11-29', NULL) ON CONFLICT (customer_id, id) DO UPDATE SET amount = EXCLUDED.amount, status = EXCLUDED.status RETURNING amount, status",
    "INSERT INTO events VALUES ('00000000-0000-0000-0000-000000000001', '2026-11-29 10:00', 'click', 'p')",
    "INSERT INTO tags VALUES ('brand new', 3) RETURNING name, weight",
    "INSERT INTO prices VALUES (12345.5, 9.99, 'EUR')",
    "INSERT INTO days VALUES ('2027-01-01', 4)",
    "INSERT INTO stamps VALUES ('2026-11-29 12:00+00', 42)",
    "INSERT INTO counts VALUES (1000, 1) RETURNING k * 2, c",
    "UPDATE customers SET name = 'renamed' WHERE id = 10 RETURNING id, name",
    "UPDATE orders SET amount = amount * 2 WHERE customer_id = 20 AND status = 'paid' RETURNING id, amount",
    "UPDATE orders SET note = 'checked' WHERE customer_id = 21",
    "UPDATE tags SET weight = weight + 1 WHERE name = 'tag10'",
    "UPDATE prices SET price = 0 WHERE sku = 1.25",
    "UPDATE days SET n = n + 100 WHERE d = '2026-03-03'",
    "UPDATE stamps SET v = -v WHERE ts = '2026-03-02 00:00+00'",
    "UPDATE counts SET c = c + 1000 WHERE k = 33 RETURNING *",
    "DELETE FROM orders WHERE customer_id = 22 AND amount IS NULL",
    "DELETE FROM customers WHERE id = 299 RETURNING id",
    "DELETE FROM events WHERE id = md5('e77')::uuid",
    "DELETE FROM counts WHERE k = 34",
    "UPDATE counts SET c = 0 WHERE k = 35 AND c > 1000000",
    "DELETE FROM counts WHERE k = 36 AND k = 37",
    "BEGIN; INSERT INTO orders VALUES (40, 95001, 5.00, 'new', '2026-11-29', NULL); UPDATE customers SET region = 'ap' WHERE id = 40; COMMIT",
    // Prepared writes, past the five custom plans into the generic plan.
    "PREPARE w1(bigint, bigint) AS INSERT INTO orders VALUES ($1, $2, 1.00, 'new', '2026-11-29', NULL)",
    "EXECUTE w1(50, 96001)", "EXECUTE w1(51, 96002)", "EXECUTE w1(52, 96003)", "EXECUTE w1(53, 96004)",
    "EXECUTE w1(54, 96005)", "EXECUTE w1(55, 96006)", "EXECUTE w1(56, 96007)", "EXECUTE w1(57, 96008)",
    "PREPARE w2(int) AS UPDATE counts SET c = c + 1 WHERE k = $1 RETURNING k, c",
    "EXECUTE w2(1)", "EXECUTE w2(2)", "EXECUTE w2(3)", "EXECUTE w2(4)", "EXECUTE w2(5)", "EXECUTE w2(6)", "EXECUTE w2(7)",
    "PREPARE w3(int) AS DELETE FROM counts WHERE k = $1 RETURNING k",
    "EXECUTE w3(100)", "EXECUTE w3(101)", "EXECUTE w3(102)", "EXECUTE w3(103)", "EXECUTE w3(104)", "EXECUTE w3(105)", "EXECUTE w3(106)",
    // Writes that span nodes: one statement on every node concerned, committed together
    // (two-phase commit), in a transaction block or not.
    "UPDATE counts SET c = c + 1",
    "DELETE FROM orders WHERE amount > 115",
    "INSERT INTO counts SELECT k + 2000, c FROM counts WHERE k < 10",
    "UPDATE customers SET id = id + 5000 WHERE id = 11",
    "BEGIN; UPDATE counts SET c = 1 WHERE k = 1; UPDATE counts SET c = 1 WHERE k = 2; UPDATE counts SET c = 1 WHERE k = 3; UPDATE counts SET c = 1 WHERE k = 4; COMMIT",
    "UPDATE regions SET name = 'Europa' WHERE code = 'eu'",
    "UPDATE orders SET note = 'bulk' WHERE status = 'cancelled' AND placed < '2025-03-01' RETURNING customer_id, id, note",
    "DELETE FROM events WHERE kind IS NULL AND at < '2026-01-05' RETURNING id, kind",
    "INSERT INTO tags VALUES ('multi a', 1), ('multi b', 2), ('multi c', 3), ('multi d', 4) RETURNING name, weight",
    "INSERT INTO prices SELECT sku + 1000, price, currency FROM prices WHERE sku < 20 RETURNING sku, currency",
    "INSERT INTO counts SELECT k, 0 FROM counts WHERE k BETWEEN 110 AND 140 ON CONFLICT (k) DO UPDATE SET c = counts.c + EXCLUDED.c + 7 RETURNING k, c",
    "INSERT INTO counts SELECT k, 0 FROM counts WHERE k BETWEEN 110 AND 160 ON CONFLICT DO NOTHING",
    "INSERT INTO days SELECT d + 1000, n FROM days WHERE n = 3",
    "INSERT INTO stamps SELECT ts + interval '1000 days', v FROM stamps WHERE v % 50 = 0",
    "INSERT INTO events SELECT md5('new' || g)::uuid, TIMESTAMP '2027-01-01' + g * interval '1 hour', 'bulk', NULL FROM generate_series(1, 40) g",
    "INSERT INTO customers SELECT id + 10000, name, region, joined FROM customers WHERE region = 'ap'",
    "INSERT INTO orders SELECT o.customer_id + 10000, o.id, o.amount, o.status, o.placed, 'copied' FROM orders o JOIN customers c ON c.id = o.customer_id + 10000",
    "UPDATE customers SET region = r.code FROM regions r WHERE r.name = 'Americas' AND customers.region IS NULL",
    "UPDATE counts SET c = c * 2 WHERE k IN (1, 2, 3, 50, 60, 70, 80) RETURNING k, c",
    "INSERT INTO regions VALUES ('af', 'Africa'), ('an', 'Antarctica')",
    "INSERT INTO regions SELECT 'r' || g, 'region ' || g FROM generate_series(1, 20) g",
    "DELETE FROM regions WHERE code LIKE 'r1%' RETURNING code",
    "UPDATE regions SET name = name || '!' WHERE code > 'r5' RETURNING code, name",
    "BEGIN; UPDATE counts SET c = c - 1; INSERT INTO counts SELECT k + 3000, c FROM counts WHERE k < 30; DELETE FROM tags WHERE weight = 8; COMMIT",
    "PREPARE mw(int, int, int) AS INSERT INTO counts VALUES ($1, 1), ($2, 2), ($3, 3) RETURNING k",
    "EXECUTE mw(4001, 4002, 4003)", "EXECUTE mw(4004, 4005, 4006)", "EXECUTE mw(4007, 4008, 4009)",
    "EXECUTE mw(4010, 4011, 4012)", "EXECUTE mw(4013, 4014, 4015)", "EXECUTE mw(4016, 4017, 4018)",
    "EXECUTE mw(4019, 4020, 4021)",
    "PREPARE mu(int) AS UPDATE orders SET amount = amount + $1 WHERE status = 'new'",
    "EXECUTE mu(1)", "EXECUTE mu(2)", "EXECUTE mu(3)", "EXECUTE mu(4)", "EXECUTE mu(5)", "EXECUTE mu(6)",
    // The client's parameters in ON CONFLICT and RETURNING of rows sent to several nodes
    // (the rows' values are parameters of their own there).
    "PREPARE mc(int, int, int) AS INSERT INTO counts VALUES ($1, 0), ($2, 0), ($1 + 2000, 0) ON CONFLICT (k) DO UPDATE SET c = counts.c + $3 RETURNING k, c, $3",
    "EXECUTE mc(1, 2, 10)", "EXECUTE mc(3, 50, 20)", "EXECUTE mc(60, 70, 30)", "EXECUTE mc(80, 4001, 40)",
    "EXECUTE mc(4002, 4003, 50)", "EXECUTE mc(1, 60, 70)", "EXECUTE mc(2, 70, 80)", "EXECUTE mc(3, 80, 90)",
    "PREPARE ms(int, int) AS INSERT INTO counts SELECT k + 5000, c FROM counts WHERE k < $1 ON CONFLICT (k) DO UPDATE SET c = counts.c + $2 RETURNING k, c",
    "EXECUTE ms(20, 1)", "EXECUTE ms(20, 2)", "EXECUTE ms(25, 3)", "EXECUTE ms(25, 4)", "EXECUTE ms(30, 5)",
    "EXECUTE ms(30, 6)", "EXECUTE ms(35, 7)",
];

/// The writes the cluster may refuse (SQLSTATE 0A000): changing the shard key.
const REFUSED_WRITES: &[&str] = &["UPDATE customers SET id = id + 5000 WHERE id = 11"];

/// A result as comparable text: rows of text values ("NULL" for NULL).
fn rows(client: &mut postgres::Client, sql: &str) -> Result<Vec<Vec<String>>, postgres::Error> {
    let mut out = Vec::new();
    for message in client.simple_query(sql)? {
        if let postgres::SimpleQueryMessage::Row(row) = message {
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).map_or("NULL".to_owned(), str::to_owned))
                    .collect(),
            );
        }
    }
    Ok(out)
}

fn is_clear_refusal(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.code().code() == "0A000")
}

#[test]
fn queries_give_the_same_answers_as_one_server() {
    let cluster = Cluster::up("multi_differential", 3, 9000);
    let plain = PlainServer::start("multi_differential_plain", 9100, "");
    let mut cl = cluster.connect(1);
    let mut pl = plain.connect();
    pl.batch_execute(SCHEMA).unwrap();
    cl.batch_execute(SCHEMA).unwrap();
    cl.batch_execute(DISTRIBUTE).unwrap();

    let queries = queries();
    assert!(queries.len() >= 200, "only {} queries", queries.len());
    let (mut same, mut refused, mut differ) = (0, Vec::new(), Vec::new());
    for (sql, ordered) in &queries {
        let expected = rows(&mut pl, sql).unwrap_or_else(|e| panic!("plain server: {sql}: {e}"));
        match rows(&mut cl, sql) {
            Ok(mut got) => {
                let mut want = expected.clone();
                if !ordered {
                    got.sort();
                    want.sort();
                }
                if got == want {
                    same += 1;
                } else {
                    differ.push(format!(
                        "{sql}\n  cluster: {} rows {:?}\n  plain:   {} rows {:?}",
                        got.len(),
                        got.iter().take(3).collect::<Vec<_>>(),
                        want.len(),
                        want.iter().take(3).collect::<Vec<_>>()
                    ));
                }
            }
            Err(e) if is_clear_refusal(&e) => {
                refused.push(format!("{sql}: {}", e.as_db_error().unwrap().message()))
            }
            Err(e) => differ.push(format!("{sql}\n  cluster error: {e:?}")),
        }
    }
    // How the cluster routed them (EXPLAIN): the pushdown level must carry a good share.
    let (mut pushdown, mut pull_up) = (0, 0);
    for (sql, _) in &queries {
        let Ok(plan) = rows(&mut cl, &format!("EXPLAIN {sql}")) else {
            continue;
        };
        let plan = plan.concat().join("\n");
        pushdown += plan.contains("Routing: pushdown") as usize;
        pull_up += plan.contains("Routing: pull-up") as usize;
    }
    eprintln!("routing: {pushdown} queries through the pushdown level, {pull_up} through pull-up");
    assert!(pushdown >= 40, "only {pushdown} queries pushed down");
    // Every node served rows: the same queries through nodes 2 and 3.
    let mut others = 0;
    for node in [2, 3] {
        let mut c = cluster.connect(node);
        for (sql, ordered) in queries.iter().step_by(7) {
            let (Ok(mut got), Ok(mut want)) = (rows(&mut c, sql), rows(&mut pl, sql)) else {
                continue;
            };
            if !ordered {
                got.sort();
                want.sort();
            }
            assert_eq!(got, want, "node {node}: {sql}");
            others += 1;
        }
    }
    // Prepared statements: each parameter set runs several times, so that PostgreSQL
    // moves from custom plans to a generic plan whose parameters are known only at run time.
    let mut prepared = 0;
    for (i, (sql, sets)) in PREPARED.iter().enumerate() {
        let prepare = format!("PREPARE p{i} AS {sql}");
        pl.batch_execute(&prepare).unwrap();
        cl.batch_execute(&prepare).unwrap();
        for _round in 0..3 {
            for params in *sets {
                let args: Vec<String> = params.iter().map(|p| format!("'{p}'")).collect();
                let execute = format!("EXECUTE p{i}({})", args.join(", "));
                let mut want =
                    rows(&mut pl, &execute).unwrap_or_else(|e| panic!("plain: {execute}: {e}"));
                match rows(&mut cl, &execute) {
                    Ok(mut got) => {
                        got.sort();
                        want.sort();
                        if got == want {
                            prepared += 1;
                        } else {
                            differ.push(format!(
                                "{sql} {params:?}\n  cluster: {got:?}\n  plain: {want:?}"
                            ));
                        }
                    }
                    Err(e) if is_clear_refusal(&e) => refused.push(format!("{execute}: {e}")),
                    Err(e) => differ.push(format!("{sql} {params:?}: cluster error {e:?}")),
                }
            }
        }
    }
    // Writes: each runs on the cluster first; what the cluster refuses with a clear error
    // (only those of REFUSED_WRITES may be) is not run on the plain server either.
    // Afterwards every table must hold the same rows on both, and every node's copy of
    // the reference table too.
    let mut written = 0;
    for sql in WRITES {
        let on_cluster = rows(&mut cl, sql);
        match on_cluster {
            Err(e) if is_clear_refusal(&e) => {
                refused.push(format!("{sql}: {}", e.as_db_error().unwrap().message()));
                if !REFUSED_WRITES.contains(sql) {
                    differ.push(format!("{sql}\n  refused on the cluster: {e:?}"));
                }
                let _ = pl.batch_execute("ROLLBACK");
                let _ = cl.batch_execute("ROLLBACK");
            }
            Err(e) => differ.push(format!("{sql}\n  cluster error: {e:?}")),
            Ok(mut got) => {
                let mut want =
                    rows(&mut pl, sql).unwrap_or_else(|e| panic!("plain server: {sql}: {e}"));
                got.sort();
                want.sort();
                if got == want {
                    written += 1;
                } else {
                    differ.push(format!("{sql}\n  cluster: {got:?}\n  plain:   {want:?}"));
                }
            }
        }
    }
    for t in [
        "customers",
        "orders",
        "events",
        "tags",
        "prices",
        "days",
        "stamps",
        "counts",
        "regions",
    ] {
        let sql = format!("SELECT * FROM {t}");
        let (mut got, mut want) = (rows(&mut cl, &sql).unwrap(), rows(&mut pl, &sql).unwrap());
        got.sort();
        want.sort();
        if got != want {
            differ.push(format!("after the writes, table {t} differs: {} rows on the cluster, {} on the plain server", got.len(), want.len()));
        }
    }
    // Every copy of the reference table got every write.
    for node in [2, 3] {
        let sql = "SELECT * FROM regions";
        let mut got = rows(&mut cluster.connect(node), sql).unwrap();
        let mut want = rows(&mut pl, sql).unwrap();
        got.sort();
        want.sort();
        if got != want {
            differ.push(format!(
                "after the writes, node {node}'s copy of regions differs: {got:?} vs {want:?}"
            ));
        }
    }
    eprintln!(
        "{} queries: {same} same, {} refused with a clear error, {} different; {others} repeated on nodes 2 and 3; {prepared} prepared executions same; {written} of {} writes same",
        queries.len(),
        refused.len(),
        differ.len(),
        WRITES.len()
    );
    for r in &refused {
        eprintln!("refused: {r}");
    }
    assert!(
        differ.is_empty(),
        "{} queries differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    assert!(same >= 200, "only {same} queries answered");
}
