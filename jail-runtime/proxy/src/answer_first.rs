//! An upstream connection whose server answered and closed while the proxy was still sending it
//! a request body: a 413, 401 or redirect sent before the upload was read, then a close (hyper's
//! server and many others do so). hyper's client stops at the first error it meets, so a write
//! failing before it had read the answer already waiting in the socket turned the server's
//! answer into a 502; a client connected directly (curl, browsers) reads the answer first. Here
//! the failed write is held back until the read side has ended (the answer read, then the
//! reset or end met) or, at the latest, for [`HOLD`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The longest a failed write waits for the answer to be read: the answer is in the socket
/// already, so this is only a bound for a client that stopped reading.
const HOLD: Duration = Duration::from_secs(1);

/// A stream whose writes that fail because the peer went away wait for the reads to end.
#[derive(Debug)]
pub struct AnswerFirst<S> {
    inner: S,
    held: Option<(io::Error, Pin<Box<Sleep>>)>,
    read_ended: bool,
    writer: Option<Waker>,
}

impl<S> AnswerFirst<S> {
    pub fn new(inner: S) -> AnswerFirst<S> {
        AnswerFirst {
            inner,
            held: None,
            read_ended: false,
            writer: None,
        }
    }

    /// Holds a write error the peer's leaving caused; passes anything else on.
    fn hold<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(Err(e))
                if !self.read_ended
                    && matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
            {
                self.held = Some((e, Box::pin(tokio::time::sleep(HOLD))));
                self.release(cx)
            }
            other => other,
        }
    }

    /// A write-side operation on the stream: the held error if there is one, else `op`'s result
    /// with a failure from the peer's leaving held.
    fn write_side<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if self.held.is_some() {
            return self.release(cx);
        }
        let polled = op(Pin::new(&mut self.inner), cx);
        self.hold(cx, polled)
    }

    /// The held error once the reads have ended or the hold is over; pending until then.
    fn release<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some((_, until)) = self.held.as_mut() else {
            return Poll::Pending;
        };
        if (self.read_ended || until.as_mut().poll(cx).is_ready())
            && let Some((e, _)) = self.held.take()
        {
            return Poll::Ready(Err(e));
        }
        self.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnswerFirst<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (room, before) = (buf.remaining(), buf.filled().len());
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let ended = match &polled {
            Poll::Ready(Ok(())) => room > 0 && buf.filled().len() == before,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if ended {
            this.read_ended = true;
            if let Some(writer) = this.writer.take() {
                writer.wake();
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnswerFirst<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_side(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_side(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().write_side(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers at once and closes with the request unread, so that the kernel
    /// resets the connection; the connection to it, wrapped.
    async fn answered_and_reset() -> AnswerFirst<tokio::net::TcpStream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 1024];
            let _ = socket.read(&mut first).await;
            socket.write_all(b"413 too large").await.unwrap();
        });
        AnswerFirst::new(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    /// Writes until a write fails; the error.
    async fn write_until_refused(mut writer: impl AsyncWrite + Unpin) -> io::Error {
        let chunk = vec![0u8; 256 * 1024];
        loop {
            if let Err(e) = writer.write_all(&chunk).await {
                return e;
            }
        }
    }

    #[tokio::test]
    async fn a_write_the_closed_peer_refused_fails_only_after_its_answer_was_read() {
        let (mut reader, writer) = tokio::io::split(answered_and_reset().await);
        let answer_read = Arc::new(AtomicBool::new(false));
        let read = answer_read.clone();
        let reading = tokio::spawn(async move {
            // The reader comes late, as hyper's does when it was busy writing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut answer = Vec::new();
            let _ = reader.read_to_end(&mut answer).await;
            read.store(true, Ordering::SeqCst);
            answer
        });
        let refused = write_until_refused(writer).await;
        assert!(
            matches!(
                refused.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{refused}"
        );
        assert!(
            answer_read.load(Ordering::SeqCst),
            "the write failed before the answer was read"
        );
        assert_eq!(reading.await.unwrap(), b"413 too large");
    }

    #[tokio::test]
    async fn a_held_write_error_comes_out_when_nothing_reads() {
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            write_until_refused(answered_and_reset().await),
        )
        .await
        .expect("the held error is released without a reader");
        assert!(
            matches!(
                refused.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{refused}"
        );
    }
}
