//! `boundary check [FLAGS] [METHOD] URL`: what the proxy would decide for one request or
//! connection under the rules of policy files, flags and a config file, so that policies can be
//! unit-tested in CI. The decision is the proxy's own ([`boundary_proxy::decide`], the levels a
//! connection meets in order: the connection, TLS, the request), not a copy of it.
//!
//! Exit codes: 0 allowed (also a would-be denial in Audit mode, which the proxy lets through),
//! 1 denied, 2 a usage error or an invalid policy (with its place).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use boundary_api::contract::annotations;
use boundary_api::rules::{Host, HttpRequest, Miss, RequestPath, Rule, RuleSet};
use boundary_api::{lint, policy_file};
use boundary_proxy::Destination;
use boundary_proxy::audit::Decision;
use boundary_proxy::decide::{self, Connection, Opaque, Page, Request, Ruling, Tls};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::config::{ConfigError, ConfigFile, RunArgs, read_config, read_policy_file};

/// Exit code: allowed (or only recorded, in Audit mode).
pub const EXIT_ALLOW: i32 = 0;
/// Exit code: denied.
pub const EXIT_DENY: i32 = 1;
/// Exit code: bad flags, URL or policy.
pub const EXIT_USAGE: i32 = 2;

/// Flags of `boundary check`. No environment variables are read: a check in CI gives the same
/// answer on every machine.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// `BoundaryPolicy` YAML file, as for `boundary run --policy` (repeatable).
    #[arg(long = "policy", value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    /// Allow rule in Coder's grammar (repeatable).
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
    /// Deny rule in Coder's grammar (repeatable).
    #[arg(long = "deny", value_name = "RULE")]
    pub deny: Vec<String>,
    /// A preset's rules (repeatable or comma-separated).
    #[arg(long = "preset", value_name = "NAME", value_delimiter = ',')]
    pub presets: Vec<String>,
    /// Coder-compatible YAML config file, as for `boundary run --config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Enforce or Audit, over the policies' own modes (e.g. `--mode enforce` to test the rules
    /// of a policy still in Audit).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// A request header, `Name: value` (repeatable), for rules with header conditions.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// `text` (default) or `json` (one object).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Lint the rules instead of checking a request: print a warning for each rule that opens
    /// a channel out (paste sites, request bins, tunnels, public object stores, `domain=*`,
    /// wildcard TLDs, writes to broad wildcards); exit 0 none, 1 warnings, 2 invalid input.
    #[arg(long, conflicts_with = "request")]
    pub lint: bool,
    /// Lint codes to silence (comma-separated or repeatable: `any-host`, `wildcard-tld`,
    /// `publish-anywhere`, `broad-write`), for every rule; a policy silences its own with the
    /// annotation `agentboundary.dev/lint-ignore`.
    #[arg(long = "lint-ignore", value_name = "CODES", requires = "lint")]
    pub lint_ignore: Vec<String>,
    /// `[METHOD] URL`: an `http://` or `https://` URL (METHOD defaults to GET; a port other than
    /// the scheme's may be given), or `tcp://HOST:PORT` for a plain TCP connection.
    #[arg(value_name = "REQUEST", num_args = 1..=2, required_unless_present = "lint")]
    pub request: Vec<String>,
}

/// How the decision is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A few lines for people.
    Text,
    /// One JSON object (`decision`, `rule`, `reason`, ...).
    Json,
}

/// What is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    method: Option<String>,
    host: Host,
    port: u16,
    path: Option<RequestPath>,
    query: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    Tcp,
}

/// A request header of `--header`: name and value.
type Header = (String, String);

/// Runs `boundary check`; returns the exit code.
pub fn run(args: &CheckArgs) -> i32 {
    if args.lint {
        return run_lint(args);
    }
    let result = (|| -> Result<(RuleSet, Target, Vec<Header>), String> {
        let target = parse_request(&args.request)?;
        let headers = args
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let (rules, notes) = rule_set(args).map_err(|e| e.to_string())?;
        for note in notes {
            eprintln!("boundary check: note: {note}");
        }
        Ok((rules, target, headers))
    })();
    let (rules, target, headers) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("boundary check: {e}");
            return EXIT_USAGE;
        }
    };
    let outcome = decide(&rules, &target, &headers);
    match args.output {
        Output::Text => print!("{}", text(&rules, &target, &outcome)),
        Output::Json => println!("{}", to_json(&rules, &target, &headers, &outcome)),
    }
    if outcome.ruling.is_deny() {
        EXIT_DENY
    } else {
        EXIT_ALLOW
    }
}

/// `boundary check --lint`: the lint's warnings on every rule the flags, the config file and
/// the policy files give (deny rules among them silence what they fully cover).
fn run_lint(args: &CheckArgs) -> i32 {
    let result = (|| -> Result<Vec<lint::Warning>, String> {
        let (ignore, unknown) = lint::parse_ignore(&args.lint_ignore.join(","));
        if !unknown.is_empty() {
            return Err(format!(
                "--lint-ignore: unknown code(s) {}; the codes are: {}",
                unknown.join(", "),
                lint::Code::ALL.map(lint::Code::as_str).join(", ")
            ));
        }
        let flags = CheckArgs {
            policy: Vec::new(),
            ..args.clone()
        };
        let (set, notes) = rule_set(&flags).map_err(|e| e.to_string())?;
        for note in notes {
            eprintln!("boundary check: note: {note}");
        }
        let mut rules: Vec<Rule> = set.deny_rules().to_vec();
        rules.extend(set.rules().iter().cloned());
        // Per policy: (name, cluster) → the codes its annotation silences.
        let mut silenced: Vec<(String, bool, Vec<lint::Code>)> = Vec::new();
        for path in &args.policy {
            let file = read_policy_file(path).map_err(|e| e.to_string())?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("policy file {}: {e}", path.display()))?;
            for (name, cluster, value) in policy_file::lint_ignores(&text) {
                let (codes, unknown) = lint::parse_ignore(&value);
                if !unknown.is_empty() {
                    eprintln!(
                        "boundary check: note: policy file {}: {name}: annotation {}: unknown \
                         code(s) {} ignored",
                        path.display(),
                        annotations::LINT_IGNORE,
                        unknown.join(", ")
                    );
                }
                silenced.push((name, cluster, codes));
            }
            for policy in &file.policies {
                let compiled = policy.entry.compile().map_err(|e| {
                    format!(
                        "policy file {}: document {} ({}): {e}",
                        path.display(),
                        policy.document,
                        policy.describe()
                    )
                })?;
                rules.extend(compiled);
            }
        }
        let warnings = lint::lint(&rules, &ignore)
            .into_iter()
            .filter(|w| {
                !silenced.iter().any(|(name, cluster, codes)| {
                    w.policy.as_deref() == Some(name.as_str())
                        && w.cluster == *cluster
                        && codes.contains(&w.code)
                })
            })
            .collect();
        Ok(warnings)
    })();
    let warnings = match result {
        Ok(w) => w,
        Err(e) => {
            eprintln!("boundary check: {e}");
            return EXIT_USAGE;
        }
    };
    match args.output {
        Output::Text => {
            for w in &warnings {
                println!("warning: {w}");
            }
            if warnings.is_empty() {
                println!(
                    "no lint warnings (lint data version {})",
                    lint::data_version()
                );
            }
        }
        Output::Json => println!(
            "{}",
            json!({"lintVersion": lint::data_version(), "warnings": warnings})
        ),
    }
    if warnings.is_empty() {
        EXIT_ALLOW
    } else {
        EXIT_DENY
    }
}

/// The rules `boundary run` would enforce with the same flags, and its notes.
fn rule_set(args: &CheckArgs) -> Result<(RuleSet, Vec<String>), ConfigError> {
    let run = RunArgs {
        allow: args.allow.clone(),
        deny: args.deny.clone(),
        presets: args.presets.clone(),
        policy: args.policy.clone(),
        mode: args.mode.clone(),
        ..RunArgs::default()
    };
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let mut notes = Vec::new();
    let set = run.rules(&file, &mut notes)?.set;
    Ok((set, notes))
}

fn parse_request(words: &[String]) -> Result<Target, String> {
    let (method, url) = match words {
        [url] => (None, url.as_str()),
        [method, url] => (Some(method.as_str()), url.as_str()),
        _ => return Err("expected [METHOD] URL".into()),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("URL {url:?}: {e} (expected http://, https:// or tcp://HOST:PORT)"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some("tcp") => Scheme::Tcp,
        _ => {
            return Err(format!(
                "URL {url:?}: expected http://, https:// or tcp://HOST:PORT"
            ));
        }
    };
    let raw_host = uri
        .host()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    let host = Host::parse(raw_host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| format!("URL {url:?}: host {raw_host:?}: {e}"))?;
    let port = match (uri.port_u16(), scheme) {
        (Some(0), _) => return Err(format!("URL {url:?}: port 0 is not a port")),
        (Some(p), _) => p,
        (None, Scheme::Http) => 80,
        (None, Scheme::Https) => 443,
        (None, Scheme::Tcp) => return Err(format!("URL {url:?}: tcp:// needs a port")),
    };
    if scheme == Scheme::Tcp {
        if let Some(m) = method {
            return Err(format!(
                "{m} {url}: a tcp:// connection has no method; give the URL alone"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("URL {url:?}: a tcp:// URL is HOST:PORT only"));
        }
        return Ok(Target {
            scheme,
            method: None,
            host,
            port,
            path: None,
            query: None,
        });
    }
    let method = method.unwrap_or("GET");
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(format!("method {method:?} is not an HTTP method token"));
    }
    let raw_path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let path = RequestPath::parse(raw_path).map_err(|e| format!("URL {url:?}: {e}"))?;
    Ok(Target {
        scheme,
        method: Some(method.to_owned()),
        host,
        port,
        path: Some(path),
        query: uri.query().map(str::to_owned),
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("--header {text:?}: expected 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("--header {text:?}: {name:?} is not a header name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The proxy's decision and the level that made it.
struct Outcome<'r> {
    ruling: Ruling<'r>,
    /// `connection`, `pod-local`, `tls` or `request`.
    stage: &'static str,
    /// What happens to the traffic, in words.
    action: &'static str,
    /// The allow rule a deny rule beat.
    overrides: Option<&'r Rule>,
    /// Allow rules for the host that missed, and on what.
    misses: Vec<(&'r Rule, Miss)>,
}

impl<'r> Outcome<'r> {
    fn new(stage: &'static str, action: &'static str, ruling: Ruling<'r>) -> Self {
        Outcome {
            ruling,
            stage,
            action,
            overrides: None,
            misses: Vec::new(),
        }
    }
}

/// The levels of the proxy, in the order a connection from the jail meets them.
fn decide<'r>(rules: &'r RuleSet, target: &Target, headers: &[Header]) -> Outcome<'r> {
    let dest = Destination {
        // A name gets a synthetic address from the jail's DNS; the proxy decides by the name.
        dst: match &target.host {
            Host::Ip(ip) => SocketAddr::new(*ip, target.port),
            Host::Name(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), target.port),
        },
        name: match &target.host {
            Host::Name(n) => Some(n.clone()),
            Host::Ip(_) => None,
        },
        container: None,
        tier: None,
    };
    match decide::connection(rules, &dest) {
        Connection::PodLocal(ruling) => {
            return Outcome::new("pod-local", "relayed to the pod's loopback", ruling);
        }
        Connection::Relay(ruling) => {
            return Outcome::new("connection", "relayed as plain TCP, uninspected", ruling);
        }
        Connection::Sniff { .. } => {}
    }
    let (Some(method), Some(path)) = (&target.method, &target.path) else {
        return match decide::opaque(rules, &target.host, target.port) {
            Opaque::Relay(ruling) | Opaque::Refuse(ruling) => {
                Outcome::new("connection", "plain TCP (neither HTTP nor TLS)", ruling)
            }
        };
    };
    if target.scheme == Scheme::Https {
        let server_name = match &target.host {
            Host::Name(n) => Some(n.as_str()),
            Host::Ip(_) => None,
        };
        match decide::tls(rules, &target.host, target.port, server_name) {
            Tls::Refuse(ruling) | Tls::Alert { ruling, .. } => {
                return Outcome::new("tls", "refused with a TLS alert", ruling);
            }
            Tls::Passthrough { ruling, .. } => {
                return Outcome::new("tls", "relayed as TLS passthrough, uninspected", ruling);
            }
            Tls::Intercept { .. } => {}
        }
    }
    let fields: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let req = HttpRequest {
        host: &target.host,
        port: target.port,
        method,
        path,
        headers: &fields,
        query: target.query.as_deref(),
    };
    match decide::request(rules, req) {
        Request::Forward(ruling) => Outcome::new("request", "forwarded upstream", ruling),
        Request::Deny { ruling, page } => {
            let mut outcome = Outcome::new("request", "answered 403", ruling);
            match page {
                Page::DenyRule { overrides, .. } => outcome.overrides = overrides,
                Page::NoRule(misses) => outcome.misses = misses,
                Page::Reason => {}
            }
            outcome
        }
    }
}

fn decision_word(decision: Decision) -> &'static str {
    match decision {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::WouldDeny => "would-deny",
    }
}

fn describe_target(target: &Target) -> String {
    let host = match &target.host {
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        other => other.to_string(),
    };
    match (target.scheme, &target.method, &target.path) {
        (Scheme::Tcp, ..) => format!("tcp://{host}:{}", target.port),
        (scheme, Some(method), Some(path)) => {
            let scheme = if scheme == Scheme::Https {
                "https"
            } else {
                "http"
            };
            let query = target
                .query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            format!("{method} {scheme}://{host}:{}{path}{query}", target.port)
        }
        _ => host,
    }
}

fn text(rules: &RuleSet, target: &Target, outcome: &Outcome<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ruling = &outcome.ruling;
    let _ = writeln!(
        out,
        "{}: {} ({} mode; {})",
        decision_word(ruling.decision),
        describe_target(target),
        rules.mode().as_str(),
        outcome.action
    );
    if let Some(rule) = ruling.rule {
        let what = if rule.is_deny() {
            "deny rule"
        } else {
            "allowed by"
        };
        let _ = writeln!(out, "  {what}: {}", rule.origin());
    }
    if let Some(rule) = outcome.overrides {
        let _ = writeln!(out, "  beats the allow rule: {}", rule.origin());
    }
    if let Some(reason) = &ruling.reason {
        let _ = writeln!(out, "  why: {reason}");
    }
    if ruling.decision == Decision::WouldDeny {
        let _ = writeln!(
            out,
            "  (Audit mode lets it through; --mode enforce checks the rules as enforced)"
        );
    }
    out
}

fn origin_json(rule: &Rule) -> serde_json::Value {
    json!({
        "policy": rule.origin().policy,
        "cluster": rule.origin().cluster,
        "field": rule.origin().field,
        "text": rule.origin().text,
        "deny": rule.is_deny(),
    })
}

fn to_json(
    rules: &RuleSet,
    target: &Target,
    headers: &[(String, String)],
    outcome: &Outcome<'_>,
) -> serde_json::Value {
    let ruling = &outcome.ruling;
    json!({
        "decision": decision_word(ruling.decision),
        "mode": rules.mode().as_str(),
        "request": describe_target(target),
        "host": target.host.to_string(),
        "port": target.port,
        "method": target.method,
        "path": target.path.as_ref().map(ToString::to_string),
        "headers": headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "stage": outcome.stage,
        "action": outcome.action,
        "rule": ruling.rule.map(origin_json),
        "overrides": outcome.overrides.map(origin_json),
        "reason": ruling.reason,
        "misses": outcome.misses.iter().map(|(rule, miss)| json!({
            "rule": origin_json(rule),
            "miss": miss.describe(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(words: &[&str]) -> Result<Target, String> {
        parse_request(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn requests_parse_with_default_ports_and_methods() {
        let t = target(&["https://API.github.com/repos/a/../b?x=1"]).unwrap();
        assert_eq!(t.method.as_deref(), Some("GET"));
        assert_eq!(t.host.to_string(), "api.github.com");
        assert_eq!(t.port, 443);
        assert_eq!(t.path.as_ref().unwrap().to_string(), "/repos/b");
        assert_eq!(t.query.as_deref(), Some("x=1"));
        let t = target(&["POST", "http://example.com:8080"]).unwrap();
        assert_eq!((t.port, t.scheme), (8080, Scheme::Http));
        assert_eq!(t.path.as_ref().unwrap().to_string(), "/");
        let t = target(&["tcp://github.com:22"]).unwrap();
        assert_eq!((t.port, t.scheme, t.method), (22, Scheme::Tcp, None));
        let t = target(&["http://[::1]:5432/"]).unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(describe_target(&t), "GET http://[::1]:5432/");
    }

    #[test]
    fn bad_requests_say_why() {
        for (words, needle) in [
            (&["ftp://a.com/"][..], "expected http://"),
            (&["tcp://a.com"][..], "needs a port"),
            (&["GET", "tcp://a.com:22"][..], "has no method"),
            (&["tcp://a.com:22/x"][..], "HOST:PORT only"),
            (&["GE T", "http://a.com/"][..], "not an HTTP method"),
            (&["http://a.com/%zz"][..], "percent"),
            (&["http://a.com:0/"][..], "port 0"),
        ] {
            let e = target(words).unwrap_err();
            assert!(e.contains(needle), "{words:?}: {e}");
        }
        assert!(parse_header("X-Token").is_err());
        assert_eq!(
            parse_header("X-Token:  a b ").unwrap(),
            ("X-Token".to_owned(), "a b".to_owned())
        );
    }

    fn check(rules: &[&str], deny: &[&str], mode: Option<&str>, words: &[&str]) -> (String, i32) {
        let args = CheckArgs {
            policy: Vec::new(),
            allow: rules.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            presets: Vec::new(),
            config: None,
            mode: mode.map(str::to_owned),
            headers: Vec::new(),
            output: Output::Text,
            lint: false,
            lint_ignore: Vec::new(),
            request: words.iter().map(|s| (*s).to_owned()).collect(),
        };
        let (set, _) = rule_set(&args).unwrap();
        let t = target(words).unwrap();
        let outcome = decide(&set, &t, &[]);
        let code = i32::from(outcome.ruling.is_deny());
        (text(&set, &t, &outcome), code)
    }

    #[test]
    fn each_level_of_the_proxy_decides_and_says_why() {
        let allow = ["domain=api.github.com method=GET path=/repos/*"];
        let (out, code) = check(&allow, &[], None, &["https://api.github.com/repos/x"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("allow: GET https://api.github.com:443/repos/x (Enforce mode; forwarded upstream)\n  allowed by: --allow[0]: "), "{out}");
        let (out, code) = check(
            &allow,
            &[],
            None,
            &["POST", "https://api.github.com/repos/x"],
        );
        assert_eq!(code, 1);
        assert!(out.contains("method not allowed by --allow[0]"), "{out}");
        let (out, code) = check(&allow, &[], None, &["https://evil.test/"]);
        assert_eq!(code, 1);
        assert!(out.contains("refused with a TLS alert"), "{out}");
        assert!(
            out.contains("no rule allows HTTPS to evil.test:443"),
            "{out}"
        );
        let (out, code) = check(
            &allow,
            &["domain=api.github.com path=/repos/x"],
            None,
            &["https://api.github.com/repos/x"],
        );
        assert_eq!(code, 1);
        assert!(
            out.contains("deny rule: --deny[0]: domain=api.github.com path=/repos/x"),
            "{out}"
        );
        assert!(out.contains("beats the allow rule: --allow[0]"), "{out}");
        let (out, code) = check(
            &allow,
            &[],
            Some("audit"),
            &["POST", "https://api.github.com/repos/x"],
        );
        assert_eq!(code, 0);
        assert!(out.starts_with("would-deny: "), "{out}");
        let (out, code) = check(&[], &[], None, &["tcp://github.com:22"]);
        assert_eq!(code, 1);
        assert!(out.contains("no tcp rule allows github.com:22"), "{out}");
    }
}
