//! The jail's init (PID 1 of the jail): builds the jail, starts the command, then only reaps
//! and forwards signals. Runs in the child of `clone`, single-threaded.

use std::ffi::{CString, OsString};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use boundary_api::Tier;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, recv};
use nix::unistd::{Gid, Uid};

use crate::control::{Report, send_report, serve_socket_request};
use crate::error::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP_FAILED, JailError};
use crate::netlink;
use crate::sys::{self, Forked};
use crate::{DNS_PORT, FORWARDER_PORT, JailPlan, ListenerKind, mounts, privileges, signals};

/// Runs the init; returns its exit code (the command's). `exit_report`: the write end of the
/// pipe on which the supervisor learns the code before the init exits.
pub(super) fn main(
    plan: &JailPlan,
    control: &OwnedFd,
    exit_report: &OwnedFd,
    uid: Uid,
    gid: Gid,
) -> i32 {
    match build(plan, control, uid, gid) {
        Err(e) => {
            let _ = send_report(control, &Report::Failed(e), &[]);
            EXIT_SETUP_FAILED
        }
        Ok((report, listeners)) => {
            let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
            if send_report(control, &report, &fds).is_err() {
                return EXIT_SETUP_FAILED;
            }
            drop(listeners);
            let code = run_command(plan, control);
            // The supervisor may exit with the code now, before this process exits: the
            // kernel's teardown of the jail's namespaces (unmounting the mount namespace's
            // copy of every mount takes a while) then happens off `boundary run`'s path. Only
            // when nothing else runs in the jail: otherwise the supervisor waits, as before,
            // until this process's exit has ended the rest of the jail.
            if signals::jail_is_empty() {
                signals::write_exit_report(exit_report.as_fd(), code);
            }
            code
        }
    }
}

type Listeners = Vec<(ListenerKind, OwnedFd)>;

fn build(
    plan: &JailPlan,
    control: &OwnedFd,
    uid: Uid,
    gid: Gid,
) -> Result<(Report, Listeners), JailError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| JailError::other("setting the parent-death signal", e))?;
    // The supervisor may have died between `clone` and `set_pdeathsig`; then the signal never
    // comes.
    if peer_closed(control) {
        return Err(JailError::Other(
            "boundary run exited while the jail started".into(),
        ));
    }
    enter_namespaces(plan.tier)?;
    if plan.tier == Tier::Userns {
        map_ids(uid, gid)?;
    }
    let ipv6 = netlink::loopback_only_routes(true).map_err(|e| JailError::from_netlink(&e))?;
    netlink::install_ruleset(FORWARDER_PORT, DNS_PORT, &plan.pod_local_ports)
        .map_err(|e| JailError::from_netlink(&e))?;
    let listeners = listeners(ipv6)?;
    let mounts = mounts::prepare_view(&plan.mounts)?;
    // Meanwhile the supervisor writes the jail's files (the proxy's CA, the trust bundle); its
    // go-ahead says they are there.
    let mut go = [0u8; 1];
    if !matches!(recv(control.as_raw_fd(), &mut go, MsgFlags::empty()), Ok(1)) {
        return Err(JailError::Other(
            "boundary run stopped while the jail started".into(),
        ));
    }
    mounts::install_files(&plan.mounts)?;
    let report = Report::Ready {
        ipv6,
        mounts,
        listeners: listeners.iter().map(|(k, _)| *k).collect(),
    };
    Ok((report, listeners))
}

/// The jail's namespaces that `clone` leaves to the init (see [`crate::spawn::spawn`]): made
/// here, in the namespaces `clone` made, they are the same as if `clone` had made them.
const JAIL_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNET
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWIPC);

/// Moves the init into new network, mount and IPC namespaces (owned by the jail's user
/// namespace in tier userns); nothing of the jail is built before.
fn enter_namespaces(tier: Tier) -> Result<(), JailError> {
    nix::sched::unshare(JAIL_NAMESPACES).map_err(|errno| {
        JailError::namespaces_denied(
            tier,
            "unshare(CLONE_NEWNET|CLONE_NEWNS|CLONE_NEWIPC)",
            errno,
        )
    })
}

/// Identity maps: the caller's uid and gid, and nothing else, exist in the jail's user namespace.
fn map_ids(uid: Uid, gid: Gid) -> Result<(), JailError> {
    let write = |file: &str, content: String| {
        std::fs::write(format!("/proc/self/{file}"), content.as_bytes())
            .map_err(|e| JailError::other(&format!("writing /proc/self/{file}"), e))
    };
    nix::sys::prctl::set_dumpable(true).map_err(|e| JailError::other("set_dumpable", e))?;
    write("setgroups", "deny".into())?;
    if let Err(e) = std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n")) {
        // Since Linux 5.12 only a process that held CAP_SETFCAP may map uid 0.
        if uid.is_root() && e.raw_os_error() == Some(libc::EPERM) {
            return Err(JailError::Other(
                "writing /proc/self/uid_map: EPERM: boundary runs as root without CAP_SETFCAP, and since \
                 Linux 5.12 mapping uid 0 into a user namespace needs it. Fix: run the container as a \
                 non-root user (securityContext.runAsUser), or keep SETFCAP \
                 (securityContext.capabilities.add: [SETFCAP]; the jail drops it before the command runs)"
                    .into(),
            ));
        }
        return Err(JailError::other("writing /proc/self/uid_map", e));
    }
    write("gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

fn listeners(ipv6: bool) -> Result<Listeners, JailError> {
    let tcp = |addr: &str, kind| {
        TcpListener::bind(addr)
            .map(|l| (kind, OwnedFd::from(l)))
            .map_err(|e| JailError::other(&format!("listening on {addr} inside the jail"), e))
    };
    let udp = |addr: &str, kind| {
        UdpSocket::bind(addr)
            .map(|s| (kind, OwnedFd::from(s)))
            .map_err(|e| JailError::other(&format!("binding {addr} inside the jail"), e))
    };
    let mut out = vec![
        tcp(
            &format!("127.0.0.1:{FORWARDER_PORT}"),
            ListenerKind::Forward4,
        )?,
        udp(&format!("127.0.0.1:{DNS_PORT}"), ListenerKind::DnsUdp4)?,
        tcp(&format!("127.0.0.1:{DNS_PORT}"), ListenerKind::DnsTcp4)?,
    ];
    if ipv6 {
        out.push(tcp(
            &format!("[::1]:{FORWARDER_PORT}"),
            ListenerKind::Forward6,
        )?);
        out.push(udp(&format!("[::1]:{DNS_PORT}"), ListenerKind::DnsUdp6)?);
        out.push(tcp(&format!("[::1]:{DNS_PORT}"), ListenerKind::DnsTcp6)?);
    }
    Ok(out)
}

/// Forks the command, reports a failed exec, then supervises.
fn run_command(plan: &JailPlan, control: &OwnedFd) -> i32 {
    let Ok((read_end, write_end)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        eprintln!("boundary: cannot create a pipe in the jail");
        return EXIT_SETUP_FAILED;
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("boundary: cannot fork the command in the jail: {e}");
            EXIT_SETUP_FAILED
        }
        Ok(Forked::Child) => {
            drop(read_end);
            let errno = exec_command(plan);
            let _ = nix::unistd::write(&write_end, &(errno as i32).to_ne_bytes());
            std::process::exit(match errno {
                Errno::ENOENT => EXIT_NOT_FOUND,
                _ => EXIT_NOT_EXECUTABLE,
            });
        }
        Ok(Forked::Parent(child)) => {
            drop(write_end);
            let mut buf = [0u8; 4];
            let n = nix::unistd::read(&read_end, &mut buf).unwrap_or(0);
            if n == 4 {
                let errno = Errno::from_raw(i32::from_ne_bytes(buf));
                let program = plan
                    .command
                    .first()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let why = match errno {
                    Errno::ENOENT => "command not found".to_owned(),
                    Errno::EACCES => "permission denied (not executable?)".to_owned(),
                    other => other.desc().to_owned(),
                };
                eprintln!("boundary: cannot run {program:?} in the jail: {why}");
            }
            drop(read_end);
            // The init needs nothing more: no capabilities, not traceable by the command.
            let _ = privileges::drop_all();
            let _ = nix::sys::prctl::set_dumpable(false);
            // Meanwhile, serve the supervisor's requests for sockets of this namespace.
            let mut serve = || {
                if serve_socket_request(control) {
                    signals::Serve::Again
                } else {
                    signals::Serve::Stop
                }
            };
            signals::supervise_serving(child, true, Some((control.as_fd(), &mut serve)))
        }
    }
}

/// Drops every privilege and execs; returns only on failure.
fn exec_command(plan: &JailPlan) -> Errno {
    if let Err(e) = signals::unblock_all() {
        return e;
    }
    if let Err(e) = privileges::drop_all() {
        eprintln!("boundary: dropping privileges failed: {e}");
        return e;
    }
    if let Err(e) = sys::cloexec_from(3) {
        return e;
    }
    exec(&plan.command, &plan.env, &plan.env_remove)
}

/// `execvpe` with the current environment minus `remove`, plus `extra` (which wins); returns
/// only on failure.
pub(super) fn exec(
    command: &[OsString],
    extra: &[(OsString, OsString)],
    remove: &[OsString],
) -> Errno {
    let cstr = |s: &OsString| CString::new(s.as_bytes()).map_err(|_| Errno::EINVAL);
    let Ok(argv) = command.iter().map(cstr).collect::<Result<Vec<_>, _>>() else {
        return Errno::EINVAL;
    };
    let Some(program) = argv.first().cloned() else {
        return Errno::ENOENT;
    };
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !extra.iter().any(|(ek, _)| ek == k) && !remove.contains(k))
        .collect();
    env.extend(extra.iter().cloned());
    let Ok(envp) = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| Errno::EINVAL)
        })
        .collect::<Result<Vec<_>, _>>()
    else {
        return Errno::EINVAL;
    };
    match nix::unistd::execvpe(&program, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Non-blocking peek: `Ok(0)` means the supervisor closed its end (it never writes, so a live
/// supervisor gives EAGAIN).
fn peer_closed(control: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    matches!(
        recv(
            control.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(0)
    )
}
