//! `boundary probe`: which tiers work here, and why the others do not. Each namespaced tier is
//! tried for real in a throwaway child (create the namespaces, route through `lo`, install the
//! nftables ruleset), so the answer reflects seccomp, AppArmor, sysctls and kernel modules as
//! they are, not as configuration files claim. The report's type is the API crate's
//! ([`boundary_api::probe`]): the node agent publishes it and the operator reads it.

use std::collections::BTreeMap;

use boundary_api::Tier;
use boundary_api::probe::{ProbeFacts, ProbeReport, TierProbe};
use nix::sched::CloneFlags;

use crate::error::{JailError, UsernsFacts};
use crate::netlink;
use crate::sys::{self, Forked};
use crate::{DNS_PORT, FORWARDER_PORT, landlock_tier, privileges};

/// Probes every tier. Single-threaded callers only (it forks).
pub fn probe() -> ProbeReport {
    let userns = UsernsFacts::read();
    let facts = ProbeFacts {
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        max_user_namespaces: userns.max_user_namespaces,
        apparmor_restricts_userns: userns.apparmor_restricts,
        seccomp_filter: userns.seccomp_filter,
        landlock_abi: sys::landlock_abi(),
        uid: nix::unistd::geteuid().as_raw(),
        net_admin_and_sys_admin: privileges::has_effective(privileges::CAP_SYS_ADMIN)
            && privileges::has_effective(privileges::CAP_NET_ADMIN),
    };
    let mut tiers = BTreeMap::new();
    for tier in Tier::ALL {
        let result = match tier {
            Tier::PrivilegedNetns if !facts.net_admin_and_sys_admin => {
                Err(JailError::MissingCapabilities {
                    missing: "CAP_SYS_ADMIN and CAP_NET_ADMIN (effective)".into(),
                })
            }
            Tier::Userns | Tier::PrivilegedNetns => try_in_child(tier),
            Tier::Landlock if facts.landlock_abi < landlock_tier::MIN_ABI => {
                Err(JailError::LandlockUnavailable {
                    abi: facts.landlock_abi,
                })
            }
            Tier::Landlock => Ok(()),
        };
        tiers.insert(
            tier.as_str().to_owned(),
            TierProbe {
                works: result.is_ok(),
                reason: result.err().map(|e| e.to_string()),
            },
        );
    }
    let best = Tier::ALL.into_iter().find(|t| tiers[t.as_str()].works);
    ProbeReport {
        tiers,
        best,
        facts,
        seccomp_profile: None,
    }
}

/// Builds the tier's network in a throwaway child; the error says what failed.
fn try_in_child(tier: Tier) -> Result<(), JailError> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| JailError::other("creating a pipe", e))?;
    let flags = match tier {
        Tier::Userns => CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET,
        _ => CloneFlags::CLONE_NEWNET,
    };
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    match sys::fork().map_err(|e| JailError::other("forking a probe", e))? {
        Forked::Child => {
            drop(read_end);
            let result = build_network(tier, flags, uid, gid);
            let bytes = serde_json::to_vec(&result.err()).unwrap_or_default();
            let _ = nix::unistd::write(&write_end, &bytes);
            std::process::exit(0);
        }
        Forked::Parent(child) => {
            drop(write_end);
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = nix::unistd::read(&read_end, &mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            match serde_json::from_slice::<Option<JailError>>(&out) {
                Ok(None) => Ok(()),
                Ok(Some(e)) => Err(e),
                Err(_) => Err(JailError::Other("the probe died without an answer".into())),
            }
        }
    }
}

fn build_network(
    tier: Tier,
    flags: CloneFlags,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
) -> Result<(), JailError> {
    nix::sched::unshare(flags)
        .map_err(|errno| JailError::namespaces_denied(tier, "unshare(CLONE_NEWNET)", errno))?;
    if tier == Tier::Userns {
        let write = |file: &str, content: String| {
            std::fs::write(format!("/proc/self/{file}"), content)
                .map_err(|e| JailError::other(&format!("writing /proc/self/{file}"), e))
        };
        write("setgroups", "deny".into())?;
        write("uid_map", format!("{uid} {uid} 1\n"))?;
        write("gid_map", format!("{gid} {gid} 1\n"))?;
    }
    netlink::loopback_only_routes(true).map_err(|e| JailError::from_netlink(&e))?;
    netlink::install_ruleset(FORWARDER_PORT, DNS_PORT, &[])
        .map_err(|e| JailError::from_netlink(&e))?;
    Ok(())
}
