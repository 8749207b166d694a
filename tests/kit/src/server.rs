//! Loopback HTTP upstreams: HTTP/1.1 and h2, over TLS or plain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What a [`TestServer`] answers (status 200) to anything but `/bulk`.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `hello <method> <host> <path> <version>\n` (host from the `Host` header or the
    /// authority), so a test sees what arrived upstream.
    Echo,
    /// The same body to every request.
    Fixed(Bytes),
}

/// The size of the chunks of a `/bulk` answer.
const BULK_CHUNK: usize = 256 * 1024;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A loopback server speaking HTTP/1.1 and h2 (ALPN over TLS, prior knowledge in plain), over
/// TLS with the given config or plain. Answers a [`Reply`] (`GET /bulk?n=N` streams N filler
/// bytes, for throughput) or a handler of the test's own ([`TestServer::serving`]). Counts
/// accepted connections and requests. Stops accepting when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// A server answering [`Reply::Echo`].
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
        TestServer::answering(tls, Reply::Echo).await
    }

    /// A server answering `reply`.
    pub async fn answering(tls: Option<Arc<rustls::ServerConfig>>, reply: Reply) -> TestServer {
        TestServer::serving(tls, move |request: Request<Incoming>| {
            let response = answer(&request, &reply);
            async move {
                // The body is read first, as servers do: hyper closes a connection whose unread
                // body has not all arrived, and a proxy in between passes that on to its client
                // (an HTTP/2 reset, which Debian 12's curl fails an upload on).
                let _ = request.into_body().collect().await;
                response
            }
        })
        .await
    }

    /// A server answering with `handler` (for upstreams with routes of their own); the
    /// connection handling, TLS, protocols and counters are the same.
    pub async fn serving<F, Fut, B>(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: F,
    ) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("a bound listener's address");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (accepted, answered) = (connections.clone(), requests.clone());
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tls, handler, answered) = (tls.clone(), handler.clone(), answered.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answered.fetch_add(1, Ordering::SeqCst);
                        let response = handler(request);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            connections,
            requests,
            accepting,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn answer(request: &Request<Incoming>, reply: &Reply) -> Response<Body> {
    if request.uri().path() == "/bulk" {
        let total = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("n=")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        return Response::new(bulk(total));
    }
    let body = match reply {
        Reply::Echo => {
            let host = request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| request.uri().authority().map(ToString::to_string))
                .unwrap_or_default();
            Bytes::from(format!(
                "hello {} {} {} {:?}\n",
                request.method(),
                host,
                request.uri().path(),
                request.version()
            ))
        }
        Reply::Fixed(body) => body.clone(),
    };
    Response::new(Full::new(body).boxed())
}

/// `total` bytes of filler, streamed in chunks.
fn bulk(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'7'; BULK_CHUNK]);
    let frames = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < total).then(|| {
                let n =
                    usize::try_from(total - sent).map_or(chunk.len(), |left| left.min(chunk.len()));
                (
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..n))),
                    sent + n as u64,
                )
            })
        }
    });
    StreamBody::new(frames).boxed()
}
