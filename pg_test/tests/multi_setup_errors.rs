//! Clear errors for set-up mistakes: the extension without its preload, and bad input to
//! `scripts/cluster` (busy ports, unknown nodes, missing clusters), which must leave
//! nothing half-started behind.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use synapse_pg_test::{repo_root, text, wait_for, Cluster, PlainServer};

#[test]
fn create_extension_without_preload_fails_with_a_hint() {
    let server = PlainServer::start("plain_no_preload", 7490, "");
    let err = server
        .connect()
        .batch_execute("CREATE EXTENSION synapse")
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000", "{db:?}");
    assert_eq!(
        db.message(),
        "synapse must be loaded via shared_preload_libraries"
    );
    assert!(
        db.hint().unwrap().contains("shared_preload_libraries"),
        "{db:?}"
    );
    // Nothing was created.
    let n: i64 = server
        .connect()
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'synapse'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

fn cluster_cmd(args: &[&str]) -> std::process::Output {
    Command::new(repo_root().join("scripts/cluster"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn up_refuses_a_busy_port_and_leaves_nothing_behind() {
    let dir = "/tmp/synapse-tests/busy_port";
    let _ = std::fs::remove_dir_all(dir);
    // Node 2's HTTP port (base + 21) is taken by someone else.
    let _squatter = TcpListener::bind("127.0.0.1:7521").unwrap();
    let out = cluster_cmd(&["up", "-n", "3", "--dir", dir, "--base-port", "7500"]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("port 7521/tcp for node 2 is in use"), "{msg}");
    assert!(!Path::new(dir).exists(), "nothing may be left behind");
    // No server was started on any of the plan's ports.
    assert!(TcpListener::bind("127.0.0.1:7510").is_ok());
}

#[test]
fn bad_arguments_and_unknown_nodes_are_clear_errors() {
    let out = cluster_cmd(&["status", "--dir", "/tmp/synapse-tests/no_such_cluster"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no cluster in /tmp/synapse-tests/no_such_cluster"),
        "{}",
        text(&out)
    );

    let out = cluster_cmd(&["up", "-n", "zero", "--dir", "/tmp/synapse-tests/bad_n"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("-n must be a node count"),
        "{}",
        text(&out)
    );

    let out = cluster_cmd(&["frobnicate", "--dir", "/tmp/synapse-tests/bad_cmd"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown subcommand 'frobnicate'"),
        "{}",
        text(&out)
    );

    let cluster = Cluster::up("unknown_node", 1, 7540);
    for args in [
        &["psql", "4"][..],
        &["kill", "0"],
        &["stop", "x"],
        &["logs", "2"],
    ] {
        let out = cluster.script(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out).contains("this cluster has nodes 1 to 1"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let dir = cluster.dir.to_str().unwrap();
    let out = cluster_cmd(&["status", "--dir", dir, "--base-port", "7000"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("uses --base-port 7540"),
        "{}",
        text(&out)
    );
}

#[test]
fn kill_status_and_start_manage_one_node() {
    let cluster = Cluster::up("kill_start", 2, 7570);
    let out = cluster.script(&["kill", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = text(&cluster.script(&["status"]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("node2") && l.ends_with("down")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("node1") && l.ends_with("up")),
        "{status}"
    );

    let out = cluster.script(&["start", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut client = cluster.connect(2);
    let v: String = client
        .query_one("SELECT synapse.version()", &[])
        .unwrap()
        .get(0);
    assert!(v.starts_with("SynapseDB library"));
    wait_for(
        "node 2's /health",
        std::time::Duration::from_secs(10),
        || {
            let (code, _) = cluster.http_get(2, "/health").ok()?;
            (code == 200).then_some(())
        },
    );

    let out = cluster.script(&[
        "psql",
        "1",
        "-Atc",
        "SELECT current_setting('synapse.node_name')",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node1");
}
