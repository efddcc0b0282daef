-- Catalog tables reject writes from anything but the raft worker's apply path.
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.raft_applied
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.cluster_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.node_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.setting_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.tls_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.certificate_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.table_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.placement_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
CREATE TRIGGER catalog_write_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON synapse.transaction_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION synapse.catalog_write_guard();
