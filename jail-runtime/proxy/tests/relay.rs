//! The plain relay (TCP rules, TLS passthrough) between real sockets on loopback: a client that
//! is a plain TCP or unix socket goes through `socket_relay` (copied, spliced while it moves
//! bulk), any other stream is copied. Both must carry large transfers intact, pass half-closes
//! both ways, report the bytes, and end when a peer resets the connection mid-transfer; the
//! socket relay must do so across its switch from copying to splicing and back.

use std::time::Duration;

use boundary_proxy::io::{BoxIo, Prefixed, relay};
use boundary_proxy::socket_relay::{self, Moved};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// Bound on every test step: a relay that hangs fails the test instead of the run.
const STEP: Duration = Duration::from_secs(30);

/// How the client reaches the relay.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// A TCP socket (socket relay).
    Tcp,
    /// A unix socket, as the sidecar's socket hands them over (socket relay).
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

/// A connected TCP pair on loopback with small send buffers: loopback's defaults (megabytes)
/// would absorb a whole test transfer, and a bulk sender only fills the relay's reads once the
/// path ahead of it is full (receive buffers stay as they are: the relay's reads come from them).
async fn small_buffered_pair() -> (TcpStream, TcpStream) {
    let small = |socket: &tokio::net::TcpSocket| {
        socket.set_send_buffer_size(64 * 1024).unwrap();
    };
    let listening = tokio::net::TcpSocket::new_v4().unwrap();
    small(&listening);
    listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listening.listen(1).unwrap();
    let connecting = tokio::net::TcpSocket::new_v4().unwrap();
    small(&connecting);
    let connected = connecting
        .connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (connected, accepted)
}

/// Two connected pairs with a [`socket_relay::relay`] between them, run by a task that owns the
/// relay's sockets (closing them when it ends): the client's end, the upstream's end, the relay.
async fn start_sockets(
    kind: Client,
) -> (End, TcpStream, JoinHandle<std::io::Result<(Moved, Moved)>>) {
    let (to_upstream, upstream) = small_buffered_pair().await;
    match kind {
        Client::Tcp => {
            let (client, served) = small_buffered_pair().await;
            let task =
                tokio::spawn(async move { socket_relay::relay(&served, &to_upstream).await });
            (End::Tcp(client), upstream, task)
        }
        Client::Unix | Client::Opaque => {
            let (client, served) = UnixStream::pair().unwrap();
            let task =
                tokio::spawn(async move { socket_relay::relay(&served, &to_upstream).await });
            (End::Unix(client), upstream, task)
        }
    }
}

const SOCKETS: [Client; 2] = [Client::Tcp, Client::Unix];

/// Writes `data`, while the reader at the other end waits until the writer stalls before it
/// reads: the relay's source queue is then full and its reads are full, as behind a fast sender
/// (the bulk that switches), however slowly this test's tasks run.
async fn bulk(w: &mut (impl AsyncWrite + Unpin), r: &mut (impl AsyncRead + Unpin), data: &[u8]) {
    let written = std::sync::atomic::AtomicUsize::new(0);
    let writing = async {
        for chunk in data.chunks(1 << 20) {
            w.write_all(chunk).await.unwrap();
            written.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    };
    let reading = async {
        let mut seen = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            if now == seen || now == data.len() {
                break;
            }
            seen = now;
        }
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    };
    let (got, ()) = tokio::time::timeout(STEP, async { tokio::join!(reading, writing) })
        .await
        .expect("the bulk transfer timed out");
    assert!(got == data, "bulk transfer corrupted");
}

/// `rounds` small request/response exchanges, as keep-alive traffic: each side sees exactly
/// what the other sent.
async fn exchanges(
    client_r: &mut (impl AsyncRead + Unpin),
    client_w: &mut (impl AsyncWrite + Unpin),
    upstream_r: &mut (impl AsyncRead + Unpin),
    upstream_w: &mut (impl AsyncWrite + Unpin),
    rounds: usize,
    seed: u8,
) {
    for round in 0..rounds {
        let request = pattern(100 + round, seed);
        let response = pattern(300 + round, seed.wrapping_add(1));
        client_w.write_all(&request).await.unwrap();
        let mut got = vec![0u8; request.len()];
        upstream_r.read_exact(&mut got).await.unwrap();
        assert!(got == request, "request {round} corrupted");
        upstream_w.write_all(&response).await.unwrap();
        let mut got = vec![0u8; response.len()];
        client_r.read_exact(&mut got).await.unwrap();
        assert!(got == response, "response {round} corrupted");
    }
}

/// Bytes of `rounds` exchanges from [`exchanges`]: (requests, responses).
fn exchanged(rounds: usize) -> (u64, u64) {
    let sum = |base: usize| (0..rounds).map(|r| (base + r) as u64).sum::<u64>();
    (sum(100), sum(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_traffic_is_copied_and_bulk_in_its_midst_is_spliced_then_copying_resumes() {
    for kind in SOCKETS {
        let (client, upstream, task) = start_sockets(kind).await;
        let (mut client_r, mut client_w) = client.split();
        let (mut upstream_r, mut upstream_w) = upstream.into_split();
        exchanges(
            &mut client_r,
            &mut client_w,
            &mut upstream_r,
            &mut upstream_w,
            50,
            1,
        )
        .await;
        // Bulk both ways, one after the other, crossing the switch mid-stream.
        let download = pattern(16 << 20, 2);
        bulk(&mut upstream_w, &mut client_r, &download).await;
        let upload = pattern(8 << 20, 3);
        bulk(&mut client_w, &mut upstream_r, &upload).await;
        exchanges(
            &mut client_r,
            &mut client_w,
            &mut upstream_r,
            &mut upstream_w,
            50,
            4,
        )
        .await;
        client_w.shutdown().await.unwrap();
        upstream_w.shutdown().await.unwrap();
        assert!(read_all(client_r).await.is_empty());
        assert!(read_all(upstream_r).await.is_empty());
        let (up, down) = tokio::time::timeout(STEP, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (requests, responses) = exchanged(50);
        let (more_requests, more_responses) = exchanged(50);
        assert_eq!(
            up.bytes,
            requests + upload.len() as u64 + more_requests,
            "{kind:?}"
        );
        assert_eq!(
            down.bytes,
            responses + download.len() as u64 + more_responses,
            "{kind:?}"
        );
        for (moved, bulk_len, small_after, which) in [
            (up, upload.len() as u64, more_requests, "upload"),
            (down, download.len() as u64, more_responses, "download"),
        ] {
            // The first exchanges and the bulk's first reads were copied, most of the bulk
            // spliced, and the exchanges after it copied again (all but the few splices it takes
            // to switch back).
            let copied_bulk = (socket_relay::TO_SPLICE as usize * socket_relay::CHUNK) as u64;
            assert!(
                moved.spliced >= bulk_len / 2,
                "{kind:?} {which}: only {} of {bulk_len} bulk bytes spliced",
                moved.spliced
            );
            assert!(
                moved.spliced <= bulk_len - (copied_bulk / 2) + small_after / 4,
                "{kind:?} {which}: {} bytes spliced: the small exchanges or the bulk's start too",
                moved.spliced
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_switch_half_closes_pass_both_ways_and_counts_are_exact() {
    for kind in SOCKETS {
        let (client, upstream, task) = start_sockets(kind).await;
        let (client_r, mut client_w) = client.split();
        let (mut upstream_r, mut upstream_w) = upstream.into_split();
        // The client uploads in bulk and half-closes: the upstream reads it all and then the end.
        let upload = pattern(8 << 20, 5);
        bulk(&mut client_w, &mut upstream_r, &upload).await;
        client_w.shutdown().await.unwrap();
        assert!(
            read_all(upstream_r).await.is_empty(),
            "{kind:?}: the upload's end"
        );
        // The upstream still answers in bulk, then half-closes too.
        let answer = pattern(12 << 20, 6);
        let sending = tokio::spawn(async move {
            upstream_w.write_all(&answer).await.unwrap();
            upstream_w.shutdown().await.unwrap();
            answer
        });
        let got = read_all(client_r).await;
        let answer = sending.await.unwrap();
        assert!(got == answer, "{kind:?}: the answer after the half-close");
        let (up, down) = tokio::time::timeout(STEP, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(up.bytes, upload.len() as u64, "{kind:?}");
        assert_eq!(down.bytes, answer.len() as u64, "{kind:?}");
        assert!(up.spliced > 0, "{kind:?}: the upload never switched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_switch_ends_the_relay_with_an_error() {
    for kind in SOCKETS {
        let (client, upstream, task) = start_sockets(kind).await;
        let (mut client_r, client_w) = client.split();
        let mut upstream = upstream;
        // Bulk that switches the download to splicing (as in the tests above), then more that
        // the client reads only part of before the upstream resets.
        let download = pattern(8 << 20, 7);
        bulk(&mut upstream, &mut client_r, &download).await;
        // Less than the path's small buffers hold, so it is written without the client reading.
        tokio::time::timeout(STEP, upstream.write_all(&pattern(128 << 10, 8)))
            .await
            .expect("the path's buffers were full")
            .unwrap();
        let mut first = vec![0u8; 4096];
        client_r.read_exact(&mut first).await.unwrap();
        upstream.set_zero_linger().unwrap();
        drop(upstream);
        let reading = tokio::spawn(async move {
            let mut rest = Vec::new();
            let _ = client_r.read_to_end(&mut rest).await;
            rest.len()
        });
        let relayed = tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        assert!(
            relayed.is_err(),
            "{kind:?}: a reset is an error: {relayed:?}"
        );
        let rest = tokio::time::timeout(STEP, reading)
            .await
            .expect("the client's connection was left open")
            .unwrap();
        assert!(
            4096 + rest <= 128 << 10,
            "{kind:?}: more bytes than were sent"
        );
        drop(client_w);
    }
}
