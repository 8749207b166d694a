//! What a pod's `boundary sidecar` reports about its enforcement, on
//! `GET http://<pod IP>:`[`ports::SIDECAR_METRICS`](crate::contract::ports::SIDECAR_METRICS)[`STATUS_PATH`](crate::contract::SIDECAR_STATUS_PATH):
//! the hash of the policy file it enforces and the jails (`boundary run`) connected to it. The
//! operator reads it to tell pods the webhook jailed from pods proven to enforce.
//!
//! Free of Kubernetes types, so the sidecar (built without the `kube` feature) serves the same
//! types the operator reads. Unknown fields are ignored and unknown jail states read as
//! [`JailState::Unknown`], so either side can be newer.

use serde::{Deserialize, Serialize};

/// The whole answer of the status endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    /// SHA-256 (hex) of the compiled policy file the proxy enforces: the same value the operator
    /// writes to `BoundaryPolicy.status.policyHash` when it publishes that file. Empty while no
    /// file is loaded.
    #[serde(default)]
    pub policy_hash: String,
    /// Whether a policy file is loaded (without one the proxy denies everything).
    #[serde(default)]
    pub policy_loaded: bool,
    /// Every jail that connected to this sidecar since it started (one entry per run of a
    /// container; a restarted container adds a new one).
    #[serde(default)]
    pub jails: Vec<JailReport>,
    /// Whether the mounted policy file is there now: `missing` when it vanished (its ConfigMap
    /// was deleted) and the proxy keeps enforcing the last one it loaded (`policyHash`). Absent
    /// from older sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PolicyFileState>,
    /// The proxy's session id, new at every start of the sidecar: the counts of `denied` start
    /// again from zero with a new session. Empty from older sidecars.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// What was denied (or would have been, in Audit mode) since the sidecar started, by
    /// destination: at most [`MAX_SIDECAR_DENIED`] destinations, the rest counted in
    /// `deniedUncounted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<DeniedDestination>,
    /// Denials of destinations beyond the first [`MAX_SIDECAR_DENIED`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub denied_uncounted: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Destinations a sidecar keeps counts of, at most.
pub const MAX_SIDECAR_DENIED: usize = 200;

/// Requests or connections to one destination that were denied (or would have been), counted.
/// The sidecar reports it per container in its status; the operator sums it per policy into
/// `BoundaryPolicy.status.deniedDestinations` (without the container), where `boundary suggest
/// --from-status` reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeniedDestination {
    /// The jailed container (sidecar reports only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// The destination host (a name, or an address when the client named none).
    pub host: String,
    /// The destination port.
    #[cfg_attr(feature = "kube", schemars(range(min = 0, max = 65535)))]
    pub port: i32,
    /// The HTTP method; absent for connections the proxy did not look into (TCP, TLS
    /// passthrough, a refused CONNECT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The first two segments of the request path (`/repos/acme` for
    /// `/repos/acme/app/issues`): enough to write a rule, short enough to keep; no query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `deny` (refused) or `would-deny` (let through in Audit mode).
    pub decision: String,
    /// `deny-rule` when a deny rule refused it, `private-address-guard` when the destination's
    /// address did; absent when no allow rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// How many requests or connections.
    pub count: i64,
    /// The first one (RFC 3339).
    pub first_seen: String,
    /// The last one (RFC 3339).
    pub last_seen: String,
}

impl DeniedDestination {
    /// What identifies the destination (everything but the container, the count and the
    /// times).
    pub fn key(&self) -> DeniedKey {
        DeniedKey {
            host: self.host.clone(),
            port: self.port,
            method: self.method.clone(),
            path_prefix: self.path_prefix.clone(),
            decision: self.decision.clone(),
            denied_by: self.denied_by.clone(),
        }
    }
}

/// The identity of a [`DeniedDestination`] without its container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeniedKey {
    /// Host.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Method.
    pub method: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// `deny` or `would-deny`.
    pub decision: String,
    /// What refused it.
    pub denied_by: Option<String>,
}

/// The first two segments of `path` (without its query): what a denial summary keeps of a
/// request path.
pub fn path_prefix(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut prefix = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()).take(2) {
        prefix.push('/');
        prefix.push_str(segment);
    }
    if prefix.is_empty() {
        prefix.push('/');
    }
    prefix
}

/// Whether the sidecar's policy file exists ([`SidecarStatus::policy_file`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyFileState {
    /// The file is there (whether or not its content was accepted).
    Present,
    /// The file is gone; the last policy loaded stays in force.
    Missing,
    /// A value this build does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

/// One jail (one `boundary run` in a jailed container).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JailReport {
    /// The jailed container's name (`BOUNDARY_CONTAINER_NAME`).
    pub container: String,
    /// The tier the jail runs with.
    #[serde(default)]
    pub tier: String,
    /// Where the jail is.
    pub state: JailState,
    /// The jailed command's exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the jail failed or was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the jail entered this state (RFC 3339).
    #[serde(default)]
    pub since: String,
}

/// The state of one jail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JailState {
    /// The jail is up and its traffic goes through this sidecar.
    Connected,
    /// The jailed command ended (see `exitCode`).
    Exited,
    /// The jail could not be set up (see `error`); the command never ran jailed.
    Failed,
    /// The connection to the jail ended without an exit report (the container was killed).
    Lost,
    /// A state this build does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl JailState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JailState::Connected => "connected",
            JailState::Exited => "exited",
            JailState::Failed => "failed",
            JailState::Lost => "lost",
            JailState::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_shape_round_trips_and_newer_fields_are_tolerated() {
        let wire = json!({
            "policyHash": "ab12", "policyLoaded": true,
            "jails": [
                {"container": "agent", "tier": "userns", "state": "connected", "since": "2026-01-01T00:00:00Z"},
                {"container": "agent", "tier": "userns", "state": "exited", "exitCode": 3, "since": "2025-12-31T23:00:00Z"},
                {"container": "tool", "tier": "userns", "state": "failed", "error": "no userns", "since": "x"},
                {"container": "new", "state": "hibernating", "since": "x", "futureField": 1}
            ],
            "futureTopLevel": {"a": 1}
        });
        let status: SidecarStatus = serde_json::from_value(wire).unwrap();
        assert_eq!(status.policy_hash, "ab12");
        assert!(status.policy_loaded);
        let jail_states: Vec<JailState> = status.jails.iter().map(|j| j.state).collect();
        assert_eq!(
            jail_states,
            [
                JailState::Connected,
                JailState::Exited,
                JailState::Failed,
                JailState::Unknown
            ]
        );
        assert_eq!(status.jails[1].exit_code, Some(3));
        assert_eq!(status.jails[2].error.as_deref(), Some("no userns"));
        assert_eq!(status.policy_file, None, "older sidecars do not say");
        let again: SidecarStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(again, status);
        for (wire, state) in [
            ("missing", PolicyFileState::Missing),
            ("present", PolicyFileState::Present),
            ("evaporated", PolicyFileState::Unknown),
        ] {
            let status: SidecarStatus =
                serde_json::from_value(json!({"policyHash": "ab12", "policyFile": wire})).unwrap();
            assert_eq!(status.policy_file, Some(state));
        }
        assert!(status.denied.is_empty() && status.session.is_empty());
        let text = serde_json::to_value(&status.jails[0]).unwrap();
        assert_eq!(
            text,
            json!({"container": "agent", "tier": "userns", "state": "connected", "since": "2026-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn path_prefixes_keep_two_segments_and_never_the_query() {
        for (path, prefix) in [
            ("/repos/acme/app/issues", "/repos/acme"),
            ("/repos", "/repos"),
            ("/", "/"),
            ("", "/"),
            ("/v1/messages?key=secret", "/v1/messages"),
            ("/a?x=/b/c", "/a"),
            ("//a//b/c", "/a/b"),
        ] {
            assert_eq!(path_prefix(path), prefix, "{path}");
        }
    }

    #[test]
    fn denied_destinations_round_trip_in_the_status() {
        let wire = json!({
            "policyHash": "ab", "session": "s1", "deniedUncounted": 4,
            "denied": [{"container": "agent", "host": "pastebin.com", "port": 443, "method": "POST",
                        "pathPrefix": "/api", "decision": "deny", "count": 3,
                        "firstSeen": "2026-01-01T00:00:00Z", "lastSeen": "2026-01-01T00:01:00Z"}]
        });
        let status: SidecarStatus = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(status.denied[0].count, 3);
        assert_eq!(status.denied[0].key().host, "pastebin.com");
        assert_eq!(status.denied_uncounted, 4);
        assert_eq!(
            serde_json::to_value(&status).unwrap()["denied"],
            wire["denied"]
        );
    }
}
