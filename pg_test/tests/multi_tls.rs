//! The cluster CA and node certificates on a real 3-node cluster: every member holds a
//! certificate of the cluster CA for its name and address, `synapse.certificates` and
//! `synapse.tls_status()` agree with the files, and the CA key appears in clear nowhere an
//! operator or attacker could read: SQL results, server logs, the Raft log and snapshots.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synapse_core::tls::ca::open_ca_key;
use synapse_core::tls::{
    create_ca, new_node_key, CaBundle, CertInfo, ClusterSecret, NodeCertSpec, Signer,
};
use synapse_pg_test::{wait_for, Cluster};

/// Whether `openssl s_client`, presenting the certificate and key in `tls_dir`, gets
/// through the TLS handshake at `addr` (the server sends an alert when it refuses).
fn handshake_with(addr: &str, tls_dir: &Path) -> Result<(), String> {
    handshake(addr, tls_dir, true)
}

/// Like [`handshake_with`]; without `with_cert`, openssl presents no certificate.
fn handshake(addr: &str, tls_dir: &Path, with_cert: bool) -> Result<(), String> {
    let path = |f: &str| tls_dir.join(f).to_string_lossy().into_owned();
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        addr,
        "-verify_return_error",
        "-alpn",
        "h2",
    ])
    .args(["-CAfile", &path("ca.pem")]);
    if with_cert {
        cmd.args(["-cert", &path("node.pem"), "-key", &path("node.key")]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (scripts/setup installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // An HTTP/2 preface: the server reads, so it has judged the certificate.
        let _ = stdin.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Verify return code: 0 (ok)") && !text.contains("alert") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The certificate PostgreSQL at `addr` presents (`openssl s_client -starttls postgres`),
/// verified against the cluster CA in `tls_dir`.
fn pg_server_cert(addr: &str, tls_dir: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "postgres",
            "-connect",
            addr,
            "-showcerts",
        ])
        .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-CAfile"])
        .arg(tls_dir.join("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    text[start..end].to_string()
}

/// Runs a query over SSL (sslmode=verify-full against the cluster CA) as synapse_node on
/// port `port`, presenting the certificate in `tls_dir` when `with_cert`; Ok(its output).
fn psql_ssl(port: u16, tls_dir: &Path, with_cert: bool) -> Result<String, String> {
    // libpq wants the key owned by the user running it, mode 0600.
    let key = std::env::temp_dir().join(format!("synapse-test-key-{}", std::process::id()));
    std::fs::copy(tls_dir.join("node.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut conninfo = format!(
        "host=127.0.0.1 port={port} dbname=postgres user=synapse_node sslmode=verify-full sslrootcert={}",
        tls_dir.join("ca.pem").display()
    );
    if with_cert {
        conninfo += &format!(
            " sslcert={} sslkey={}",
            tls_dir.join("node.pem").display(),
            key.display()
        );
    } else {
        conninfo += " sslcert=/nonexistent sslkey=/nonexistent";
    }
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([&conninfo, "-XAtc"])
        .arg(
            "SELECT ssl::text || '|' || current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .output()
        .expect("psql");
    let _ = std::fs::remove_file(&key);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The cluster's id, as node 1's catalog has it.
fn cluster_id_of(cluster: &Cluster) -> String {
    cluster
        .connect(1)
        .query_one("SELECT cluster_id FROM synapse.cluster_catalog", &[])
        .unwrap()
        .get(0)
}

#[test]
fn members_are_certified_and_the_ca_key_is_never_in_clear() {
    let cluster = Cluster::up("multi_tls", 3, 8300);
    let mut fingerprints = vec![];
    for n in 1..=3 {
        let mut client = cluster.connect(n);
        let rows = client
            .query(
                "SELECT node, status, sans FROM synapse.certificates ORDER BY node",
                &[],
            )
            .unwrap();
        let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            seen,
            (1..=3)
                .map(|i| (format!("node{i}"), "valid".to_string()))
                .collect::<Vec<_>>(),
            "as seen from node {n}"
        );
        let row = client
            .query_one(
                "SELECT serial, sans, days_left, ca_fingerprint, crl_number FROM synapse.tls_status()",
                &[],
            )
            .unwrap();
        let serial: String = row.get(0);
        let sans: Vec<String> = row.get(1);
        let days_left: f64 = row.get(2);
        assert!((89.9..=90.0).contains(&days_left), "{days_left}");
        assert!(sans.contains(&cluster.host(n).to_string()), "{sans:?}");
        assert!(sans.contains(&format!("node{n}")), "{sans:?}");
        assert_eq!(row.get::<_, i64>(4), 1);
        fingerprints.push(row.get::<_, String>(3));
        let owner: String = client
            .query_one(
                "SELECT node FROM synapse.certificates WHERE serial = $1",
                &[&serial],
            )
            .unwrap()
            .get(0);
        assert_eq!(owner, format!("node{n}"));

        // The files: the node's certificate is the one the view names; its key is 0600.
        let tls_dir = cluster.dir.join(format!("node{n}/data/synapse/tls"));
        let cert = std::fs::read_to_string(tls_dir.join("node.pem")).unwrap();
        assert_eq!(CertInfo::from_pem(&cert).unwrap().serial, serial);
        let mode = std::fs::metadata(tls_dir.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "node.key mode");
        let mode = std::fs::metadata(&tls_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "tls directory mode");
    }
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:?}"
    );

    // Open the CA key the way a leader does, then look for it everywhere else.
    let mut client = cluster.connect(2);
    let row = client
        .query_one(
            "SELECT t.ca_cert_pem, t.sealed_ca_key, c.cluster_id \
             FROM synapse.tls_catalog t, synapse.cluster_catalog c",
            &[],
        )
        .unwrap();
    let bundle = CaBundle {
        cert_pem: row.get(0),
        sealed_key: row.get(1),
    };
    let cluster_id: String = row.get(2);
    let identity: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cluster.dir.join("node2/data/synapse/raft/identity.json")).unwrap(),
    )
    .unwrap();
    let secret = ClusterSecret::from_hex(identity["cluster_secret"].as_str().unwrap()).unwrap();
    let key_pem = open_ca_key(&bundle, &cluster_id, &secret).unwrap();
    // The base64 body of the key, whatever its line breaks.
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    // Every P-256 PKCS#8 key starts with the same algorithm header; characters 52..88 of
    // the base64 text lie inside the private scalar, which is this key's alone.
    assert!(body.len() > 100, "{}", body.len());
    let needle = &body[52..88];

    let mut everything = String::new();
    for n in 1..=3 {
        let mut client = cluster.connect(n);
        for table in [
            "synapse.tls_catalog",
            "synapse.certificate_catalog",
            "synapse.cluster_catalog",
            "synapse.setting_catalog",
            "synapse.certificates",
            "synapse.raft_applied",
        ] {
            for row in client
                .simple_query(&format!("SELECT t::text FROM {table} t"))
                .unwrap()
            {
                if let postgres::SimpleQueryMessage::Row(r) = row {
                    everything.push_str(r.get(0).unwrap_or_default());
                }
            }
        }
        for row in client
            .simple_query("SELECT t::text FROM synapse.tls_status() t")
            .unwrap()
        {
            if let postgres::SimpleQueryMessage::Row(r) = row {
                everything.push_str(r.get(0).unwrap_or_default());
            }
        }
    }
    assert!(
        everything.contains("sealed-v1:"),
        "the sealed key is in the catalog"
    );
    assert!(
        !everything.contains(needle),
        "the CA key is in clear in a SQL result"
    );
    assert!(
        !everything.contains("PRIVATE KEY"),
        "a private key is in a SQL result"
    );

    let mut files = vec![];
    files_under(&cluster.dir, &mut files);
    let mut searched = 0;
    for file in files {
        let name = file.to_string_lossy();
        // The one place the key may be: nowhere. Node keys are other keys.
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        searched += 1;
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(needle), "the CA key is in clear in {name}");
        if name.ends_with(".log") || name.contains("/raft/") {
            assert!(!text.contains("PRIVATE KEY"), "a private key in {name}");
        }
    }
    assert!(searched > 10, "searched only {searched} files");

    // PostgreSQL's own port serves SSL with the node certificate (once the reload that
    // the raft worker asked for has happened), and a node-to-node connection as
    // synapse_node needs a client certificate of the cluster CA and verify-full.
    // (CREATE EXTENSION made the role synapse_node on every node.)
    for n in 1..=3 {
        wait_for(
            &format!("node {n} to serve SSL"),
            Duration::from_secs(10),
            || {
                let ssl: String = cluster
                    .connect(n)
                    .query_one("SHOW ssl", &[])
                    .unwrap()
                    .get(0);
                (ssl == "on").then_some(())
            },
        );
        let tls_dir = cluster.dir.join(format!("node{n}/data/synapse/tls"));
        let shown = pg_server_cert(&format!("127.0.0.1:{}", cluster.pg_port(n)), &tls_dir);
        let info = CertInfo::from_pem(&shown).unwrap();
        let serial: String = cluster
            .connect(n)
            .query_one("SELECT serial FROM synapse.tls_status()", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            info.serial, serial,
            "node {n}'s PostgreSQL port shows its certificate"
        );
        assert!(
            info.sans.contains(&cluster.host(n).to_string()),
            "{:?}",
            info.sans
        );
    }
    let node1_tls = cluster.dir.join("node1/data/synapse/tls");
    let as_node1 = psql_ssl(cluster.pg_port(2), &node1_tls, true);
    assert_eq!(as_node1.as_deref(), Ok("true|synapse_node"), "{as_node1:?}");
    let without = psql_ssl(cluster.pg_port(2), &node1_tls, false);
    let refused = without.expect_err("a connection without a client certificate");
    assert!(refused.contains("certificate"), "{refused}");
    // The same from node 1's server itself (dblink), with its own files.
    let mut c1 = cluster.connect(1);
    c1.batch_execute("CREATE EXTENSION IF NOT EXISTS dblink")
        .unwrap();
    let base = format!(
        "host=127.0.0.1 port={} dbname=postgres user=synapse_node sslmode=verify-full sslrootcert={}",
        cluster.pg_port(2),
        node1_tls.join("ca.pem").display()
    );
    let with_cert = format!(
        "{base} sslcert={} sslkey={}",
        node1_tls.join("node.pem").display(),
        node1_tls.join("node.key").display()
    );
    let query = "SELECT x FROM dblink($1, 'SELECT ssl::text || ''|'' || current_user \
                 FROM pg_stat_ssl WHERE pid = pg_backend_pid()') AS t(x text)";
    let seen: String = c1.query_one(query, &[&with_cert]).unwrap().get(0);
    assert_eq!(seen, "true|synapse_node");
    let err = c1.query_one(query, &[&base]).unwrap_err();
    let message = err
        .as_db_error()
        .map_or(err.to_string(), |d| format!("{d:?}"));
    assert!(message.contains("certificate"), "{message}");

    // The RPC port of a real node: no certificate, or one of another CA, is refused.
    let rpc2 = format!("127.0.0.1:{}", cluster.pg_port(2) + 2);
    let refused = handshake(&rpc2, &node1_tls, false).expect_err("no client certificate");
    assert!(refused.contains("alert"), "{refused}");
    let stranger = std::env::temp_dir().join(format!("synapse-stranger-{}", std::process::id()));
    std::fs::create_dir_all(&stranger).unwrap();
    let secret = ClusterSecret::generate();
    let other_ca = create_ca("another", &secret, std::time::SystemTime::now()).unwrap();
    let signer = Signer::open(&other_ca, "another", &secret).unwrap();
    let key = new_node_key("node1").unwrap();
    let spec = NodeCertSpec {
        cluster_id: cluster_id_of(&cluster),
        node_id: 1,
        name: "node1".into(),
        hosts: vec!["127.0.0.1".into()],
    };
    let cert = signer
        .issue(
            &key.csr_pem,
            &spec,
            std::time::SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::copy(node1_tls.join("ca.pem"), stranger.join("ca.pem")).unwrap();
    std::fs::write(stranger.join("node.pem"), cert).unwrap();
    std::fs::write(stranger.join("node.key"), key.key_pem.as_bytes()).unwrap();
    let refused = handshake_with(&rpc2, &stranger).expect_err("another CA's certificate");
    assert!(refused.contains("alert"), "{refused}");
    let _ = std::fs::remove_dir_all(&stranger);

    // Revocation: node 3's certificate gets through node 1's RPC port, then is refused
    // within 5 s of its revocation committing, while the rest of the cluster works on.
    let rpc1 = format!("127.0.0.1:{}", cluster.pg_port(1) + 2);
    let tls3 = cluster.dir.join("node3/data/synapse/tls");
    handshake_with(&rpc1, &tls3).expect("node 3's certificate is valid before");
    let revoked: i64 = cluster
        .connect(2)
        .query_one("SELECT synapse.revoke_node_certificates('node3')", &[])
        .unwrap()
        .get(0);
    assert_eq!(revoked, 1);
    let committed = Instant::now();
    wait_for(
        "node 1 to refuse node 3's certificate",
        Duration::from_secs(5),
        || handshake_with(&rpc1, &tls3).is_err().then_some(()),
    );
    println!(
        "node 3's certificate refused {:.2?} after its revocation committed",
        committed.elapsed()
    );
    let mut client = cluster.connect(1);
    client
        .execute(
            "SELECT synapse.set_cluster_setting('after_revocation', 'works')",
            &[],
        )
        .unwrap();
    let value: Option<String> = cluster
        .connect(2)
        .query_one("SELECT synapse.cluster_setting('after_revocation')", &[])
        .unwrap()
        .get(0);
    assert_eq!(value.as_deref(), Some("works"));
    let status: String = client
        .query_one(
            "SELECT status FROM synapse.certificates WHERE node = 'node3'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "revoked");
    let crl: i64 = client
        .query_one("SELECT crl_number FROM synapse.tls_status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(crl, 2);
    // Node 2's certificate still gets in.
    handshake_with(&rpc1, &cluster.dir.join("node2/data/synapse/tls")).unwrap();

    // Rotation on demand, through any node.
    let before: String = cluster
        .connect(2)
        .query_one("SELECT serial FROM synapse.tls_status()", &[])
        .unwrap()
        .get(0);
    let rotated: Vec<String> = client
        .query("SELECT synapse.rotate_certificates('node2')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rotated, vec!["node2".to_string()]);
    let after: String = cluster
        .connect(2)
        .query_one("SELECT serial FROM synapse.tls_status()", &[])
        .unwrap()
        .get(0);
    assert_ne!(before, after);

    // Bad input: a serial nobody was given.
    let err = client
        .execute("SELECT synapse.revoke_certificate('00ff')", &[])
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("no certificate has serial"), "{db:?}");
    assert!(db.hint().is_some());
}

/// With certificates of one minute renewed when less than 50 s remain, every node renews
/// within a few rounds of its maintenance loop, while writes go through every node and none
/// fails.
#[test]
fn certificates_renew_by_themselves_under_a_workload() {
    let cluster = Cluster::up_with(
        "multi_tls_renew",
        3,
        8330,
        &[
            "--conf",
            "synapse.cert_lifetime = '60s'",
            "--conf",
            "synapse.cert_renew_before = '50s'",
        ],
    );
    let serial = |n: usize| -> String {
        cluster
            .connect(n)
            .query_one("SELECT serial FROM synapse.tls_status()", &[])
            .unwrap()
            .get(0)
    };
    let first: Vec<String> = (1..=3).map(serial).collect();
    let mut clients: Vec<_> = (1..=3).map(|n| cluster.connect(n)).collect();
    let started = Instant::now();
    let mut writes = 0;
    wait_for(
        "every node to renew its certificate",
        Duration::from_secs(90),
        || {
            for (i, client) in clients.iter_mut().enumerate() {
                client
                    .execute(
                        "SELECT synapse.set_cluster_setting('renewal_load', $1)",
                        &[&writes.to_string()],
                    )
                    .unwrap_or_else(|e| {
                        panic!("write {writes} through node {} failed: {e}", i + 1)
                    });
                writes += 1;
            }
            (1..=3).all(|n| serial(n) != first[n - 1]).then_some(())
        },
    );
    println!(
        "every node renewed within {:.1?}; {writes} writes, none failed",
        started.elapsed()
    );
    // PostgreSQL's port serves the renewed certificate too (after its reload).
    for n in 1..=3 {
        let tls_dir = cluster.dir.join(format!("node{n}/data/synapse/tls"));
        let addr = format!("127.0.0.1:{}", cluster.pg_port(n));
        wait_for(
            &format!("node {n}'s PostgreSQL to serve the renewed certificate"),
            Duration::from_secs(10),
            || {
                let shown = CertInfo::from_pem(&pg_server_cert(&addr, &tls_dir))
                    .unwrap()
                    .serial;
                (shown == serial(n)).then_some(())
            },
        );
    }
    // Raft still works over the renewed certificates: a write through node 3 is read on 1.
    clients[2]
        .execute(
            "SELECT synapse.set_cluster_setting('after_renewal', 'yes')",
            &[],
        )
        .unwrap();
    let value: Option<String> = clients[0]
        .query_one("SELECT synapse.cluster_setting('after_renewal')", &[])
        .unwrap()
        .get(0);
    assert_eq!(value.as_deref(), Some("yes"));
    let renewing: i64 = clients[0]
        .query_one(
            "SELECT count(*) FROM synapse.certificates WHERE status IN ('valid', 'renewing')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(renewing >= 3, "{renewing}");
}
