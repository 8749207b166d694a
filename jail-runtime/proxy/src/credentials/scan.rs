//! Leak needles in a streamed request body, with bounded memory.
//!
//! [`Scanner`] holds back the last `longest needle - 1` bytes of what it has seen, so a needle
//! split across chunks is found when its end arrives and no complete needle is ever passed on:
//! every byte is checked before it is forwarded, and memory is one chunk plus that tail,
//! whatever the body's length (the whole body is scanned). [`ScannedBody`] wraps a request body:
//! on a match it records the leak in a [`LeakSlot`] and fails the body, which stops the upstream
//! request (the held-back bytes are never sent).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{Leak, UNKNOWN_PLACEHOLDER, placeholder_tokens};

/// What to look for: (credential name, bytes), and the known placeholders to name a match of
/// the bare prefix.
#[derive(Debug)]
#[allow(clippy::struct_field_names)]
pub struct Needles {
    needles: Vec<(String, Vec<u8>)>,
    placeholders: Vec<(String, String)>,
    longest: usize,
}

impl Needles {
    /// `None` when there is nothing to look for.
    pub fn new(
        needles: Vec<(String, Vec<u8>)>,
        placeholders: Vec<(String, String)>,
    ) -> Option<Needles> {
        let needles: Vec<_> = needles.into_iter().filter(|(_, n)| !n.is_empty()).collect();
        let longest = needles.iter().map(|(_, n)| n.len()).max()?;
        Some(Needles {
            needles,
            placeholders,
            longest,
        })
    }

    /// The credential a needle in `window` belongs to, if one is there.
    fn find(&self, window: &[u8]) -> Option<String> {
        let (name, at) = self
            .needles
            .iter()
            .find_map(|(name, needle)| memchr::memmem::find(window, needle).map(|at| (name, at)))?;
        if name != UNKNOWN_PLACEHOLDER {
            return Some(name.clone());
        }
        // The prefix: name the placeholder when its whole token is in view.
        let token = placeholder_tokens(&window[at..])
            .first()
            .map(|(s, e)| &window[at + s..at + e]);
        Some(
            token
                .and_then(|t| {
                    self.placeholders
                        .iter()
                        .find(|(p, _)| p.as_bytes() == t)
                        .map(|(_, n)| n.clone())
                })
                .unwrap_or_else(|| UNKNOWN_PLACEHOLDER.to_owned()),
        )
    }
}

/// A needle found in the body: its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found(pub String);

/// Scans a byte stream chunk by chunk.
#[derive(Debug)]
pub struct Scanner {
    needles: Arc<Needles>,
    /// The held-back end of what was seen (already checked), at most `longest - 1` bytes.
    tail: Bytes,
}

impl Scanner {
    /// A scanner for `needles`.
    pub fn new(needles: Arc<Needles>) -> Scanner {
        Scanner {
            needles,
            tail: Bytes::new(),
        }
    }

    /// Checks `chunk` (with the held-back bytes before it) and gives what may be passed on
    /// (zero, one or two pieces), holding back the new tail.
    pub fn push(&mut self, chunk: &Bytes) -> Result<Vec<Bytes>, Found> {
        let keep = self.needles.longest - 1;
        if !self.tail.is_empty() {
            // A needle starting in the tail ends within the first `keep` bytes of the chunk.
            let mut window = BytesMut::with_capacity(self.tail.len() + keep.min(chunk.len()));
            window.extend_from_slice(&self.tail);
            window.extend_from_slice(&chunk[..keep.min(chunk.len())]);
            if self.needles.find(&window).is_some() {
                // Named from all there is, so a placeholder's whole token is in view.
                let name = self.needles.find(&[&self.tail[..], &chunk[..]].concat());
                return Err(Found(
                    name.unwrap_or_else(|| UNKNOWN_PLACEHOLDER.to_owned()),
                ));
            }
        }
        if let Some(name) = self.needles.find(chunk) {
            return Err(Found(name));
        }
        let mut out = Vec::with_capacity(2);
        if chunk.len() >= keep {
            let cut = chunk.len() - keep;
            out.push(std::mem::take(&mut self.tail));
            out.push(chunk.slice(..cut));
            // A copy: holding a slice would keep the whole chunk's buffer alive.
            self.tail = Bytes::copy_from_slice(&chunk[cut..]);
        } else {
            let mut joined = BytesMut::with_capacity(self.tail.len() + chunk.len());
            joined.extend_from_slice(&self.tail);
            joined.extend_from_slice(chunk);
            let cut = joined.len().saturating_sub(keep);
            self.tail = Bytes::copy_from_slice(&joined[cut..]);
            joined.truncate(cut);
            out.push(joined.freeze());
        }
        out.retain(|b| !b.is_empty());
        Ok(out)
    }

    /// The held-back bytes, at the end of the stream (already checked).
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.tail)
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.tail.len()
    }

    /// Checks one piece of text that is not part of the stream (a trailer value).
    pub fn check(&self, text: &[u8]) -> Result<(), Found> {
        self.needles
            .find(text)
            .map_or(Ok(()), |name| Err(Found(name)))
    }
}

/// Where a body scan puts the leak it found, for whoever writes the request's audit record
/// ([`LeakSlot::close`]); a leak found after that (the upstream answered and the record was
/// written while the body still streamed) goes to `late`, so every leak is audited once.
pub struct LeakSlot {
    state: Mutex<SlotState>,
    late: Box<dyn Fn(Leak) + Send + Sync>,
}

#[derive(Default)]
struct SlotState {
    leak: Option<Leak>,
    closed: bool,
}

impl std::fmt::Debug for LeakSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakSlot").finish_non_exhaustive()
    }
}

impl LeakSlot {
    /// A slot whose late leaks go to `late`.
    pub fn new(late: impl Fn(Leak) + Send + Sync + 'static) -> Arc<LeakSlot> {
        Arc::new(LeakSlot {
            state: Mutex::new(SlotState::default()),
            late: Box::new(late),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn found(&self, leak: Leak) {
        let late = {
            let mut state = self.lock();
            if state.closed {
                Some(leak)
            } else {
                state.leak.get_or_insert(leak);
                None
            }
        };
        if let Some(leak) = late {
            (self.late)(leak);
        }
    }

    /// The leak found so far, for the request's record; any later one is audited on its own.
    pub fn close(&self) -> Option<Leak> {
        let mut state = self.lock();
        state.closed = true;
        state.leak.take()
    }
}

/// The error a body fails with when a needle is found.
#[derive(Debug, thiserror::Error)]
#[error("credential leak attempt in the request body: request stopped")]
pub struct LeakInBody;

/// A request body scanned for needles as it streams (see the module's doc).
pub struct ScannedBody<B> {
    inner: B,
    scanner: Scanner,
    pending: std::collections::VecDeque<Frame<Bytes>>,
    slot: Arc<LeakSlot>,
    done: bool,
}

impl<B> std::fmt::Debug for ScannedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScannedBody").finish_non_exhaustive()
    }
}

impl<B> ScannedBody<B> {
    /// Scans `inner` for `needles`; a leak found is put in `slot`.
    pub fn new(inner: B, needles: Arc<Needles>, slot: Arc<LeakSlot>) -> ScannedBody<B> {
        ScannedBody {
            inner,
            scanner: Scanner::new(needles),
            pending: std::collections::VecDeque::new(),
            slot,
            done: false,
        }
    }

    fn found(&mut self, Found(credential): Found) -> Box<dyn std::error::Error + Send + Sync> {
        self.done = true;
        self.pending.clear();
        self.slot.found(Leak {
            credential,
            place: "body".to_owned(),
            plain_http: false,
        });
        Box::new(LeakInBody)
    }
}

impl<B> HttpBody for ScannedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    this.done = true;
                    let tail = this.scanner.finish();
                    if !tail.is_empty() {
                        this.pending.push_back(Frame::data(tail));
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match this.scanner.push(&data) {
                        Ok(pieces) => this.pending.extend(pieces.into_iter().map(Frame::data)),
                        Err(found) => return Poll::Ready(Some(Err(this.found(found)))),
                    },
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            for value in trailers.values() {
                                if let Err(found) = this.scanner.check(value.as_bytes()) {
                                    return Poll::Ready(Some(Err(this.found(found))));
                                }
                            }
                        }
                        let tail = this.scanner.finish();
                        if !tail.is_empty() {
                            this.pending.push_back(Frame::data(tail));
                        }
                        this.pending.push_back(frame);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty()
            && self.scanner.held() == 0
            && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self
            .pending
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum::<u64>()
            + self.scanner.held() as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + queued);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + queued);
        }
        hint
    }
}
