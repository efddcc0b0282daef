//! Every `synapse.*` setting, in one place.
//!
//! Each GUC is a private static with a doc comment and an accessor. Accessors read
//! PostgreSQL's copy of the setting, so they run on a process's main thread only (pgrx
//! asserts it). Network threads get the values they need from the main thread, which
//! republishes them after each configuration reload.

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// `synapse.node_name`: this node's name in logs and reports; empty means `<host>:<port>`.
static NODE_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `synapse.database`: the database the synapse background workers connect to, and where
/// `CREATE EXTENSION synapse` is expected.
static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// `synapse.listen_address`: the address the HTTP, RPC and gossip ports bind to.
static LISTEN_ADDRESS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"127.0.0.1"));

/// `synapse.http_port`: HTTP port for `/health` (and later `/metrics`, `/cluster`); 0 turns
/// the HTTP server off.
static HTTP_PORT: GucSetting<i32> = GucSetting::<i32>::new(8080);

/// `synapse.rpc_port`: the gRPC port for node-to-node traffic.
static RPC_PORT: GucSetting<i32> = GucSetting::<i32>::new(8081);

/// `synapse.gossip_port`: the UDP port for SWIM gossip.
static GOSSIP_PORT: GucSetting<i32> = GucSetting::<i32>::new(8082);

/// `synapse.health_timeout`: how long `GET /health` waits for the database, in ms.
static HEALTH_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(2000);

/// `synapse.election_timeout_min` / `_max`: a follower that hears no leader for a random
/// time in this range (ms) starts an election.
static ELECTION_TIMEOUT_MIN: GucSetting<i32> = GucSetting::<i32>::new(3000);
static ELECTION_TIMEOUT_MAX: GucSetting<i32> = GucSetting::<i32>::new(6000);

/// `synapse.heartbeat_interval`: how often the Raft leader heartbeats its followers, in ms.
static HEARTBEAT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `synapse.leadership_lease`: how long after its last quorum contact the leader still
/// counts itself leader for leader-only decisions, in ms.
static LEADERSHIP_LEASE: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `synapse.raft_timeout`: how long a metadata change or linearizable read waits for a
/// quorum before failing, in ms.
static RAFT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `synapse.max_voters`: nodes beyond this many voters join as non-voting learners.
static MAX_VOTERS: GucSetting<i32> = GucSetting::<i32>::new(5);

/// `synapse.raft_snapshot_entries`: take a snapshot and compact the Raft log after this
/// many entries.
static RAFT_SNAPSHOT_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `synapse.gossip_probe_interval`: how often SWIM probes one member, in ms (memberlist
/// LAN: 1 s).
static GOSSIP_PROBE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `synapse.gossip_probe_timeout`: how long a direct probe waits for its ack before asking
/// other members to probe indirectly, in ms (memberlist LAN: 500 ms).
static GOSSIP_PROBE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(500);

/// `synapse.gossip_indirect_checks`: members asked to probe indirectly (memberlist: 3).
static GOSSIP_INDIRECT_CHECKS: GucSetting<i32> = GucSetting::<i32>::new(3);

/// `synapse.gossip_suspicion_mult`: the minimum suspicion timeout is this times
/// max(1, log10(members)) probe intervals (memberlist LAN: 4; 3 here keeps detection in a
/// 5-node cluster under 5 s at the median).
static GOSSIP_SUSPICION_MULT: GucSetting<i32> = GucSetting::<i32>::new(3);

/// `synapse.cert_lifetime`: how long a node certificate is valid, in seconds (90 days).
static CERT_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(90 * 24 * 3600);

/// `synapse.cert_renew_before`: a certificate is renewed when less than this remains, in
/// seconds (30 days).
static CERT_RENEW_BEFORE: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 3600);

/// Registers every GUC and reserves the `synapse` prefix. Called once from `_PG_init`.
/// `synapse.fragment`: this session runs statements sent by another node's coordinator;
/// they act on this node's shards only and are never routed again. Set by the
/// connections between nodes; superuser only.
static FRAGMENT: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `synapse.placement_vnodes`: virtual nodes per node on the consistent-hash ring that
/// places the shards of a new shard count.
static PLACEMENT_VNODES: GucSetting<i32> =
    GucSetting::<i32>::new(synapse_core::distribution::DEFAULT_VNODES as i32);

/// `synapse.max_node_connections`: the most connections this node's backends together
/// hold to any one other node (0: no limit).
static MAX_NODE_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(200);

/// `synapse.two_phase_timeout`: a transaction prepared longer ago than this without a
/// commit decision is rolled back by recovery, in ms.
static TWO_PHASE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60_000);

/// `synapse.recovery_interval`: how often the maintenance worker resolves this node's
/// prepared transactions, in ms.
static RECOVERY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5_000);

/// `synapse.failpoints`: failpoints of the distributed commit, for tests (see
/// `txn::failpoints`); superuser only.
static FAILPOINTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `synapse.trace_transactions`: log each step of every distributed commit (LOG level).
static TRACE_TRANSACTIONS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `synapse.deadlock_scan_interval`: how often the deadlock worker on the Raft leader
/// looks for deadlocks that span nodes, in ms; 0: twice `deadlock_timeout`.
static DEADLOCK_SCAN_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(0);

pub fn init() {
    GucRegistry::define_int_guc(
        c"synapse.deadlock_scan_interval",
        c"How often the Raft leader looks for deadlocks that span nodes.",
        c"0 means twice deadlock_timeout.",
        &DEADLOCK_SCAN_INTERVAL,
        0,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"synapse.trace_transactions",
        c"Log each step of every distributed commit.",
        c"For diagnosing: one LOG line per prepare, decision and commit or rollback.",
        &TRACE_TRANSACTIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
    define_ms(
        c"synapse.two_phase_timeout",
        c"Roll back a transaction prepared longer ago than this without a commit decision.",
        &TWO_PHASE_TIMEOUT,
        GucContext::Sighup,
    );
    define_ms(
        c"synapse.recovery_interval",
        c"How often the maintenance worker resolves this node's prepared transactions.",
        &RECOVERY_INTERVAL,
        GucContext::Sighup,
    );
    GucRegistry::define_string_guc(
        c"synapse.failpoints",
        c"Failpoints of the distributed commit, for tests: point:action, comma-separated.",
        c"Points after_prepare, after_decision, between_commit_prepared; actions error, crash, pause.",
        &FAILPOINTS,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"synapse.max_node_connections",
        c"The most connections this node's backends together hold to any one other node.",
        c"0 means no limit. The other node's max_connections is the real bound.",
        &MAX_NODE_CONNECTIONS,
        0,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"synapse.fragment",
        c"Run statements on this node's shards only, as a fragment of a distributed statement.",
        c"Set by the connections between nodes.",
        &FRAGMENT,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"synapse.placement_vnodes",
        c"Virtual nodes per node on the ring that places the shards of a new shard count.",
        c"",
        &PLACEMENT_VNODES,
        1,
        4096,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse.cert_lifetime",
        c"How long node certificates issued by the cluster CA are valid.",
        c"Shorten it (to minutes) only to test renewal.",
        &CERT_LIFETIME,
        60,
        10 * 365 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"synapse.cert_renew_before",
        c"Renew a node certificate when less than this time remains.",
        c"",
        &CERT_RENEW_BEFORE,
        10,
        10 * 365 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    define_ms(
        c"synapse.gossip_probe_interval",
        c"Interval between SWIM failure-detection probes.",
        &GOSSIP_PROBE_INTERVAL,
        GucContext::Postmaster,
    );
    define_ms(
        c"synapse.gossip_probe_timeout",
        c"How long a SWIM probe waits for an ack before indirect probes.",
        &GOSSIP_PROBE_TIMEOUT,
        GucContext::Postmaster,
    );
    GucRegistry::define_int_guc(
        c"synapse.gossip_indirect_checks",
        c"Members asked to probe a silent member indirectly.",
        c"",
        &GOSSIP_INDIRECT_CHECKS,
        0,
        16,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse.gossip_suspicion_mult",
        c"Multiplier of the SWIM suspicion timeout.",
        c"The minimum timeout is this times max(1, log10(members)) probe intervals.",
        &GOSSIP_SUSPICION_MULT,
        2,
        20,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    define_ms(
        c"synapse.election_timeout_min",
        c"Shortest Raft election timeout.",
        &ELECTION_TIMEOUT_MIN,
        GucContext::Postmaster,
    );
    define_ms(
        c"synapse.election_timeout_max",
        c"Longest Raft election timeout.",
        &ELECTION_TIMEOUT_MAX,
        GucContext::Postmaster,
    );
    define_ms(
        c"synapse.heartbeat_interval",
        c"Interval of Raft leader heartbeats.",
        &HEARTBEAT_INTERVAL,
        GucContext::Postmaster,
    );
    define_ms(
        c"synapse.leadership_lease",
        c"How long a Raft leader trusts its last quorum contact.",
        &LEADERSHIP_LEASE,
        GucContext::Postmaster,
    );
    define_ms(
        c"synapse.raft_timeout",
        c"How long a metadata change or linearizable read waits for a Raft quorum.",
        &RAFT_TIMEOUT,
        GucContext::Userset,
    );
    GucRegistry::define_int_guc(
        c"synapse.max_voters",
        c"Most voting members of the Raft group; later nodes join as learners.",
        c"",
        &MAX_VOTERS,
        1,
        9,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"synapse.raft_snapshot_entries",
        c"Raft log entries after which a snapshot is taken and the log compacted.",
        c"",
        &RAFT_SNAPSHOT_ENTRIES,
        10,
        1_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"synapse.node_name",
        c"Name of this node in logs, health reports and cluster views.",
        c"Empty means <host name>:<port>.",
        &NODE_NAME,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"synapse.database",
        c"Database the synapse background workers connect to.",
        c"CREATE EXTENSION synapse must be run in this database.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"synapse.listen_address",
        c"Address the synapse HTTP, RPC and gossip ports bind to.",
        c"Use 0.0.0.0 to listen on every IPv4 interface.",
        &LISTEN_ADDRESS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    define_port(
        c"synapse.http_port",
        c"HTTP port for /health; 0 disables it.",
        &HTTP_PORT,
        0,
    );
    define_port(
        c"synapse.rpc_port",
        c"Port for node-to-node RPC (gRPC: Raft and cluster requests).",
        &RPC_PORT,
        1,
    );
    define_port(
        c"synapse.gossip_port",
        c"UDP port for SWIM gossip.",
        &GOSSIP_PORT,
        1,
    );
    GucRegistry::define_int_guc(
        c"synapse.health_timeout",
        c"How long GET /health waits for the database to answer.",
        c"A node whose database does not answer in time reports itself unavailable (HTTP 503).",
        &HEALTH_TIMEOUT,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    // SAFETY: called from _PG_init on the postmaster's main thread with a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"synapse".as_ptr()) };
}

fn define_port(
    name: &'static std::ffi::CStr,
    desc: &'static std::ffi::CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
) {
    GucRegistry::define_int_guc(
        name,
        desc,
        c"",
        setting,
        min,
        65535,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn define_ms(
    name: &'static CStr,
    desc: &'static CStr,
    setting: &'static GucSetting<i32>,
    context: GucContext,
) {
    GucRegistry::define_int_guc(
        name,
        desc,
        c"",
        setting,
        10,
        600_000,
        context,
        GucFlags::UNIT_MS,
    );
}

fn string_of(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// This node's name: `synapse.node_name`, or `<host name>:<port>` when it is empty.
pub fn node_name() -> String {
    let name = string_of(&NODE_NAME);
    if !name.is_empty() {
        return name;
    }
    let mut host = [0u8; 256];
    // SAFETY: gethostname writes at most host.len() bytes into our buffer.
    let ok = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
    let host = if ok {
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        "localhost".to_owned()
    };
    // SAFETY: PostPortNumber is a plain int set by the postmaster before any worker starts.
    let port = unsafe { pg_sys::PostPortNumber };
    format!("{host}:{port}")
}

pub fn database() -> String {
    string_of(&DATABASE)
}

pub fn listen_address() -> String {
    string_of(&LISTEN_ADDRESS)
}

/// `synapse.listen_address` as an IP address; an ERROR names the setting when it is not one.
pub fn listen_ip() -> std::net::IpAddr {
    let address = listen_address();
    address.parse().unwrap_or_else(|_| {
        pgrx::error!(
            "invalid synapse.listen_address \"{address}\": expected an IP address such as 127.0.0.1 or 0.0.0.0"
        )
    })
}

pub fn http_port() -> u16 {
    HTTP_PORT.get() as u16
}

pub fn health_timeout_ms() -> u64 {
    HEALTH_TIMEOUT.get() as u64
}

pub fn election_timeout_ms() -> (u64, u64) {
    (
        ELECTION_TIMEOUT_MIN.get() as u64,
        ELECTION_TIMEOUT_MAX.get() as u64,
    )
}

/// SWIM parameters: probe interval and timeout (ms), indirect checks, suspicion multiplier.
/// (`synapse.cert_lifetime`, `synapse.cert_renew_before`).
pub fn cert_lifetimes() -> (std::time::Duration, std::time::Duration) {
    (
        std::time::Duration::from_secs(CERT_LIFETIME.get() as u64),
        std::time::Duration::from_secs(CERT_RENEW_BEFORE.get() as u64),
    )
}

pub fn gossip_parameters() -> (u64, u64, usize, u32) {
    (
        GOSSIP_PROBE_INTERVAL.get() as u64,
        GOSSIP_PROBE_TIMEOUT.get() as u64,
        GOSSIP_INDIRECT_CHECKS.get() as usize,
        GOSSIP_SUSPICION_MULT.get() as u32,
    )
}

pub fn heartbeat_interval_ms() -> u64 {
    HEARTBEAT_INTERVAL.get() as u64
}

pub fn leadership_lease_ms() -> u64 {
    LEADERSHIP_LEASE.get() as u64
}

pub fn raft_timeout_ms() -> u64 {
    RAFT_TIMEOUT.get() as u64
}

pub fn max_node_connections() -> i32 {
    MAX_NODE_CONNECTIONS.get()
}

pub fn two_phase_timeout_ms() -> i64 {
    i64::from(TWO_PHASE_TIMEOUT.get())
}

pub fn recovery_interval_ms() -> u64 {
    RECOVERY_INTERVAL.get() as u64
}

pub fn deadlock_scan_interval_ms() -> u64 {
    match DEADLOCK_SCAN_INTERVAL.get() {
        // SAFETY: reads PostgreSQL's deadlock_timeout setting (ms), main thread.
        0 => 2 * unsafe { pg_sys::DeadlockTimeout }.max(1) as u64,
        ms => ms as u64,
    }
}

pub fn trace_transactions() -> bool {
    TRACE_TRANSACTIONS.get()
}

pub fn failpoints() -> String {
    string_of(&FAILPOINTS)
}

pub fn fragment() -> bool {
    FRAGMENT.get()
}

pub fn placement_vnodes() -> u32 {
    PLACEMENT_VNODES.get() as u32
}

pub fn max_voters() -> usize {
    MAX_VOTERS.get() as usize
}

pub fn raft_snapshot_entries() -> u64 {
    RAFT_SNAPSHOT_ENTRIES.get() as u64
}

pub fn rpc_port() -> u16 {
    RPC_PORT.get() as u16
}

pub fn gossip_port() -> u16 {
    GOSSIP_PORT.get() as u16
}
