-- Hash operator classes that partition distributed tables by shard.
--
-- Their extended hash (support function 2, synapse.partition_hash) makes PostgreSQL's
-- hash partitioning put a row in partition `REMAINDER s` exactly when
-- synapse.shard_of(key, MODULUS) = s, so PostgreSQL's own tuple routing and partition
-- pruning agree with synapse's placement of keys. The integer classes share one family
-- (a key hashes the same in any integer width), so cross-type equalities prune too.

CREATE OPERATOR FAMILY synapse.int_shard_ops USING hash;

CREATE OPERATOR CLASS synapse.int2_shard_ops FOR TYPE int2 USING hash FAMILY synapse.int_shard_ops AS
    OPERATOR 1 = (int2, int2),
    FUNCTION 1 synapse.shard_hash32(int2),
    FUNCTION 2 synapse.partition_hash(int2, int8);

CREATE OPERATOR CLASS synapse.int4_shard_ops FOR TYPE int4 USING hash FAMILY synapse.int_shard_ops AS
    OPERATOR 1 = (int4, int4),
    FUNCTION 1 synapse.shard_hash32(int4),
    FUNCTION 2 synapse.partition_hash(int4, int8);

CREATE OPERATOR CLASS synapse.int8_shard_ops FOR TYPE int8 USING hash FAMILY synapse.int_shard_ops AS
    OPERATOR 1 = (int8, int8),
    FUNCTION 1 synapse.shard_hash32(int8),
    FUNCTION 2 synapse.partition_hash(int8, int8);

CREATE OPERATOR FAMILY synapse.text_shard_ops USING hash;
CREATE OPERATOR CLASS synapse.text_shard_ops FOR TYPE text USING hash FAMILY synapse.text_shard_ops AS
    OPERATOR 1 = (text, text),
    FUNCTION 1 synapse.shard_hash32(text),
    FUNCTION 2 synapse.partition_hash(text, int8);

CREATE OPERATOR FAMILY synapse.uuid_shard_ops USING hash;
CREATE OPERATOR CLASS synapse.uuid_shard_ops FOR TYPE uuid USING hash FAMILY synapse.uuid_shard_ops AS
    OPERATOR 1 = (uuid, uuid),
    FUNCTION 1 synapse.shard_hash32(uuid),
    FUNCTION 2 synapse.partition_hash(uuid, int8);

CREATE OPERATOR FAMILY synapse.numeric_shard_ops USING hash;
CREATE OPERATOR CLASS synapse.numeric_shard_ops FOR TYPE numeric USING hash FAMILY synapse.numeric_shard_ops AS
    OPERATOR 1 = (numeric, numeric),
    FUNCTION 1 synapse.shard_hash32(numeric),
    FUNCTION 2 synapse.partition_hash(numeric, int8);

CREATE OPERATOR FAMILY synapse.date_shard_ops USING hash;
CREATE OPERATOR CLASS synapse.date_shard_ops FOR TYPE date USING hash FAMILY synapse.date_shard_ops AS
    OPERATOR 1 = (date, date),
    FUNCTION 1 synapse.shard_hash32(date),
    FUNCTION 2 synapse.partition_hash(date, int8);

CREATE OPERATOR FAMILY synapse.timestamp_shard_ops USING hash;
CREATE OPERATOR CLASS synapse.timestamp_shard_ops FOR TYPE timestamp USING hash FAMILY synapse.timestamp_shard_ops AS
    OPERATOR 1 = (timestamp, timestamp),
    FUNCTION 1 synapse.shard_hash32(timestamp),
    FUNCTION 2 synapse.partition_hash(timestamp, int8);

CREATE OPERATOR FAMILY synapse.timestamptz_shard_ops USING hash;
CREATE OPERATOR CLASS synapse.timestamptz_shard_ops FOR TYPE timestamptz USING hash FAMILY synapse.timestamptz_shard_ops AS
    OPERATOR 1 = (timestamptz, timestamptz),
    FUNCTION 1 synapse.shard_hash32(timestamptz),
    FUNCTION 2 synapse.partition_hash(timestamptz, int8);

ALTER OPERATOR FAMILY synapse.int_shard_ops USING hash ADD
    OPERATOR 1 = (int2, int4), OPERATOR 1 = (int2, int8),
    OPERATOR 1 = (int4, int2), OPERATOR 1 = (int4, int8),
    OPERATOR 1 = (int8, int2), OPERATOR 1 = (int8, int4);

-- Every shard of every distributed table: node, size and row estimate (asks every node).
CREATE VIEW synapse.shards AS
    SELECT table_name, shard, node, role, bytes AS size, row_estimate FROM synapse.shard_sizes();
COMMENT ON VIEW synapse.shards IS 'Shards of distributed tables, with their node, size in bytes and row estimate';

-- The role other nodes' connections log in as (over TLS with a certificate of the cluster
-- CA only, see scripts/cluster's pg_hba.conf lines).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'synapse_node') THEN
        CREATE ROLE synapse_node LOGIN SUPERUSER;
    END IF;
END
$$;

-- Pieces of the pushdown level (planner/pushdown.rs): every node computes partial
-- aggregates over its shards, and this node combines them with these.
--
-- count's partials are summed into a bigint, 0 when there are none (as count is).
CREATE AGGREGATE synapse.sum_count(bigint) (
    SFUNC = int8pl, STYPE = bigint, INITCOND = '0', COMBINEFUNC = int8pl, PARALLEL = SAFE
);
-- sum(int2/int4)'s bigint partials are summed into a bigint, NULL when all are NULL.
CREATE AGGREGATE synapse.sum_int8(bigint) (
    SFUNC = int8pl, STYPE = bigint, COMBINEFUNC = int8pl, PARALLEL = SAFE
);
-- avg from the sum and count of its partials: the same division avg itself ends with.
CREATE FUNCTION synapse.avg_final(numeric, bigint) RETURNS numeric
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS 'SELECT CASE WHEN $2 = 0 THEN NULL ELSE $1 / $2 END';
CREATE FUNCTION synapse.avg_final(double precision, bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS 'SELECT CASE WHEN $2 = 0 THEN NULL ELSE $1 / $2 END';
-- Stands for the rows of a query run on every node holding shards: while planning a
-- statement it split, the planner replaces the call with a SynapseScan of the pushdown
-- level. Called by anyone else it only raises an error.
CREATE FUNCTION synapse.fragment_rows(sql text, shard_count int, max_param int)
    RETURNS SETOF record LANGUAGE plpgsql ROWS 3
    AS $$BEGIN RAISE EXCEPTION 'synapse.fragment_rows() is planned by synapse only'; END$$;
REVOKE EXECUTE ON FUNCTION synapse.fragment_rows(text, int, int) FROM PUBLIC;
