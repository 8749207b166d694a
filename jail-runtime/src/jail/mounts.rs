//! The jail's view of the filesystem, inside its own mount namespace (nothing here is visible to,
//! or left behind for, anyone else):
//!
//! - mount propagation is private, so nothing leaks to the caller's namespace;
//! - a fresh `/proc` for the jail's PID namespace (or, where the runtime masks `/proc` and the
//!   kernel refuses a new one, the caller's `/proc` with `boundary run`'s own entry hidden);
//! - the trust bundle (system roots + the proxy's CA) over every usual trust-store file, and a
//!   `resolv.conf` naming the jail's DNS, from a private read-only tmpfs;
//! - an empty read-only tmpfs over paths the jailed process must not reach (the proxy socket).

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::error::JailError;

/// Trust-store files of common distributions (Debian/Ubuntu/Alpine, RHEL/Amazon Linux, SUSE,
/// Arch, and the `cert.pem` alias). Only those that exist in the jail's view are covered.
pub const TRUST_STORE_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ca-certificates/extracted/tls-ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// File names inside the jail's work directory.
pub const BUNDLE_FILE: &str = "ca-bundle.crt";
/// The proxy CA alone (for `NODE_EXTRA_CA_CERTS`).
pub const CA_FILE: &str = "ca.crt";
/// The jail's resolver configuration.
pub const RESOLV_FILE: &str = "resolv.conf";

/// What the mount set-up needs.
#[derive(Debug, Clone)]
pub struct MountPlan {
    /// A directory the caller created and filled with [`BUNDLE_FILE`], [`CA_FILE`] and
    /// [`RESOLV_FILE`]; a private tmpfs replaces it inside the jail.
    pub workdir: PathBuf,
    /// The jail has its own PID namespace: mount a matching `/proc`.
    pub new_proc: bool,
    /// PID of `boundary run` in the caller's `/proc`, hidden when a new `/proc` is refused.
    pub supervisor_pid: u32,
    /// Paths to make unreachable.
    pub hide: Vec<PathBuf>,
}

/// What the mount set-up achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountReport {
    /// A private `/proc` shows only the jail's processes.
    pub private_proc: bool,
}

fn fail(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> JailError {
    let what = what.into();
    move |errno| JailError::Mount {
        what,
        errno: errno.to_string(),
    }
}

const NONE: Option<&str> = None;

/// Builds the jail's filesystem view. Runs in the jail's init, in its new mount namespace.
pub fn prepare(plan: &MountPlan) -> Result<MountReport, JailError> {
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(fail("making mount propagation private"))?;

    // Keep the prepared files in memory, then put a private tmpfs over the work directory: the
    // files exist only inside the jail and vanish with it.
    let read = |name: &str| {
        std::fs::read(plan.workdir.join(name))
            .map_err(|e| JailError::other(&format!("reading {name} from the work directory"), e))
    };
    let files = [
        (BUNDLE_FILE, read(BUNDLE_FILE)?),
        (CA_FILE, read(CA_FILE)?),
        (RESOLV_FILE, read(RESOLV_FILE)?),
    ];
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &plan.workdir,
        Some("tmpfs"),
        tmpfs_flags,
        Some("mode=0755,size=4m"),
    )
    .map_err(fail("a tmpfs for the jail's files"))?;
    for (name, bytes) in &files {
        std::fs::write(plan.workdir.join(name), bytes)
            .map_err(|e| JailError::other(&format!("writing {name}"), e))?;
    }
    read_only(&plan.workdir, tmpfs_flags).map_err(fail("making the jail's files read-only"))?;

    let bundle = plan.workdir.join(BUNDLE_FILE);
    for store in TRUST_STORE_FILES {
        if Path::new(store).is_file() {
            bind_read_only(&bundle, Path::new(store))
                .map_err(fail(format!("the trust bundle over {store}")))?;
        }
    }
    if Path::new("/etc/resolv.conf").is_file() {
        bind_read_only(
            &plan.workdir.join(RESOLV_FILE),
            Path::new("/etc/resolv.conf"),
        )
        .map_err(fail("the jail's resolv.conf over /etc/resolv.conf"))?;
    }

    for path in &plan.hide {
        hide(path)?;
    }

    // A sysfs of the jail's own network namespace, so /sys/class/net shows only `lo`; runtimes
    // that mask parts of /sys make the kernel refuse it, and the caller's stays (no way out,
    // only interface names).
    let _ = mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        NONE,
    );

    let mut report = MountReport::default();
    if plan.new_proc {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match mount(Some("proc"), "/proc", Some("proc"), flags, NONE) {
            Ok(()) => report.private_proc = true,
            // Container runtimes mask parts of /proc; the kernel then refuses a new procfs in a
            // user namespace. Keep the caller's /proc but hide the supervisor's entry (it is
            // also non-dumpable, so its memory and descriptors are closed either way).
            Err(_) => hide(&PathBuf::from(format!("/proc/{}", plan.supervisor_pid)))?,
        }
    }
    Ok(report)
}

fn read_only(path: &Path, flags: MsFlags) -> nix::Result<()> {
    mount(
        NONE,
        path,
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        NONE,
    )
}

fn bind_read_only(source: &Path, target: &Path) -> nix::Result<()> {
    mount(Some(source), target, NONE, MsFlags::MS_BIND, NONE)?;
    read_only(
        target,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

/// Covers a directory with an empty read-only tmpfs, or a file with `/dev/null`.
fn hide(path: &Path) -> Result<(), JailError> {
    let what = format!("hiding {}", path.display());
    if path.is_dir() {
        let flags =
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            flags,
            Some("size=4k,mode=0555"),
        )
        .map_err(fail(what))
    } else if path.exists() {
        bind_read_only(Path::new("/dev/null"), path).map_err(fail(what))
    } else {
        Ok(())
    }
}
