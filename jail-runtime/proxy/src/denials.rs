//! What the proxy denied (or would have, in Audit mode), counted by destination: served in the
//! sidecar's `/status` (`SidecarStatus::denied`), from which the operator keeps each policy's
//! `status.deniedDestinations` and `boundary suggest --from-status` writes the missing rules.
//!
//! Fed by every audit entry as it is written, so it sees exactly what the trail records. Bounded:
//! past [`MAX_SIDECAR_DENIED`] destinations new ones are only counted in `denied_uncounted`, so a
//! hostile agent spraying random hosts cannot grow the sidecar's memory or its status answer.

use std::collections::BTreeMap;
use std::sync::Mutex;

use boundary_api::enforcement::{DeniedDestination, MAX_SIDECAR_DENIED, path_prefix};

use crate::audit::{Decision, DeniedBy, Record};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    container: String,
    host: String,
    port: u16,
    method: Option<String>,
    path_prefix: Option<String>,
    decision: Decision,
    denied_by: Option<DeniedBy>,
}

#[derive(Debug)]
struct Tally {
    count: i64,
    first_seen: String,
    last_seen: String,
}

#[derive(Debug, Default)]
struct Inner {
    by_destination: BTreeMap<Key, Tally>,
    uncounted: u64,
}

/// The counts; shared by every connection of the proxy.
#[derive(Debug, Default)]
pub struct Denials {
    inner: Mutex<Inner>,
}

impl Denials {
    /// Counts `record` when it was denied or would have been.
    pub fn note(&self, record: &Record) {
        if record.decision == Decision::Allow {
            return;
        }
        let key = Key {
            container: record.container.clone().unwrap_or_default(),
            host: record.host.clone(),
            port: record.port,
            method: record.method.clone(),
            path_prefix: record
                .method
                .as_ref()
                .map(|_| path_prefix(record.path.as_deref().unwrap_or("/"))),
            decision: record.decision,
            denied_by: record.denied_by,
        };
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = inner.by_destination.len() >= MAX_SIDECAR_DENIED;
        match inner.by_destination.get_mut(&key) {
            Some(tally) => {
                tally.count = tally.count.saturating_add(1);
                tally.last_seen.clone_from(&record.time);
            }
            None if full => inner.uncounted = inner.uncounted.saturating_add(1),
            None => {
                inner.by_destination.insert(
                    key,
                    Tally {
                        count: 1,
                        first_seen: record.time.clone(),
                        last_seen: record.time.clone(),
                    },
                );
            }
        }
    }

    /// The counts as the status reports them (sorted by destination), and the denials of
    /// destinations past the limit.
    pub fn report(&self) -> (Vec<DeniedDestination>, u64) {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let denied = inner
            .by_destination
            .iter()
            .map(|(key, tally)| DeniedDestination {
                container: key.container.clone(),
                host: key.host.clone(),
                port: i32::from(key.port),
                method: key.method.clone(),
                path_prefix: key.path_prefix.clone(),
                decision: wire(&key.decision),
                denied_by: key.denied_by.as_ref().map(wire),
                count: tally.count,
                first_seen: tally.first_seen.clone(),
                last_seen: tally.last_seen.clone(),
            })
            .collect();
        (denied, inner.uncounted)
    }
}

/// The audit trail's spelling of a value (`would-deny`, `deny-rule`, ...).
fn wire(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boundary_api::Mode;
    use std::sync::Arc;

    fn record(
        host: &str,
        method: Option<&str>,
        path: &str,
        decision: Decision,
        time: &str,
    ) -> Record {
        Record {
            time: time.into(),
            session: "s".into(),
            identity: Arc::default(),
            container: Some("agent".into()),
            scheme: if method.is_some() { "https" } else { "tcp" },
            method: method.map(str::to_owned),
            host: host.into(),
            port: 443,
            path: method.map(|_| path.to_owned()),
            decision,
            rule: None,
            denied_by: None,
            reason: None,
            credential: None,
            leak: None,
            mode: Mode::Enforce,
            tier: None,
            isolation: None,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn denials_are_counted_by_destination_and_path_prefix_and_allows_are_not() {
        let denials = Denials::default();
        denials.note(&record("a.test", Some("GET"), "/x", Decision::Allow, "t0"));
        denials.note(&record(
            "paste.test",
            Some("POST"),
            "/api/v1/paste?k=secret",
            Decision::Deny,
            "t1",
        ));
        denials.note(&record(
            "paste.test",
            Some("POST"),
            "/api/v1/other",
            Decision::Deny,
            "t2",
        ));
        let mut guarded = record("meta.test", None, "", Decision::Deny, "t3");
        guarded.denied_by = Some(DeniedBy::PrivateAddressGuard);
        denials.note(&guarded);
        denials.note(&record(
            "b.test",
            Some("GET"),
            "/",
            Decision::WouldDeny,
            "t4",
        ));
        let (denied, uncounted) = denials.report();
        assert_eq!(uncounted, 0);
        let shown: Vec<_> = denied
            .iter()
            .map(|d| {
                (
                    d.host.as_str(),
                    d.method.as_deref(),
                    d.path_prefix.as_deref(),
                    d.decision.as_str(),
                    d.denied_by.as_deref(),
                    d.count,
                    d.first_seen.as_str(),
                    d.last_seen.as_str(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "b.test",
                    Some("GET"),
                    Some("/"),
                    "would-deny",
                    None,
                    1,
                    "t4",
                    "t4"
                ),
                (
                    "meta.test",
                    None,
                    None,
                    "deny",
                    Some("private-address-guard"),
                    1,
                    "t3",
                    "t3"
                ),
                (
                    "paste.test",
                    Some("POST"),
                    Some("/api/v1"),
                    "deny",
                    None,
                    2,
                    "t1",
                    "t2"
                ),
            ]
        );
        assert!(denied.iter().all(|d| d.container == "agent"));
    }

    #[test]
    fn destinations_past_the_limit_are_only_counted() {
        let denials = Denials::default();
        for n in 0..MAX_SIDECAR_DENIED + 50 {
            denials.note(&record(
                &format!("h{n}.test"),
                None,
                "",
                Decision::Deny,
                "t",
            ));
        }
        // A destination already kept still counts in full.
        denials.note(&record("h0.test", None, "", Decision::Deny, "t9"));
        let (denied, uncounted) = denials.report();
        assert_eq!(denied.len(), MAX_SIDECAR_DENIED);
        assert_eq!(uncounted, 50);
        let h0 = denied.iter().find(|d| d.host == "h0.test").unwrap();
        assert_eq!((h0.count, h0.last_seen.as_str()), (2, "t9"));
    }
}
