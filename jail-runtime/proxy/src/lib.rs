//! The policy proxy: the only way out of the jail.
//!
//! Connections arrive from the jail's forwarder (in-process, or through the sidecar's unix
//! socket with a header naming the destination) or as explicit-proxy requests (`HTTP_PROXY`,
//! `CONNECT`; the landlock tier). For each connection:
//!
//! 0. a destination on the pod's loopback (a pod-local port the jail redirected) → decided by
//!    `podLocal` rules alone and relayed as is (see [`pod_local`], audited as `pod-local`);
//! 1. a TCP rule for the destination name and port → relayed as is (audited as `tcp`);
//! 2. a destination name no rule could allow → closed at once (Enforce);
//! 3. otherwise the first bytes decide: a TLS ClientHello is checked by its SNI (passthrough
//!    rule → relayed uninspected; no HTTP rule could match → refused *before* the handshake with
//!    a TLS `access_denied` alert; else intercepted), HTTP is parsed request by request, anything
//!    else is refused;
//! 4. every HTTP request is checked (see [`head`] and `boundary_api::rules`), audited, and
//!    forwarded with bodies streamed both ways, or answered 403 with the rule that would allow it.
//!
//! Deny rules (a `ClusterBoundaryPolicy`'s, `--deny`) win over every allow rule at each step: a
//! TCP or passthrough connection to a host and port a deny rule names is not relayed (the proxy
//! cannot see its method or path), TLS to a host a method- and path-less deny rule names gets the
//! alert before any certificate, and a request a deny rule matches gets a 403 naming that rule
//! (no allow rule is suggested: none would help). In Audit mode each of them is let through and
//! recorded as `would-deny` with the rule. Audit records name the deny rule in `rule`, with
//! `"denied_by": "deny-rule"`. Pod-local connections (step 0) are not affected.
//!
//! Every step's rule check is in [`decide`] (pure); `conn` (one connection) and `http` (its
//! requests) act on the verdicts. Each connection or request has one [`audit::Entry`], written
//! once when it drops. [`wire`] is the forwarder/sidecar header, [`admin`] the sidecar's admin
//! port, `keepalive` hyper's HTTP/1 connections taken back between requests.

pub mod admin;
mod answer_first;
pub mod audit;
pub mod client_hello;
mod conn;
mod context;
pub mod credentials;
pub mod decide;
pub mod denials;
pub mod framing;
pub mod guard;
pub mod head;
mod http;
pub mod io;
pub mod jails;
mod keepalive;
pub mod metrics;
pub mod pod_local;
pub mod policy;
pub mod session;
pub mod sigv4;
pub mod socket_relay;
pub mod tls;
pub mod trust;
pub mod upstream;
pub mod wire;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boundary_api::rules::Host;
use boundary_api::{Mode, Tier};
use tokio::io::BufReader;
use tokio::net::{TcpListener, UnixListener, UnixStream};

use self::audit::{Audit, Decision, Entry, Events, Identity, Record};
use self::context::ConnCtx;
use self::decide::FIRST_BYTES;
use self::head::Scheme;
use self::io::{BoxIo, Prefixed};
use self::jails::Jails;
use self::metrics::Metrics;
use self::policy::PolicyStore;
use self::tls::CertAuthority;
use self::upstream::{Body, Upstream};
use self::wire::Header;
pub use self::wire::{Destination, tune_unix};

/// Everything the proxy is configured with.
#[derive(Debug)]
pub struct ProxyConfig {
    /// Session id, in every audit record and the CA's name.
    pub session: String,
    /// Pod and namespace, when known.
    pub identity: Identity,
    /// The tier, for connections whose header does not say.
    pub tier: Option<Tier>,
    /// The rules.
    pub policy: PolicyStore,
    /// Extra CAs for upstream verification.
    pub upstream_cas: Vec<PathBuf>,
    /// Name → address overrides (`--resolve`): pinned, so the private-address guard lets them
    /// through.
    pub resolve: HashMap<String, IpAddr>,
    /// The DNS server for upstream names (`--upstream-dns`); `None`: the system's.
    pub upstream_dns: Option<SocketAddr>,
    /// The audit destination.
    pub audit: audit::Sink,
    /// The audit lines' format and the file's rotation.
    pub audit_options: audit::Options,
    /// The interception CA.
    pub ca: Arc<CertAuthority>,
    /// How long an upstream may take to send its response headers (504 after that).
    pub upstream_timeout: Duration,
    /// The credentials' real values (the rules say which credentials there are).
    pub credential_values: credentials::values::ValueSource,
}

/// The proxy; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

struct Inner {
    session: Arc<str>,
    identity: Arc<Identity>,
    tier: Option<Tier>,
    policy: Arc<PolicyStore>,
    ca: Arc<CertAuthority>,
    upstream: Upstream,
    audit: Audit,
    denials: Arc<denials::Denials>,
    /// `denials` as every audit entry's tap.
    denial_tap: audit::Tap,
    metrics: Arc<Metrics>,
    upstream_timeout: Duration,
    values: Arc<credentials::values::ValueStore>,
    /// The sidecar's own AWS identity, made on first use (credentials with `identity: Sidecar`).
    aws_identity: tokio::sync::OnceCell<sigv4::AwsSigner>,
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Upstream TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The audit destination could not be opened.
    #[error("opening the audit log: {0}")]
    Audit(#[source] std::io::Error),
}

impl Proxy {
    /// Starts the proxy's background tasks (audit writer, policy reloader); needs a runtime.
    pub fn start(config: ProxyConfig) -> Result<Proxy, StartError> {
        let upstream = Upstream::new(
            config.resolve,
            config.upstream_dns,
            tls::UpstreamTls::new(&config.upstream_cas)?,
        );
        let metrics = Arc::new(Metrics::default());
        let policy = Arc::new(config.policy);
        let events = Events {
            audit: Audit::start(&config.audit, config.audit_options).map_err(StartError::Audit)?,
            session: config.session.into(),
            identity: Arc::new(config.identity),
        };
        policy.spawn_reloader(metrics.clone(), events.clone());
        let denials = Arc::new(denials::Denials::default());
        let values = Arc::new(credentials::values::ValueStore::new(
            config.credential_values,
        ));
        values.spawn_reloader();
        Ok(Proxy {
            inner: Arc::new(Inner {
                session: events.session.clone(),
                identity: events.identity.clone(),
                tier: config.tier,
                policy,
                ca: config.ca,
                upstream,
                audit: events.audit,
                denial_tap: {
                    let denials = denials.clone();
                    Arc::new(move |record: &Record| denials.note(record))
                },
                denials,
                metrics,
                upstream_timeout: config.upstream_timeout,
                values,
                aws_identity: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The signer with the sidecar's own AWS identity (the default credential chain).
    pub async fn aws_identity(&self) -> &sigv4::AwsSigner {
        self.inner
            .aws_identity
            .get_or_init(sigv4::AwsSigner::from_default_chain)
            .await
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The rules that apply to `container` now.
    pub fn rules_for(&self, container: Option<&str>) -> Arc<policy::Resolved> {
        self.inner.policy.rules_for(container)
    }

    /// The credentials' real values now.
    pub fn credential_values(&self) -> Arc<credentials::Values> {
        self.inner.values.values()
    }

    /// Waits for queued audit records to be written.
    pub async fn flush(&self) {
        self.inner.audit.flush().await;
    }

    /// The audit entry of a connection or request: allowed until the caller says otherwise,
    /// written when dropped.
    fn entry(
        &self,
        ctx: &ConnCtx,
        scheme: &'static str,
        host: &Host,
        port: u16,
        mode: Mode,
    ) -> Entry {
        let tier = self.tier_of(ctx);
        let record = Record {
            time: audit::now(),
            session: self.inner.session.clone(),
            identity: self.inner.identity.clone(),
            container: ctx.container.clone(),
            scheme,
            method: None,
            host: host.to_string(),
            port,
            path: None,
            decision: Decision::Allow,
            rule: None,
            denied_by: None,
            reason: None,
            credential: None,
            leak: None,
            mode,
            tier,
            isolation: (tier == Some(Tier::Landlock))
                .then_some("weaker: landlock restricts connect by port only"),
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
        };
        Entry::new(self.inner.audit.clone(), record).tapped(self.inner.denial_tap.clone())
    }

    /// What was denied so far, by destination.
    pub fn denials(&self) -> &denials::Denials {
        &self.inner.denials
    }

    /// The proxy's session id.
    pub fn session(&self) -> &str {
        &self.inner.session
    }

    /// The tier of a connection's jail: as its header said, else the proxy's own.
    fn tier_of(&self, ctx: &ConnCtx) -> Option<Tier> {
        ctx.tier.or(self.inner.tier)
    }

    /// Serves a connection the jail's forwarder intercepted.
    pub async fn serve_connection(&self, io: BoxIo, dest: Destination) {
        self.inner.metrics.active(1);
        self.dispatch(io, dest).await;
        self.inner.metrics.active(-1);
    }

    /// Serves explicit-proxy clients (`HTTP_PROXY=http://127.0.0.1:PORT`, CONNECT).
    pub async fn serve_explicit(&self, io: BoxIo, container: Option<String>, tier: Option<Tier>) {
        let ctx = ConnCtx::explicit(container, tier);
        self.inner.metrics.active(1);
        // Clients may speak HTTP/2 with prior knowledge to a proxy; detect it.
        http::serve(self.clone(), io, ctx, Scheme::Http, http::Protocol::Detect).await;
        self.inner.metrics.active(-1);
    }

    /// Accepts explicit-proxy connections forever.
    pub async fn run_explicit(self, listener: TcpListener, tier: Option<Tier>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            tokio::spawn(async move { proxy.serve_explicit(Box::new(stream), None, tier).await });
        }
    }

    /// Accepts connections on the sidecar's unix socket forever: relayed connections, and
    /// `boundary run` sessions (handed to `sessions`; refused without).
    pub async fn run_unix(self, listener: UnixListener, sessions: Option<Arc<Jails>>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Downloads flow from this end; its send buffer is the one that matters for them.
            tune_unix(&stream);
            let proxy = self.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move { proxy.serve_relayed(stream, sessions).await });
        }
    }

    async fn serve_relayed(&self, stream: UnixStream, sessions: Option<Arc<Jails>>) {
        let mut reader = BufReader::new(stream);
        let header = match tokio::time::timeout(FIRST_BYTES, wire::read_header(&mut reader)).await {
            Ok(Ok(header)) => header,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rejected a connection with a bad header");
                return;
            }
            Err(_) => return,
        };
        let dest = match header {
            Header::Relay(dest) => dest,
            Header::Session(hello) => {
                if let Some(jails) = sessions {
                    jails.serve(hello, reader, self).await;
                } else {
                    tracing::warn!("a boundary run session arrived where none are served");
                }
                return;
            }
        };
        // Hand over what the header read left buffered, then read the socket directly: a
        // BufReader would cap every later read at its 8 KiB and keep the buffer per connection.
        let leftover = reader.buffer().to_vec();
        self.serve_connection(Box::new(Prefixed::new(leftover, reader.into_inner())), dest)
            .await;
    }

    /// Writes an inbound connection (`boundary run --inbound-port`) to the audit trail.
    pub fn record_inbound(
        &self,
        container: Option<String>,
        tier: Option<Tier>,
        event: session::InboundEvent,
    ) {
        self.inner.audit.record_line(&audit::EventRecord {
            time: audit::now(),
            session: self.inner.session.clone(),
            identity: self.inner.identity.clone(),
            container,
            kind: "inbound",
            tier: tier.or(self.inner.tier),
            detail: event,
        });
    }

    /// Writes an event about the proxy or a jail (not a connection) to the audit trail.
    pub fn record_event(
        &self,
        kind: &'static str,
        container: Option<String>,
        tier: Option<Tier>,
        detail: serde_json::Value,
    ) {
        Events {
            audit: self.inner.audit.clone(),
            session: self.inner.session.clone(),
            identity: self.inner.identity.clone(),
        }
        .record(kind, container, tier.or(self.inner.tier), detail);
    }

    /// Whether the policy file is missing now (the last policy loaded stays in force).
    pub fn policy_file_missing(&self) -> bool {
        self.inner.policy.file_missing()
    }

    /// The hash of the compiled-policy file enforced now (see
    /// `boundary_api::compiled::policy_hash`), `None` while none is loaded.
    pub fn policy_hash(&self) -> Option<String> {
        self.inner.policy.hash()
    }

    /// Audit records dropped so far (the queue was full).
    pub fn audit_dropped(&self) -> u64 {
        self.inner.audit.dropped()
    }

    /// Failed rotations of the audit file so far (`--audit-max-bytes`).
    pub fn audit_rotation_failures(&self) -> u64 {
        self.inner.audit.rotation_failures()
    }

    /// How long an upstream may take to send its response headers.
    fn upstream_timeout(&self) -> Duration {
        self.inner.upstream_timeout
    }

    /// The upstream HTTP client of `resolved`'s rules: HTTP/2 or HTTP/1.1.
    fn http_client<'r>(
        &self,
        resolved: &'r policy::Resolved,
        h2: bool,
    ) -> &'r hyper_util::client::legacy::Client<upstream::Connector, Body> {
        resolved
            .clients
            .get(&self.inner.upstream, &resolved.exemptions, h2)
    }
}

/// 16 hex digits from the kernel's random pool.
pub fn session_id() -> String {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let low = u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or_default();
        bytes = (low ^ u64::from(std::process::id())).to_be_bytes();
    }
    bytes.iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
