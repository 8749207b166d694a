//! The audit trail: one JSON line per decision. Written by a task of its own from a bounded
//! queue, so a slow log destination never blocks a request; records that do not fit are counted
//! and the count is reported in the trail itself. Lines are the project's own JSON or OCSF
//! events ([`Format`], [`ocsf`]); a file may rotate by size ([`Rotation`], done by the writer).

pub mod ocsf;
mod rotate;

pub use self::rotate::{DEFAULT_KEEP, MAX_KEEP, Rotation, SizeError, parse_size};

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boundary_api::{Mode, Tier};
use serde::Serialize;

/// What happened to a request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A rule allowed it.
    Allow,
    /// Denied (Enforce mode).
    Deny,
    /// No rule allows it, but the mode is Audit: let through and recorded.
    WouldDeny,
}

/// What refused a request or connection, when it was not the absence of an allow rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeniedBy {
    /// The record's `rule` is a deny rule, which beats every allow rule.
    DenyRule,
    /// The private-address guard: the destination's address is loopback, private, link-local,
    /// cloud metadata… and neither pinned nor named by a rule (`reason` says which and how to
    /// allow it).
    PrivateAddressGuard,
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
    /// The rule that allowed it, or the deny rule that refused it (then `denied_by` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// `deny-rule` when a deny rule refused it (or would have, in Audit mode),
    /// `private-address-guard` when the guard refused its address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<DeniedBy>,
    /// Why it was denied (or would have been).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The credentials put into the request (comma-separated names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// A credential leak attempt: `{credential, where}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak: Option<crate::credentials::Leak>,
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

/// The audit line of one connection or request: made once with what is known at the start,
/// enriched along the way (through `Deref`), and queued exactly once, when it is dropped, on
/// every path: answered, relayed, failed, or abandoned by the client.
pub struct Entry {
    record: Record,
    audit: Audit,
    /// Set once traffic flows (relay, forward): the record's `duration_ms` is measured from it.
    started: Option<Instant>,
    /// Also sees the final record (the sidecar's count of denials).
    tap: Option<Tap>,
}

/// Something that sees every record as it is written, e.g. `crate::denials::Denials`.
pub type Tap = Arc<dyn Fn(&Record) + Send + Sync>;

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("record", &self.record)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// An entry for `record`, to be written to `audit`.
    pub fn new(audit: Audit, record: Record) -> Entry {
        Entry {
            record,
            audit,
            started: None,
            tap: None,
        }
    }

    /// Also shows the final record to `tap`.
    #[must_use]
    pub fn tapped(mut self, tap: Tap) -> Entry {
        self.tap = Some(tap);
        self
    }

    /// Marks an allowed request or connection as refused by the private-address guard after
    /// all (in every mode: the guard is no rule that Audit mode lets through).
    pub fn refused_by_guard(&mut self) {
        self.record.decision = Decision::Deny;
        self.record.denied_by = Some(DeniedBy::PrivateAddressGuard);
    }

    /// Starts measuring `duration_ms` (once; a later call keeps the first start).
    pub fn start_clock(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }
}

impl std::ops::Deref for Entry {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.record
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            self.record.duration_ms = millis(started);
        }
        // A placeholder's nonce never reaches the trail, whichever path recorded it (a TLS
        // server name, a denied host): requests with credentials are redacted further in `http`.
        let record = &mut self.record;
        for text in [
            Some(&mut record.host),
            record.path.as_mut(),
            record.reason.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if let std::borrow::Cow::Owned(redacted) = crate::credentials::redact_placeholders(text)
            {
                *text = redacted;
            }
        }
        if let Some(tap) = &self.tap {
            tap(&self.record);
        }
        self.audit.record_line(&self.record);
    }
}

/// Milliseconds since `since`, saturating.
pub fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One audit line about the proxy or a jail rather than a decision: `kind` says what
/// (`inbound`: a connection into the jail through `--inbound-port`; `sidecar-restart`,
/// `unreachable-sidecar`, `policy-missing`, ...); `detail`'s fields follow.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord<D: Serialize = serde_json::Map<String, serde_json::Value>> {
    /// RFC 3339 time.
    pub time: String,
    /// The session id of whoever writes the trail.
    pub session: Arc<str>,
    /// Pod and namespace.
    #[serde(flatten)]
    pub identity: Arc<Identity>,
    /// The jailed container it is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What happened.
    pub kind: &'static str,
    /// The jail tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// The kind's own fields.
    #[serde(flatten)]
    pub detail: D,
}

/// Writes [`EventRecord`]s to the trail; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    /// The trail.
    pub audit: Audit,
    /// The writer's session id.
    pub session: Arc<str>,
    /// Pod and namespace.
    pub identity: Arc<Identity>,
}

impl Events {
    /// Queues one event; `detail` should be a JSON object (anything else is kept under
    /// `detail`).
    pub fn record(
        &self,
        kind: &'static str,
        container: Option<String>,
        tier: Option<Tier>,
        detail: serde_json::Value,
    ) {
        let detail = match detail {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Null => serde_json::Map::new(),
            other => std::iter::once(("detail".to_owned(), other)).collect(),
        };
        self.audit.record_line(&EventRecord {
            time: now(),
            session: self.session.clone(),
            identity: self.identity.clone(),
            container,
            kind,
            tier,
            detail,
        });
    }
}

/// The shape of audit lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// The project's own JSON objects ([`Record`], [`EventRecord`]).
    #[default]
    Json,
    /// OCSF 1.3.0 events ([`ocsf`]).
    Ocsf,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "json" => Ok(Format::Json),
            "ocsf" => Ok(Format::Ocsf),
            other => Err(format!("unknown audit format {other:?}: use json or ocsf")),
        }
    }
}

impl Format {
    /// `json` or `ocsf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ocsf => "ocsf",
        }
    }
}

/// How the trail is written, besides where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// JSON or OCSF lines.
    pub format: Format,
    /// Size-based rotation of a file sink (ignored for other sinks); `None`: the file grows.
    pub rotation: Option<Rotation>,
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
    /// An opened file, and its path (to rotate it).
    Open(Arc<std::fs::File>, std::path::PathBuf),
    /// Nowhere (Coder's `disable_audit_logs`).
    Disabled,
}

impl Sink {
    /// Opens a file sink now; other sinks are returned as they are.
    pub fn open(self) -> std::io::Result<Sink> {
        match self {
            Sink::File(path) => Ok(Sink::Open(
                Arc::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?,
                ),
                path,
            )),
            other => Ok(other),
        }
    }
}

/// The sending side, cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Option<std::sync::mpsc::Sender<String>>,
    dropped: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
    format: Format,
    rotation_failures: Arc<AtomicU64>,
}

/// Queue length: about a second of a very busy agent. Counted by `pending` rather than by a
/// bounded channel: a bounded one allocates (and touches) every slot up front, 256 KiB on the
/// start-up path of every `boundary run`; this one grows as lines come.
const QUEUE: usize = 8192;

impl Audit {
    /// Opens the sink and starts the writer thread.
    pub fn start(sink: &Sink, options: Options) -> std::io::Result<Audit> {
        let rotation_failures = Arc::new(AtomicU64::new(0));
        let out = match sink {
            Sink::Disabled => {
                return Ok(Audit {
                    tx: None,
                    dropped: Arc::default(),
                    pending: Arc::default(),
                    format: options.format,
                    rotation_failures,
                });
            }
            Sink::Stdout => Output::plain(Box::new(std::io::stdout())),
            Sink::Stderr => Output::plain(Box::new(std::io::stderr())),
            Sink::File(_) => {
                return Audit::start(&sink.clone().open()?, options);
            }
            Sink::Open(file, path) => match options.rotation {
                Some(rotation) => Output::Rotating(rotate::RotatingFile::new(
                    path.clone(),
                    file.try_clone()?,
                    rotation,
                    rotation_failures.clone(),
                )),
                None => Output::plain(Box::new(file.try_clone()?)),
            },
        };
        Audit::spawn(out, options.format, rotation_failures)
    }

    /// Starts the writer thread on `out` (JSON lines). Blocking writes belong on a thread of
    /// their own; the queue between it and the proxy is bounded and never waited on.
    pub fn from_writer(out: Box<dyn Write + Send>) -> std::io::Result<Audit> {
        Audit::spawn(Output::plain(out), Format::Json, Arc::default())
    }

    fn spawn(
        out: Output,
        format: Format,
        rotation_failures: Arc<AtomicU64>,
    ) -> std::io::Result<Audit> {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let dropped = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicU64::new(0));
        let (lost, left) = (dropped.clone(), pending.clone());
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(&rx, out, format, &lost, &left))?;
        Ok(Audit {
            tx: Some(tx),
            dropped,
            pending,
            format,
            rotation_failures,
        })
    }

    /// Queues one line (JSON, or its OCSF event); never waits. A full queue drops the line and
    /// counts it. Decisions go through an [`Entry`] instead, which writes exactly once.
    pub fn record_line(&self, record: &impl Serialize) {
        let Some(tx) = &self.tx else { return };
        // Sized for a typical line up front: growing from serde_json's 128 bytes reallocated
        // several times per request.
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        let written = match self.format {
            Format::Json => serde_json::to_writer(&mut line, record),
            Format::Ocsf => serde_json::to_value(record)
                .and_then(|value| serde_json::to_writer(&mut line, &ocsf::convert(value))),
        };
        // serde_json writes UTF-8 only; the check is kept rather than trusted.
        let (Ok(()), Ok(line)) = (written, String::from_utf8(line)) else {
            return;
        };
        // A full queue (lines not yet written, the writer's batch included) drops the line.
        let queued = self.pending.fetch_add(1, Ordering::Relaxed);
        if queued >= QUEUE as u64 || tx.send(line).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rotations of the audit file that failed so far (the writer went on with the file it had).
    pub fn rotation_failures(&self) -> u64 {
        self.rotation_failures.load(Ordering::Relaxed)
    }

    /// Waits (up to half a second) until queued lines are written, at shutdown.
    pub async fn flush(&self) {
        for _ in 0..50 {
            if self.pending.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Room for one audit line before it is written: most decision lines fit.
const LINE_CAPACITY: usize = 768;

/// How long the writer lets records gather after writing a batch. Waking the writer thread
/// for every record costs a context switch per request under load; a short window batches them
/// (about 50 wake-ups a second at most) while audit lines still appear promptly.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// The writer thread's destination.
enum Output {
    /// A stream (or a file that is never rotated).
    Plain(std::io::BufWriter<Box<dyn Write + Send>>),
    /// A file rotated by size.
    Rotating(rotate::RotatingFile),
}

impl Output {
    fn plain(out: Box<dyn Write + Send>) -> Output {
        Output::Plain(std::io::BufWriter::with_capacity(64 * 1024, out))
    }

    fn line(&mut self, line: &str) {
        match self {
            Output::Plain(out) => {
                let _ = out.write_all(line.as_bytes());
                let _ = out.write_all(b"\n");
            }
            Output::Rotating(file) => file.line(line),
        }
    }

    fn flush(&mut self) {
        match self {
            Output::Plain(out) => {
                let _ = out.flush();
            }
            Output::Rotating(file) => file.flush(),
        }
    }
}

fn write_loop(
    rx: &std::sync::mpsc::Receiver<String>,
    mut out: Output,
    format: Format,
    lost: &AtomicU64,
    left: &AtomicU64,
) {
    let mut reported = 0;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut written = 0;
        for line in first.into_iter().chain(rx.try_iter()) {
            out.line(&line);
            written += 1;
        }
        let now = lost.load(Ordering::Relaxed);
        if now != reported {
            let report = serde_json::json!({"event": "audit-dropped", "dropped_total": now, "time": now_rfc3339()});
            let report = match format {
                Format::Json => report,
                Format::Ocsf => ocsf::convert(report),
            };
            out.line(&report.to_string());
            reported = now;
        }
        out.flush();
        // Only now are they out: `flush()` at shutdown waits for this count.
        left.fetch_sub(written, Ordering::Relaxed);
        if written > 0 {
            std::thread::sleep(BATCH_WINDOW);
        }
    }
    out.flush();
}

fn now_rfc3339() -> String {
    now()
}

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map(rfc3339_millis)
        .unwrap_or_default()
}

/// Always three fraction digits (jiff's default prints as few as it needs): times of one width
/// sort as strings, which the denial tallies and the readers of the audit trail rely on.
fn rfc3339_millis(time: jiff::Timestamp) -> String {
    use std::fmt::Write as _;
    // Sized for `2026-12-07T20:53:55.123Z`: one allocation per record, not one per growth.
    let mut out = String::with_capacity(24);
    let _ = write!(out, "{time:.3}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    #[test]
    fn times_have_three_fraction_digits_and_sort_as_strings() {
        let at = |ms: i64| rfc3339_millis(jiff::Timestamp::from_millisecond(ms).unwrap());
        assert_eq!(at(1_796_566_400_100), "2026-12-06T14:13:20.100Z");
        assert_eq!(at(1_796_566_400_000), "2026-12-06T14:13:20.000Z");
        assert!(at(1_796_566_400_100) < at(1_796_566_400_143));
        assert_eq!(now().len(), "2026-12-06T14:13:20.100Z".len());
    }

    /// A writer that blocks until released, then keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn record(n: u64) -> Record {
        Record {
            time: now(),
            session: "s".into(),
            identity: Arc::default(),
            container: None,
            scheme: "http",
            method: Some("GET".into()),
            host: "a.test".into(),
            port: 80,
            path: Some(format!("/{n}")),
            decision: Decision::Allow,
            rule: None,
            denied_by: None,
            reason: None,
            credential: None,
            leak: None,
            mode: Mode::Enforce,
            tier: None,
            isolation: None,
            status: Some(200),
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_stuck_destination_never_blocks_requests_and_drops_are_reported() {
        let gate = Gate::default();
        let audit = Audit::from_writer(Box::new(gate.clone())).unwrap();
        // Far more than the queue (and the writer's buffer) holds, while the destination is
        // stuck: every call returns.
        let sent = QUEUE as u64 + 5000;
        for n in 0..sent {
            audit.record_line(&record(n));
        }
        let dropped = audit.dropped();
        assert!(dropped > 0, "a full queue drops");
        {
            let (lock, cv) = &*gate.open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        audit.flush().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let text = String::from_utf8(gate.written.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let records = lines
            .iter()
            .filter(|l| !l.contains("audit-dropped"))
            .count() as u64;
        assert_eq!(
            records + dropped,
            sent,
            "every record is written or counted as dropped"
        );
        assert!(
            records >= QUEUE as u64,
            "queued records are written: {records}"
        );
        let report: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(report["event"], "audit-dropped");
        assert_eq!(report["dropped_total"], dropped);
    }
}
