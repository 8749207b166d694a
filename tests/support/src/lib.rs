//! Support for tests that run against a real Kubernetes cluster.
//!
//! The cluster comes from `KUBECONFIG`: `tests/scripts/test-all.sh` starts the project's local
//! cluster (etcd + kube-apiserver v1.20.2, and a real node on request) and exports it; pointing
//! `KUBECONFIG` at kind, k3d or EKS runs the same tests there. Without `KUBECONFIG` the tests fail
//! with a message saying how to run them, rather than guessing a cluster.
//!
//! [`TestNamespace`] gives each test a fresh namespace, dumps what happened in it when the test
//! fails (events, policies, pods, container logs) and deletes it afterwards.
#![forbid(unsafe_code)]

pub mod node_runtime;
pub mod nodes;

use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use boundary_api::crd::BoundaryPolicy;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, LogParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config, ResourceExt};

pub use kube;

/// Label put on every namespace a test creates, so leftovers on shared clusters can be found.
pub const TEST_NAMESPACE_LABEL: &str = "agentboundary.dev/test";
/// Field manager of the tests' server-side applies.
pub const FIELD_MANAGER: &str = "boundary-tests";

/// A client for the cluster `KUBECONFIG` names.
pub async fn client() -> anyhow::Result<Client> {
    let config = config().await?;
    Client::try_from(config).context("building a Kubernetes client from KUBECONFIG")
}

/// The client configuration for the cluster `KUBECONFIG` names (e.g. to impersonate).
pub async fn config() -> anyhow::Result<Config> {
    let Some(path) = std::env::var_os("KUBECONFIG") else {
        bail!(
            "KUBECONFIG is not set. Cluster tests need a real cluster: run \
             `tests/scripts/test-all.sh` (starts a local one), or point KUBECONFIG at a \
             kind, k3d or EKS cluster"
        );
    };
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading KUBECONFIG {}", PathBuf::from(&path).display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading KUBECONFIG")
}

/// Installs (server-side applies) the project's CRDs (`BoundaryPolicy`,
/// `ClusterBoundaryPolicy`) and waits until the apiserver serves them.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let all = boundary_api::crd::crds();
    for crd in &all {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
    }
    for crd in &all {
        let name = crd.name_any();
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within 30 s"))??;
    }
    // Established comes a moment before discovery serves the resource; kubectl (and anything
    // resolving `bp` or `cbp`) needs discovery, so wait for it too.
    let group_version = boundary_api::contract::API_VERSION;
    let served: Vec<(String, String)> = all
        .iter()
        .map(|crd| {
            let names = &crd.spec.names;
            let short = names
                .short_names
                .iter()
                .flatten()
                .next()
                .cloned()
                .unwrap_or_default();
            (names.plural.clone(), short)
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        &format!("{group_version} in discovery"),
        || async {
            // kubectl starts from the group list, which is served separately from the group.
            let groups = client.list_api_groups().await?;
            if !groups.groups.iter().any(|g| {
                g.name == boundary_api::contract::GROUP
                    && g.versions.iter().any(|v| v.group_version == group_version)
            }) {
                return Ok(None);
            }
            let resources = client.list_api_group_resources(group_version).await?;
            Ok(served
                .iter()
                .all(|(plural, short)| {
                    resources.resources.iter().any(|r| {
                        &r.name == plural
                            && r.short_names
                                .as_ref()
                                .is_some_and(|s| s.iter().any(|n| n == short))
                    })
                })
                .then_some(()))
        },
    )
    .await
}

/// Polls `check` until it returns `Ok(Some(value))`, or fails after `timeout` with the last
/// error or `what`. For state that converges (controllers, kubelet), never for timing claims.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = Some(err),
        }
        if start.elapsed() > timeout {
            let last = last
                .map(|e| format!(": last error: {e:#}"))
                .unwrap_or_default();
            bail!("{what}: not true after {timeout:?}{last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The name of one of the project's images, as `tests/scripts/build-images.sh` tagged it:
/// `$BOUNDARY_IMAGE_REPO/<name>:$BOUNDARY_IMAGE_TAG` (defaults `agent-boundary` and the workspace
/// version). On the local cluster the images are built into the node's runtime; elsewhere push
/// them and set both.
pub fn image(name: &str) -> String {
    format!("{}/{name}:{}", image_repo(), image_tag())
}

/// `$BOUNDARY_IMAGE_REPO`, or `agent-boundary` as build-images.sh names the images.
pub fn image_repo() -> String {
    std::env::var("BOUNDARY_IMAGE_REPO").unwrap_or_else(|_| "agent-boundary".into())
}

/// `$BOUNDARY_IMAGE_TAG`, or the workspace version build-images.sh tags the images with.
pub fn image_tag() -> String {
    std::env::var("BOUNDARY_IMAGE_TAG").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").into())
}

/// Waits until pod `name` reaches one of `phases` and returns it; fails early when it reaches
/// `Failed` unexpectedly, and on timeout reports the pod's last status.
pub async fn wait_for_pod_phase(
    pods: &Api<Pod>,
    name: &str,
    phases: &[&str],
    timeout: Duration,
) -> anyhow::Result<Pod> {
    let what = format!("pod {name} in phase {phases:?}");
    eventually(timeout, &what, || async {
        let pod = pods.get(name).await?;
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_default();
        if phases.contains(&phase.as_str()) {
            return Ok(Some(pod));
        }
        if phase == "Failed" {
            bail!("pod {name} failed: {}", serde_json::to_string(&status)?);
        }
        bail!(
            "pod {name} is {phase}: {}",
            serde_json::to_string(&status.container_statuses)?
        )
    })
    .await
}

/// A `kubectl` command for the test cluster. Uses `$KUBECTL` when set (the harness points it at
/// the kubectl built with the cluster), else `kubectl` from PATH.
pub fn kubectl() -> Command {
    let program = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    Command::new(program)
}

/// Runs `kubectl args...` and returns stdout, or an error with stderr.
///
/// Each call gets an empty discovery cache: kubectl's on-disk cache (10 min) may predate the
/// CRD (a test that ran kubectl before another installed it, or an earlier cluster on the same
/// address), and then `kubectl get bp` says the resource type does not exist.
pub fn kubectl_output(args: &[&str]) -> anyhow::Result<String> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let cache = std::env::temp_dir().join(format!(
        "boundary-kubectl-cache-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let out = kubectl()
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .output()
        .context("running kubectl (set KUBECTL or put kubectl on PATH)");
    let _ = std::fs::remove_dir_all(&cache);
    let out = out?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A namespace of its own for one test. Dropped: dumps the namespace's state if the test is
/// failing, then deletes it (set `BOUNDARY_TEST_KEEP_NAMESPACES=1` to keep it for inspection).
pub struct TestNamespace {
    name: String,
    client: Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` with the test label and any extra `labels`.
    pub async fn create(
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let name = format!("{prefix}-{}", random_suffix());
        let mut all_labels: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all_labels.insert(TEST_NAMESPACE_LABEL.into(), "true".into());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all_labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            client: client.clone(),
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A namespaced API for `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates a pod here. A fresh namespace's default ServiceAccount (and, before Kubernetes
    /// 1.24, its token) appears a moment after the namespace; the apiserver answers 500
    /// `ServerTimeout` until then, so that answer is retried.
    pub async fn create_pod(&self, pod: &Pod) -> anyhow::Result<Pod> {
        let pods: Api<Pod> = self.api();
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            match pods.create(&PostParams::default(), pod).await {
                Err(kube::Error::Api(status))
                    if status.reason == "ServerTimeout" && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result.context("creating a pod"),
            }
        }
    }

    /// Everything useful to understand a failure in this namespace, as text.
    pub async fn dump(&self) -> String {
        dump_namespace(&self.client, &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let keep = std::env::var_os("BOUNDARY_TEST_KEEP_NAMESPACES").is_some_and(|v| v == "1");
        let name = self.name.clone();
        // Drop cannot be async, and the test's runtime may be shutting down: use a fresh runtime
        // and a fresh client on a thread of our own.
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = client().await else { return };
                if failing {
                    let text = dump_namespace(&client, &name).await;
                    eprintln!("{text}");
                    let dir = dump_dir();
                    if std::fs::create_dir_all(&dir).is_ok() {
                        let file = dir.join(format!("{name}.txt"));
                        if std::fs::write(&file, &text).is_ok() {
                            eprintln!("(namespace dump also written to {})", file.display());
                        }
                    }
                }
                if !keep {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await;
                }
            });
        });
        let _ = worker.join();
    }
}

fn dump_dir() -> PathBuf {
    std::env::var_os("BOUNDARY_TEST_DUMP_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("cluster/dumps")
        },
        PathBuf::from,
    )
}

fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() & 0xffff_ffff)
}

/// Events, policies, pods with their container logs, and ConfigMaps of `namespace`.
pub async fn dump_namespace(client: &Client, namespace: &str) -> String {
    let mut out = format!("===== state of namespace {namespace} =====\n");
    let lp = ListParams::default();

    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    match events.list(&lp).await {
        Ok(list) => {
            let _ = writeln!(out, "--- events ({})", list.items.len());
            for e in list.items {
                let obj = e.involved_object;
                let _ = writeln!(
                    out,
                    "{} {} {}/{}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    obj.kind.unwrap_or_default(),
                    obj.name.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
            }
        }
        Err(err) => {
            let _ = writeln!(out, "--- events: {err}");
        }
    }

    let policies: Api<BoundaryPolicy> = Api::namespaced(client.clone(), namespace);
    match policies.list(&lp).await {
        Ok(list) => {
            for mut bp in list.items {
                // Who wrote which field says nothing about a failure and doubles the dump.
                bp.metadata.managed_fields = None;
                let _ = writeln!(out, "--- BoundaryPolicy {}", bp.name_any());
                let _ = writeln!(out, "{}", serde_yaml_ng::to_string(&bp).unwrap_or_default());
            }
        }
        Err(err) => {
            let _ = writeln!(out, "--- BoundaryPolicies: {err}");
        }
    }

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if let Ok(list) = cms.list(&lp).await {
        let names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
        let _ = writeln!(out, "--- ConfigMaps: {names:?}");
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.list(&lp).await {
        Ok(list) => {
            for mut pod in list.items {
                pod.metadata.managed_fields = None;
                let name = pod.name_any();
                let _ = writeln!(out, "--- Pod {name}");
                let _ = writeln!(
                    out,
                    "{}",
                    serde_yaml_ng::to_string(&pod).unwrap_or_default()
                );
                let containers = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>();
                for container in containers {
                    let params = LogParams {
                        container: Some(container.clone()),
                        tail_lines: Some(200),
                        ..LogParams::default()
                    };
                    let logs = pods
                        .logs(&name, &params)
                        .await
                        .unwrap_or_else(|e| format!("(no logs: {e})"));
                    let _ = writeln!(out, "--- logs of {name}/{container}\n{logs}");
                }
            }
        }
        Err(err) => {
            let _ = writeln!(out, "--- pods: {err}");
        }
    }
    out.push_str("===== end of namespace dump =====\n");
    out
}

/// Deletes the cluster-scoped object `name` of kind `K` from a `Drop`, best effort. Drop cannot
/// be async and the test's runtime may be shutting down: a fresh runtime and client on a thread
/// of its own (a client belongs to the runtime that made it).
pub fn delete_cluster_object_now<K>(name: String)
where
    K: kube::Resource + Clone + std::fmt::Debug + k8s_openapi::serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async move {
                if let Ok(client) = client().await {
                    let _ = Api::<K>::all(client)
                        .delete(&name, &DeleteParams::default())
                        .await;
                }
            });
        }
    })
    .join();
}

/// The state directory of the project's local cluster when the tests run on it (`KUBECONFIG`
/// is its kubeconfig), `None` on any other cluster.
pub fn local_cluster_state() -> Option<PathBuf> {
    let state = PathBuf::from(
        std::env::var_os("STATE").unwrap_or_else(|| "/tmp/agent-boundary-cluster".into()),
    );
    let kubeconfig = PathBuf::from(std::env::var_os("KUBECONFIG")?);
    (kubeconfig == state.join("kubeconfig") && state.join("apiserver.pid").exists())
        .then_some(state)
}

/// Kubelet's seccomp directory on the node, as this test process sees it: the local cluster's
/// `--seccomp-profile-root` (`$STATE/kubelet/seccomp`), else kubelet's default;
/// `BOUNDARY_TEST_KUBELET_SECCOMP_DIR` overrides.
pub fn kubelet_seccomp_dir() -> String {
    if let Ok(dir) = std::env::var("BOUNDARY_TEST_KUBELET_SECCOMP_DIR") {
        return dir;
    }
    match std::env::var("STATE") {
        Ok(state) => format!("{state}/kubelet/seccomp"),
        Err(_) => "/var/lib/kubelet/seccomp".into(),
    }
}

/// Whether the process behind `/proc/<pid>` still runs. A process that has exited but
/// not been reaped yet stays in `/proc` as a zombie (state `Z`): the apiserver's parent
/// is the harness's shell, which reaps only when it next waits, so a zombie counts as
/// stopped (its port is closed and its files are released).
fn is_running(proc: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// Stops the local cluster's kube-apiserver, keeps it down for `down`, and starts it again with
/// the same command line, environment and log (blocking; on the local cluster only). Its new
/// PID replaces the old one in the harness's PID file, so `down.sh` still stops it.
pub fn restart_local_apiserver(down: Duration) -> anyhow::Result<()> {
    let state = local_cluster_state().context(
        "restarting the apiserver needs the project's local cluster (tests/local-cluster)",
    )?;
    let pid_file = state.join("apiserver.pid");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    let proc = PathBuf::from("/proc").join(&pid);
    let split = |bytes: Vec<u8>| -> Vec<String> {
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let command_line =
        split(std::fs::read(proc.join("cmdline")).context("reading the apiserver's command line")?);
    let env = split(std::fs::read(proc.join("environ"))?);
    let cwd = std::fs::read_link(proc.join("cwd"))?;
    let (program, args) = command_line
        .split_first()
        .context("the apiserver has no command line")?;
    // SIGTERM first; an apiserver draining its watches can take longer than a test wants
    // (seen: still alive 30 s later with its port closed), so SIGKILL after 15 s. What the
    // tests need is an apiserver that is gone, not a graceful one.
    for (signal, wait) in [("-TERM", 15), ("-KILL", 15)] {
        let killed = Command::new("kill").args([signal, &pid]).status()?;
        if !killed.success() && is_running(&proc) {
            bail!("kill {signal} {pid} failed");
        }
        let deadline = Instant::now() + Duration::from_secs(wait);
        while is_running(&proc) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !is_running(&proc) {
            break;
        }
    }
    if is_running(&proc) {
        bail!("the apiserver (pid {pid}) did not stop within 30 s, not even after SIGKILL");
    }
    std::thread::sleep(down);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(state.join("logs/apiserver.log"))?;
    let child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: it outlives this test process, like the one it replaces.
            .process_group(0)
            .spawn()
            .context("starting the apiserver again")?
    };
    std::fs::write(&pid_file, child.id().to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_nobody_has_reaped_counts_as_stopped() {
        // `exec sleep` replaces the shell, so the backgrounded child's parent never waits
        // for it: once it exits it stays a zombie, like an apiserver whose parent is busy.
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 0.1 & echo $!; exec sleep 5"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let proc = PathBuf::from("/proc").join(line.trim());
        assert!(is_running(&proc), "the child runs at first");
        std::thread::sleep(Duration::from_millis(600));
        assert!(proc.exists(), "the zombie is still in /proc");
        assert!(!is_running(&proc), "a zombie counts as stopped");
        assert!(is_running(
            &PathBuf::from("/proc").join(parent.id().to_string())
        ));
        parent.kill().unwrap();
        parent.wait().unwrap();
        assert!(!is_running(Path::new("/proc/999999999")));
    }
}
