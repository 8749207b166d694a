//! `--seccomp-dir DIR`: installs the Localhost seccomp profile `agent-boundary-userns.json` (the
//! container runtime's default profile plus namespace creation; derivation in
//! `SECCOMP-PROFILE.md` next to this file) into kubelet's seccomp directory, so jailed pods can
//! use `seccompProfile: {type: Localhost}` instead of `Unconfined`.
//!
//! The file is written to a temporary name in the same directory and renamed into place, so a
//! kubelet starting a container never reads half a profile. It is checked before every probe and
//! rewritten when missing or different (someone edited it, or a newer agent ships a new one).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use boundary_api::contract::objects;

use super::Error;

/// The profile, as installed.
pub const PROFILE: &str = include_str!("seccomp-profile.json");

/// What [`ensure_installed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The profile's path.
    pub path: PathBuf,
    /// It was missing or different and has been (re)written.
    pub written: bool,
}

/// Makes `dir/agent-boundary-userns.json` hold [`PROFILE`].
pub fn ensure_installed(dir: &Path) -> Result<Installed, Error> {
    let path = dir.join(objects::SECCOMP_PROFILE);
    if std::fs::read(&path).is_ok_and(|current| current == PROFILE.as_bytes()) {
        return Ok(Installed {
            path,
            written: false,
        });
    }
    let fail = |action: &'static str| {
        let path = path.clone();
        move |source| Error::Seccomp {
            path,
            action,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(fail("creating the directory"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        objects::SECCOMP_PROFILE,
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(PROFILE.as_bytes())?;
        // On disk before the rename: after a crash the name holds the old or the new profile.
        file.sync_all()?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("writing")(e));
    }
    Ok(Installed {
        path,
        written: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// One rule of the profile, with every field the OCI and Docker formats define for rules.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        names: Vec<String>,
        action: String,
        #[serde(default)]
        args: Vec<Arg>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Arg {
        index: u32,
        value: u64,
        op: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Profile {
        default_action: String,
        default_errno_ret: u32,
        architectures: Vec<String>,
        syscalls: Vec<Rule>,
    }

    fn profile() -> Profile {
        serde_json::from_str(PROFILE).expect("the profile parses")
    }

    /// Names allowed unconditionally, and names allowed only for some argument values.
    fn allowed(p: &Profile) -> (BTreeSet<&str>, BTreeMap<&str, usize>) {
        let mut always = BTreeSet::new();
        let mut conditional = BTreeMap::new();
        for rule in &p.syscalls {
            assert_eq!(rule.action, "SCMP_ACT_ALLOW", "only allow rules");
            for name in &rule.names {
                if rule.args.is_empty() {
                    assert!(always.insert(name.as_str()), "{name} listed twice");
                } else {
                    *conditional.entry(name.as_str()).or_default() += 1;
                }
            }
        }
        (always, conditional)
    }

    #[test]
    fn the_profile_is_an_allow_list_both_runtime_formats_read_alike() {
        let p = profile();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, 1, "EPERM, like the runtime default");
        for arch in ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"] {
            assert!(p.architectures.iter().any(|a| a == arch), "{arch}");
        }
        // `deny_unknown_fields` above: no Docker-only `includes`/`excludes`, which an OCI
        // loader would drop, turning a conditional allow into an unconditional one.
        assert!(!PROFILE.contains("includes") && !PROFILE.contains("excludes"));
        for rule in &p.syscalls {
            for arg in &rule.args {
                assert!(arg.index < 6);
                assert!(["SCMP_CMP_EQ", "SCMP_CMP_NE"].contains(&arg.op.as_str()));
            }
        }
        let (always, conditional) = allowed(&p);
        for name in conditional.keys() {
            assert!(!always.contains(name), "{name} is also allowed outright");
        }
        assert_eq!(conditional.get("personality"), Some(&5));
        let socket = p.syscalls.iter().find(|r| r.names == ["socket"]).unwrap();
        assert_eq!(socket.args.len(), 1);
        assert_eq!(
            (socket.args[0].value, socket.args[0].op.as_str()),
            (40, "SCMP_CMP_NE"),
            "AF_VSOCK stays refused"
        );
        // Sanity of the copied list: the everyday calls are there.
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "mmap",
            "futex",
            "epoll_wait",
        ] {
            assert!(always.contains(name), "{name}");
        }
    }

    #[test]
    fn namespace_creation_is_allowed() {
        let p = profile();
        let (always, _) = allowed(&p);
        // What jail-runtime/jail calls for the userns tier, and what any userns sandbox
        // needs next to it.
        for name in [
            "clone",
            "clone3",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            // Also in the runtime default; the jail depends on them.
            "capset",
            "prctl",
            "seccomp",
            "close_range",
            "landlock_create_ruleset",
            "landlock_add_rule",
            "landlock_restrict_self",
            "setsockopt",
            "sendmsg",
            "recvmsg",
            "socketpair",
        ] {
            assert!(always.contains(name), "{name} must be allowed");
        }
    }

    #[test]
    fn what_the_runtime_default_refuses_stays_refused() {
        let p = profile();
        let (always, conditional) = allowed(&p);
        for name in [
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "iopl",
            "ioperm",
            "open_by_handle_at",
            "settimeofday",
            "clock_settime",
            "stime",
            "syslog",
            "quotactl",
            "lookup_dcookie",
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "fanotify_init",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "sethostname",
            "setdomainname",
            "vhangup",
            "mbind",
            "set_mempolicy",
            "uselib",
            "ustat",
            "_sysctl",
            "nfsservctl",
            "vm86",
            "vm86old",
        ] {
            assert!(
                !always.contains(name) && !conditional.contains_key(name),
                "{name} must stay refused"
            );
        }
    }

    #[test]
    fn installation_is_atomic_idempotent_and_repairs_edits() {
        let dir = std::env::temp_dir().join(format!("boundary-seccomp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kubelet_dir = dir.join("var/lib/kubelet/seccomp");
        let first = ensure_installed(&kubelet_dir).unwrap();
        assert!(first.written);
        assert_eq!(first.path, kubelet_dir.join("agent-boundary-userns.json"));
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), PROFILE);
        let again = ensure_installed(&kubelet_dir).unwrap();
        assert!(!again.written, "unchanged content is not rewritten");
        std::fs::write(&first.path, "{}").unwrap();
        assert!(ensure_installed(&kubelet_dir).unwrap().written);
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), PROFILE);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&kubelet_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["agent-boundary-userns.json"]);

        // An unwritable place: an error naming the file.
        let blocker = dir.join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = ensure_installed(&blocker.join("seccomp")).unwrap_err();
        assert!(matches!(err, Error::Seccomp { .. }), "{err}");
        assert!(
            err.to_string().contains("agent-boundary-userns.json"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
