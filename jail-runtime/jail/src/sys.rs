//! The kernel interface: the only module of the workspace allowed to use `unsafe`.
//!
//! Each function wraps one system call (or a tight group) that neither std nor nix exposes
//! safely, documents why it is sound, and returns `nix::Result`. Everything else in the jail is
//! safe code built on these.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Result of [`clone_into_namespaces`] and [`fork`], as seen by each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent: the child's PID (in the parent's PID namespace).
    Parent(Pid),
    /// In the child.
    Child,
}

/// `clone(flags | SIGCHLD)` without a new stack: like `fork`, but the child starts in the new
/// namespaces named by `flags` (with `CLONE_NEWPID` it is PID 1 there).
///
/// The caller must be single-threaded (the jail calls it before any thread is spawned): the child
/// is a copy of the calling thread only, and with no other threads there are no locks (allocator,
/// stdio) held by a thread that does not exist in the child.
pub fn clone_into_namespaces(flags: CloneFlags) -> nix::Result<Forked> {
    let raw = flags.bits() | libc::SIGCHLD;
    let raw = libc::c_ulong::try_from(raw).map_err(|_| Errno::EINVAL)?;
    // SAFETY: with a null stack pointer the kernel gives the child a copy-on-write copy of the
    // caller's stack, exactly as fork(2) does; the remaining pointer arguments are unused
    // without CLONE_PARENT_SETTID/CHILD_SETTID/SETTLS. Single-threadedness is the caller's
    // documented obligation.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            raw,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(
            i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?,
        ))),
    }
}

/// `fork(2)`; the caller must be single-threaded (see [`clone_into_namespaces`]).
pub fn fork() -> nix::Result<Forked> {
    // SAFETY: the caller guarantees there is only one thread, which makes everything the child
    // does before exec async-signal-safe in practice.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Secure bits that make uid 0 ordinary: no capabilities from being root or from setuid
/// transitions, no way to keep or raise ambient capabilities, each locked.
pub fn lock_securebits() -> nix::Result<()> {
    const NOROOT: libc::c_ulong = 1 << 0;
    const NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = NOROOT
        | NOROOT_LOCKED
        | NO_SETUID_FIXUP
        | NO_SETUID_FIXUP_LOCKED
        | KEEP_CAPS_LOCKED
        | NO_CAP_AMBIENT_RAISE
        | NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: PR_SET_SECUREBITS takes an integer argument; no memory is passed.
    let ret = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) };
    Errno::result(ret).map(drop)
}

/// Drops every capability from the bounding set (needs `CAP_SETPCAP`), then clears the ambient
/// set. Capabilities the running kernel does not know end the loop (EINVAL).
pub fn drop_bounding_and_ambient() -> nix::Result<()> {
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes an integer argument; no memory is passed.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        match Errno::result(ret) {
            Ok(_) => {}
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// Clears the effective, permitted and inheritable capability sets of the calling thread.
pub fn clear_capabilities() -> nix::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a v3 header and two data structs (64-bit capability sets), which is
    // exactly what is passed; both live for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    Errno::result(ret).map(drop)
}

/// Marks every file descriptor from `first` up close-on-exec, so that exactly stdin, stdout and
/// stderr reach the jailed command.
pub fn cloexec_from(first: RawFd) -> nix::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let first = libc::c_uint::try_from(first).map_err(|_| Errno::EINVAL)?;
    // SAFETY: close_range takes integers only; CLOEXEC only sets a flag.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(ret) {
        Ok(_) => Ok(()),
        // Kernels before 5.11: set the flag one descriptor at a time.
        Err(Errno::ENOSYS | Errno::EINVAL) => {
            let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
                .map_err(|_| Errno::ENOENT)?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd >= 3)
                .collect();
            for fd in fds {
                // SAFETY: F_SETFD on a descriptor that may already be closed fails with EBADF,
                // which is ignored; no memory is passed.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Takes ownership of descriptors received with `SCM_RIGHTS`.
pub fn own_received_fds(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        // SAFETY: the kernel installed these descriptors in this process for this message; no
        // one else refers to them, so each gets exactly one owner here.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect()
}

/// Installs a classic-BPF seccomp filter (`no_new_privs` must be set).
pub fn install_seccomp_filter(program: &[libc::sock_filter]) -> nix::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program during the call; `prog` and `program` outlive it.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const prog,
            0,
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// The Landlock ABI version the kernel offers; 0 when Landlock is not built in or not enabled.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the kernel only returns
    // the ABI number; no memory is read or written.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// Waits until at least one of `fds` is readable (or hung up); returns which are. Blocks
/// indefinitely; EINTR is returned to the caller.
pub fn poll_readable(fds: &[std::os::fd::BorrowedFd<'_>]) -> nix::Result<Vec<bool>> {
    use std::os::fd::AsRawFd;
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = libc::nfds_t::try_from(polled.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `polled` is a valid array of `count` pollfd structs that outlives the call; the
    // descriptors are borrowed, so they stay open during it.
    let ret = unsafe { libc::poll(polled.as_mut_ptr(), count, -1) };
    Errno::result(ret)?;
    Ok(polled.iter().map(|p| p.revents != 0).collect())
}
