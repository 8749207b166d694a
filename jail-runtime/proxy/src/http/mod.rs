//! HTTP inside a connection (plain or intercepted TLS; HTTP/1.1 keep-alive and HTTP/2): every
//! request is checked, audited, and forwarded with bodies streamed both ways, trailers and
//! upgrades (WebSocket) included, or answered 403 with the rule that would allow it (or the deny
//! rule that refused it, which no allow rule can override).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use boundary_api::rules::{Host, HttpRequest, Miss, Rule, suggest};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

mod drain;
mod secretless;

use drain::DrainedOnDrop;
use secretless::{body_leak, redact_entry, refuse_body_leak, with_credentials};

use crate::Proxy;
use crate::audit::{Decision, Entry};
use crate::context::ConnCtx;
use crate::credentials::scan::LeakSlot;
use crate::decide::{self, Connect, Page, Request as Verdict, Ruling};
use crate::framing::{Audited, Framing};
use crate::head::{self, Scheme, Target};
use crate::io::BoxIo;
use crate::keepalive::{self, Exchange};
use crate::metrics::{Kind, UpstreamError};
use crate::pod_local;
use crate::policy::Resolved;
use crate::upstream::{Body, BoxError, Failure};
use crate::wire::Destination;

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
            let taken = Box::pin(keepalive::serve(io, exchange, &http1_builder(), make)).await;
            match taken {
                Some((Pending::Relay { upstream, entry }, client)) => {
                    // Boxed: rare, and large enough to double every idle connection's size.
                    Box::pin(relay_upgrade(&proxy, Some(client), upstream, *entry)).await;
                }
                Some((Pending::Tunnel(dest), client)) => {
                    spawn_tunnel(proxy.clone(), Box::new(client), dest);
                }
                None => {}
            }
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

/// Serves a CONNECT tunnel as a connection of its own. Not `async`: spawning from inside the
/// connection's own future would make its type depend on itself.
fn spawn_tunnel(proxy: Proxy, client: BoxIo, dest: Destination) {
    tokio::spawn(async move { proxy.serve_connection(client, dest).await });
}

/// The rest of an upgraded request, done with the stream the keep-alive loop takes back.
enum Pending {
    /// Relay to the upstream's upgraded connection (WebSocket and other `Upgrade`s).
    Relay {
        upstream: hyper::upgrade::OnUpgrade,
        entry: Box<Entry>,
    },
    /// Serve the stream as a new connection to this destination (CONNECT).
    Tunnel(Destination),
}

/// How the client's side of an upgrade (WebSocket, CONNECT) is obtained.
#[derive(Clone)]
enum Upgrades {
    /// From hyper (`hyper::upgrade::on`), for connections hyper keeps to the end.
    Hyper,
    /// Taken back from hyper by the keep-alive loop, finished by [`serve`].
    Taken(Arc<Exchange<Pending>>),
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

/// Every header field line of a request, for the rule engine's header conditions: a header sent
/// several times is there several times (HTTP/1.1 and h2 alike).
fn header_fields(headers: &hyper::HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect()
}

/// The facts of a request the rule engine decides on: destination, method, normalised path,
/// header fields and raw query.
fn engine_request<'a>(
    target: &'a Target,
    parts: &'a http::request::Parts,
    headers: &'a [(&'a str, &'a [u8])],
) -> HttpRequest<'a> {
    HttpRequest {
        host: &target.host,
        port: target.port,
        method: parts.method.as_str(),
        path: &target.path,
        headers,
        query: parts.uri.query(),
    }
}

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
    let body = DrainedOnDrop::new(body, &parts.headers);
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
    let target = match head::check(&parts, conn) {
        Ok(t) => t,
        Err(refusal) => {
            let host = ctx.bound.clone().unwrap_or_else(unknown_host);
            let mut entry = proxy.entry(&ctx, scheme.as_str(), &host, conn.port, mode);
            entry.method = Some(parts.method.to_string());
            entry.rule_on(&Ruling::deny(refusal.reason.clone(), None));
            entry.status = Some(refusal.status);
            proxy.metrics().decision(Kind::Http, Decision::Deny);
            return text(
                refusal.status,
                format!("Blocked by Agent Boundary: {}\n", refusal.reason),
            );
        }
    };
    let headers = header_fields(&parts.headers);
    let request = engine_request(&target, &parts, &headers);
    // The pod's loopback (`GET http://127.0.0.1:PORT/...`, the landlock tier's way to a pod's
    // HTTP sidecar) is decided by podLocal rules alone and audited as `pod-local`.
    let (audit_scheme, kind) = if decide::is_pod_local_request(&target.host) {
        (pod_local::SCHEME, Kind::PodLocal)
    } else {
        (scheme.as_str(), Kind::Http)
    };
    let mut entry = proxy.entry(&ctx, audit_scheme, &target.host, target.port, mode);
    entry.method = Some(parts.method.to_string());
    entry.path = Some(target.path.to_string());
    let credentials = resolved.credentials.clone();
    let values = proxy.credential_values();
    redact_entry(&mut entry, &credentials, &values);
    match decide::request(rules, request) {
        Verdict::Forward(ruling) => {
            entry.rule_on(&ruling);
            let body: Body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed();
            let request = Outgoing {
                parts,
                target,
                body,
                leak: None,
            };
            let allowed = ruling.decision == Decision::Allow;
            let request = if credentials.is_empty() {
                request
            } else {
                let scan = (&*credentials, &*values);
                let refused =
                    with_credentials(&proxy, &mut entry, kind, scheme, allowed, scan, request);
                match refused.await {
                    Ok(r) => r,
                    Err(refused) => return *refused,
                }
            };
            proxy.metrics().decision(kind, ruling.decision);
            forward(proxy, &resolved, scheme, request, entry, client_upgrade).await
        }
        Verdict::Deny { ruling, page } => {
            entry.rule_on(&ruling);
            entry.status = Some(403);
            proxy.metrics().decision(kind, Decision::Deny);
            let tier = proxy.tier_of(&ctx);
            match page {
                Page::DenyRule { by, overrides } => {
                    denied_page(scheme, request, by, overrides, tier)
                }
                Page::NoRule(misses) => deny_page(scheme, request, &misses, tier),
                Page::Reason => text(
                    403,
                    format!(
                        "Blocked by Agent Boundary: {}\n",
                        ruling.reason.unwrap_or_default()
                    ),
                ),
            }
        }
    }
}

/// A request on its way upstream.
struct Outgoing {
    parts: http::request::Parts,
    target: Target,
    body: Body,
    /// Where the body scanner puts a leak it finds.
    leak: Option<Arc<LeakSlot>>,
}

fn unknown_host() -> Host {
    Host::Name("unknown".into())
}

/// A request whose framing is ambiguous (smuggling): 400, and the connection is closed.
fn refuse_framing(
    proxy: &Proxy,
    ctx: &ConnCtx,
    scheme: Scheme,
    req: &Request<Incoming>,
    why: &str,
) -> Response<Body> {
    let host = ctx.bound.clone().unwrap_or_else(unknown_host);
    let port = if ctx.port == 0 {
        scheme.default_port()
    } else {
        ctx.port
    };
    let mode = proxy.rules_for(ctx.container.as_deref()).rules.mode();
    let mut entry = proxy.entry(ctx, scheme.as_str(), &host, port, mode);
    entry.method = Some(req.method().to_string());
    entry.rule_on(&Ruling::deny(
        format!("ambiguous request framing: {why}"),
        None,
    ));
    entry.status = Some(400);
    proxy.metrics().decision(Kind::Http, Decision::Deny);
    let mut resp = text(
        400,
        format!("Blocked by Agent Boundary: ambiguous request framing: {why}\n"),
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The 403 page for a request a deny rule matches: the rule, and that no allow rule can let the
/// request through (so none is suggested).
fn denied_page(
    scheme: Scheme,
    req: HttpRequest<'_>,
    by: &Rule,
    overrides: Option<&Rule>,
    tier: Option<boundary_api::Tier>,
) -> Response<Body> {
    let tier = tier.map_or("none".into(), |t| t.to_string());
    let mut body = format!(
        "Blocked by Agent Boundary: {} {}://{}:{}{}\n\nDenied by a deny rule (mode Enforce, jail tier {tier}):\n  {}\n\n\
         A deny rule wins over every allow rule: no allow rule can let this request through.\n",
        req.method,
        scheme.as_str(),
        req.host,
        req.port,
        req.path,
        by.origin(),
    );
    if let Some(allow) = overrides {
        let _ = writeln!(body, "It overrides the allow rule {}.", allow.origin());
    }
    if by.origin().cluster {
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
    misses: &[(&Rule, Miss)],
    tier: Option<boundary_api::Tier>,
) -> Response<Body> {
    let tier = tier.map_or("none".into(), |t| t.to_string());
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
                rule.origin(),
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
    resolved: &Resolved,
    scheme: Scheme,
    request: Outgoing,
    mut entry: Entry,
    client_upgrade: Option<ClientUpgrade>,
) -> Response<Body> {
    let Outgoing {
        mut parts,
        target,
        body,
        leak,
    } = request;
    let target = &target;
    entry.start_clock();
    let upgrading = client_upgrade.is_some();
    let uri = match upstream_uri(scheme, target) {
        Ok(u) => u,
        Err(reason) => return finish_error(entry, 400, &reason),
    };
    let client_h2 = parts.version == Version::HTTP_2;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrading);
    parts.headers.remove(header::HOST);
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req_body = Counted {
        inner: body,
        counter: bytes_in.clone(),
        finish: None,
    };
    let request = Request::from_parts(parts, req_body.boxed());
    // HTTP/2 upstream only for HTTP/2 clients; upgrades need HTTP/1.1.
    let client = proxy.http_client(resolved, client_h2 && !upgrading);
    let limit = proxy.upstream_timeout();
    let response = match tokio::time::timeout(limit, client.request(request)).await {
        Ok(Ok(r)) => r,
        // The body scanner stopped the request: nothing with the needle went out.
        Ok(Err(_)) if let Some(refused) = body_leak(&proxy, &mut entry, leak.as_deref()) => {
            entry.bytes_in = bytes_in.load(Ordering::Relaxed);
            return refused;
        }
        Ok(Err(e)) => {
            let failure = failure_of(&e);
            proxy.metrics().upstream_error(failure.kind);
            entry.bytes_in = bytes_in.load(Ordering::Relaxed);
            if failure.kind == UpstreamError::Guard {
                return guard_refused(entry, &failure.message);
            }
            return finish_error(entry, failure.status(), &failure.message);
        }
        Err(_) => {
            if let Some(refused) = body_leak(&proxy, &mut entry, leak.as_deref()) {
                return refused;
            }
            proxy.metrics().upstream_error(UpstreamError::Protocol);
            let reason = format!("the upstream sent no response within {} s", limit.as_secs());
            return finish_error(entry, 504, &reason);
        }
    };
    let mut response = response;
    entry.status = Some(response.status().as_u16());
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
        (client_upgrade, response.status())
    {
        if let Some(refused) = body_leak(&proxy, &mut entry, leak.as_deref()) {
            return refused;
        }
        let upstream = hyper::upgrade::on(&mut response);
        match client_upgrade {
            ClientUpgrade::Hyper(client) => {
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let client = client.await.ok().map(TokioIo::new);
                    relay_upgrade(&proxy, client, upstream, entry).await;
                });
            }
            ClientUpgrade::Taken(exchange) => {
                exchange.set_pending(Pending::Relay {
                    upstream,
                    entry: Box::new(entry),
                });
            }
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (mut resp_parts, resp_body) = response.into_parts();
    strip_hop_by_hop(&mut resp_parts.headers, false);
    let finish = Finish {
        proxy: proxy.clone(),
        entry,
        bytes_in,
        bytes_out: Arc::new(AtomicU64::new(0)),
        leak,
    };
    let counter = finish.bytes_out.clone();
    let body = Counted {
        inner: resp_body.map_err(|e| -> BoxError { Box::new(e) }),
        counter,
        finish: Some(finish),
    };
    Response::from_parts(resp_parts, body.boxed())
}

/// Where the request goes: the checked target, with the query as sent (credentials in).
fn upstream_uri(scheme: Scheme, target: &Target) -> Result<Uri, String> {
    // Written into one string of the right size, which the URI then keeps: one allocation on
    // every request's path rather than a few.
    let host = match &target.host {
        Host::Name(name) => name.len(),
        Host::Ip(_) => "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]".len(),
    };
    let mut uri = String::with_capacity(
        "https://".len() + host + ":65535".len() + target.path_and_query.len(),
    );
    uri.push_str(scheme.as_str());
    uri.push_str("://");
    target.write_authority(scheme, &mut uri);
    uri.push_str(&target.path_and_query);
    Uri::try_from(uri).map_err(|e| format!("cannot build the upstream URI: {e}"))
}

/// The client's side of an upgrade the request asked for.
enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Taken(Arc<Exchange<Pending>>),
}

/// Relays an upgraded connection (WebSocket) both ways and audits it when it ends.
async fn relay_upgrade<C: AsyncRead + AsyncWrite + Unpin>(
    proxy: &Proxy,
    client: Option<C>,
    upstream: hyper::upgrade::OnUpgrade,
    mut entry: Entry,
) {
    if let (Some(mut client), Ok(upstream)) = (client, upstream.await) {
        let mut upstream = TokioIo::new(upstream);
        if let Ok((up, down)) = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            crate::io::RELAY_BUFFER,
            crate::io::RELAY_BUFFER,
        )
        .await
        {
            entry.bytes_in = up;
            entry.bytes_out = down;
            proxy.metrics().bytes(up, down);
        }
    }
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

/// The client's answer when the private-address guard refused every address of the target: a
/// 403 saying which address, its range, and how to allow it; audited as a denial.
fn guard_refused(mut entry: Entry, reason: &str) -> Response<Body> {
    entry.refused_by_guard();
    entry.status = Some(403);
    entry.reason = Some(reason.to_owned());
    text(403, format!("Blocked by Agent Boundary: {reason}\n"))
}

/// The client's answer when the upstream failed; the entry is written with it.
fn finish_error(mut entry: Entry, status: u16, reason: &str) -> Response<Body> {
    entry.status = Some(status);
    entry.reason = Some(match entry.reason.take() {
        Some(r) => format!("{r}; upstream: {reason}"),
        None => format!("upstream: {reason}"),
    });
    text(
        status,
        format!("Agent Boundary: upstream request failed: {reason}\n"),
    )
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
    if let Connect::Refuse { ruling, pod_local } = decide::connect(rules, &host, port) {
        let (scheme, kind) = if pod_local {
            (pod_local::SCHEME, Kind::PodLocal)
        } else {
            ("tcp", Kind::Tcp)
        };
        proxy.metrics().decision(kind, Decision::Deny);
        let mut entry = proxy.entry(ctx, scheme, &host, port, rules.mode());
        entry.method = Some("CONNECT".into());
        entry.rule_on(&ruling);
        entry.status = Some(403);
        let reason = ruling.reason.unwrap_or_default();
        return text(403, format!("Blocked by Agent Boundary: {reason}\n"));
    }
    let dest = Destination {
        dst: match host {
            Host::Ip(ip) => SocketAddr::new(ip, port),
            // Known only by name.
            Host::Name(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
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

/// Completes the audit entry (bytes both ways) when the response body ends or is dropped; the
/// entry is written as it drops with this.
struct Finish {
    proxy: Proxy,
    entry: Entry,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    /// A leak the body scanner found after the upstream had answered.
    leak: Option<Arc<LeakSlot>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(found) = self.leak.as_ref().and_then(|slot| slot.close()) {
            let host = self.entry.host.clone();
            let (port, status) = (self.entry.port, self.entry.status);
            let _ = refuse_body_leak(&self.proxy, &mut self.entry, found, &host, port);
            // The upstream's answer had started: its status is what the client got (cut short).
            self.entry.status = status;
        }
        self.entry.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.entry.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        self.proxy
            .metrics()
            .bytes(self.entry.bytes_in, self.entry.bytes_out);
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

    #[test]
    fn the_upstream_uri_names_the_checked_host_port_and_the_path_as_sent() {
        let long = format!("{0}.{0}.{0}.{0}", "a".repeat(60));
        for (host, port, path_and_query, scheme, uri) in [
            (
                "api.github.com",
                443,
                "/repos?page=2",
                Scheme::Https,
                "https://api.github.com/repos?page=2".to_owned(),
            ),
            (
                "api.github.com",
                8443,
                "/",
                Scheme::Https,
                "https://api.github.com:8443/".to_owned(),
            ),
            (
                "example.com",
                443,
                "/x",
                Scheme::Http,
                "http://example.com:443/x".to_owned(),
            ),
            (
                "10.1.2.3",
                80,
                "/a%2Fb?q=%20",
                Scheme::Http,
                "http://10.1.2.3/a%2Fb?q=%20".to_owned(),
            ),
            (
                "::ffff:10.1.2.3",
                8080,
                "/",
                Scheme::Http,
                "http://10.1.2.3:8080/".to_owned(),
            ),
            (
                "[2001:db8::1]",
                65535,
                "/v1",
                Scheme::Https,
                "https://[2001:db8::1]:65535/v1".to_owned(),
            ),
            (
                long.as_str(),
                65535,
                "/",
                Scheme::Https,
                format!("https://{long}:65535/"),
            ),
        ] {
            let target = Target {
                host: Host::parse(host).unwrap(),
                port,
                path: boundary_api::rules::RequestPath::parse(path_and_query).unwrap(),
                path_and_query: path_and_query.to_owned(),
            };
            let built = upstream_uri(scheme, &target).unwrap();
            assert_eq!(built.to_string(), uri);
            assert_eq!(built, uri.parse::<Uri>().unwrap());
        }
    }
}
