//! The parts of a `BoundaryPolicy` that do not depend on Kubernetes types: the enforcement mode,
//! structured allow rules and the jail settings. The proxy and the rule engine use them too.
//!
//! The doc comments on these types become the CRD's `kubectl explain` text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tier::Tier;

/// What the proxy does with a request no rule allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum Mode {
    /// Deny it (HTTP 403, or the connection is closed) and record the denial.
    #[default]
    Enforce,
    /// Let it through but record that it would have been denied. For rolling out a policy.
    Audit,
}

impl Mode {
    /// The name used in the API and in audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "Enforce",
            Mode::Audit => "Audit",
        }
    }

    /// Combines the modes of several policies selecting one pod: `Enforce` wins.
    #[must_use]
    pub fn strictest(self, other: Mode) -> Mode {
        if self == Mode::Enforce || other == Mode::Enforce {
            Mode::Enforce
        } else {
            Mode::Audit
        }
    }
}

/// Whether the proxy terminates TLS for a rule's domains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum TlsMode {
    /// Terminate TLS with the proxy's CA so that methods and paths can be checked.
    #[default]
    Intercept,
    /// Do not intercept (for certificate-pinned clients): the connection is allowed by the TLS
    /// SNI name and port only, and audited as a TCP connection. `methods` and `paths` must be
    /// empty.
    Passthrough,
}

/// A structured HTTP(S) allow rule. A request is allowed when its host matches one of `domains`
/// and, where given, its method, path and port match too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    /// Host names this rule allows. `example.com` matches exactly (case-insensitive, trailing
    /// dot ignored); `*.example.com` matches subdomains only, not `example.com`; a `*` label
    /// elsewhere matches exactly one label.
    #[cfg_attr(feature = "kube", schemars(length(min = 1), inner(length(min = 1))))]
    pub domains: Vec<String>,
    /// HTTP methods (e.g. GET, POST). Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(inner(length(min = 1))))]
    pub methods: Vec<String>,
    /// URL paths. Matched after percent-decoding and removing dot-segments. A `*` segment
    /// matches one segment; a trailing `*` matches one or more. Empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", schemars(inner(length(min = 1))))]
    pub paths: Vec<String>,
    /// Destination ports. Empty: any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// `Intercept` (default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: TlsMode,
    /// Request headers that must be present and match: header name (case-insensitive) to a
    /// glob of its value (`*` matches any run of characters, the rest case-sensitively). Every
    /// listed header must match; a header sent several times must match every time (in a deny
    /// rule: any time). Empty: headers are not checked. Not allowed with `tls: Passthrough`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must be present and match: parameter name to a glob of its
    /// percent-decoded value (`+` is a space; `*` matches any run of characters). Every listed
    /// parameter must match; one sent several times (or in another letter case) must match
    /// every time (in a deny rule: any time). A query that cannot be decoded never matches an
    /// allow rule and always matches a deny rule. Empty: the query is not checked. Not allowed
    /// with `tls: Passthrough`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
}

/// A name the proxy resolves to fixed addresses instead of asking DNS (like `--resolve`): the
/// operator's word that these addresses are the name's, so the private-address guard lets the
/// proxy connect to them for this name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResolvePin {
    /// The host name (exact, no wildcards).
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub host: String,
    /// Its IPv4 or IPv6 addresses (at least one).
    #[cfg_attr(feature = "kube", schemars(length(min = 1), inner(length(min = 1))))]
    pub addresses: Vec<String>,
}

/// An allow rule for plain TCP (ssh, git, databases): connections to `domain` on one of `ports`
/// are relayed without looking inside. The domain is matched by the DNS name the jail's resolver
/// handed out for the address the client connects to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TcpRule {
    /// Host name, with the same wildcards as HTTP rules (`*.example.com`).
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub domain: String,
    /// Destination ports (at least one).
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub ports: Vec<Port>,
}

/// Pod-local TCP ports the jailed containers may connect to: servers on the pod's loopback
/// (`127.0.0.1` or `::1`), i.e. sidecars of the same pod such as a Cloud SQL or database proxy,
/// Docker-in-Docker (2375/2376), MCP servers or Argo's sidecars. Connections are relayed as they
/// are (no TLS interception) and audited as `pod-local`. Other loopback ports stay the jail's own:
/// a server the agent itself runs on `127.0.0.1` keeps working and is never checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PodLocalRule {
    /// Ports on the pod's loopback (at least one). Not allowed: the ports the jail and the
    /// injected sidecar use themselves (2, 53, 15080, 15090).
    #[cfg_attr(feature = "kube", schemars(length(min = 1)))]
    pub ports: Vec<Port>,
    /// What listens there (e.g. `cloud-sql-proxy`), for people reading the policy and the
    /// audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PodLocalRule {
    /// The ports as numbers.
    pub fn port_numbers(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().map(|p| p.get())
    }
}

/// The value of `BOUNDARY_POD_LOCAL_PORTS` (`contract::env::POD_LOCAL_PORTS`) for `ports`:
/// sorted, each once, comma-separated, without the ports that can never be pod-local
/// (`contract::ports::NOT_POD_LOCAL`). For the webhook: the selecting policies' `podLocal` ports
/// and the ports the pod's *other* containers declare (the jailed container's own servers run
/// inside its jail, not on the pod's loopback).
pub fn pod_local_ports_value(ports: impl IntoIterator<Item = u16>) -> String {
    let mut ports: Vec<u16> = ports
        .into_iter()
        .filter(|p| *p != 0 && !crate::contract::ports::NOT_POD_LOCAL.contains(p))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A TCP port, 1 to 65535. In the API it is an `int32` with that range (Kubernetes API
/// conventions avoid unsigned types), so the apiserver rejects out-of-range values itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    /// `Some` for 1 to 65535.
    pub const fn new(port: u16) -> Option<Port> {
        if port == 0 { None } else { Some(Port(port)) }
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u16::deserialize(deserializer)?;
        Port::new(n)
            .ok_or_else(|| serde::de::Error::custom("port 0 is not a valid port (1 to 65535)"))
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(feature = "kube")]
impl schemars::JsonSchema for Port {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Port".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "format": "int32",
            "minimum": 1,
            "maximum": 65535
        })
    }
}

/// Which jail implementation is injected into the selected pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JailRuntime {
    /// This project's jail (`boundary run`): least privilege per node, chosen automatically.
    #[default]
    Builtin,
    /// Coder's own `boundary` binary, which the image provides: the webhook only sets the
    /// securityContext and env that Coder's published requirements name for the node's OS.
    CoderBoundary,
}

/// How the selected pods are jailed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct JailSpec {
    /// `builtin` (default) or `coder-boundary`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub runtime: JailRuntime,
    /// Tiers this policy permits (`userns`, `privileged-netns`, `landlock`). Empty: all of them.
    /// When several policies select a pod, only tiers every one of them permits are used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tiers: Vec<Tier>,
    /// When the pod could land on nodes that do not support a common tier, allow the webhook to
    /// add a required node affinity that keeps it on nodes supporting the best tier. Default:
    /// false (deny in Enforce mode, admit with a warning in Audit mode).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_node_pinning: bool,
    /// Run the container's whole command inside the jail (`boundary run -- <command>`). A
    /// container without `command` gets its image's entrypoint (and, without `args`, its cmd),
    /// read from the registry by the webhook. Default: false (the agent runs `boundary run`
    /// itself).
    #[serde(default, skip_serializing_if = "is_default")]
    pub wrap_command: bool,
}

impl JailSpec {
    /// Whether this policy permits `tier`.
    pub fn permits(&self, tier: Tier) -> bool {
        self.allowed_tiers.is_empty() || self.allowed_tiers.contains(&tier)
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforce_beats_audit() {
        assert_eq!(Mode::Audit.strictest(Mode::Audit), Mode::Audit);
        assert_eq!(Mode::Audit.strictest(Mode::Enforce), Mode::Enforce);
        assert_eq!(Mode::Enforce.strictest(Mode::Audit), Mode::Enforce);
    }

    #[test]
    fn empty_allowed_tiers_permit_every_tier() {
        let any = JailSpec::default();
        assert!(Tier::ALL.iter().all(|t| any.permits(*t)));
        let only = JailSpec {
            allowed_tiers: vec![Tier::Userns],
            ..JailSpec::default()
        };
        assert!(only.permits(Tier::Userns));
        assert!(!only.permits(Tier::Landlock));
    }

    #[test]
    fn the_pod_local_ports_value_is_sorted_unique_and_leaves_out_reserved_ports() {
        let rule: PodLocalRule = serde_json::from_str(r#"{"ports": [5432, 2375, 5432]}"#).unwrap();
        let value = pod_local_ports_value(
            rule.port_numbers()
                .chain([8080, 53, 2, 15080, 15090, 0, 2375]),
        );
        assert_eq!(value, "2375,5432,8080");
        assert_eq!(pod_local_ports_value([]), "");
    }

    #[test]
    fn defaults_are_omitted_when_serialized() {
        let rule = HttpRule {
            domains: vec!["example.com".into()],
            ..HttpRule::default()
        };
        assert_eq!(
            serde_json::to_value(&rule).unwrap(),
            serde_json::json!({"domains": ["example.com"]})
        );
        assert_eq!(
            serde_json::to_value(JailSpec::default()).unwrap(),
            serde_json::json!({})
        );
        let ports: Vec<Port> = serde_json::from_str("[22, 443, 65535]").unwrap();
        assert_eq!(
            ports.iter().map(|p| p.get()).collect::<Vec<_>>(),
            [22, 443, 65535]
        );
        assert!(serde_json::from_str::<Port>("0").is_err());
        assert!(serde_json::from_str::<Port>("65536").is_err());
        let runtime: JailRuntime = serde_json::from_str("\"coder-boundary\"").unwrap();
        assert_eq!(runtime, JailRuntime::CoderBoundary);
    }
}
