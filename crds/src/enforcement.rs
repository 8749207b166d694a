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
        let text = serde_json::to_value(&status.jails[0]).unwrap();
        assert_eq!(
            text,
            json!({"container": "agent", "tier": "userns", "state": "connected", "since": "2026-01-01T00:00:00Z"})
        );
    }
}
