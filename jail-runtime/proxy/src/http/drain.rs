//! A client's request body that is read to its end, and thrown away, when the proxy stops
//! reading it early: a denied upload, an upstream that answered before reading it (413, 401, a
//! redirect), an upstream that went away. Without it, hyper resets the client's stream
//! (HTTP/2 `RST_STREAM`, on which Debian 12's curl fails an upload with error 92 after the whole
//! answer arrived) or closes an HTTP/1.1 connection with unread bytes, whose TCP reset can take
//! the answer with it. Servers do the same (nginx's lingering close, Go's post-handler read);
//! the reading is bounded so that a client cannot keep the proxy reading for ever.
//!
//! Not for a client that asked for `100-continue` and was not told to go on: after a final answer
//! it need not send its body (RFC 9110 §10.1.1), and reading one would take its next request for
//! body bytes; hyper closes such a connection instead. Once the body has been read from, hyper has
//! sent the `100 Continue` and the client is sending, so the rest is drained as for any other.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// At most this much of a body is read after the proxy stopped using it.
const LIMIT_BYTES: u64 = 64 << 20;
/// For at most this long.
const LIMIT_TIME: Duration = Duration::from_secs(10);

/// A request body that drains what is left of it when dropped before its end.
pub(super) struct DrainedOnDrop {
    inner: Option<Incoming>,
    expects_continue: bool,
    /// Read from at least once: a client that expected `100-continue` has been told to send.
    read_from: bool,
}

impl DrainedOnDrop {
    /// `body`, drained when dropped early unless the request's `headers` expect `100-continue`
    /// and it was never read from.
    pub(super) fn new(body: Incoming, headers: &HeaderMap) -> DrainedOnDrop {
        let expects_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        DrainedOnDrop {
            inner: Some(body),
            expects_continue,
            read_from: false,
        }
    }
}

impl HttpBody for DrainedOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.read_from = true;
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for DrainedOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if (self.expects_continue && !self.read_from) || body.is_end_stream() {
            return;
        }
        // Dropped outside a runtime (nothing in the proxy does): the stream is reset as before.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(drain(body));
    }
}

/// Reads `body` to its end within the limits; what it read is counted nowhere and sent nowhere.
async fn drain(mut body: Incoming) {
    let mut read = 0u64;
    let reading = async {
        // An error ends it as well: the client went away.
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > LIMIT_BYTES {
                return false;
            }
        }
        true
    };
    if !tokio::time::timeout(LIMIT_TIME, reading)
        .await
        .unwrap_or(false)
    {
        tracing::debug!(
            read,
            "stopped reading a request body the proxy no longer needed"
        );
    }
}
