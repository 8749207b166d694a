//! The jail's view of the filesystem, inside its own mount namespace (nothing here is visible to,
//! or left behind for, anyone else):
//!
//! - mount propagation is private, so nothing leaks to the caller's namespace;
//! - a fresh `/proc` for the jail's PID namespace (or, where the runtime masks `/proc` and the
//!   kernel refuses a new one, the caller's `/proc` with `boundary run`'s own entry hidden);
//! - the trust bundle (system roots + the proxy's CA) over every usual trust-store file, its Java
//!   form over every JDK's `cacerts`, and a
//!   `resolv.conf` naming the jail's DNS, bind-mounted read-only from the supervisor's work
//!   directory (which the jail sees read-only too);
//! - an empty read-only tmpfs over paths the jailed process must not reach (the proxy socket).

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::error::JailError;

/// File names inside the jail's work directory.
pub const BUNDLE_FILE: &str = "ca-bundle.crt";
/// The proxy CA alone (for `NODE_EXTRA_CA_CERTS`).
pub const CA_FILE: &str = "ca.crt";
/// The jail's Java trust store (system roots + the proxy's CA, JKS), bound over the JDKs'
/// `cacerts`.
pub const JAVA_STORE_FILE: &str = "cacerts";
/// The jail's resolver configuration.
pub const RESOLV_FILE: &str = "resolv.conf";
/// Its content: every query is redirected to the jail's DNS anyway; naming it avoids search
/// lists that would turn `github.com` into `github.com.<namespace>.svc.cluster.local` first.
pub const RESOLV_CONF: &str =
    "# Agent Boundary: every DNS query is answered inside the jail\nnameserver 127.0.0.1\n";

/// What the mount set-up needs.
#[derive(Debug, Clone)]
pub struct MountPlan {
    /// The supervisor's work directory holding [`BUNDLE_FILE`], [`CA_FILE`] and
    /// [`RESOLV_FILE`] by the time the mounts are made; the jail sees it read-only.
    pub workdir: PathBuf,
    /// The jail has its own PID namespace: mount a matching `/proc`.
    pub new_proc: bool,
    /// PID of `boundary run` in the caller's `/proc`, hidden when a new `/proc` is refused.
    pub supervisor_pid: u32,
    /// Paths to make unreachable.
    pub hide: Vec<PathBuf>,
    /// The system trust stores the bundle (proxy CA + roots) is bound over, where they exist.
    pub trust_stores: Vec<PathBuf>,
    /// The JDKs' trust stores (`cacerts`) the Java store ([`JAVA_STORE_FILE`]) is bound over.
    pub java_trust_stores: Vec<PathBuf>,
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

/// Builds the parts of the jail's filesystem view that need nothing from the supervisor:
/// private propagation, hidden paths, the jail's own sysfs and `/proc`. Runs in the jail's init,
/// in its new mount namespace.
pub fn prepare_view(plan: &MountPlan) -> Result<MountReport, JailError> {
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(fail("making mount propagation private"))?;
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
        SAFE | MsFlags::MS_RDONLY,
        NONE,
    );
    let mut report = MountReport::default();
    if plan.new_proc {
        match mount(Some("proc"), "/proc", Some("proc"), SAFE, NONE) {
            Ok(()) => report.private_proc = true,
            // Container runtimes mask parts of /proc; the kernel then refuses a new procfs in a
            // user namespace. Keep the caller's /proc but hide the supervisor's entry (it is
            // also non-dumpable, so its memory and descriptors are closed either way).
            Err(_) => hide(&PathBuf::from(format!("/proc/{}", plan.supervisor_pid)))?,
        }
    }
    Ok(report)
}

/// Puts the supervisor's files in place, once written: the work directory read-only, the trust
/// bundle over every trust store the image has, the jail's `resolv.conf`.
pub fn install_files(plan: &MountPlan) -> Result<(), JailError> {
    mount(
        Some(&plan.workdir),
        &plan.workdir,
        NONE,
        MsFlags::MS_BIND,
        NONE,
    )
    .and_then(|()| read_only(&plan.workdir, SAFE))
    .map_err(fail("making the jail's files read-only"))?;
    let bundle = plan.workdir.join(BUNDLE_FILE);
    for store in &plan.trust_stores {
        if store.is_file() {
            bind_read_only(&bundle, store)
                .map_err(fail(format!("the trust bundle over {}", store.display())))?;
        }
    }
    let java_store = plan.workdir.join(JAVA_STORE_FILE);
    for store in &plan.java_trust_stores {
        if store.is_file() {
            bind_read_only(&java_store, store).map_err(fail(format!(
                "the Java trust store over {}",
                store.display()
            )))?;
        }
    }
    if Path::new("/etc/resolv.conf").is_file() {
        bind_read_only(
            &plan.workdir.join(RESOLV_FILE),
            Path::new("/etc/resolv.conf"),
        )
        .map_err(fail("the jail's resolv.conf over /etc/resolv.conf"))?;
    }
    Ok(())
}

/// Flags every mount of the jail gets.
const SAFE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

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
