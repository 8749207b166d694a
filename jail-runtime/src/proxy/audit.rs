//! The audit trail: one JSON line per decision. Written by a task of its own from a bounded
//! queue, so a slow log destination never blocks a request; records that do not fit are counted
//! and the count is reported in the trail itself.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use boundary_api::{Mode, Tier};
use serde::Serialize;
use tokio::sync::mpsc;

/// What happened to a request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A rule allowed it.
    Allow,
    /// Denied (Enforce mode).
    Deny,
    /// No rule allows it, but the mode is Audit: let through and recorded.
    WouldDeny,
}

/// Who is being audited: from the environment the webhook sets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Identity {
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339 time.
    pub time: String,
    /// The proxy's session id (one per proxy start).
    pub session: Arc<str>,
    /// Pod and namespace.
    #[serde(flatten)]
    pub identity: Arc<Identity>,
    /// The jailed container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `http`, `https`, `tcp` or `tls` (passthrough).
    pub scheme: &'static str,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// Request path (normalised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The decision.
    pub decision: Decision,
    /// The rule that allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was denied (or would have been).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Enforce or Audit.
    pub mode: Mode,
    /// The jail tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Set for the landlock tier, whose isolation is weaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<&'static str>,
    /// HTTP status sent to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
    /// Time from decision to end, in milliseconds.
    pub duration_ms: u64,
}

/// Where audit lines go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard output (the sidecar: `kubectl logs -c boundary` is the trail).
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file, opened by [`Sink::open`] before anything starts (so a bad path is
    /// reported before the jail runs).
    File(std::path::PathBuf),
    /// An opened file.
    Open(Arc<std::fs::File>),
    /// Nowhere (Coder's `disable_audit_logs`).
    Disabled,
}

impl Sink {
    /// Opens a file sink now; other sinks are returned as they are.
    pub fn open(self) -> std::io::Result<Sink> {
        match self {
            Sink::File(path) => Ok(Sink::Open(Arc::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ))),
            other => Ok(other),
        }
    }
}

/// The sending side, cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
    dropped: Arc<AtomicU64>,
}

/// Queue length: about a second of a very busy agent.
const QUEUE: usize = 8192;

impl Audit {
    /// Starts the writer task (needs a tokio runtime) and returns the sender.
    pub fn start(sink: &Sink) -> std::io::Result<Audit> {
        let dropped = Arc::new(AtomicU64::new(0));
        let mut out: Box<dyn Write + Send> = match sink {
            Sink::Disabled => return Ok(Audit { tx: None, dropped }),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(_) => match sink.clone().open()? {
                Sink::Open(file) => Box::new(file.try_clone()?),
                _ => unreachable!("open() turns a path into a file"),
            },
            Sink::Open(file) => Box::new(file.try_clone()?),
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let counter = dropped.clone();
        // Blocking writes belong on a thread of their own.
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let mut reported = 0;
                while let Some(line) = rx.blocking_recv() {
                    let _ = writeln!(out, "{line}");
                    while let Ok(more) = rx.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    let lost = counter.load(Ordering::Relaxed);
                    if lost != reported {
                        let _ = writeln!(
                            out,
                            "{}",
                            serde_json::json!({"event": "audit-dropped", "dropped_total": lost})
                        );
                        reported = lost;
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Audit {
            tx: Some(tx),
            dropped,
        })
    }

    /// Queues a record; never waits.
    pub fn record(&self, record: &Record) {
        let Some(tx) = &self.tx else { return };
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (briefly) until queued lines are written, at shutdown.
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            for _ in 0..50 {
                if tx.capacity() == tx.max_capacity() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
