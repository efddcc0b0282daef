-- SynapseDB catalog bootstrap, run first by CREATE EXTENSION synapse.
-- The schema `synapse` itself is created by CREATE EXTENSION (see synapse.control).

COMMENT ON SCHEMA synapse IS 'SynapseDB: cluster metadata, distributed tables and their SQL API';

-- The SQL API is for administrators until each function documents its own privileges.
REVOKE ALL ON SCHEMA synapse FROM PUBLIC;
