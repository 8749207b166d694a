//! The rule engine: one implementation shared by the operator (validation, with positions) and
//! the proxy (enforcement). No I/O.
//!
//! Rules come from Coder-grammar strings ([`grammar`]), structured HTTP rules and TCP rules
//! ([`crate::policy`]). Everything not allowed is denied; several rules are OR'ed.

pub mod grammar;
pub mod host;
pub mod path;

use std::fmt;

use crate::contract::ports;
use crate::policy::{HttpRule, Mode, PodLocalRule, TcpRule, TlsMode};
pub use grammar::{GrammarError, ParsedRule, parse_rule};
pub use host::{DomainPattern, Host, HostError};
pub use path::{PathError, PathPattern, RequestPath};

/// Where a rule came from, for audit records, 403 bodies and status problems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// The `BoundaryPolicy` name, or `None` for command-line and config-file rules.
    pub policy: Option<String>,
    /// The rule's place: `spec.allow[2]`, `spec.http[0]`, `--allow[1]`.
    pub field: String,
    /// The rule as written (strings) or summarised (structured rules).
    pub text: String,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(policy) => write!(f, "{policy} {}: {}", self.field, self.text),
            None => write!(f, "{}: {}", self.field, self.text),
        }
    }
}

/// What a rule lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// HTTP requests (plain or intercepted TLS); `None` lists match everything.
    Http {
        /// Upper-case methods.
        methods: Option<Vec<String>>,
        /// Path patterns.
        paths: Option<Vec<PathPattern>>,
    },
    /// TLS connections relayed without interception, by SNI name.
    TlsPassthrough,
    /// Plain TCP connections, by the DNS name the jail handed out.
    Tcp,
    /// TCP connections to the pod's own loopback, by port only (no host: it is always the
    /// pod's loopback). Never matched by name checks.
    PodLocal,
}

/// A compiled allow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where it came from.
    pub origin: RuleOrigin,
    /// What it allows.
    pub kind: RuleKind,
    /// Host patterns; `None` matches every host name (a left-out `domain=`).
    pub domains: Option<Vec<DomainPattern>>,
    /// Destination ports; `None` matches every port.
    pub ports: Option<Vec<u16>>,
}

impl Rule {
    fn host_matches(&self, host: &Host) -> bool {
        match &self.domains {
            None => matches!(host, Host::Name(_)),
            Some(domains) => domains.iter().any(|d| d.matches(host)),
        }
    }

    fn port_matches(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }
}

/// A problem found while compiling rules, in the shape of the CRD's `status.ruleProblems`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The `BoundaryPolicy` name, if any.
    pub policy: Option<String>,
    /// `spec.allow[2]`, `spec.http[0].paths[1]`, `--allow[0]`.
    pub field: String,
    /// 1-based column inside a rule string.
    pub column: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(policy) = &self.policy {
            write!(f, "{policy}: ")?;
        }
        write!(f, "{}", self.field)?;
        if let Some(column) = self.column {
            write!(f, " column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Rules that did not compile; every problem is listed, not just the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid rule(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct CompileErrors(pub Vec<Problem>);

/// The rules of one source (a policy, or the command line) before compilation.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleSource<'a> {
    /// Policy name, `None` for the command line and config file.
    pub policy: Option<&'a str>,
    /// Prefix of field paths: `spec.` for policies, `--` for flags.
    pub field_prefix: &'a str,
    /// Coder-grammar strings.
    pub allow: &'a [String],
    /// Structured HTTP rules.
    pub http: &'a [HttpRule],
    /// TCP rules.
    pub tcp: &'a [TcpRule],
    /// Pod-local port rules.
    pub pod_local: &'a [PodLocalRule],
}

/// Compiles the rules of one source, collecting every problem.
pub fn compile(source: RuleSource<'_>) -> Result<Vec<Rule>, CompileErrors> {
    let mut c = Compiler {
        policy: source.policy.map(str::to_owned),
        prefix: source.field_prefix,
        rules: Vec::new(),
        problems: Vec::new(),
    };
    for (i, text) in source.allow.iter().enumerate() {
        c.allow(i, text);
    }
    for (i, rule) in source.http.iter().enumerate() {
        c.http(i, rule);
    }
    for (i, rule) in source.tcp.iter().enumerate() {
        c.tcp(i, rule);
    }
    for (i, rule) in source.pod_local.iter().enumerate() {
        c.pod_local(i, rule);
    }
    if c.problems.is_empty() {
        Ok(c.rules)
    } else {
        Err(CompileErrors(c.problems))
    }
}

struct Compiler<'a> {
    policy: Option<String>,
    prefix: &'a str,
    rules: Vec<Rule>,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    fn problem(&mut self, field: String, column: Option<usize>, message: String) {
        self.problems.push(Problem {
            policy: self.policy.clone(),
            field,
            column,
            message,
        });
    }

    fn push(
        &mut self,
        field: String,
        text: String,
        kind: RuleKind,
        domains: Option<Vec<DomainPattern>>,
        ports: Option<Vec<u16>>,
    ) {
        let origin = RuleOrigin {
            policy: self.policy.clone(),
            field,
            text,
        };
        self.rules.push(Rule {
            origin,
            kind,
            domains,
            ports,
        });
    }

    fn allow(&mut self, i: usize, text: &str) {
        let field = format!("{}allow[{i}]", self.prefix);
        match parse_rule(text) {
            Ok(parsed) => {
                let kind = RuleKind::Http {
                    methods: parsed.methods,
                    paths: parsed.paths,
                };
                self.push(
                    field,
                    text.trim().to_owned(),
                    kind,
                    parsed.domains,
                    parsed.ports,
                );
            }
            Err(e) => self.problem(field, Some(e.column), e.message),
        }
    }

    fn http(&mut self, i: usize, rule: &HttpRule) {
        let field = format!("{}http[{i}]", self.prefix);
        let before = self.problems.len();
        if rule.domains.is_empty() {
            self.problem(
                format!("{field}.domains"),
                None,
                "at least one domain is required".into(),
            );
        }
        let mut domains = Vec::new();
        for (j, d) in rule.domains.iter().enumerate() {
            match DomainPattern::parse(d) {
                Ok(p) => domains.push(p),
                Err(e) => self.problem(format!("{field}.domains[{j}]"), None, e.message),
            }
        }
        let mut methods = Vec::new();
        for (j, m) in rule.methods.iter().enumerate() {
            match parse_rule(&format!("method={m}")) {
                Ok(parsed) if !m.contains(',') => {
                    methods.extend(parsed.methods.unwrap_or_else(|| vec!["*".into()]));
                }
                _ => self.problem(
                    format!("{field}.methods[{j}]"),
                    None,
                    format!("invalid HTTP method {m:?}"),
                ),
            }
        }
        let mut paths = Vec::new();
        for (j, p) in rule.paths.iter().enumerate() {
            match PathPattern::parse(p) {
                Ok(p) => paths.push(p),
                Err(e) => self.problem(format!("{field}.paths[{j}]"), None, e.message),
            }
        }
        let kind = match rule.tls {
            TlsMode::Intercept => RuleKind::Http {
                methods: (!methods.is_empty() && !methods.iter().any(|m| m == "*"))
                    .then_some(methods),
                paths: (!paths.is_empty()).then_some(paths),
            },
            TlsMode::Passthrough => {
                if !rule.methods.is_empty() || !rule.paths.is_empty() {
                    self.problem(
                        format!("{field}.tls"),
                        None,
                        "a Passthrough rule cannot check methods or paths (the proxy does not see \
                         inside the TLS connection): remove them or use Intercept"
                            .into(),
                    );
                }
                RuleKind::TlsPassthrough
            }
        };
        if self.problems.len() == before {
            let ports =
                (!rule.ports.is_empty()).then(|| rule.ports.iter().map(|p| p.get()).collect());
            self.push(field, summarize_http(rule), kind, Some(domains), ports);
        }
    }

    fn tcp(&mut self, i: usize, rule: &TcpRule) {
        let field = format!("{}tcp[{i}]", self.prefix);
        let domain = match DomainPattern::parse(&rule.domain) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(format!("{field}.domain"), None, e.message);
                None
            }
        };
        if rule.ports.is_empty() {
            self.problem(
                format!("{field}.ports"),
                None,
                "at least one port is required".into(),
            );
            return;
        }
        if let Some(domain) = domain {
            let ports: Vec<u16> = rule.ports.iter().map(|p| p.get()).collect();
            let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
            let text = format!("tcp {} port {}", rule.domain, list.join(","));
            self.push(field, text, RuleKind::Tcp, Some(vec![domain]), Some(ports));
        }
    }

    fn pod_local(&mut self, i: usize, rule: &PodLocalRule) {
        // Flags and config files say `--allow-pod-local`, policies `spec.podLocal`.
        let name = if self.prefix == "--" {
            "allow-pod-local"
        } else {
            "podLocal"
        };
        let field = format!("{}{name}[{i}]", self.prefix);
        let before = self.problems.len();
        if rule.ports.is_empty() {
            self.problem(
                format!("{field}.ports"),
                None,
                "at least one port is required".into(),
            );
        }
        for (j, port) in rule.ports.iter().enumerate() {
            if let Some(what) = reserved_port_use(port.get()) {
                self.problem(
                    format!("{field}.ports[{j}]"),
                    None,
                    format!(
                        "port {port} cannot be pod-local: it is {what}; remove it (the pod's \
                         server must listen on another port)"
                    ),
                );
            }
        }
        if self.problems.len() > before {
            return;
        }
        let ports: Vec<u16> = rule.ports.iter().map(|p| p.get()).collect();
        let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let text = match rule.description.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => format!("podLocal ports={} ({d})", list.join(",")),
            _ => format!("podLocal ports={}", list.join(",")),
        };
        // No host pattern at all: name checks never match it.
        self.push(
            field,
            text,
            RuleKind::PodLocal,
            Some(Vec::new()),
            Some(ports),
        );
    }
}

/// What a port that cannot be pod-local is used for; `None` for every other port.
pub fn reserved_port_use(port: u16) -> Option<&'static str> {
    match port {
        ports::JAIL_FORWARDER => Some("the jail's own TCP forwarder"),
        ports::JAIL_DNS => Some("the jail's own DNS server (the jail answers every DNS query)"),
        ports::EXPLICIT_PROXY => Some("the boundary sidecar's explicit proxy"),
        ports::SIDECAR_METRICS => Some("the boundary sidecar's metrics and health endpoint"),
        _ => None,
    }
}

fn summarize_http(rule: &HttpRule) -> String {
    let mut parts = vec![format!("domains={}", rule.domains.join(","))];
    if !rule.methods.is_empty() {
        parts.push(format!("methods={}", rule.methods.join(",")));
    }
    if !rule.paths.is_empty() {
        parts.push(format!("paths={}", rule.paths.join(",")));
    }
    if !rule.ports.is_empty() {
        let list: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
        parts.push(format!("ports={}", list.join(",")));
    }
    if rule.tls == TlsMode::Passthrough {
        parts.push("tls=Passthrough".into());
    }
    parts.join(" ")
}

/// The facts of one HTTP request, normalised.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    /// The destination host.
    pub host: &'a Host,
    /// The destination port.
    pub port: u16,
    /// The method, as sent.
    pub method: &'a str,
    /// The normalised path.
    pub path: &'a RequestPath,
}

/// Why a rule for the right host did not allow a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The method is not in the rule's list.
    Method,
    /// No path pattern matches.
    Path,
    /// The port is not in the rule's list.
    Port,
    /// The rule allows plain TCP or TLS passthrough to this host, not intercepted HTTP.
    NotHttp,
}

impl Miss {
    /// A few words for a 403 body or log line.
    pub fn describe(self) -> &'static str {
        match self {
            Miss::Method => "method not allowed by",
            Miss::Path => "path not allowed by",
            Miss::Port => "port not allowed by",
            Miss::NotHttp => "host allowed only for TCP/passthrough by",
        }
    }
}

/// The outcome of checking a request or connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Allowed by this rule.
    Allow(&'a Rule),
    /// No rule allows it; rules for the same host that missed on something else.
    Deny(Vec<(&'a Rule, Miss)>),
}

impl Verdict<'_> {
    /// Whether a rule allows it.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

/// A compiled, immutable set of rules with the mode that applies to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    mode: Mode,
}

impl RuleSet {
    /// A rule set in `mode`.
    pub fn new(rules: Vec<Rule>, mode: Mode) -> Self {
        RuleSet { rules, mode }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Enforce or Audit.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Checks an HTTP request (plain or intercepted).
    pub fn check_http(&self, req: HttpRequest<'_>) -> Verdict<'_> {
        let mut misses = Vec::new();
        for rule in &self.rules {
            if rule.kind == RuleKind::PodLocal || !rule.host_matches(req.host) {
                continue;
            }
            let RuleKind::Http { methods, paths } = &rule.kind else {
                misses.push((rule, Miss::NotHttp));
                continue;
            };
            if !rule.port_matches(req.port) {
                misses.push((rule, Miss::Port));
            } else if methods
                .as_ref()
                .is_some_and(|m| !m.iter().any(|m| m == req.method))
            {
                misses.push((rule, Miss::Method));
            } else if paths
                .as_ref()
                .is_some_and(|p| !p.iter().any(|p| p.matches(req.path)))
            {
                misses.push((rule, Miss::Path));
            } else {
                return Verdict::Allow(rule);
            }
        }
        Verdict::Deny(misses)
    }

    /// A plain TCP connection: allowed only by a TCP rule.
    pub fn check_tcp(&self, host: &Host, port: u16) -> Option<&Rule> {
        self.find(host, port, |k| matches!(k, RuleKind::Tcp))
    }

    /// A TLS connection whose SNI is `host`: relayed without interception only by a Passthrough
    /// rule.
    pub fn check_passthrough(&self, host: &Host, port: u16) -> Option<&Rule> {
        self.find(host, port, |k| matches!(k, RuleKind::TlsPassthrough))
    }

    /// Whether some HTTP rule could allow a request to `host:port`: if not, a TLS connection is
    /// denied before any interception (no certificate is minted for it).
    pub fn may_allow_http(&self, host: &Host, port: u16) -> bool {
        self.find(host, port, |k| matches!(k, RuleKind::Http { .. }))
            .is_some()
    }

    /// A TCP connection to `port` on the pod's loopback: allowed only by a pod-local rule.
    pub fn check_pod_local(&self, port: u16) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.kind == RuleKind::PodLocal && r.port_matches(port))
    }

    fn find(&self, host: &Host, port: u16, kind: impl Fn(&RuleKind) -> bool) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| kind(&r.kind) && r.host_matches(host) && r.port_matches(port))
    }
}

/// Rules that would allow a denied request, narrowest first, in the grammar of `--allow` and
/// `spec.allow`.
pub fn suggest(req: HttpRequest<'_>) -> Vec<String> {
    let host = match req.host {
        Host::Name(n) => n.clone(),
        Host::Ip(ip) => ip.to_string(),
    };
    let path = req.path.to_string();
    let method_ok = !req.method.is_empty()
        && req.method.len() <= 32
        && req
            .method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'+-.^_`|~".contains(&b));
    let mut out = Vec::new();
    if method_ok {
        if path != "/" && path != "*" {
            out.push(format!("domain={host} method={} path={path}", req.method));
        }
        out.push(format!("domain={host} method={}", req.method));
    }
    out.push(format!("domain={host}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Port;

    fn rules(allow: &[&str]) -> RuleSet {
        let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
        let compiled = compile(RuleSource {
            field_prefix: "--",
            allow: &allow,
            ..RuleSource::default()
        })
        .unwrap();
        RuleSet::new(compiled, Mode::Enforce)
    }

    fn check<'a>(set: &'a RuleSet, method: &str, host: &str, port: u16, path: &str) -> Verdict<'a> {
        let host = Host::parse(host).unwrap();
        let path = RequestPath::parse(path).unwrap();
        set.check_http(HttpRequest {
            host: &host,
            port,
            method,
            path: &path,
        })
        .clone()
    }

    #[test]
    fn default_deny_and_or_of_rules() {
        let set = rules(&[
            "domain=github.com method=GET",
            "domain=api.example.com path=/v1/*",
        ]);
        assert!(check(&set, "GET", "github.com", 443, "/x").is_allow());
        assert!(check(&set, "POST", "api.example.com", 443, "/v1/a").is_allow());
        assert!(!check(&set, "GET", "example.com", 443, "/").is_allow());
        assert!(
            !rules(&[])
                .check_http(HttpRequest {
                    host: &Host::parse("a.com").unwrap(),
                    port: 80,
                    method: "GET",
                    path: &RequestPath::parse("/").unwrap()
                })
                .is_allow()
        );
    }

    #[test]
    fn denials_explain_near_misses() {
        let set = rules(&[
            "domain=github.com method=GET",
            "domain=github.com path=/api/*",
            "domain=github.com port=443",
        ]);
        let Verdict::Deny(misses) = check(&set, "POST", "github.com", 8443, "/admin") else {
            panic!("allowed")
        };
        let kinds: Vec<Miss> = misses.iter().map(|(_, m)| *m).collect();
        assert_eq!(kinds, [Miss::Method, Miss::Path, Miss::Port]);
        assert_eq!(
            misses[0].0.origin.to_string(),
            "--allow[0]: domain=github.com method=GET"
        );
    }

    #[test]
    fn bypass_attempts_are_denied() {
        let set = rules(&["domain=*.github.com", "domain=api.example.com path=/api/*"]);
        assert!(!check(&set, "GET", "evilgithub.com", 443, "/").is_allow());
        assert!(!check(&set, "GET", "GITHUB.COM.", 443, "/").is_allow());
        assert!(check(&set, "GET", "API.GITHUB.COM.", 443, "/").is_allow());
        assert!(!check(&set, "GET", "api.example.com", 443, "/api/../admin").is_allow());
        assert!(!check(&set, "GET", "api.example.com", 443, "/api/%2e%2e/admin").is_allow());
        assert!(
            !check(&set, "GET", "140.82.112.3", 443, "/").is_allow(),
            "IP literal"
        );
        let ip = rules(&["domain=140.82.112.0/20"]);
        assert!(check(&ip, "GET", "140.82.112.3", 443, "/").is_allow());
    }

    #[test]
    fn structured_and_tcp_rules() {
        let http = [
            HttpRule {
                domains: vec!["*.npmjs.org".into()],
                methods: vec!["get".into(), "HEAD".into()],
                ports: vec![Port::new(443).unwrap()],
                ..HttpRule::default()
            },
            HttpRule {
                domains: vec!["pinned.example.com".into()],
                tls: TlsMode::Passthrough,
                ..HttpRule::default()
            },
        ];
        let tcp = [TcpRule {
            domain: "github.com".into(),
            ports: vec![Port::new(22).unwrap()],
        }];
        let compiled = compile(RuleSource {
            policy: Some("agents"),
            field_prefix: "spec.",
            http: &http,
            tcp: &tcp,
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Audit);
        assert!(check(&set, "GET", "registry.npmjs.org", 443, "/x").is_allow());
        assert!(!check(&set, "GET", "registry.npmjs.org", 80, "/x").is_allow());
        assert!(!check(&set, "PUT", "registry.npmjs.org", 443, "/x").is_allow());
        let gh = Host::parse("github.com").unwrap();
        assert!(set.check_tcp(&gh, 22).is_some());
        assert!(set.check_tcp(&gh, 443).is_none());
        assert!(
            !set.may_allow_http(&gh, 22),
            "a TCP rule does not allow HTTP"
        );
        let pinned = Host::parse("pinned.example.com").unwrap();
        assert!(set.check_passthrough(&pinned, 443).is_some());
        assert!(!set.may_allow_http(&pinned, 443));
        assert_eq!(
            set.rules()[0].origin.to_string(),
            "agents spec.http[0]: domains=*.npmjs.org methods=get,HEAD ports=443"
        );
        assert_eq!(set.mode(), Mode::Audit);
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let allow = vec![
            "domain=ok.com".to_owned(),
            "domain=bad.* method=GET".to_owned(),
            "metod=GET".to_owned(),
        ];
        let http = [
            HttpRule {
                domains: vec!["a.com".into(), "b..com".into()],
                paths: vec!["nope".into()],
                ..HttpRule::default()
            },
            HttpRule {
                domains: vec!["c.com".into()],
                methods: vec!["GET".into()],
                tls: TlsMode::Passthrough,
                ..HttpRule::default()
            },
        ];
        let tcp = [TcpRule {
            domain: "x.*".into(),
            ports: vec![],
        }];
        let CompileErrors(problems) = compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            allow: &allow,
            http: &http,
            tcp: &tcp,
            pod_local: &[],
        })
        .unwrap_err();
        let fields: Vec<(&str, Option<usize>)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.column))
            .collect();
        assert_eq!(
            fields,
            [
                ("spec.allow[1]", Some(12)),
                ("spec.allow[2]", Some(1)),
                ("spec.http[0].domains[1]", None),
                ("spec.http[0].paths[0]", None),
                ("spec.http[1].tls", None),
                ("spec.tcp[0].domain", None),
                ("spec.tcp[0].ports", None),
            ]
        );
        assert!(problems.iter().all(|p| p.policy.as_deref() == Some("p")));
    }

    fn pod_local(ports: &[u16], description: Option<&str>) -> PodLocalRule {
        PodLocalRule {
            ports: ports.iter().map(|p| Port::new(*p).unwrap()).collect(),
            description: description.map(str::to_owned),
        }
    }

    #[test]
    fn pod_local_rules_allow_ports_of_the_pods_loopback_and_nothing_by_name() {
        let pod_local_rules = [
            pod_local(&[5432, 2375], Some(" cloud-sql-proxy ")),
            pod_local(&[8080], None),
        ];
        let allow = vec![
            "domain=127.0.0.0/8".to_owned(),
            "domain=localhost".to_owned(),
        ];
        let compiled = compile(RuleSource {
            policy: Some("agents"),
            field_prefix: "spec.",
            allow: &allow,
            pod_local: &pod_local_rules,
            ..RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Enforce);
        // (port, allowed by): the decision is by port alone.
        let table: [(u16, Option<&str>); 5] = [
            (
                5432,
                Some("agents spec.podLocal[0]: podLocal ports=5432,2375 (cloud-sql-proxy)"),
            ),
            (
                2375,
                Some("agents spec.podLocal[0]: podLocal ports=5432,2375 (cloud-sql-proxy)"),
            ),
            (8080, Some("agents spec.podLocal[1]: podLocal ports=8080")),
            (2376, None),
            (443, None),
        ];
        for (port, expected) in table {
            assert_eq!(
                set.check_pod_local(port)
                    .map(|r| r.origin.to_string())
                    .as_deref(),
                expected,
                "port {port}"
            );
        }
        // Pod-local rules never allow anything by host name, and host rules never pod-local.
        let lo = Host::parse("127.0.0.1").unwrap();
        let any = Host::parse("db.example.com").unwrap();
        for host in [&lo, &any] {
            assert!(set.check_tcp(host, 5432).is_none());
            assert!(set.check_passthrough(host, 5432).is_none());
        }
        assert!(!set.may_allow_http(&any, 5432));
        let Verdict::Deny(misses) = check(&set, "GET", "db.example.com", 5432, "/") else {
            panic!("a pod-local rule allowed a request by name")
        };
        assert!(misses.is_empty(), "{misses:?}");
        let only_names = rules(&["domain=127.0.0.0/8", "domain=localhost"]);
        assert!(only_names.check_pod_local(5432).is_none());
    }

    #[test]
    fn pod_local_rules_refuse_the_ports_of_the_jail_and_the_sidecar() {
        let bad = [
            pod_local(&[5432, 53], None),
            pod_local(&[], Some("nothing")),
            pod_local(&[2, 15080, 15090], None),
        ];
        let CompileErrors(problems) = compile(RuleSource {
            policy: Some("p"),
            field_prefix: "spec.",
            pod_local: &bad,
            ..RuleSource::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.podLocal[0].ports[1]",
                "spec.podLocal[1].ports",
                "spec.podLocal[2].ports[0]",
                "spec.podLocal[2].ports[1]",
                "spec.podLocal[2].ports[2]",
            ]
        );
        assert!(
            problems[0].message.contains("port 53 cannot be pod-local"),
            "{problems:?}"
        );
        assert!(problems[0].message.contains("DNS"), "{problems:?}");
        assert!(problems[4].message.contains("metrics"), "{problems:?}");
        for port in ports::NOT_POD_LOCAL {
            assert!(reserved_port_use(port).is_some(), "{port}");
        }
        // Flags name their own place.
        let CompileErrors(problems) = compile(RuleSource {
            field_prefix: "--",
            pod_local: &[pod_local(&[8080], None), pod_local(&[53], None)],
            ..RuleSource::default()
        })
        .unwrap_err();
        assert_eq!(problems[0].field, "--allow-pod-local[1].ports[0]");
    }

    #[test]
    fn suggestions_go_from_narrow_to_broad() {
        let host = Host::parse("api.example.com").unwrap();
        let path = RequestPath::parse("/v1/items?x=1").unwrap();
        let s = suggest(HttpRequest {
            host: &host,
            port: 443,
            method: "POST",
            path: &path,
        });
        assert_eq!(
            s,
            [
                "domain=api.example.com method=POST path=/v1/items",
                "domain=api.example.com method=POST",
                "domain=api.example.com"
            ]
        );
        for rule in &s {
            parse_rule(rule).expect("suggestions are valid rules");
        }
        // Paths with grammar characters are escaped, and the suggestion still allows them.
        let odd = RequestPath::parse("/a*b/c,d").unwrap();
        let req = HttpRequest {
            host: &host,
            port: 443,
            method: "GET",
            path: &odd,
        };
        let narrow = suggest(req)[0].clone();
        assert_eq!(
            narrow,
            "domain=api.example.com method=GET path=/a%2Ab/c%2Cd"
        );
        let compiled = compile(RuleSource {
            allow: &[narrow],
            ..RuleSource::default()
        })
        .unwrap();
        assert!(
            RuleSet::new(compiled, Mode::Enforce)
                .check_http(req)
                .is_allow()
        );
    }
}
