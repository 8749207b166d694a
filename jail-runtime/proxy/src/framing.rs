//! An independent HTTP/1.1 framing check on the raw bytes a client sends, before hyper parses
//! them. hyper resolves ambiguous framing the RFC way (e.g. drops `Content-Length` when
//! `Transfer-Encoding` is present), so by the time a request reaches the proxy's service the
//! ambiguity is gone from the headers; but a client that sends such a request is attempting
//! request smuggling, and the proxy refuses it (400, connection closed) instead of guessing.
//!
//! [`Framing`] follows the byte stream message by message (head, then the body as hyper will
//! read it: chunked, `Content-Length`, or none) and queues one verdict per request head, in
//! order; the service takes them in the same order (HTTP/1.1 requests on a connection are
//! served one after another). After an upgrade or CONNECT the rest is opaque.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head accepted (hyper's own limit is about the same).
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line.
const MAX_CHUNK_LINE: usize = 1024;
/// Bytes of a line terminator (`\r\n\r\n`) that can lie on either side of a read's start.
const SEAM_MAX: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Opaque,
}

/// The framing state of one connection, and the verdicts for its request heads.
#[derive(Debug)]
pub struct Framing {
    state: State,
    line: Vec<u8>,
    verdicts: VecDeque<Result<(), String>>,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            line: Vec::new(),
            verdicts: VecDeque::new(),
        }
    }
}

impl Framing {
    /// The verdict on the next request head, in order (`Ok` when nothing was queued: the check
    /// only ever adds refusals the HTTP parser itself would not make).
    pub fn next_verdict(&mut self) -> Result<(), String> {
        self.verdicts.pop_front().unwrap_or(Ok(()))
    }

    /// Feeds bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Opaque => return,
                State::Head | State::ChunkSize | State::Trailers => {
                    // A head ends with an empty line; chunk-size and trailer lines are read one
                    // at a time (an empty trailer line ends the message).
                    let terminator: &[u8] = if self.state == State::Head {
                        b"\r\n\r\n"
                    } else {
                        b"\r\n"
                    };
                    let Some(end) = self.find_end(bytes, terminator) else {
                        self.line.extend_from_slice(bytes);
                        let limit = if self.state == State::ChunkSize {
                            MAX_CHUNK_LINE
                        } else {
                            MAX_HEAD
                        };
                        if self.line.len() > limit {
                            self.poison("request head or chunk line too long");
                        }
                        return;
                    };
                    let (line, rest) = bytes.split_at(end);
                    bytes = rest;
                    if self.line.is_empty() {
                        // The whole line came in this read (a keep-alive request's head, as a
                        // rule): read where it is, not copied.
                        self.on_line(line);
                    } else {
                        self.line.extend_from_slice(line);
                        let buffered = std::mem::take(&mut self.line);
                        self.on_line(&buffered);
                    }
                }
                State::Body(n) | State::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkDataEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::ChunkDataEnd => {
                    self.line.push(bytes[0]);
                    bytes = &bytes[1..];
                    if self.line.len() == 2 {
                        let ok = self.line == b"\r\n";
                        self.line.clear();
                        if ok {
                            self.state = State::ChunkSize;
                        } else {
                            self.poison("chunk data not followed by CRLF");
                        }
                    }
                }
            }
        }
    }

    /// Index just past `terminator` in `line ++ bytes`, relative to `bytes`.
    fn find_end(&self, bytes: &[u8], terminator: &[u8]) -> Option<usize> {
        // A trailer section or head may end where the terminator straddles two reads: first the
        // seam (the end of what is buffered and the start of this read, on the stack), then
        // this read alone. Nothing is copied: this runs on every read of a request head.
        let width = terminator.len() - 1;
        let back = self.line.len().min(width);
        let front = bytes.len().min(width);
        let mut seam = [0u8; 2 * SEAM_MAX];
        seam[..back].copy_from_slice(&self.line[self.line.len() - back..]);
        seam[back..back + front].copy_from_slice(&bytes[..front]);
        if let Some(p) = seam[..back + front]
            .windows(terminator.len())
            .position(|w| w == terminator)
        {
            return Some(p + terminator.len() - back);
        }
        memchr::memmem::find(bytes, terminator).map(|p| p + terminator.len())
    }

    /// A complete head, chunk-size line or trailer line.
    fn on_line(&mut self, line: &[u8]) {
        match self.state {
            State::Head => self.on_head(line),
            State::ChunkSize => self.on_chunk_size(line),
            _ if line == b"\r\n" => self.state = State::Head,
            _ => {}
        }
    }

    fn poison(&mut self, why: &str) {
        self.verdicts.push_back(Err(why.to_owned()));
        self.state = State::Opaque;
    }

    fn on_head(&mut self, head: &[u8]) {
        // Leading empty lines before a request line are tolerated (RFC 9112 §2.2).
        let trimmed = {
            let mut h = head;
            while h.starts_with(b"\r\n") {
                h = &h[2..];
            }
            h
        };
        if trimmed.is_empty() {
            return;
        }
        if trimmed.starts_with(b"PRI * HTTP/2.0\r\n") {
            // HTTP/2 with prior knowledge: no HTTP/1 framing to follow.
            self.state = State::Opaque;
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = match req.parse(trimmed) {
            Ok(httparse::Status::Complete(_)) => check(&req),
            Ok(httparse::Status::Partial) => Err("incomplete request head".to_owned()),
            Err(e) => Err(format!("malformed request head: {e}")),
        };
        match parsed {
            Err(why) => self.poison(&why),
            Ok(Next::Opaque) => {
                self.verdicts.push_back(Ok(()));
                self.state = State::Opaque;
            }
            Ok(next) => {
                self.verdicts.push_back(Ok(()));
                self.state = match next {
                    Next::Chunked => State::ChunkSize,
                    Next::Length(0) => State::Head,
                    Next::Length(n) => State::Body(n),
                    Next::Opaque => State::Opaque,
                };
            }
        }
    }

    fn on_chunk_size(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(&line[..line.len().saturating_sub(2)]).into_owned();
        let size = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim_end_matches([' ', '\t']);
        if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.poison("invalid chunk size");
            return;
        }
        match u64::from_str_radix(size, 16) {
            Ok(0) => self.state = State::Trailers,
            Ok(n) => self.state = State::ChunkData(n),
            Err(_) => self.poison("invalid chunk size"),
        }
    }
}

enum Next {
    Length(u64),
    Chunked,
    Opaque,
}

/// The smuggling-relevant checks on one parsed head, and how its body is framed.
fn check(req: &httparse::Request<'_, '_>) -> Result<Next, String> {
    let mut te: Vec<String> = Vec::new();
    let mut cl: Option<u64> = None;
    let mut upgrade = false;
    for h in req.headers.iter() {
        let value =
            std::str::from_utf8(h.value).map_err(|_| format!("non-ASCII {} header", h.name))?;
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.extend(value.split(',').map(|c| c.trim().to_ascii_lowercase()));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for item in value.split(',') {
                let n: u64 = item
                    .trim()
                    .parse()
                    .map_err(|_| "invalid Content-Length".to_owned())?;
                if cl.is_some_and(|prev| prev != n) {
                    return Err("conflicting Content-Length values".into());
                }
                cl = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if !te.is_empty() && cl.is_some() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if !te.is_empty() {
        if req.version != Some(1) {
            return Err("Transfer-Encoding in HTTP/1.0".into());
        }
        if te.last().map(String::as_str) != Some("chunked")
            || te.iter().filter(|c| *c == "chunked").count() != 1
        {
            return Err("Transfer-Encoding must end with a single chunked".into());
        }
    }
    if req.method == Some("CONNECT") || upgrade {
        return Ok(Next::Opaque);
    }
    Ok(if te.is_empty() {
        Next::Length(cl.unwrap_or(0))
    } else {
        Next::Chunked
    })
}

/// A client stream whose bytes are fed to a [`Framing`] as hyper reads them.
#[derive(Debug)]
pub struct Audited<S> {
    inner: S,
    framing: Arc<Mutex<Framing>>,
}

impl<S> Audited<S> {
    /// Wraps `inner`; the service reads verdicts from `framing`.
    pub fn new(inner: S, framing: Arc<Mutex<Framing>>) -> Audited<S> {
        Audited { inner, framing }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Audited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                this.framing
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .feed(fresh);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Audited<S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[u8], split: usize) -> Vec<Result<(), String>> {
        let mut f = Framing::default();
        for piece in stream.chunks(split.max(1)) {
            f.feed(piece);
        }
        f.verdicts.into_iter().collect()
    }

    #[test]
    fn keep_alive_sequences_are_followed_in_any_split() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(verdicts(stream, split), vec![Ok(()); 4], "split {split}");
        }
    }

    #[test]
    fn smuggling_shapes_are_flagged_in_order() {
        let stream = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n\
POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let v = verdicts(stream, 5);
        assert_eq!(v[0], Ok(()));
        assert!(
            v[1].as_ref()
                .unwrap_err()
                .contains("both Content-Length and Transfer-Encoding")
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX",
        ] {
            let v = verdicts(bad, 3);
            assert!(
                v.iter().any(Result::is_err),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn upgrades_and_connect_make_the_rest_opaque() {
        let stream = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello garbage Content-Length: 1\r\n\r\n";
        assert_eq!(verdicts(stream, 4), vec![Ok(())]);
        let stream = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01\x00\x05";
        assert_eq!(verdicts(stream, 4), vec![Ok(())]);
    }

    #[test]
    fn http2_prior_knowledge_is_left_alone() {
        assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", 3).is_empty());
    }

    #[test]
    fn oversized_heads_are_flagged() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let v = verdicts(&big, 1000);
        assert!(v[0].as_ref().unwrap_err().contains("too long"));
    }

    /// Pieces of HTTP/1 streams, well and badly framed, to be put together at random.
    const PIECES: [&[u8]; 14] = [
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;ext=1\r\nhello\r\n",
        b"0\r\n",
        b"X-T: 1\r\n",
        b"\r\n",
        b"\r\n\r\n",
        b"\r",
        b"\n",
        b"zz\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"abc",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn reads_cut_anywhere_give_the_verdicts_of_one_read(
            pieces in proptest::collection::vec(0..PIECES.len(), 1..12),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..8),
        ) {
            let stream: Vec<u8> = pieces.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
            let mut whole = Framing::default();
            whole.feed(&stream);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut read = Framing::default();
            let mut start = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                read.feed(&stream[start..cut]);
                start = cut;
            }
            proptest::prop_assert_eq!(&read.verdicts, &whole.verdicts);
            proptest::prop_assert_eq!(read.state, whole.state);
        }
    }
}
