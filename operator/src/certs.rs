//! The webhook's certificates: a CA of the operator's own, a serving certificate it signs, both
//! kept in Secrets, and the `caBundle` of the `MutatingWebhookConfiguration`.
//!
//! A rotation never leaves the apiserver with a bundle that does not verify the certificate the
//! webhook serves:
//!
//! 1. a new CA is made while the old one is still valid; the bundle becomes old + new;
//! 2. only after `propagation` (the apiserver has seen the new bundle) is a serving certificate
//!    signed by the new CA written; the webhook reloads it from the mounted Secret;
//! 3. only after `overlap` more (every replica has reloaded it) does the old CA leave the bundle.
//!
//! A serving certificate alone is renewed under the same CA, which needs no bundle change. The
//! decision is the pure [`decide`], tested row by row; [`run`] is the loop that observes the
//! Secrets and the webhook configuration and carries the decision out.
//!
//! The CA's key lives in its own Secret (`<webhook Secret>-ca`) that only the operator reads;
//! the Secret the webhook mounts holds the serving pair and the bundle.

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

use crate::Shutdown;
use crate::metrics::Metrics;

/// Certificates are dated this much before they are made, for clocks a little behind ours.
pub const BACKDATE_SECONDS: i64 = 60;

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

/// Lifetimes and delays of a rotation, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Lifetime of a new CA.
    pub ca_validity: i64,
    /// Lifetime of a new serving certificate (never beyond its CA's).
    pub serving_validity: i64,
    /// From a new CA in the bundle to the first certificate it signs.
    pub propagation: i64,
    /// From the first certificate of a new CA to the old CA leaving the bundle.
    pub overlap: i64,
}

/// What the operator learned from a PEM certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity (unix seconds).
    pub not_before: i64,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// DER of the subject name.
    pub subject: Vec<u8>,
    /// DER of the issuer name.
    pub issuer: Vec<u8>,
    /// DNS and IP subject alternative names.
    pub names: BTreeSet<String>,
    /// The subject public key's bits.
    pub public_key: Vec<u8>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl CertInfo {
    /// When it was made (the backdating undone).
    pub fn issued(&self) -> i64 {
        self.not_before + BACKDATE_SECONDS
    }

    /// When it is due for renewal: two thirds into its life.
    pub fn renew_at(&self) -> i64 {
        self.issued() + (self.not_after - self.issued()) * 2 / 3
    }
}

/// Reads the first certificate of `pem`; `None` when there is none or it does not parse.
pub fn inspect(pem: &str) -> Option<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let block = ::pem::parse(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents()).ok()?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    names.insert((*n).to_owned());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        names,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        is_ca: cert.is_ca(),
    })
}

/// A certificate and key pair as PEM, with what was read from the certificate.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Certificate (PEM).
    pub cert: String,
    /// Private key (PEM).
    pub key: String,
    /// What the certificate says.
    pub info: CertInfo,
}

impl Pair {
    /// The pair from PEM texts, when the certificate parses and the key is its own.
    pub fn load(cert: &str, key: &str) -> Option<Pair> {
        let info = inspect(cert)?;
        let key_pair = rcgen::KeyPair::from_pem(key).ok()?;
        (key_pair.public_key_raw() == info.public_key.as_slice()).then(|| Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            info,
        })
    }
}

/// The certificates as found in the cluster (unusable ones already left out).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The current CA (a CA certificate with its key).
    pub ca: Option<CertInfo>,
    /// The previous CA, still in the bundle during a rotation.
    pub previous_ca: Option<CertInfo>,
    /// The serving certificate with its key.
    pub serving: Option<CertInfo>,
}

/// What to do with the previous CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// No previous CA in the bundle.
    None,
    /// Keep the previous CA that is there.
    Keep,
    /// The current CA becomes the previous one (a new CA is made).
    FromCurrent,
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Make a new CA.
    pub new_ca: bool,
    /// The previous CA in the bundle after this step.
    pub previous: Previous,
    /// Sign a new serving certificate with the (possibly new) current CA.
    pub new_serving: bool,
    /// When to look again (unix seconds), even if nothing changes.
    pub next_check: i64,
}

/// The next step of the certificates' life at `now` (unix seconds), for a serving certificate
/// that must carry `names`.
pub fn decide(now: i64, observed: &Observed, names: &BTreeSet<String>, t: Timing) -> Decision {
    let mut checks = Vec::new();

    // The CA: made when missing or expired, replaced (old kept as previous) two thirds in.
    let (new_ca, mut previous, ca_issued) = match &observed.ca {
        Some(ca) if now < ca.renew_at() && now < ca.not_after => {
            checks.push(ca.renew_at());
            let keep = observed
                .previous_ca
                .as_ref()
                .is_some_and(|p| now < p.not_after);
            (
                false,
                if keep { Previous::Keep } else { Previous::None },
                ca.issued(),
            )
        }
        Some(ca) if now < ca.not_after => (true, Previous::FromCurrent, now),
        _ => (true, Previous::None, now),
    };
    if new_ca {
        checks.push(now + t.ca_validity * 2 / 3);
    }
    let previous_subject = match previous {
        Previous::FromCurrent => observed.ca.as_ref().map(|c| c.subject.as_slice()),
        Previous::Keep => observed.previous_ca.as_ref().map(|c| c.subject.as_slice()),
        Previous::None => None,
    };
    let current_subject = (!new_ca)
        .then(|| observed.ca.as_ref().map(|c| c.subject.as_slice()))
        .flatten();

    // The serving certificate.
    let serving = observed.serving.as_ref().filter(|s| {
        // Usable: right names, still valid, a leaf.
        &s.names == names && now < s.not_after && !s.is_ca
    });
    let by_current = serving.filter(|s| Some(s.issuer.as_slice()) == current_subject);
    let by_previous = serving.filter(|s| Some(s.issuer.as_slice()) == previous_subject);
    let propagated = now >= ca_issued + t.propagation;
    let new_serving = if let Some(s) = by_current {
        now >= s.renew_at()
    } else if let Some(s) = by_previous.filter(|_| !propagated) {
        // Serving from the old CA until the apiserver trusts the new one.
        checks.push(ca_issued + t.propagation);
        checks.push(s.not_after);
        false
    } else {
        true
    };
    let serving_issued = match (new_serving, by_current) {
        (false, Some(s)) => {
            checks.push(s.renew_at());
            Some(s.issued())
        }
        (true, _) => {
            checks.push(now + t.serving_validity * 2 / 3);
            Some(now)
        }
        (false, None) => None,
    };

    // The previous CA leaves the bundle once the new CA's certificate has been served long
    // enough for every replica to have it.
    if previous != Previous::None {
        match serving_issued {
            Some(issued) if now >= issued + t.overlap => previous = Previous::None,
            Some(issued) => checks.push(issued + t.overlap),
            None => {}
        }
    }

    Decision {
        new_ca,
        previous,
        new_serving,
        next_check: checks
            .into_iter()
            .filter(|&c| c > now)
            .min()
            .unwrap_or(now + 60),
    }
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A new self-signed CA valid from `now` for `validity` seconds.
pub fn generate_ca(now: i64, validity: i64) -> Result<Pair, CertError> {
    let err = |source| CertError::Generate { what: "CA", source };
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    // A distinct subject per CA tells which CA signed a serving certificate.
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("agent-boundary webhook CA {now}"),
    );
    params.not_before = at(now - BACKDATE_SECONDS);
    params.not_after = at(now + validity);
    let cert = params.self_signed(&key).map_err(err)?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    Pair::load(&cert, &key)
        .ok_or_else(|| CertError::Settings("the new CA does not read back".into()))
}

/// A serving certificate for `names` signed by `ca`, valid from `now` for `validity` seconds
/// but not beyond the CA.
pub fn generate_serving(
    now: i64,
    validity: i64,
    ca: &Pair,
    names: &BTreeSet<String>,
) -> Result<Pair, CertError> {
    let err = |source| CertError::Generate {
        what: "serving certificate",
        source,
    };
    if names.is_empty() {
        return Err(CertError::Settings(
            "no DNS name or IP address for the webhook's serving certificate: set \
             --webhook-dns-names (BOUNDARY_WEBHOOK_DNS_NAMES)"
                .into(),
        ));
    }
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(err)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(err)?;
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::default();
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.as_str().try_into().map_err(err)?),
        });
    }
    if let Some(first) = names.iter().next() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = at(now - BACKDATE_SECONDS);
    params.not_after = at((now + validity).min(ca.info.not_after));
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let (cert, key) = (cert.pem(), key.serialize_pem());
    Pair::load(&cert, &key)
        .ok_or_else(|| CertError::Settings("the new serving certificate does not read back".into()))
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
            self.metrics.certificate_issued("ca");
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
            self.metrics.certificate_issued("serving");
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

    const T: Timing = Timing {
        ca_validity: 3000,
        serving_validity: 900,
        propagation: 60,
        overlap: 300,
    };

    fn names() -> BTreeSet<String> {
        BTreeSet::from(["webhook.ns.svc".to_owned()])
    }

    fn cert(subject: &str, issuer: &str, made: i64, life: i64, is_ca: bool) -> CertInfo {
        CertInfo {
            not_before: made - BACKDATE_SECONDS,
            not_after: made + life,
            subject: subject.as_bytes().to_vec(),
            issuer: issuer.as_bytes().to_vec(),
            names: if is_ca { BTreeSet::new() } else { names() },
            public_key: vec![],
            is_ca,
        }
    }

    #[test]
    fn nothing_yet_makes_both() {
        let d = decide(1000, &Observed::default(), &names(), T);
        assert_eq!(
            d,
            Decision {
                new_ca: true,
                previous: Previous::None,
                new_serving: true,
                next_check: 1600
            }
        );
    }

    #[test]
    fn fresh_certificates_are_left_alone_until_their_renewal() {
        let obs = Observed {
            ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            previous_ca: None,
            serving: Some(cert("leaf", "ca1", 0, 900, false)),
        };
        let d = decide(100, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (false, Previous::None, false, 600)
        );
        // Two thirds in, the serving certificate alone is renewed under the same CA.
        let d = decide(600, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving),
            (false, Previous::None, true)
        );
    }

    #[test]
    fn a_ca_rotation_overlaps_old_and_new() {
        // Two thirds into the CA's life: new CA, old one stays, old serving certificate kept
        // until the new bundle has propagated.
        let obs = Observed {
            ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            previous_ca: None,
            serving: Some(cert("leaf", "ca1", 1900, 900, false)),
        };
        let d = decide(2000, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (true, Previous::FromCurrent, false, 2060)
        );

        // Within propagation the old-CA certificate still serves.
        let during = Observed {
            ca: Some(cert("ca2", "ca2", 2000, 3000, true)),
            previous_ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            serving: Some(cert("leaf", "ca1", 1900, 900, false)),
        };
        let d = decide(2030, &during, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (false, Previous::Keep, false, 2060)
        );

        // After it, a certificate of the new CA; the old CA stays for the overlap.
        let d = decide(2060, &during, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving, d.next_check),
            (false, Previous::Keep, true, 2360)
        );
        let after = Observed {
            serving: Some(cert("leaf2", "ca2", 2060, 900, false)),
            ..during
        };
        let d = decide(2200, &after, &names(), T);
        assert_eq!(
            (d.previous, d.new_serving, d.next_check),
            (Previous::Keep, false, 2360)
        );
        // Overlap over: the old CA leaves the bundle.
        let d = decide(2360, &after, &names(), T);
        assert_eq!((d.previous, d.new_serving), (Previous::None, false));
    }

    #[test]
    fn broken_or_wrong_serving_certificates_are_replaced_at_once() {
        let ca = Some(cert("ca1", "ca1", 0, 3000, true));
        for serving in [
            None,
            // Another name.
            Some(CertInfo {
                names: BTreeSet::from(["other.svc".to_owned()]),
                ..cert("leaf", "ca1", 0, 900, false)
            }),
            // Signed by an unknown CA.
            Some(cert("leaf", "someone", 0, 900, false)),
            // Expired.
            Some(cert("leaf", "ca1", 0, 50, false)),
        ] {
            let obs = Observed {
                ca: ca.clone(),
                previous_ca: None,
                serving,
            };
            let d = decide(100, &obs, &names(), T);
            assert!(d.new_serving && !d.new_ca, "{obs:?}");
        }
    }

    #[test]
    fn an_expired_ca_is_replaced_without_keeping_it() {
        let obs = Observed {
            ca: Some(cert("ca1", "ca1", 0, 3000, true)),
            previous_ca: None,
            serving: Some(cert("leaf", "ca1", 2900, 900, false)),
        };
        let d = decide(3100, &obs, &names(), T);
        assert_eq!(
            (d.new_ca, d.previous, d.new_serving),
            (true, Previous::None, true)
        );
    }

    #[test]
    fn generated_certificates_chain_and_read_back() {
        let now = unix_now();
        let ca = generate_ca(now, 3600).unwrap();
        assert!(ca.info.is_ca);
        let names = BTreeSet::from(["webhook.ns.svc".to_owned(), "127.0.0.1".to_owned()]);
        let leaf = generate_serving(now, 7200, &ca, &names).unwrap();
        assert_eq!(leaf.info.issuer, ca.info.subject);
        assert_eq!(leaf.info.names, names);
        assert!(!leaf.info.is_ca);
        // Never valid beyond its CA.
        assert_eq!(leaf.info.not_after, ca.info.not_after);
        assert_eq!(leaf.info.issued(), now);
        // A key that is not the certificate's is refused.
        let other = generate_ca(now, 3600).unwrap();
        assert!(Pair::load(&leaf.cert, &other.key).is_none());
        assert!(Pair::load("not pem", &leaf.key).is_none());
        assert!(generate_serving(now, 10, &ca, &BTreeSet::new()).is_err());

        // A rustls client trusting the CA accepts the leaf for the name.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf_der = CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &leaf_der,
                &[],
                &ServerName::try_from("webhook.ns.svc").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }
}
