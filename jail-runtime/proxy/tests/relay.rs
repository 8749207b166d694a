//! The plain relay (TCP rules, TLS passthrough) between real sockets on loopback: a client that
//! is a plain TCP or unix socket is spliced (`splice(2)`), any other stream is copied. Both must
//! carry large transfers intact, pass half-closes both ways, report the bytes, and end when a
//! peer resets the connection mid-transfer.

use std::time::Duration;

use boundary_proxy::io::{BoxIo, Prefixed, relay};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// Bound on every test step: a relay that hangs fails the test instead of the run.
const STEP: Duration = Duration::from_secs(30);

/// How the client reaches the relay.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// A TCP socket (spliced).
    Tcp,
    /// A unix socket, as the sidecar's socket hands them over (spliced).
    Unix,
    /// A unix socket behind a box the relay cannot see through (copied).
    Opaque,
}

const ALL: [Client; 3] = [Client::Tcp, Client::Unix, Client::Opaque];

/// A stream the relay cannot take apart: it must copy through buffers.
struct Wrapped(UnixStream);

impl AsyncRead for Wrapped {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wrapped {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Either end of the client's connection.
enum End {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl End {
    fn split(
        self,
    ) -> (
        Box<dyn AsyncRead + Unpin + Send>,
        Box<dyn AsyncWrite + Unpin + Send>,
    ) {
        match self {
            End::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            End::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// A relay between a new client connection and a new upstream connection: the client's end, the
/// upstream's end, and the relay's task (its byte counts). `early` is what the proxy read from
/// the client before relaying (sniffing); `leftover` what a reader of the socket buffered.
async fn start(
    kind: Client,
    early: &[u8],
    leftover: &[u8],
) -> (End, TcpStream, JoinHandle<(u64, u64)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to_upstream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (upstream, _) = listener.accept().await.unwrap();
    let (client, served): (End, BoxIo) = match kind {
        Client::Tcp => {
            let client_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(client_listener.local_addr().unwrap())
                .await
                .unwrap();
            let (served, _) = client_listener.accept().await.unwrap();
            let served: BoxIo = if leftover.is_empty() {
                Box::new(served)
            } else {
                Box::new(Prefixed::new(leftover.to_vec(), served))
            };
            (End::Tcp(client), served)
        }
        Client::Unix => {
            let (client, served) = UnixStream::pair().unwrap();
            let served: BoxIo = if leftover.is_empty() {
                Box::new(served)
            } else {
                Box::new(Prefixed::new(leftover.to_vec(), served))
            };
            (End::Unix(client), served)
        }
        Client::Opaque => {
            let (client, served) = UnixStream::pair().unwrap();
            (
                End::Unix(client),
                Box::new(Prefixed::new(leftover.to_vec(), Wrapped(served))),
            )
        }
    };
    let early = early.to_vec();
    let task = tokio::spawn(async move { relay(served, early, to_upstream).await });
    (client, upstream, task)
}

/// `len` bytes of a pattern that shows misordered or lost chunks.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let block = u8::try_from((i / 4093) % 251).unwrap();
            block.wrapping_mul(7).wrapping_add(seed) ^ u8::try_from(i % 256).unwrap()
        })
        .collect()
}

async fn read_all(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(STEP, r.read_to_end(&mut out))
        .await
        .expect("reading to the end timed out")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_both_ways_at_once_arrive_intact_and_are_counted() {
    for kind in ALL {
        let up_data = pattern(8 << 20, 1);
        let down_data = pattern(16 << 20, 2);
        let (client, upstream, task) = start(kind, b"", b"").await;
        let (client_r, mut client_w) = client.split();
        let (upstream_r, mut upstream_w) = upstream.into_split();
        let sending_up = {
            let data = up_data.clone();
            tokio::spawn(async move {
                client_w.write_all(&data).await.unwrap();
                client_w.shutdown().await.unwrap();
            })
        };
        let sending_down = {
            let data = down_data.clone();
            tokio::spawn(async move {
                upstream_w.write_all(&data).await.unwrap();
                upstream_w.shutdown().await.unwrap();
            })
        };
        let (at_upstream, at_client) = tokio::join!(read_all(upstream_r), read_all(client_r));
        sending_up.await.unwrap();
        sending_down.await.unwrap();
        assert!(at_upstream == up_data, "{kind:?}: upload corrupted");
        assert!(at_client == down_data, "{kind:?}: download corrupted");
        let counts = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        assert_eq!(
            counts,
            (up_data.len() as u64, down_data.len() as u64),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn sniffed_and_buffered_bytes_go_first_and_count() {
    for kind in ALL {
        let (client, upstream, task) = start(kind, b"sniffed ", b"buffered ").await;
        let (client_r, mut client_w) = client.split();
        client_w.write_all(b"rest").await.unwrap();
        client_w.shutdown().await.unwrap();
        let (upstream_r, mut upstream_w) = upstream.into_split();
        assert_eq!(
            read_all(upstream_r).await,
            b"sniffed buffered rest",
            "{kind:?}"
        );
        upstream_w.write_all(b"answer").await.unwrap();
        upstream_w.shutdown().await.unwrap();
        assert_eq!(read_all(client_r).await, b"answer", "{kind:?}");
        let counts = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        assert_eq!(counts, (21, 6), "{kind:?}");
    }
}

#[tokio::test]
async fn a_client_half_close_reaches_the_upstream_which_still_answers() {
    for kind in ALL {
        let (client, upstream, task) = start(kind, b"", b"").await;
        let (client_r, mut client_w) = client.split();
        client_w.write_all(b"request").await.unwrap();
        client_w.shutdown().await.unwrap();
        let (upstream_r, mut upstream_w) = upstream.into_split();
        // The upstream sees the end of the request (EOF) before it answers.
        assert_eq!(read_all(upstream_r).await, b"request", "{kind:?}");
        let answer = pattern(3 << 20, 9);
        upstream_w.write_all(&answer).await.unwrap();
        upstream_w.shutdown().await.unwrap();
        assert!(read_all(client_r).await == answer, "{kind:?}");
        let counts = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        assert_eq!(counts, (7, answer.len() as u64), "{kind:?}");
    }
}

#[tokio::test]
async fn an_upstream_half_close_reaches_the_client_which_still_sends() {
    for kind in ALL {
        let (client, upstream, task) = start(kind, b"", b"").await;
        let (client_r, mut client_w) = client.split();
        let (upstream_r, mut upstream_w) = upstream.into_split();
        upstream_w.write_all(b"banner").await.unwrap();
        upstream_w.shutdown().await.unwrap();
        assert_eq!(read_all(client_r).await, b"banner", "{kind:?}");
        let upload = pattern(3 << 20, 5);
        client_w.write_all(&upload).await.unwrap();
        client_w.shutdown().await.unwrap();
        assert!(read_all(upstream_r).await == upload, "{kind:?}");
        let counts = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        assert_eq!(counts, (upload.len() as u64, 6), "{kind:?}");
    }
}

#[tokio::test]
async fn an_upstream_reset_mid_transfer_ends_the_relay_and_the_client_connection() {
    for kind in ALL {
        let (client, upstream, task) = start(kind, b"", b"").await;
        let (mut client_r, client_w) = client.split();
        let mut upstream = upstream;
        upstream.write_all(&pattern(1 << 20, 3)).await.unwrap();
        // Unread bytes in the upstream's receive queue make its close a reset too.
        let mut first = vec![0u8; 4096];
        client_r.read_exact(&mut first).await.unwrap();
        upstream.set_zero_linger().unwrap();
        drop(upstream);
        // The client keeps reading: the relay ends (it does not wait for the client) and closes
        // the client's connection, so the client reads to an end rather than hanging.
        let reading = tokio::spawn(async move {
            let mut rest = Vec::new();
            let _ = client_r.read_to_end(&mut rest).await;
            rest.len()
        });
        let counts = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        let rest = tokio::time::timeout(STEP, reading)
            .await
            .expect("the client's connection was left open")
            .unwrap();
        assert!(
            4096 + rest <= 1 << 20,
            "{kind:?}: more bytes than were sent"
        );
        // As with a copy, a relay that ends in an error counts what it sent first only.
        assert_eq!(counts, (0, 0), "{kind:?}");
        drop(client_w);
    }
}
