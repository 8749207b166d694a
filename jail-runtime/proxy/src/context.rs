//! What the proxy knows about one connection, shared by the connection's dispatch ([`crate::conn`])
//! and its HTTP requests ([`crate::http`]).

use boundary_api::Tier;
use boundary_api::rules::Host;

/// Per-connection facts.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    /// The destination port; 0 for explicit-proxy clients (each request names its own).
    pub port: u16,
    /// The host the connection was opened for (none for explicit-proxy clients).
    pub bound: Option<Host>,
    /// The server name of an intercepted TLS connection.
    pub sni: Option<Host>,
    pub container: Option<String>,
    pub tier: Option<Tier>,
}

impl ConnCtx {
    /// An explicit-proxy client's connection: bound to no host.
    pub(crate) fn explicit(container: Option<String>, tier: Option<Tier>) -> ConnCtx {
        ConnCtx {
            port: 0,
            bound: None,
            sni: None,
            container,
            tier,
        }
    }
}
