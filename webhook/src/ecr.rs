//! Pull credentials for Amazon ECR with the webhook's own AWS identity, as the kubelet's ECR
//! credential provider gets them: `GetAuthorizationToken` in the registry's region, with the
//! default credential chain (environment, IRSA web identity, EKS Pod Identity, instance
//! profile). The token (`AWS:<password>`, valid 12 hours) is kept until shortly before it
//! expires.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_ecr::error::ProvideErrorMetadata as _;

use base64::Engine as _;

use crate::pull_secrets::Credential;

/// A token is renewed this long before ECR says it expires.
const RENEW_BEFORE: Duration = Duration::from_mins(10);

/// Where the ECR API is asked (tests point it at a stand-in).
#[derive(Clone, Debug, Default)]
pub struct EcrSettings {
    /// The ECR API endpoint instead of the region's (`None`: AWS's).
    pub endpoint_url: Option<String>,
    /// Fixed access key and secret instead of the default chain (`None`: the chain).
    pub static_credentials: Option<(String, String)>,
}

/// The account and region of an ECR registry host
/// (`<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`).
pub fn registry_of(host: &str) -> Option<(&str, &str)> {
    let host = host.split(':').next().unwrap_or(host);
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let (account, rest) = rest.split_once('.')?;
    let region = rest
        .strip_prefix("dkr.ecr.")
        .or_else(|| rest.strip_prefix("dkr.ecr-fips."))?;
    let valid = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some((account, region))
}

/// ECR tokens, per region.
#[derive(Debug, Default)]
pub struct Ecr {
    settings: EcrSettings,
    clients: tokio::sync::Mutex<HashMap<String, aws_sdk_ecr::Client>>,
    tokens: std::sync::Mutex<HashMap<String, (Credential, SystemTime)>>,
}

impl Ecr {
    /// ECR access with `settings`.
    pub fn new(settings: EcrSettings) -> Self {
        Ecr {
            settings,
            ..Ecr::default()
        }
    }

    async fn client(&self, region: &str) -> aws_sdk_ecr::Client {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(region) {
            return client.clone();
        }
        let https = boundary_aws_http::https_client();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .http_client(https);
        if let Some(url) = &self.settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some((key, secret)) = &self.settings.static_credentials {
            loader = loader.credentials_provider(aws_sdk_ecr::config::Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "static",
            ));
        }
        let client = aws_sdk_ecr::Client::new(&loader.load().await);
        clients.insert(region.to_owned(), client.clone());
        client
    }

    /// The pull credential of an ECR registry host, or why there is none.
    pub async fn credential(&self, host: &str) -> Result<Credential, String> {
        // One token serves every registry of the region the identity may pull from.
        let (_, region) =
            registry_of(host).ok_or_else(|| format!("{host} is not an ECR registry"))?;
        if let Some((credential, renew_at)) = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(region)
            && SystemTime::now() < *renew_at
        {
            return Ok(credential.clone());
        }
        let output = self
            .client(region)
            .await
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| {
                // The service's code and message when it answered; else the whole chain
                // (no credentials found, endpoint unreachable).
                let detail = match e.code() {
                    Some(code) => format!("{code}: {}", e.message().unwrap_or_default()),
                    None => crate::error_text::chain(&e),
                };
                format!(
                    "ECR GetAuthorizationToken with the webhook's AWS identity failed: {detail}"
                )
            })?;
        let data = output
            .authorization_data()
            .first()
            .ok_or("ECR GetAuthorizationToken returned no authorization data")?;
        let decoded = data
            .authorization_token()
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("ECR returned an authorization token that is not base64 of user:password")?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or("ECR returned an authorization token without user:password")?;
        let credential = Credential {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let expires = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_hours(1));
        let renew_at = expires.checked_sub(RENEW_BEFORE).unwrap_or(expires);
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(region.to_owned(), (credential.clone(), renew_at));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_hosts_name_their_account_and_region() {
        assert_eq!(
            registry_of("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(("123456789012", "eu-west-1"))
        );
        assert_eq!(
            registry_of("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"),
            Some(("123456789012", "us-east-1"))
        );
        assert_eq!(
            registry_of("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn:443"),
            Some(("123456789012", "cn-north-1"))
        );
        for other in [
            "public.ecr.aws",
            "docker.io",
            "12345.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
            "123456789012.s3.eu-west-1.amazonaws.com",
        ] {
            assert_eq!(registry_of(other), None, "{other}");
        }
    }
}
