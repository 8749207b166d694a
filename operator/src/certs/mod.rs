//! The webhook's certificates: a CA of the operator's own, a serving certificate it signs, both
//! kept in Secrets, and the `caBundle` of the `MutatingWebhookConfiguration`.
//!
//! [`rotation`] decides what to write and when (overlapping old and new CA), [`pki`] reads and
//! makes the certificates; here [`run`] observes the Secrets and the webhook configuration and
//! carries the decision out.
//!
//! The CA's key lives in its own Secret (`<webhook Secret>-ca`) that only the operator reads;
//! the Secret the webhook mounts holds the serving pair and the bundle.

pub mod pki;
pub mod rotation;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use boundary_api::contract::{self, labels, objects};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use crate::metrics::{Certificate, Metrics};
use crate::shutdown::Shutdown;

pub use pki::inspect;
use pki::{Pair, generate_ca, generate_serving};
use rotation::{Observed, Previous, Timing, decide};

/// Settings of certificate management (flags of the binary).
#[derive(Clone, Debug, clap::Args)]
pub struct CertConfig {
    /// Name of the Secret (in the operator's namespace) that holds the webhook's serving
    /// certificate (`tls.crt`, `tls.key`, `ca.crt`). Unset: the operator does not manage the
    /// webhook's certificates (cert-manager does).
    #[arg(long, env = contract::operator_env::WEBHOOK_SECRET)]
    pub webhook_secret: Option<String>,
    /// Name of the `MutatingWebhookConfiguration` whose `caBundle` the operator keeps current.
    #[arg(
        long,
        env = contract::operator_env::WEBHOOK_CONFIGURATION,
        default_value = "agent-boundary"
    )]
    pub webhook_configuration: String,
    /// DNS names of the webhook's Service for the serving certificate (comma-separated), e.g.
    /// `agent-boundary-webhook.agent-boundary.svc`.
    #[arg(long, env = contract::operator_env::WEBHOOK_DNS_NAMES, value_delimiter = ',')]
    pub webhook_dns_names: Vec<String>,
    /// IP addresses for the serving certificate (comma-separated; for webhooks reached by URL).
    #[arg(long, env = contract::operator_env::WEBHOOK_IP_ADDRESSES, value_delimiter = ',')]
    pub webhook_ip_addresses: Vec<std::net::IpAddr>,
    /// Lifetime of the CA, in seconds; it is replaced after two thirds of it.
    #[arg(long, env = contract::operator_env::CA_VALIDITY_SECONDS, default_value_t = 365 * 86_400)]
    pub ca_validity_seconds: i64,
    /// Lifetime of the serving certificate, in seconds; it is replaced after two thirds of it.
    #[arg(long, env = contract::operator_env::SERVING_VALIDITY_SECONDS, default_value_t = 90 * 86_400)]
    pub serving_validity_seconds: i64,
    /// Seconds between publishing a new CA in the `caBundle` and serving a certificate it signed
    /// (the apiserver's view of the webhook configuration must catch up first).
    #[arg(long, env = contract::operator_env::CA_PROPAGATION_SECONDS, default_value_t = 60)]
    pub propagation_seconds: i64,
    /// Seconds the previous CA stays in the `caBundle` after the first certificate of the new
    /// CA is written (every webhook replica must have reloaded it: kubelet's Secret refresh plus
    /// the webhook's poll).
    #[arg(long, env = contract::operator_env::CA_OVERLAP_SECONDS, default_value_t = 600)]
    pub overlap_seconds: i64,
}

impl Default for CertConfig {
    fn default() -> Self {
        CertConfig {
            webhook_secret: None,
            webhook_configuration: "agent-boundary".into(),
            webhook_dns_names: Vec::new(),
            webhook_ip_addresses: Vec::new(),
            ca_validity_seconds: 365 * 86_400,
            serving_validity_seconds: 90 * 86_400,
            propagation_seconds: 60,
            overlap_seconds: 600,
        }
    }
}

impl CertConfig {
    fn timing(&self) -> Timing {
        Timing {
            ca_validity: self.ca_validity_seconds.max(3),
            serving_validity: self.serving_validity_seconds.max(3),
            propagation: self.propagation_seconds.max(0),
            overlap: self.overlap_seconds.max(0),
        }
    }

    /// Refuses settings that cannot work, with the flag to fix (nothing to check when the
    /// certificates are not managed).
    pub fn check(&self, namespace: Option<&str>) -> Result<(), CertError> {
        if self.webhook_secret.is_none() {
            return Ok(());
        }
        if namespace.is_none_or(str::is_empty) {
            return Err(CertError::Settings(
                "managing the webhook's certificates needs the operator's namespace: set \
                 BOUNDARY_POD_NAMESPACE (the downward API) or --namespace"
                    .into(),
            ));
        }
        if self.names().is_empty() {
            return Err(CertError::Settings(
                "--webhook-secret is set but the serving certificate would have no name: set \
                 --webhook-dns-names (BOUNDARY_WEBHOOK_DNS_NAMES)"
                    .into(),
            ));
        }
        if self.propagation_seconds + self.overlap_seconds >= self.serving_validity_seconds / 3 {
            return Err(CertError::Settings(format!(
                "the rotation ({}s propagation + {}s overlap) must fit in the last third of the \
                 serving certificate's life ({}s): lower BOUNDARY_CA_PROPAGATION_SECONDS / \
                 BOUNDARY_CA_OVERLAP_SECONDS or raise BOUNDARY_SERVING_VALIDITY_SECONDS",
                self.propagation_seconds, self.overlap_seconds, self.serving_validity_seconds
            )));
        }
        Ok(())
    }

    /// The names the serving certificate must carry.
    fn names(&self) -> BTreeSet<String> {
        self.webhook_dns_names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .chain(self.webhook_ip_addresses.iter().map(ToString::to_string))
            .collect()
    }
}

/// What went wrong with the certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A certificate could not be made or signed.
    #[error("generating the {what}: {source}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// The error.
        #[source]
        source: rcgen::Error,
    },
    /// The settings cannot produce a certificate.
    #[error("{0}")]
    Settings(String),
    /// A call to the apiserver failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The text of a Secret's key.
fn secret_text(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let action = action.into();
    move |source| CertError::Kube { action, source }
}

/// The Secret the operator writes (server-side apply, its field manager).
fn secret(name: &str, namespace: &str, type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (
                    labels::MANAGED_BY.to_owned(),
                    contract::MANAGED_BY_OPERATOR.to_owned(),
                ),
                (
                    labels::COMPONENT.to_owned(),
                    "webhook-certificates".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: type_.map(Into::into),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Certificate manager state shared by the loop's steps.
struct Manager {
    secrets: Api<Secret>,
    configurations: Api<MutatingWebhookConfiguration>,
    namespace: String,
    serving_name: String,
    ca_name: String,
    config: CertConfig,
    metrics: Metrics,
}

impl Manager {
    /// One pass: observe, decide, write. Returns when to look again (unix seconds).
    async fn step(&self) -> Result<i64, CertError> {
        let now = unix_now();
        let ca_secret = self
            .secrets
            .get_opt(&self.ca_name)
            .await
            .map_err(kube_err(format!("reading Secret {}", self.ca_name)))?;
        let serving_secret = self
            .secrets
            .get_opt(&self.serving_name)
            .await
            .map_err(kube_err(format!("reading Secret {}", self.serving_name)))?;
        let ca = secret_text(ca_secret.as_ref(), objects::CA_CERT_KEY)
            .zip(secret_text(ca_secret.as_ref(), objects::CA_KEY_KEY))
            .and_then(|(c, k)| Pair::load(&c, &k))
            .filter(|p| p.info.is_ca);
        let previous_pem = secret_text(ca_secret.as_ref(), objects::PREVIOUS_CA_CERT_KEY);
        let previous_info = previous_pem.as_deref().and_then(inspect);
        let serving = secret_text(serving_secret.as_ref(), objects::WEBHOOK_CERT_KEY)
            .zip(secret_text(
                serving_secret.as_ref(),
                objects::WEBHOOK_KEY_KEY,
            ))
            .and_then(|(c, k)| Pair::load(&c, &k));
        let observed = Observed {
            ca: ca.as_ref().map(|p| p.info.clone()),
            previous_ca: previous_info,
            serving: serving.as_ref().map(|p| p.info.clone()),
        };
        let names = self.config.names();
        let timing = self.config.timing();
        let decision = decide(now, &observed, &names, timing);

        let current = if let (Some(ca), false) = (&ca, decision.new_ca) {
            ca.clone()
        } else {
            tracing::info!(
                rotation = ca.is_some(),
                "making a new webhook CA (the old one, if any, stays in the caBundle)"
            );
            self.metrics.certificate_issued(Certificate::Ca);
            generate_ca(now, timing.ca_validity)?
        };
        let previous = match decision.previous {
            Previous::None => None,
            Previous::Keep => previous_pem,
            Previous::FromCurrent => ca.as_ref().map(|p| p.cert.clone()),
        };
        let mut ca_data = vec![
            (objects::CA_CERT_KEY, current.cert.as_str()),
            (objects::CA_KEY_KEY, current.key.as_str()),
        ];
        if let Some(p) = &previous {
            ca_data.push((objects::PREVIOUS_CA_CERT_KEY, p.as_str()));
        }
        let bundle = format!(
            "{}{}",
            current.cert,
            previous.as_deref().unwrap_or_default()
        );
        let apply = PatchParams::apply(objects::OPERATOR_FIELD_MANAGER).force();
        let want_ca = secret(&self.ca_name, &self.namespace, None, &ca_data);
        if ca_secret.as_ref().and_then(|s| s.data.as_ref()) != want_ca.data.as_ref() {
            self.secrets
                .patch(&self.ca_name, &apply, &Patch::Apply(&want_ca))
                .await
                .map_err(kube_err(format!("writing Secret {}", self.ca_name)))?;
        }

        // The bundle reaches the apiserver before any certificate that needs it is served.
        self.publish_bundle(&bundle).await?;

        let serving = if let (Some(s), false) = (serving, decision.new_serving) {
            s
        } else {
            tracing::info!(names = ?names, "signing a new webhook serving certificate");
            self.metrics.certificate_issued(Certificate::Serving);
            generate_serving(now, timing.serving_validity, &current, &names)?
        };
        let want_serving = secret(
            &self.serving_name,
            &self.namespace,
            Some("kubernetes.io/tls"),
            &[
                (objects::WEBHOOK_CERT_KEY, serving.cert.as_str()),
                (objects::WEBHOOK_KEY_KEY, serving.key.as_str()),
                (objects::CA_CERT_KEY, bundle.as_str()),
            ],
        );
        if serving_secret.as_ref().and_then(|s| s.data.as_ref()) != want_serving.data.as_ref() {
            self.secrets
                .patch(&self.serving_name, &apply, &Patch::Apply(&want_serving))
                .await
                .map_err(kube_err(format!("writing Secret {}", self.serving_name)))?;
        }
        self.metrics
            .set_certificate_expiry(serving.info.not_after, current.info.not_after);
        Ok(decision.next_check)
    }

    /// Sets `caBundle` on every webhook of the configuration (guarded by its resourceVersion).
    async fn publish_bundle(&self, bundle: &str) -> Result<(), CertError> {
        let name = &self.config.webhook_configuration;
        let Some(configuration) =
            self.configurations
                .get_opt(name)
                .await
                .map_err(kube_err(format!(
                    "reading MutatingWebhookConfiguration {name}"
                )))?
        else {
            tracing::warn!(
                configuration = %name,
                "MutatingWebhookConfiguration not found: its caBundle is set once it exists"
            );
            return Ok(());
        };
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let stale: Vec<_> = configuration
            .webhooks
            .iter()
            .flatten()
            .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&wanted))
            .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": wanted}}))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        // Webhooks merge by name; the resourceVersion makes the patch fail rather than
        // overwrite a configuration changed since it was read.
        let patch = json!({
            "metadata": {"resourceVersion": configuration.metadata.resource_version},
            "webhooks": stale,
        });
        self.configurations
            .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(kube_err(format!(
                "setting the caBundle of MutatingWebhookConfiguration {name}"
            )))?;
        tracing::info!(configuration = %name, "caBundle updated");
        Ok(())
    }
}

/// Keeps the webhook's certificates and `caBundle` current until `shutdown` (nothing when
/// `config.webhook_secret` is unset).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    config: CertConfig,
    metrics: Metrics,
    retry: Duration,
    shutdown: Shutdown,
) -> Result<(), CertError> {
    let Some(serving_name) = config.webhook_secret.clone() else {
        return Ok(());
    };
    config.check(namespace.as_deref())?;
    let namespace = namespace.unwrap_or_default();
    let manager = Manager {
        secrets: Api::namespaced(client.clone(), &namespace),
        configurations: Api::all(client.clone()),
        ca_name: format!("{serving_name}{}", objects::CA_SECRET_SUFFIX),
        serving_name,
        namespace,
        config,
        metrics,
    };
    // Any change to the Secrets or the configuration (someone resets caBundle, deletes a
    // Secret) is looked at at once; otherwise the next due date.
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let triggers = futures::stream::select_all([
        watcher(manager.secrets.clone(), by_name(&manager.serving_name))
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
        watcher(manager.secrets.clone(), by_name(&manager.ca_name))
            .default_backoff()
            .touched_objects()
            .map(|_| ())
            .boxed(),
        watcher(
            manager.configurations.clone(),
            by_name(&manager.config.webhook_configuration),
        )
        .default_backoff()
        .touched_objects()
        .map(|_| ())
        .boxed(),
    ]);
    let mut triggers = std::pin::pin!(triggers);
    let stop = shutdown.wait();
    let mut stop = std::pin::pin!(stop);
    loop {
        let wait = match manager.step().await {
            Ok(next) => {
                let secs = u64::try_from(next - unix_now()).unwrap_or(0).max(1);
                Duration::from_secs(secs)
            }
            Err(err) => {
                tracing::warn!(error = %err, "webhook certificates: retrying");
                manager.metrics.certificate_error();
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(()) = triggers.next() => {
                // A burst (our own writes among them) is one pass.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = &mut stop => return Ok(()),
        }
    }
}
