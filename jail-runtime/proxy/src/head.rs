//! Checks on a request head before any rule sees it. Pure: parts in, facts or a refusal out.
//!
//! - the target is where the connection already goes: the `Host` (or `:authority`) must name
//!   the host the connection was opened for (synthetic DNS name, CONNECT target) and the TLS SNI
//!   (no domain fronting), and an absolute-form target must agree with `Host`;
//! - exactly one `Host`; its port, if given, is the connection's;
//! - no `Content-Length` together with `Transfer-Encoding`, no conflicting `Content-Length`s, and
//!   `chunked` last when `Transfer-Encoding` is used (no request smuggling between us and the
//!   upstream);
//! - the path normalises (see `boundary_api::rules::path`).

use boundary_api::rules::{Host, PathError, RequestPath};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Version};

/// How the request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP inside intercepted TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// What the connection already tells about the destination.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// The destination port of the connection.
    pub port: u16,
    /// The host the connection is bound to: the name behind a synthetic address, a CONNECT
    /// target, or the IP the client connected to. `None` for an explicit-proxy connection,
    /// where every request names its own target.
    pub bound: Option<&'a Host>,
    /// The TLS server name.
    pub sni: Option<&'a Host>,
}

/// A request's checked target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Normalised host.
    pub host: Host,
    /// Destination port.
    pub port: u16,
    /// Normalised path, for rules.
    pub path: RequestPath,
    /// Path and query as sent, for the upstream request.
    pub path_and_query: String,
}

impl Target {
    /// `host[:port]`, omitting the scheme's default port.
    pub fn authority(&self, scheme: Scheme) -> String {
        let mut out = String::new();
        self.write_authority(scheme, &mut out);
        out
    }

    /// Writes [`Target::authority`] to `out`.
    pub fn write_authority(&self, scheme: Scheme, out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a `String` cannot fail.
        let _ = write!(out, "{}", self.host);
        if self.port != scheme.default_port() {
            let _ = write!(out, ":{}", self.port);
        }
    }
}

/// Why a request is refused before the rules: HTTP status and a reason for the client and the
/// audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// 400 for malformed requests, 403 for misdirected ones (an attempt to reach a host the
    /// connection was not opened for).
    pub status: u16,
    /// Short reason.
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        reason: reason.into(),
    }
}

fn misdirected(reason: impl Into<String>) -> Refusal {
    Refusal {
        status: 403,
        reason: reason.into(),
    }
}

/// Checks a request head and extracts its target.
pub fn check(parts: &http::request::Parts, conn: Connection<'_>) -> Result<Target, Refusal> {
    check_framing(parts)?;
    let (host, explicit_port) = authority(parts)?;
    let port = match (explicit_port, conn.bound) {
        (Some(p), Some(_)) if p != conn.port => {
            return Err(misdirected(format!(
                "Host port {p} differs from the connection's port {}",
                conn.port
            )));
        }
        (Some(p), _) => p,
        (None, Some(_)) => conn.port,
        (None, None) => conn.scheme.default_port(),
    };
    if let Some(bound) = conn.bound {
        // A client that resolved a name itself and connected to the real address is fine: the
        // proxy resolves the name again and never uses the client's address.
        let client_resolved = matches!(bound, Host::Ip(_)) && matches!(host, Host::Name(_));
        if *bound != host && !client_resolved {
            return Err(misdirected(format!(
                "Host {host} differs from {bound}, the host this connection was opened for"
            )));
        }
    }
    if let Some(sni) = conn.sni
        && *sni != host
    {
        return Err(misdirected(format!(
            "Host {host} differs from the TLS server name {sni}"
        )));
    }
    let raw_path = if parts.method == Method::OPTIONS && parts.uri.path() == "*" {
        "*"
    } else {
        parts.uri.path()
    };
    let path = RequestPath::parse(raw_path).map_err(|e| match e {
        PathError::BadPercent(_) | PathError::NotAbsolute => bad(e.to_string()),
    })?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    Ok(Target {
        host,
        port,
        path,
        path_and_query,
    })
}

/// The target host and explicit port from `Host`, `:authority` and an absolute-form URI.
fn authority(parts: &http::request::Parts) -> Result<(Host, Option<u16>), Refusal> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let header = header
        .map(|h| h.to_str().map_err(|_| bad("Host header is not ASCII")))
        .transpose()?;
    let uri_authority = parts.uri.authority().map(http::uri::Authority::as_str);
    let chosen = match (header, uri_authority) {
        (Some(h), Some(u)) => {
            let (hh, hp) = split_authority(h)?;
            let (uh, up) = split_authority(u)?;
            if hh != uh || hp != up {
                return Err(misdirected(format!(
                    "the request target names {u} but the Host header names {h}"
                )));
            }
            return Ok((hh, hp));
        }
        (Some(h), None) => h,
        (None, Some(u)) => u,
        (None, None) if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 => {
            return Err(bad("HTTP/1.0 request without Host header or absolute URI"));
        }
        (None, None) => return Err(bad("missing Host header")),
    };
    split_authority(chosen)
}

fn split_authority(raw: &str) -> Result<(Host, Option<u16>), Refusal> {
    if raw.contains('@') {
        return Err(bad("userinfo in the authority is not allowed"));
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed IPv6 literal"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("junk after IPv6 literal"))?,
            ),
        };
        (inside, port)
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(format!("invalid port in authority {raw:?}")))
        })
        .transpose()?;
    let host = Host::parse(host).map_err(|e| bad(format!("invalid host {raw:?}: {e}")))?;
    Ok((host, port))
}

fn check_framing(parts: &http::request::Parts) -> Result<(), Refusal> {
    let te: Vec<&http::HeaderValue> = parts.headers.get_all(TRANSFER_ENCODING).iter().collect();
    let cl: Vec<&http::HeaderValue> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if !te.is_empty() {
        if parts.version != Version::HTTP_11 {
            return Err(bad("Transfer-Encoding is only valid in HTTP/1.1"));
        }
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if codings.last().map(String::as_str) != Some("chunked")
            || codings.iter().filter(|c| *c == "chunked").count() != 1
        {
            return Err(bad("Transfer-Encoding must end with a single chunked"));
        }
    }
    let mut length = None;
    for v in cl {
        for item in v
            .to_str()
            .map_err(|_| bad("bad Content-Length"))?
            .split(',')
        {
            let n: u64 = item.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        version: Version,
    ) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn h11(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        parts("GET", uri, headers, Version::HTTP_11)
    }

    fn conn<'a>(bound: Option<&'a Host>, sni: Option<&'a Host>, port: u16) -> Connection<'a> {
        Connection {
            scheme: if sni.is_some() {
                Scheme::Https
            } else {
                Scheme::Http
            },
            port,
            bound,
            sni,
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        let gh = Host::parse("api.github.com").unwrap();
        let t = check(
            &h11("/repos/x?page=2", &[("host", "API.GitHub.com")]),
            conn(Some(&gh), Some(&gh), 443),
        )
        .unwrap();
        assert_eq!(t.host, gh);
        assert_eq!(t.port, 443);
        assert_eq!(t.path.to_string(), "/repos/x");
        assert_eq!(t.path_and_query, "/repos/x?page=2");
        assert_eq!(t.authority(Scheme::Https), "api.github.com");
        let t = check(
            &h11("/", &[("host", "api.github.com:8443")]),
            conn(Some(&gh), None, 8443),
        )
        .unwrap();
        assert_eq!(t.authority(Scheme::Http), "api.github.com:8443");
        let h2 = parts("GET", "https://api.github.com/x", &[], Version::HTTP_2);
        assert_eq!(
            check(&h2, conn(Some(&gh), Some(&gh), 443)).unwrap().host,
            gh
        );
    }

    #[test]
    fn fronting_and_misdirection_are_refused() {
        let gh = Host::parse("github.com").unwrap();
        let evil = Host::parse("evil.com").unwrap();
        let e = check(
            &h11("/", &[("host", "evil.com")]),
            conn(Some(&gh), Some(&gh), 443),
        )
        .unwrap_err();
        assert_eq!(e.status, 403);
        let e = check(
            &h11("/", &[("host", "github.com")]),
            conn(Some(&gh), Some(&evil), 443),
        )
        .unwrap_err();
        assert!(e.reason.contains("TLS server name"), "{}", e.reason);
        let e = check(
            &h11("http://evil.com/", &[("host", "github.com")]),
            conn(Some(&gh), None, 80),
        )
        .unwrap_err();
        assert!(e.reason.contains("request target"), "{}", e.reason);
        let e = check(
            &h11("/", &[("host", "github.com:22")]),
            conn(Some(&gh), None, 80),
        )
        .unwrap_err();
        assert!(e.reason.contains("port"), "{}", e.reason);
        let ip = Host::parse("140.82.112.3").unwrap();
        assert!(
            check(
                &h11("/", &[("host", "github.com")]),
                conn(Some(&ip), None, 80)
            )
            .is_ok(),
            "client resolved itself"
        );
        assert!(
            check(
                &h11("/", &[("host", "10.0.0.1")]),
                conn(Some(&ip), None, 80)
            )
            .is_err()
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = Host::parse("a.com").unwrap();
        let c = conn(Some(&h), None, 80);
        let post = |hs: &[(&str, &str)]| {
            let mut all = vec![("host", "a.com")];
            all.extend_from_slice(hs);
            check(&parts("POST", "/", &all, Version::HTTP_11), c)
        };
        assert!(post(&[("content-length", "5"), ("transfer-encoding", "chunked")]).is_err());
        assert!(post(&[("content-length", "5"), ("content-length", "6")]).is_err());
        assert!(post(&[("content-length", "5, 6")]).is_err());
        assert!(post(&[("content-length", "5"), ("content-length", "5")]).is_ok());
        assert!(post(&[("transfer-encoding", "gzip")]).is_err());
        assert!(post(&[("transfer-encoding", "chunked, chunked")]).is_err());
        assert!(post(&[("transfer-encoding", "gzip, chunked")]).is_ok());
        assert!(post(&[("content-length", "-1")]).is_err());
        let two_hosts = parts(
            "GET",
            "/",
            &[("host", "a.com"), ("host", "b.com")],
            Version::HTTP_11,
        );
        assert!(check(&two_hosts, c).is_err());
        assert!(check(&h11("/", &[]), c).is_err(), "missing Host");
        assert!(check(&h11("/", &[("host", "user@a.com")]), c).is_err());
        assert!(check(&h11("/a%zz", &[("host", "a.com")]), c).is_err());
    }

    #[test]
    fn explicit_proxy_requests_name_their_own_target() {
        let t = check(
            &h11("http://example.com:8080/x", &[("host", "example.com:8080")]),
            conn(None, None, 3128),
        )
        .unwrap();
        assert_eq!(t.port, 8080);
        let t = check(
            &h11("http://example.com/x", &[("host", "example.com")]),
            conn(None, None, 3128),
        )
        .unwrap();
        assert_eq!(t.port, 80);
    }

    #[test]
    fn options_star_and_ipv6() {
        let h = Host::parse("[::1]").unwrap();
        let t = check(
            &parts("OPTIONS", "*", &[("host", "[::1]:8080")], Version::HTTP_11),
            conn(Some(&h), None, 8080),
        )
        .unwrap();
        assert_eq!(t.path.to_string(), "*");
        assert_eq!(t.authority(Scheme::Http), "[::1]:8080");
    }
}
