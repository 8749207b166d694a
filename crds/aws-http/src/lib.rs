//! The HTTPS client the AWS SDK uses in this project's binaries (the webhook's ECR lookups, the
//! sidecar's own AWS identity): rustls with aws-lc, Mozilla's roots (the images are `FROM
//! scratch`, without a system trust store) and hickory DNS (a static glibc binary cannot load
//! the NSS modules `getaddrinfo` needs).
#![forbid(unsafe_code)]

use std::sync::Arc;

use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use hickory_resolver::TokioResolver;

/// The client, for `aws_config`'s `ProviderConfig::with_http_client` or an SDK config.
pub fn https_client() -> SharedHttpClient {
    let mut roots = TrustStore::empty().with_native_roots(false);
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        roots.add_pem_certificate(pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref())));
    }
    let builder =
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
    let builder = match TlsContext::builder().with_trust_store(roots).build() {
        Ok(context) => builder.tls_context(context),
        Err(e) => {
            tracing::warn!(error = %e, "Mozilla's roots were refused; using the defaults");
            builder
        }
    };
    match TokioResolver::builder_tokio().map(hickory_resolver::ResolverBuilder::build) {
        Ok(Ok(resolver)) => builder.build_with_resolver(HickoryDns(Arc::new(resolver))),
        Ok(Err(e)) | Err(e) => {
            tracing::warn!(error = %e, "no resolver configuration (/etc/resolv.conf); using getaddrinfo");
            builder.build_https()
        }
    }
}

/// Names resolved by hickory for the AWS SDK.
#[derive(Clone, Debug)]
struct HickoryDns(Arc<TokioResolver>);

impl ResolveDns for HickoryDns {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            self.0
                .lookup_ip(name)
                .await
                .map(|found| found.iter().collect())
                .map_err(ResolveDnsError::new)
        })
    }
}
