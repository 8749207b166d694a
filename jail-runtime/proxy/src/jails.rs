//! The sidecar's view of the pod's jails: every `boundary run` holds a session with it (see
//! [`crate::header`]) saying whether its jail started and, at the end, its exit code. From
//! these the sidecar answers `GET /status` and decides when to exit by itself
//! (`BOUNDARY_EXIT_WHEN`): a classic sidecar (clusters before 1.29) otherwise never ends, and a
//! Job's pod never completes.
//!
//! The states are also kept in a file next to the socket (the pod's shared volume), so a sidecar
//! that crashed and was restarted still knows which containers ended meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use boundary_api::Tier;
use boundary_api::contract::exit_when;
use boundary_api::enforcement::{JailReport, PolicyFileState, SidecarStatus};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::Proxy;
use crate::audit::now;
use crate::session::{
    self, EXIT_ACK, Hello, JailOutcome, MAX_MESSAGE, SessionMessage, UnreachableReport,
};

/// When the sidecar exits by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitWhen {
    /// Never (it runs until SIGTERM).
    #[default]
    Never,
    /// Once every jailed container has ended once, whatever its code (`restartPolicy: Never`).
    AllExited,
    /// Once every jailed container has ended with 0 (`restartPolicy: OnFailure`).
    AllSucceeded,
}

impl ExitWhen {
    /// The value as spelled in `BOUNDARY_EXIT_WHEN`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitWhen::Never => exit_when::NEVER,
            ExitWhen::AllExited => exit_when::ALL_EXITED,
            ExitWhen::AllSucceeded => exit_when::ALL_SUCCEEDED,
        }
    }
}

impl FromStr for ExitWhen {
    type Err = String;

    fn from_str(s: &str) -> Result<ExitWhen, String> {
        match s {
            exit_when::NEVER => Ok(ExitWhen::Never),
            exit_when::ALL_EXITED => Ok(ExitWhen::AllExited),
            exit_when::ALL_SUCCEEDED => Ok(ExitWhen::AllSucceeded),
            other => Err(format!(
                "{other:?}: expected one of {}",
                exit_when::ALL.join(", ")
            )),
        }
    }
}

/// A jail's state: the wire type the operator reads (`boundary_api::enforcement`), also kept in
/// the state file.
pub use boundary_api::enforcement::JailState;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    tier: Option<Tier>,
    state: JailState,
    exit_code: Option<i32>,
    error: Option<String>,
    since: String,
    ended_once: bool,
    /// The session that reported last; an older session's end changes nothing. 0: restored
    /// from the state file, no session yet.
    #[serde(skip)]
    session: u64,
}

/// The state file's name, next to the sidecar's socket.
pub const STATE_FILE: &str = "jails.json";

/// How long a jail restored as `connected` has to reconnect before it counts as lost (its
/// `boundary run` retries every 2 s at most, so one that is still there is back by then).
pub const RECONNECT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The jails of the pod and the exit condition.
#[derive(Debug)]
pub struct Jails {
    exit_when: ExitWhen,
    expected: Vec<String>,
    state_file: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, Entry>>,
    sessions: AtomicU64,
    done: tokio::sync::watch::Sender<bool>,
}

impl Jails {
    /// Tracks jails; `expected` are the container names `exit_when` waits for. States are kept
    /// in `state_file` when given.
    pub fn new(exit_when: ExitWhen, expected: Vec<String>, state_file: Option<PathBuf>) -> Jails {
        Jails {
            exit_when,
            expected,
            state_file,
            entries: Mutex::new(BTreeMap::new()),
            sessions: AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Whether a previous run of the sidecar left a state file (it restarted).
    pub fn state_file_exists(&self) -> bool {
        self.state_file
            .as_deref()
            .is_some_and(std::path::Path::exists)
    }

    /// Takes over the states a previous run of the sidecar left in the state file; returns
    /// whether there were any. Jails restored as connected have [`RECONNECT_GRACE`] to
    /// reconnect (see [`Jails::expire_unclaimed`]).
    pub fn restore(&self) -> bool {
        let Some(path) = &self.state_file else {
            return false;
        };
        let restored: BTreeMap<String, Entry> = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable jail state file");
                    return false;
                }
            },
            Err(_) => return false,
        };
        if restored.is_empty() {
            return false;
        }
        tracing::info!(jails = ?restored.keys().collect::<Vec<_>>(), "jail states restored from the previous sidecar run");
        let mut entries = self.lock();
        for (name, entry) in restored {
            entries.entry(name).or_insert(entry);
        }
        if self.satisfied(&entries) {
            self.done.send_replace(true);
        }
        true
    }

    /// Marks jails restored as connected that did not reconnect as lost: their container ended
    /// while no sidecar listened.
    pub fn expire_unclaimed(&self) {
        let names: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.session == 0 && e.state == JailState::Connected)
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            tracing::warn!(container = %name, "a jail of the previous sidecar run did not reconnect: counted as lost");
            self.update(&name, 0, false, |e| {
                e.state = JailState::Lost;
                e.ended_once = true;
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns once the exit condition holds (never with [`ExitWhen::Never`]).
    pub async fn until_done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Serves one session until `boundary run` closes it.
    pub async fn serve(&self, hello: Hello, mut reader: BufReader<UnixStream>, proxy: &Proxy) {
        let name = hello.container.clone().unwrap_or_default();
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let failed = hello.jail == JailOutcome::Failed;
        tracing::info!(
            container = %name,
            tier = hello.tier.map_or("", Tier::as_str),
            started = !failed,
            error = hello.error.as_deref().unwrap_or(""),
            "boundary run announced itself"
        );
        self.update(&name, session, true, |e| {
            e.tier = hello.tier;
            e.state = if failed {
                JailState::Failed
            } else {
                JailState::Connected
            };
            e.exit_code = None;
            e.error.clone_from(&hello.error);
            e.ended_once |= failed;
        });
        let mut ended = failed;
        loop {
            let line = match session::read_line(&mut reader, MAX_MESSAGE).await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "session broken");
                    break;
                }
            };
            match session::parse_message(&line) {
                Ok(SessionMessage::Exit { code }) => {
                    tracing::info!(container = %name, code, "jailed command ended");
                    self.update(&name, session, false, |e| {
                        if e.state != JailState::Failed {
                            e.state = JailState::Exited;
                        }
                        e.exit_code = Some(code);
                        e.ended_once = true;
                    });
                    ended = true;
                    let _ = reader.get_mut().write_all(EXIT_ACK).await;
                }
                Ok(SessionMessage::Inbound(event)) => {
                    proxy.record_inbound(hello.container.clone(), hello.tier, event);
                }
                Ok(SessionMessage::Unreachable(report)) => {
                    record_unreachable(proxy, &hello, &report);
                }
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "session closed");
                    break;
                }
            }
        }
        if !ended {
            tracing::warn!(container = %name, "boundary run went away without an exit code: the container died");
            self.update(&name, session, false, |e| {
                e.state = JailState::Lost;
                e.ended_once = true;
            });
        }
    }

    /// Changes `name`'s entry (a new session takes it over; an older one is ignored) and checks
    /// the exit condition.
    fn update(&self, name: &str, session: u64, takes_over: bool, change: impl FnOnce(&mut Entry)) {
        let mut entries = self.lock();
        let entry = entries.entry(name.to_owned()).or_insert_with(|| Entry {
            tier: None,
            state: JailState::Connected,
            exit_code: None,
            error: None,
            since: now(),
            ended_once: false,
            session,
        });
        if takes_over {
            entry.session = session;
        } else if entry.session != session {
            return;
        }
        let before = (entry.state, entry.exit_code);
        change(entry);
        if (entry.state, entry.exit_code) != before {
            entry.since = now();
        }
        self.save(&entries);
        if self.satisfied(&entries) {
            self.done.send_replace(true);
        }
    }

    /// Writes the states to the state file (a temporary file renamed over it).
    fn save(&self, entries: &BTreeMap<String, Entry>) {
        let Some(path) = &self.state_file else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the jail states");
        }
    }

    fn satisfied(&self, entries: &BTreeMap<String, Entry>) -> bool {
        let all = |ok: fn(&Entry) -> bool| {
            !self.expected.is_empty()
                && self.expected.iter().all(|c| entries.get(c).is_some_and(ok))
        };
        match self.exit_when {
            ExitWhen::Never => false,
            ExitWhen::AllExited => all(|e| e.ended_once),
            ExitWhen::AllSucceeded => {
                all(|e| e.state == JailState::Exited && e.exit_code == Some(0))
            }
        }
    }
}

impl Jails {
    /// Every jail's state, as `/status` reports it.
    pub fn reports(&self) -> Vec<JailReport> {
        self.lock()
            .iter()
            .map(|(name, e)| JailReport {
                container: name.clone(),
                tier: e.tier.map(Tier::as_str).unwrap_or_default().to_owned(),
                state: e.state,
                exit_code: e.exit_code,
                error: e.error.clone(),
                since: e.since.clone(),
            })
            .collect()
    }
}

/// Audits what a jail's `boundary run` refused while this sidecar was unreachable: one
/// `unreachable-sidecar` record per listed connection (`decision: deny`, destination, host,
/// port, `at`), then one `unreachable-sidecar-summary` with the totals.
fn record_unreachable(proxy: &Proxy, hello: &Hello, report: &UnreachableReport) {
    tracing::warn!(
        container = hello.container.as_deref().unwrap_or(""),
        refused = report.refused,
        since = %report.first_at,
        until = %report.last_at,
        "connections of this jail were refused while the sidecar was unreachable"
    );
    for refused in &report.listed {
        proxy.record_event(
            "unreachable-sidecar",
            hello.container.clone(),
            hello.tier,
            serde_json::json!({
                "decision": "deny",
                "reason": "the boundary sidecar was unreachable: the connection was closed",
                "destination": refused.dst,
                "host": refused.name.clone().unwrap_or_else(|| refused.dst.ip().to_string()),
                "port": refused.dst.port(),
                "at": refused.at,
            }),
        );
    }
    proxy.record_event(
        "unreachable-sidecar-summary",
        hello.container.clone(),
        hello.tier,
        serde_json::json!({
            "refused": report.refused,
            "listed": report.listed.len(),
            "dropped": report.dropped,
            "first_at": report.first_at,
            "last_at": report.last_at,
        }),
    );
}

/// The body of `GET /status` (`boundary_api::enforcement::SidecarStatus`), plus, when there
/// are any, `credentials`: the credentials of the pod's containers by name, with whether their
/// value reached the proxy (`present`/`missing`); never a value. Readers ignore unknown fields.
pub fn status_json(proxy: &Proxy, jails: Option<&Jails>) -> String {
    let hash = proxy.policy_hash();
    let reports = jails.map_or_else(Vec::new, Jails::reports);
    let credentials = credential_states(proxy, &reports);
    let (denied, denied_uncounted) = proxy.denials().report();
    let status = SidecarStatus {
        session: proxy.session().to_owned(),
        denied,
        denied_uncounted,
        policy_loaded: hash.is_some(),
        policy_hash: hash.unwrap_or_default(),
        jails: reports,
        policy_file: Some(if proxy.policy_file_missing() {
            PolicyFileState::Missing
        } else {
            PolicyFileState::Present
        }),
    };
    let mut body = match serde_json::to_value(&status) {
        Ok(serde_json::Value::Object(mut map)) if !credentials.is_empty() => {
            map.insert("credentials".into(), serde_json::Value::Array(credentials));
            serde_json::to_string(&map)
        }
        _ => serde_json::to_string(&status),
    }
    .unwrap_or_default();
    body.push('\n');
    body
}

/// `{"name", "value": "present"|"missing"|"identity"}` (`identity`: AWS keys of the sidecar's
/// own identity, not a stored value) for the credentials of the containers heard of (and
/// of the entries for every container).
fn credential_states(proxy: &Proxy, reports: &[JailReport]) -> Vec<serde_json::Value> {
    let values = proxy.credential_values();
    let mut seen = BTreeMap::new();
    let containers =
        std::iter::once(None).chain(reports.iter().map(|r| Some(r.container.as_str())));
    for container in containers {
        for c in &proxy.rules_for(container).credentials.credentials {
            let state = if values.contains_key(&c.value_key) {
                "present"
            } else if c.method == crate::credentials::Method::SigV4
                && c.source.contains("AWS identity")
            {
                "identity"
            } else {
                "missing"
            };
            seen.entry(c.name.clone()).or_insert(state);
        }
    }
    seen.into_iter()
        .map(|(name, state)| serde_json::json!({"name": name, "value": state}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(jails: &Jails, name: &str, code: Option<i32>) {
        let session = jails.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        jails.update(name, session, true, |e| e.state = JailState::Connected);
        jails.update(name, session, false, |e| {
            match code {
                Some(c) => {
                    e.state = JailState::Exited;
                    e.exit_code = Some(c);
                }
                None => e.state = JailState::Lost,
            }
            e.ended_once = true;
        });
    }

    #[test]
    fn exit_conditions_follow_the_restart_policy() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let never = Jails::new(ExitWhen::Never, names.clone(), None);
        end(&never, "a", Some(0));
        end(&never, "b", Some(0));
        assert!(!*never.done.borrow());

        let exited = Jails::new(ExitWhen::AllExited, names.clone(), None);
        end(&exited, "a", Some(3));
        assert!(!*exited.done.borrow());
        end(&exited, "other", Some(0));
        assert!(!*exited.done.borrow(), "only the listed containers count");
        end(&exited, "b", None);
        assert!(*exited.done.borrow(), "a lost container has ended too");

        let succeeded = Jails::new(ExitWhen::AllSucceeded, names, None);
        end(&succeeded, "a", Some(0));
        end(&succeeded, "b", Some(1));
        assert!(!*succeeded.done.borrow());
        end(&succeeded, "b", Some(0));
        assert!(*succeeded.done.borrow());

        assert_eq!("all-exited".parse(), Ok(ExitWhen::AllExited));
        assert!(
            "sometimes"
                .parse::<ExitWhen>()
                .unwrap_err()
                .contains("all-succeeded")
        );
    }

    #[test]
    fn states_survive_a_restart_and_unclaimed_jails_expire() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(STATE_FILE);
        let names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let before = Jails::new(ExitWhen::AllExited, names.clone(), Some(file.clone()));
        end(&before, "a", Some(0));
        before.update("b", 98, true, |e| e.state = JailState::Connected);
        before.update("c", 99, true, |e| e.state = JailState::Connected);
        let after = Jails::new(ExitWhen::AllExited, names, Some(file));
        assert!(after.restore());
        assert!(!*after.done.borrow(), "b and c may still reconnect");
        // c reconnects to the new sidecar and is still running; b never comes back.
        after.update("c", 1, true, |e| e.state = JailState::Connected);
        after.expire_unclaimed();
        assert!(!*after.done.borrow(), "c runs");
        {
            let entries = after.lock();
            assert_eq!(entries["a"].exit_code, Some(0));
            assert_eq!(entries["b"].state, JailState::Lost);
            assert_eq!(entries["c"].state, JailState::Connected);
        }
        after.update("c", 1, false, |e| {
            e.state = JailState::Exited;
            e.ended_once = true;
        });
        assert!(*after.done.borrow());
    }

    #[test]
    fn an_older_session_does_not_override_a_newer_one() {
        let jails = Jails::new(ExitWhen::AllExited, vec!["a".into()], None);
        jails.update("a", 1, true, |e| e.state = JailState::Connected);
        jails.update("a", 2, true, |e| e.state = JailState::Connected);
        jails.update("a", 1, false, |e| {
            e.state = JailState::Lost;
            e.ended_once = true;
        });
        assert!(!*jails.done.borrow());
        let entries = jails.entries.lock().unwrap();
        assert_eq!(entries["a"].state, JailState::Connected);
    }
}
