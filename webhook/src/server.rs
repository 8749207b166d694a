//! The HTTPS server around the decider: `POST /mutate` on a TLS listener; `/healthz`,
//! `/readyz` and `/metrics` on a plain one (kubelet probes and Prometheus need no certificate).
//!
//! The server only moves bytes: it bounds what a client may send and for how long, parses the
//! review, hands it to [`Admit`] and writes the answer. Every decision is the decider's.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower_service::Service;

use crate::metrics::{BodyRejection, ConnectionFailure, Metrics, ReviewResult};
use crate::review::{self, AdmissionRequest, AdmissionResponse, Admit};
use crate::tls::{self, CertificateReloader, TlsError};

/// Default request body limit: the apiserver stores objects of up to 3 MiB, and a review
/// carries the object and, on updates, the old object besides.
pub const DEFAULT_MAX_BODY_BYTES: usize = 7 << 20;

/// Concurrent HTTP/2 streams per connection (the apiserver multiplexes its reviews).
const MAX_H2_STREAMS: u32 = 256;
/// HTTP/2 pings find connections whose peer vanished without a FIN.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where to listen, which certificate to serve, and how much slowness and size to tolerate.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TLS listener for `POST /mutate`.
    pub https_addr: SocketAddr,
    /// The plain listener for `/healthz`, `/readyz` and `/metrics`.
    pub plain_addr: SocketAddr,
    /// PEM certificate chain (leaf first), reloaded when it changes.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf.
    pub key_file: PathBuf,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How long an HTTP/1 client may take to send a request head; also how long an idle
    /// keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body (408 beyond).
    pub body_read_timeout: Duration,
    /// How long a client may take to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How often the certificate files are compared with the served pair.
    pub cert_poll_interval: Duration,
    /// How long reviews are still served once shutdown is requested, while `/readyz` already
    /// answers 503: the time endpoints, kube-proxy and the apiserver take to stop sending new
    /// connections here.
    pub shutdown_delay: Duration,
    /// How long open requests may take to finish once the listeners are closed.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    /// HTTPS on port 8443, plain on 8080 (all interfaces), the certificate of the chart's
    /// Secret volume, 7 MiB bodies, 10 s for each of handshake, head and body, certificate
    /// polled every second, 10 s of shutdown delay and 10 s of shutdown grace.
    fn default() -> Self {
        Config {
            https_addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            plain_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            cert_file: PathBuf::from("/etc/agent-boundary/webhook-tls/tls.crt"),
            key_file: PathBuf::from("/etc/agent-boundary/webhook-tls/tls.key"),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            cert_poll_interval: Duration::from_secs(1),
            shutdown_delay: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The initial certificate/key pair does not load.
    #[error("loading the serving certificate: {0}")]
    Certificate(#[source] TlsError),
    /// rustls refused the configuration.
    #[error("building the TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// How [`Server::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished.
    Drained,
    /// Connections still open after [`Config::shutdown_grace`] were dropped.
    GraceExceeded,
}

/// Extra exposition text appended to `/metrics` (metrics of the caches, for example).
type ExtraMetrics = Box<dyn Fn(&mut String) + Send + Sync>;

/// A bound, not yet running server.
pub struct Server {
    config: Config,
    https: TcpListener,
    plain: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    certificates: CertificateReloader,
    admit: Arc<dyn Admit>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    extra_metrics: Option<ExtraMetrics>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("https", &self.https)
            .field("plain", &self.plain)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds both listeners and loads the certificate. `/readyz` answers 200 only while
    /// `ready` is true (the caller sets it once its caches are synced).
    pub async fn bind(
        config: Config,
        admit: Arc<dyn Admit>,
        ready: Arc<AtomicBool>,
    ) -> Result<Server, ServerError> {
        let provider = tls::crypto_provider();
        let certificates =
            CertificateReloader::load(&config.cert_file, &config.key_file, provider.clone())
                .map_err(ServerError::Certificate)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ServerError::Tls)?
            .with_no_client_auth()
            .with_cert_resolver(certificates.resolver());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let metrics = Arc::new(Metrics::default());
        metrics.certificate_expiry(certificates.expiry());
        Ok(Server {
            https: listen(config.https_addr).await?,
            plain: listen(config.plain_addr).await?,
            config,
            tls: Arc::new(tls),
            certificates,
            admit,
            ready,
            metrics,
            extra_metrics: None,
        })
    }

    /// Appends `render`'s output to every `/metrics` answer.
    #[must_use]
    pub fn with_extra_metrics(
        mut self,
        render: impl Fn(&mut String) + Send + Sync + 'static,
    ) -> Self {
        self.extra_metrics = Some(Box::new(render));
        self
    }

    /// The bound HTTPS address (the real port when the configured one was 0).
    pub fn https_addr(&self) -> SocketAddr {
        self.https.local_addr().unwrap_or(self.config.https_addr)
    }

    /// The bound plain address.
    pub fn plain_addr(&self) -> SocketAddr {
        self.plain.local_addr().unwrap_or(self.config.plain_addr)
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` completes, then shuts down without refusing a review:
    ///
    /// 1. `/readyz` answers 503 at once, so the pod leaves the Service's endpoints, while
    ///    reviews are still served, on open and new connections, for [`Config::shutdown_delay`]
    ///    (until endpoints, kube-proxy and the apiserver have stopped sending them here);
    /// 2. the listeners close, idle connections are closed (HTTP/1 at once, HTTP/2 with
    ///    GOAWAY) and answers of open requests carry `Connection: close`, so clients reconnect
    ///    to another replica;
    /// 3. open requests get [`Config::shutdown_grace`] to finish; the rest are dropped.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Stopped {
        let reloader = tokio::spawn(
            self.certificates
                .run(self.config.cert_poll_interval, self.metrics.clone()),
        );
        let state = Arc::new(AppState {
            admit: self.admit,
            ready: self.ready,
            shutting_down: AtomicBool::new(false),
            metrics: self.metrics.clone(),
            extra_metrics: self.extra_metrics,
            max_body_bytes: self.config.max_body_bytes,
            body_read_timeout: self.config.body_read_timeout,
        });
        let graceful = GracefulShutdown::new();
        let mut listeners = Listeners {
            https: self.https,
            plain: self.plain,
            connections: Connections {
                acceptor: tokio_rustls::TlsAcceptor::from(self.tls),
                mutate: mutate_router(state.clone()),
                probes: probe_router(state.clone()),
                metrics: self.metrics,
                tls_handshake_timeout: self.config.tls_handshake_timeout,
                header_read_timeout: self.config.header_read_timeout,
            },
            tasks: JoinSet::new(),
        };
        listeners.accept_until(&graceful, shutdown).await;

        state.shutting_down.store(true, Ordering::Release);
        tracing::info!(
            delay = ?self.config.shutdown_delay,
            "shutdown requested: /readyz answers 503; reviews are still served until the delay \
             ends (time for endpoints and proxies to stop sending them here)"
        );
        listeners
            .accept_until(&graceful, tokio::time::sleep(self.config.shutdown_delay))
            .await;
        let Listeners {
            https,
            plain,
            mut tasks,
            ..
        } = listeners;
        drop((https, plain));

        tracing::info!(
            connections = graceful.count(),
            grace = ?self.config.shutdown_grace,
            "shutdown delay over: no new connections; closing idle ones, finishing open requests"
        );
        let drained = tokio::time::timeout(self.config.shutdown_grace, graceful.shutdown()).await;
        let stopped = if drained.is_ok() {
            tracing::info!("every open request finished; webhook server stopped");
            Stopped::Drained
        } else {
            tasks.shutdown().await;
            tracing::warn!(
                grace = ?self.config.shutdown_grace,
                "open requests did not finish within the shutdown grace; dropped them"
            );
            Stopped::GraceExceeded
        };
        reloader.abort();
        stopped
    }
}

/// Both listeners, what their connections need, and the connections' tasks (so that those
/// still open after the shutdown grace can be ended).
struct Listeners {
    https: TcpListener,
    plain: TcpListener,
    connections: Connections,
    tasks: JoinSet<()>,
}

impl Listeners {
    /// Accepts and serves connections, each watched by `graceful`, until `until` completes.
    async fn accept_until(&mut self, graceful: &GracefulShutdown, until: impl Future<Output = ()>) {
        let mut until = pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return,
                accepted = self.https.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.tasks.spawn(self.connections.clone().serve_tls(stream, peer, graceful.watcher()));
                    }
                    Err(e) => accept_failed(&e).await,
                },
                accepted = self.plain.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.tasks.spawn(self.connections.clone().serve_plain(stream, peer, graceful.watcher()));
                    }
                    Err(e) => accept_failed(&e).await,
                },
                // Ended connections are reaped so the set holds only open ones.
                Some(_) = self.tasks.join_next() => {}
            }
        }
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

async fn accept_failed(error: &std::io::Error) {
    tracing::warn!(error = %error, "accepting a connection failed");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// What each connection task needs.
#[derive(Clone)]
struct Connections {
    acceptor: tokio_rustls::TlsAcceptor,
    mutate: Router,
    probes: Router,
    metrics: Arc<Metrics>,
    tls_handshake_timeout: Duration,
    header_read_timeout: Duration,
}

impl Connections {
    async fn serve_tls(self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let _ = stream.set_nodelay(true);
        let tls = match tokio::time::timeout(
            self.tls_handshake_timeout,
            self.acceptor.accept(stream),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics
                    .connection_failed(ConnectionFailure::TlsHandshake);
                // A bare TCP connect (a port check) ends before any ClientHello: not news.
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                } else {
                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                self.metrics
                    .connection_failed(ConnectionFailure::TlsHandshakeTimeout);
                tracing::info!(%peer, timeout = ?self.tls_handshake_timeout, "TLS handshake timed out");
                return;
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let service = PeerService {
            router: self.mutate.clone(),
            peer,
        };
        let io = TokioIo::new(tls);
        let result = if h2 {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_H2_STREAMS)
                .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
            watcher.watch(builder.serve_connection(io, service)).await
        } else {
            watcher
                .watch(self.http1().serve_connection(io, service))
                .await
        };
        self.connection_ended(peer, result);
    }

    async fn serve_plain(self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let _ = stream.set_nodelay(true);
        let service = PeerService {
            router: self.probes.clone(),
            peer,
        };
        let result = watcher
            .watch(self.http1().serve_connection(TokioIo::new(stream), service))
            .await;
        self.connection_ended(peer, result);
    }

    fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true);
        builder
    }

    fn connection_ended(&self, peer: SocketAddr, result: Result<(), hyper::Error>) {
        match result {
            Ok(()) => {}
            Err(e) if e.is_timeout() => {
                self.metrics
                    .connection_failed(ConnectionFailure::HeaderTimeout);
                tracing::info!(%peer, "client took too long to send a request head; closed");
            }
            Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        }
    }
}

/// The peer of a request, for logs.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// A router as a hyper service that tags each request with its peer.
#[derive(Clone)]
struct PeerService {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PeerService {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(Peer(self.peer));
        self.router.clone().call(request)
    }
}

/// What the handlers share.
struct AppState {
    admit: Arc<dyn Admit>,
    ready: Arc<AtomicBool>,
    /// Set once shutdown is requested: `/readyz` answers 503 from then on.
    shutting_down: AtomicBool,
    metrics: Arc<Metrics>,
    extra_metrics: Option<ExtraMetrics>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
}

fn mutate_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(mutate).fallback(|| async { method_not_allowed("POST") }),
        )
        .fallback(not_found)
        .with_state(state)
}

fn probe_router(state: Arc<AppState>) -> Router {
    let only_get = || async { method_not_allowed("GET") };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }).fallback(only_get))
        .route("/readyz", get(readyz).fallback(only_get))
        .route("/metrics", get(metrics).fallback(only_get))
        .fallback(not_found)
        .with_state(state)
}

/// `{"error": message}` with `status`.
fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn method_not_allowed(allowed: &'static str) -> Response {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allowed}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

async fn not_found(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", request.uri().path()),
    )
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Acquire) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: still answering reviews until the shutdown delay ends\n",
        )
            .into_response()
    } else if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    if let Some(extra) = &state.extra_metrics {
        extra(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Counts a review request as in flight until dropped (also when the client goes away and
/// the handler is cancelled).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.in_flight(1);
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight(-1);
    }
}

/// Why a body was not read to the end.
enum BodyError {
    TooLarge,
    Read(axum::Error),
}

async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::start(&state.metrics);
    let peer = request.extensions().get::<Peer>().map(|p| p.0);
    // An HTTP/1 connection is closed after a body too large or too slow: its rest may still
    // be on the way, and reading it is what the limits are there to avoid.
    let http1 = request.version() <= Version::HTTP_11;
    let refuse = |reason: BodyRejection, status: StatusCode, message: String| {
        state.metrics.body_rejected(reason);
        tracing::warn!(peer = ?peer, status = status.as_u16(), error = %message, "review request refused");
        let mut response = error_response(status, message);
        if http1 && matches!(reason, BodyRejection::TooLarge | BodyRejection::Timeout) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    };
    if !is_json(request.headers().get(header::CONTENT_TYPE)) {
        return refuse(
            BodyRejection::ContentType,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be an AdmissionReview with content-type application/json".into(),
        );
    }
    let limit = state.max_body_bytes;
    let too_large = || format!("the body is larger than the limit of {limit} bytes");
    let body = request.into_body();
    // A declared length over the limit is refused before reading anything.
    if body.size_hint().lower() > limit as u64 {
        return refuse(
            BodyRejection::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            too_large(),
        );
    }
    let body = match tokio::time::timeout(state.body_read_timeout, read_body(body, limit)).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => {
            return refuse(
                BodyRejection::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                too_large(),
            );
        }
        Ok(Err(BodyError::Read(e))) => {
            return refuse(
                BodyRejection::ReadError,
                StatusCode::BAD_REQUEST,
                format!("reading the body failed: {e}"),
            );
        }
        Err(_) => {
            return refuse(
                BodyRejection::Timeout,
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms",
                    state.body_read_timeout.as_millis()
                ),
            );
        }
    };
    let request = match review::parse(&body) {
        Ok(request) => request,
        Err(e) => {
            state
                .metrics
                .review(ReviewResult::BadRequest, started.elapsed());
            tracing::warn!(peer = ?peer, error = %e, "review request is not an AdmissionReview");
            return error_response(StatusCode::BAD_REQUEST, e);
        }
    };
    drop(body);
    // A panicking decider is a bug, but one review must not take the webhook down with it.
    let admit = &state.admit;
    let decided = AssertUnwindSafe(admit.admit_async(&request)).catch_unwind();
    match decided.await {
        Ok(response) => answer(&state.metrics, &request, &response, started),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            state.metrics.review(ReviewResult::Error, started.elapsed());
            tracing::error!(
                uid = %request.uid,
                namespace = request.namespace.as_deref().unwrap_or_default(),
                name = %request.object_name(),
                panic = %what,
                "the decider panicked on a review"
            );
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the webhook failed on review {} (a bug; see the webhook's log)",
                    request.uid
                ),
            )
        }
    }
}

/// Reads a body up to `limit` bytes; stops at the first byte beyond it.
async fn read_body(mut body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
    // Sized from the declared length, not beyond the limit, and not more than 64 KiB up front
    // (a client can declare anything).
    let mut buffer = Vec::with_capacity(declared.min(limit).min(64 << 10));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer)
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Logs and counts the decider's answer and serialises it.
fn answer(
    metrics: &Metrics,
    request: &AdmissionRequest,
    response: &AdmissionResponse,
    started: Instant,
) -> Response {
    let patched = response.allowed && response.patch.is_some();
    let result = match (response.allowed, patched) {
        (true, true) => ReviewResult::Patched,
        (true, false) => ReviewResult::Allowed,
        (false, _) => ReviewResult::Denied,
    };
    let elapsed = started.elapsed();
    // Only a patched pod was jailed; its row is in the audit annotation the decider set.
    let jailed_tier = patched
        .then(|| {
            response
                .audit_annotations
                .get(crate::admit::AUDIT_TIER)
                .cloned()
        })
        .flatten();
    let name = response
        .object_name
        .as_deref()
        .map_or_else(|| Cow::Owned(request.object_name()), Cow::Borrowed);
    tracing::info!(
        uid = %request.uid,
        namespace = request.namespace.as_deref().unwrap_or_default(),
        name = %name,
        operation = %request.operation,
        kind = %request.kind.kind,
        dry_run = request.dry_run.unwrap_or(false),
        allowed = response.allowed,
        patched,
        warnings = ?response.warnings,
        denial = response.status.as_ref().map(|s| s.message.as_str()).unwrap_or_default(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        audit = ?response.audit_annotations,
        "review"
    );
    let body = match response.to_review_json() {
        Ok(body) => body,
        // Not expected: a response is strings, booleans and maps.
        Err(e) => {
            metrics.review(ReviewResult::Error, elapsed);
            tracing::error!(uid = %request.uid, error = %e, "serialising a review response failed");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "serialising the response failed",
            );
        }
    };
    metrics.review(result, elapsed);
    if let Some(tier) = jailed_tier {
        metrics.jailed(&tier);
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
