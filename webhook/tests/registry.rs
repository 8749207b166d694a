//! Image configs read from a real registry: Debian's `docker-registry` (distribution 2.8),
//! started by each test on a free loopback port with its own storage, some with htpasswd basic
//! auth. Images are pushed by the tests with oci-client. Needs `docker-registry` and `htpasswd`
//! (apache2-utils) on the PATH (tests/scripts/setup.sh installs both).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use boundary_api::crd::BoundaryPolicy;
use boundary_api::nodes::NodeFacts;
use boundary_webhook::admit::{FixedPullSecrets, ImageLookup, Planner, StaticView};
use boundary_webhook::classes::NodeClasses;
use boundary_webhook::image::{ImageConfig, ResolveError, Resolver, ResolverConfig};
use boundary_webhook::inject::Settings;
use boundary_webhook::plan::Cluster;
use boundary_webhook::policy_index::ClusterPolicies;
use boundary_webhook::pull_secrets::{self, Keyring};
use boundary_webhook::review::{self, Admit};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageIndex};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rustls::pki_types::pem::PemObject as _;
use serde_json::json;

/// A `docker-registry` process with its own storage, killed on drop.
struct Registry {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `user` it requires that basic-auth user (password `password`).
    fn start(user: Option<&str>) -> anyhow::Result<Registry> {
        Registry::start_with(user, None)
    }

    /// With `tls`, a certificate and key (PEM), it serves HTTPS.
    fn start_with(user: Option<&str>, tls: Option<(String, String)>) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let addr = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert_path, cert)?;
            std::fs::write(&key_path, key)?;
            writeln!(
                config,
                "  tls: {{certificate: {}, key: {}}}",
                cert_path.display(),
                key_path.display()
            )?;
        }
        if let Some(user) = user {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, "password"])
                .output()
                .context("running htpasswd (apache2-utils; see tests/scripts/setup.sh)")?;
            anyhow::ensure!(out.status.success(), "htpasswd failed: {out:?}");
            std::fs::write(&htpasswd, out.stdout)?;
            writeln!(
                config,
                "auth:\n  htpasswd: {{realm: test, path: {}}}",
                htpasswd.display()
            )?;
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting docker-registry (Debian package docker-registry; see tests/scripts/setup.sh)")?;
        let mut registry = Registry { addr, child, dir };
        registry.wait_listening()?;
        Ok(registry)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        for _ in 0..200 {
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))?;
                bail!("docker-registry exited with {status}: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not listen on {} within 10 s",
            self.addr
        )
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn pusher() -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// A pusher over HTTPS that trusts `ca_pem`.
fn tls_pusher(ca_pem: &str) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Https,
        tls_certs_only: vec![oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: ca_pem.as_bytes().to_vec(),
        }],
        ..ClientConfig::default()
    })
}

fn basic(user: &str) -> RegistryAuth {
    RegistryAuth::Basic(user.into(), "password".into())
}

/// Pushes a one-layer image whose config has `config` (Entrypoint, Cmd, User) to `reference`;
/// returns the manifest's digest and size.
async fn push_image(
    reference: &str,
    config: serde_json::Value,
    auth: &RegistryAuth,
) -> anyhow::Result<(String, usize)> {
    push_image_with(&pusher(), reference, config, auth).await
}

async fn push_image_with(
    client: &Client,
    reference: &str,
    config: serde_json::Value,
    auth: &RegistryAuth,
) -> anyhow::Result<(String, usize)> {
    let reference: Reference = reference.parse()?;
    let blob = json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    // A distinct layer per image, so every push is a new manifest.
    let layer = ImageLayer::oci_v1(serde_json::to_vec(&config)?, None);
    client
        .push(
            &reference,
            &[layer],
            Config::oci_v1(serde_json::to_vec(&blob)?, None),
            auth,
            None,
        )
        .await?;
    let (body, digest) = client
        .pull_manifest_raw(&reference, auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await?;
    Ok((digest, body.len()))
}

fn resolver(registry: &Registry, configure: impl FnOnce(&mut ResolverConfig)) -> Resolver {
    let mut config = ResolverConfig {
        insecure_registries: vec![registry.host()],
        ..ResolverConfig::default()
    };
    configure(&mut config);
    Resolver::new(config)
}

fn pull_secret(registry: &str, user: &str, password: &str) -> Keyring {
    let config = json!({"auths": {registry: {"username": user, "password": password}}});
    let mut secret = Secret {
        type_: Some(pull_secrets::DOCKER_CONFIG_JSON.into()),
        data: Some(BTreeMap::from([(
            pull_secrets::DOCKER_CONFIG_JSON_KEY.into(),
            ByteString(serde_json::to_vec(&config).unwrap()),
        )])),
        ..Secret::default()
    };
    secret.metadata.name = Some("registry-credentials".into());
    let mut keyring = Keyring::default();
    pull_secrets::add_secret(&mut keyring, &secret);
    assert!(keyring.problems.is_empty(), "{:?}", keyring.problems);
    keyring
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn entrypoint_cmd_and_user_come_from_the_image_config() -> anyhow::Result<()> {
    let registry = Registry::start(None)?;
    let image = format!("{}/agents/envbuilder:1.1.0", registry.host());
    let (digest, _) = push_image(
        &image,
        json!({"Entrypoint": ["/.envbuilder/bin/envbuilder"], "Cmd": ["--init"], "User": "1000:1000"}),
        &RegistryAuth::Anonymous,
    )
    .await?;
    let resolver = resolver(&registry, |_| {});
    let config = resolver
        .resolve(&image, "amd64", &Keyring::default())
        .await?;
    assert_eq!(
        config,
        ImageConfig {
            digest,
            entrypoint: strings(&["/.envbuilder/bin/envbuilder"]),
            cmd: strings(&["--init"]),
            user: "1000:1000".into(),
        }
    );
    assert!(!config.user_is_root());
    // An image without the fields: empty, and root.
    let bare = format!("{}/agents/bare:1", registry.host());
    push_image(&bare, json!({}), &RegistryAuth::Anonymous).await?;
    let config = resolver
        .resolve(&bare, "amd64", &Keyring::default())
        .await?;
    assert!(config.entrypoint.is_empty() && config.cmd.is_empty() && config.user_is_root());
    // A tag that does not exist.
    let missing = resolver
        .resolve(
            &format!("{}/agents/bare:nope", registry.host()),
            "amd64",
            &Keyring::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ResolveError::NotFound { .. }),
        "{missing}"
    );
    Ok(())
}

#[tokio::test]
async fn an_image_index_gives_the_config_of_the_requested_linux_platform() -> anyhow::Result<()> {
    let registry = Registry::start(None)?;
    let repo = format!("{}/agents/multi", registry.host());
    let anonymous = RegistryAuth::Anonymous;
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let (digest, size) = push_image(
            &format!("{repo}:only-{arch}"),
            json!({"Entrypoint": [format!("/bin/agent-{arch}")]}),
            &anonymous,
        )
        .await?;
        let mut platform = json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        entries.push(json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": digest, "size": size, "platform": platform
        }));
    }
    let index: OciImageIndex = serde_json::from_value(json!({
        "schemaVersion": 2, "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE, "manifests": entries
    }))?;
    let tagged: Reference = format!("{repo}:1").parse()?;
    pusher()
        .push_manifest_list(&tagged, &anonymous, index)
        .await?;

    let resolver = resolver(&registry, |_| {});
    let none = Keyring::default();
    let amd64 = resolver
        .resolve(&format!("{repo}:1"), "amd64", &none)
        .await?;
    assert_eq!(amd64.entrypoint, ["/bin/agent-amd64"]);
    let arm64 = resolver
        .resolve(&format!("{repo}:1"), "arm64", &none)
        .await?;
    assert_eq!(arm64.entrypoint, ["/bin/agent-arm64"]);
    assert_ne!(amd64.digest, arm64.digest);
    let s390x = resolver
        .resolve(&format!("{repo}:1"), "s390x", &none)
        .await
        .unwrap_err();
    let text = s390x.to_string();
    assert!(matches!(s390x, ResolveError::NoPlatform { .. }), "{text}");
    assert!(
        text.contains("linux/amd64") && text.contains("linux/arm64/v8"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_digest_once_read_is_answered_without_the_registry() -> anyhow::Result<()> {
    let mut registry = Registry::start(None)?;
    let image = format!("{}/agents/nono:0.3", registry.host());
    let (digest, _) = push_image(
        &image,
        json!({"Cmd": ["nono", "run"]}),
        &RegistryAuth::Anonymous,
    )
    .await?;
    let resolver = resolver(&registry, |_| {});
    let none = Keyring::default();
    let first = resolver.resolve(&image, "amd64", &none).await?;
    assert_eq!(resolver.registry_lookups(), 1);
    registry.stop();
    // By digest, and by the tag within its TTL: from the cache, with the registry gone.
    let pinned = format!("{}/agents/nono@{digest}", registry.host());
    assert_eq!(resolver.resolve(&pinned, "amd64", &none).await?, first);
    assert_eq!(resolver.resolve(&image, "amd64", &none).await?, first);
    assert_eq!(resolver.registry_lookups(), 1);
    // Anything not cached needs the registry, which is down.
    let other = resolver
        .resolve(
            &format!("{}/agents/other:1", registry.host()),
            "amd64",
            &none,
        )
        .await
        .unwrap_err();
    assert!(matches!(other, ResolveError::Unreachable { .. }), "{other}");
    assert_eq!(resolver.registry_lookups(), 2);
    Ok(())
}

#[tokio::test]
async fn a_moved_tag_is_seen_once_its_ttl_has_passed() -> anyhow::Result<()> {
    let registry = Registry::start(None)?;
    let image = format!("{}/agents/runner:latest", registry.host());
    let anonymous = RegistryAuth::Anonymous;
    push_image(&image, json!({"Entrypoint": ["/v1"]}), &anonymous).await?;
    let ttl = Duration::from_secs(2);
    let resolver = resolver(&registry, |c| c.tag_ttl = ttl);
    let none = Keyring::default();
    let read_at = Instant::now();
    assert_eq!(
        resolver.resolve(&image, "amd64", &none).await?.entrypoint,
        ["/v1"]
    );
    push_image(&image, json!({"Entrypoint": ["/v2"]}), &anonymous).await?;
    let cached = resolver.resolve(&image, "amd64", &none).await?;
    // Within the TTL the tag's digest is reused (unless this machine was too slow to tell).
    if read_at.elapsed() < ttl {
        assert_eq!(cached.entrypoint, ["/v1"]);
    }
    tokio::time::sleep(ttl).await;
    assert_eq!(
        resolver.resolve(&image, "amd64", &none).await?.entrypoint,
        ["/v2"]
    );
    Ok(())
}

#[tokio::test]
async fn a_private_image_needs_the_pods_pull_secret() -> anyhow::Result<()> {
    let registry = Registry::start(Some("puller"))?;
    let image = format!("{}/private/agent:1", registry.host());
    push_image(&image, json!({"Entrypoint": ["/agent"]}), &basic("puller")).await?;

    let resolver = resolver(&registry, |_| {});
    let anonymous = resolver
        .resolve(&image, "amd64", &Keyring::default())
        .await
        .unwrap_err();
    let text = anonymous.to_string();
    assert!(
        text.contains("401 Unauthorized") && text.contains("no imagePullSecret"),
        "{text}"
    );

    let wrong = resolver
        .resolve(
            &image,
            "amd64",
            &pull_secret(&registry.host(), "puller", "wrong"),
        )
        .await
        .unwrap_err();
    let text = wrong.to_string();
    assert!(
        text.contains("401 Unauthorized")
            && text.contains("credentials it was given (the pod's pull secrets"),
        "{text}"
    );

    let keyring = pull_secret(&registry.host(), "puller", "password");
    let config = resolver.resolve(&image, "amd64", &keyring).await?;
    assert_eq!(config.entrypoint, ["/agent"]);
    // What the right secret read is not handed to a pod without it.
    let again = resolver
        .resolve(&image, "amd64", &Keyring::default())
        .await
        .unwrap_err();
    assert!(
        matches!(again, ResolveError::Unauthorized { .. }),
        "{again}"
    );
    Ok(())
}

#[tokio::test]
async fn a_registry_that_is_down_is_reported_unreachable_before_the_budget_ends()
-> anyhow::Result<()> {
    let down = free_port()?;
    let resolver = Resolver::new(ResolverConfig {
        insecure_registries: vec![down.to_string()],
        ..ResolverConfig::default()
    });
    let image = format!("{down}/agents/agent:1");
    let found = resolver
        .resolve_all(
            &[("agent", image.clone())],
            None,
            &Keyring::default(),
            Instant::now(),
        )
        .await;
    let error = found["agent"].clone().unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, ResolveError::Unreachable { .. }), "{text}");
    assert!(
        text.contains(&format!("registry {down} is unreachable")),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn a_registry_that_never_answers_runs_into_the_budget() -> anyhow::Result<()> {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let resolver = Resolver::new(ResolverConfig {
        insecure_registries: vec![addr.to_string()],
        budget: Duration::from_millis(500),
        ..ResolverConfig::default()
    });
    let found = resolver
        .resolve_all(
            &[
                ("a", format!("{addr}/agents/a:1")),
                ("b", format!("{addr}/agents/b@sha256:{}", "0".repeat(64))),
            ],
            None,
            &Keyring::default(),
            Instant::now(),
        )
        .await;
    let mut metrics = String::new();
    resolver.render_metrics(&mut metrics);
    assert!(
        metrics.contains("agent_boundary_webhook_image_lookups_total{result=\"timeout\"} 2"),
        "{metrics}"
    );
    for key in ["a", "b"] {
        let error = found[key].clone().unwrap_err();
        assert_eq!(error, ResolveError::Timeout { budget_ms: 500 }, "{key}");
        assert!(
            error.to_string().contains("lookup budget of 500 ms"),
            "{error}"
        );
    }
    held.abort();
    Ok(())
}

fn view() -> anyhow::Result<StaticView> {
    let policy: BoundaryPolicy = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
        "metadata": {"name": "agents", "namespace": "agents"},
        "spec": {"podSelector": {}, "allow": ["domain=api.anthropic.com"], "jail": {"wrapCommand": true}}
    }))?;
    let node = serde_json::from_value(json!({
        "metadata": {"name": "al2023-a"},
        "status": {"nodeInfo": {
            "osImage": "Amazon Linux 2023.5.20240819", "kernelVersion": "6.1.102-111.182.amzn2023.x86_64",
            "operatingSystem": "linux", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
            "kubeProxyVersion": "", "kubeletVersion": "v1.33.0", "machineID": "", "systemUUID": ""
        }}
    }))?;
    Ok(StaticView {
        nodes: Arc::new(NodeClasses::new(vec![NodeFacts::from_node(&node)])),
        namespaces: BTreeMap::from([(
            "agents".into(),
            BTreeMap::from([("agentboundary.dev/inject".into(), "enabled".into())]),
        )]),
        policies: vec![policy].into(),
        cluster_policies: ClusterPolicies::default(),
        cluster: Cluster { minor: 33 },
    })
}

fn review_of(image: &str) -> anyhow::Result<review::AdmissionRequest> {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "agents",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "agent", "labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": image}]}
            }
        }
    });
    Ok(review::parse(&serde_json::to_vec(&body)?)?)
}

/// The pod after the response's JSON Patch.
fn patched(request: &review::AdmissionRequest, patch: &[u8]) -> anyhow::Result<serde_json::Value> {
    let mut pod: serde_json::Value = request.object.as_ref().context("object")?.read()?;
    let patch: json_patch::Patch = serde_json::from_slice(patch)?;
    json_patch::patch(&mut pod, &patch)?;
    Ok(pod)
}

#[tokio::test]
async fn a_review_wraps_the_entrypoint_of_the_image_or_denies_naming_the_cause()
-> anyhow::Result<()> {
    let mut registry = Registry::start(None)?;
    let image = format!("{}/jupyter/base-notebook:2024-07-08", registry.host());
    push_image(
        &image,
        json!({"Entrypoint": ["tini", "-g", "--", "start.sh"], "Cmd": ["start-notebook.py"], "User": "1000"}),
        &RegistryAuth::Anonymous,
    )
    .await?;
    let planner = Planner::new(view()?, Settings::default()).with_image_lookup(ImageLookup {
        resolver: Arc::new(resolver(&registry, |_| {})),
        secrets: Box::new(FixedPullSecrets::default()),
    });

    let request = review_of(&image)?;
    let response = planner.admit_async(&request).await;
    assert!(response.allowed, "{:?}", response.status);
    let pod = patched(&request, response.patch.as_deref().context("no patch")?)?;
    let agent = &pod["spec"]["containers"][0];
    assert_eq!(
        agent["command"],
        json!([
            "/opt/agent-boundary/bin/boundary",
            "run",
            "--",
            "tini",
            "-g",
            "--",
            "start.sh"
        ])
    );
    assert_eq!(agent["args"], json!(["start-notebook.py"]));
    // Without the lookup (the synchronous path) the same pod is denied, as before.
    assert!(!planner.admit(&request).allowed);

    registry.stop();
    let gone = review_of(&format!("{}/jupyter/other:1", registry.host()))?;
    let response = planner.admit_async(&gone).await;
    assert!(!response.allowed);
    let message = response.status.context("no status")?.message;
    for part in [
        "jupyter/other:1",
        "is unreachable",
        "set command: to the image's entrypoint",
    ] {
        assert!(message.contains(part), "{part} not in: {message}");
    }
    Ok(())
}

#[test]
fn the_registry_binaries_are_installed() {
    for (binary, package) in [
        ("docker-registry", "docker-registry"),
        ("htpasswd", "apache2-utils"),
    ] {
        assert!(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|dir| Path::new(&dir).join(binary).exists()),
            "{binary} is missing: apt-get install {package} (tests/scripts/setup.sh)"
        );
    }
}

/// A stand-in for the ECR API on loopback (the AWS JSON 1.1 protocol the SDK speaks): answers
/// each request with `answer` and records the requests' heads.
async fn ecr_stand_in(
    status: &'static str,
    answer: serde_json::Value,
) -> anyhow::Result<(SocketAddr, Arc<std::sync::Mutex<Vec<String>>>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let answer = answer.to_string();
            tokio::spawn(async move {
                loop {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    let head_end = loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while request.len() < head_end + length {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    seen.lock().unwrap().push(head);
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, heads))
}

fn ecr_settings(endpoint: SocketAddr) -> boundary_webhook::ecr::EcrSettings {
    boundary_webhook::ecr::EcrSettings {
        endpoint_url: Some(format!("http://{endpoint}")),
        static_credentials: Some(("AKIDEXAMPLE".into(), "secret".into())),
    }
}

#[tokio::test]
async fn ecr_credentials_come_from_get_authorization_token_and_are_reused() -> anyhow::Result<()> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode("AWS:ecr-password");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 12 * 3600;
    let (endpoint, heads) = ecr_stand_in(
        "200 OK",
        json!({"authorizationData": [{
            "authorizationToken": token, "expiresAt": expires,
            "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        }]}),
    )
    .await?;
    let ecr = boundary_webhook::ecr::Ecr::new(ecr_settings(endpoint));
    let host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    let credential = ecr.credential(host).await.map_err(anyhow::Error::msg)?;
    assert_eq!(
        (credential.username.as_str(), credential.password.as_str()),
        ("AWS", "ecr-password")
    );
    // Another registry of the region, and the same again: the token is reused.
    ecr.credential("210987654321.dkr.ecr.eu-west-1.amazonaws.com")
        .await
        .map_err(anyhow::Error::msg)?;
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0]
            .contains("x-amz-target: amazonec2containerregistry_v20150921.getauthorizationtoken"),
        "{}",
        heads[0]
    );
    // Signed with the identity (SigV4, the region's ECR scope).
    assert!(
        heads[0].contains("authorization: aws4-hmac-sha256 credential=akidexample/")
            && heads[0].contains("/eu-west-1/ecr/aws4_request"),
        "{}",
        heads[0]
    );
    assert!(ecr.credential("registry.example").await.is_err());
    Ok(())
}

#[tokio::test]
async fn an_ecr_refusal_is_reported_with_the_apis_reason() -> anyhow::Result<()> {
    let (endpoint, _) = ecr_stand_in(
        "400 Bad Request",
        json!({"__type": "AccessDeniedException", "message": "User: arn:aws:sts::123456789012:assumed-role/webhook is not authorized to perform: ecr:GetAuthorizationToken"}),
    )
    .await?;
    let ecr = boundary_webhook::ecr::Ecr::new(ecr_settings(endpoint));
    let problem = ecr
        .credential("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        .await
        .unwrap_err();
    for part in [
        "GetAuthorizationToken",
        "AccessDeniedException",
        "ecr:GetAuthorizationToken",
    ] {
        assert!(problem.contains(part), "{part} not in: {problem}");
    }
    Ok(())
}

#[tokio::test]
async fn an_https_registry_is_trusted_through_its_ca_and_refused_without() -> anyhow::Result<()> {
    let private_ca = boundary_test_kit::TestCa::named("registry test CA");
    let serving = private_ca.leaf(&["127.0.0.1"]);
    let registry = Registry::start_with(None, Some((serving.cert_pem, serving.key_pem)))?;
    let ca = private_ca.pem.clone();
    let image = format!("{}/agents/tls:1", registry.host());
    push_image_with(
        &tls_pusher(&ca),
        &image,
        json!({"Entrypoint": ["/agent"]}),
        &RegistryAuth::Anonymous,
    )
    .await?;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes())?.to_vec();
    let none = Keyring::default();

    let trusting = Resolver::new(ResolverConfig {
        extra_roots: vec![ca_der],
        ..ResolverConfig::default()
    });
    assert_eq!(
        trusting.resolve(&image, "amd64", &none).await?.entrypoint,
        ["/agent"]
    );

    // Mozilla's roots alone do not know this CA.
    let error = Resolver::new(ResolverConfig::default())
        .resolve(&image, "amd64", &none)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, ResolveError::Unreachable { .. }) && text.contains("UnknownIssuer"),
        "{text}"
    );
    Ok(())
}
