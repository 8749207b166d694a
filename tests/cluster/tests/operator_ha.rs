//! The operator's production duties against a real kube-apiserver: the webhook's certificates
//! rotate (CA and serving certificate) while the apiserver keeps calling the webhook, and two
//! replicas never lead at once.
//!
//! The webhook server runs in this process with the real TLS reloader; what the kubelet does in
//! a cluster (projecting the Secret into files with an atomic symlink swap) is done here by a
//! small task, so the whole chain is real: operator → Secret → files → webhook TLS → apiserver
//! verifying against the `caBundle` the operator patched.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use boundary_api::contract::objects;
use boundary_api::crd::BoundaryPolicy;
use boundary_operator::certs::{self, CertConfig};
use boundary_operator::metrics::Metrics;
use boundary_operator::{Config, Shutdown};
use boundary_test_support::nodes::TEST_POOL;
use boundary_test_support::{TestNamespace, client, eventually, install_crds};
use boundary_webhook::review::{AdmissionRequest, AdmissionResponse, Admit};
use boundary_webhook::server::{self, Server};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

/// Counts the reviews it answers and admits every pod unchanged.
#[derive(Default)]
struct Counting(AtomicU64);

impl Admit for Counting {
    fn admit(&self, request: &AdmissionRequest) -> AdmissionResponse {
        self.0.fetch_add(1, Ordering::Relaxed);
        AdmissionResponse::allow(&request.uid)
    }
}

/// Writes `files` into `dir` the way the kubelet updates a Secret volume: a new directory,
/// then an atomic swap of the `..data` symlink the file links point through.
fn project(dir: &Path, files: &[(&str, &[u8])], generation: u64) -> anyhow::Result<()> {
    let version = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&version)?;
    for (name, bytes) in files {
        std::fs::write(version.join(name), bytes)?;
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    Ok(())
}

/// Projects the Secret's `tls.crt`/`tls.key` into `dir` whenever they change, until dropped.
fn project_secret(secrets: Api<Secret>, name: String, dir: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut generation = 0;
        loop {
            if let Ok(Some(secret)) = secrets.get_opt(&name).await {
                let data = secret.data.unwrap_or_default();
                let pair = data
                    .get(objects::WEBHOOK_CERT_KEY)
                    .zip(data.get(objects::WEBHOOK_KEY_KEY))
                    .map(|(c, k)| (c.0.clone(), k.0.clone()));
                if pair.is_some() && pair != last {
                    let (cert, key) = pair.clone().unwrap_or_default();
                    generation += 1;
                    if let Err(e) = project(
                        &dir,
                        &[("tls.crt", cert.as_slice()), ("tls.key", key.as_slice())],
                        generation,
                    ) {
                        eprintln!("projecting the Secret: {e}");
                    }
                    last = pair;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Deletes a cluster-scoped webhook configuration when dropped.
struct Unregister(String);

impl Drop for Unregister {
    fn drop(&mut self) {
        boundary_test_support::delete_cluster_object_now::<MutatingWebhookConfiguration>(
            self.0.clone(),
        );
    }
}

async fn default_service_account(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn ca_subjects(secret: &Secret) -> BTreeSet<Vec<u8>> {
    let data = secret.data.clone().unwrap_or_default();
    data.get(objects::CA_CERT_KEY)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .and_then(|pem| certs::inspect(&pem))
        .map(|info| info.subject)
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story, told in order
async fn webhook_certificates_rotate_under_admission_traffic_without_losing_a_request()
-> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "operator-certs", &[]).await?;
    default_service_account(&client, ns.name()).await?;
    let secret_name = "webhook-tls".to_owned();
    let configuration = format!("boundary-certs-{}", ns.name());
    let _unregister = Unregister(configuration.clone());

    // The operator's certificate manager on a fast clock: the CA is replaced after 20 s, the
    // serving certificate after 10 s; 2 s for the bundle to reach the apiserver, 2 s overlap.
    let cert_config = CertConfig {
        webhook_secret: Some(secret_name.clone()),
        webhook_configuration: configuration.clone(),
        webhook_dns_names: vec!["localhost".into()],
        webhook_ip_addresses: vec!["127.0.0.1".parse()?],
        ca_validity_seconds: 30,
        serving_validity_seconds: 15,
        propagation_seconds: 2,
        overlap_seconds: 2,
    };
    let metrics = Metrics::default();
    let (stop_certs, shutdown) = Shutdown::new();
    let manager = tokio::spawn(certs::run(
        client.clone(),
        Some(ns.name().into()),
        cert_config,
        metrics.clone(),
        Duration::from_secs(1),
        shutdown,
    ));

    // The Secret appears; the webhook serves what it holds, reloading every 100 ms.
    let secrets: Api<Secret> = ns.api();
    let first = eventually(Duration::from_secs(30), "the serving Secret", || async {
        Ok(secrets.get_opt(&secret_name).await?)
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let projector = project_secret(secrets.clone(), secret_name.clone(), dir.path().into());
    eventually(Duration::from_secs(10), "the Secret projected", || async {
        Ok(dir.path().join("tls.key").exists().then_some(()))
    })
    .await?;
    let counting = Arc::new(Counting::default());
    let config = server::Config {
        https_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        plain_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert_file: dir.path().join("tls.crt"),
        key_file: dir.path().join("tls.key"),
        cert_poll_interval: Duration::from_millis(100),
        ..server::Config::default()
    };
    let server = Server::bind(config, counting.clone(), Arc::new(AtomicBool::new(true))).await?;
    let port = server.https_addr().port();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // Registered without a caBundle: the operator fills it in.
    let registration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": configuration},
        "webhooks": [{
            "name": "certs.agentboundary.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}},
            "objectSelector": {"matchLabels": {"test": "rotation"}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    }))?;
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .create(&PostParams::default(), &registration)
        .await?;
    // Kubernetes 1.20 does not label namespaces with their name yet: do it here.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            ns.name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"kubernetes.io/metadata.name": ns.name()}}}),
            ),
        )
        .await?;

    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "rotation-", "labels": {"test": "rotation"}},
        // No token to mount: the apiserver-only cluster has no token controller.
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "x"}]},
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        Duration::from_secs(30),
        "the webhook admits pods",
        || async {
            let before = counting.0.load(Ordering::Relaxed);
            pods.create(&dry_run, &pod).await?;
            Ok((counting.0.load(Ordering::Relaxed) > before).then_some(()))
        },
    )
    .await
    .context("the apiserver never reached the webhook with the operator's caBundle")?;

    // Continuous traffic across a CA rotation and several serving-certificate renewals.
    let mut subjects = ca_subjects(&first);
    let mut serving_certs = BTreeSet::new();
    let (mut sent, mut failures) = (0u64, Vec::new());
    let reviews_before = counting.0.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        sent += 1;
        if let Err(e) = pods.create(&dry_run, &pod).await {
            failures.push(format!("{:?}: {e}", Instant::now()));
        }
        if let Some(secret) = secrets.get_opt(&secret_name).await? {
            subjects.extend(ca_subjects(&secret));
            if let Some(cert) = secret
                .data
                .as_ref()
                .and_then(|d| d.get(objects::WEBHOOK_CERT_KEY))
            {
                serving_certs.insert(cert.0.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reviews = counting.0.load(Ordering::Relaxed) - reviews_before;

    let _ = stop_certs.send(true);
    manager.await??;
    let _ = stop_server.send(());
    projector.abort();

    assert!(
        failures.is_empty(),
        "{} of {sent} admission requests failed during rotation:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        reviews >= sent,
        "the apiserver answered {sent} creates but the webhook saw {reviews} reviews"
    );
    assert!(
        subjects.len() >= 2,
        "no CA rotation happened in 40 s (CAs seen: {})",
        subjects.len()
    );
    assert!(
        serving_certs.len() >= 3,
        "expected at least 3 serving certificates in 40 s, saw {}",
        serving_certs.len()
    );
    // The metrics tell the same story.
    let text = metrics.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("boundary_operator_ca_issued_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    eprintln!(
        "{sent} admission requests, 0 failed, across {} CAs and {} serving certificates",
        subjects.len(),
        serving_certs.len()
    );
    Ok(())
}

/// An operator replica of this process (policies of the test namespace only, no node labels
/// beyond an empty pool), with leader election through the test's Lease.
struct Replica {
    metrics: Metrics,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), boundary_operator::Error>>,
}

fn replica(client: &Client, ns: &TestNamespace, identity: &str) -> Replica {
    let metrics = Metrics::default();
    let config = Config {
        watch_namespace: Some(ns.name().into()),
        node_selector: Some(format!("{TEST_POOL}=none")),
        node_agent_namespace: Some(ns.name().into()),
        retry_seconds: 1,
        instance: Some(identity.into()),
        lease_namespace: Some(ns.name().into()),
        lease_duration_seconds: 4,
        lease_renew_deadline_seconds: 3,
        metrics: metrics.clone(),
        ..Config::default()
    };
    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(boundary_operator::run(client.clone(), config, shutdown));
    Replica {
        metrics,
        stop,
        task,
    }
}

async fn lease_holder(ns: &TestNamespace) -> anyhow::Result<Option<String>> {
    let lease = ns.api::<Lease>().get_opt(objects::OPERATOR_LEASE).await?;
    Ok(lease.and_then(|l| l.spec?.holder_identity))
}

async fn policy_published(ns: &TestNamespace, name: &str) -> anyhow::Result<()> {
    let policy: BoundaryPolicy = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1",
        "kind": "BoundaryPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {}, "allow": [format!("domain={name}.example.com")]},
    }))?;
    ns.api::<BoundaryPolicy>()
        .create(&PostParams::default(), &policy)
        .await?;
    let maps: Api<ConfigMap> = ns.api();
    eventually(Duration::from_secs(30), "the policy published", || async {
        let map = maps.get_opt(objects::POLICY_CONFIGMAP).await?;
        let text = map
            .and_then(|m| m.data)
            .and_then(|d| d.get(objects::POLICY_CONFIGMAP_KEY).cloned())
            .unwrap_or_default();
        Ok(text.contains(&format!("{name}.example.com")).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_lead_at_once_and_the_standby_takes_over() -> anyhow::Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "operator-lease", &[]).await?;

    let a = replica(&client, &ns, "replica-a");
    let b = replica(&client, &ns, "replica-b");
    let first = eventually(Duration::from_secs(20), "a leader", || async {
        lease_holder(&ns).await
    })
    .await?;
    policy_published(&ns, "first").await?;

    // For 10 s, sampled every 50 ms: exactly one leads, and it is the Lease's holder.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let (la, lb) = (a.metrics.is_leader(), b.metrics.is_leader());
        assert!(!(la && lb), "both replicas lead at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leader, standby) = if a.metrics.is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    assert!(leader.metrics.is_leader(), "nobody leads");
    assert_eq!(lease_holder(&ns).await?, Some(first.clone()));

    // The leader shuts down (a rolling update): it releases the Lease, the standby takes over
    // and acts.
    let _ = leader.stop.send(true);
    tokio::time::timeout(Duration::from_secs(15), leader.task)
        .await
        .context("the leader did not stop")???;
    eventually(Duration::from_secs(15), "the standby leads", || async {
        Ok(standby.metrics.is_leader().then_some(()))
    })
    .await?;
    let second = lease_holder(&ns).await?;
    assert!(second.is_some() && second != Some(first), "{second:?}");
    policy_published(&ns, "second").await?;

    let _ = standby.stop.send(true);
    tokio::time::timeout(Duration::from_secs(15), standby.task)
        .await
        .context("the standby did not stop")???;
    Ok(())
}
