//! Spawning the jail from the supervisor: the `clone` of the jail's init, and its report with the
//! sockets it created inside the jail's network namespace.

use std::os::fd::{AsRawFd, OwnedFd};

use boundary_api::Tier;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use nix::unistd::Pid;

use crate::control::{JailSockets, ListenerKind, Report};
use crate::error::JailError;
use crate::mounts::MountReport;
use crate::plan::JailPlan;
use crate::sys::{self, Forked};
use crate::{init, privileges};

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
    /// The read end of the init's exit pipe: the command's exit code arrives here before the
    /// init exits (see [`crate::signals::supervise_reported`]); taken by whoever waits.
    pub exit_report: Option<OwnedFd>,
}

/// Starts a jail in `plan.tier`. Must be called while the process is single-threaded, with
/// [`signals::block_forwarded`] already in effect.
///
/// `prepare` runs in this process right after the jail's init is created, while the init builds
/// the jail's network (the two overlap; start-up time matters for short commands): it writes
/// the files of [`MountPlan::workdir`]. So that they overlap from the start, `clone` makes only
/// the user (in tier userns) and PID namespaces, and the init makes the network, mount and IPC
/// namespaces itself: a network namespace takes the kernel longer to make than everything else
/// of `clone`, and `clone` returns only when its namespaces exist.
pub fn spawn(
    plan: &JailPlan,
    prepare: &mut dyn FnMut() -> Result<(), JailError>,
) -> Result<Spawned, JailError> {
    let flags = match plan.tier {
        Tier::Userns => CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID,
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
            CloneFlags::CLONE_NEWPID
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
    let (exit_read, exit_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| JailError::other("creating the jail's exit pipe", e))?;
    let mut plan = plan.clone();
    plan.mounts.supervisor_pid = std::process::id();
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());

    match sys::clone_into_namespaces(flags) {
        Ok(Forked::Child) => {
            drop(ours);
            drop(exit_read);
            let code = init::main(&plan, &theirs, &exit_write, uid, gid);
            std::process::exit(code);
        }
        Ok(Forked::Parent(init)) => {
            drop(theirs);
            drop(exit_write);
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
            let mut spawned = receive_report(&ours, init, plan.tier)?;
            spawned.exit_report = Some(exit_read);
            Ok(spawned)
        }
        Err(errno) => Err(JailError::namespaces_denied(
            plan.tier,
            "clone(CLONE_NEWPID)",
            errno,
        )),
    }
}

fn receive_report(control: &OwnedFd, init: Pid, tier: Tier) -> Result<Spawned, JailError> {
    let mut buf = vec![0u8; 64 * 1024];
    let (len, fds) = crate::control::receive(control, &mut buf)
        .map_err(|e| JailError::other("reading the jail's report", e))?;
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
                sockets: JailSockets::new(control),
                exit_report: None,
            })
        }
    }
}
