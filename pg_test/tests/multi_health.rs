//! Every node of a 3-node cluster answers `synapse.version()` and `GET /health`, and the
//! health report proves the worker's main thread reached the database.

use synapse_pg_test::Cluster;

#[test]
fn every_node_answers_version_and_health() {
    let cluster = Cluster::up("multi_health", 3, 7100);
    let lib = env!("CARGO_PKG_VERSION");
    for node in 1..=3 {
        let mut client = cluster.connect(node);
        let version: String = client
            .query_one("SELECT synapse.version()", &[])
            .unwrap()
            .get(0);
        assert_eq!(version, format!("SynapseDB library {lib}, extension {lib}"));

        let (code, body) = cluster.http_get(node, "/health").unwrap();
        assert_eq!(code, 200, "node {node}: {body}");
        assert_eq!(body["status"], "ok");
        assert_eq!(body["node_name"], format!("node{node}"));
        assert_eq!(body["library_version"], lib);
        assert_eq!(body["extension_version"], lib);
        assert!(
            body["postgres_version"]
                .as_str()
                .unwrap()
                .starts_with("15."),
            "{body}"
        );
        assert!(body["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert_eq!(body["database"]["answered"], true);
        assert!(body["database"]["error"].is_null());
        let worker = cluster
            .worker_pid(node, "synapse supervisor")
            .expect("supervisor runs");
        assert_eq!(
            body["worker_pid"], worker,
            "the registered supervisor serves /health"
        );
    }
}

#[test]
fn health_reports_a_missing_extension_without_failing() {
    let cluster = Cluster::up("multi_health_noext", 1, 7140);
    cluster
        .connect(1)
        .batch_execute("DROP EXTENSION synapse")
        .unwrap();
    let (code, body) = cluster.http_get(1, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body["extension_version"].is_null(), "{body}");
    cluster
        .connect(1)
        .batch_execute("CREATE EXTENSION synapse")
        .unwrap();
    let (_, body) = cluster.http_get(1, "/health").unwrap();
    assert_eq!(body["extension_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn unknown_paths_are_404() {
    let cluster = Cluster::up("multi_health_404", 1, 7170);
    let (code, _) = cluster.http_get(1, "/nope").unwrap();
    assert_eq!(code, 404);
}
