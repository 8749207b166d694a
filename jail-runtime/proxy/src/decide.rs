//! Every rule check the proxy makes, as pure functions over the compiled rules and their mode.
//! The rest of the proxy only acts on the verdicts (relay, alert, intercept, forward, 403); it
//! never asks the rules itself. No I/O here: each case is a row of the table tests below, and the
//! fuzz target `decide` drives these functions with arbitrary hosts, ports, methods and paths.
//!
//! The levels, in the order a connection meets them:
//!
//! * [`connection`]: the pod's loopback (`podLocal` rules alone), a TCP rule (relayed as is), or
//!   the first bytes decide, with a short wait when no rule could allow anything there;
//! * [`silent`], [`opaque`]: a client that sent nothing in time, or bytes neither HTTP nor TLS;
//! * [`tls`]: a ClientHello's server name: passthrough, an `access_denied` alert, or interception;
//! * [`request`], [`connect`]: each HTTP request, and explicit-proxy CONNECT.
//!
//! Deny rules beat every allow rule at each level; in Audit mode what they (or the absence of an
//! allow rule) would refuse is let through as [`Decision::WouldDeny`].

use std::time::Duration;

use boundary_api::Mode;
use boundary_api::rules::{Host, HttpRequest, Miss, Rule, RuleSet, Verdict, reserved_port_use};

use crate::audit::Decision;
use crate::pod_local::is_loopback;
use crate::wire::Destination;

/// How long a client may take to send its first bytes (for protocols where the client speaks
/// first; server-first protocols need a TCP rule).
pub const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How long a client of a host no rule allows may take to show it speaks HTTP or TLS.
pub const HOPELESS_WAIT: Duration = Duration::from_secs(1);

/// What the audit record says of a decision: the decision, the rule that made it (an allow rule,
/// or the deny rule that refused), and why it was (or would have been) refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling<'r> {
    /// Allowed, refused, or would-be refused (Audit mode).
    pub decision: Decision,
    /// The allow rule that allowed it, or the deny rule that refused it.
    pub rule: Option<&'r Rule>,
    /// Why it is (or would be) refused.
    pub reason: Option<String>,
}

impl<'r> Ruling<'r> {
    fn allow(rule: &'r Rule) -> Self {
        Ruling {
            decision: Decision::Allow,
            rule: Some(rule),
            reason: None,
        }
    }

    /// Refused (in every mode), for `reason`, by `rule` when a deny rule did it.
    pub fn deny(reason: String, rule: Option<&'r Rule>) -> Self {
        Ruling {
            decision: Decision::Deny,
            rule,
            reason: Some(reason),
        }
    }

    /// Refused in Enforce, let through as would-be refused in Audit.
    fn refuse(mode: Mode, reason: String, rule: Option<&'r Rule>) -> Self {
        Ruling {
            decision: refused(mode),
            rule,
            reason: Some(reason),
        }
    }

    /// Whether the client is refused.
    pub fn is_deny(&self) -> bool {
        self.decision == Decision::Deny
    }
}

fn refused(mode: Mode) -> Decision {
    match mode {
        Mode::Enforce => Decision::Deny,
        Mode::Audit => Decision::WouldDeny,
    }
}

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection<'r> {
    /// A port of the pod's own loopback: `podLocal` rules alone decide; relayed as is unless the
    /// ruling is a denial.
    PodLocal(Ruling<'r>),
    /// Relayed as is, uninspected: a TCP rule allows it (or, in Audit, one a deny rule beats).
    Relay(Ruling<'r>),
    /// The first bytes decide; a client that sends none within `wait` is refused ([`silent`]).
    Sniff {
        /// How long the client has to send its first bytes.
        wait: Duration,
        /// No rule could allow anything to this host and port (Enforce).
        hopeless: bool,
    },
}

/// The first decision on a connection to `dest`.
pub fn connection<'r>(rules: &'r RuleSet, dest: &Destination) -> Connection<'r> {
    let port = dest.dst.port();
    if dest.is_pod_local() {
        return Connection::PodLocal(pod_local(rules, port));
    }
    let host = dest.host();
    let tcp = rules.check_tcp(&host, port);
    match tcp {
        Verdict::Allow(rule) => return Connection::Relay(Ruling::allow(rule)),
        Verdict::Denied {
            by,
            overrides: Some(_),
        } if rules.mode() == Mode::Audit => {
            let reason = connection_denied(by, &host, port, "plain TCP");
            return Connection::Relay(Ruling::refuse(Mode::Audit, reason, Some(by)));
        }
        _ => {}
    }
    // When nothing could allow this name, the client gets only a moment to say what it is: an
    // HTTP client still gets a 403 page and a TLS client an alert, while a protocol where the
    // server speaks first (ssh) is closed quickly. The same for the port of a TCP rule a deny
    // rule beat: most likely such a protocol, and HTTP or TLS clients speak at once anyway.
    let hopeless = matches!(host, Host::Name(_))
        && rules.mode() == Mode::Enforce
        && !could_allow(rules, &host, port);
    let tcp_beaten = matches!(
        tcp,
        Verdict::Denied {
            overrides: Some(_),
            ..
        }
    );
    Connection::Sniff {
        wait: if hopeless || tcp_beaten {
            HOPELESS_WAIT
        } else {
            FIRST_BYTES
        },
        hopeless,
    }
}

/// Whether any rule could allow something on a connection to `host:port`: plain TCP, TLS
/// passthrough, or HTTP requests checked one by one (none when a deny rule refuses every request).
pub fn could_allow(rules: &RuleSet, host: &Host, port: u16) -> bool {
    rules.check_tcp(host, port).is_allow()
        || rules.check_passthrough(host, port).is_allow()
        || rules.may_allow_http(host, port)
}

/// `port` of the pod's loopback. Ports the jail and the sidecar use themselves are refused even
/// in Audit mode: no rule can ever allow them. Deny rules do not apply (they name hosts).
pub fn pod_local(rules: &RuleSet, port: u16) -> Ruling<'_> {
    if let Some(what) = reserved_port_use(port) {
        let reason = format!("port {port} on the pod's loopback is {what}; it cannot be pod-local");
        return Ruling::deny(reason, None);
    }
    if let Some(rule) = rules.check_pod_local(port) {
        return Ruling::allow(rule);
    }
    let reason = format!(
        "no podLocal rule allows port {port} on the pod's loopback; to allow it add \
         spec.podLocal: [{{ports: [{port}]}}] to the BoundaryPolicy (boundary run: \
         --allow-pod-local {port})"
    );
    Ruling::refuse(rules.mode(), reason, None)
}

/// A connection ([`Connection::Sniff`]) whose client sent nothing in time: refused, in every
/// mode (there is nothing to relay or record more of).
pub fn silent<'r>(rules: &'r RuleSet, host: &Host, port: u16, hopeless: bool) -> Ruling<'r> {
    let deny = rules.deny_for(host, port);
    let reason = if let Some(by) = deny {
        connection_denied(by, host, port, "plain TCP")
    } else if hopeless {
        format!(
            "no rule allows connections to {host}:{port}; to allow plain TCP add a tcp rule \
             {{domain: {host}, ports: [{port}]}}"
        )
    } else {
        format!(
            "the client sent nothing within {}s and no tcp rule allows {host}:{port}",
            FIRST_BYTES.as_secs()
        )
    };
    Ruling::deny(reason, deny)
}

/// What to do with a connection whose first bytes are neither HTTP nor TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opaque<'r> {
    /// Relayed as is (Audit mode), recorded as would-be refused.
    Relay(Ruling<'r>),
    /// Closed (Enforce).
    Refuse(Ruling<'r>),
}

/// Bytes no rule can inspect, on a connection no TCP rule allows ([`connection`] relays those).
pub fn opaque<'r>(rules: &'r RuleSet, host: &Host, port: u16) -> Opaque<'r> {
    let deny = rules.deny_for(host, port);
    match (rules.mode(), deny) {
        (_, Some(by)) => {
            let ruling = Ruling::refuse(
                rules.mode(),
                connection_denied(by, host, port, "plain TCP"),
                Some(by),
            );
            opaque_of(ruling)
        }
        (Mode::Audit, None) => Opaque::Relay(Ruling::refuse(
            Mode::Audit,
            format!("not HTTP or TLS and no tcp rule allows {host}:{port}"),
            None,
        )),
        (Mode::Enforce, None) => Opaque::Refuse(Ruling::deny(
            format!(
                "not HTTP or TLS, and no tcp rule allows {host}:{port}; add a tcp rule \
                 {{domain: {host}, ports: [{port}]}}"
            ),
            None,
        )),
    }
}

fn opaque_of(ruling: Ruling<'_>) -> Opaque<'_> {
    if ruling.is_deny() {
        Opaque::Refuse(ruling)
    } else {
        Opaque::Relay(ruling)
    }
}

/// What to do with a TLS connection, by its ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls<'r> {
    /// Closed before anything else: the server name is invalid, or not the connection's host.
    /// Recorded against the connection's host.
    Refuse(Ruling<'r>),
    /// Relayed uninspected to `name`: a passthrough rule (or, in Audit, one a deny rule beats).
    Passthrough {
        /// The server name (or the connection's host without one).
        name: Host,
        /// Allowed, or would-be refused (Audit mode).
        ruling: Ruling<'r>,
    },
    /// Refused before any certificate is minted, with a TLS `access_denied` alert.
    Alert {
        /// The server name (or the connection's host without one).
        name: Host,
        /// The denial.
        ruling: Ruling<'r>,
    },
    /// Intercepted: a certificate for `name` is minted and each request is checked.
    Intercept {
        /// The server name (or the connection's host without one).
        name: Host,
        /// The server name the client sent, if any.
        sni: Option<Host>,
    },
}

/// A ClientHello for `server_name` on a connection opened for `bound`.
pub fn tls<'r>(rules: &'r RuleSet, bound: &Host, port: u16, server_name: Option<&str>) -> Tls<'r> {
    let sni = match server_name.map(Host::parse) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            return Tls::Refuse(Ruling::deny(format!("invalid TLS server name: {e}"), None));
        }
    };
    if let (Host::Name(_), Some(sni)) = (bound, &sni)
        && sni != bound
    {
        return Tls::Refuse(Ruling::deny(
            format!(
                "TLS server name {sni} differs from {bound}, the host this connection was opened for"
            ),
            None,
        ));
    }
    let name = sni.clone().unwrap_or_else(|| bound.clone());
    // A passthrough rule relays it. One a deny rule beats: Audit relays it as a would-be denial;
    // Enforce goes on to interception when an HTTP rule could allow requests there, else to the
    // alert.
    let mut beaten = None;
    match rules.check_passthrough(&name, port) {
        Verdict::Allow(rule) => {
            return Tls::Passthrough {
                name,
                ruling: Ruling::allow(rule),
            };
        }
        Verdict::Denied {
            by,
            overrides: Some(_),
        } => {
            if rules.mode() == Mode::Audit {
                let reason = connection_denied(by, &name, port, "TLS passthrough");
                return Tls::Passthrough {
                    name,
                    ruling: Ruling::refuse(Mode::Audit, reason, Some(by)),
                };
            }
            beaten = Some(by);
        }
        _ => {}
    }
    if rules.mode() == Mode::Enforce && !rules.may_allow_http(&name, port) {
        let ruling = if let Some(by) = rules.whole_host_deny(&name, port) {
            Ruling::deny(whole_host_denied(by, &name, port), Some(by))
        } else if let Some(by) = beaten {
            Ruling::deny(
                connection_denied(by, &name, port, "TLS passthrough"),
                Some(by),
            )
        } else {
            Ruling::deny(format!("no rule allows HTTPS to {name}:{port}"), None)
        };
        return Tls::Alert { name, ruling };
    }
    Tls::Intercept { name, sni }
}

/// What to do with an HTTP request (not CONNECT: see [`connect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'r> {
    /// Forwarded upstream: allowed, or would-be refused in Audit mode.
    Forward(Ruling<'r>),
    /// Answered 403 with `page`.
    Deny {
        /// The denial.
        ruling: Ruling<'r>,
        /// What the 403 page says.
        page: Page<'r>,
    },
}

/// What a 403 page explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page<'r> {
    /// A deny rule refused it (and beat `overrides`, the allow rule that would have allowed it):
    /// no allow rule can help, so none is suggested.
    DenyRule {
        /// The deny rule.
        by: &'r Rule,
        /// The allow rule it beat.
        overrides: Option<&'r Rule>,
    },
    /// No allow rule matched: the rules for the host that came close, and rules to add.
    NoRule(Vec<(&'r Rule, Miss)>),
    /// Only the ruling's reason (a pod-local port).
    Reason,
}

/// Whether a request to `host` goes to the pod's loopback (decided by [`pod_local`]).
pub fn is_pod_local_request(host: &Host) -> bool {
    matches!(host, Host::Ip(ip) if is_loopback(*ip))
}

/// An HTTP request, plain or intercepted. One for the pod's loopback is decided by `podLocal`
/// rules alone ([`is_pod_local_request`]).
pub fn request<'r>(rules: &'r RuleSet, req: HttpRequest<'_>) -> Request<'r> {
    if is_pod_local_request(req.host) {
        let ruling = pod_local(rules, req.port);
        return if ruling.is_deny() {
            Request::Deny {
                ruling,
                page: Page::Reason,
            }
        } else {
            Request::Forward(ruling)
        };
    }
    let mode = rules.mode();
    let (ruling, page) = match rules.check_http(req) {
        Verdict::Allow(rule) => return Request::Forward(Ruling::allow(rule)),
        Verdict::Denied { by, overrides } => (
            Ruling::refuse(mode, denied_reason(by, overrides), Some(by)),
            Page::DenyRule { by, overrides },
        ),
        Verdict::Deny(misses) => (
            Ruling::refuse(mode, deny_reason(&misses), None),
            Page::NoRule(misses),
        ),
    };
    if ruling.is_deny() {
        Request::Deny { ruling, page }
    } else {
        Request::Forward(ruling)
    }
}

/// What to do with an explicit-proxy CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect<'r> {
    /// Tunnel: the stream is then served like a new connection to the target (and decided there).
    Tunnel,
    /// Answered 403.
    Refuse {
        /// The denial.
        ruling: Ruling<'r>,
        /// The target is the pod's loopback (audited as `pod-local`).
        pod_local: bool,
    },
}

/// CONNECT to `host:port`: tunnelled when some rule could allow something there (in Audit, always).
pub fn connect<'r>(rules: &'r RuleSet, host: &Host, port: u16) -> Connect<'r> {
    if is_pod_local_request(host) {
        // Decided again when the tunnel is served; only a sure denial is refused here.
        let ruling = pod_local(rules, port);
        return if ruling.is_deny() {
            Connect::Refuse {
                ruling,
                pod_local: true,
            }
        } else {
            Connect::Tunnel
        };
    }
    if rules.mode() == Mode::Audit || could_allow(rules, host, port) {
        return Connect::Tunnel;
    }
    // Before the tunnel nothing inside it is seen: a deny rule for the host and port refuses it
    // unless requests in it could be checked one by one (an HTTP rule, no whole-host deny).
    let deny = rules
        .whole_host_deny(host, port)
        .or_else(|| rules.deny_for(host, port));
    let reason = match deny {
        Some(by) => format!(
            "CONNECT to {host}:{port}: denied by the deny rule {}, which no allow rule can \
             override",
            by.origin()
        ),
        None => format!("CONNECT to {host}:{port}: no rule allows this host"),
    };
    Connect::Refuse {
        ruling: Ruling::deny(reason, deny),
        pod_local: false,
    }
}

/// Why a connection whose requests the proxy cannot see (plain TCP, TLS passthrough) is denied.
fn connection_denied(by: &Rule, host: &Host, port: u16, what: &str) -> String {
    format!(
        "denied by the deny rule {}: it names {host}:{port}, and the proxy cannot see the method \
         or path of a {what} connection, so it is denied whatever allows it",
        by.origin()
    )
}

/// Why TLS to a host a method- and path-less deny rule names is refused.
fn whole_host_denied(by: &Rule, host: &Host, port: u16) -> String {
    format!(
        "denied by the deny rule {}: it refuses every request to {host}:{port}, whatever allows it",
        by.origin()
    )
}

/// Why no allow rule let a request through.
fn deny_reason(misses: &[(&Rule, Miss)]) -> String {
    if misses.is_empty() {
        "no rule allows this host".into()
    } else {
        let near: Vec<String> = misses
            .iter()
            .take(3)
            .map(|(rule, miss)| format!("{} {}", miss.describe(), rule.origin()))
            .collect();
        format!("no rule allows this request ({})", near.join("; "))
    }
}

/// Why a deny rule refused a request.
fn denied_reason(by: &Rule, overrides: Option<&Rule>) -> String {
    match overrides {
        Some(allow) => format!(
            "denied by the deny rule {}, which wins over the allow rule {}",
            by.origin(),
            allow.origin()
        ),
        None => format!("denied by the deny rule {}", by.origin()),
    }
}

#[cfg(test)]
mod tests {
    use boundary_api::rules::{self, RuleSource};
    use boundary_api::{HttpRule, PodLocalRule, Port, TcpRule, TlsMode};

    use super::*;

    /// A namespace's rules and a cluster administrator's deny rules, in `mode`:
    /// `api.test` GET /v1/* (HTTP), `open.test` (any request), `pass.test` and
    /// `pass-denied.test` (TLS passthrough), `db.test:5432` and `paste.test:22` (TCP), port 5432
    /// of the pod's loopback; denied: everything to `paste.test` and `pass-denied.test`, POST
    /// /upload/* to `api.test`, DELETE to `open.test`.
    fn rules(mode: Mode) -> RuleSet {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let allow = strings(&["domain=api.test method=GET path=/v1/*", "domain=open.test"]);
        let http = [HttpRule {
            domains: strings(&["pass.test", "pass-denied.test"]),
            tls: TlsMode::Passthrough,
            ..HttpRule::default()
        }];
        let tcp = [("db.test", 5432), ("paste.test", 22)].map(|(domain, port)| TcpRule {
            domain: domain.into(),
            ports: vec![Port::new(port).unwrap()],
        });
        let pod_local = [PodLocalRule {
            ports: vec![Port::new(5432).unwrap()],
            description: None,
        }];
        let mut compiled = rules::compile(RuleSource {
            policy: Some("agent"),
            field_prefix: "spec.",
            allow: &allow,
            http: &http,
            tcp: &tcp,
            pod_local: &pod_local,
            ..RuleSource::default()
        })
        .unwrap();
        let deny = strings(&[
            "domain=paste.test",
            "domain=api.test method=POST path=/upload/*",
            "domain=pass-denied.test",
            "domain=open.test method=DELETE",
        ]);
        compiled.extend(
            rules::compile(RuleSource {
                policy: Some("guard"),
                cluster: true,
                field_prefix: "spec.",
                deny: &deny,
                ..RuleSource::default()
            })
            .unwrap(),
        );
        RuleSet::new(compiled, mode)
    }

    fn host(name: &str) -> Host {
        Host::parse(name).unwrap()
    }

    fn dest(dst: &str, name: Option<&str>) -> Destination {
        Destination {
            dst: dst.parse().unwrap(),
            name: name.map(str::to_owned),
            container: None,
            tier: None,
        }
    }

    /// A ruling in one line: `decision rule=... reason=...`.
    fn line(ruling: &Ruling<'_>) -> String {
        format!(
            "{:?} rule={} reason={}",
            ruling.decision,
            ruling
                .rule
                .map(|r| r.origin().to_string())
                .unwrap_or_default(),
            ruling.reason.as_deref().unwrap_or_default()
        )
    }

    fn connection_line(rules: &RuleSet, d: &Destination) -> String {
        match connection(rules, d) {
            Connection::PodLocal(r) => format!("pod-local {}", line(&r)),
            Connection::Relay(r) => format!("relay {}", line(&r)),
            Connection::Sniff { wait, hopeless } => {
                format!("sniff {}s hopeless={hopeless}", wait.as_secs())
            }
        }
    }

    /// Checks each row: the verdict's line contains every `;`-separated part of the expectation.
    fn check(rows: &[(Mode, &str, String)]) {
        for (mode, case, got) in rows {
            let (input, expected) = case.split_once("=> ").unwrap();
            for part in expected.split(';') {
                assert!(
                    got.contains(part.trim()),
                    "{mode:?} {input}: {got:?} lacks {part:?}"
                );
            }
        }
    }

    #[test]
    fn connections() {
        let (enforce, audit) = (rules(Mode::Enforce), rules(Mode::Audit));
        let cases = [
            (
                Mode::Enforce,
                "127.0.0.1:5432 => pod-local Allow; spec.podLocal[0]",
            ),
            (
                Mode::Enforce,
                "127.0.0.1:6379 => pod-local Deny; --allow-pod-local 6379",
            ),
            (
                Mode::Audit,
                "127.0.0.1:6379 => pod-local WouldDeny; spec.podLocal: [{ports: [6379]}]",
            ),
            (Mode::Audit, "127.0.0.1:53 => pod-local Deny; DNS"),
            (Mode::Audit, "[::1]:15090 => pod-local Deny; metrics"),
            (Mode::Enforce, "db.test:5432 => relay Allow; spec.tcp[0]"),
            (Mode::Enforce, "db.test:443 => sniff 1s hopeless=true"),
            // A TCP rule a deny rule beats: the client gets a moment to show HTTP or TLS.
            (Mode::Enforce, "paste.test:22 => sniff 1s hopeless=true"),
            (
                Mode::Audit,
                "paste.test:22 => relay WouldDeny; guard spec.deny[0]; cannot see the method",
            ),
            (Mode::Enforce, "nothing.test:443 => sniff 1s hopeless=true"),
            (Mode::Audit, "nothing.test:443 => sniff 10s hopeless=false"),
            (Mode::Enforce, "api.test:443 => sniff 10s hopeless=false"),
            (Mode::Enforce, "pass.test:443 => sniff 10s hopeless=false"),
        ];
        let rows: Vec<_> = cases
            .iter()
            .map(|(mode, case)| {
                let target = case.split_once(" => ").unwrap().0;
                // A name stands for a synthetic address the jail's DNS handed out.
                let d = if target.parse::<std::net::SocketAddr>().is_ok() {
                    dest(target, None)
                } else {
                    let (name, port) = target.rsplit_once(':').unwrap();
                    dest(&format!("198.18.0.9:{port}"), Some(name))
                };
                let set = if *mode == Mode::Enforce {
                    &enforce
                } else {
                    &audit
                };
                (*mode, *case, connection_line(set, &d))
            })
            .collect();
        check(&rows);
        // A loopback address with a DNS name is not the pod's loopback.
        assert!(
            connection_line(&enforce, &dest("127.0.0.1:443", Some("x.test"))).starts_with("sniff")
        );
    }

    #[test]
    fn silent_and_opaque_connections() {
        let (enforce, audit) = (rules(Mode::Enforce), rules(Mode::Audit));
        let opaque_line = |set: &RuleSet, h: &str, port| match opaque(set, &host(h), port) {
            Opaque::Relay(r) => format!("relay {}", line(&r)),
            Opaque::Refuse(r) => format!("refuse {}", line(&r)),
        };
        check(&[
            (
                Mode::Enforce,
                "silent nothing.test:443 => Deny; to allow plain TCP add a tcp rule {domain: nothing.test, ports: [443]}",
                line(&silent(&enforce, &host("nothing.test"), 443, true)),
            ),
            (
                Mode::Enforce,
                "silent db.test:443 => Deny; sent nothing within 10s",
                line(&silent(&enforce, &host("db.test"), 443, false)),
            ),
            (
                Mode::Audit,
                "silent paste.test:22 => Deny; guard spec.deny[0]",
                line(&silent(&audit, &host("paste.test"), 22, false)),
            ),
            (
                Mode::Enforce,
                "opaque db.test:443 => refuse Deny; add a tcp rule",
                opaque_line(&enforce, "db.test", 443),
            ),
            (
                Mode::Audit,
                "opaque db.test:443 => relay WouldDeny; not HTTP or TLS",
                opaque_line(&audit, "db.test", 443),
            ),
            (
                Mode::Enforce,
                "opaque paste.test:80 => refuse Deny; guard spec.deny[0]",
                opaque_line(&enforce, "paste.test", 80),
            ),
            (
                Mode::Audit,
                "opaque paste.test:80 => relay WouldDeny; guard spec.deny[0]",
                opaque_line(&audit, "paste.test", 80),
            ),
        ]);
    }

    fn tls_line(set: &RuleSet, bound: &str, sni: Option<&str>) -> String {
        match tls(set, &host(bound), 443, sni) {
            Tls::Refuse(r) => format!("refuse {}", line(&r)),
            Tls::Passthrough { name, ruling } => format!("passthrough {name} {}", line(&ruling)),
            Tls::Alert { name, ruling } => format!("alert {name} {}", line(&ruling)),
            Tls::Intercept { name, sni } => format!("intercept {name} sni={sni:?}"),
        }
    }

    #[test]
    fn tls_by_server_name() {
        let (enforce, audit) = (rules(Mode::Enforce), rules(Mode::Audit));
        let cases: &[(Mode, &str, &str, Option<&str>)] = &[
            (
                Mode::Enforce,
                "=> passthrough pass.test Allow; spec.http[0]",
                "pass.test",
                Some("pass.test"),
            ),
            (
                Mode::Enforce,
                "=> intercept api.test",
                "api.test",
                Some("api.test"),
            ),
            (
                Mode::Enforce,
                "no SNI => intercept api.test; sni=None",
                "api.test",
                None,
            ),
            (
                Mode::Enforce,
                "=> alert nothing.test Deny; no rule allows HTTPS to nothing.test:443",
                "nothing.test",
                Some("nothing.test"),
            ),
            (
                Mode::Audit,
                "=> intercept nothing.test",
                "nothing.test",
                Some("nothing.test"),
            ),
            // A whole-host deny rule: the alert, before any certificate, whatever allows it.
            (
                Mode::Enforce,
                "=> alert paste.test Deny; guard spec.deny[0]; refuses every request",
                "paste.test",
                Some("paste.test"),
            ),
            (
                Mode::Enforce,
                "=> alert pass-denied.test Deny; guard spec.deny[2]",
                "pass-denied.test",
                Some("pass-denied.test"),
            ),
            (
                Mode::Audit,
                "=> passthrough pass-denied.test WouldDeny; guard spec.deny[2]; TLS passthrough",
                "pass-denied.test",
                Some("pass-denied.test"),
            ),
            (
                Mode::Enforce,
                "=> refuse Deny; differs from api.test",
                "api.test",
                Some("open.test"),
            ),
            (
                Mode::Enforce,
                "=> refuse Deny; invalid TLS server name",
                "api.test",
                Some("bad name!"),
            ),
            // A connection opened for an address takes the server name as its host.
            (
                Mode::Enforce,
                "=> intercept open.test",
                "10.0.0.1",
                Some("open.test"),
            ),
        ];
        let rows: Vec<_> = cases
            .iter()
            .map(|(mode, case, bound, sni)| {
                let set = if *mode == Mode::Enforce {
                    &enforce
                } else {
                    &audit
                };
                (*mode, *case, tls_line(set, bound, *sni))
            })
            .collect();
        check(&rows);
    }

    fn request_line(set: &RuleSet, h: &str, port: u16, method: &str, path: &str) -> String {
        let path = rules::RequestPath::parse(path).unwrap();
        let host = host(h);
        let req = HttpRequest {
            host: &host,
            port,
            method,
            path: &path,
            headers: &[],
            query: None,
        };
        match request(set, req) {
            Request::Forward(r) => format!("forward {}", line(&r)),
            Request::Deny { ruling, page } => {
                let page = match page {
                    Page::DenyRule { by, overrides } => format!(
                        "page=deny-rule {} over {}",
                        by.origin(),
                        overrides
                            .map(|o| o.origin().to_string())
                            .unwrap_or_default()
                    ),
                    Page::NoRule(misses) => format!("page=no-rule misses={}", misses.len()),
                    Page::Reason => "page=reason".into(),
                };
                format!("deny {} {page}", line(&ruling))
            }
        }
    }

    #[test]
    fn requests() {
        let (enforce, audit) = (rules(Mode::Enforce), rules(Mode::Audit));
        // "METHOD host:port/path => expected parts"
        let cases: &[(Mode, &str)] = &[
            (
                Mode::Enforce,
                "GET api.test:443/v1/x => forward Allow; spec.allow[0]",
            ),
            (
                Mode::Enforce,
                "GET api.test:443/v2 => deny Deny; path not allowed by; page=no-rule misses=1",
            ),
            (
                Mode::Enforce,
                "PUT api.test:443/v1/x => deny Deny; method not allowed by",
            ),
            (
                Mode::Audit,
                "PUT api.test:443/v1/x => forward WouldDeny; method not allowed by",
            ),
            (
                Mode::Enforce,
                "GET nothing.test:80/ => deny Deny; no rule allows this host; page=no-rule misses=0",
            ),
            (
                Mode::Enforce,
                "POST api.test:443/upload/a => deny Deny; rule=ClusterBoundaryPolicy guard spec.deny[1]; page=deny-rule",
            ),
            (
                Mode::Audit,
                "POST api.test:443/upload/a => forward WouldDeny; rule=ClusterBoundaryPolicy guard spec.deny[1]",
            ),
            (
                Mode::Enforce,
                "GET paste.test:443/ => deny Deny; guard spec.deny[0]; page=deny-rule",
            ),
            // Deny beats allow, and the page names the allow rule it beat.
            (
                Mode::Enforce,
                "DELETE open.test:443/ => deny Deny; guard spec.deny[3]; wins over the allow rule agent spec.allow[1]; over agent spec.allow[1]",
            ),
            (
                Mode::Audit,
                "DELETE open.test:443/ => forward WouldDeny; guard spec.deny[3]",
            ),
            (
                Mode::Enforce,
                "GET open.test:443/ => forward Allow; spec.allow[1]",
            ),
            (
                Mode::Enforce,
                "GET 127.0.0.1:5432/ => forward Allow; spec.podLocal[0]",
            ),
            (
                Mode::Enforce,
                "GET 127.0.0.1:8080/ => deny Deny; --allow-pod-local 8080; page=reason",
            ),
            (
                Mode::Audit,
                "GET 127.0.0.1:8080/ => forward WouldDeny; --allow-pod-local 8080",
            ),
        ];
        let rows: Vec<_> = cases
            .iter()
            .map(|(mode, case)| {
                let (method, rest) = case.split_once(' ').unwrap();
                let target = rest.split_once(' ').unwrap().0;
                let (authority, path) = target.split_at(target.find('/').unwrap());
                let (h, port) = authority.rsplit_once(':').unwrap();
                let set = if *mode == Mode::Enforce {
                    &enforce
                } else {
                    &audit
                };
                let got = request_line(set, h, port.parse().unwrap(), method, path);
                (*mode, *case, got)
            })
            .collect();
        check(&rows);
    }

    #[test]
    fn connect_requests() {
        let (enforce, audit) = (rules(Mode::Enforce), rules(Mode::Audit));
        let connect_line = |set: &RuleSet, h: &str, port| match connect(set, &host(h), port) {
            Connect::Tunnel => "tunnel".to_owned(),
            Connect::Refuse { ruling, pod_local } => {
                format!("refuse pod_local={pod_local} {}", line(&ruling))
            }
        };
        let cases: &[(Mode, &str, &str, u16)] = &[
            (Mode::Enforce, "=> tunnel", "api.test", 443),
            (Mode::Enforce, "=> tunnel", "db.test", 5432),
            (Mode::Enforce, "=> tunnel", "pass.test", 443),
            (
                Mode::Enforce,
                "=> refuse pod_local=false Deny; no rule allows this host",
                "nothing.test",
                443,
            ),
            (Mode::Audit, "=> tunnel", "nothing.test", 443),
            (
                Mode::Enforce,
                "=> refuse pod_local=false Deny; guard spec.deny[0]; no allow rule can override",
                "paste.test",
                22,
            ),
            (Mode::Enforce, "=> tunnel", "127.0.0.1", 5432),
            (
                Mode::Enforce,
                "=> refuse pod_local=true Deny; --allow-pod-local 6379",
                "127.0.0.1",
                6379,
            ),
            (
                Mode::Audit,
                "=> refuse pod_local=true Deny; forwarder",
                "127.0.0.1",
                2,
            ),
        ];
        let rows: Vec<_> = cases
            .iter()
            .map(|(mode, case, h, port)| {
                let set = if *mode == Mode::Enforce {
                    &enforce
                } else {
                    &audit
                };
                (*mode, *case, connect_line(set, h, *port))
            })
            .collect();
        check(&rows);
    }
}
