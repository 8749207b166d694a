//! Why a jail could not be built, in words a person can act on: what failed, why, and the fix.

use boundary_api::Tier;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::netlink::NetlinkError;

/// Exit code of `boundary run` when the jail could not be set up (CMD never ran). Like `docker
/// run`'s 125; 126 and 127 keep their shell meanings (found but not executable, not found).
pub const EXIT_SETUP_FAILED: i32 = 125;
/// CMD exists but could not be executed.
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// CMD was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A jail set-up failure. Serialisable: the jail's init process reports it to `boundary run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
// Adjacently tagged: an internally tagged enum cannot carry the newtype variants (`Other`,
// `Network`, ...), and an init whose report does not serialise fails without saying why.
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum JailError {
    /// `clone(CLONE_NEWUSER)` failed.
    #[error("{}", user_namespace_message(*errno, facts))]
    UserNamespaceDenied {
        /// The errno of clone/unshare.
        errno: i32,
        /// What the node looks like, to name the right fix.
        facts: UsernsFacts,
    },
    /// The privileged-netns tier lacks `CAP_SYS_ADMIN` or `CAP_NET_ADMIN`.
    #[error(
        "tier privileged-netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN, and this process lacks {missing}. \
         Fix: add them to the container (securityContext.capabilities.add: [SYS_ADMIN, NET_ADMIN]) \
         and run boundary as root; both are dropped from every set before the command runs. Or use \
         --tier userns where user namespaces work"
    )]
    MissingCapabilities {
        /// The missing capability names.
        missing: String,
    },
    /// Creating the network namespace failed in the privileged-netns tier.
    #[error("creating the jail's namespaces failed: {call}. {}", seccomp_hint(*seccomp_filter))]
    NamespaceDenied {
        /// The failed call and errno.
        call: String,
        /// A seccomp filter is active.
        seccomp_filter: bool,
    },
    /// nftables is not available in the kernel.
    #[error(
        "nf_tables is unavailable in this kernel ({0}): the jail redirects traffic with nftables \
         inside its own network namespace. Fix: use a node kernel with nf_tables, nft_redir, \
         nft_reject_inet and nf_nat (loaded as modules or built in), or --tier landlock"
    )]
    NfTablesUnavailable(String),
    /// Another netlink request failed.
    #[error("configuring the jail's network failed: {0}")]
    Network(String),
    /// A mount inside the jail's mount namespace failed.
    #[error("preparing the jail's filesystem view failed: {what}: {errno}")]
    Mount {
        /// What was being mounted.
        what: String,
        /// The errno, as text.
        errno: String,
    },
    /// Landlock is missing or too old.
    #[error(
        "tier landlock needs Landlock ABI 4 or newer (Linux 6.7+) with Landlock enabled; this \
         kernel offers ABI {abi}. Fix: use a newer kernel (add `landlock` to the lsm= boot \
         parameter if it is compiled in), or a namespaced tier"
    )]
    LandlockUnavailable {
        /// ABI version the kernel reports (0: none).
        abi: i32,
    },
    /// No tier works here; each attempt's reason.
    #[error("no jail tier works here:\n{}", .0.join("\n"))]
    NoTierWorks(Vec<String>),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl JailError {
    /// A plain failure with context.
    pub fn other(context: &str, err: impl std::fmt::Display) -> JailError {
        JailError::Other(format!("{context}: {err}"))
    }

    /// A call that makes namespaces (`call`, e.g. `clone(CLONE_NEWPID)`) failed with `errno`:
    /// in tier userns the node's user namespace facts name the fix, otherwise the call does.
    pub fn namespaces_denied(tier: Tier, call: &str, errno: Errno) -> JailError {
        match tier {
            Tier::Userns => JailError::UserNamespaceDenied {
                errno: errno as i32,
                facts: UsernsFacts::read(),
            },
            _ => JailError::NamespaceDenied {
                call: format!("{call}: {errno}"),
                seccomp_filter: UsernsFacts::read().seccomp_filter,
            },
        }
    }

    /// Maps a netlink failure to the error a person can act on.
    pub fn from_netlink(e: &NetlinkError) -> JailError {
        let nft = e.what.contains("nftables") || e.what.contains("netfilter");
        if nft
            && matches!(
                e.errno,
                Errno::EPROTONOSUPPORT | Errno::ENOENT | Errno::EOPNOTSUPP | Errno::EAFNOSUPPORT
            )
        {
            JailError::NfTablesUnavailable(e.to_string())
        } else {
            JailError::Network(e.to_string())
        }
    }
}

/// Facts read when user namespace creation fails, to tell the causes apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsFacts {
    /// `user.max_user_namespaces`, when readable.
    pub max_user_namespaces: Option<u64>,
    /// `kernel.apparmor_restrict_unprivileged_userns` is 1.
    pub apparmor_restricts: bool,
    /// A seccomp filter is active on this process (`Seccomp: 2`).
    pub seccomp_filter: bool,
    /// `kernel.unprivileged_userns_clone` is 0 (Debian/Ubuntu knob).
    pub unprivileged_clone_disabled: bool,
}

impl UsernsFacts {
    /// Reads the facts of the running system.
    pub fn read() -> UsernsFacts {
        let num = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let seccomp_filter = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim() == "2"))
            })
            .unwrap_or(false);
        UsernsFacts {
            max_user_namespaces: num("/proc/sys/user/max_user_namespaces"),
            apparmor_restricts: num("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
                == Some(1),
            seccomp_filter,
            unprivileged_clone_disabled: num("/proc/sys/kernel/unprivileged_userns_clone")
                == Some(0),
        }
    }
}

fn seccomp_hint(seccomp_filter: bool) -> &'static str {
    if seccomp_filter {
        "A seccomp filter is active (the container runtime's default profile blocks namespace \
         creation without CAP_SYS_ADMIN)"
    } else {
        ""
    }
}

fn user_namespace_message(errno: i32, facts: &UsernsFacts) -> String {
    let errno = Errno::from_raw(errno);
    let head = format!("creating the jail's user namespace failed ({errno})");
    let fix = if facts.max_user_namespaces == Some(0) || errno == Errno::ENOSPC {
        "user namespaces are disabled: sysctl user.max_user_namespaces is 0 (the Bottlerocket and \
         EKS Auto Mode default). Fix: set user.max_user_namespaces to e.g. 15000 on the node \
         (Bottlerocket: settings.kernel.sysctl), or use --tier privileged-netns, which needs \
         CAP_SYS_ADMIN and CAP_NET_ADMIN"
    } else if facts.unprivileged_clone_disabled {
        "unprivileged user namespaces are disabled: sysctl kernel.unprivileged_userns_clone is 0. \
         Fix: set it to 1 on the node, or use --tier privileged-netns"
    } else if facts.apparmor_restricts {
        "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, \
         Ubuntu 23.10+). Fix: set that sysctl to 0 on the node, give the agent an AppArmor profile \
         that allows userns, or use --tier privileged-netns"
    } else if facts.seccomp_filter && errno == Errno::EPERM {
        "the seccomp profile denies clone/unshare with CLONE_NEWUSER (RuntimeDefault does). Fix: set \
         the container's securityContext.seccompProfile to {type: Localhost, localhostProfile: \
         agent-boundary-userns.json} (installed by the node agent) or {type: Unconfined}; the \
         Agent Boundary webhook does this automatically"
    } else if errno == Errno::EINVAL {
        "this kernel has no user namespace support (CONFIG_USER_NS). Fix: use --tier \
         privileged-netns or --tier landlock"
    } else {
        "Fix: check the node's user namespace settings, or use --tier privileged-netns"
    };
    format!("{head}: {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_names_its_fix() {
        let facts = UsernsFacts {
            max_user_namespaces: Some(0),
            ..UsernsFacts::default()
        };
        let msg = JailError::UserNamespaceDenied {
            errno: Errno::ENOSPC as i32,
            facts,
        }
        .to_string();
        assert!(
            msg.contains("user.max_user_namespaces") && msg.contains("privileged-netns"),
            "{msg}"
        );

        let facts = UsernsFacts {
            seccomp_filter: true,
            max_user_namespaces: Some(1000),
            ..UsernsFacts::default()
        };
        let msg = JailError::UserNamespaceDenied {
            errno: Errno::EPERM as i32,
            facts,
        }
        .to_string();
        assert!(
            msg.contains("seccompProfile") && msg.contains("Localhost"),
            "{msg}"
        );

        let facts = UsernsFacts {
            apparmor_restricts: true,
            max_user_namespaces: Some(1000),
            ..UsernsFacts::default()
        };
        let msg = JailError::UserNamespaceDenied {
            errno: Errno::EACCES as i32,
            facts,
        }
        .to_string();
        assert!(msg.contains("AppArmor"), "{msg}");

        let msg = JailError::MissingCapabilities {
            missing: "CAP_NET_ADMIN".into(),
        }
        .to_string();
        assert!(msg.contains("securityContext.capabilities.add"), "{msg}");

        let msg = JailError::from_netlink(&NetlinkError {
            what: "creating nftables table inet x".into(),
            errno: Errno::EPROTONOSUPPORT,
        })
        .to_string();
        assert!(msg.contains("nf_tables is unavailable"), "{msg}");
    }

    #[test]
    fn errors_of_every_kind_survive_the_trip_from_the_jail_init() {
        let every_kind = [
            JailError::UserNamespaceDenied {
                errno: libc::ENOSPC,
                facts: UsernsFacts::default(),
            },
            JailError::MissingCapabilities {
                missing: "CAP_SYS_ADMIN".into(),
            },
            JailError::NamespaceDenied {
                call: "clone".into(),
                seccomp_filter: true,
            },
            JailError::NfTablesUnavailable("ENOENT".into()),
            JailError::Network("EINVAL".into()),
            JailError::Mount {
                what: "/proc".into(),
                errno: "EPERM".into(),
            },
            JailError::LandlockUnavailable { abi: 3 },
            JailError::NoTierWorks(vec!["userns: no".into()]),
            JailError::Other("writing /proc/self/uid_map: EPERM".into()),
        ];
        for e in every_kind {
            let json = serde_json::to_string(&e).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!(serde_json::from_str::<JailError>(&json).unwrap(), e);
        }
    }
}
