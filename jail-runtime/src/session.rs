//! `boundary run`'s session with the sidecar (sidecar mode only): one long-lived connection on
//! the sidecar's socket announcing the container, its tier and whether the jail started; then
//! inbound-connection events for the sidecar's audit trail and, at the end, the command's exit
//! code. A sidecar that restarts is reconnected to and told again. Best effort throughout: the
//! command never waits for the sidecar.
//!
//! While the sidecar is unreachable the forwarder refuses the jail's connections (fail closed)
//! and notes them in [`Refusals`] (a count and the first few destinations); the session sends
//! that record as soon as it is connected, so the sidecar's audit trail shows what was refused
//! meanwhile.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use boundary_proxy::Destination;
use boundary_proxy::audit::now;
use boundary_proxy::session::{
    EXIT_ACK, Hello, InboundEvent, RefusedConnection, SessionMessage, UnreachableReport,
};

/// How long `boundary run` tries to deliver the exit code before it exits anyway.
const EXIT_DELIVERY: Duration = Duration::from_secs(3);
/// First and longest wait between connection attempts.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Inbound events kept while the sidecar is away.
const BACKLOG: usize = 1024;

enum Command {
    Inbound(InboundEvent),
    Exit(i32),
}

/// The running session; cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Handle to wait for the session's end.
#[derive(Debug)]
pub struct Running {
    session: Session,
    task: tokio::task::JoinHandle<()>,
}

/// The connections refused while the sidecar was unreachable, not yet reported to it; shared by
/// the forwarder (which refuses them) and the session (which reports them).
#[derive(Debug, Default)]
pub struct Refusals {
    outage: Mutex<Option<UnreachableReport>>,
    noted: tokio::sync::Notify,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnreachableReport>> {
        self.outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a refused connection; `true` for the first one not yet reported (log that one,
    /// not every connection).
    pub fn refused(&self, dest: &Destination) -> bool {
        let at = now();
        let mut outage = self.lock();
        let first = outage.is_none();
        let report = outage.get_or_insert_with(|| UnreachableReport {
            refused: 0,
            listed: Vec::new(),
            dropped: 0,
            first_at: at.clone(),
            last_at: at.clone(),
        });
        report.refused = report.refused.saturating_add(1);
        if report.listed.len() < UnreachableReport::LISTED {
            report.listed.push(RefusedConnection {
                dst: dest.dst,
                name: dest.name.clone(),
                at: at.clone(),
            });
        } else {
            report.dropped = report.dropped.saturating_add(1);
        }
        report.last_at = at;
        drop(outage);
        self.noted.notify_one();
        first
    }

    /// Takes what was noted (nothing is noted twice).
    fn take(&self) -> Option<UnreachableReport> {
        self.lock().take()
    }

    /// Puts back a report that could not be delivered, ahead of what was noted since.
    fn put_back(&self, mut earlier: UnreachableReport) {
        let mut outage = self.lock();
        if let Some(later) = outage.take() {
            earlier.refused = earlier.refused.saturating_add(later.refused);
            earlier.dropped = earlier.dropped.saturating_add(later.dropped);
            for refused in later.listed {
                if earlier.listed.len() < UnreachableReport::LISTED {
                    earlier.listed.push(refused);
                } else {
                    earlier.dropped = earlier.dropped.saturating_add(1);
                }
            }
            earlier.last_at = later.last_at;
        }
        *outage = Some(earlier);
    }
}

/// Starts the session task (needs a runtime).
pub fn start(socket: PathBuf, hello: Hello, refusals: Arc<Refusals>) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(socket, hello, rx, refusals));
    Running {
        session: Session { tx },
        task,
    }
}

impl Session {
    /// Sends an inbound-connection event (dropped when the session is gone).
    pub fn inbound(&self, event: InboundEvent) {
        let _ = self.tx.send(Command::Inbound(event));
    }
}

impl Running {
    /// The sending side.
    pub fn session(&self) -> Session {
        self.session.clone()
    }

    /// Reports the exit code and closes; gives up after a few seconds.
    pub async fn finish(self, code: i32) {
        let _ = self.session.tx.send(Command::Exit(code));
        drop(self.session);
        if tokio::time::timeout(EXIT_DELIVERY, self.task)
            .await
            .is_err()
        {
            tracing::warn!("the boundary sidecar did not acknowledge the exit code");
        }
    }
}

async fn run(
    socket: PathBuf,
    hello: Hello,
    mut rx: mpsc::UnboundedReceiver<Command>,
    refusals: Arc<Refusals>,
) {
    let mut backlog: VecDeque<InboundEvent> = VecDeque::new();
    let mut exit: Option<i32> = None;
    let mut open = true;
    let mut delay = RETRY_FIRST;
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                let began = Instant::now();
                let link = Link {
                    rx: &mut rx,
                    backlog: &mut backlog,
                    exit: &mut exit,
                    open: &mut open,
                    refusals: &refusals,
                };
                match connected(stream, &hello, link).await {
                    Ok(true) => return,
                    Ok(false) => {
                        tracing::info!("the boundary sidecar closed the session; reconnecting");
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "the session with the boundary sidecar broke; reconnecting");
                    }
                }
                // A sidecar that restarted gets a quick reconnect; one that keeps closing at
                // once (an older version without sessions) gets fewer and fewer.
                if began.elapsed() > RETRY_MAX {
                    delay = RETRY_FIRST;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "the boundary sidecar is not reachable; retrying");
            }
        }
        if !open && exit.is_none() {
            return;
        }
        // Keep taking commands while waiting.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                cmd = rx.recv(), if open => match cmd {
                    Some(cmd) => take(cmd, &mut backlog, &mut exit),
                    None => open = false,
                },
            }
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

fn take(cmd: Command, backlog: &mut VecDeque<InboundEvent>, exit: &mut Option<i32>) {
    match cmd {
        Command::Inbound(event) => {
            if backlog.len() == BACKLOG {
                backlog.pop_front();
            }
            backlog.push_back(event);
        }
        Command::Exit(code) => *exit = Some(code),
    }
}

/// What a connection works on: the commands, what is waiting to be sent, the refusals.
struct Link<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<Command>,
    backlog: &'a mut VecDeque<InboundEvent>,
    exit: &'a mut Option<i32>,
    open: &'a mut bool,
    refusals: &'a Refusals,
}

/// Sends what was refused while the sidecar was away (put back if the write fails).
async fn report_refusals(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    refusals: &Refusals,
) -> std::io::Result<()> {
    let Some(report) = refusals.take() else {
        return Ok(());
    };
    let line = SessionMessage::Unreachable(report.clone()).line();
    if let Err(e) = write.write_all(&line).await {
        refusals.put_back(report);
        return Err(e);
    }
    tracing::info!(
        refused = report.refused,
        since = %report.first_at,
        "the boundary sidecar is reachable again; the connections refused meanwhile are in its audit trail"
    );
    Ok(())
}

/// One connection: `Ok(true)` once the exit code was acknowledged, `Ok(false)` when the sidecar
/// went away.
async fn connected(stream: UnixStream, hello: &Hello, link: Link<'_>) -> std::io::Result<bool> {
    let Link {
        rx,
        backlog,
        exit,
        open,
        refusals,
    } = link;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(&hello.header()).await?;
    let mut reply = Vec::new();
    loop {
        report_refusals(&mut write, refusals).await?;
        while let Some(event) = backlog.front() {
            write
                .write_all(&SessionMessage::Inbound(event.clone()).line())
                .await?;
            backlog.pop_front();
        }
        if let Some(code) = *exit {
            write
                .write_all(&SessionMessage::Exit { code }.line())
                .await?;
            reply.clear();
            read.read_until(b'\n', &mut reply).await?;
            return Ok(reply == EXIT_ACK);
        }
        tokio::select! {
            cmd = rx.recv(), if *open => match cmd {
                Some(cmd) => take(cmd, backlog, exit),
                None => *open = false,
            },
            // Refused while this session was (re)connecting: the relay failed before the
            // sidecar listened again.
            () = refusals.noted.notified() => {}
            // The sidecar only ever writes the exit acknowledgement: anything else here is its end.
            n = read.read_until(b'\n', &mut reply) => {
                let _ = n?;
                return Ok(false);
            }
        }
        if !*open && exit.is_none() {
            return Ok(true);
        }
    }
}

/// Tells the sidecar that the jail could not be set up (before any runtime exists): blocking,
/// with short time-outs, once.
pub fn announce_failure(socket: &Path, hello: &Hello, code: i32) {
    let attempt = || -> std::io::Result<()> {
        let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(&hello.header())?;
        stream.write_all(&SessionMessage::Exit { code }.line())?;
        let mut ack = [0u8; 3];
        stream.read_exact(&mut ack)?;
        Ok(())
    };
    if let Err(e) = attempt() {
        tracing::debug!(error = %e, "could not tell the boundary sidecar that the jail failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(n: usize) -> Destination {
        Destination {
            dst: format!("198.18.0.{}:443", n % 250 + 1).parse().unwrap(),
            name: Some(format!("host{n}.test")),
            container: Some("agent".into()),
            tier: None,
        }
    }

    #[test]
    fn refusals_are_bounded_counted_and_reported_once() {
        let refusals = Refusals::default();
        assert!(
            refusals.refused(&dest(0)),
            "the first refusal of an outage is logged"
        );
        for n in 1..100 {
            assert!(!refusals.refused(&dest(n)), "later ones are not");
        }
        let report = refusals.take().unwrap();
        assert_eq!(report.refused, 100);
        assert_eq!(report.listed.len(), UnreachableReport::LISTED);
        assert_eq!(report.dropped, 100 - UnreachableReport::LISTED as u64);
        assert_eq!(report.listed[0].name.as_deref(), Some("host0.test"));
        assert_eq!(report.listed[31].name.as_deref(), Some("host31.test"));
        assert!(refusals.take().is_none(), "reported once");
        assert!(refusals.refused(&dest(7)), "a new outage is logged again");

        // Undelivered: put back in front of what came since, still bounded.
        refusals.put_back(report);
        let merged = refusals.take().unwrap();
        assert_eq!(merged.refused, 101);
        assert_eq!(merged.listed.len(), UnreachableReport::LISTED);
        assert_eq!(merged.dropped, 101 - UnreachableReport::LISTED as u64);
        assert_eq!(merged.listed[0].name.as_deref(), Some("host0.test"));
    }
}
