//! Stream plumbing: boxed streams, replaying bytes already read, and relaying.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::socket_relay;

/// Any client stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The stream's concrete type, for [`relay`] to find a plain socket under the box.
    fn as_any(&self) -> &dyn Any;
    /// The stream itself, once [`Io::as_any`] showed what it is.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A boxed client stream.
pub type BoxIo = Box<dyn Io>;

/// A stream that first yields bytes already read from it (sniffed for TLS or HTTP).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix`, then reads from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }

    /// The bytes not replayed yet, and the stream.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.at);
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Buffer per direction of a relay: tokio's default (8 KiB) costs a system call per 8 KiB of
/// bulk transfers; 64 KiB keeps them rare without much memory per connection.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// A client stream that is a plain socket (with bytes read from it not replayed yet): a relay
/// can splice it ([`socket_relay`]).
enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The plain socket under `client` and the bytes to send before its own, or `client` as it was.
fn plain(client: BoxIo) -> Result<(Vec<u8>, Plain), BoxIo> {
    // `<dyn Io>::as_any`, not the box's own (a `Box<dyn Io>` is an `Io` too).
    let any = <dyn Io>::as_any(&*client);
    if any.is::<TcpStream>() {
        Ok((Vec::new(), Plain::Tcp(downcast(client))))
    } else if any.is::<UnixStream>() {
        Ok((Vec::new(), Plain::Unix(downcast(client))))
    } else if any.is::<Prefixed<TcpStream>>() {
        let (rest, socket) = downcast::<Prefixed<TcpStream>>(client).into_parts();
        Ok((rest, Plain::Tcp(socket)))
    } else if any.is::<Prefixed<UnixStream>>() {
        let (rest, socket) = downcast::<Prefixed<UnixStream>>(client).into_parts();
        Ok((rest, Plain::Unix(socket)))
    } else {
        Err(client)
    }
}

/// `client` as the `T` [`Io::as_any`] just said it is.
fn downcast<T: 'static>(client: BoxIo) -> T {
    *client
        .into_any()
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("the type was checked"))
}

/// Relays until both sides are done; returns (bytes from the client, bytes to the client).
/// A plain client socket is relayed by [`socket_relay`] (copied, and spliced while it moves bulk);
/// others (TLS, tunnels) copied through buffers.
pub async fn relay(client: BoxIo, mut prefix: Vec<u8>, mut upstream: TcpStream) -> (u64, u64) {
    let client = match plain(client) {
        Ok((rest, socket)) => {
            // What the client sent first, then what it sent that was read but not replayed.
            prefix.extend_from_slice(&rest);
            Ok(socket)
        }
        Err(boxed) => Err(boxed),
    };
    let sent = u64::try_from(prefix.len()).unwrap_or(0);
    if !prefix.is_empty() && upstream.write_all(&prefix).await.is_err() {
        return (0, 0);
    }
    let mut client = match client {
        Ok(socket) => {
            let relayed = match &socket {
                Plain::Tcp(s) => socket_relay::relay(s, &upstream).await,
                Plain::Unix(s) => socket_relay::relay(s, &upstream).await,
            };
            return match relayed {
                Ok((up, down)) => (up.bytes + sent, down.bytes),
                Err(_) => (sent, 0),
            };
        }
        Err(boxed) => boxed,
    };
    match tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    {
        Ok((up, down)) => (up + sent, down),
        Err(_) => (sent, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(b"hello".to_vec(), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn plain_sockets_are_found_under_the_box_and_others_are_left_boxed() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (rest, socket) =
            plain(Box::new(a)).unwrap_or_else(|_| panic!("a unix socket is plain"));
        assert!(rest.is_empty() && matches!(socket, Plain::Unix(_)));
        let (a, _b) = UnixStream::pair().unwrap();
        let prefixed = Prefixed::new(b"leftover".to_vec(), a);
        let (rest, socket) =
            plain(Box::new(prefixed)).unwrap_or_else(|_| panic!("a prefixed unix socket is plain"));
        assert_eq!(rest, b"leftover");
        assert!(matches!(socket, Plain::Unix(_)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_, socket) = plain(Box::new(Prefixed::new(Vec::new(), tcp)))
            .unwrap_or_else(|_| panic!("a prefixed TCP socket is plain"));
        assert!(matches!(socket, Plain::Tcp(_)));
        // A box in a box, or a duplex (as a TLS stream): copied, never spliced.
        let (a, _b) = UnixStream::pair().unwrap();
        let boxed: BoxIo = Box::new(a);
        assert!(plain(Box::new(boxed)).is_err());
        let (d, _e) = tokio::io::duplex(64);
        assert!(plain(Box::new(d)).is_err());
    }
}
