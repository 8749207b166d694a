//! HTTP inside a connection (plain or intercepted TLS; HTTP/1.1 keep-alive and HTTP/2): every
//! request is checked, audited, and forwarded with bodies streamed both ways, trailers and
//! upgrades (WebSocket) included, or answered 403 with the rule that would allow it (or the deny
//! rule that refused it, which no allow rule can override).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use boundary_api::Mode;
use boundary_api::rules::{Host, HttpRequest, Miss, Rule, Verdict, suggest};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::audit::{Decision, Record};
use super::framing::{Audited, Framing};
use super::head::{self, Scheme, Target};
use super::keepalive::{self, Exchange, Pending};
use super::metrics::{Kind, UpstreamError};
use super::pod_local::{self, PodLocalDecision};
use super::upstream::{Body, BoxError, Failure};
use super::{ConnCtx, Destination, Proxy, name_rule, unspecified};

/// Headers of one hop only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Which HTTP version a connection speaks, when it is already known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
    /// Look at the first bytes (the HTTP/2 preface or not).
    Detect,
}

impl Protocol {
    /// From the ALPN protocol a TLS handshake settled on.
    pub(super) fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        if alpn == Some(b"h2") {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }

    /// From the first bytes of a plain-text connection.
    pub(super) fn from_start(bytes: &[u8]) -> Protocol {
        if bytes.starts_with(b"PRI * HTTP/2.0") {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on `io` until the client closes.
///
/// A known protocol goes straight to hyper's HTTP/1 or HTTP/2 server: the auto-detecting one
/// reads a 24-byte preface first, and handing those bytes back makes hyper's HTTP/1 read buffer
/// grow to 16 KiB for the whole life of the connection (memory per idle connection doubled).
pub(super) async fn serve<IO>(
    proxy: Proxy,
    io: IO,
    ctx: ConnCtx,
    scheme: Scheme,
    protocol: Protocol,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(ctx);
    let framing = Arc::new(Mutex::new(Framing::default()));
    // Each protocol's future is boxed: in place, every connection would reserve room for the
    // largest of them (the auto-detecting server is several KiB) for its whole life.
    let result = match protocol {
        Protocol::Http1 => {
            let exchange = Arc::new(Exchange::default());
            let upgrades = Upgrades::Taken(exchange.clone());
            let make = || service(&proxy, &ctx, scheme, &framing, &upgrades);
            let io = Audited::new(io, framing.clone());
            Box::pin(keepalive::serve(
                &proxy,
                io,
                exchange,
                &http1_builder(),
                make,
            ))
            .await;
            Ok(())
        }
        Protocol::Http2 => {
            let svc = service(&proxy, &ctx, scheme, &framing, &Upgrades::Hyper);
            Box::pin(http2_builder().serve_connection(TokioIo::new(io), svc))
                .await
                .map_err(BoxError::from)
        }
        Protocol::Detect => {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS);
            let svc = service(&proxy, &ctx, scheme, &framing, &Upgrades::Hyper);
            let io = TokioIo::new(Audited::new(io, framing));
            Box::pin(builder.serve_connection_with_upgrades(io, svc)).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// How the client's side of an upgrade (WebSocket, CONNECT) is obtained.
#[derive(Debug, Clone)]
enum Upgrades {
    /// From hyper (`hyper::upgrade::on`), for connections hyper keeps to the end.
    Hyper,
    /// Taken back from hyper by the keep-alive loop, which finishes the upgrade.
    Taken(Arc<Exchange>),
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The per-request service of one hyper connection: framing verdict, rules, forwarding.
fn service(
    proxy: &Proxy,
    ctx: &Arc<ConnCtx>,
    scheme: Scheme,
    framing: &Arc<Mutex<Framing>>,
    upgrades: &Upgrades,
) -> impl keepalive::ExchangeService + Clone + Send + 'static {
    let (proxy, ctx, framing, upgrades) = (
        proxy.clone(),
        ctx.clone(),
        framing.clone(),
        upgrades.clone(),
    );
    hyper::service::service_fn(move |req: Request<Incoming>| -> ServiceFuture {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        let upgrades = upgrades.clone();
        let open = match &upgrades {
            Upgrades::Taken(exchange) => Some(exchange.open()),
            Upgrades::Hyper => None,
        };
        let verdict = if req.version() == Version::HTTP_2 {
            Ok(())
        } else {
            framing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next_verdict()
        };
        Box::pin(async move {
            let response = match verdict {
                Ok(()) => handle(proxy, ctx, scheme, req, &upgrades).await,
                Err(why) => refuse_framing(&proxy, &ctx, scheme, &req, &why),
            };
            Ok(match open {
                Some(open) => response.map(|body| keepalive::guarded(body, open)),
                None => response,
            })
        })
    })
}

fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
}

fn http2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS);
    builder
}

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent HTTP/2 streams per client connection.
const MAX_STREAMS: u32 = 256;

async fn handle(
    proxy: Proxy,
    ctx: Arc<ConnCtx>,
    scheme: Scheme,
    mut req: Request<Incoming>,
    upgrades: &Upgrades,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect(proxy, &ctx, req, upgrades);
    }
    let resolved = proxy.rules_for(ctx.container.as_deref());
    let rules = &resolved.rules;
    let mode = rules.mode();
    let client_upgrade = is_upgrade(req.headers()).then(|| match upgrades {
        Upgrades::Hyper => ClientUpgrade::Hyper(hyper::upgrade::on(&mut req)),
        Upgrades::Taken(exchange) => ClientUpgrade::Taken(exchange.clone()),
    });
    let (parts, body) = req.into_parts();
    let conn = head::Connection {
        scheme,
        port: if ctx.port == 0 {
            scheme.default_port()
        } else {
            ctx.port
        },
        bound: ctx.bound.as_ref(),
        sni: ctx.sni.as_ref(),
    };
    let audit_host = |t: Option<&Target>| {
        t.map(|t| t.host.clone())
            .or_else(|| ctx.bound.clone())
            .unwrap_or_else(|| Host::Name("unknown".into()))
    };
    let target = match head::check(&parts, conn) {
        Ok(t) => t,
        Err(refusal) => {
            let host = audit_host(None);
            let mut rec = proxy.record(&ctx, scheme.as_str(), &host, conn.port, mode);
            rec.method = Some(parts.method.to_string());
            rec.decision = Decision::Deny;
            rec.reason = Some(refusal.reason.clone());
            rec.status = Some(refusal.status);
            proxy.inner.metrics.decision(Kind::Http, Decision::Deny);
            proxy.inner.audit.record(&rec);
            return text(
                refusal.status,
                format!("Blocked by Agent Boundary: {}\n", refusal.reason),
            );
        }
    };
    if let Host::Ip(ip) = target.host
        && pod_local::is_loopback(ip)
    {
        return pod_local_request(
            &proxy,
            &ctx,
            scheme,
            parts,
            body,
            &target,
            rules,
            client_upgrade,
        )
        .await;
    }
    let request = HttpRequest {
        host: &target.host,
        port: target.port,
        method: parts.method.as_str(),
        path: &target.path,
    };
    let verdict = rules.check_http(request);
    let mut rec = proxy.record(&ctx, scheme.as_str(), &target.host, target.port, mode);
    rec.method = Some(parts.method.to_string());
    rec.path = Some(target.path.to_string());
    let refused = if mode == Mode::Audit {
        Decision::WouldDeny
    } else {
        Decision::Deny
    };
    match &verdict {
        Verdict::Allow(rule) => name_rule(&mut rec, rule),
        Verdict::Denied { by, overrides } => {
            rec.decision = refused;
            name_rule(&mut rec, by);
            rec.reason = Some(denied_reason(by, *overrides));
        }
        Verdict::Deny(misses) => {
            rec.decision = refused;
            rec.reason = Some(deny_reason(misses));
        }
    }
    proxy.inner.metrics.decision(Kind::Http, rec.decision);
    if rec.decision == Decision::Deny {
        rec.status = Some(403);
        proxy.inner.audit.record(&rec);
        return match &verdict {
            Verdict::Denied { by, overrides } => {
                denied_page(scheme, request, by, *overrides, &proxy, &ctx)
            }
            Verdict::Deny(misses) => deny_page(scheme, request, misses, &proxy, &ctx),
            Verdict::Allow(_) => unreachable!("an allowed request is never refused"),
        };
    }
    forward(proxy, scheme, parts, body, &target, rec, client_upgrade).await
}

/// An explicit-proxy request for the pod's loopback (`GET http://127.0.0.1:PORT/...`, the landlock
/// tier's way to a pod's HTTP sidecar): decided by podLocal rules alone, like a redirected
/// pod-local connection, and audited as `pod-local` with its method and path.
#[allow(clippy::too_many_arguments)]
async fn pod_local_request(
    proxy: &Proxy,
    ctx: &ConnCtx,
    scheme: Scheme,
    parts: http::request::Parts,
    body: Incoming,
    target: &Target,
    rules: &boundary_api::rules::RuleSet,
    client_upgrade: Option<ClientUpgrade>,
) -> Response<Body> {
    let mut rec = proxy.record(
        ctx,
        pod_local::SCHEME,
        &target.host,
        target.port,
        rules.mode(),
    );
    rec.method = Some(parts.method.to_string());
    rec.path = Some(target.path.to_string());
    match pod_local::decide(rules, target.port) {
        PodLocalDecision::Allow(rule) => rec.rule = Some(rule),
        PodLocalDecision::WouldDeny(reason) => {
            rec.decision = Decision::WouldDeny;
            rec.reason = Some(reason);
        }
        PodLocalDecision::Deny(reason) => {
            proxy.inner.metrics.decision(Kind::PodLocal, Decision::Deny);
            rec.decision = Decision::Deny;
            rec.reason = Some(reason.clone());
            rec.status = Some(403);
            proxy.inner.audit.record(&rec);
            return text(403, format!("Blocked by Agent Boundary: {reason}\n"));
        }
    }
    proxy.inner.metrics.decision(Kind::PodLocal, rec.decision);
    forward(
        proxy.clone(),
        scheme,
        parts,
        body,
        target,
        rec,
        client_upgrade,
    )
    .await
}

/// A request whose framing is ambiguous (smuggling): 400, and the connection is closed.
fn refuse_framing(
    proxy: &Proxy,
    ctx: &ConnCtx,
    scheme: Scheme,
    req: &Request<Incoming>,
    why: &str,
) -> Response<Body> {
    let host = ctx
        .bound
        .clone()
        .unwrap_or_else(|| Host::Name("unknown".into()));
    let port = if ctx.port == 0 {
        scheme.default_port()
    } else {
        ctx.port
    };
    let mut rec = proxy.record(
        ctx,
        scheme.as_str(),
        &host,
        port,
        proxy.rules_for(ctx.container.as_deref()).rules.mode(),
    );
    rec.method = Some(req.method().to_string());
    rec.decision = Decision::Deny;
    rec.reason = Some(format!("ambiguous request framing: {why}"));
    rec.status = Some(400);
    proxy.inner.metrics.decision(Kind::Http, Decision::Deny);
    proxy.inner.audit.record(&rec);
    let mut resp = text(
        400,
        format!("Blocked by Agent Boundary: ambiguous request framing: {why}\n"),
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn deny_reason(misses: &[(&boundary_api::rules::Rule, Miss)]) -> String {
    if misses.is_empty() {
        "no rule allows this host".into()
    } else {
        let near: Vec<String> = misses
            .iter()
            .take(3)
            .map(|(rule, miss)| format!("{} {}", miss.describe(), rule.origin))
            .collect();
        format!("no rule allows this request ({})", near.join("; "))
    }
}

/// Why a deny rule refused a request.
fn denied_reason(by: &Rule, overrides: Option<&Rule>) -> String {
    match overrides {
        Some(allow) => format!(
            "denied by the deny rule {}, which wins over the allow rule {}",
            by.origin, allow.origin
        ),
        None => format!("denied by the deny rule {}", by.origin),
    }
}

/// The 403 page for a request a deny rule matches: the rule, and that no allow rule can let the
/// request through (so none is suggested).
fn denied_page(
    scheme: Scheme,
    req: HttpRequest<'_>,
    by: &Rule,
    overrides: Option<&Rule>,
    proxy: &Proxy,
    ctx: &ConnCtx,
) -> Response<Body> {
    let tier = ctx
        .tier
        .or(proxy.inner.tier)
        .map_or("none".into(), |t| t.to_string());
    let mut body = format!(
        "Blocked by Agent Boundary: {} {}://{}:{}{}\n\nDenied by a deny rule (mode Enforce, jail tier {tier}):\n  {}\n\n\
         A deny rule wins over every allow rule: no allow rule can let this request through.\n",
        req.method,
        scheme.as_str(),
        req.host,
        req.port,
        req.path,
        by.origin,
    );
    if let Some(allow) = overrides {
        let _ = writeln!(body, "It overrides the allow rule {}.", allow.origin);
    }
    if by.origin.cluster {
        body.push_str(
            "It is a ClusterBoundaryPolicy's rule, set by the cluster's administrators: ask them \
             if this request must be allowed.\n",
        );
    }
    let mut resp = text(403, body);
    resp.headers_mut()
        .insert("x-agent-boundary", HeaderValue::from_static("denied"));
    resp
}

/// The 403 page: what was blocked, the rules that came close, and the rules that would allow
/// it, ready to paste (Coder's hint, improved).
fn deny_page(
    scheme: Scheme,
    req: HttpRequest<'_>,
    misses: &[(&boundary_api::rules::Rule, Miss)],
    proxy: &Proxy,
    ctx: &ConnCtx,
) -> Response<Body> {
    let tier = ctx
        .tier
        .or(proxy.inner.tier)
        .map_or("none".into(), |t| t.to_string());
    let mut body = format!(
        "Blocked by Agent Boundary: {} {}://{}:{}{}\n\nNo rule allows this request (mode Enforce, jail tier {tier}).\n",
        req.method,
        scheme.as_str(),
        req.host,
        req.port,
        req.path
    );
    if !misses.is_empty() {
        body.push_str("\nRules for this host that did not match:\n");
        for (rule, miss) in misses.iter().take(5) {
            let _ = writeln!(
                body,
                "  - {}: {}",
                rule.origin,
                miss.describe().trim_end_matches(" by")
            );
        }
    }
    let suggestions = suggest(req);
    body.push_str("\nTo allow it, add one of these rules (narrowest first):\n");
    for s in &suggestions {
        let _ = writeln!(body, "  boundary run --allow \"{s}\"");
    }
    body.push_str(
        "In Kubernetes, add it to spec.allow of the BoundaryPolicy selecting this pod:\n",
    );
    let _ = writeln!(body, "  allow:\n    - \"{}\"", suggestions[0]);
    let mut resp = text(403, body);
    resp.headers_mut()
        .insert("x-agent-boundary", HeaderValue::from_static("denied"));
    resp
}

fn text(status: u16, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

async fn forward(
    proxy: Proxy,
    scheme: Scheme,
    mut parts: http::request::Parts,
    body: Incoming,
    target: &Target,
    mut rec: Record,
    client_upgrade: Option<ClientUpgrade>,
) -> Response<Body> {
    let started = Instant::now();
    let upgrading = client_upgrade.is_some();
    let uri: Uri = match format!(
        "{}://{}{}",
        scheme.as_str(),
        target.authority(scheme),
        target.path_and_query
    )
    .parse()
    {
        Ok(u) => u,
        Err(e) => {
            return finish_error(
                &proxy,
                rec,
                400,
                &format!("cannot build the upstream URI: {e}"),
            );
        }
    };
    let client_h2 = parts.version == Version::HTTP_2;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrading);
    parts.headers.remove(header::HOST);
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req_body = Counted {
        inner: body.map_err(|e| -> BoxError { Box::new(e) }),
        counter: bytes_in.clone(),
        finish: None,
    };
    let request = Request::from_parts(parts, req_body.boxed());
    // HTTP/2 upstream only for HTTP/2 clients; upgrades need HTTP/1.1.
    let client = if client_h2 && !upgrading {
        &proxy.inner.client_h2
    } else {
        &proxy.inner.client_h1
    };
    let limit = proxy.inner.upstream_timeout;
    let response = match tokio::time::timeout(limit, client.request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let failure = failure_of(&e);
            proxy.inner.metrics.upstream_error(failure.kind);
            rec.bytes_in = bytes_in.load(Ordering::Relaxed);
            return finish_error(&proxy, rec, failure.status(), &failure.message);
        }
        Err(_) => {
            proxy.inner.metrics.upstream_error(UpstreamError::Protocol);
            let reason = format!("the upstream sent no response within {} s", limit.as_secs());
            return finish_error(&proxy, rec, 504, &reason);
        }
    };
    let mut response = response;
    rec.status = Some(response.status().as_u16());
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
        (client_upgrade, response.status())
    {
        let upstream = hyper::upgrade::on(&mut response);
        match client_upgrade {
            ClientUpgrade::Hyper(client) => {
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let client = client.await.ok().map(TokioIo::new);
                    relay_upgrade(&proxy, client, upstream, rec, started).await;
                });
            }
            ClientUpgrade::Taken(exchange) => exchange.set_pending(Pending::Relay {
                upstream,
                rec,
                started,
            }),
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (mut resp_parts, resp_body) = response.into_parts();
    strip_hop_by_hop(&mut resp_parts.headers, false);
    let finish = Finish {
        proxy: proxy.clone(),
        rec: Some(rec),
        started,
        bytes_in,
        bytes_out: Arc::new(AtomicU64::new(0)),
    };
    let counter = finish.bytes_out.clone();
    let body = Counted {
        inner: resp_body.map_err(|e| -> BoxError { Box::new(e) }),
        counter,
        finish: Some(finish),
    };
    Response::from_parts(resp_parts, body.boxed())
}

/// The client's side of an upgrade the request asked for.
enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Taken(Arc<Exchange>),
}

/// Relays an upgraded connection (WebSocket) both ways and audits it when it ends.
pub(super) async fn relay_upgrade<C: AsyncRead + AsyncWrite + Unpin>(
    proxy: &Proxy,
    client: Option<C>,
    upstream: hyper::upgrade::OnUpgrade,
    mut rec: Record,
    started: Instant,
) {
    if let (Some(mut client), Ok(upstream)) = (client, upstream.await) {
        let mut upstream = TokioIo::new(upstream);
        if let Ok((up, down)) = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            super::io::RELAY_BUFFER,
            super::io::RELAY_BUFFER,
        )
        .await
        {
            rec.bytes_in = up;
            rec.bytes_out = down;
            proxy.inner.metrics.bytes(up, down);
        }
    }
    rec.duration_ms = millis(started);
    proxy.inner.audit.record(&rec);
}

/// Finds the proxy's own failure in a client error's chain.
fn failure_of(e: &hyper_util::client::legacy::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(f) = s.downcast_ref::<Failure>() {
            return f.clone();
        }
        source = s.source();
    }
    let mut message = e.to_string();
    let mut inner = std::error::Error::source(e);
    while let Some(s) = inner {
        message = format!("{message}: {s}");
        inner = s.source();
    }
    Failure {
        kind: UpstreamError::Protocol,
        message,
        timeout: false,
    }
}

fn finish_error(proxy: &Proxy, mut rec: Record, status: u16, reason: &str) -> Response<Body> {
    rec.status = Some(status);
    rec.reason = Some(match rec.reason.take() {
        Some(r) => format!("{r}; upstream: {reason}"),
        None => format!("upstream: {reason}"),
    });
    proxy.inner.audit.record(&rec);
    text(
        status,
        format!("Agent Boundary: upstream request failed: {reason}\n"),
    )
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Explicit-proxy CONNECT: allowed when some rule could allow the target (the tunnel is then
/// served like an intercepted connection to it), else 403.
fn connect(
    proxy: Proxy,
    ctx: &ConnCtx,
    mut req: Request<Incoming>,
    upgrades: &Upgrades,
) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return text(400, "CONNECT needs host:port\n".into());
    };
    let Some(port) = authority.port_u16() else {
        return text(400, "CONNECT needs host:port\n".into());
    };
    let host = match Host::parse(authority.host()) {
        Ok(h) => h,
        Err(e) => return text(400, format!("invalid CONNECT host: {e}\n")),
    };
    let resolved = proxy.rules_for(ctx.container.as_deref());
    let rules = &resolved.rules;
    let could = rules.check_tcp(&host, port).is_allow()
        || rules.check_passthrough(&host, port).is_allow()
        || rules.may_allow_http(&host, port);
    if let Host::Ip(ip) = host
        && pod_local::is_loopback(ip)
    {
        // The pod's loopback: podLocal rules alone decide; the tunnel is then served (and
        // audited) like a redirected pod-local connection.
        if let PodLocalDecision::Deny(reason) = pod_local::decide(rules, port) {
            proxy.inner.metrics.decision(Kind::PodLocal, Decision::Deny);
            let mut rec = proxy.record(ctx, pod_local::SCHEME, &host, port, rules.mode());
            rec.method = Some("CONNECT".into());
            rec.decision = Decision::Deny;
            rec.reason = Some(reason.clone());
            rec.status = Some(403);
            proxy.inner.audit.record(&rec);
            return text(403, format!("Blocked by Agent Boundary: {reason}\n"));
        }
    } else if !could && rules.mode() == Mode::Enforce {
        // Before the tunnel nothing inside it is seen: a deny rule for the host and port refuses
        // it unless requests in it could be checked one by one (an HTTP rule, no whole-host deny).
        let deny = rules
            .whole_host_deny(&host, port)
            .or_else(|| rules.deny_for(&host, port));
        let reason = match deny {
            Some(by) => format!(
                "CONNECT to {host}:{port}: denied by the deny rule {}, which no allow rule can \
                 override",
                by.origin
            ),
            None => format!("CONNECT to {host}:{port}: no rule allows this host"),
        };
        proxy.inner.metrics.decision(Kind::Tcp, Decision::Deny);
        let mut rec = proxy.record(ctx, "tcp", &host, port, rules.mode());
        if let Some(by) = deny {
            name_rule(&mut rec, by);
        }
        rec.method = Some("CONNECT".into());
        rec.decision = Decision::Deny;
        rec.reason = Some(reason.clone());
        rec.status = Some(403);
        proxy.inner.audit.record(&rec);
        return text(403, format!("Blocked by Agent Boundary: {reason}\n"));
    }
    let dest = Destination {
        dst: match host {
            Host::Ip(ip) => std::net::SocketAddr::new(ip, port),
            Host::Name(_) => unspecified(port),
        },
        name: host.name().map(str::to_owned),
        container: ctx.container.clone(),
        tier: ctx.tier,
    };
    match upgrades {
        Upgrades::Hyper => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    proxy
                        .serve_connection(Box::new(TokioIo::new(upgraded)), dest)
                        .await;
                }
            });
        }
        Upgrades::Taken(exchange) => exchange.set_pending(Pending::Tunnel(dest)),
    }
    Response::new(full(Bytes::new()))
}

/// Writes the audit record when the response body ends or is dropped.
struct Finish {
    proxy: Proxy,
    rec: Option<Record>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            rec.bytes_in = self.bytes_in.load(Ordering::Relaxed);
            rec.bytes_out = self.bytes_out.load(Ordering::Relaxed);
            rec.duration_ms = millis(self.started);
            self.proxy.inner.metrics.bytes(rec.bytes_in, rec.bytes_out);
            self.proxy.inner.audit.record(&rec);
        }
    }
}

/// A body that counts its data bytes.
struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    finish: Option<Finish>,
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter
                        .fetch_add(u64::try_from(data.len()).unwrap_or(0), Ordering::Relaxed);
                }
            }
            Poll::Ready(None | Some(Err(_))) => {
                this.finish.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
                && h.get("proxy-authorization").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");

        let mut ws = HeaderMap::new();
        ws.insert("connection", HeaderValue::from_static("Upgrade"));
        ws.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws.get("upgrade").unwrap(), "websocket");
        assert!(ws.get("connection").is_some());
    }
}
