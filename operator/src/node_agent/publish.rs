//! The node agent's only conversation with Kubernetes: a JSON merge patch of the probe-report
//! annotation on its own Pod, through kube-rs.
//!
//! The apiserver is the in-cluster one (`KUBERNETES_SERVICE_HOST`/`_PORT`) unless
//! `--api-server` names another; the token and the CA are read from their files for every
//! attempt (a new client each time: projected tokens and the cluster CA rotate, and the agent
//! writes at most once an interval).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::Error;

/// Where the kubelet mounts the service account token.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the kubelet mounts the cluster CA.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Env var naming the `kubernetes` Service's address, set in every container.
pub const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// Env var naming the `kubernetes` Service's HTTPS port.
pub const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";

/// A whole attempt (connect, TLS, request, response) gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest apiserver message kept in an error (a misbehaving proxy could send megabytes).
const MESSAGE_LIMIT: usize = 1024;

/// The apiserver and the credentials the agent talks to it with.
#[derive(Debug, Clone)]
pub struct Apiserver {
    url: Uri,
    token_file: PathBuf,
    ca_file: PathBuf,
}

impl Apiserver {
    /// `flag` (`https://HOST[:PORT]`) when given, else the in-cluster address from `env`
    /// ([`HOST_ENV`], [`PORT_ENV`]). Nothing is read from the files yet.
    pub fn resolve(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        token_file: PathBuf,
        ca_file: PathBuf,
    ) -> Result<Apiserver, Error> {
        let url = match flag.filter(|u| !u.is_empty()) {
            Some(url) => parse_url(url)?,
            None => in_cluster_url(&env)?,
        };
        Ok(Apiserver {
            url,
            token_file,
            ca_file,
        })
    }

    /// `host:port` of the apiserver, for logs and errors.
    pub fn authority(&self) -> String {
        let authority = self.url.authority().map_or("", |a| a.as_str());
        if self.url.port().is_some() {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        }
    }

    /// A client with the token and CA as the files hold them now.
    fn client(&self) -> Result<Client, Error> {
        let token = read_token(&self.token_file)?;
        let roots = read_ca(&self.ca_file)?;
        let mut config = kube::Config::new(self.url.clone());
        config.root_cert = Some(roots);
        config.auth_info.token = Some(token.into());
        Client::try_from(config).map_err(|source| Error::Client { source })
    }

    /// Sets annotation `key` to `value` on Pod `namespace/name` (JSON merge patch).
    pub async fn annotate_pod(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.client()?, namespace);
        let patch = Patch::Merge(annotation_patch(key, value));
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            pods.patch(name, &PatchParams::default(), &patch),
        )
        .await
        {
            Err(_) => Err(Error::Timeout {
                server: self.authority(),
                timeout: REQUEST_TIMEOUT,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.error_for(e, namespace, name)),
        }
    }

    /// The agent's error for a failed patch of Pod `namespace/name`, with the fix where there
    /// is one.
    pub fn error_for(&self, error: kube::Error, namespace: &str, name: &str) -> Error {
        let status = match error {
            kube::Error::Api(status) => status,
            other => {
                return match tls_cause(&other) {
                    Some(tls) => Error::Tls {
                        server: self.authority(),
                        detail: tls.to_string(),
                    },
                    None => Error::Unreachable {
                        server: self.authority(),
                        detail: chain(&other),
                    },
                };
            }
        };
        let message = limited(&status.message);
        match status.code {
            401 => Error::Unauthorized { message },
            403 => Error::Forbidden {
                namespace: namespace.to_owned(),
                message,
            },
            404 => Error::PodNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                message,
            },
            code => Error::Status {
                status: code,
                what: format!("PATCH pod {namespace}/{name}"),
                message,
            },
        }
    }
}

/// The JSON merge patch that sets `key` to `value` among the object's annotations.
pub fn annotation_patch(key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {key: value}}})
}

/// Parses `https://HOST[:PORT]` (a trailing `/` is fine).
fn parse_url(url: &str) -> Result<Uri, Error> {
    let bad = |reason: &str| Error::BadApiServer {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(_) => return Err(bad("the apiserver is only reached over https")),
        None => return Err(bad("expected https://HOST:PORT")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("expected https://HOST:PORT without a path"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if authority.host().trim_matches(['[', ']']).is_empty() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// `https://HOST:PORT` of the `kubernetes` Service, from the env vars every container gets.
fn in_cluster_url(env: &impl Fn(&str) -> Option<String>) -> Result<Uri, Error> {
    let host = env(HOST_ENV).filter(|h| !h.is_empty());
    let port = env(PORT_ENV).filter(|p| !p.is_empty());
    let (Some(host), Some(port)) = (host, port) else {
        return Err(Error::NoApiServer);
    };
    let port: u16 = port.parse().map_err(|_| Error::BadApiServer {
        url: format!("{host}:{port}"),
        reason: format!("{PORT_ENV} is not a port number"),
    })?;
    // An IPv6 service address comes without brackets.
    let host = host.trim_matches(['[', ']']);
    let url = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    parse_url(&url)
}

/// The bearer token (trimmed: files written by hand end with a newline).
fn read_token(path: &Path) -> Result<String, Error> {
    let token = std::fs::read_to_string(path).map_err(|source| Error::Token {
        path: path.to_owned(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// The CA certificates (DER) of the PEM file at `path`; at least one.
fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let fail = |reason: String| Error::Ca {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let blocks = pem::parse_many(&text).map_err(|e| fail(format!("not PEM: {e}")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

/// The TLS error somewhere in `error`'s causes. `std::io::Error` hides the error it wraps from
/// `source()`, so each one is opened too.
fn tls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| tls_cause(inner))
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// `error` and its causes, joined by `: ` (kube's errors say little on their own).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    limited(&text)
}

/// At most [`MESSAGE_LIMIT`] bytes of `message`; `(no message)` when empty.
fn limited(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        return "(no message)".to_owned();
    }
    if message.len() <= MESSAGE_LIMIT {
        return message.to_owned();
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn resolve(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<Apiserver, Error> {
        Apiserver::resolve(flag, env(vars), "token".into(), "ca.crt".into())
    }

    #[test]
    fn the_apiserver_is_the_flag_or_the_in_cluster_service() {
        let flag = resolve(Some("https://10.0.0.1:6443/"), &[]).unwrap();
        assert_eq!(flag.authority(), "10.0.0.1:6443");
        assert_eq!(
            resolve(Some("https://api.example"), &[])
                .unwrap()
                .authority(),
            "api.example:443"
        );
        let in_cluster = [(HOST_ENV, "10.96.0.1"), (PORT_ENV, "443")];
        assert_eq!(
            resolve(None, &in_cluster).unwrap().authority(),
            "10.96.0.1:443"
        );
        // The flag wins over the environment.
        assert_eq!(
            resolve(Some("https://127.0.0.1:6443"), &in_cluster)
                .unwrap()
                .authority(),
            "127.0.0.1:6443"
        );
        let ipv6 = resolve(None, &[(HOST_ENV, "fd00::1"), (PORT_ENV, "6443")]).unwrap();
        assert_eq!(ipv6.authority(), "[fd00::1]:6443");
    }

    #[test]
    fn a_missing_or_bad_apiserver_address_says_what_to_set() {
        let err = resolve(None, &[(HOST_ENV, "10.96.0.1")]).unwrap_err();
        assert!(matches!(err, Error::NoApiServer), "{err}");
        assert!(err.to_string().contains("--api-server"), "{err}");
        let err = resolve(None, &[(HOST_ENV, "10.96.0.1"), (PORT_ENV, "https")]).unwrap_err();
        assert!(err.to_string().contains("not a port number"), "{err}");
        for (url, reason) in [
            ("http://127.0.0.1:6443", "only reached over https"),
            ("127.0.0.1:6443", "expected https://HOST:PORT"),
            ("https://127.0.0.1:6443/api", "without a path"),
            ("https://user:pw@127.0.0.1", "credentials"),
            ("https://", "not a URL"),
        ] {
            let err = resolve(Some(url), &[]).unwrap_err();
            assert!(
                matches!(err, Error::BadApiServer { .. }) && err.to_string().contains(reason),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn token_and_ca_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let ca = dir.path().join("ca.crt");
        let err = read_token(&token).unwrap_err();
        assert!(
            matches!(err, Error::Token { .. }) && err.to_string().contains("--token-file"),
            "{err}"
        );
        std::fs::write(&token, "\n").unwrap();
        assert!(matches!(
            read_token(&token).unwrap_err(),
            Error::EmptyToken { .. }
        ));
        std::fs::write(&token, "abc\n").unwrap();
        assert_eq!(read_token(&token).unwrap(), "abc");

        let err = read_ca(&ca).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        std::fs::write(&ca, "not a certificate").unwrap();
        let err = read_ca(&ca).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        let cert = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        assert_eq!(read_ca(&ca).unwrap(), [cert.cert.der().to_vec()]);
    }

    #[test]
    fn refusals_map_to_errors_that_carry_the_message_and_the_fix() {
        let api = resolve(Some("https://127.0.0.1:6443"), &[]).unwrap();
        let refused = |code: u16, message: &str| {
            let status = Status::failure(message, "").with_code(code);
            api.error_for(kube::Error::Api(status.boxed()), "agent-boundary", "na-1")
        };
        let err = refused(
            403,
            "pods \"na-1\" is forbidden: User \"system:serviceaccount:agent-boundary:x\" cannot patch",
        );
        let text = err.to_string();
        assert!(matches!(err, Error::Forbidden { .. }), "{text}");
        for part in [
            "403 Forbidden",
            "may not patch pods in namespace agent-boundary",
            "verbs [get, patch]",
            "system:serviceaccount:agent-boundary:x",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(!err.is_transient());
        let err = refused(404, "pods \"na-1\" not found");
        assert!(
            err.to_string()
                .contains("404 Not Found: pod agent-boundary/na-1 does not exist"),
            "{err}"
        );
        assert!(refused(401, "").to_string().contains("401 Unauthorized"));
        let err = refused(500, &"x".repeat(5000));
        assert!(err.is_transient());
        assert!(err.to_string().contains("500"), "{err}");
        assert!(err.to_string().len() < 1200, "the message is cut");
        assert!(refused(429, "slow down").is_transient());
        assert!(!refused(422, "invalid").is_transient());
    }

    /// A loopback listener that answers every connection with `reply` and closes it.
    async fn answering(reply: &'static [u8]) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt as _;
                let _ = conn.write_all(reply).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn unreachable_and_non_tls_apiservers_are_transient_errors_naming_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let (token, ca) = (dir.path().join("token"), dir.path().join("ca.crt"));
        std::fs::write(&token, "t").unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();

        // Nothing listens on the port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let api = Apiserver::resolve(
            Some(&format!("https://127.0.0.1:{port}")),
            env(&[]),
            token.clone(),
            ca.clone(),
        )
        .unwrap();
        let err = api.annotate_pod("ns", "pod", "k", "v").await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(err.is_transient());

        // Plain HTTP where TLS is expected: the TLS error, with the CA hint.
        let plain = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let api =
            Apiserver::resolve(Some(&format!("https://{plain}")), env(&[]), token, ca).unwrap();
        let err = api.annotate_pod("ns", "pod", "k", "v").await.unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err}");
        assert!(
            err.to_string().contains("TLS handshake with the apiserver"),
            "{err}"
        );
        assert!(err.is_transient());
    }
}
