//! `boundary run`'s session with the sidecar (sidecar mode only): one long-lived connection on
//! the sidecar's socket announcing the container, its tier and whether the jail started; then
//! inbound-connection events for the sidecar's audit trail and, at the end, the command's exit
//! code. A sidecar that restarts is reconnected to and told again. Best effort throughout: the
//! command never waits for the sidecar.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::proxy::header::{EXIT_ACK, Hello, InboundEvent, SessionMessage};

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

/// Starts the session task (needs a runtime).
pub fn start(socket: PathBuf, hello: Hello) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(socket, hello, rx));
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

async fn run(socket: PathBuf, hello: Hello, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut backlog: VecDeque<InboundEvent> = VecDeque::new();
    let mut exit: Option<i32> = None;
    let mut open = true;
    let mut delay = RETRY_FIRST;
    loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => {
                let began = Instant::now();
                match connected(stream, &hello, &mut rx, &mut backlog, &mut exit, &mut open).await {
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

/// One connection: `Ok(true)` once the exit code was acknowledged, `Ok(false)` when the sidecar
/// went away.
async fn connected(
    stream: UnixStream,
    hello: &Hello,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    backlog: &mut VecDeque<InboundEvent>,
    exit: &mut Option<i32>,
    open: &mut bool,
) -> std::io::Result<bool> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write.write_all(&hello.header()).await?;
    let mut reply = Vec::new();
    loop {
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
