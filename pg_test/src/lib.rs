//! Harness for SynapseDB's cluster tests: real PostgreSQL servers started with
//! `scripts/cluster`, each test with its own directory and ports.
//!
//! Tests wait for conditions with [`wait_for`] (polling with a deadline), never with
//! fixed sleeps. Every cluster is torn down when its [`Cluster`] is dropped, also when the
//! test fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

/// The repository root (the parent of `pg_test/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Where test clusters live; `/tmp` so that user postgres can reach them.
fn clusters_root() -> PathBuf {
    let root = PathBuf::from("/tmp/synapse-tests");
    std::fs::create_dir_all(&root).expect("create /tmp/synapse-tests");
    root
}

/// A local cluster owned by one test.
pub struct Cluster {
    pub dir: PathBuf,
    pub base_port: u16,
    pub nodes: usize,
    /// Each node's address (127.0.0.1, or its own with `--netns`); index 0 is node 1.
    pub hosts: Vec<String>,
}

impl Cluster {
    /// Starts a fresh cluster of `nodes` nodes named after the test, on `base_port`.
    pub fn up(name: &str, nodes: usize, base_port: u16) -> Cluster {
        Cluster::up_with(name, nodes, base_port, &[])
    }

    /// Like [`Cluster::up`], with extra arguments for `scripts/cluster up` (`--no-init`).
    pub fn up_with(name: &str, nodes: usize, base_port: u16, extra: &[&str]) -> Cluster {
        let dir = clusters_root().join(name);
        let mut cluster = Cluster {
            dir,
            base_port,
            nodes,
            hosts: vec!["127.0.0.1".into(); nodes],
        };
        if cluster.dir.join("cluster.env").exists() {
            cluster.script(&["down"]);
        } else if cluster.dir.exists() {
            let _ = std::fs::remove_dir_all(&cluster.dir);
        }
        let n = nodes.to_string();
        let mut args = vec!["up", "-n", n.as_str()];
        args.extend_from_slice(extra);
        let out = cluster.script(&args);
        assert!(
            out.status.success(),
            "cluster up ({}) failed:\n{}",
            repo_root().display(),
            text(&out)
        );
        let env = text(&cluster.script(&["env"]));
        for node in 1..=nodes {
            let key = format!("SYNAPSE_NODE{node}_HOST=");
            if let Some(host) = env.lines().find_map(|l| l.strip_prefix(key.as_str())) {
                cluster.hosts[node - 1] = host.trim().to_owned();
            }
        }
        cluster
    }

    /// Node `node`'s address.
    pub fn host(&self, node: usize) -> &str {
        &self.hosts[node - 1]
    }

    /// Runs `scripts/cluster SUBCOMMAND... --dir DIR --base-port P`.
    pub fn script(&self, args: &[&str]) -> Output {
        Command::new(repo_root().join("scripts/cluster"))
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--base-port")
            .arg(self.base_port.to_string())
            .output()
            .expect("run scripts/cluster")
    }

    pub fn pg_port(&self, node: usize) -> u16 {
        self.base_port + 10 * node as u16
    }

    pub fn http_port(&self, node: usize) -> u16 {
        self.pg_port(node) + 1
    }

    /// A new connection to node `node` as user postgres.
    pub fn connect(&self, node: usize) -> Client {
        connect_to(self.host(node), self.pg_port(node))
    }

    /// `GET path` on node `node`'s HTTP port.
    pub fn http_get(&self, node: usize, path: &str) -> std::io::Result<(u16, serde_json::Value)> {
        http_get_from(self.host(node), self.http_port(node), path)
    }

    /// The pid of the running background worker named `name` on `node`, if any.
    pub fn worker_pid(&self, node: usize, name: &str) -> Option<i32> {
        let mut client = self.connect(node);
        client
            .query_opt(
                "SELECT pid FROM synapse.workers() WHERE name = $1",
                &[&name],
            )
            .ok()
            .flatten()
            .map(|row| row.get(0))
    }

    /// Every process of `node`: its postmaster and the postmaster's children.
    pub fn node_pids(&self, node: usize) -> Vec<i32> {
        let pm = self.postmaster_pid(node);
        let mut pids = vec![pm];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The parent pid is the second field after the parenthesised command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pm) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Kills every process of `node` with SIGKILL at once (a machine crash, as far as the
    /// other nodes can tell), and waits until they are gone.
    pub fn crash(&self, node: usize) {
        let pids = self.node_pids(node);
        for &pid in &pids {
            signal(pid, libc::SIGKILL);
        }
        wait_for(
            "the crashed node's processes to end",
            std::time::Duration::from_secs(10),
            || pids.iter().all(|&p| !alive(p)).then_some(()),
        );
    }

    /// What SWIM on `observer` says of every member: name -> (state, incarnation); `None`
    /// when the observer cannot answer.
    pub fn members_seen_by(
        &self,
        observer: usize,
    ) -> Option<std::collections::HashMap<String, (String, i64)>> {
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres connect_timeout=2",
            self.host(observer),
            self.pg_port(observer)
        );
        let mut client = Client::connect(&conninfo, NoTls).ok()?;
        let rows = client
            .query(
                "SELECT name, state, incarnation FROM synapse.members()",
                &[],
            )
            .ok()?;
        Some(
            rows.iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect(),
        )
    }

    /// The state of `node` as `observer` sees it.
    pub fn state_seen_by(&self, observer: usize, node: usize) -> Option<String> {
        self.members_seen_by(observer)?
            .remove(&format!("node{node}"))
            .map(|(s, _)| s)
    }

    /// Whether every other node sees `node` in `state`.
    pub fn everyone_sees(&self, node: usize, state: &str) -> bool {
        (1..=self.nodes)
            .filter(|&o| o != node)
            .all(|o| self.state_seen_by(o, node).as_deref() == Some(state))
    }

    /// The postmaster's pid of `node`.
    pub fn postmaster_pid(&self, node: usize) -> i32 {
        let pidfile = self.dir.join(format!("node{node}/data/postmaster.pid"));
        let text = std::fs::read_to_string(&pidfile).expect("postmaster.pid");
        text.lines().next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SYNAPSE_KEEP_FAILED=1 keeps a failed test's cluster (stopped) for its logs.
        if std::thread::panicking() && std::env::var_os("SYNAPSE_KEEP_FAILED").is_some() {
            let _ = self.script(&["stop"]);
            eprintln!("cluster kept in {}", self.dir.display());
            return;
        }
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!("cluster down failed:\n{}", text(&out));
        }
    }
}

/// Connects to 127.0.0.1:`port` as postgres, database postgres.
pub fn connect_port(port: u16) -> Client {
    connect_to("127.0.0.1", port)
}

/// Connects to `host`:`port` as postgres, database postgres.
pub fn connect_to(host: &str, port: u16) -> Client {
    let conninfo =
        format!("host={host} port={port} user=postgres dbname=postgres connect_timeout=10");
    Client::connect(&conninfo, NoTls).unwrap_or_else(|e| panic!("connect to {host}:{port}: {e}"))
}

/// A minimal HTTP/1.1 GET returning the status code and the JSON body (Null if not JSON).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, serde_json::Value)> {
    http_get_from("127.0.0.1", port, path)
}

/// `GET path` on `host`:`port`; returns the status code and the JSON body.
pub fn http_get_from(
    host: &str,
    port: u16,
    path: &str,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect((host, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok((
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Polls `probe` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Sends `signal` to `pid`, panicking if that fails.
pub fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: sends a signal to a process id we looked up; failure is checked.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A plain PostgreSQL server (no synapse preloaded), e.g. for error paths and as the
/// single-server baseline of differential tests and benchmarks.
pub struct PlainServer {
    pub dir: PathBuf,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", program]);
    cmd
}

impl PlainServer {
    /// Creates and starts a server on `port` with `settings` appended to postgresql.conf.
    pub fn start(name: &str, port: u16, settings: &str) -> PlainServer {
        let dir = clusters_root().join(name);
        let server = PlainServer { dir, port };
        server.stop_quietly();
        let _ = std::fs::remove_dir_all(&server.dir);
        let data = server.dir.join("data");
        std::fs::create_dir_all(&server.dir).unwrap();
        let chown = Command::new("chown")
            .arg("postgres:")
            .arg(&server.dir)
            .status()
            .unwrap();
        assert!(chown.success());
        let out = as_postgres(&format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", text(&out));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '/tmp'\n{settings}\n"
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        let out = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.dir.join("postgresql.log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", text(&out));
        server
    }

    pub fn connect(&self) -> Client {
        connect_port(self.port)
    }

    fn stop_quietly(&self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        self.stop_quietly();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
