//! Relaying between two plain sockets with `splice(2)` through a pipe: the bytes move from one
//! socket's receive queue to the other's send queue inside the kernel, never copied into the
//! proxy (a relay through buffers costs a copy in and a copy out per byte, the most of its time).
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

/// Bytes asked of one `splice` from a socket: the default pipe's capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// A socket tokio drives that `splice` can read and write: TCP or unix stream.
pub trait Socket: AsFd + Sync {
    /// Waits until the socket may be ready for `interest`.
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send;
    /// Runs `f` on the socket; a `WouldBlock` clears the readiness [`Socket::ready`] saw.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Socket for TcpStream {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
        TcpStream::ready(self, interest)
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
}

impl Socket for UnixStream {
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> + Send {
        UnixStream::ready(self, interest)
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }
}

/// Relays between `a` and `b` until both directions are done; returns the bytes from `a` to `b`
/// and from `b` to `a`.
///
/// # Errors
/// The first error of either direction (as `copy_bidirectional`).
pub async fn relay<A: Socket, B: Socket>(a: &A, b: &B) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

/// Moves bytes from `from` to `to` until `from`'s end of stream, then shuts down `to`'s writing
/// half (the peer sees the half-close, as with a copy).
async fn one_way<F: Socket, T: Socket>(from: &F, to: &T) -> io::Result<u64> {
    // Made at the first bytes: an idle relay holds no pipe (two descriptors, kernel pages).
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    let mut total = 0u64;
    loop {
        let (out_of_pipe, into_pipe) = loop {
            from.ready(Interest::READABLE).await?;
            let pipe = match &mut pipe {
                Some(pipe) => pipe,
                None => pipe.insert(nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?),
            };
            // The pipe is empty here, so a `WouldBlock` can only be the socket's.
            match from.try_io(Interest::READABLE, || {
                Ok(splice(
                    from.as_fd(),
                    None,
                    pipe.1.as_fd(),
                    None,
                    CHUNK,
                    flags(),
                )?)
            }) {
                Ok(n) => break (&pipe.0, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if into_pipe == 0 {
            shutdown(to.as_fd().as_raw_fd(), Shutdown::Write)?;
            return Ok(total);
        }
        let mut left = into_pipe;
        while left > 0 {
            to.ready(Interest::WRITABLE).await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(
                    out_of_pipe.as_fd(),
                    None,
                    to.as_fd(),
                    None,
                    left,
                    flags(),
                )?)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Never block (the sockets are non-blocking already; this covers the pipe), and move pages
/// rather than copy them where the kernel can.
fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}
