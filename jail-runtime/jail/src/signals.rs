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

/// [`supervise`] for the supervisor of a jail whose init writes the command's exit code to
/// `report` (the read end of the init's exit pipe) before the init tears the jail down: the
/// code is returned as soon as it is there, without waiting for the init's own exit (the
/// kernel's unmounting of the jail's mount namespace takes a while). Without a code (the init
/// was killed, or other processes outlived the command) the pipe ends empty, and `main`'s own
/// exit status counts as before.
pub fn supervise_reported(main: Pid, report: BorrowedFd<'_>) -> i32 {
    let mut read_code = || match read_exit_report(report) {
        Some(code) => Serve::Exit(code),
        None => Serve::Stop,
    };
    supervise_serving(main, false, Some((report, &mut read_code)))
}

/// Writes the command's exit code for [`supervise_reported`] (in the jail's init).
pub(crate) fn write_exit_report(report: BorrowedFd<'_>, code: i32) {
    let _ = nix::unistd::write(report, &code.to_ne_bytes());
}

/// The code [`write_exit_report`] wrote; `None` at the end of the pipe (no code came).
fn read_exit_report(report: BorrowedFd<'_>) -> Option<i32> {
    let mut code = [0u8; 4];
    loop {
        match nix::unistd::read(report, &mut code) {
            // One write of 4 bytes to a pipe is atomic: it is read whole or not at all.
            Ok(4) => return Some(i32::from_ne_bytes(code)),
            Err(Errno::EINTR) => {}
            Ok(_) | Err(_) => return None,
        }
    }
}

/// What [`supervise_serving`]'s `serve` asks for after one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Keep watching the descriptor.
    Again,
    /// Stop watching it (its peer is gone); supervise on.
    Stop,
    /// Return this exit code now.
    Exit(i32),
}

/// [`supervise`], and meanwhile calls `serve` whenever `fd` is readable (the jail's init serves
/// the supervisor's requests this way, the supervisor reads the init's exit report).
pub fn supervise_serving(
    main: Pid,
    reap_all: bool,
    mut extra: Option<(BorrowedFd<'_>, &mut dyn FnMut() -> Serve)>,
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
                    if ready[1] {
                        match serve() {
                            Serve::Again => {}
                            Serve::Stop => extra = None,
                            Serve::Exit(code) => return code,
                        }
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

/// In the jail's init, after the command (`main`) has exited: reaps what else has exited and
/// tells whether the jail is now empty (no process but the init). Every process of the jail
/// descends from the init, and orphans become its children, so no child means none at all.
pub(crate) fn jail_is_empty() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return e == Errno::ECHILD,
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use nix::unistd::Pid;

    use super::{supervise_reported, write_exit_report};

    fn pid_of(child: &std::process::Child) -> Pid {
        Pid::from_raw(i32::try_from(child.id()).unwrap())
    }

    /// A reported code is returned at once, while `main` still runs (the init may still be
    /// tearing the jail down).
    #[test]
    fn a_reported_exit_code_is_returned_without_waiting_for_main() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        write_exit_report(write.as_fd(), 137);
        drop(write);
        let started = Instant::now();
        assert_eq!(supervise_reported(pid_of(&child), read.as_fd()), 137);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "returned before main exited"
        );
        assert!(child.try_wait().unwrap().is_none(), "main still runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Without a report (the pipe ends empty: the init was killed, or other processes outlived
    /// the command), `main`'s own exit status counts.
    #[test]
    fn without_a_report_the_exit_status_of_main_counts() {
        // Reaped by `supervise_reported` itself (its waitpid is what the test checks).
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = pid_of(&child);
        // Until it is a zombie: its exit status is then there to reap whatever happens to the
        // SIGCHLD (process-directed, it may reach another thread of the test harness).
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z ")
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        drop(write);
        assert_eq!(supervise_reported(pid, read.as_fd()), 7);
    }
}
