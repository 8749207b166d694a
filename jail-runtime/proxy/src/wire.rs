//! The contract between the jail's forwarder and the sidecar, on the sidecar's unix socket: every
//! connection starts with one header line, and both sides tune the socket the same way.
//!
//! * `BOUNDARY1 {json Destination}\n`: a connection the jail's forwarder intercepted; the
//!   client's bytes follow as they are.
//! * `BOUNDARY1-SESSION {json Hello}\n`: `boundary run`'s session (see [`crate::session`]).

use std::net::SocketAddr;

use boundary_api::Tier;
use boundary_api::rules::Host;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::pod_local::is_loopback;

/// Limit on a header line.
pub const MAX_HEADER: usize = 4096;
const RELAY_MAGIC: &str = "BOUNDARY1 ";
const SESSION_MAGIC: &str = "BOUNDARY1-SESSION ";

/// Whether the jail came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JailOutcome {
    /// The command runs in the jail.
    Started,
    /// The jail could not be set up (`boundary run` exits 125).
    Failed,
}

/// `boundary run` announcing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// `BOUNDARY_CONTAINER_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The tier the jail runs in (or was asked for, when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Started or failed.
    pub jail: JailOutcome,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Hello {
    /// The session header line.
    pub fn header(&self) -> Vec<u8> {
        line(SESSION_MAGIC, self)
    }
}

/// Where a connection from the jail was going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The original destination address (a synthetic one when `name` is set).
    pub dst: SocketAddr,
    /// The name the jail's DNS handed out for that address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The jailed container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The jail's tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

impl Destination {
    /// The host the connection was opened for: the name the jail's DNS handed out, else the
    /// address.
    pub fn host(&self) -> Host {
        self.name
            .as_deref()
            .and_then(|n| Host::parse(n).ok())
            .unwrap_or(Host::Ip(self.dst.ip()))
    }

    /// Whether it goes to the pod's loopback: a loopback destination with no DNS name (the
    /// jail's redirect of a pod-local port, or a CONNECT to a loopback address).
    pub fn is_pod_local(&self) -> bool {
        self.name.is_none() && is_loopback(self.dst.ip())
    }

    /// The relay header line sent before the stream on the sidecar's socket.
    pub fn header(&self) -> Vec<u8> {
        line(RELAY_MAGIC, self)
    }
}

/// The first line of a connection on the sidecar's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection.
    Relay(Destination),
    /// A session.
    Session(Hello),
}

pub(super) fn line(magic: &str, value: &impl Serialize) -> Vec<u8> {
    let mut out = magic.as_bytes().to_vec();
    out.extend(serde_json::to_vec(value).unwrap_or_default());
    out.push(b'\n');
    out
}

/// Reads one line of at most `limit` bytes (without its newline); `Ok(None)` at end of stream.
pub async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: usize,
) -> Result<Option<String>, String> {
    let mut line = Vec::with_capacity(256);
    let mut limited = (&mut *reader).take(u64::try_from(limit).unwrap_or(u64::MAX));
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err("line missing its end or too long".into());
    }
    line.pop();
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| "line is not UTF-8".to_owned())
}

/// Reads the header line.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<Header, String> {
    let text = read_line(reader, MAX_HEADER)
        .await
        .map_err(|e| format!("header: {e}"))?
        .ok_or("header missing")?;
    parse_header(&text)
}

/// Parses a header line (without its newline).
pub fn parse_header(text: &str) -> Result<Header, String> {
    if let Some(json) = text.strip_prefix(RELAY_MAGIC) {
        return serde_json::from_str(json)
            .map(Header::Relay)
            .map_err(|e| format!("relay header: {e}"));
    }
    if let Some(json) = text.strip_prefix(SESSION_MAGIC) {
        return serde_json::from_str(json)
            .map(Header::Session)
            .map_err(|e| format!("session header: {e}"));
    }
    Err("header magic missing".into())
}

/// Unix stream sockets default to small buffers (about 200 KiB), which caps bulk throughput
/// with a context switch every few TLS records; ask for more (the kernel caps it at
/// `net.core.{w,r}mem_max`).
pub fn tune_unix(stream: &impl std::os::fd::AsFd) {
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::SndBuf, &(4 << 20));
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
}
