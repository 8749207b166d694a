//! `boundary run`'s session on the sidecar's socket (after its `BOUNDARY1-SESSION` header line,
//! see [`crate::wire`]): JSON lines ([`SessionMessage`]) follow the [`Hello`]; the sidecar
//! answers each `exit` with `ok\n`. End of stream without an `exit` means the container died.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::wire::{Hello, JailOutcome, read_line};

/// Limit on a session message line.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// The sidecar's answer to an `exit` message.
pub const EXIT_ACK: &[u8] = b"ok\n";

/// A connection into the jail through an inbound port (`--inbound-port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// The client, as the pod's network namespace saw it.
    pub peer: SocketAddr,
    /// The port (the same outside and inside the jail).
    pub port: u16,
    /// Nothing listened on the port inside the jail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
    /// Bytes from the client into the jail.
    pub bytes_in: u64,
    /// Bytes from the jail to the client.
    pub bytes_out: u64,
    /// From accept to close, in milliseconds.
    pub duration_ms: u64,
}

/// A connection the forwarder refused because the sidecar was unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedConnection {
    /// The original destination (a synthetic address when `name` is set).
    pub dst: SocketAddr,
    /// The name the jail's DNS handed out for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

/// The connections `boundary run` refused (failed closed) while the sidecar was unreachable,
/// sent once the session is back: how many, the first [`UnreachableReport::LISTED`] of them, and
/// how many were not listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableReport {
    /// Connections refused.
    pub refused: u64,
    /// The first ones, in order.
    pub listed: Vec<RefusedConnection>,
    /// Refused but not listed.
    pub dropped: u64,
    /// The first refusal (RFC 3339).
    pub first_at: String,
    /// The last refusal (RFC 3339).
    pub last_at: String,
}

impl UnreachableReport {
    /// Connections listed by destination; the rest are only counted. A DNS name is at most 253
    /// bytes, so a full report stays well under [`MAX_MESSAGE`].
    pub const LISTED: usize = 32;
}

/// A line of a session after its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SessionMessage {
    /// The jailed command ended with this code (128+N: killed by signal N).
    Exit {
        /// `boundary run`'s exit code.
        code: i32,
    },
    /// An inbound connection ended; the sidecar writes it to its audit trail.
    Inbound(InboundEvent),
    /// Connections refused while the sidecar was unreachable; the sidecar audits them.
    Unreachable(UnreachableReport),
}

impl SessionMessage {
    /// The message as a line.
    pub fn line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Parses a session message line.
pub fn parse_message(line: &str) -> Result<SessionMessage, String> {
    serde_json::from_str(line).map_err(|e| format!("session message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Destination, Header, read_header};
    use tokio::io::{AsyncReadExt, BufReader};

    #[tokio::test]
    async fn headers_round_trip_and_bad_ones_are_refused() {
        let dest = Destination {
            dst: "198.18.0.7:443".parse().unwrap(),
            name: Some("github.com".into()),
            container: Some("agent".into()),
            tier: Some(boundary_api::Tier::Userns),
        };
        let mut bytes = dest.header();
        bytes.extend_from_slice(b"payload");
        let mut reader = BufReader::new(&bytes[..]);
        assert_eq!(read_header(&mut reader).await.unwrap(), Header::Relay(dest));
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"payload", "nothing after the header is lost");

        let hello = Hello {
            container: Some("agent".into()),
            tier: Some(boundary_api::Tier::PrivilegedNetns),
            jail: JailOutcome::Failed,
            error: Some("no CAP_SYS_ADMIN".into()),
        };
        let mut bytes = hello.header();
        bytes.extend(SessionMessage::Exit { code: 125 }.line());
        let mut reader = BufReader::new(&bytes[..]);
        assert_eq!(
            read_header(&mut reader).await.unwrap(),
            Header::Session(hello)
        );
        let next = read_line(&mut reader, MAX_MESSAGE).await.unwrap().unwrap();
        assert_eq!(
            parse_message(&next).unwrap(),
            SessionMessage::Exit { code: 125 }
        );
        assert_eq!(read_line(&mut reader, MAX_MESSAGE).await.unwrap(), None);

        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"BOUNDARY1 {not json}\n",
            b"BOUNDARY1-SESSION {}\n",
            b"BOUNDARY1 {}",
            b"",
        ] {
            assert!(read_header(&mut BufReader::new(bad)).await.is_err());
        }
        let huge = [b'a'; 5000];
        assert!(read_header(&mut BufReader::new(&huge[..])).await.is_err());
        assert!(parse_message(r#"{"type":"reboot"}"#).is_err());
    }

    #[test]
    fn a_full_unreachable_report_fits_in_one_message_and_round_trips() {
        let at = "2026-12-05T11:00:00.123Z".to_owned();
        let report = UnreachableReport {
            refused: u64::MAX,
            listed: (0..UnreachableReport::LISTED)
                .map(|i| RefusedConnection {
                    dst: "[fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                        .parse()
                        .unwrap(),
                    name: Some(format!("{i:0>3}{}", ".a".repeat(125))),
                    at: at.clone(),
                })
                .collect(),
            dropped: u64::MAX - 32,
            first_at: at.clone(),
            last_at: at,
        };
        let message = SessionMessage::Unreachable(report);
        let line = message.line();
        assert!(line.len() < MAX_MESSAGE, "{} bytes", line.len());
        let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        assert!(text.starts_with(r#"{"type":"unreachable","#), "{text}");
        assert_eq!(parse_message(text).unwrap(), message);
    }
}
