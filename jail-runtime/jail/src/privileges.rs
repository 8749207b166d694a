//! Leaving the jail's set-up privileges behind before the command runs: no capability in any set
//! (effective, permitted, inheritable, ambient, bounding), secure bits that make uid 0 ordinary,
//! and `no_new_privs` so no exec can gain anything back (setuid bits and file capabilities are
//! ignored).

use nix::errno::Errno;

use crate::sys;

/// What dropping managed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The bounding set and secure bits could be changed (needs `CAP_SETPCAP`); without it, the
    /// bounding set stays but `no_new_privs` with empty permitted sets still bars regaining any
    /// capability.
    pub bounding_cleared: bool,
}

/// Drops everything. Order matters: secure bits and the bounding set need `CAP_SETPCAP`, which
/// the final `capset` removes.
pub fn drop_all() -> Result<Dropped, Errno> {
    let bounding_cleared =
        match sys::lock_securebits().and_then(|()| sys::drop_bounding_and_ambient()) {
            Ok(()) => true,
            // Without CAP_SETPCAP (landlock tier as a non-root user): keep going with what works.
            Err(Errno::EPERM) => false,
            Err(e) => return Err(e),
        };
    if !bounding_cleared {
        clear_ambient_best_effort();
    }
    nix::sys::prctl::set_no_new_privs()?;
    sys::clear_capabilities()?;
    Ok(Dropped { bounding_cleared })
}

fn clear_ambient_best_effort() {
    // Clearing the ambient set needs no capability.
    let _ = sys::drop_bounding_and_ambient();
}

/// Whether this process has `cap` (a `CAP_*` number) in its effective set.
pub fn has_effective(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

/// `CAP_NET_ADMIN`.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;
