--
-- The extension on every node: versions, workers, catalog schema, clear errors.
--
\c - - - :node1_port
SELECT regexp_replace(synapse.version(), '\d+\.\d+\.\d+', 'X.Y.Z', 'g') AS version;
SELECT name FROM synapse.workers();
SELECT count(*) AS supervisors FROM pg_stat_activity WHERE backend_type = 'synapse supervisor';
\c - - - :node2_port
SELECT regexp_replace(synapse.version(), '\d+\.\d+\.\d+', 'X.Y.Z', 'g') AS version;
SELECT name, pid > 0 AS has_pid, started_at <= now() AS started_in_past FROM synapse.workers();
\c - - - :node3_port
SELECT regexp_replace(synapse.version(), '\d+\.\d+\.\d+', 'X.Y.Z', 'g') AS version;
SELECT name FROM synapse.workers();
-- Library and extension agree about the version they report.
SELECT split_part(synapse.version(), ' ', 3) = (SELECT extversion || ',' FROM pg_extension WHERE extname = 'synapse') AS library_matches_extension;
-- The API lives in schema synapse; creating the extension twice is an error.
SELECT nspname FROM pg_namespace n JOIN pg_extension e ON e.extnamespace = n.oid WHERE extname = 'synapse';
CREATE EXTENSION synapse;
-- The extension cannot be moved to another schema.
CREATE SCHEMA elsewhere;
ALTER EXTENSION synapse SET SCHEMA elsewhere;
DROP SCHEMA elsewhere;
