//! Signals: the supervisor and the jail's init forward what they are sent to the command and
//! report its exit.
//!
//! Signals a terminal generates (Ctrl-C, Ctrl-\, window changes) reach every process of the
//! foreground process group, the command included, so they are *not* forwarded again
//! (`si_code == SI_KERNEL`); signals sent with `kill` (SIGTERM from the kubelet, a user's `kill`)
//! are. The set is blocked in every thread and read from a signalfd, so no handler runs and the
//! supervisor and init can never be killed by a forwarded signal themselves.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals forwarded to the command, plus SIGCHLD (which the supervisors handle themselves).
pub fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGALRM,
        Signal::SIGCHLD,
    ] {
        set.add(sig);
    }
    set
}

/// Blocks [`forwarded`] in the calling thread; threads spawned afterwards inherit the mask.
pub fn block_forwarded() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded()), None)
}

/// Restores an empty signal mask (in the command, just before exec).
pub fn unblock_all() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Forwards signals to `main` and reaps children until `main` exits; returns its exit code.
/// With `reap_all` (the jail's init, which inherits orphans) every child is reaped.
pub fn supervise(main: Pid, reap_all: bool) -> i32 {
    supervise_serving(main, reap_all, None)
}

/// [`supervise`], and meanwhile calls `serve` whenever `fd` is readable (the jail's init serves
/// the supervisor's requests this way); once `serve` returns false, `fd` is no longer watched.
pub fn supervise_serving(
    main: Pid,
    reap_all: bool,
    mut extra: Option<(BorrowedFd<'_>, &mut dyn FnMut() -> bool)>,
) -> i32 {
    let fd = match SignalFd::with_flags(&forwarded(), SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("boundary: cannot watch signals ({e}); waiting without forwarding");
            return wait_blocking(main);
        }
    };
    loop {
        if let Some(code) = reap(main, reap_all) {
            return code;
        }
        if let Some((other, serve)) = &mut extra {
            match crate::sys::poll_readable(&[fd.as_fd(), *other]) {
                Ok(ready) => {
                    if ready[1] && !serve() {
                        extra = None;
                    }
                    if !ready[0] {
                        continue;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => extra = None,
            }
        }
        let info = match fd.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => {
                eprintln!("boundary: reading signals failed ({e}); waiting without forwarding");
                return wait_blocking(main);
            }
        };
        let Ok(sig) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else {
            continue;
        };
        // SI_USER, SI_QUEUE, SI_TKILL... are <= 0; the kernel's own (tty) signals are SI_KERNEL.
        if sig != Signal::SIGCHLD && info.ssi_code <= 0 {
            let _ = kill(main, sig);
        }
    }
}

/// Reaps what has exited; `Some(code)` once `main` has.
fn reap(main: Pid, reap_all: bool) -> Option<i32> {
    let target = if reap_all { Pid::from_raw(-1) } else { main };
    loop {
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(status) => {
                if status.pid() == Some(main)
                    && let Some(code) = exit_code(status)
                {
                    return Some(code);
                }
            }
        }
    }
}

fn wait_blocking(main: Pid) -> i32 {
    loop {
        match waitpid(main, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return code;
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return crate::EXIT_SETUP_FAILED,
        }
    }
}

/// The exit code for a wait status: the code itself, or 128+N for death by signal N.
pub fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}
