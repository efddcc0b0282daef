//! The network side of a node's supervisor worker: a tokio runtime on its own thread that
//! serves HTTP (`GET /health`) and asks the worker's main thread for anything that needs
//! the database.
//!
//! Thread model: the runtime thread starts with every signal blocked
//! ([`crate::thread::spawn_with_signals_blocked`]) and never calls into PostgreSQL. It
//! reaches the main thread only through the [`Mailbox`]; log lines travel the same way so
//! that they are written by `ereport` on the main thread. Settings reach it through a
//! `watch` channel the main thread updates after each configuration reload.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use crate::health::{DatabaseCheck, HealthReport, NodeSettings};
use crate::mailbox::Mailbox;
use crate::thread::NetThread;

/// Severity of a line the network thread asks the main thread to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Log,
    Warning,
}

/// Work only the main thread can do.
#[derive(Debug, PartialEq)]
pub enum MainRequest {
    /// Run a query and report the server and extension versions.
    CheckDatabase,
    /// Write a line to the server log.
    Log(LogLevel, String),
}

/// The main thread's answers.
#[derive(Debug, PartialEq)]
pub enum MainReply {
    Database(Result<DatabaseCheck, String>),
    Logged,
}

pub type MainMailbox = Mailbox<MainRequest, MainReply>;

/// How often binding the HTTP port is retried after it failed.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// The running network thread; stop it with [`SupervisorNet::stop`].
pub struct SupervisorNet {
    thread: NetThread,
    settings: watch::Sender<NodeSettings>,
}

#[derive(Clone)]
struct HttpState {
    mailbox: MainMailbox,
    settings: watch::Receiver<NodeSettings>,
    started: Instant,
}

impl SupervisorNet {
    /// Starts the runtime thread, which serves HTTP on `http_addr` (when given).
    pub fn start(
        http_addr: Option<SocketAddr>,
        settings: NodeSettings,
        mailbox: MainMailbox,
    ) -> io::Result<Self> {
        let (settings_tx, settings_rx) = watch::channel(settings);
        let state = HttpState {
            mailbox,
            settings: settings_rx,
            started: Instant::now(),
        };
        let thread = NetThread::spawn("synapse-net", 1, run(http_addr, state))?;
        Ok(SupervisorNet {
            thread,
            settings: settings_tx,
        })
    }

    /// Hands new settings to the network thread (after a configuration reload).
    pub fn publish(&self, settings: NodeSettings) {
        self.settings.send_replace(settings);
    }

    /// Asks the thread to stop and waits at most `within` for it; returns whether it did.
    pub fn stop(self, within: Duration) -> bool {
        self.thread.stop(within)
    }
}

async fn run(http_addr: Option<SocketAddr>, state: HttpState) {
    let Some(addr) = http_addr else {
        return std::future::pending().await;
    };
    let mailbox = state.mailbox.clone();
    let listener = bind_with_retry(addr, &mailbox).await;
    let app = Router::new()
        .route("/health", get(health))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        log(
            &mailbox,
            LogLevel::Warning,
            format!("synapse HTTP server stopped: {e}"),
        );
    }
}

/// Binds `addr`, logging a warning once if it is busy and retrying until it is free.
async fn bind_with_retry(addr: SocketAddr, mailbox: &MainMailbox) -> tokio::net::TcpListener {
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                if warned {
                    log(
                        mailbox,
                        LogLevel::Log,
                        format!("synapse HTTP server listening on {addr}"),
                    );
                }
                return listener;
            }
            Err(e) => {
                if !warned {
                    log(
                        mailbox,
                        LogLevel::Warning,
                        format!(
                            "could not listen on {addr} for HTTP (synapse.http_port): {e}; \
                             retrying every {} s",
                            BIND_RETRY.as_secs()
                        ),
                    );
                    warned = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

fn log(mailbox: &MainMailbox, level: LogLevel, message: String) {
    // Fire and forget: the answer only confirms the line was written.
    let _ = mailbox.post(MainRequest::Log(level, message));
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let settings = state.settings.borrow().clone();
    let deadline = Duration::from_millis(settings.health_timeout_ms);
    let asked = Instant::now();
    let probe = match state
        .mailbox
        .call(MainRequest::CheckDatabase, deadline)
        .await
    {
        Ok(MainReply::Database(result)) => result,
        Ok(other) => Err(format!("unexpected answer from the main thread: {other:?}")),
        Err(e) => Err(e.to_string()),
    };
    let latency_ms = asked.elapsed().as_secs_f64() * 1000.0;
    let report = HealthReport::new(
        &settings,
        probe,
        latency_ms,
        state.started.elapsed().as_secs_f64(),
    );
    let code = if report.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{mailbox, Inbox};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn free_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            node_name: "n1".into(),
            health_timeout_ms: 300,
        }
    }

    /// GETs `path`, retrying the connection until the server has bound its port.
    fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("server never listened: {e}"),
                Err(_) => std::thread::yield_now(),
            }
        };
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let code = response[9..12].parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            code,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Answers database probes the way the worker's main thread does, until `stop`.
    fn answer_on_thread(inbox: Inbox<MainRequest, MainReply>) -> crossbeam_channel::Sender<()> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        std::thread::spawn(move || {
            while stopped.try_recv().is_err() {
                let mut pfd = libc::pollfd {
                    fd: inbox.wake_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; waits up to 50 ms.
                unsafe { libc::poll(&mut pfd, 1, 50) };
                inbox.drain(|e| match e.request {
                    MainRequest::CheckDatabase => {
                        e.answer(MainReply::Database(Ok(DatabaseCheck {
                            postgres_version: "15".into(),
                            extension_version: Some("0.1.0".into()),
                        })))
                    }
                    MainRequest::Log(..) => e.answer(MainReply::Logged),
                });
            }
        });
        stop
    }

    #[test]
    fn health_reports_the_database_answer_and_new_settings() {
        let addr = free_port();
        let (mb, inbox) = mailbox(16).unwrap();
        let _answering = answer_on_thread(inbox);
        let net = SupervisorNet::start(Some(addr), settings(), mb).unwrap();
        let (code, body) = get(addr, "/health");
        assert_eq!(code, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["node_name"], "n1");
        assert_eq!(body["extension_version"], "0.1.0");
        assert_eq!(body["database"]["answered"], true);

        net.publish(NodeSettings {
            node_name: "renamed".into(),
            ..settings()
        });
        assert_eq!(get(addr, "/health").1["node_name"], "renamed");
        assert!(net.stop(Duration::from_secs(1)));
    }

    #[test]
    fn health_is_503_when_the_main_thread_does_not_answer() {
        let addr = free_port();
        let (mb, _silent_inbox) = mailbox(16).unwrap();
        let net = SupervisorNet::start(Some(addr), settings(), mb).unwrap();
        let (code, body) = get(addr, "/health");
        assert_eq!(code, 503);
        assert_eq!(body["status"], "unavailable");
        assert!(body["database"]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer"));
        assert!(net.stop(Duration::from_secs(1)));
    }

    #[test]
    fn a_busy_port_is_logged_once_and_retried() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (mb, inbox) = mailbox(16).unwrap();
        let net = SupervisorNet::start(Some(addr), settings(), mb).unwrap();
        let mut pfd = libc::pollfd {
            fd: inbox.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; waits up to 5 s for the warning.
        unsafe { libc::poll(&mut pfd, 1, 5000) };
        let mut lines = vec![];
        inbox.drain(|e| lines.push(e.request));
        assert!(
            matches!(&lines[..], [MainRequest::Log(LogLevel::Warning, m)] if m.contains("retrying"))
        );
        assert!(net.stop(Duration::from_secs(1)));
    }
}
