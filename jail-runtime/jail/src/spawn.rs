//! Spawning the jail from the supervisor: the plan, the `clone` of the jail's init, and the
//! sockets the init creates inside the jail's network namespace and passes back.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use boundary_api::Tier;
use nix::sched::CloneFlags;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{JailError, UsernsFacts};
use crate::mounts::{MountPlan, MountReport};
use crate::sys::{self, Forked};
use crate::{init, privileges};

/// Port of the TCP forwarder inside the jail's network namespace. Below 1024, so the jailed
/// process (without `CAP_NET_BIND_SERVICE`) can never bind it, and unlikely to clash with a
/// server the agent runs on loopback.
pub const FORWARDER_PORT: u16 = boundary_api::contract::ports::JAIL_FORWARDER;
/// Port of the jail's DNS server (UDP and TCP) inside its network namespace.
pub const DNS_PORT: u16 = boundary_api::contract::ports::JAIL_DNS;

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

/// Everything the jail needs to know to start.
#[derive(Debug, Clone)]
pub struct JailPlan {
    /// `Userns` or `PrivilegedNetns` (the landlock tier has its own [`landlock_tier`]).
    pub tier: Tier,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Variables added to (or replacing in) the command's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Variables removed from the command's environment.
    pub env_remove: Vec<OsString>,
    /// The filesystem view.
    pub mounts: MountPlan,
    /// Loopback TCP ports that belong to the pod, not the jail: redirected to the forwarder
    /// (and so to the proxy, which decides them by podLocal rules).
    pub pod_local_ports: Vec<u16>,
}

/// A running jail, as the supervisor sees it.
#[derive(Debug)]
pub struct Spawned {
    /// The jail's init, in the supervisor's PID namespace.
    pub init: Pid,
    /// The tier it runs in.
    pub tier: Tier,
    /// Sockets inside the jail's network namespace.
    pub listeners: Vec<(ListenerKind, OwnedFd)>,
    /// IPv6 is routed (and redirected) inside the jail.
    pub ipv6: bool,
    /// What the mount set-up achieved.
    pub mounts: MountReport,
    /// More sockets of the jail's network namespace, on request.
    pub sockets: JailSockets,
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
    /// An unconnected IPv4 TCP socket of the jail's network namespace. Blocks briefly (the
    /// init answers at once).
    pub fn tcp4(&self) -> std::io::Result<OwnedFd> {
        let control = self
            .control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nix::sys::socket::send(control.as_raw_fd(), SOCKET_REQUEST_TCP4, MsgFlags::empty())?;
        let mut buf = [0u8; 256];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
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
        let len = msg.bytes;
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

/// Starts a jail in `plan.tier`. Must be called while the process is single-threaded, with
/// [`signals::block_forwarded`] already in effect.
///
/// `prepare` runs in this process right after the jail's init is created, while the init builds
/// the jail's network (the two overlap; start-up time matters for short commands): it writes
/// the files of [`MountPlan::workdir`].
pub fn spawn(
    plan: &JailPlan,
    prepare: &mut dyn FnMut() -> Result<(), JailError>,
) -> Result<Spawned, JailError> {
    let flags = match plan.tier {
        Tier::Userns => {
            CloneFlags::CLONE_NEWUSER
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
        }
        Tier::PrivilegedNetns => {
            let missing: Vec<&str> = [
                (privileges::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                (privileges::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            ]
            .into_iter()
            .filter(|(cap, _)| !privileges::has_effective(*cap))
            .map(|(_, name)| name)
            .collect();
            if !missing.is_empty() {
                return Err(JailError::MissingCapabilities {
                    missing: missing.join(" and "),
                });
            }
            CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWIPC
        }
        Tier::Landlock => {
            return Err(JailError::Other(
                "internal: the landlock tier does not use namespaces".into(),
            ));
        }
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| JailError::other("creating the jail's control socket", e))?;
    let mut plan = plan.clone();
    plan.mounts.supervisor_pid = std::process::id();
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());

    match sys::clone_into_namespaces(flags) {
        Ok(Forked::Child) => {
            drop(ours);
            let code = init::main(&plan, &theirs, uid, gid);
            std::process::exit(code);
        }
        Ok(Forked::Parent(init)) => {
            drop(theirs);
            // From here on nothing in the jail may read this process's memory or descriptors
            // (the proxy's CA key lives here in standalone mode).
            let _ = nix::sys::prctl::set_dumpable(false);
            let prepared = prepare().and_then(|()| {
                nix::sys::socket::send(ours.as_raw_fd(), b"g", MsgFlags::empty())
                    .map(drop)
                    .map_err(|e| JailError::other("starting the jail", e))
            });
            if let Err(e) = prepared {
                // The go-ahead finds no reader when the init already failed: its report says why.
                let reported = nix::sys::socket::recv(
                    ours.as_raw_fd(),
                    &mut [0u8; 0],
                    MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
                )
                .is_ok();
                if reported && let Err(why) = receive_report(&ours, init, plan.tier) {
                    return Err(why);
                }
                let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(init, None);
                return Err(e);
            }
            receive_report(&ours, init, plan.tier)
        }
        Err(errno) => Err(match plan.tier {
            Tier::Userns => JailError::UserNamespaceDenied {
                errno: errno as i32,
                facts: UsernsFacts::read(),
            },
            _ => JailError::NamespaceDenied {
                call: format!("clone(CLONE_NEWNET|CLONE_NEWNS|CLONE_NEWPID): {errno}"),
                seccomp_filter: UsernsFacts::read().seccomp_filter,
            },
        }),
    }
}

fn receive_report(control: &OwnedFd, init: Pid, tier: Tier) -> Result<Spawned, JailError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let (len, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| JailError::other("reading the jail's report", e))?;
        let mut fds = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| JailError::other("reading the jail's report", e))?
        {
            if let ControlMessageOwned::ScmRights(received) = c {
                fds.extend(sys::own_received_fds(&received));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        let status = nix::sys::wait::waitpid(init, None).ok();
        return Err(JailError::Other(format!(
            "the jail's init exited before reporting ({status:?})"
        )));
    }
    let report: Report = serde_json::from_slice(&buf[..len])
        .map_err(|e| JailError::other("decoding the jail's report", e))?;
    match report {
        Report::Failed(e) => {
            let _ = nix::sys::wait::waitpid(init, None);
            Err(e)
        }
        Report::Ready {
            ipv6,
            mounts,
            listeners,
        } => {
            if listeners.len() != fds.len() {
                let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(init, None);
                return Err(JailError::Other(format!(
                    "the jail sent {} sockets for {} listeners",
                    fds.len(),
                    listeners.len()
                )));
            }
            let control = control
                .try_clone()
                .map_err(|e| JailError::other("keeping the jail's control socket", e))?;
            Ok(Spawned {
                init,
                tier,
                listeners: listeners.into_iter().zip(fds).collect(),
                ipv6,
                mounts,
                sockets: JailSockets {
                    control: std::sync::Mutex::new(control),
                },
            })
        }
    }
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
