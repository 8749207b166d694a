//! The node agent's only conversation with Kubernetes: a JSON merge patch of its own Pod.
//!
//! `boundary` is copied into arbitrary agent images and must not link kube or k8s-openapi, so
//! this is a deliberately small client on hyper + rustls: in-cluster configuration (the
//! `kubernetes` Service from `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's token and
//! CA), one HTTPS/1.1 connection per request (the agent talks once a minute at most), the token
//! re-read on every request because projected tokens rotate, and errors that say what to fix.
//!
//! Nothing here spawns threads or uses tokio's blocking pool: the agent probes (which forks)
//! between requests, and a fork is only safe while the process is single-threaded.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

/// Where the kubelet mounts the service account token.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the kubelet mounts the cluster CA.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Env var naming the `kubernetes` Service's address, set in every container.
pub const HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";
/// Env var naming the `kubernetes` Service's HTTPS port.
pub const PORT_ENV: &str = "KUBERNETES_SERVICE_PORT";

/// A whole request (connect, TLS, request, response body) gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest apiserver message kept in an error (a misbehaving proxy could send megabytes).
const MESSAGE_LIMIT: usize = 1024;

/// Why talking to the apiserver failed, with the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Neither `--api-server` nor the in-cluster env vars say where the apiserver is.
    #[error(
        "no apiserver address: {HOST_ENV} and {PORT_ENV} are not set (they are in every pod; \
         outside a cluster pass --api-server https://HOST:PORT or set BOUNDARY_API_SERVER)"
    )]
    NoApiServer,
    /// The apiserver address does not parse or is not HTTPS.
    #[error("invalid apiserver address {url:?}: {reason}")]
    BadApiServer {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Pod name or namespace that cannot be one (it would change the request path).
    #[error("invalid {what} {value:?}: not a Kubernetes object name")]
    BadName {
        /// `pod name` or `namespace`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The service account token cannot be read.
    #[error(
        "reading the service account token {}: {source}. The node agent's Pod needs a service \
         account token (automountServiceAccountToken must not be false; outside a cluster pass \
         --token-file)", path.display()
    )]
    Token {
        /// The token file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the service account token file {} is empty", path.display())]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
    /// The CA file cannot be read or holds no usable certificate.
    #[error("the apiserver CA file {}: {reason} (outside a cluster pass --ca-file)", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No TCP connection to any address of the apiserver.
    #[error("connecting to the apiserver at {server}: {source}")]
    Connect {
        /// `host:port`.
        server: String,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong name, not TLS).
    #[error(
        "TLS handshake with the apiserver at {server} failed: {source} (is the CA file the \
         cluster's CA, and does the apiserver's certificate name {server}?)"
    )]
    Tls {
        /// `host:port`.
        server: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange broke off.
    #[error("HTTP exchange with the apiserver at {server}: {source}")]
    Http {
        /// `host:port`.
        server: String,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// The request took longer than the timeout.
    #[error("the apiserver at {server} did not answer within {timeout:?}")]
    Timeout {
        /// `host:port`.
        server: String,
        /// The timeout.
        timeout: Duration,
    },
    /// 401: the token is not (or no longer) valid.
    #[error(
        "401 Unauthorized: the apiserver rejected the service account token ({message}); \
         was the ServiceAccount deleted or the token file replaced by something else?"
    )]
    Unauthorized {
        /// The apiserver's Status message.
        message: String,
    },
    /// 403: RBAC does not allow the request.
    #[error(
        "403 Forbidden: the node agent's service account may not {verb} {resource} in namespace \
         {namespace} ({message}). Fix: bind it to a Role that allows verbs [get, patch] on \
         resource pods in namespace {namespace} (the Helm chart's node-agent Role does)"
    )]
    Forbidden {
        /// The verb that was refused (`patch`).
        verb: &'static str,
        /// The resource (`pods`).
        resource: &'static str,
        /// The namespace.
        namespace: String,
        /// The apiserver's Status message.
        message: String,
    },
    /// 404: the agent's own Pod does not exist.
    #[error(
        "404 Not Found: pod {namespace}/{name} does not exist ({message}); it is being deleted, \
         or BOUNDARY_POD_NAME/BOUNDARY_POD_NAMESPACE do not name this agent's Pod (set them from the downward API: \
         fieldRef metadata.name and metadata.namespace)"
    )]
    PodNotFound {
        /// The namespace.
        namespace: String,
        /// The Pod name.
        name: String,
        /// The apiserver's Status message.
        message: String,
    },
    /// Any other non-success answer.
    #[error("the apiserver answered {status} to {what}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The request, e.g. `PATCH pod ns/name`.
        what: String,
        /// The apiserver's Status message (or the start of the body).
        message: String,
    },
}

impl ApiError {
    /// Errors worth a quick retry (connectivity, apiserver overload), as opposed to errors that
    /// need someone to change something (RBAC, a missing Pod, a bad token); the agent retries
    /// both, only the log level differs.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Connect { .. }
            | ApiError::Http { .. }
            | ApiError::Timeout { .. }
            | ApiError::Tls { .. } => true,
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// The apiserver's address, split for connecting and for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `https://HOST[:PORT]` (a trailing `/` is fine; the port defaults to 443).
    pub fn parse(url: &str) -> Result<Endpoint, ApiError> {
        let bad = |reason: &str| ApiError::BadApiServer {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
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
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
        })
    }

    /// The in-cluster address: `flag` when given, else from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT` as `env` returns them.
    pub fn resolve(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, ApiError> {
        if let Some(url) = flag.filter(|u| !u.is_empty()) {
            return Endpoint::parse(url);
        }
        let host = env(HOST_ENV).filter(|h| !h.is_empty());
        let port = env(PORT_ENV).filter(|p| !p.is_empty());
        let (Some(host), Some(port)) = (host, port) else {
            return Err(ApiError::NoApiServer);
        };
        let port = port.parse().map_err(|_| ApiError::BadApiServer {
            url: format!("{host}:{port}"),
            reason: format!("{PORT_ENV} is not a port number"),
        })?;
        // An IPv6 service address comes without brackets.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Endpoint { host, port })
    }

    /// `host:port` as people write it (brackets around IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A client for one apiserver with one service account.
#[derive(Debug, Clone)]
pub struct ApiServer {
    endpoint: Endpoint,
    token_file: PathBuf,
    ca_file: PathBuf,
    user_agent: String,
}

/// What the response to a request was, for [`error_for`].
#[derive(Debug, Clone, Copy)]
pub struct PodRequest<'a> {
    /// The verb in RBAC terms.
    pub verb: &'static str,
    /// The Pod's namespace.
    pub namespace: &'a str,
    /// The Pod's name.
    pub name: &'a str,
}

/// The part of a Kubernetes `Status` object worth showing.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
}

/// The apiserver's message from an error body: the `Status.message` when the body is a
/// Status, else the start of the body as text.
pub fn status_message(body: &[u8]) -> String {
    let message = match serde_json::from_slice::<Status>(body) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    };
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &message[..end])
    } else if message.is_empty() {
        "(no message)".to_owned()
    } else {
        message
    }
}

/// The error for a non-success answer to `request`.
pub fn error_for(status: StatusCode, body: &[u8], request: PodRequest<'_>) -> ApiError {
    let message = status_message(body);
    match status {
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized { message },
        StatusCode::FORBIDDEN => ApiError::Forbidden {
            verb: request.verb,
            resource: "pods",
            namespace: request.namespace.to_owned(),
            message,
        },
        StatusCode::NOT_FOUND => ApiError::PodNotFound {
            namespace: request.namespace.to_owned(),
            name: request.name.to_owned(),
            message,
        },
        _ => ApiError::Status {
            status: status.as_u16(),
            what: format!(
                "{} pod {}/{}",
                request.verb.to_uppercase(),
                request.namespace,
                request.name
            ),
            message,
        },
    }
}

/// A DNS-1123 subdomain (Pod names) or label (namespaces): nothing that could alter the path.
fn check_name(what: &'static str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

/// Reads the bearer token (trimmed: files written by hand end with a newline).
pub fn read_token(path: &Path) -> Result<String, ApiError> {
    let token = std::fs::read_to_string(path).map_err(|source| ApiError::Token {
        path: path.to_owned(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

fn tls_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, ApiError> {
    let fail = |reason: String| ApiError::Ca {
        path: ca_file.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(fail("no usable certificate in it".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The JSON merge patch that sets `key` to `value` among the object's annotations.
pub fn annotation_patch(key: &str, value: &str) -> Vec<u8> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    serde_json::to_vec(&patch).unwrap_or_default()
}

impl ApiServer {
    /// A client of the apiserver at `endpoint`, authenticating with the token in `token_file`
    /// and trusting the CAs in `ca_file`. Nothing is read until a request is made.
    pub fn new(endpoint: Endpoint, token_file: PathBuf, ca_file: PathBuf) -> ApiServer {
        ApiServer {
            endpoint,
            token_file,
            ca_file,
            user_agent: format!("boundary-node-agent/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The apiserver's address.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Applies a JSON merge patch to Pod `namespace/name`.
    pub async fn merge_patch_pod(
        &self,
        namespace: &str,
        name: &str,
        patch: Vec<u8>,
    ) -> Result<(), ApiError> {
        check_name("namespace", namespace)?;
        check_name("pod name", name)?;
        let uri = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let request = PodRequest {
            verb: "patch",
            namespace,
            name,
        };
        let (status, body) = self
            .send(
                hyper::Method::PATCH,
                &uri,
                Some(("application/merge-patch+json", patch)),
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(error_for(status, &body, request))
        }
    }

    /// One request on a fresh connection; returns the status and the whole body.
    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let server = self.endpoint.authority();
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout {
                server,
                timeout: REQUEST_TIMEOUT,
            }),
        }
    }

    async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let server = self.endpoint.authority();
        // Both re-read per request: projected tokens rotate (about hourly), and so may the CA.
        let token = read_token(&self.token_file)?;
        let tls = tls_config(&self.ca_file)?;
        let stream = self.connect().await?;
        let name = ServerName::try_from(self.endpoint.host.clone()).map_err(|e| {
            ApiError::BadApiServer {
                url: server.clone(),
                reason: e.to_string(),
            }
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|source| ApiError::Tls {
                server: server.clone(),
                source,
            })?;
        let http_error = |source| ApiError::Http {
            server: server.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &server)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, &self.user_agent);
        let payload = match body {
            Some((content_type, bytes)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| ApiError::BadApiServer {
                url: server.clone(),
                reason: e.to_string(),
            })?;
        // The connection is driven alongside the request rather than spawned: no task outlives
        // the exchange.
        let exchange = async {
            let response = sender.send_request(request).await.map_err(http_error)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(http_error)?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        };
        tokio::pin!(connection);
        tokio::pin!(exchange);
        tokio::select! {
            result = &mut exchange => result,
            ended = &mut connection => match ended {
                // The connection ended first: the exchange can still finish from buffers.
                Ok(()) => exchange.await,
                Err(source) => Err(http_error(source)),
            },
        }
    }

    async fn connect(&self) -> Result<tokio::net::TcpStream, ApiError> {
        let server = self.endpoint.authority();
        // Resolved synchronously on purpose: tokio's resolver would start a blocking-pool
        // thread, and the agent must stay single-threaded for the probe's fork. The in-cluster
        // address is an IP literal anyway.
        let addrs: Vec<SocketAddr> = (self.endpoint.host.as_str(), self.endpoint.port)
            .to_socket_addrs()
            .map_err(|source| ApiError::Connect {
                server: server.clone(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(ApiError::Connect {
            server,
            source: last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_flags_and_the_in_cluster_env() {
        let none = |_: &str| None;
        assert_eq!(
            Endpoint::resolve(Some("https://127.0.0.1:6443"), none).unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 6443
            }
        );
        let e = Endpoint::parse("https://api.example.com/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("api.example.com", 443));
        let e = Endpoint::parse("https://[fd00::1]:8443").unwrap();
        assert_eq!(e.host, "fd00::1");
        assert_eq!(e.authority(), "[fd00::1]:8443");
        for bad in [
            "http://127.0.0.1:6443",
            "127.0.0.1:6443",
            "https://h/api",
            "https://u:p@h",
            "",
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, ApiError::BadApiServer { .. }), "{bad}: {err}");
        }

        let env = |k: &str| match k {
            HOST_ENV => Some("fd00:10:96::1".to_owned()),
            PORT_ENV => Some("443".to_owned()),
            _ => None,
        };
        let e = Endpoint::resolve(None, env).unwrap();
        assert_eq!(e.authority(), "[fd00:10:96::1]:443");
        // The flag wins over the env.
        let e = Endpoint::resolve(Some("https://localhost:1"), env).unwrap();
        assert_eq!(e.authority(), "localhost:1");

        let err = Endpoint::resolve(None, none).unwrap_err();
        assert!(matches!(err, ApiError::NoApiServer));
        assert!(err.to_string().contains("--api-server"), "{err}");
        let only_host = |k: &str| (k == HOST_ENV).then(|| "10.96.0.1".to_owned());
        assert!(matches!(
            Endpoint::resolve(None, only_host),
            Err(ApiError::NoApiServer)
        ));
    }

    #[test]
    fn answers_map_to_errors_that_name_the_fix() {
        let req = PodRequest {
            verb: "patch",
            namespace: "agent-boundary",
            name: "node-agent-x",
        };
        let forbidden = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"node-agent-x\" is forbidden: User \"system:serviceaccount:agent-boundary:node-agent\" cannot patch resource \"pods\" in API group \"\" in the namespace \"agent-boundary\"","reason":"Forbidden","code":403}"#;
        let err = error_for(StatusCode::FORBIDDEN, forbidden, req);
        let text = err.to_string();
        assert!(matches!(err, ApiError::Forbidden { verb: "patch", .. }));
        assert!(
            text.contains("may not patch pods in namespace agent-boundary"),
            "{text}"
        );
        assert!(text.contains("verbs [get, patch]"), "{text}");
        assert!(
            text.contains("cannot patch resource"),
            "the apiserver's words: {text}"
        );
        assert!(!err.is_transient());

        let err = error_for(
            StatusCode::NOT_FOUND,
            br#"{"kind":"Status","message":"pods \"node-agent-x\" not found","code":404}"#,
            req,
        );
        assert!(matches!(err, ApiError::PodNotFound { .. }));
        assert!(
            err.to_string()
                .contains("pod agent-boundary/node-agent-x does not exist"),
            "{err}"
        );
        assert!(err.to_string().contains("POD_NAME"), "{err}");

        let err = error_for(StatusCode::UNAUTHORIZED, b"", req);
        assert!(matches!(err, ApiError::Unauthorized { .. }), "{err}");

        let err = error_for(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"kind":"Status","message":"metadata.annotations: Invalid value","code":422}"#,
            req,
        );
        assert_eq!(
            err.to_string(),
            "the apiserver answered 422 to PATCH pod agent-boundary/node-agent-x: \
             metadata.annotations: Invalid value"
        );
        assert!(!err.is_transient());
        let err = error_for(StatusCode::SERVICE_UNAVAILABLE, b"<html>busy</html>", req);
        assert!(err.to_string().ends_with(": <html>busy</html>"), "{err}");
        assert!(err.is_transient());

        // Huge bodies are cut, on a character boundary.
        let long = "é".repeat(4000);
        let message = status_message(long.as_bytes());
        assert!(
            message.len() <= MESSAGE_LIMIT + "…".len(),
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
    }

    #[test]
    fn tokens_are_trimmed_and_missing_ones_explained() {
        let dir = std::env::temp_dir().join(format!("boundary-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "abc.def\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), "abc.def");
        std::fs::write(&file, " \n").unwrap();
        assert!(matches!(
            read_token(&file),
            Err(ApiError::EmptyToken { .. })
        ));
        let err = read_token(&dir.join("missing")).unwrap_err();
        assert!(matches!(err, ApiError::Token { .. }));
        assert!(
            err.to_string().contains("automountServiceAccountToken"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_cannot_change_the_request_path() {
        for bad in ["", "a/b", "../x", "A", "a?b", "-a", "a%2F"] {
            assert!(check_name("pod name", bad).is_err(), "{bad}");
        }
        for good in ["node-agent-7xk2p", "agent-boundary", "a.b"] {
            check_name("pod name", good).unwrap();
        }
    }

    #[test]
    fn the_patch_sets_only_the_annotation() {
        let patch = annotation_patch("agentboundary.dev/probe-report", r#"{"best":"userns"}"#);
        let value: serde_json::Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"metadata": {"annotations": {
                "agentboundary.dev/probe-report": "{\"best\":\"userns\"}"
            }}})
        );
    }
}
