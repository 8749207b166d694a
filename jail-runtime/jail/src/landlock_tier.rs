//! The landlock tier, for nodes where no namespace can be created (e.g. EKS Fargate with a 6.7+
//! kernel). Weaker than the namespaced tiers, and said so at start and in every audit record:
//!
//! - Landlock (ABI 4+) allows TCP `connect` only to the proxy's port, and no TCP `bind`. Landlock
//!   matches the port alone, so a remote host listening on that very port is reachable: the
//!   proxy port is chosen at random per run to make that unlikely, not impossible.
//! - A seccomp filter refuses UDP, raw and packet sockets (Landlock does not cover them) and
//!   `io_uring` (which could create sockets around seccomp).
//! - With ABI 6+, the command cannot signal processes outside its domain or reach abstract unix
//!   sockets.
//! - Traffic reaches the proxy only when tools honour `HTTP(S)_PROXY`; others fail closed.

use std::ffi::OsString;

use landlock::{
    ABI, Access, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use nix::unistd::Pid;

use crate::error::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, JailError};
use crate::sys::{self, Forked};
use crate::{privileges, signals};

/// Landlock ABI that first restricts TCP connect.
pub const MIN_ABI: i32 = 4;

/// What the landlock tier needs.
#[derive(Debug, Clone)]
pub struct LandlockPlan {
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Variables added to the command's environment (proxy and CA variables).
    pub env: Vec<(OsString, OsString)>,
    /// The only TCP port the command may connect to.
    pub proxy_port: u16,
}

/// Forks the command under Landlock and seccomp. Single-threaded callers only.
pub fn spawn(plan: &LandlockPlan) -> Result<Pid, JailError> {
    let abi = sys::landlock_abi();
    if abi < MIN_ABI {
        return Err(JailError::LandlockUnavailable { abi });
    }
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| JailError::other("creating a pipe", e))?;
    match sys::fork().map_err(|e| JailError::other("forking the command", e))? {
        Forked::Child => {
            drop(read_end);
            let message = match restrict_and_exec(plan) {
                Failure::Setup(msg) => msg,
                Failure::Exec(errno) => {
                    let _ =
                        nix::unistd::write(&write_end, format!("exec:{}", errno as i32).as_bytes());
                    std::process::exit(if errno == nix::errno::Errno::ENOENT {
                        EXIT_NOT_FOUND
                    } else {
                        EXIT_NOT_EXECUTABLE
                    });
                }
            };
            let _ = nix::unistd::write(&write_end, message.as_bytes());
            std::process::exit(crate::EXIT_SETUP_FAILED);
        }
        Forked::Parent(child) => {
            drop(write_end);
            let mut buf = vec![0u8; 4096];
            let n = nix::unistd::read(&read_end, &mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(errno) = text.strip_prefix("exec:") {
                let errno = nix::errno::Errno::from_raw(errno.parse().unwrap_or(0));
                let program = plan
                    .command
                    .first()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                eprintln!("boundary: cannot run {program:?}: {}", errno.desc());
            } else if n > 0 {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(JailError::Other(text));
            }
            Ok(child)
        }
    }
}

enum Failure {
    Setup(String),
    Exec(nix::errno::Errno),
}

fn restrict_and_exec(plan: &LandlockPlan) -> Failure {
    if let Err(e) = signals::unblock_all() {
        return Failure::Setup(format!("resetting the signal mask: {e}"));
    }
    if let Err(e) = privileges::drop_all() {
        return Failure::Setup(format!("dropping privileges: {e}"));
    }
    if let Err(e) = sys::install_seccomp_filter(&socket_filter()) {
        return Failure::Setup(format!("installing the seccomp filter: {e}"));
    }
    if let Err(e) = restrict_network(plan.proxy_port) {
        return Failure::Setup(format!("applying Landlock: {e}"));
    }
    if let Err(e) = sys::cloexec_from(3) {
        return Failure::Setup(format!("closing descriptors: {e}"));
    }
    Failure::Exec(crate::init::exec(&plan.command, &plan.env, &[]))
}

fn restrict_network(proxy_port: u16) -> Result<(), landlock::RulesetError> {
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(ABI::V4))?
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .add_rule(NetPort::new(proxy_port, AccessNet::ConnectTcp))?;
    ruleset.restrict_self()?;
    Ok(())
}

/// Classic BPF: for the native architecture, refuse `socket(AF_INET|AF_INET6, anything but
/// SOCK_STREAM)`, `socket(AF_PACKET, ...)` and `io_uring_setup`; allow everything else. Other
/// architectures (32-bit compat) get EPERM for every system call, which fails closed.
fn socket_filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7;
    let eperm = ERRNO | 0x01;
    let eacces = ERRNO | 0x0d;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    };
    let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(u32::MAX);
    let af = |n: libc::c_int| u32::try_from(n).unwrap_or(u32::MAX);
    vec![
        /* 0 */ stmt(LD_W_ABS, 4), // arch
        /* 1 */ jeq(ARCH, 1, 0),
        /* 2 */ stmt(RET_K, eperm),
        /* 3 */ stmt(LD_W_ABS, 0), // syscall number
        /* 4 */ jeq(nr(libc::SYS_io_uring_setup), 0, 1),
        /* 5 */ stmt(RET_K, eperm),
        /* 6 */ jeq(nr(libc::SYS_socket), 1, 0),
        /* 7 */ stmt(RET_K, ALLOW),
        /* 8 */ stmt(LD_W_ABS, 16), // args[0]: domain (low 32 bits)
        /* 9 */ jeq(af(libc::AF_PACKET), 0, 1),
        /* 10 */ stmt(RET_K, eacces),
        /* 11 */ jeq(af(libc::AF_INET), 2, 0),
        /* 12 */ jeq(af(libc::AF_INET6), 1, 0),
        /* 13 */ stmt(RET_K, ALLOW),
        /* 14 */ stmt(LD_W_ABS, 24), // args[1]: type (low 32 bits)
        /* 15 */ stmt(AND_K, 0xf), // SOCK_TYPE_MASK: drop SOCK_NONBLOCK/SOCK_CLOEXEC
        /* 16 */ jeq(af(libc::SOCK_STREAM), 0, 1),
        /* 17 */ stmt(RET_K, ALLOW),
        /* 18 */ stmt(RET_K, eacces),
    ]
}
