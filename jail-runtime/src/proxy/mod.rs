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

pub mod audit;
pub mod client_hello;
pub mod framing;
pub mod head;
pub mod header;
mod http;
pub mod io;
mod keepalive;
pub mod metrics;
pub mod pod_local;
pub mod policy;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_api::rules::{Host, Rule, RuleSet, Verdict};
use boundary_api::{Mode, Tier};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};

use self::audit::{Audit, Decision, Events, Identity, Record};
use self::client_hello::Parse;
use self::head::Scheme;
pub use self::header::Destination;
use self::header::Header;
use self::io::{BoxIo, Prefixed};
use self::metrics::{Kind, Metrics};
use self::policy::PolicyStore;
use self::tls::CertAuthority;
use self::upstream::{Body, Upstream};
use crate::jails::Jails;

/// How long a client may take to send its first bytes (for protocols where the client speaks
/// first; server-first protocols need a TCP rule).
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How long a client of a host no rule allows may take to show it speaks HTTP or TLS.
const HOPELESS_WAIT: Duration = Duration::from_secs(1);
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
    /// Name → address overrides.
    pub resolve: HashMap<String, IpAddr>,
    /// The audit destination.
    pub audit: audit::Sink,
    /// The interception CA.
    pub ca: Arc<CertAuthority>,
    /// How long an upstream may take to send its response headers (504 after that).
    pub upstream_timeout: Duration,
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
    client_h1: hyper_util::client::legacy::Client<upstream::Connector, Body>,
    client_h2: hyper_util::client::legacy::Client<upstream::Connector, Body>,
    audit: Audit,
    metrics: Arc<Metrics>,
    upstream_timeout: Duration,
}

/// Per-connection facts.
#[derive(Debug, Clone)]
struct ConnCtx {
    port: u16,
    bound: Option<Host>,
    sni: Option<Host>,
    container: Option<String>,
    tier: Option<Tier>,
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
        let upstream = Upstream::new(config.resolve, tls::UpstreamTls::new(&config.upstream_cas)?);
        let metrics = Arc::new(Metrics::default());
        let policy = Arc::new(config.policy);
        let events = Events {
            audit: Audit::start(&config.audit).map_err(StartError::Audit)?,
            session: config.session.into(),
            identity: Arc::new(config.identity),
        };
        policy.spawn_reloader(metrics.clone(), events.clone());
        Ok(Proxy {
            inner: Arc::new(Inner {
                session: events.session.clone(),
                identity: events.identity.clone(),
                tier: config.tier,
                policy,
                ca: config.ca,
                client_h1: upstream.client(false),
                client_h2: upstream.client(true),
                upstream,
                audit: events.audit,
                metrics,
                upstream_timeout: config.upstream_timeout,
            }),
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The rules that apply to `container` now.
    pub fn rules_for(&self, container: Option<&str>) -> Arc<policy::Resolved> {
        self.inner.policy.rules_for(container)
    }

    /// Waits for queued audit records to be written.
    pub async fn flush(&self) {
        self.inner.audit.flush().await;
    }

    fn record(
        &self,
        ctx: &ConnCtx,
        scheme: &'static str,
        host: &Host,
        port: u16,
        mode: Mode,
    ) -> Record {
        let tier = ctx.tier.or(self.inner.tier);
        Record {
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
            mode,
            tier,
            isolation: (tier == Some(Tier::Landlock))
                .then_some("weaker: landlock restricts connect by port only"),
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
        }
    }

    /// Serves a connection the jail's forwarder intercepted.
    pub async fn serve_connection(&self, io: BoxIo, dest: Destination) {
        self.inner.metrics.active(1);
        self.serve_connection_inner(io, dest).await;
        self.inner.metrics.active(-1);
    }

    async fn serve_connection_inner(&self, mut io: BoxIo, dest: Destination) {
        let pod_local = pod_local::is_pod_local(&dest);
        let bound = dest
            .name
            .as_deref()
            .and_then(|n| Host::parse(n).ok())
            .unwrap_or(Host::Ip(dest.dst.ip()));
        let port = dest.dst.port();
        let mut ctx = ConnCtx {
            port,
            bound: Some(bound.clone()),
            sni: None,
            container: dest.container,
            tier: dest.tier,
        };
        let resolved = self.rules_for(ctx.container.as_deref());
        let rules = &resolved.rules;
        if pod_local {
            self.serve_pod_local(io, &ctx, dest.dst, rules).await;
            return;
        }
        // A TCP rule relays it. One a deny rule beats: Audit lets it through as a would-be
        // denial; Enforce goes on, as the connection may still be HTTP or TLS whose requests
        // are checked one by one.
        let tcp = rules.check_tcp(&bound, port);
        let relayed = match tcp {
            Verdict::Allow(rule) => Some((Decision::Allow, rule, None)),
            Verdict::Denied {
                by,
                overrides: Some(_),
            } if rules.mode() == Mode::Audit => Some((
                Decision::WouldDeny,
                by,
                Some(connection_denied(by, &bound, port, "plain TCP")),
            )),
            _ => None,
        };
        if let Some((decision, rule, reason)) = relayed {
            let mode = rules.mode();
            self.relay(
                io,
                Vec::new(),
                &ctx,
                &bound,
                "tcp",
                decision,
                Some(rule),
                reason,
                mode,
            )
            .await;
            return;
        }
        // When nothing could allow this name, give the client only a moment to say what it
        // is: an HTTP client still gets a 403 page and a TLS client an alert, while a protocol
        // where the server speaks first (ssh) is closed quickly. The same for the port of a TCP
        // rule a deny rule beat: most likely such a protocol, and HTTP or TLS clients speak at
        // once anyway.
        let hopeless = matches!(bound, Host::Name(_))
            && rules.mode() == Mode::Enforce
            && !rules.may_allow_http(&bound, port)
            && !rules.check_passthrough(&bound, port).is_allow();
        let tcp_beaten = matches!(
            tcp,
            Verdict::Denied {
                overrides: Some(_),
                ..
            }
        );
        let wait = if hopeless || tcp_beaten {
            HOPELESS_WAIT
        } else {
            FIRST_BYTES
        };
        let mut buf = Vec::with_capacity(2048);
        if !read_more(&mut io, &mut buf, wait).await {
            self.deny_silent(&ctx, &bound, hopeless, rules);
            return;
        }
        if client_hello::is_tls_start(buf[0]) {
            match read_hello(&mut io, &mut buf).await {
                Some(Ok(hello)) => {
                    self.handle_tls(io, buf, hello, &mut ctx, &bound, rules)
                        .await;
                }
                Some(Err(why)) => {
                    let reason = format!("malformed TLS ClientHello: {why}");
                    self.deny_connection(&ctx, &bound, "tls", reason, rules.mode());
                }
                None => {}
            }
            return;
        }
        while sniff_http(&buf).is_none() {
            if !read_more(&mut io, &mut buf, wait).await {
                break;
            }
        }
        Box::pin(self.handle_plain(io, buf, ctx, &bound, rules)).await;
    }

    /// Records a connection whose client sent nothing (in time) as denied.
    fn deny_silent(&self, ctx: &ConnCtx, bound: &Host, hopeless: bool, rules: &RuleSet) {
        let port = ctx.port;
        let deny = rules.deny_for(bound, port);
        let reason = if let Some(by) = deny {
            connection_denied(by, bound, port, "plain TCP")
        } else if hopeless {
            format!(
                "no rule allows connections to {bound}:{port}; to allow plain TCP add a tcp rule {{domain: {bound}, ports: [{port}]}}"
            )
        } else {
            format!(
                "the client sent nothing within {}s and no tcp rule allows {bound}:{port}",
                FIRST_BYTES.as_secs()
            )
        };
        self.deny_connection_by(ctx, bound, "tcp", reason, rules.mode(), deny);
    }

    /// A connection that did not start with TLS: HTTP, or bytes no rule allows.
    async fn handle_plain(
        &self,
        io: BoxIo,
        buf: Vec<u8>,
        ctx: ConnCtx,
        bound: &Host,
        rules: &RuleSet,
    ) {
        let port = ctx.port;
        let mode = rules.mode();
        let deny = rules.deny_for(bound, port);
        if sniff_http(&buf) == Some(true) {
            let protocol = http::Protocol::from_start(&buf);
            let io = Prefixed::new(buf, io);
            http::serve(self.clone(), io, ctx, Scheme::Http, protocol).await;
        } else if mode == Mode::Audit {
            let reason = Some(match deny {
                Some(by) => connection_denied(by, bound, port, "plain TCP"),
                None => format!("not HTTP or TLS and no tcp rule allows {bound}:{port}"),
            });
            self.relay(
                io,
                buf,
                &ctx,
                bound,
                "tcp",
                Decision::WouldDeny,
                deny,
                reason,
                Mode::Audit,
            )
            .await;
        } else {
            let reason = match deny {
                Some(by) => connection_denied(by, bound, port, "plain TCP"),
                None => format!(
                    "not HTTP or TLS, and no tcp rule allows {bound}:{port}; add a tcp rule {{domain: {bound}, ports: [{port}]}}"
                ),
            };
            self.deny_connection_by(&ctx, bound, "tcp", reason, mode, deny);
        }
    }

    async fn handle_tls(
        &self,
        mut io: BoxIo,
        buf: Vec<u8>,
        hello: client_hello::ClientHello,
        ctx: &mut ConnCtx,
        bound: &Host,
        rules: &RuleSet,
    ) {
        let port = ctx.port;
        let sni = match hello.server_name.as_deref().map(Host::parse) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                self.deny_connection(
                    ctx,
                    bound,
                    "tls",
                    format!("invalid TLS server name: {e}"),
                    rules.mode(),
                );
                return;
            }
        };
        if let (Host::Name(_), Some(sni)) = (bound, &sni)
            && sni != bound
        {
            let reason = format!(
                "TLS server name {sni} differs from {bound}, the host this connection was opened for"
            );
            self.deny_connection(ctx, bound, "tls", reason, rules.mode());
            return;
        }
        let name = sni.clone().unwrap_or_else(|| bound.clone());
        // A passthrough rule relays it. One a deny rule beats: Audit relays it as a would-be
        // denial; Enforce goes on to interception when an HTTP rule could allow requests there,
        // else to the alert.
        let mut beaten = None;
        let relayed = match rules.check_passthrough(&name, port) {
            Verdict::Allow(rule) => Some((Decision::Allow, rule, None)),
            Verdict::Denied {
                by,
                overrides: Some(_),
            } => {
                beaten = Some(by);
                (rules.mode() == Mode::Audit).then(|| {
                    let reason = connection_denied(by, &name, port, "TLS passthrough");
                    (Decision::WouldDeny, by, Some(reason))
                })
            }
            _ => None,
        };
        if let Some((decision, rule, reason)) = relayed {
            let mode = rules.mode();
            self.relay(
                io,
                buf,
                ctx,
                &name,
                "tls",
                decision,
                Some(rule),
                reason,
                mode,
            )
            .await;
            return;
        }
        if rules.mode() == Mode::Enforce && !rules.may_allow_http(&name, port) {
            // Refused before any certificate is minted: a TLS access_denied alert.
            let _ = io
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49])
                .await;
            let _ = io.shutdown().await;
            self.deny_tls(ctx, &name, beaten, rules);
            return;
        }
        let h2 = hello.alpn.iter().any(|p| p == b"h2");
        let config = match self.inner.ca.server_config(&name, h2) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, host = %name, "cannot mint a certificate");
                return;
            }
        };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(Prefixed::new(buf, io));
        // Boxed so that the handshake's state is freed once it is done, not kept in this
        // connection's task for as long as the connection lives.
        let tls = match Box::pin(tokio::time::timeout(FIRST_BYTES, accept)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, host = %name, "TLS handshake with the jailed client failed");
                return;
            }
            Err(_) => return,
        };
        ctx.sni = sni;
        let protocol = http::Protocol::from_alpn(tls.get_ref().1.alpn_protocol());
        // Boxed: a connection's task is as large as its largest state, and this one is large.
        Box::pin(http::serve(
            self.clone(),
            tls,
            ctx.clone(),
            Scheme::Https,
            protocol,
        ))
        .await;
    }

    /// Records TLS refused before interception: by a whole-host deny rule, by a deny rule that
    /// beat a passthrough rule (`beaten`), or for want of an allow rule.
    fn deny_tls(&self, ctx: &ConnCtx, name: &Host, beaten: Option<&Rule>, rules: &RuleSet) {
        let port = ctx.port;
        let (reason, deny) = if let Some(by) = rules.whole_host_deny(name, port) {
            (whole_host_denied(by, name, port), Some(by))
        } else if let Some(by) = beaten {
            let reason = connection_denied(by, name, port, "TLS passthrough");
            (reason, Some(by))
        } else {
            (format!("no rule allows HTTPS to {name}:{port}"), None)
        };
        self.deny_connection_by(ctx, name, "tls", reason, rules.mode(), deny);
    }

    fn deny_connection(
        &self,
        ctx: &ConnCtx,
        host: &Host,
        scheme: &'static str,
        reason: String,
        mode: Mode,
    ) {
        self.deny_connection_by(ctx, host, scheme, reason, mode, None);
    }

    /// Records a denied connection; `rule`: the deny rule that refused it.
    fn deny_connection_by(
        &self,
        ctx: &ConnCtx,
        host: &Host,
        scheme: &'static str,
        reason: String,
        mode: Mode,
        rule: Option<&Rule>,
    ) {
        let kind = if scheme == "tls" {
            Kind::Tls
        } else {
            Kind::Tcp
        };
        self.inner.metrics.decision(kind, Decision::Deny);
        let mut rec = self.record(ctx, scheme, host, ctx.port, mode);
        rec.decision = Decision::Deny;
        rec.reason = Some(reason);
        if let Some(rule) = rule {
            name_rule(&mut rec, rule);
        }
        self.inner.audit.record(&rec);
    }

    /// Relays a connection uninspected (TCP rule, TLS passthrough, or Audit mode).
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        client: BoxIo,
        prefix: Vec<u8>,
        ctx: &ConnCtx,
        host: &Host,
        scheme: &'static str,
        decision: Decision,
        rule: Option<&Rule>,
        reason: Option<String>,
        mode: Mode,
    ) {
        let kind = if scheme == "tls" {
            Kind::Tls
        } else {
            Kind::Tcp
        };
        self.inner.metrics.decision(kind, decision);
        let started = Instant::now();
        let mut rec = self.record(ctx, scheme, host, ctx.port, mode);
        rec.decision = decision;
        if let Some(rule) = rule {
            name_rule(&mut rec, rule);
        }
        rec.reason = reason;
        match self.inner.upstream.connect_tcp(host, ctx.port).await {
            Ok(upstream) => {
                let (up, down) = io::relay(client, prefix, upstream).await;
                rec.bytes_in = up;
                rec.bytes_out = down;
                self.inner.metrics.bytes(up, down);
            }
            Err(failure) => {
                self.inner.metrics.upstream_error(failure.kind);
                rec.reason = Some(failure.message);
            }
        }
        rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.audit.record(&rec);
    }

    /// Serves explicit-proxy clients (`HTTP_PROXY=http://127.0.0.1:PORT`, CONNECT).
    pub async fn serve_explicit(&self, io: BoxIo, container: Option<String>, tier: Option<Tier>) {
        let ctx = ConnCtx {
            port: 0,
            bound: None,
            sni: None,
            container,
            tier,
        };
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
        let header = match tokio::time::timeout(FIRST_BYTES, header::read_header(&mut reader)).await
        {
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
        event: header::InboundEvent,
    ) {
        self.inner.audit.record_line(&audit::InboundRecord {
            time: audit::now(),
            session: self.inner.session.clone(),
            identity: self.inner.identity.clone(),
            container,
            kind: "inbound",
            tier: tier.or(self.inner.tier),
            event,
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

    /// Serves `/metrics`, `/healthz` and `/status` (the policy hash and `jails`) forever.
    pub async fn run_metrics(self, listener: TcpListener, jails: Option<Arc<Jails>>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let proxy = self.clone();
            let jails = jails.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let proxy = proxy.clone();
                        let jails = jails.clone();
                        async move {
                            let text = "text/plain; version=0.0.4";
                            let (status, body, kind) = match req.uri().path() {
                                "/metrics" => (
                                    200,
                                    proxy.inner.metrics.render(proxy.inner.audit.dropped()),
                                    text,
                                ),
                                "/healthz" | "/readyz" => (200, "ok\n".to_owned(), text),
                                "/status" => (
                                    200,
                                    crate::jails::status_json(&proxy, jails.as_deref()),
                                    "application/json",
                                ),
                                _ => (404, "not found\n".to_owned(), text),
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", kind)
                                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                    .unwrap_or_default(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

/// Puts the rule that decided into a record: `rule`, and `denied_by` for a deny rule.
fn name_rule(rec: &mut Record, rule: &Rule) {
    rec.rule = Some(rule.origin.to_string());
    if rule.is_deny() {
        rec.denied_by = Some(audit::DeniedBy::DenyRule);
    }
}

/// Why a connection whose requests the proxy cannot see (plain TCP, TLS passthrough) is denied.
fn connection_denied(by: &Rule, host: &Host, port: u16, what: &str) -> String {
    format!(
        "denied by the deny rule {}: it names {host}:{port}, and the proxy cannot see the method \
         or path of a {what} connection, so it is denied whatever allows it",
        by.origin
    )
}

/// Why TLS to a host a method- and path-less deny rule names is refused.
fn whole_host_denied(by: &Rule, host: &Host, port: u16) -> String {
    format!(
        "denied by the deny rule {}: it refuses every request to {host}:{port}, whatever allows it",
        by.origin
    )
}

/// Unix stream sockets default to small buffers (about 200 KiB), which caps bulk throughput
/// with a context switch every few TLS records; ask for more (the kernel caps it at
/// `net.core.{w,r}mem_max`).
pub fn tune_unix(stream: &impl std::os::fd::AsFd) {
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::SndBuf, &(4 << 20));
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
}

/// Reads whatever arrives next (within `wait`); false on EOF, error, timeout or when the buffer
/// is at its limit.
async fn read_more(io: &mut BoxIo, buf: &mut Vec<u8>, wait: Duration) -> bool {
    if buf.len() >= client_hello::MAX_HELLO {
        return false;
    }
    // Straight into the vector: a stack buffer here would be part of every connection's task.
    buf.reserve(4096);
    matches!(
        tokio::time::timeout(wait, io.read_buf(buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Reads until the ClientHello is complete: `None` when the client went away.
async fn read_hello(
    io: &mut BoxIo,
    buf: &mut Vec<u8>,
) -> Option<Result<client_hello::ClientHello, &'static str>> {
    loop {
        match client_hello::parse(buf) {
            Parse::Incomplete => {
                if !read_more(io, buf, FIRST_BYTES).await {
                    return None;
                }
            }
            Parse::Invalid(why) => return Some(Err(why)),
            Parse::Hello(hello) => return Some(Ok(hello)),
        }
    }
}

/// Whether the connection starts like an HTTP/1 request line (`TOKEN SP`, or the h2 preface
/// `PRI * ...`): `None` while the bytes so far could still go either way.
fn sniff_http(buf: &[u8]) -> Option<bool> {
    for (i, b) in buf.iter().enumerate() {
        if *b == b' ' {
            return Some(i > 0);
        }
        if !b.is_ascii_uppercase() || i >= 15 {
            return Some(false);
        }
    }
    None
}

/// An address for destinations known only by name (CONNECT).
fn unspecified(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_sniffing() {
        assert_eq!(sniff_http(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(sniff_http(b"PRI * HTTP/2.0\r\n"), Some(true));
        assert_eq!(sniff_http(b"CONNECT a:443 HTTP/1.1\r\n"), Some(true));
        assert_eq!(sniff_http(b"GE"), None, "could still be GET");
        assert_eq!(sniff_http(b""), None);
        assert_eq!(sniff_http(b"SSH-2.0-OpenSSH_9\r\n"), Some(false));
        assert_eq!(sniff_http(b"hello\n"), Some(false));
        assert_eq!(sniff_http(b"get / HTTP/1.1"), Some(false));
        assert_eq!(sniff_http(b" GET"), Some(false));
        assert_eq!(sniff_http(b"AAAAAAAAAAAAAAAAAAAAA"), Some(false));
        assert_eq!(sniff_http(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Some(false));
    }
}
