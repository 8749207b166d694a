//! The local cluster node's container runtime, for the few tests that act on it directly (kill a
//! container, run a binary from an image, push an image to a test registry).
//!
//! The local cluster runs containerd by default, as EKS nodes do, and dockerd behind
//! `RUNTIME=docker` (tests/local-cluster/up.sh); its env file says which (`CONTAINER_RUNTIME`,
//! and `CONTAINERD_ADDRESS` for `ctr`). What differs between the two is kept here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

use crate::local_cluster_state;

/// The namespace of containerd's CRI plugin, where the kubelet's images and containers are.
const CRI_NAMESPACE: &str = "k8s.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRuntime {
    Docker,
    Containerd { address: PathBuf },
}

impl NodeRuntime {
    /// The local cluster's runtime: containerd when its env file names a containerd socket.
    pub fn local() -> anyhow::Result<Self> {
        let state = local_cluster_state()
            .context("acting on the node's runtime needs the project's local cluster")?;
        let address = state.join("containerd/containerd.sock");
        Ok(if address.exists() {
            Self::Containerd { address }
        } else {
            Self::Docker
        })
    }

    /// `docker` or `ctr` (in the CRI namespace, on the cluster's socket).
    fn command(&self) -> Command {
        match self {
            Self::Docker => Command::new("docker"),
            Self::Containerd { address } => {
                let mut ctr = Command::new("ctr");
                ctr.arg("--address")
                    .arg(address)
                    .args(["--namespace", CRI_NAMESPACE]);
                ctr
            }
        }
    }

    /// The runtime's id of a container from its pod status id (`docker://ID`,
    /// `containerd://ID`); a status of the other runtime is an error.
    pub fn container_id<'a>(&self, status_id: &'a str) -> anyhow::Result<&'a str> {
        let scheme = match self {
            Self::Docker => "docker://",
            Self::Containerd { .. } => "containerd://",
        };
        status_id
            .strip_prefix(scheme)
            .with_context(|| format!("container id {status_id} is not a {scheme} id"))
    }

    /// SIGKILLs a running container (its task, under containerd), as an OOM kill or a crash would.
    pub fn kill(&self, id: &str) -> anyhow::Result<()> {
        let mut kill = self.command();
        match self {
            Self::Docker => kill.args(["kill", id]),
            Self::Containerd { .. } => kill.args(["tasks", "kill", "--signal", "SIGKILL", id]),
        };
        run(&mut kill).map(drop)
    }

    /// Removes the name `image` from the runtime (its layers stay while another name uses them),
    /// so the next pod that runs it must pull it. A name that is not there is no error.
    pub fn untag(&self, image: &str) -> anyhow::Result<()> {
        let mut rm = self.command();
        match self {
            Self::Docker => rm.args(["image", "rm", "--no-prune", image]),
            Self::Containerd { .. } => rm.args(["images", "rm", &qualified(image)]),
        };
        let out = rm.output().context("removing an image name")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success()
                || stderr.contains("not found")
                || stderr.contains("No such image"),
            "removing the image name {image}: {stderr}"
        );
        Ok(())
    }

    /// Runs `binary` of `image` (as stored in the runtime) on this machine with `args`, `stdin`
    /// fed to it: the real binary the image ships, not one from the build tree.
    pub fn run_from_image(
        &self,
        image: &str,
        binary: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> anyhow::Result<Output> {
        match self {
            Self::Docker => {
                let mut docker = self.command();
                docker.args(["run", "--rm", "-i", "--entrypoint", binary, image]);
                docker.args(args);
                feed(&mut docker, stdin)
            }
            Self::Containerd { .. } => {
                // The images are static binaries on scratch: mounting the image's filesystem
                // read-only and running the file is what `ctr run` would do, without a shim.
                let dir = tempfile_dir()?;
                run(self
                    .command()
                    .args(["images", "mount", &qualified(image)])
                    .arg(&dir))?;
                let ran = feed(
                    Command::new(dir.join(binary.trim_start_matches('/'))).args(args),
                    stdin,
                );
                let unmounted = run(self.command().args(["images", "unmount"]).arg(&dir));
                let _ = std::fs::remove_dir(&dir);
                let out = ran?;
                unmounted?;
                Ok(out)
            }
        }
    }

    /// Pushes `image` to a plain-HTTP registry at `registry` (`host:port`) as `repository`, and
    /// lets the runtime pull from it over plain HTTP (dockerd is started with that registry's
    /// network as insecure; containerd reads a hosts.toml per registry at each pull).
    pub fn push_to_plain_http_registry(
        &self,
        image: &str,
        registry: &str,
        repository: &str,
    ) -> anyhow::Result<()> {
        let pushed = format!("{registry}/{repository}");
        match self {
            Self::Docker => {
                run(self.command().args(["tag", image, &pushed]))?;
                run(self.command().args(["push", &pushed]))?;
            }
            Self::Containerd { address } => {
                let hosts = hosts_dir(address)?.join(registry);
                std::fs::create_dir_all(&hosts)?;
                std::fs::write(
                    hosts.join("hosts.toml"),
                    format!(
                        "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                    ),
                )?;
                run(self
                    .command()
                    .args(["images", "tag", "--force", &qualified(image), &pushed]))?;
                run(self
                    .command()
                    .args(["images", "push", "--plain-http", &pushed]))?;
            }
        }
        Ok(())
    }
}

/// The registry hosts directory of the local cluster's containerd (its `config_path`).
fn hosts_dir(address: &Path) -> anyhow::Result<PathBuf> {
    Ok(address
        .parent()
        .context("containerd's socket has no directory")?
        .join("certs.d"))
}

/// The name containerd stores: Docker's short names are `docker.io/...` there.
fn qualified(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    if image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        image.to_owned()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "boundary-image-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

fn feed(command: &mut Command, stdin: &[u8]) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_qualified_as_containerd_stores_them() {
        assert_eq!(
            qualified("agent-boundary/jail-runtime:dev"),
            "docker.io/agent-boundary/jail-runtime:dev"
        );
        assert_eq!(qualified("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(
            qualified("172.17.0.1:5000/e2e-tools:dev"),
            "172.17.0.1:5000/e2e-tools:dev"
        );
        assert_eq!(qualified("k8s.gcr.io/pause:3.2"), "k8s.gcr.io/pause:3.2");
        assert_eq!(qualified("localhost/x:1"), "localhost/x:1");
    }

    #[test]
    fn container_ids_of_the_other_runtime_are_refused() {
        let containerd = NodeRuntime::Containerd {
            address: "/x/containerd.sock".into(),
        };
        assert_eq!(containerd.container_id("containerd://abc").unwrap(), "abc");
        assert!(containerd.container_id("docker://abc").is_err());
        assert_eq!(
            NodeRuntime::Docker.container_id("docker://abc").unwrap(),
            "abc"
        );
    }
}
