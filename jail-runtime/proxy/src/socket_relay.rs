//! Relaying between two plain sockets (TCP or unix stream), each direction copying small traffic
//! and splicing bulk.
//!
//! `splice(2)` through a pipe moves bytes from one socket's receive queue to the other's send
//! queue inside the kernel, never copied into the proxy: half the proxy's CPU on bulk transfers.
//! But a splice costs more than a copy for a small message (two pipe operations with page
//! references instead of two short copies), and small request/response traffic (keep-alive
//! HTTP, databases behind TCP rules) is what these relays mostly carry: splicing everything lost
//! 16-20 points of keep-alive throughput. So each direction starts copying through a buffer and
//! moves to splicing only while it moves bulk ([`Switch`]).
//!
//! It behaves as [`tokio::io::copy_bidirectional`] does: each direction runs until its source's
//! end of stream, then shuts down the other side's writing half; the relay is done when both are,
//! or at the first error of either (a reset peer).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

/// Bytes asked of one read or `splice` from a socket: the copy buffer's size and the default
/// pipe's capacity (16 pages).
pub const CHUNK: usize = 64 * 1024;

/// A read of at least this much is bulk: the source had half a buffer or more waiting. Reads of
/// keep-alive messages are far smaller; bulk over loopback fills the whole 64 KiB nearly every
/// time (measured on the passthrough bulk benchmark: 14,872 of 14,884 reads were full).
pub const BULK_READ: usize = CHUNK / 2;

/// Bulk reads in a row that move a copying direction to splicing (256 KiB or more moved): a
/// single large response in a keep-alive exchange does not switch, a download does.
pub const TO_SPLICE: u32 = 4;

/// Smaller reads in a row that move a splicing direction back to copying: more than
/// [`TO_SPLICE`], so a bulk transfer whose reads dip now and then keeps splicing.
pub const TO_COPY: u32 = 8;

/// How a direction moves its next bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read into a buffer and write it out.
    Copy,
    /// `splice(2)` into a pipe and out of it.
    Splice,
}

/// When a direction switches between copying and splicing: fed the size of each read, it
/// switches after [`TO_SPLICE`] bulk reads in a row, and back after [`TO_COPY`] small ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    mode: Mode,
    /// Reads in a row that speak for the other mode.
    streak: u32,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new()
    }
}

impl Switch {
    /// A direction that has moved nothing yet: copying.
    #[must_use]
    pub const fn new() -> Switch {
        Switch {
            mode: Mode::Copy,
            streak: 0,
        }
    }

    /// How the next bytes move.
    #[must_use]
    pub const fn mode(&self) -> Mode {
        self.mode
    }

    /// Records a read (or splice) of `n` bytes; returns the mode for the next one.
    pub fn after_read(&mut self, n: usize) -> Mode {
        let bulk = n >= BULK_READ;
        let (speaks_for_other, needed, other) = match self.mode {
            Mode::Copy => (bulk, TO_SPLICE, Mode::Splice),
            Mode::Splice => (!bulk, TO_COPY, Mode::Copy),
        };
        if speaks_for_other {
            self.streak += 1;
            if self.streak >= needed {
                self.mode = other;
                self.streak = 0;
            }
        } else {
            self.streak = 0;
        }
        self.mode
    }
}

/// A socket tokio drives that `splice` can read and write: TCP or unix stream.
pub trait Socket: AsFd + Sync {
    /// Waits until the socket may be ready for `interest`.
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send;
    /// Runs `f` on the socket; a `WouldBlock` clears the readiness [`Socket::ready`] saw.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    /// Writes what fits without waiting (`WouldBlock` if nothing does).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
        TcpStream::ready(self, interest)
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

impl Socket for UnixStream {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
        UnixStream::ready(self, interest)
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        UnixStream::try_write(self, buf)
    }
}

/// What one direction of a relay moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Every byte.
    pub bytes: u64,
    /// The bytes of those that were spliced rather than copied.
    pub spliced: u64,
}

/// Relays between `a` and `b` until both directions are done; returns what moved from `a` to
/// `b` and from `b` to `a`.
///
/// # Errors
/// The first error of either direction (as `copy_bidirectional`).
pub async fn relay<A: Socket, B: Socket>(a: &A, b: &B) -> io::Result<(Moved, Moved)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

/// Moves bytes from `from` to `to` until `from`'s end of stream, then shuts down `to`'s writing
/// half (the peer sees the half-close, as with a copy).
async fn one_way<F: Socket, T: Socket>(from: &F, to: &T) -> io::Result<Moved> {
    let mut switch = Switch::new();
    // Each made when its mode is first used and dropped when the direction leaves it: an idle
    // or small-message relay holds no pipe (two descriptors, kernel pages), a spliced one no
    // buffer.
    let mut buffer: Option<Box<[u8]>> = None;
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    let mut moved = Moved::default();
    loop {
        let n = match switch.mode() {
            Mode::Copy => {
                pipe = None;
                let buffer = buffer.get_or_insert_with(|| vec![0; CHUNK].into_boxed_slice());
                let n = read(from, buffer).await?;
                write_all(to, &buffer[..n]).await?;
                n
            }
            Mode::Splice => {
                buffer = None;
                let pipe = match &mut pipe {
                    Some(pipe) => pipe,
                    None => pipe.insert(nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?),
                };
                let n = splice_in(from, &pipe.1).await?;
                splice_out(&pipe.0, to, n).await?;
                moved.spliced += n as u64;
                n
            }
        };
        if n == 0 {
            shutdown(to.as_fd().as_raw_fd(), Shutdown::Write)?;
            return Ok(moved);
        }
        moved.bytes += n as u64;
        switch.after_read(n);
    }
}

/// Reads what `from` has (0 at its end of stream), waiting for it.
async fn read<F: Socket>(from: &F, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        // A read that did not fill the buffer emptied the socket (epoll is edge-triggered: data
        // arriving after it wakes the task again), as tokio's own `poll_read` assumes. Handed to
        // tokio as `WouldBlock`, it clears the readiness, so the next read waits for epoll
        // instead of costing a system call that finds nothing: one call less per message.
        let mut short = None;
        // Tried first: with no readiness known, tokio answers `WouldBlock` without a system call.
        let read = from.try_io(Interest::READABLE, || {
            let n = nix::unistd::read(from.as_fd(), buffer)?;
            if 0 < n && n < buffer.len() {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match short {
                Some(n) => return Ok(n),
                None => {
                    from.ready(Interest::READABLE).await?;
                }
            },
            done => return done,
        }
    }
}

/// Writes all of `bytes` to `to`, waiting for room.
async fn write_all<T: Socket>(to: &T, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                to.ready(Interest::WRITABLE).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Splices what `from` has into the (empty) pipe, waiting for it; 0 at its end of stream.
async fn splice_in<F: Socket>(from: &F, pipe_in: &OwnedFd) -> io::Result<usize> {
    loop {
        // The pipe is empty here, so a `WouldBlock` can only be the socket's.
        match from.try_io(Interest::READABLE, || {
            Ok(splice(
                from.as_fd(),
                None,
                pipe_in.as_fd(),
                None,
                CHUNK,
                flags(),
            )?)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                from.ready(Interest::READABLE).await?;
            }
            done => return done,
        }
    }
}

/// Splices the pipe's `left` bytes into `to`, waiting for room.
async fn splice_out<T: Socket>(pipe_out: &OwnedFd, to: &T, mut left: usize) -> io::Result<()> {
    while left > 0 {
        // The pipe holds `left` bytes, so a `WouldBlock` can only be the socket's.
        match to.try_io(Interest::WRITABLE, || {
            Ok(splice(
                pipe_out.as_fd(),
                None,
                to.as_fd(),
                None,
                left,
                flags(),
            )?)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                to.ready(Interest::WRITABLE).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Never block (the sockets are non-blocking already; this covers the pipe), and move pages
/// rather than copy them where the kernel can.
fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The mode after each of `reads`, from a new direction.
    fn modes(reads: &[usize]) -> Vec<Mode> {
        let mut switch = Switch::new();
        reads.iter().map(|&n| switch.after_read(n)).collect()
    }

    #[test]
    fn a_direction_splices_after_four_bulk_reads_in_a_row_and_copies_after_eight_small() {
        use Mode::{Copy, Splice};
        let big = CHUNK;
        assert_eq!(modes(&[big, big, big]), [Copy, Copy, Copy]);
        assert_eq!(modes(&[big, big, big, big]), [Copy, Copy, Copy, Splice]);
        // A small read breaks the streak.
        assert_eq!(
            modes(&[big, big, big, 10, big, big, big]),
            [Copy; 7],
            "a streak broken by a small read"
        );
        assert_eq!(modes(&[BULK_READ - 1; 20]), [Copy; 20]);
        let mut reads = vec![BULK_READ; 4];
        reads.extend([100; 7]);
        assert_eq!(modes(&reads).last(), Some(&Splice));
        reads.push(100);
        assert_eq!(modes(&reads).last(), Some(&Copy));
        // A dip in a bulk transfer keeps splicing.
        let mut reads = vec![big; 4];
        reads.extend([100, 100, 100, big, 100, 100, 100, 100, 100, 100, 100]);
        assert_eq!(modes(&reads).last(), Some(&Splice));
    }

    proptest! {
        /// Whatever the reads, a switch only ever follows the streak it needs.
        #[test]
        fn every_switch_follows_its_streak(reads in proptest::collection::vec(
            prop_oneof![0..BULK_READ, BULK_READ..=CHUNK], 0..200)
        ) {
            let mut switch = Switch::new();
            let mut before = Mode::Copy;
            for (i, &n) in reads.iter().enumerate() {
                let after = switch.after_read(n);
                if after != before {
                    let needed = if after == Mode::Splice { TO_SPLICE } else { TO_COPY } as usize;
                    prop_assert!(i + 1 >= needed);
                    let streak = &reads[i + 1 - needed..=i];
                    let bulk = after == Mode::Splice;
                    prop_assert!(streak.iter().all(|&r| (r >= BULK_READ) == bulk), "{:?}", streak);
                }
                before = after;
            }
        }
    }
}
