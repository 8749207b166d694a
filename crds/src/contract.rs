//! The contract between the webhook, the operator, the node agent and the jail-runtime: every
//! label, annotation, env var, volume, path, container and object name that more than one of them
//! relies on. Defined here once; nothing else spells these strings.
//!
//! Each group lists its names in `ALL` so tests can check that they are valid Kubernetes names and
//! unique, and so a reviewer sees the whole surface at a glance.

/// Defines documented string constants and an `ALL` slice holding every one of them.
macro_rules! names {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)+) => {
        $($(#[$doc])* pub const $name: &str = $value;)+
        /// Every name of this group, for validation and documentation.
        pub const ALL: &[&str] = &[$($name),+];
    };
}

/// The API group of the `BoundaryPolicy` CRD and the prefix of every label and annotation.
pub const GROUP: &str = "agentboundary.dev";
/// The served and stored version of the CRD.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of `BoundaryPolicy` objects.
pub const API_VERSION: &str = "agentboundary.dev/v1alpha1";

/// Labels on namespaces, pods and the objects the operator creates.
pub mod labels {
    names! {
        /// Opt-in and opt-out of injection, on a namespace or a pod: [`super::INJECT_ENABLED`] or
        /// [`super::INJECT_DISABLED`]. A pod's label overrides its namespace's.
        INJECT = "agentboundary.dev/inject";
        /// Standard label naming the controller of objects the operator creates.
        MANAGED_BY = "app.kubernetes.io/managed-by";
        /// Standard label naming the application every component belongs to.
        PART_OF = "app.kubernetes.io/part-of";
        /// Standard label naming the component (webhook, operator, node-agent, policy).
        COMPONENT = "app.kubernetes.io/component";
        /// On a pod the webhook jailed: its tier (or the Coder runtime's row). The operator
        /// watches only pods with this label to count them in policy status.
        JAILED = "agentboundary.dev/jailed";
    }
}

/// Value of [`labels::INJECT`] that opts a namespace or pod in.
pub const INJECT_ENABLED: &str = "enabled";
/// Value of [`labels::INJECT`] that opts a pod (or a whole namespace) out.
pub const INJECT_DISABLED: &str = "disabled";
/// Value of [`labels::INJECT`] that makes jailing required in a namespace: every pod is jailed
/// or refused, the pod-level opt-out is ignored, and the webhook's failure refuses pods.
pub const INJECT_REQUIRED: &str = "required";
/// Value of [`labels::MANAGED_BY`] on objects the operator creates.
pub const MANAGED_BY_OPERATOR: &str = "agent-boundary-operator";
/// Value of [`labels::PART_OF`].
pub const PART_OF: &str = "agent-boundary";

/// Node labels written by the operator (from classification and node-agent probes) and read by
/// the webhook's planner. Nothing else writes them.
pub mod node_labels {
    names! {
        /// The OS family: one of [`crate::contract::os`].
        OS = "agentboundary.dev/os";
        /// `true` when unprivileged user namespaces work on the node, `false` when they do not.
        USERNS = "agentboundary.dev/userns";
        /// The Landlock ABI version the kernel offers (`0` when none).
        LANDLOCK_ABI = "agentboundary.dev/landlock-abi";
        /// Name of the Localhost seccomp profile the node agent installed (absent when none).
        SECCOMP_PROFILE = "agentboundary.dev/seccomp-profile";
        /// The jail tiers that work on the node, joined by `.` (label values cannot hold `,`),
        /// e.g. `userns.landlock`.
        TIERS = "agentboundary.dev/tiers";
        /// `true` once the node agent's probe facts are merged; without it the labels come from
        /// classification alone.
        PROBED = "agentboundary.dev/probed";
        /// `true` on nodes where the `userns` tier works (one label per tier, because a
        /// node-affinity term cannot test membership in [`TIERS`]). The webhook pins pods with
        /// these.
        TIER_USERNS = "tier.agentboundary.dev/userns";
        /// `true` on nodes where the `privileged-netns` tier works.
        TIER_PRIVILEGED_NETNS = "tier.agentboundary.dev/privileged-netns";
        /// `true` on nodes where the `landlock` tier works.
        TIER_LANDLOCK = "tier.agentboundary.dev/landlock";
    }

    /// The per-tier label of `tier` (value `true` where it works).
    pub const fn for_tier(tier: crate::Tier) -> &'static str {
        match tier {
            crate::Tier::Userns => TIER_USERNS,
            crate::Tier::PrivilegedNetns => TIER_PRIVILEGED_NETNS,
            crate::Tier::Landlock => TIER_LANDLOCK,
        }
    }
}

/// OS family values of [`node_labels::OS`].
pub mod os {
    names! {
        /// Amazon Linux 2.
        AMAZON_LINUX_2 = "amazon-linux-2";
        /// Amazon Linux 2023.
        AMAZON_LINUX_2023 = "amazon-linux-2023";
        /// Bottlerocket (user namespaces off by default, SELinux enforcing).
        BOTTLEROCKET = "bottlerocket";
        /// Ubuntu.
        UBUNTU = "ubuntu";
        /// An EKS Fargate micro-VM.
        FARGATE = "fargate";
        /// A Windows node: never injected.
        WINDOWS = "windows";
        /// Any other Linux.
        OTHER_LINUX = "other-linux";
        /// Not classified yet.
        UNKNOWN = "unknown";
    }
}

/// Annotations written by the webhook and the node agent (on pods), by the operator (on
/// namespaces) and by policy authors (on policies).
pub mod annotations {
    names! {
        /// JSON record of what the webhook injected; makes re-invocation idempotent.
        STATUS = "agentboundary.dev/status";
        /// The jail tier the webhook chose for the pod.
        TIER = "agentboundary.dev/tier";
        /// The `BoundaryPolicy` objects (comma-separated names) that select the pod.
        POLICY = "agentboundary.dev/policy";
        /// On a node agent's own Pod: the JSON probe report of its node.
        PROBE_REPORT = "agentboundary.dev/probe-report";
        /// On a pod, set by whoever templates it: the containers to jail (comma-separated
        /// names), for policies that do not name containers themselves.
        CONTAINERS = "agentboundary.dev/containers";
        /// On a namespace, written by the operator while a `ClusterBoundaryPolicy` with
        /// `requireJailing` sets its [`super::labels::INJECT`] label to `required`: the label's
        /// value before (`enabled`, `disabled`), put back when no cluster policy requires
        /// jailing there any more.
        INJECT_BEFORE_REQUIRED = "agentboundary.dev/inject-before-required";
        /// On a `BoundaryPolicy` or `ClusterBoundaryPolicy`, set by its author: lint codes
        /// (comma-separated, e.g. `publish-anywhere,broad-write`) whose warnings are silenced
        /// for this policy ([`crate::lint`]).
        LINT_IGNORE = "agentboundary.dev/lint-ignore";
        /// On the project's CRDs, written by the operator that applied them: its release
        /// version. An older operator (a rollback) leaves CRDs of a newer release alone.
        CRD_RELEASE = "agentboundary.dev/release";
    }
}

/// Pod condition types.
pub mod conditions {
    names! {
        /// Set by the operator on a jailed pod that carries it as a readiness gate (the webhook
        /// adds the gate when told to): `True` once the pod's sidecar reports every jailed
        /// container connected and the namespace's current policy loaded, so the pod is not
        /// Ready before its enforcement is confirmed.
        ENFORCED = "agentboundary.dev/enforced";
    }
}

/// Container names the webhook injects.
pub mod containers {
    names! {
        /// The jail-runtime sidecar: the policy proxy (`boundary sidecar`).
        SIDECAR = "boundary";
        /// The init container that copies the `boundary` binary into the shared volume.
        INSTALL = "boundary-install";
    }
}

/// Volume names the webhook injects.
pub mod volumes {
    names! {
        /// emptyDir holding the static `boundary` binary, mounted on the jailed containers' PATH.
        BIN = "boundary-bin";
        /// emptyDir shared by the sidecar and the jailed containers: proxy socket, CA files.
        RUN = "boundary-run";
        /// The compiled-policy ConfigMap, mounted into the sidecar.
        POLICY = "boundary-policy";
        /// Downward-API volume with the pod's labels, mounted into the sidecar (policies select
        /// pods by label, and labels can change while the pod runs).
        PODINFO = "boundary-podinfo";
        /// The namespace's optional ConfigMap of extra upstream CAs
        /// ([`super::objects::UPSTREAM_CA_CONFIGMAP`]), mounted into the sidecar.
        UPSTREAM_CA = "boundary-upstream-ca";
        /// Memory-backed emptyDir mounted into the sidecar only: its proxy CA (key and
        /// certificate), kept for the pod's lifetime so a restarted sidecar presents the CA the
        /// running jails already trust.
        CA = "boundary-ca";
        /// The namespace's credentials Secret ([`super::objects::CREDENTIALS_SECRET`]), mounted
        /// into the sidecar only (optional: pods start without it).
        CREDENTIALS = "boundary-credentials";
    }
}

/// Paths inside containers.
pub mod paths {
    names! {
        /// Mount point of [`super::volumes::BIN`].
        BIN_DIR = "/opt/agent-boundary/bin";
        /// The `boundary` binary inside [`BIN_DIR`].
        BOUNDARY_BIN = "/opt/agent-boundary/bin/boundary";
        /// Mount point of [`super::volumes::RUN`].
        RUN_DIR = "/run/agent-boundary";
        /// The policy proxy's unix socket.
        PROXY_SOCKET = "/run/agent-boundary/proxy.sock";
        /// The proxy's CA certificate (PEM), written by the sidecar.
        CA_CERT = "/run/agent-boundary/ca.crt";
        /// System roots plus the proxy's CA (PEM), bind-mounted over the jail's trust stores.
        TRUST_BUNDLE = "/run/agent-boundary/ca-bundle.crt";
        /// Mount point of [`super::volumes::POLICY`].
        POLICY_DIR = "/etc/agent-boundary/policy";
        /// The compiled policy file the proxy reads (and hot-reloads).
        POLICY_FILE = "/etc/agent-boundary/policy/policy.json";
        /// Mount point of [`super::volumes::PODINFO`].
        PODINFO_DIR = "/etc/agent-boundary/podinfo";
        /// The pod's labels (downward API), read by the sidecar.
        LABELS_FILE = "/etc/agent-boundary/podinfo/labels";
        /// Mount point of [`super::volumes::UPSTREAM_CA`]: every key is a PEM file of CAs the
        /// proxy trusts for upstream servers, besides the public roots.
        UPSTREAM_CA_DIR = "/etc/agent-boundary/upstream-ca";
        /// Where the jailed containers also find `boundary` (a single-file mount): on the `PATH`
        /// of practically every image without touching the image's `PATH`.
        BOUNDARY_ON_PATH = "/usr/local/bin/boundary";
        /// Mount point of [`super::volumes::CA`] in the sidecar (never in a jailed container).
        CA_DIR = "/run/agent-boundary-ca";
        /// Mount point of [`super::volumes::CREDENTIALS`] in the sidecar (never in a jailed
        /// container): one file per credential, named by `credentials::value_key`.
        CREDENTIALS_DIR = "/etc/agent-boundary/credentials";
    }
}

/// Environment variables set by the webhook on injected containers and read by `boundary`.
pub mod env {
    names! {
        /// The pod's name (downward API), recorded in every audit line.
        POD_NAME = "BOUNDARY_POD_NAME";
        /// The pod's namespace (downward API).
        POD_NAMESPACE = "BOUNDARY_POD_NAMESPACE";
        /// The jailed container's name.
        CONTAINER_NAME = "BOUNDARY_CONTAINER_NAME";
        /// `boundary run`'s deny rules (Coder's grammar, one per line): a request or connection
        /// one of them matches is denied whatever allows it (the standalone counterpart of a
        /// `ClusterBoundaryPolicy`'s `spec.deny`).
        DENY = "BOUNDARY_DENY";
        /// The tier the webhook chose; `boundary run` uses it instead of probing.
        TIER = "BOUNDARY_TIER";
        /// Path of the sidecar proxy's unix socket.
        PROXY_SOCKET = "BOUNDARY_PROXY_SOCKET";
        /// Path of the compiled policy file the sidecar proxy reads.
        POLICY_FILE = "BOUNDARY_POLICY_FILE";
        /// The pod's labels file (downward API) the sidecar reads.
        LABELS_FILE = "BOUNDARY_LABELS_FILE";
        /// The sidecar's explicit HTTP proxy address (for landlock-tier containers).
        EXPLICIT_PROXY = "BOUNDARY_EXPLICIT_PROXY";
        /// The explicit proxy port a landlock-tier `boundary run` connects to.
        PROXY_PORT = "BOUNDARY_PROXY_PORT";
        /// Directory of extra upstream CA files the sidecar trusts.
        UPSTREAM_CA_DIR = "BOUNDARY_UPSTREAM_CA_DIR";
        /// The sidecar's `/metrics` and `/healthz` address.
        METRICS_ADDR = "BOUNDARY_METRICS_ADDR";
        /// Pod-local TCP ports (comma-separated) the jail sends to the proxy instead of keeping
        /// them on its own loopback: set on jailed containers to the `spec.podLocal` ports of
        /// the selecting policies and the ports the pod's other containers declare. The proxy
        /// still decides each connection by `spec.podLocal`.
        POD_LOCAL_PORTS = "BOUNDARY_POD_LOCAL_PORTS";
        /// Coder's env var: jail without a user namespace (`true`).
        CODER_NO_USER_NAMESPACE = "BOUNDARY_NO_USER_NAMESPACE";
        /// Coder's env var: the jail type (`nsjail` or `landjail`).
        CODER_JAIL_TYPE = "BOUNDARY_JAIL_TYPE";
        /// Set by `boundary run` for the jailed command only (value: the tier), never on a
        /// container: a `boundary run` that finds it refuses to nest a jail (exit 125).
        JAILED = "BOUNDARY_JAILED";
        /// On the sidecar: the pod's jailed container names, comma-separated (the containers
        /// [`EXIT_WHEN`] waits for).
        JAILED_CONTAINERS = "BOUNDARY_JAILED_CONTAINERS";
        /// On the sidecar: when it exits by itself, one of [`super::exit_when`]. A classic
        /// (non-native) sidecar never ends otherwise, so a Job's pod would never complete.
        EXIT_WHEN = "BOUNDARY_EXIT_WHEN";
        /// On a jailed container: ports (comma-separated) that `boundary run` listens on in the
        /// pod's network namespace and relays into the jail's `127.0.0.1`, for servers in the
        /// jail (probes, Services, port-forward).
        INBOUND_PORTS = "BOUNDARY_INBOUND_PORTS";
        /// On the operator: namespaces (comma-separated) no `ClusterBoundaryPolicy` ever selects,
        /// besides its own and `kube-system` (the chart passes `webhook.excludeNamespaces`).
        EXCLUDED_NAMESPACES = "BOUNDARY_EXCLUDED_NAMESPACES";
        /// On the operator: namespaces (comma-separated) where jailing is required; it labels
        /// them `agentboundary.dev/inject=required`, so the webhook's fail-closed configuration
        /// selects them also before Kubernetes 1.21 (the chart passes `webhook.requiredNamespaces`).
        REQUIRED_NAMESPACES = "BOUNDARY_REQUIRED_NAMESPACES";
        /// On the sidecar: the directory where it keeps its proxy CA across its own restarts
        /// (see [`super::paths::CA_DIR`]). Unset: a new CA at every start.
        CA_DIR = "BOUNDARY_CA_DIR";
        /// On the sidecar: the directory of the credentials' real values
        /// ([`super::paths::CREDENTIALS_DIR`]), re-read when it changes.
        CREDENTIALS_DIR = "BOUNDARY_CREDENTIALS_DIR";
        /// On the sidecar: the pod's placeholder nonce (`credentials::nonce_from`); the jailed
        /// containers' placeholders are made of it, so the sidecar knows every one of them.
        PLACEHOLDER_NONCE = "BOUNDARY_PLACEHOLDER_NONCE";
    }
}

/// Environment variables of the webhook's own flags (the chart sets them; the chart also derives
/// the pod's `terminationGracePeriodSeconds` from the two shutdown settings).
pub mod webhook_env {
    names! {
        /// Seconds reviews are still served after SIGTERM while `/readyz` answers 503.
        SHUTDOWN_DELAY_SECONDS = "BOUNDARY_WEBHOOK_SHUTDOWN_DELAY_SECONDS";
        /// Seconds open requests may take to finish after that delay.
        SHUTDOWN_GRACE_SECONDS = "BOUNDARY_WEBHOOK_SHUTDOWN_GRACE_SECONDS";
        /// HTTPS address of `/mutate`.
        HTTPS_ADDR = "BOUNDARY_WEBHOOK_HTTPS_ADDR";
        /// Plain HTTP address of `/healthz`, `/readyz` and `/metrics`.
        PLAIN_ADDR = "BOUNDARY_WEBHOOK_PLAIN_ADDR";
        /// Serving certificate (PEM).
        CERT_FILE = "BOUNDARY_WEBHOOK_CERT_FILE";
        /// Private key of the serving certificate (PEM).
        KEY_FILE = "BOUNDARY_WEBHOOK_KEY_FILE";
        /// The jail-runtime image injected into pods.
        IMAGE = "BOUNDARY_WEBHOOK_IMAGE";
        /// Pull policy of the injected image.
        IMAGE_PULL_POLICY = "BOUNDARY_WEBHOOK_IMAGE_PULL_POLICY";
        /// CPU request of the injected sidecar.
        SIDECAR_CPU_REQUEST = "BOUNDARY_WEBHOOK_SIDECAR_CPU_REQUEST";
        /// Memory request of the injected sidecar.
        SIDECAR_MEMORY_REQUEST = "BOUNDARY_WEBHOOK_SIDECAR_MEMORY_REQUEST";
        /// Memory limit of the injected sidecar.
        SIDECAR_MEMORY_LIMIT = "BOUNDARY_WEBHOOK_SIDECAR_MEMORY_LIMIT";
        /// Audit format of the injected sidecar (`json` or `ocsf`).
        SIDECAR_AUDIT_FORMAT = "BOUNDARY_WEBHOOK_SIDECAR_AUDIT_FORMAT";
        /// Worker threads of the injected sidecar's proxy.
        SIDECAR_WORKER_THREADS = "BOUNDARY_WEBHOOK_SIDECAR_WORKER_THREADS";
        /// `true`: jailed pods get the readiness gate [`super::conditions::ENFORCED`].
        ENFORCEMENT_READINESS_GATE = "BOUNDARY_WEBHOOK_ENFORCEMENT_READINESS_GATE";
        /// Namespaces (comma-separated) where jailing is required whatever their labels.
        REQUIRED_NAMESPACES = "BOUNDARY_WEBHOOK_REQUIRED_NAMESPACES";
        /// Service accounts (`namespace/name`, comma-separated) whose pods may opt out.
        OPT_OUT_SERVICE_ACCOUNTS = "BOUNDARY_WEBHOOK_OPT_OUT_SERVICE_ACCOUNTS";
        /// Largest `AdmissionReview` body accepted, in bytes.
        MAX_BODY_BYTES = "BOUNDARY_WEBHOOK_MAX_BODY_BYTES";
        /// `true`: read image configs from registries when a plan needs them.
        REGISTRY_LOOKUP = "BOUNDARY_WEBHOOK_REGISTRY_LOOKUP";
        /// `true`: use the pod's and its service account's imagePullSecrets for lookups.
        REGISTRY_PULL_SECRETS = "BOUNDARY_WEBHOOK_REGISTRY_PULL_SECRETS";
        /// Time for all registry lookups of one review, in milliseconds.
        REGISTRY_BUDGET_MS = "BOUNDARY_WEBHOOK_REGISTRY_BUDGET_MS";
        /// Seconds a tag's digest is reused.
        REGISTRY_TAG_TTL_SECONDS = "BOUNDARY_WEBHOOK_REGISTRY_TAG_TTL_SECONDS";
        /// Image configs kept in memory.
        REGISTRY_CONFIG_CACHE_ENTRIES = "BOUNDARY_WEBHOOK_REGISTRY_CONFIG_CACHE_ENTRIES";
        /// Architecture picked from multi-platform images by default.
        REGISTRY_ARCH = "BOUNDARY_WEBHOOK_REGISTRY_ARCH";
        /// `true`: pull from ECR with the webhook's own AWS identity.
        REGISTRY_ECR = "BOUNDARY_WEBHOOK_REGISTRY_ECR";
        /// PEM file of extra CA certificates trusted for registries.
        REGISTRY_CA_FILE = "BOUNDARY_WEBHOOK_REGISTRY_CA_FILE";
        /// Registries (`host[:port]`, comma-separated) spoken to over plain HTTP.
        INSECURE_REGISTRIES = "BOUNDARY_WEBHOOK_INSECURE_REGISTRIES";
    }
}

/// Environment variables of the operator's own flags (the chart sets them). The pod's identity
/// is [`env::POD_NAME`] and [`env::POD_NAMESPACE`], its metrics address [`env::METRICS_ADDR`].
pub mod operator_env {
    names! {
        /// Reconcile the policies of this namespace only.
        WATCH_NAMESPACE = "BOUNDARY_WATCH_NAMESPACE";
        /// Reconcile only the namespaces with these labels (a label selector).
        NAMESPACE_SELECTOR = "BOUNDARY_NAMESPACE_SELECTOR";
        /// Label selector of the nodes to label.
        NODE_SELECTOR = "BOUNDARY_NODE_SELECTOR";
        /// Label selector of the node agent's Pods.
        NODE_AGENT_SELECTOR = "BOUNDARY_NODE_AGENT_SELECTOR";
        /// Namespace of the node agent's Pods (the only ones trusted to report probes).
        NODE_AGENT_NAMESPACE = "BOUNDARY_NODE_AGENT_NAMESPACE";
        /// Seconds before a failed reconcile is retried.
        RETRY_SECONDS = "BOUNDARY_RETRY_SECONDS";
        /// Whether the operator applies its release's CRDs at start (`true`/`false`).
        MANAGE_CRDS = "BOUNDARY_MANAGE_CRDS";
        /// Namespace of the leader-election Lease (unset: no leader election).
        LEASE_NAMESPACE = "BOUNDARY_LEASE_NAMESPACE";
        /// Name of the leader-election Lease.
        LEASE_NAME = "BOUNDARY_LEASE_NAME";
        /// Seconds a Lease holds without renewal.
        LEASE_DURATION_SECONDS = "BOUNDARY_LEASE_DURATION_SECONDS";
        /// Seconds the leader keeps acting without renewing the Lease.
        LEASE_RENEW_DEADLINE_SECONDS = "BOUNDARY_LEASE_RENEW_DEADLINE_SECONDS";
        /// The Secret of the webhook's serving certificate.
        WEBHOOK_SECRET = "BOUNDARY_WEBHOOK_SECRET";
        /// The `MutatingWebhookConfiguration` whose `caBundle` the operator keeps current.
        WEBHOOK_CONFIGURATION = "BOUNDARY_WEBHOOK_CONFIGURATION";
        /// DNS names (comma-separated) of the webhook's serving certificate.
        WEBHOOK_DNS_NAMES = "BOUNDARY_WEBHOOK_DNS_NAMES";
        /// IP addresses (comma-separated) of the webhook's serving certificate.
        WEBHOOK_IP_ADDRESSES = "BOUNDARY_WEBHOOK_IP_ADDRESSES";
        /// Seconds the webhook CA is valid.
        CA_VALIDITY_SECONDS = "BOUNDARY_CA_VALIDITY_SECONDS";
        /// Seconds a serving certificate is valid.
        SERVING_VALIDITY_SECONDS = "BOUNDARY_SERVING_VALIDITY_SECONDS";
        /// Seconds a new CA is published before it signs.
        CA_PROPAGATION_SECONDS = "BOUNDARY_CA_PROPAGATION_SECONDS";
        /// Seconds an old CA stays trusted after the new one signs.
        CA_OVERLAP_SECONDS = "BOUNDARY_CA_OVERLAP_SECONDS";
        /// Seconds between enforcement checks of jailed pods (0: off).
        ENFORCEMENT_INTERVAL_SECONDS = "BOUNDARY_ENFORCEMENT_INTERVAL_SECONDS";
        /// Time for one sidecar's `/status`, in milliseconds.
        ENFORCEMENT_TIMEOUT_MILLIS = "BOUNDARY_ENFORCEMENT_TIMEOUT_MILLIS";
        /// Sidecars asked at once.
        ENFORCEMENT_CONCURRENCY = "BOUNDARY_ENFORCEMENT_CONCURRENCY";
        /// Seconds a pod's sidecar may report an older policy before it counts as not enforcing.
        ENFORCEMENT_STALE_GRACE_SECONDS = "BOUNDARY_ENFORCEMENT_STALE_GRACE_SECONDS";
        /// `boundary-operator uninstall`: label selector of the operator's Pods it waits for.
        UNINSTALL_OPERATOR_SELECTOR = "BOUNDARY_UNINSTALL_OPERATOR_SELECTOR";
        /// `boundary-operator uninstall`: seconds it waits for them to go.
        UNINSTALL_WAIT_SECONDS = "BOUNDARY_UNINSTALL_WAIT_SECONDS";
    }
}

/// Environment variables of `boundary`'s own flags, beside those the webhook sets ([`env`]).
pub mod boundary_env {
    names! {
        /// `boundary run`'s allow rules (Coder's grammar, one per line).
        ALLOW = "BOUNDARY_ALLOW";
        /// `boundary run`'s presets (names, comma-separated or one per line).
        PRESET = "BOUNDARY_PRESET";
        /// Coder-compatible YAML config file of `boundary run`.
        CONFIG = "BOUNDARY_CONFIG";
        /// `BoundaryPolicy` YAML files (comma-separated) whose rules `boundary run` enforces.
        POLICY = "BOUNDARY_POLICY";
        /// `HOST=IP` overrides (comma-separated) of the proxy's resolver.
        RESOLVE = "BOUNDARY_RESOLVE";
        /// Extra upstream CA files (comma-separated).
        UPSTREAM_CA = "BOUNDARY_UPSTREAM_CA";
        /// `ADDR[:PORT]` of the DNS server the proxy asks for upstream names.
        UPSTREAM_DNS = "BOUNDARY_UPSTREAM_DNS";
        /// Directory of `boundary run`'s audit log (Coder's `log_dir`).
        LOG_DIR = "BOUNDARY_LOG_DIR";
        /// File of the audit trail (JSON lines).
        AUDIT_FILE = "BOUNDARY_AUDIT_FILE";
        /// `json` (the project's own lines) or `ocsf` (OCSF 1.3.0 events) for the audit trail.
        AUDIT_FORMAT = "BOUNDARY_AUDIT_FORMAT";
        /// Size (`N`, `NKiB`, `NMiB`, `NGiB`) past which the audit file is rotated.
        AUDIT_MAX_BYTES = "BOUNDARY_AUDIT_MAX_BYTES";
        /// Rotated audit files kept (`FILE.1` .. `FILE.K`).
        AUDIT_KEEP = "BOUNDARY_AUDIT_KEEP";
        /// `true`: no audit trail (Coder's `disable_audit_logs`).
        DISABLE_AUDIT_LOGS = "BOUNDARY_DISABLE_AUDIT_LOGS";
        /// `enforce` or `audit`.
        MODE = "BOUNDARY_MODE";
        /// Seconds an upstream may take to send response headers.
        UPSTREAM_TIMEOUT = "BOUNDARY_UPSTREAM_TIMEOUT";
        /// Loopback ports (comma-separated) `boundary run` allows out of the jail.
        ALLOW_POD_LOCAL = "BOUNDARY_ALLOW_POD_LOCAL";
        /// `boundary run`'s credentials (one `--credential` spec per line): the real value is
        /// read from the supervisor's environment, the jailed command sees a placeholder.
        CREDENTIAL = "BOUNDARY_CREDENTIAL";
        /// Seconds `boundary run` waits for the sidecar's socket and CA at its start.
        SIDECAR_WAIT_SECONDS = "BOUNDARY_SIDECAR_WAIT_SECS";
        /// Threads of `boundary sidecar` that serve connections (default 1; 0: one per CPU).
        WORKER_THREADS = "BOUNDARY_WORKER_THREADS";
        /// Target directory of `boundary install`.
        INSTALL_DIR = "BOUNDARY_INSTALL_DIR";
    }
}

/// Environment variables of other tools `boundary run` honours under their own names.
pub mod coder_env {
    names! {
        /// Coder boundary's explicit proxy port, read when neither `--proxy-port` nor the config
        /// file gives one.
        PROXY_PORT = "PROXY_PORT";
    }
}

/// Environment variables of the JVM that `boundary run` reads (to find a JDK's trust store) or
/// sets in the landlock tier (the jail's Java trust store and the explicit proxy).
pub mod java_env {
    names! {
        /// The JDK's home: its `lib/security/cacerts` gets the jail's Java trust store.
        JAVA_HOME = "JAVA_HOME";
        /// Options every JVM reads at its start.
        JAVA_TOOL_OPTIONS = "JAVA_TOOL_OPTIONS";
    }
}

/// Environment variables of the diagnostics settings every binary shares (`--log-level`,
/// `--log-format`; `boundary-telemetry`).
pub mod log_env {
    names! {
        /// The diagnostics filter: a level (`info`) or tracing `EnvFilter` directives.
        LEVEL = "BOUNDARY_LOG_LEVEL";
        /// `json` (clusters) or `text`.
        FORMAT = "BOUNDARY_LOG_FORMAT";
    }
}

/// Environment variables of the node agent's flags (`boundary-node-agent`, the DaemonSet); the
/// chart sets them. Its own Pod's name and namespace come from `POD_NAME` and `POD_NAMESPACE`
/// (downward API), like the operator's.
pub mod node_agent_env {
    names! {
        /// Seconds between probes (and the longest wait between retries of a failed report).
        PROBE_INTERVAL_SECONDS = "BOUNDARY_PROBE_INTERVAL_SECONDS";
        /// The `boundary` binary whose `boundary probe` the agent runs (the jail-runtime image's,
        /// so the probe is the same build as the sidecars the webhook injects).
        BOUNDARY_BIN = "BOUNDARY_BIN";
        /// The apiserver as `https://HOST:PORT`; unset: in-cluster.
        API_SERVER = "BOUNDARY_API_SERVER";
        /// Bearer token file of the agent's ServiceAccount.
        TOKEN_FILE = "BOUNDARY_TOKEN_FILE";
        /// CA certificates (PEM) of the apiserver.
        CA_FILE = "BOUNDARY_CA_FILE";
        /// Where `user.max_user_namespaces` is 0, the value the agent sets (0: never touched).
        SET_MAX_USER_NAMESPACES = "BOUNDARY_SET_MAX_USER_NAMESPACES";
        /// The sysctl's file (tests point it elsewhere).
        MAX_USER_NAMESPACES_FILE = "BOUNDARY_MAX_USER_NAMESPACES_FILE";
        /// kubelet's seccomp directory (mounted from the host) to install the profile into.
        SECCOMP_DIR = "BOUNDARY_SECCOMP_DIR";
    }
}

/// Values of [`env::EXIT_WHEN`].
pub mod exit_when {
    names! {
        /// Run until SIGTERM (native sidecars, Deployments).
        NEVER = "never";
        /// Exit once every jailed container has ended once, whatever its code (pod
        /// `restartPolicy: Never`).
        ALL_EXITED = "all-exited";
        /// Exit once every jailed container has ended with 0 (pod `restartPolicy: OnFailure`:
        /// the kubelet restarts a failed one, which reconnects).
        ALL_SUCCEEDED = "all-succeeded";
    }
}

/// Names of cluster objects the components create or look up.
pub mod objects {
    names! {
        /// Per-namespace ConfigMap with the compiled policy of all `BoundaryPolicy` objects there.
        POLICY_CONFIGMAP = "agent-boundary-policy";
        /// Key of the compiled policy inside [`POLICY_CONFIGMAP`].
        POLICY_CONFIGMAP_KEY = "policy.json";
        /// Per-namespace Secret the operator writes: the real values of the namespace's
        /// credentials (`spec.credentials[]`), one key per credential
        /// (`credentials::value_key`, a `credentials::CredentialValue` as JSON). Mounted into
        /// sidecars only.
        CREDENTIALS_SECRET = "agent-boundary-credentials";
        /// Optional per-namespace ConfigMap of the administrator's: CAs (PEM, any keys) that
        /// upstream servers' certificates may chain to, e.g. an internal registry's. Read by
        /// sidecars when they start.
        UPSTREAM_CA_CONFIGMAP = "agent-boundary-upstream-ca";
        /// Field manager of the operator's server-side applies.
        OPERATOR_FIELD_MANAGER = "agent-boundary-operator";
        /// Localhost seccomp profile the node agent installs (relative to kubelet's seccomp dir;
        /// also the value of [`super::node_labels::SECCOMP_PROFILE`], so a valid label value).
        SECCOMP_PROFILE = "agent-boundary-userns.json";
        /// Key of the serving certificate (PEM) in the webhook's Secret (`kubernetes.io/tls`).
        WEBHOOK_CERT_KEY = "tls.crt";
        /// Key of the serving certificate's private key (PEM) in the webhook's Secret.
        WEBHOOK_KEY_KEY = "tls.key";
        /// Key of the CA bundle (PEM, current and, during a rotation, previous CA) in the
        /// webhook's Secret, and of the current CA certificate in the CA Secret.
        CA_CERT_KEY = "ca.crt";
        /// Key of the CA's private key in the CA Secret (only the operator reads that Secret).
        CA_KEY_KEY = "ca.key";
        /// Key of the previous CA certificate in the CA Secret while a rotation overlaps.
        PREVIOUS_CA_CERT_KEY = "previous-ca.crt";
        /// Suffix of the CA Secret's name: `<webhook Secret>-ca`.
        CA_SECRET_SUFFIX = "-ca";
        /// Default name of the operator's leader-election Lease.
        OPERATOR_LEASE = "agent-boundary-operator";
        /// Field manager of the operator's server-side applies of the namespace label
        /// `agentboundary.dev/inject=required` (and [`super::annotations::INJECT_BEFORE_REQUIRED`]),
        /// separate so that releasing them never touches the labels other managers own.
        OPERATOR_INJECT_FIELD_MANAGER = "agent-boundary-operator-inject";
    }
}

/// Ports inside the pod (its network namespace, loopback only unless noted).
pub mod ports {
    /// The sidecar's explicit HTTP proxy on 127.0.0.1, for landlock-tier containers.
    pub const EXPLICIT_PROXY: u16 = 15080;
    /// The sidecar's `/metrics` and `/healthz` (all addresses: kubelet probes and Prometheus).
    pub const SIDECAR_METRICS: u16 = 15090;
    /// The jail's TCP forwarder, on the jail's own loopback (below 1024, so the jailed process
    /// can never bind it).
    pub const JAIL_FORWARDER: u16 = 2;
    /// The jail's DNS server (UDP and TCP), on the jail's own loopback.
    pub const JAIL_DNS: u16 = 53;
    /// Ports a `spec.podLocal` rule may not name: the jail's own (a redirect of them would take
    /// the jail's forwarder or DNS away) and the sidecar's (the proxy is not a destination).
    pub const NOT_POD_LOCAL: [u16; 4] = [JAIL_FORWARDER, JAIL_DNS, EXPLICIT_PROXY, SIDECAR_METRICS];
}

/// Path of the sidecar's enforcement status (JSON, [`crate::enforcement::SidecarStatus`]) on
/// [`ports::SIDECAR_METRICS`]; the operator reads it.
pub const SIDECAR_STATUS_PATH: &str = "/status";

/// Jail tiers, from least to most privileged where namespaces work, as they appear in node labels,
/// annotations and the `BOUNDARY_TIER` env var.
pub mod tiers {
    names! {
        /// Unprivileged user namespace + network, PID and mount namespaces.
        USERNS = "userns";
        /// Network, PID and mount namespaces made with `SYS_ADMIN` + `NET_ADMIN`, dropped before CMD.
        PRIVILEGED_NETNS = "privileged-netns";
        /// Landlock connect restriction to the proxy; no namespaces (weaker).
        LANDLOCK = "landlock";
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn dns_subdomain(s: &str) -> bool {
        s.len() <= 253 && s.split('.').all(dns_label)
    }

    /// `prefix/name` as Kubernetes validates label and annotation keys.
    fn qualified_name(key: &str) -> bool {
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
        name_ok && (prefix.is_empty() || dns_subdomain(prefix))
    }

    fn label_value(v: &str) -> bool {
        v.is_empty() || qualified_name(v) && !v.contains('/')
    }

    fn unique(all: &[&str]) {
        let set: HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len(), "duplicate name in {all:?}");
    }

    #[test]
    fn label_and_annotation_keys_are_valid_and_unique() {
        for group in [
            labels::ALL,
            node_labels::ALL,
            annotations::ALL,
            conditions::ALL,
        ] {
            unique(group);
            for key in group {
                assert!(qualified_name(key), "{key} is not a valid qualified name");
            }
        }
        for key in node_labels::ALL
            .iter()
            .chain(annotations::ALL)
            .chain(conditions::ALL)
        {
            let prefix = key.split_once('/').map_or("", |(p, _)| p);
            assert!(
                prefix == GROUP || prefix.ends_with(&format!(".{GROUP}")),
                "{key} is not under {GROUP}"
            );
        }
    }

    #[test]
    fn label_values_are_valid() {
        let values = [
            INJECT_ENABLED,
            INJECT_DISABLED,
            INJECT_REQUIRED,
            MANAGED_BY_OPERATOR,
            PART_OF,
        ];
        for v in values.iter().chain(os::ALL).chain(tiers::ALL) {
            assert!(label_value(v), "{v} is not a valid label value");
        }
        // The tiers label joins tier names with '.', so a tier name must not contain one.
        assert!(tiers::ALL.iter().all(|t| !t.contains('.')));
    }

    #[test]
    fn container_volume_and_object_names_are_dns_labels() {
        for group in [containers::ALL, volumes::ALL] {
            unique(group);
            for name in group {
                assert!(dns_label(name), "{name} is not a DNS-1123 label");
            }
        }
        assert!(dns_subdomain(objects::POLICY_CONFIGMAP));
    }

    #[test]
    fn env_names_are_portable_identifiers() {
        let ours = [
            env::ALL,
            webhook_env::ALL,
            log_env::ALL,
            operator_env::ALL,
            boundary_env::ALL,
            node_agent_env::ALL,
        ]
        .concat();
        unique(&[ours.as_slice(), coder_env::ALL, java_env::ALL].concat());
        for name in &ours {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(name.starts_with("BOUNDARY_"), "{name}");
        }
    }

    #[test]
    fn paths_are_absolute_and_files_live_in_their_volume() {
        for p in paths::ALL {
            assert!(p.starts_with('/'), "{p}");
        }
        assert!(paths::LABELS_FILE.starts_with(&format!("{}/", paths::PODINFO_DIR)));
        assert!(label_value(objects::SECCOMP_PROFILE));
        for file in [paths::PROXY_SOCKET, paths::CA_CERT, paths::TRUST_BUNDLE] {
            assert!(file.starts_with(&format!("{}/", paths::RUN_DIR)), "{file}");
        }
        assert!(paths::BOUNDARY_BIN.starts_with(&format!("{}/", paths::BIN_DIR)));
        // The jailed containers mount the run directory; the CA key must not be under it.
        assert!(!paths::CA_DIR.starts_with(&format!("{}/", paths::RUN_DIR)));
        assert_eq!(
            paths::POLICY_FILE,
            format!("{}/{}", paths::POLICY_DIR, objects::POLICY_CONFIGMAP_KEY)
        );
        assert_eq!(API_VERSION, format!("{GROUP}/{VERSION}"));
    }
}
