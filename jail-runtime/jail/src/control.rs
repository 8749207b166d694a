//! The control socketpair between the supervisor and the jail's init: the init's report (with
//! the sockets it created inside the jail's network namespace), and later requests for more
//! such sockets. Both sides of the protocol live here.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg,
};
use serde::{Deserialize, Serialize};

use crate::error::JailError;
use crate::mounts::MountReport;
use crate::sys;

/// The sockets the jail's init creates for the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerKind {
    /// TCP forwarder on 127.0.0.1.
    Forward4,
    /// TCP forwarder on `[::1]`.
    Forward6,
    /// DNS over UDP on 127.0.0.1.
    DnsUdp4,
    /// DNS over UDP on `[::1]`.
    DnsUdp6,
    /// DNS over TCP on 127.0.0.1.
    DnsTcp4,
    /// DNS over TCP on `[::1]`.
    DnsTcp6,
}

/// Request on the control socket for an unconnected IPv4 TCP socket.
const SOCKET_REQUEST_TCP4: &[u8] = b"tcp4";
/// The init's answer that carries the socket.
const SOCKET_ANSWER_OK: &[u8] = b"ok";

/// The supervisor's way to sockets of the jail's network namespace, which it cannot enter (no
/// capabilities in a pod): the jail's init creates them on request and passes them back over
/// the control socketpair (`SCM_RIGHTS`). A socket's namespace is the one it was created in, so
/// a socket connected to 127.0.0.1 from here reaches the jail's loopback.
#[derive(Debug)]
pub struct JailSockets {
    control: std::sync::Mutex<OwnedFd>,
}

impl JailSockets {
    pub(crate) fn new(control: OwnedFd) -> JailSockets {
        JailSockets {
            control: std::sync::Mutex::new(control),
        }
    }

    /// An unconnected IPv4 TCP socket of the jail's network namespace. Blocks briefly (the
    /// init answers at once).
    pub fn tcp4(&self) -> std::io::Result<OwnedFd> {
        let control = self
            .control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nix::sys::socket::send(control.as_raw_fd(), SOCKET_REQUEST_TCP4, MsgFlags::empty())?;
        let mut buf = [0u8; 256];
        let (len, mut fds) = receive(&control, &mut buf)?;
        let answer = &buf[..len];
        match (answer == SOCKET_ANSWER_OK, fds.pop()) {
            (true, Some(fd)) => Ok(fd),
            _ if len == 0 => Err(std::io::Error::other("the jail's init is gone")),
            _ => Err(std::io::Error::other(format!(
                "the jail's init could not create a socket: {}",
                String::from_utf8_lossy(answer)
            ))),
        }
    }
}

/// One message on the control socket into `buf`, with the descriptors it carries (at most 8),
/// owned and close-on-exec. A length of 0: the other side is gone.
pub(crate) fn receive(control: &OwnedFd, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        control.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            fds.extend(sys::own_received_fds(&received));
        }
    }
    Ok((msg.bytes, fds))
}

/// In the init: answers one request of [`JailSockets`]; false once the supervisor is gone.
pub(crate) fn serve_socket_request(control: &OwnedFd) -> bool {
    let mut request = [0u8; 16];
    let n = match nix::sys::socket::recv(control.as_raw_fd(), &mut request, MsgFlags::MSG_DONTWAIT)
    {
        Ok(0) => return false,
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return true,
        Err(_) => return false,
    };
    if &request[..n] != SOCKET_REQUEST_TCP4 {
        let _ = nix::sys::socket::send(control.as_raw_fd(), b"unknown request", MsgFlags::empty());
        return true;
    }
    match nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(fd) => {
            let iov = [IoSlice::new(SOCKET_ANSWER_OK)];
            let fds = [fd.as_raw_fd()];
            let _ = sendmsg::<()>(
                control.as_raw_fd(),
                &iov,
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            );
        }
        Err(e) => {
            let _ =
                nix::sys::socket::send(control.as_raw_fd(), e.desc().as_bytes(), MsgFlags::empty());
        }
    }
    true
}

/// The init's report to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    Ready {
        ipv6: bool,
        mounts: MountReport,
        listeners: Vec<ListenerKind>,
    },
    Failed(JailError),
}

pub(crate) fn send_report(
    control: &OwnedFd,
    report: &Report,
    fds: &[std::os::fd::RawFd],
) -> nix::Result<()> {
    let bytes = serde_json::to_vec(report).unwrap_or_default();
    let iov = [IoSlice::new(&bytes)];
    let cmsgs = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(control.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).map(drop)
}
