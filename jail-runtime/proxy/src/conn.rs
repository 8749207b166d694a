//! One connection from the jail, from its destination to the protocol that serves it: the
//! pod's loopback, a TCP relay, or the first bytes (a TLS ClientHello, HTTP, anything else). The
//! rules are asked only through [`decide`]; this module acts on the verdicts and audits them.

use std::net::SocketAddr;
use std::time::Duration;

use boundary_api::rules::{Host, RuleSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Proxy;
use crate::audit::Entry;
use crate::client_hello::{self, ClientHello, Parse};
use crate::context::ConnCtx;
use crate::decide::{self, Connection, FIRST_BYTES, Opaque, Ruling, Tls};
use crate::head::Scheme;
use crate::http;
use crate::io::{self, BoxIo, Prefixed};
use crate::metrics::{Kind, UpstreamError};
use crate::pod_local;
use crate::wire::Destination;

/// A loopback connect is answered at once; this only bounds a wedged listener's backlog.
const POD_LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Proxy {
    pub(super) async fn dispatch(&self, mut io: BoxIo, dest: Destination) {
        let bound = dest.host();
        let port = dest.dst.port();
        let verdict_rules = self.rules_for(dest.container.as_deref());
        let rules = &verdict_rules.rules;
        let mut ctx = ConnCtx {
            port,
            bound: Some(bound.clone()),
            sni: None,
            container: dest.container.clone(),
            tier: dest.tier,
        };
        let (wait, hopeless) = match decide::connection(rules, &dest) {
            Connection::PodLocal(ruling) => {
                self.serve_pod_local(io, &ctx, dest.dst, rules, &ruling)
                    .await;
                return;
            }
            Connection::Relay(ruling) => {
                self.relay(io, Vec::new(), &ctx, &bound, "tcp", rules, &ruling)
                    .await;
                return;
            }
            Connection::Sniff { wait, hopeless } => (wait, hopeless),
        };
        let mut buf = Vec::with_capacity(2048);
        if !read_more(&mut io, &mut buf, wait).await {
            let ruling = decide::silent(rules, &bound, port, hopeless);
            self.refuse(&ctx, &bound, "tcp", rules, &ruling);
            return;
        }
        if client_hello::is_tls_start(buf[0]) {
            match read_hello(&mut io, &mut buf).await {
                Some(Ok(hello)) => {
                    self.handle_tls(io, buf, &hello, &mut ctx, &bound, rules)
                        .await;
                }
                Some(Err(why)) => {
                    let ruling = Ruling::deny(format!("malformed TLS ClientHello: {why}"), None);
                    self.refuse(&ctx, &bound, "tls", rules, &ruling);
                }
                None => {}
            }
            return;
        }
        while sniff_http(&buf).is_none() {
            if !read_more(&mut io, &mut buf, wait).await {
                break;
            }
        }
        if sniff_http(&buf) == Some(true) {
            let protocol = http::Protocol::from_start(&buf);
            let io = Prefixed::new(buf, io);
            Box::pin(http::serve(self.clone(), io, ctx, Scheme::Http, protocol)).await;
            return;
        }
        match decide::opaque(rules, &bound, port) {
            Opaque::Relay(ruling) => {
                self.relay(io, buf, &ctx, &bound, "tcp", rules, &ruling)
                    .await;
            }
            Opaque::Refuse(ruling) => self.refuse(&ctx, &bound, "tcp", rules, &ruling),
        }
    }

    async fn handle_tls(
        &self,
        mut io: BoxIo,
        buf: Vec<u8>,
        hello: &ClientHello,
        ctx: &mut ConnCtx,
        bound: &Host,
        rules: &RuleSet,
    ) {
        let (name, sni) = match decide::tls(rules, bound, ctx.port, hello.server_name.as_deref()) {
            Tls::Refuse(ruling) => {
                self.refuse(ctx, bound, "tls", rules, &ruling);
                return;
            }
            Tls::Passthrough { name, ruling } => {
                self.relay(io, buf, ctx, &name, "tls", rules, &ruling).await;
                return;
            }
            Tls::Alert { name, ruling } => {
                // Refused before any certificate is minted: a TLS access_denied alert.
                let _ = io
                    .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49])
                    .await;
                let _ = io.shutdown().await;
                self.refuse(ctx, &name, "tls", rules, &ruling);
                return;
            }
            Tls::Intercept { name, sni } => (name, sni),
        };
        let h2 = hello.alpn.iter().any(|p| p == b"h2");
        let config = match self.inner.ca.server_config(&name, h2) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, host = %name, "cannot mint a certificate");
                return;
            }
        };
        let accept = tokio_rustls::TlsAcceptor::from(config).accept(Prefixed::new(buf, io));
        // Boxed so that the handshake's state is freed once it is done, not kept in this
        // connection's task for as long as the connection lives.
        let tls = match Box::pin(tokio::time::timeout(FIRST_BYTES, accept)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, host = %name, "TLS handshake with the jailed client failed");
                return;
            }
            Err(_) => return,
        };
        ctx.sni = sni;
        let protocol = http::Protocol::from_alpn(tls.get_ref().1.alpn_protocol());
        // Boxed: a connection's task is as large as its largest state, and this one is large.
        Box::pin(http::serve(
            self.clone(),
            tls,
            ctx.clone(),
            Scheme::Https,
            protocol,
        ))
        .await;
    }

    /// Audits a connection refused before anything was relayed (the caller closes it).
    fn refuse(
        &self,
        ctx: &ConnCtx,
        host: &Host,
        scheme: &'static str,
        rules: &RuleSet,
        ruling: &Ruling<'_>,
    ) {
        drop(self.decided(ctx, host, scheme, rules, ruling));
    }

    /// Counts a connection-level decision and opens its audit entry (written when it drops).
    fn decided(
        &self,
        ctx: &ConnCtx,
        host: &Host,
        scheme: &'static str,
        rules: &RuleSet,
        ruling: &Ruling<'_>,
    ) -> Entry {
        let kind = if scheme == "tls" {
            Kind::Tls
        } else {
            Kind::Tcp
        };
        self.metrics().decision(kind, ruling.decision);
        let mut entry = self.entry(ctx, scheme, host, ctx.port, rules.mode());
        entry.rule_on(ruling);
        entry
    }

    /// Relays a connection uninspected (TCP rule, TLS passthrough, or Audit mode) and audits it.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        client: BoxIo,
        prefix: Vec<u8>,
        ctx: &ConnCtx,
        host: &Host,
        scheme: &'static str,
        rules: &RuleSet,
        ruling: &Ruling<'_>,
    ) {
        let mut entry = self.decided(ctx, host, scheme, rules, ruling);
        entry.start_clock();
        // The policy in force now: its pins and address rules lift the guard.
        let exemptions = self.rules_for(ctx.container.as_deref()).exemptions.clone();
        match self
            .inner
            .upstream
            .connect_tcp(host, ctx.port, &exemptions)
            .await
        {
            Ok(upstream) => {
                let (up, down) = io::relay(client, prefix, upstream).await;
                entry.bytes_in = up;
                entry.bytes_out = down;
                self.metrics().bytes(up, down);
            }
            Err(failure) => {
                self.metrics().upstream_error(failure.kind);
                if failure.kind == UpstreamError::Guard {
                    entry.refused_by_guard();
                }
                entry.reason = Some(failure.message);
            }
        }
    }

    /// Relays a connection to `dst`, a port of the pod's loopback, unless `ruling` refuses it;
    /// audited as `pod-local`.
    async fn serve_pod_local(
        &self,
        mut client: BoxIo,
        ctx: &ConnCtx,
        dst: SocketAddr,
        rules: &RuleSet,
        ruling: &Ruling<'_>,
    ) {
        self.metrics().decision(Kind::PodLocal, ruling.decision);
        let host = Host::Ip(dst.ip());
        let mut entry = self.entry(ctx, pod_local::SCHEME, &host, dst.port(), rules.mode());
        entry.rule_on(ruling);
        if ruling.is_deny() {
            let _ = client.shutdown().await;
            return;
        }
        entry.start_clock();
        match tokio::time::timeout(POD_LOCAL_CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                let (up, down) = io::relay(client, Vec::new(), upstream).await;
                entry.bytes_in = up;
                entry.bytes_out = down;
                self.metrics().bytes(up, down);
            }
            Ok(Err(e)) => {
                self.metrics().upstream_error(UpstreamError::Connect);
                entry.reason = Some(format!(
                    "connecting to {dst} in the pod: {e} (is the pod's server listening there?)"
                ));
            }
            Err(_) => {
                self.metrics().upstream_error(UpstreamError::Connect);
                entry.reason = Some(format!("connecting to {dst} in the pod timed out"));
            }
        }
    }
}

impl Entry {
    /// Puts a ruling into the record: decision, reason, and the rule (`denied_by` for a deny
    /// rule).
    pub(super) fn rule_on(&mut self, ruling: &Ruling<'_>) {
        self.decision = ruling.decision;
        self.reason.clone_from(&ruling.reason);
        if let Some(rule) = ruling.rule {
            self.rule = Some(rule.named().clone());
            if rule.is_deny() {
                self.denied_by = Some(crate::audit::DeniedBy::DenyRule);
            }
        }
    }
}

/// Reads whatever arrives next (within `wait`); false on EOF, error, timeout or when the buffer
/// is at its limit.
async fn read_more(io: &mut BoxIo, buf: &mut Vec<u8>, wait: Duration) -> bool {
    if buf.len() >= client_hello::MAX_HELLO {
        return false;
    }
    // Straight into the vector: a stack buffer here would be part of every connection's task.
    buf.reserve(4096);
    matches!(
        tokio::time::timeout(wait, io.read_buf(buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Reads until the ClientHello is complete: `None` when the client went away.
async fn read_hello(
    io: &mut BoxIo,
    buf: &mut Vec<u8>,
) -> Option<Result<ClientHello, &'static str>> {
    loop {
        match client_hello::parse(buf) {
            Parse::Incomplete => {
                if !read_more(io, buf, FIRST_BYTES).await {
                    return None;
                }
            }
            Parse::Invalid(why) => return Some(Err(why)),
            Parse::Hello(hello) => return Some(Ok(hello)),
        }
    }
}

/// Whether the connection starts like an HTTP/1 request line (`TOKEN SP`, or the h2 preface
/// `PRI * ...`): `None` while the bytes so far could still go either way.
fn sniff_http(buf: &[u8]) -> Option<bool> {
    for (i, b) in buf.iter().enumerate() {
        if *b == b' ' {
            return Some(i > 0);
        }
        if !b.is_ascii_uppercase() || i >= 15 {
            return Some(false);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_sniffing() {
        assert_eq!(sniff_http(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(sniff_http(b"PRI * HTTP/2.0\r\n"), Some(true));
        assert_eq!(sniff_http(b"CONNECT a:443 HTTP/1.1\r\n"), Some(true));
        assert_eq!(sniff_http(b"GE"), None, "could still be GET");
        assert_eq!(sniff_http(b""), None);
        assert_eq!(sniff_http(b"SSH-2.0-OpenSSH_9\r\n"), Some(false));
        assert_eq!(sniff_http(b"hello\n"), Some(false));
        assert_eq!(sniff_http(b"get / HTTP/1.1"), Some(false));
        assert_eq!(sniff_http(b" GET"), Some(false));
        assert_eq!(sniff_http(b"AAAAAAAAAAAAAAAAAAAAA"), Some(false));
        assert_eq!(sniff_http(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Some(false));
    }
}
