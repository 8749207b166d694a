//! Credentials in the request path (the plumbing around `crate::credentials`' pure decision):
//! putting them into an allowed request (headers, basic, `SigV4` re-signing), wrapping its body
//! in the leak scanner, and the refusals (leak attempt, no value), each audited on the request's
//! entry.

use std::sync::Arc;

use boundary_api::credentials::CredentialValue;
use http::Response;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;

use super::{Outgoing, text};
use crate::Proxy;
use crate::audit::{Decision, Entry};
use crate::credentials::scan::{LeakSlot, ScannedBody};
use crate::credentials::{self, Outcome};
use crate::head::Scheme;
use crate::metrics::Kind;
use crate::sigv4;
use crate::upstream::Body;

/// Audit lines never show a placeholder's nonce or a real value.
pub(super) fn redact_entry(
    entry: &mut Entry,
    credentials: &credentials::CredentialSet,
    values: &credentials::Values,
) {
    if credentials.is_empty() {
        return;
    }
    entry.host = credentials.redact(&entry.host, values).into_owned();
    if let Some(path) = &entry.path {
        entry.path = Some(credentials.redact(path, values).into_owned());
    }
}

/// Acts on the credentials' decision for an allowed request: puts credentials in (header,
/// basic, `SigV4`), wraps the body in the leak scanner, or refuses (leak attempt, no value).
pub(super) async fn with_credentials(
    proxy: &Proxy,
    entry: &mut Entry,
    kind: Kind,
    scheme: Scheme,
    allowed: bool,
    (credentials, values): (&credentials::CredentialSet, &credentials::Values),
    mut out: Outgoing,
) -> Result<Outgoing, Box<Response<Body>>> {
    let facts = credentials::RequestFacts {
        host: &out.target.host,
        port: out.target.port,
        method: out.parts.method.as_str(),
        path: &out.target.path,
        path_and_query: &out.target.path_and_query,
        headers: &out.parts.headers,
        intercepted: scheme == Scheme::Https,
        allowed,
    };
    let mut bound: Vec<&str> = Vec::new();
    let mut sigv4 = Vec::new();
    match credentials::decide(credentials, values, &facts) {
        Outcome::Nothing => {}
        Outcome::Leak(leak) => {
            let host = entry.host.clone();
            let port = out.target.port;
            return Err(Box::new(refuse_leak(proxy, entry, kind, leak, &host, port)));
        }
        Outcome::NoValue { message, .. } => {
            return Err(Box::new(refuse_credential(
                proxy, entry, kind, 403, message,
            )));
        }
        Outcome::Inject(injections) => {
            sigv4 = credentials::inject(
                &mut out.parts.headers,
                &mut out.target.path_and_query,
                &injections,
            )
            .map_err(|e| Box::new(refuse_credential(proxy, entry, kind, 403, e.to_string())))?;
            bound = injections
                .iter()
                .map(|i| i.credential.name.as_str())
                .collect();
        }
    }
    if let Some(needles) = credentials::body_needles(credentials, values, &bound) {
        let slot = late_leaks(proxy, entry, out.target.port);
        out.body = ScannedBody::new(out.body, Arc::new(needles), slot.clone()).boxed();
        out.leak = Some(slot);
    }
    // One signature per request: with several AWS credentials bound (overlapping
    // destinations), the first signs.
    if let Some(injection) = sigv4.first() {
        let signer = match signer_of(proxy, injection.value).await {
            Ok(s) => s,
            Err(reason) => {
                return Err(Box::new(refuse_credential(proxy, entry, kind, 403, reason)));
            }
        };
        // The host the upstream request will carry is the one signed.
        if let Ok(host) = HeaderValue::from_str(&out.target.authority(scheme)) {
            out.parts.headers.insert(header::HOST, host);
        }
        match signer.resign(&mut out.parts, out.body).await {
            Ok(body) => out.body = body.boxed(),
            Err(e) => {
                let status = match e {
                    sigv4::SigV4Error::BodyTooLarge { .. } => 413,
                    sigv4::SigV4Error::Credentials(_) | sigv4::SigV4Error::Signing(_) => 502,
                    _ => 403,
                };
                let reason = format!(
                    "credential {}: cannot sign the request for AWS: {e}",
                    injection.credential.name
                );
                return Err(Box::new(refuse_credential(
                    proxy, entry, kind, status, reason,
                )));
            }
        }
    }
    for name in &bound {
        proxy.metrics().credential_injected(name);
    }
    if !bound.is_empty() {
        entry.credential = Some(bound.join(","));
    }
    Ok(out)
}

/// The leak slot of a request's body scan: a leak found after the request's record was written
/// is audited as an event of its own (`credential-leak`), and counted.
fn late_leaks(proxy: &Proxy, entry: &Entry, port: u16) -> Arc<LeakSlot> {
    let (proxy, container, tier) = (proxy.clone(), entry.container.clone(), entry.tier);
    let (host, method, path) = (entry.host.clone(), entry.method.clone(), entry.path.clone());
    LeakSlot::new(move |leak: credentials::Leak| {
        proxy.metrics().credential_leak(leak.metric_place());
        let reason = leak.reason(&host, port);
        proxy.record_event(
            "credential-leak",
            container.clone(),
            tier,
            serde_json::json!({
                "decision": "deny",
                "host": host,
                "port": port,
                "method": method,
                "path": path,
                "reason": reason,
                "leak": leak,
            }),
        );
    })
}

/// Who signs an AWS credential's requests: its Secret's keys, or (an empty value) the
/// sidecar's own AWS identity.
async fn signer_of(proxy: &Proxy, value: &CredentialValue) -> Result<sigv4::AwsSigner, String> {
    match value {
        CredentialValue::Aws(keys) => Ok(sigv4::AwsSigner::from_keys(keys.clone())),
        CredentialValue::Value(v) if v.is_empty() => Ok(proxy.aws_identity().await.clone()),
        CredentialValue::Value(_) => {
            Err("its value is not AWS keys (accessKeyId, secretAccessKey)".to_owned())
        }
    }
}

/// A credential leak attempt: 403, audited with `leak`, counted.
fn refuse_leak(
    proxy: &Proxy,
    entry: &mut Entry,
    kind: Kind,
    leak: credentials::Leak,
    host: &str,
    port: u16,
) -> Response<Body> {
    let reason = leak.reason(host, port);
    proxy.metrics().credential_leak(leak.metric_place());
    proxy.metrics().decision(kind, Decision::Deny);
    entry.decision = Decision::Deny;
    entry.reason = Some(reason.clone());
    entry.status = Some(403);
    entry.leak = Some(leak);
    let mut resp = text(403, format!("Blocked by Agent Boundary: {reason}\n"));
    resp.headers_mut().insert(
        "x-agent-boundary",
        HeaderValue::from_static("credential-leak"),
    );
    resp
}

/// A request a credential is bound to but cannot be put into (no value, a bad value, `SigV4`
/// not available): 403, fail closed.
fn refuse_credential(
    proxy: &Proxy,
    entry: &mut Entry,
    kind: Kind,
    status: u16,
    reason: String,
) -> Response<Body> {
    proxy.metrics().decision(kind, Decision::Deny);
    entry.decision = Decision::Deny;
    entry.status = Some(status);
    let body = format!("Blocked by Agent Boundary: {reason}\n");
    entry.reason = Some(reason);
    text(status, body)
}

/// The 403 for a leak the body scan found (it closes the slot: a later leak is audited on its
/// own).
pub(super) fn body_leak(
    proxy: &Proxy,
    entry: &mut Entry,
    slot: Option<&LeakSlot>,
) -> Option<Response<Body>> {
    let found = slot?.close()?;
    let (host, port) = (entry.host.clone(), entry.port);
    Some(refuse_body_leak(proxy, entry, found, &host, port))
}

/// A leak the body scanner found: the upstream request was stopped; 403 when the response had
/// not started (the caller's to send), audited with `leak` either way.
pub(super) fn refuse_body_leak(
    proxy: &Proxy,
    entry: &mut Entry,
    leak: credentials::Leak,
    host: &str,
    port: u16,
) -> Response<Body> {
    let reason = leak.reason(host, port);
    proxy.metrics().credential_leak(leak.metric_place());
    entry.decision = Decision::Deny;
    entry.reason = Some(reason.clone());
    entry.status = Some(403);
    entry.leak = Some(leak);
    text(403, format!("Blocked by Agent Boundary: {reason}\n"))
}
