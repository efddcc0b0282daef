//! One libpq connection from this backend to another node's PostgreSQL, as `synapse_node`
//! over TLS with this node's certificate.
//!
//! Backends never start threads: libpq runs non-blocking and every wait goes through
//! `WaitLatchOrSocket`. When an interrupt (cancel, `statement_timeout`, termination) wakes
//! a wait, the remote statement is cancelled first and the connection marked broken (its
//! protocol state is unknown), then `CHECK_FOR_INTERRUPTS()` raises the interrupt.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::path::Path;
use std::ptr;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pq_sys as pq;

/// How long data sent to a node may stay unacknowledged before its connection breaks.
const NODE_TCP_TIMEOUT_MS: u32 = 5000;

/// A node to connect to, from `synapse.node_catalog`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A failure on a remote node (boxed: results carrying it stay small).
#[derive(Clone, Debug)]
pub struct RemoteError(Box<Failure>);

impl std::ops::Deref for RemoteError {
    type Target = Failure;
    fn deref(&self) -> &Failure {
        &self.0
    }
}

/// What failed on a remote node: its own error (with its SQLSTATE), or a lost connection.
#[derive(Clone, Debug)]
pub struct Failure {
    pub node: String,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The connection is unusable (connect failure, reset, protocol error).
    pub connection_lost: bool,
}

impl RemoteError {
    /// The node's circuit breaker is open: statements that need it fail at once.
    pub fn breaker_open(node: &str, retry_in_ms: i64) -> RemoteError {
        let mut e = RemoteError::lost(
            node,
            format!("its circuit breaker is open (next try in {retry_in_ms} ms)"),
        );
        e.0.detail = Some(
            "The node failed repeatedly or SWIM reports it failed; statements that need it fail at once."
                .into(),
        );
        e.0.hint = Some(
            "See SELECT * FROM synapse.circuit_breakers(); statements that need only other nodes keep working."
                .into(),
        );
        e
    }

    /// The error with `hint`, unless the node gave one.
    pub fn or_hint(mut self, hint: impl Into<String>) -> RemoteError {
        self.0.hint.get_or_insert_with(|| hint.into());
        self
    }

    fn lost(node: &str, message: String) -> RemoteError {
        RemoteError(Box::new(Failure {
            node: node.to_owned(),
            sqlstate: "08006".into(),
            message,
            detail: None,
            hint: None,
            connection_lost: true,
        }))
    }

    /// Raises the error in this backend with the remote SQLSTATE, message, detail and hint,
    /// and a context naming the node.
    pub fn report(self) -> ! {
        let f = *self.0;
        f.report()
    }
}

impl Failure {
    fn report(self) -> ! {
        let code = PgSqlErrorCode::from(sqlstate_code(&self.sqlstate));
        let message = if self.connection_lost {
            format!("node \"{}\": {}", self.node, self.message)
        } else {
            self.message
        };
        let mut report = ErrorReport::new(code, message, "synapse remote");
        let mut detail = self.detail.unwrap_or_default();
        if !self.connection_lost {
            if !detail.is_empty() {
                detail.push('\n');
            }
            detail.push_str(&format!("On node \"{}\".", self.node));
        }
        report = report.set_detail(detail);
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        } else if self.connection_lost {
            report = report.set_hint(
                "Check that the node is up (SELECT * FROM synapse.members()) and reachable.",
            );
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// PostgreSQL's MAKE_SQLSTATE of a five-character code.
fn sqlstate_code(state: &str) -> i32 {
    let b = state.as_bytes();
    if b.len() != 5 {
        return PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32;
    }
    (0..5).fold(0i32, |code, i| {
        code + ((((b[i] as i32) - ('0' as i32)) & 0x3F) << (6 * i))
    })
}

/// The rows of a statement's result, as text (NULL as `None`).
#[derive(Debug, Default)]
pub struct Rows {
    pub rows: Vec<Vec<Option<String>>>,
    /// The affected row count of INSERT/UPDATE/DELETE/COPY (`PQcmdTuples`), else 0.
    pub affected: u64,
}

/// An owned `PGresult`.
struct PgResult(*mut pq::PGresult);

impl Drop for PgResult {
    fn drop(&mut self) {
        // SAFETY: we own the result and clear it once.
        unsafe { pq::PQclear(self.0) };
    }
}

impl PgResult {
    fn status(&self) -> pq::ExecStatusType {
        // SAFETY: a live result.
        unsafe { pq::PQresultStatus(self.0) }
    }

    fn field(&self, code: u8) -> Option<String> {
        // SAFETY: a live result; libpq returns NULL or a string owned by the result.
        let p = unsafe { pq::PQresultErrorField(self.0, code as c_int) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    fn error(&self, node: &str) -> RemoteError {
        RemoteError(Box::new(Failure {
            node: node.to_owned(),
            sqlstate: self
                .field(pq::PG_DIAG_SQLSTATE)
                .unwrap_or_else(|| "XX000".into()),
            message: self
                .field(pq::PG_DIAG_MESSAGE_PRIMARY)
                .unwrap_or_else(|| "unknown error".into()),
            detail: self.field(pq::PG_DIAG_MESSAGE_DETAIL),
            hint: self.field(pq::PG_DIAG_MESSAGE_HINT),
            connection_lost: false,
        }))
    }

    fn rows(&self) -> Rows {
        // SAFETY: a live result; indexes are within PQntuples/PQnfields.
        unsafe {
            let (n, f) = (pq::PQntuples(self.0), pq::PQnfields(self.0));
            let rows = (0..n)
                .map(|i| {
                    (0..f)
                        .map(|j| {
                            (pq::PQgetisnull(self.0, i, j) == 0).then(|| {
                                CStr::from_ptr(pq::PQgetvalue(self.0, i, j))
                                    .to_string_lossy()
                                    .into_owned()
                            })
                        })
                        .collect()
                })
                .collect();
            let affected = CStr::from_ptr(pq::PQcmdTuples(self.0))
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Rows { rows, affected }
        }
    }
}

/// What to wait for on the connection's socket.
#[derive(Clone, Copy)]
enum Want {
    Read,
    Write,
    ReadWrite,
}

/// Statements prepared per connection at most.
pub const MAX_PREPARED: usize = 200;

thread_local! {
    /// Bumped whenever a relation's definition may have changed in this backend's view;
    /// a connection whose statements were prepared before deallocates them.
    static PREPARED_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A number that changes whenever a relation's definition may have changed (what was
/// derived from definitions before is stale).
pub fn relations_generation() -> u64 {
    PREPARED_GENERATION.with(|g| g.get())
}

/// Registers the relcache callback that retires prepared statements (from `_PG_init`;
/// backends inherit it).
pub fn install() {
    // SAFETY: _PG_init, once, in the postmaster.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0))
    };
}

/// A table changed (an `ALTER TABLE` of a distributed table reaches every node, and
/// this node's own copy sends the invalidation): statements prepared before may return
/// a different row type, which a prepared statement refuses. No catalog access here.
#[pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    PREPARED_GENERATION.with(|g| g.set(g.get() + 1));
}

/// What a pipeline sent: how many statements' results precede its sync, and the
/// prepared statement it runs (SQL, name, whether it prepares it too).
struct Pipeline {
    results: usize,
    statement: Option<(String, String, bool)>,
}

/// A connection to one node.
pub struct Connection {
    conn: *mut pq::PGconn,
    pub target: NodeTarget,
    /// An interrupt or error left the protocol state unknown: never reuse.
    pub broken: bool,
    /// Statements opening a transaction (`BEGIN`, joining the global transaction) to send
    /// with the next statement, in the same round trip.
    pub pending_begin: Vec<String>,
    /// The statement in flight went in a pipeline: what to read before its sync.
    pipeline: Option<Pipeline>,
    /// Statements prepared in the remote session (SQL → statement name): parsed once
    /// there, and planned by its plan cache.
    prepared: HashMap<String, String>,
    /// Names given so far (a name is never reused).
    names: u64,
    /// `PREPARED_GENERATION` when `prepared` was last valid.
    generation: u64,
    /// A statement's answer (a read-only COMMIT) is still to be read before the next use.
    unread: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: we own the connection and finish it once.
        unsafe { pq::PQfinish(self.conn) };
        crate::shmem::count_connection(&self.target.name, -1);
    }
}

/// Where this node's certificate and the cluster CA are, for libpq.
pub struct ClientTls<'a> {
    pub dir: &'a Path,
}

/// The types to send for `count` parameters of `types`: a built-in type by its oid (the
/// same on every node), any other as 0, for the node to infer from the statement as it
/// does for every parameter without a type; empty when none is sent. Without them a node
/// infers `$1 + 1` as integer (a bigint value fails), cannot subscript `$1[$2]`, and
/// refuses a parameter the statement does not use.
fn remote_types(count: usize, types: &[pg_sys::Oid]) -> Vec<pq::Oid> {
    let sent: Vec<pq::Oid> = (0..count)
        .map(|i| match types.get(i) {
            // No such parameter (PL/pgSQL numbers its variables' parameters by variable,
            // so a statement may use $2 and $4 only): a NULL the statement never reads,
            // typed so that the node accepts it.
            Some(&t) if t == pg_sys::Oid::INVALID => pg_sys::TEXTOID.to_u32(),
            Some(&t) if crate::planner::shippable::builtin(t) => t.to_u32(),
            _ => 0,
        })
        .collect();
    if sent.iter().all(|t| *t == 0) {
        Vec::new()
    } else {
        sent
    }
}

/// `types` for libpq: NULL when empty (every type inferred).
fn oids(types: &[pq::Oid]) -> *const pq::Oid {
    if types.is_empty() {
        ptr::null()
    } else {
        types.as_ptr()
    }
}

impl Connection {
    /// Connects to `target`'s database `dbname` as `synapse_node`, verifying the node's
    /// certificate against the cluster CA and presenting ours; gives up after `timeout`.
    pub fn open(
        target: &NodeTarget,
        dbname: &str,
        tls: &ClientTls<'_>,
        timeout: Duration,
    ) -> Result<Connection, RemoteError> {
        let file = |f: &str| tls.dir.join(f).to_string_lossy().into_owned();
        let params: Vec<(&str, String)> = vec![
            ("host", target.host.clone()),
            ("port", target.port.to_string()),
            ("dbname", dbname.to_owned()),
            ("user", "synapse_node".into()),
            ("application_name", "synapse".into()),
            ("sslmode", "verify-full".into()),
            ("sslrootcert", file("ca.pem")),
            ("sslcert", file("node.pem")),
            ("sslkey", file("node.key")),
            ("sslcrl", file("crl.pem")),
            // Our node runs its statements as a fragment: never routed again.
            ("options", "-c synapse.fragment=on".into()),
            // A node that stops answering (partitioned away, its machine gone) is given up
            // on: data unacknowledged for this long, or an idle connection whose
            // keepalives go unanswered, breaks the connection. libpq 15 applies the same
            // to a cancel request's connection, which would otherwise block.
            ("tcp_user_timeout", NODE_TCP_TIMEOUT_MS.to_string()),
            ("keepalives_idle", "10".into()),
            ("keepalives_interval", "2".into()),
            ("keepalives_count", "3".into()),
        ];
        let keys: Vec<CString> = params.iter().map(|(k, _)| cstring(k)).collect();
        let values: Vec<CString> = params.iter().map(|(_, v)| cstring(v)).collect();
        let mut key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let mut value_ptrs: Vec<*const c_char> = values.iter().map(|v| v.as_ptr()).collect();
        key_ptrs.push(ptr::null());
        value_ptrs.push(ptr::null());
        // SAFETY: NULL-terminated arrays of C strings that outlive the call.
        let conn = unsafe { pq::PQconnectStartParams(key_ptrs.as_ptr(), value_ptrs.as_ptr(), 0) };
        if conn.is_null() {
            return Err(RemoteError::lost(&target.name, "out of memory".into()));
        }
        // Counted from here: the Drop below uncounts it, also when connecting fails.
        crate::shmem::count_connection(&target.name, 1);
        let mut c = Connection {
            conn,
            target: target.clone(),
            broken: false,
            pending_begin: Vec::new(),
            pipeline: None,
            prepared: HashMap::new(),
            names: 0,
            generation: PREPARED_GENERATION.with(|g| g.get()),
            unread: false,
        };
        let deadline = Instant::now() + timeout;
        // SAFETY: a live connection, polled as libpq documents.
        unsafe {
            if pq::PQstatus(conn) == pq::ConnStatusType::CONNECTION_BAD {
                return Err(c.lost());
            }
            loop {
                let want = match pq::PQconnectPoll(conn) {
                    pq::PostgresPollingStatusType::PGRES_POLLING_OK => break,
                    pq::PostgresPollingStatusType::PGRES_POLLING_FAILED => return Err(c.lost()),
                    pq::PostgresPollingStatusType::PGRES_POLLING_READING => Want::Read,
                    _ => Want::Write,
                };
                if !c.wait(want, Some(deadline))? {
                    return Err(RemoteError::lost(
                        &target.name,
                        format!(
                            "could not connect to {}:{} within {} ms",
                            target.host,
                            target.port,
                            timeout.as_millis()
                        ),
                    ));
                }
            }
            if pq::PQsetnonblocking(conn, 1) != 0 {
                return Err(c.lost());
            }
        }
        Ok(c)
    }

    /// Whether libpq still takes the connection for open and idle-able.
    pub fn usable(&self) -> bool {
        // SAFETY: a live connection.
        !self.broken && unsafe { pq::PQstatus(self.conn) } == pq::ConnStatusType::CONNECTION_OK
    }

    /// Whether the remote session is inside a transaction block.
    pub fn in_transaction(&self) -> bool {
        // SAFETY: a live connection.
        !matches!(
            unsafe { pq::PQtransactionStatus(self.conn) },
            pq::PGTransactionStatusType::PQTRANS_IDLE
        )
    }

    /// Runs `sql` (one statement, or several without parameters) with text parameters;
    /// returns the rows of the last result.
    pub fn exec(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows, RemoteError> {
        self.send(sql, params)?;
        self.finish(None)
    }

    /// Sends `sql` without waiting for its result ([`Connection::finish`] collects it), so
    /// statements to several nodes run at once.
    pub fn send(&mut self, sql: &str, params: &[Option<&str>]) -> Result<(), RemoteError> {
        self.send_typed(sql, params, &[])
    }

    /// [`Connection::send`] with the parameters' type oids (see [`remote_types`]).
    fn send_typed(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        types: &[pq::Oid],
    ) -> Result<(), RemoteError> {
        self.read_unread()?;
        if !self.pending_begin.is_empty() {
            let begin = std::mem::take(&mut self.pending_begin);
            if params.is_empty() {
                // One simple query: BEGIN and the statement(s) in one round trip.
                return self.send_one(&format!("{};\n{sql}", begin.join(";\n")), params, types);
            }
            // With parameters: BEGIN and the statement in one pipeline, one round trip.
            self.enter_pipeline()?;
            for statement in &begin {
                self.send_params(statement, &[], &[])?;
            }
            self.send_params(sql, params, types)?;
            return self.sync(begin.len() + 1, None);
        }
        self.send_one(sql, params, types)
    }

    /// Like [`Connection::send`] for one statement that runs again and again (a routed
    /// statement, a fragment): prepared in the remote session the first time, then only
    /// executed. Up to [`MAX_PREPARED`] statements per connection; others are sent as
    /// they are.
    pub fn send_prepared(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        types: &[pg_sys::Oid],
    ) -> Result<(), RemoteError> {
        let types = remote_types(params.len(), types);
        // The same text with other parameter types is another statement.
        let key = if types.is_empty() {
            sql.to_owned()
        } else {
            format!("{sql}\n{types:?}")
        };
        let generation = PREPARED_GENERATION.with(|g| g.get());
        let retire = generation != self.generation && !self.prepared.is_empty();
        if generation != self.generation {
            self.prepared.clear();
            self.generation = generation;
        }
        let known = self.prepared.get(&key).cloned();
        if known.is_none() && self.prepared.len() >= MAX_PREPARED {
            return self.send_typed(sql, params, &types);
        }
        self.read_unread()?;
        let begin = std::mem::take(&mut self.pending_begin);
        self.enter_pipeline()?;
        let mut results = 0;
        for statement in &begin {
            self.send_params(statement, &[], &[])?;
            results += 1;
        }
        if retire {
            self.send_params("DEALLOCATE ALL", &[], &[])?;
            results += 1;
        }
        let (name, fresh) = match known {
            Some(name) => (name, false),
            None => {
                self.names += 1;
                let name = format!("synapse_{}", self.names);
                let (c_name, c_sql) = (cstring(&name), cstring(sql));
                // SAFETY: a live connection in pipeline mode; libpq copies the strings.
                let sent = unsafe {
                    pq::PQsendPrepare(
                        self.conn,
                        c_name.as_ptr(),
                        c_sql.as_ptr(),
                        params.len() as c_int,
                        oids(&types),
                    )
                };
                if sent == 0 {
                    return Err(self.lost());
                }
                results += 1;
                (name, true)
            }
        };
        let values: Vec<Option<CString>> = params.iter().map(|p| p.map(cstring)).collect();
        let ptrs: Vec<*const c_char> = values
            .iter()
            .map(|v| v.as_ref().map_or(ptr::null(), |v| v.as_ptr()))
            .collect();
        let c_name = cstring(&name);
        // SAFETY: a live connection in pipeline mode; all strings outlive the call.
        let sent = unsafe {
            pq::PQsendQueryPrepared(
                self.conn,
                c_name.as_ptr(),
                ptrs.len() as c_int,
                ptrs.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
            )
        };
        if sent == 0 {
            return Err(self.lost());
        }
        results += 1;
        self.sync(results, Some((key, name, fresh)))
    }

    /// [`Connection::send_prepared`], then [`Connection::finish`].
    pub fn exec_prepared(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        types: &[pg_sys::Oid],
    ) -> Result<Rows, RemoteError> {
        self.send_prepared(sql, params, types)?;
        self.finish(None)
    }

    fn enter_pipeline(&mut self) -> Result<(), RemoteError> {
        // SAFETY: a live, idle connection.
        if unsafe { pq::PQenterPipelineMode(self.conn) } != 1 {
            return Err(self.lost());
        }
        Ok(())
    }

    /// Ends the pipeline of `results` statements (the last one the caller's; a
    /// statement being prepared the one before it) and sends it.
    fn sync(
        &mut self,
        results: usize,
        statement: Option<(String, String, bool)>,
    ) -> Result<(), RemoteError> {
        self.pipeline = Some(Pipeline { results, statement });
        // SAFETY: a live connection in pipeline mode.
        if unsafe { pq::PQpipelineSync(self.conn) } != 1 {
            return Err(self.lost());
        }
        self.flush()
    }

    fn send_one(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        types: &[pq::Oid],
    ) -> Result<(), RemoteError> {
        if params.is_empty() {
            let sql = cstring(sql);
            // SAFETY: a live connection; libpq copies the string.
            if unsafe { pq::PQsendQuery(self.conn, sql.as_ptr()) } == 0 {
                return Err(self.lost());
            }
            return self.flush();
        }
        self.send_params(sql, params, types)?;
        self.flush()
    }

    /// Queues one statement with the extended protocol (always so in a pipeline).
    fn send_params(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        types: &[pq::Oid],
    ) -> Result<(), RemoteError> {
        let sql = cstring(sql);
        let values: Vec<Option<CString>> = params.iter().map(|p| p.map(cstring)).collect();
        let ptrs: Vec<*const c_char> = values
            .iter()
            .map(|v| v.as_ref().map_or(ptr::null(), |v| v.as_ptr()))
            .collect();
        // SAFETY: a live connection; all strings outlive the call (libpq copies them).
        let sent = unsafe {
            pq::PQsendQueryParams(
                self.conn,
                sql.as_ptr(),
                ptrs.len() as c_int,
                oids(types),
                ptrs.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
            )
        };
        if sent == 0 {
            return Err(self.lost());
        }
        Ok(())
    }

    /// Waits for the results of the statement sent last; returns the rows of the last
    /// result, or the first error.
    pub fn finish(&mut self, deadline: Option<Instant>) -> Result<Rows, RemoteError> {
        if let Some(pipeline) = self.pipeline.take() {
            // Each statement's results, then the pipeline's sync. After an error the
            // rest report PGRES_PIPELINE_ABORTED: the first error is the one to report.
            let mut first_error = None;
            let mut last = Rows::default();
            for i in 0..pipeline.results {
                match self.results(deadline) {
                    Ok(rows) => {
                        if i + 2 == pipeline.results {
                            if let Some((sql, name, true)) = &pipeline.statement {
                                self.prepared.insert(sql.clone(), name.clone());
                            }
                        }
                        last = rows;
                    }
                    Err(e) if e.connection_lost => return Err(e),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            let synced = self.next_result(deadline)?;
            let synced =
                synced.is_some_and(|r| r.status() == pq::ExecStatusType::PGRES_PIPELINE_SYNC);
            // SAFETY: a live connection whose pipeline is drained.
            if !synced || unsafe { pq::PQexitPipelineMode(self.conn) } != 1 {
                self.broken = true;
            }
            return match first_error {
                Some(e) => {
                    // A prepared statement whose plan cannot serve any more (its result
                    // type changed with an ALTER TABLE: 0A000) or that is gone (26000)
                    // is prepared anew under a new name next time.
                    if let Some((sql, _, false)) = &pipeline.statement {
                        if e.sqlstate == "0A000" || e.sqlstate == "26000" {
                            self.prepared.remove(sql);
                        }
                    }
                    Err(e)
                }
                None => Ok(last),
            };
        }
        self.results(deadline)
    }

    /// The results of one statement, up to libpq's end-of-statement NULL.
    fn results(&mut self, deadline: Option<Instant>) -> Result<Rows, RemoteError> {
        let mut error = None;
        let mut last = Rows::default();
        loop {
            let Some(result) = self.next_result(deadline)? else {
                break;
            };
            match result.status() {
                pq::ExecStatusType::PGRES_COMMAND_OK | pq::ExecStatusType::PGRES_TUPLES_OK => {
                    last = result.rows();
                }
                pq::ExecStatusType::PGRES_COPY_IN | pq::ExecStatusType::PGRES_COPY_OUT => {
                    self.broken = true;
                    return Err(RemoteError::lost(
                        &self.target.name,
                        "unexpected COPY from a remote statement".into(),
                    ));
                }
                _ => {
                    if error.is_none() {
                        error = Some(result.error(&self.target.name));
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(last),
        }
    }

    /// `COPY ... FROM STDIN` with `data` in COPY text format.
    pub fn copy_in(&mut self, sql: &str, data: &[u8]) -> Result<u64, RemoteError> {
        self.read_unread()?;
        if !self.pending_begin.is_empty() {
            let begin = std::mem::take(&mut self.pending_begin).join(";\n");
            self.send_one(&begin, &[], &[])?;
            self.finish(None)?;
        }
        self.send_one(sql, &[], &[])?;
        let Some(result) = self.next_result(None)? else {
            return Err(self.lost());
        };
        if result.status() != pq::ExecStatusType::PGRES_COPY_IN {
            let e = result.error(&self.target.name);
            drop(result);
            let _ = self.finish(None);
            return Err(e);
        }
        drop(result);
        for chunk in data.chunks(64 * 1024) {
            loop {
                // SAFETY: a live connection in COPY IN state; the chunk outlives the call.
                match unsafe {
                    pq::PQputCopyData(self.conn, chunk.as_ptr().cast(), chunk.len() as c_int)
                } {
                    1 => break,
                    0 => {
                        self.wait(Want::ReadWrite, None)?;
                        self.consume()?;
                    }
                    _ => return Err(self.lost()),
                }
            }
        }
        loop {
            // SAFETY: as above.
            match unsafe { pq::PQputCopyEnd(self.conn, ptr::null()) } {
                1 => break,
                0 => {
                    self.wait(Want::ReadWrite, None)?;
                    self.consume()?;
                }
                _ => return Err(self.lost()),
            }
        }
        self.flush()?;
        Ok(self.finish(None)?.affected)
    }

    /// Leaves the answer to the statement just sent for later: it is read (and a failure
    /// of it ignored) before the connection's next statement.
    pub fn answer_later(&mut self) {
        self.unread = true;
    }

    /// Whether an answer is still to be read.
    pub fn answer_pending(&self) -> bool {
        self.unread
    }

    fn read_unread(&mut self) -> Result<(), RemoteError> {
        if std::mem::take(&mut self.unread) {
            match self.finish(None) {
                Err(e) if e.connection_lost => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes out whatever libpq still buffers.
    fn flush(&mut self) -> Result<(), RemoteError> {
        loop {
            // SAFETY: a live non-blocking connection.
            match unsafe { pq::PQflush(self.conn) } {
                0 => return Ok(()),
                1 => {
                    self.wait(Want::ReadWrite, None)?;
                    self.consume()?;
                }
                _ => return Err(self.lost()),
            }
        }
    }

    fn consume(&mut self) -> Result<(), RemoteError> {
        // SAFETY: a live connection.
        if unsafe { pq::PQconsumeInput(self.conn) } == 0 {
            return Err(self.lost());
        }
        Ok(())
    }

    /// The next result of the running statement, waiting for it; `None` when done.
    fn next_result(&mut self, deadline: Option<Instant>) -> Result<Option<PgResult>, RemoteError> {
        // SAFETY: a live connection; PQgetResult is called only when it will not block.
        unsafe {
            while pq::PQisBusy(self.conn) != 0 {
                if !self.wait(Want::Read, deadline)? {
                    self.cancel();
                    return Err(RemoteError::lost(
                        &self.target.name,
                        "timed out waiting for the node's answer".into(),
                    ));
                }
                self.consume()?;
            }
            let r = pq::PQgetResult(self.conn);
            Ok((!r.is_null()).then_some(PgResult(r)))
        }
    }

    /// Waits until the socket is ready for `want`, our latch is set, or `deadline` passes
    /// (`Ok(false)`). Interrupts cancel the remote statement and are then raised.
    fn wait(&mut self, want: Want, deadline: Option<Instant>) -> Result<bool, RemoteError> {
        // SAFETY: a live connection.
        let sock = unsafe { pq::PQsocket(self.conn) };
        if sock < 0 {
            return Err(self.lost());
        }
        let events = match want {
            Want::Read => pg_sys::WL_SOCKET_READABLE,
            Want::Write => pg_sys::WL_SOCKET_WRITEABLE,
            Want::ReadWrite => pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE,
        };
        loop {
            let timeout_ms = deadline.map_or(-1, |d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as libc::c_long
            });
            if timeout_ms == 0 {
                return Ok(false);
            }
            let flags = pg_sys::WL_LATCH_SET
                | events
                | pg_sys::WL_EXIT_ON_PM_DEATH
                | if deadline.is_some() {
                    pg_sys::WL_TIMEOUT
                } else {
                    0
                };
            // SAFETY: our own latch and a socket libpq owns and keeps open, main thread.
            let woken = unsafe {
                let w = pg_sys::WaitLatchOrSocket(
                    pg_sys::MyLatch,
                    flags as c_int,
                    sock,
                    timeout_ms,
                    pg_sys::PG_WAIT_EXTENSION,
                );
                if w & pg_sys::WL_LATCH_SET as c_int != 0 {
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                w
            };
            // SAFETY: reads flags of this process (set by its signal handlers).
            let (pending, ending) = unsafe {
                let servable = pg_sys::InterruptPending != 0
                    && pg_sys::InterruptHoldoffCount == 0
                    && pg_sys::CritSectionCount == 0;
                let ending = pg_sys::ProcDiePending != 0
                    || (pg_sys::QueryCancelPending != 0 && pg_sys::QueryCancelHoldoffCount == 0);
                (servable, servable && ending)
            };
            // While interrupts are held (a commit in progress) the statement runs on: the
            // interrupt is served once they are resumed. A cancel or termination cancels
            // the remote statement; any other interrupt (a parallel worker's message, a
            // barrier) is served and the statement goes on — should serving it raise
            // anyway, the connection is left broken, never reused mid-statement.
            if ending {
                self.cancel();
                pg_sys::check_for_interrupts!();
            } else if pending {
                let was_broken = std::mem::replace(&mut self.broken, true);
                pg_sys::check_for_interrupts!();
                self.broken = was_broken;
            }
            if woken & (pg_sys::WL_SOCKET_READABLE | pg_sys::WL_SOCKET_WRITEABLE) as c_int != 0 {
                return Ok(true);
            }
            if woken & pg_sys::WL_TIMEOUT as c_int != 0 {
                return Ok(false);
            }
        }
    }

    /// Asks the node to cancel the running statement; the connection is not reused.
    pub fn cancel(&mut self) {
        self.broken = true;
        // SAFETY: a live connection; the cancel object is freed here.
        unsafe {
            let cancel = pq::PQgetCancel(self.conn);
            if !cancel.is_null() {
                let mut buf = [0 as c_char; 256];
                pq::PQcancel(cancel, buf.as_mut_ptr(), buf.len() as c_int);
                pq::PQfreeCancel(cancel);
            }
        }
    }

    fn lost(&mut self) -> RemoteError {
        self.broken = true;
        // SAFETY: a live connection; the message is owned by it.
        let message = unsafe { CStr::from_ptr(pq::PQerrorMessage(self.conn)) }
            .to_string_lossy()
            .trim()
            .to_owned();
        RemoteError::lost(&self.target.name, message)
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("no NUL left")
}

/// A value in COPY text format (`\N` for NULL).
pub fn copy_text(value: Option<&str>, out: &mut Vec<u8>) {
    let Some(value) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}
