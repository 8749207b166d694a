//! HTTP/1.1 keep-alive connections served one exchange at a time.
//!
//! hyper's HTTP/1 server holds a read buffer, a write buffer (8 KiB each) and its dispatcher for
//! as long as a connection lives, idle or not, and agents keep pools of idle connections open.
//! Here a hyper connection lives only while requests keep coming: once every response has been
//! handed on and nothing waits to be written, it is shut down at the message boundary, the
//! stream is taken back with any bytes hyper had read ahead, and the next request starts a fresh
//! one (after [`LINGER`], so that a client's next request in a burst reuses the connection). An
//! idle connection then costs only its TLS state.
//!
//! hyper hands the stream over for upgrades (WebSocket) and CONNECT only through its own
//! upgrade machinery, which needs the connection to stay inside hyper. Here the service leaves
//! what an upgrade needs in the [`Exchange`] instead (any payload `P`), and [`serve`] returns it
//! with the stream taken back, for the caller to finish. This module knows nothing of the proxy.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::io::Prefixed;
use crate::upstream::{Body, BoxError};

/// How long a connection may sit between requests before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_mins(5);

/// How long a hyper connection is kept after its last response, for the next request: a
/// keep-alive client's next one comes within it and is served without a new hyper connection
/// (its buffers, timers and state made and dropped at every request cost more than the proxy's
/// own work on a small request); a connection that stays idle longer drops to its stream.
const LINGER: Duration = Duration::from_millis(20);

/// What one client connection's service and stream wrapper tell the loop that drives it; `P`:
/// what an upgraded request leaves for the caller to finish.
pub(super) struct Exchange<P> {
    /// Requests whose service is running or whose response body hyper still holds.
    open: AtomicUsize,
    /// Requests started on this connection so far.
    started: AtomicU64,
    /// The last write to the client did not complete: hyper may hold unwritten bytes.
    write_blocked: AtomicBool,
    /// An upgrade to finish once hyper lets go of the stream.
    pending: Mutex<Option<P>>,
}

impl<P> Default for Exchange<P> {
    fn default() -> Self {
        Exchange {
            open: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            pending: Mutex::new(None),
        }
    }
}

impl<P> std::fmt::Debug for Exchange<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("started", &self.started.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P> Exchange<P> {
    /// Counts a request as open until the guard (and every clone of it) is dropped.
    pub(super) fn open(self: &Arc<Self>) -> Open<P> {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Open(self.clone())
    }

    /// Leaves an upgrade for the loop to finish after hyper has written the response.
    pub(super) fn set_pending(&self, pending: P) {
        *self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pending);
    }

    fn take_pending(&self) -> Option<P> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// At least one request since `since`, every response handed on and nothing unwritten.
    fn quiet_since(&self, since: u64) -> bool {
        self.started() > since
            && self.open.load(Ordering::Acquire) == 0
            && !self.write_blocked.load(Ordering::Relaxed)
    }
}

/// An open request (see [`Exchange::open`]).
#[derive(Debug)]
pub(super) struct Open<P>(Arc<Exchange<P>>);

impl<P> Drop for Open<P> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its request open until hyper has taken all of it.
pub(super) fn guarded<P: Send + 'static>(body: Body, open: Open<P>) -> Body {
    http_body_util::BodyExt::boxed(Guarded {
        inner: body,
        _open: open,
    })
}

struct Guarded<P> {
    inner: Body,
    _open: Open<P>,
}

impl<P> HttpBody for Guarded<P> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client stream, noting whether a write could not complete.
pub(super) struct Watched<S, P> {
    inner: S,
    exchange: Arc<Exchange<P>>,
}

/// The client stream taken back from hyper, with the bytes hyper had read ahead.
pub(super) type Taken<S, P> = Prefixed<Box<Watched<S, P>>>;

impl<S, P> Watched<S, P> {
    fn note<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.exchange
            .write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncRead + Unpin, P> AsyncRead for Watched<S, P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, P> AsyncWrite for Watched<S, P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A service for one hyper connection; `poll_without_shutdown` needs it and its futures `Unpin`.
pub(super) trait ExchangeService:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>,
    > + Unpin
{
}

impl<T> ExchangeService for T where
    T: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>,
        > + Unpin
{
}

/// Serves HTTP/1.1 on `io` until the client closes, with a fresh hyper connection per burst of
/// requests. `service` makes the service of one hyper connection; its requests must be counted
/// by [`Exchange::open`] on `exchange`. Returns what an upgraded request left pending, with the
/// stream (the response to it written), for the caller to finish; `None` once the connection
/// is over.
pub(super) async fn serve<IO, S, P>(
    io: IO,
    exchange: Arc<Exchange<P>>,
    builder: &hyper::server::conn::http1::Builder,
    service: impl Fn() -> S,
) -> Option<(P, Taken<IO, P>)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ExchangeService,
{
    // Boxed once: the stream (TLS state included) moves in and out of hyper at every exchange,
    // and each place it passes through would otherwise be a copy of it in this future.
    let mut io = Box::new(Watched {
        inner: io,
        exchange: exchange.clone(),
    });
    let mut leftover: Vec<u8> = Vec::new();
    loop {
        if leftover.is_empty() {
            // Idle: wait for the next request holding nothing but the stream.
            let mut first = [0u8; 1];
            match tokio::time::timeout(IDLE_TIMEOUT, io.read(&mut first)).await {
                Ok(Ok(1)) => leftover.push(first[0]),
                Ok(_) => return None,
                Err(_) => {
                    let _ = io.shutdown().await;
                    return None;
                }
            }
        }
        let since = exchange.started();
        // Boxed, so that the connection's state (several KiB) exists only while it is in use
        // and not as part of this future while it waits idle.
        let mut conn = Box::new(builder.serve_connection(
            TokioIo::new(Prefixed::new(std::mem::take(&mut leftover), io)),
            service(),
        ));
        // Set once hyper was shut down here at a message boundary: the stream can go on.
        let mut boundary = false;
        let mut asked = false;
        // The requests started when the connection was last seen quiet, and the end of its
        // linger from then: made at the first quiet point, moved at each later one.
        let mut quiet_at = None;
        let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let ended = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut *conn).poll_without_shutdown(cx) {
                return Poll::Ready(r);
            }
            if asked || !exchange.quiet_since(since) {
                return Poll::Pending;
            }
            let started = exchange.started();
            if quiet_at != Some(started) {
                quiet_at = Some(started);
                let until = tokio::time::Instant::now() + LINGER;
                match &mut linger {
                    Some(sleep) => sleep.as_mut().reset(until),
                    None => linger = Some(Box::pin(tokio::time::sleep_until(until))),
                }
            }
            if linger
                .as_mut()
                .is_some_and(|sleep| sleep.as_mut().poll(cx).is_pending())
            {
                return Poll::Pending;
            }
            asked = true;
            Pin::new(&mut *conn).graceful_shutdown();
            // An idle hyper connection finishes at once; one that does not was mid-exchange
            // after all and now ends when that exchange does, as hyper would have ended it.
            let polled = Pin::new(&mut *conn).poll_without_shutdown(cx);
            boundary = polled.is_ready();
            polled
        })
        .await;
        let parts = (*conn).into_parts();
        let (rest, watched) = parts.io.into_inner().into_parts();
        io = watched;
        leftover = if parts.read_buf.is_empty() {
            rest
        } else {
            [&parts.read_buf[..], &rest[..]].concat()
        };
        // Dropped with the connection when it ended in an error.
        let pending = exchange.take_pending();
        if let Err(e) = ended {
            tracing::debug!(error = %e, "client connection ended with an error");
            return None;
        }
        if let Some(pending) = pending {
            return Some((pending, Prefixed::new(leftover, io)));
        }
        if !boundary {
            // hyper ended the connection itself (the client asked to close, HTTP/1.0, a
            // framing error): close it as hyper would have.
            let _ = io.shutdown().await;
            return None;
        }
    }
}
