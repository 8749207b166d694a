//! Property tests of the rule engine: a matching deny rule always wins, adding deny rules never
//! allows more, and equivalent spellings of a request (path, query, host) are decided alike, so
//! normalisation cannot turn a denied request into an allowed one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use boundary_api::policy::{HttpRule, Mode};
use boundary_api::rules::{
    Host, HttpRequest, RequestPath, RuleSet, RuleSource, Verdict, compile, raw_query,
};
use proptest::prelude::*;

const HOSTS: [&str; 3] = ["a.example", "x.a.example", "b.example"];
const METHODS: [&str; 3] = ["GET", "POST", "PURGE"];
const SEGMENTS: [&str; 6] = ["api", "v1", "git-receive-pack", "a b", "caf\u{e9}", "%"];
const VALUES: [&str; 4] = ["git-upload-pack", "git-receive-pack", "a b", "x&y=z"];

/// A request in its plain spelling: host, method, path segments, query pairs, one header.
#[derive(Clone, Debug)]
struct Req {
    host: &'static str,
    method: &'static str,
    segments: Vec<&'static str>,
    query: Vec<(&'static str, &'static str)>,
    agent: Option<&'static str>,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(&HOSTS[..]),
        prop::sample::select(&METHODS[..]),
        prop::collection::vec(prop::sample::select(&SEGMENTS[..]), 0..4),
        prop::collection::vec(
            (
                prop::sample::select(&["service", "q"][..]),
                prop::sample::select(&VALUES[..]),
            ),
            0..3,
        ),
        prop::option::of(prop::sample::select(&["claude", "curl"][..])),
    )
        .prop_map(|(host, method, segments, query, agent)| Req {
            host,
            method,
            segments,
            query,
            agent,
        })
}

/// Allow and deny rules over the same small vocabulary, so they often meet the requests.
fn grammar_rule() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::sample::select(
            &["a.example", "*.a.example", "*", "b.example"][..],
        )),
        prop::option::of(prop::sample::select(&["GET", "POST", "GET,PURGE"][..])),
        prop::option::of(prop::sample::select(
            &[
                "/api/*",
                "/api/v1",
                "/*/git-receive-pack",
                "*",
                "/caf%C3%A9",
            ][..],
        )),
    )
        .prop_map(|(domain, method, path)| {
            let mut parts = Vec::new();
            parts.extend(domain.map(|d| format!("domain={d}")));
            parts.extend(method.map(|m| format!("method={m}")));
            parts.extend(path.map(|p| format!("path={p}")));
            if parts.is_empty() {
                "domain=*".to_owned()
            } else {
                parts.join(" ")
            }
        })
}

fn structured_rule() -> impl Strategy<Value = HttpRule> {
    (
        prop::sample::select(&["a.example", "*.a.example", "b.example"][..]),
        prop::option::of(prop::sample::select(
            &["git-upload-pack", "git-*", "*", "a b"][..],
        )),
        prop::option::of(prop::sample::select(&["claude*", "curl"][..])),
    )
        .prop_map(|(domain, service, agent)| HttpRule {
            domains: vec![domain.to_owned()],
            query: service
                .map(|s| BTreeMap::from([("service".to_owned(), s.to_owned())]))
                .unwrap_or_default(),
            headers: agent
                .map(|a| BTreeMap::from([("X-Agent".to_owned(), a.to_owned())]))
                .unwrap_or_default(),
            ..HttpRule::default()
        })
}

#[derive(Clone, Debug, Default)]
struct Rules {
    allow: Vec<String>,
    http: Vec<HttpRule>,
    deny: Vec<String>,
    deny_http: Vec<HttpRule>,
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        prop::collection::vec(grammar_rule(), 0..4),
        prop::collection::vec(structured_rule(), 0..3),
        prop::collection::vec(grammar_rule(), 0..3),
        prop::collection::vec(structured_rule(), 0..2),
    )
        .prop_map(|(allow, http, deny, deny_http)| Rules {
            allow,
            http,
            deny,
            deny_http,
        })
}

fn set(r: &Rules) -> RuleSet {
    let compiled = compile(RuleSource {
        field_prefix: "--",
        allow: &r.allow,
        http: &r.http,
        deny: &r.deny,
        deny_http: &r.deny_http,
        ..RuleSource::default()
    })
    .expect("generated rules compile");
    RuleSet::new(compiled, Mode::Enforce)
}

fn encode_all(text: &str, upper: bool) -> String {
    text.bytes().fold(String::new(), |mut out, b| {
        if upper {
            let _ = write!(out, "%{b:02X}");
        } else {
            let _ = write!(out, "%{b:02x}");
        }
        out
    })
}

/// The plain spelling of a component: unreserved characters as they are, the rest encoded.
fn encode(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// How a variant spells the same request: one bit per trick.
#[derive(Clone, Copy, Debug)]
struct Spelling(u8);

impl Spelling {
    fn encode_everything(self) -> bool {
        self.0 & 1 != 0
    }
    fn upper_hex(self) -> bool {
        self.0 & 2 != 0
    }
    fn dot_segments(self) -> bool {
        self.0 & 4 != 0
    }
    fn backslashes(self) -> bool {
        self.0 & 8 != 0
    }
    fn plus_for_space(self) -> bool {
        self.0 & 16 != 0
    }
    fn host_case_and_dot(self) -> bool {
        self.0 & 32 != 0
    }
    fn header_case(self) -> bool {
        self.0 & 64 != 0
    }
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (0u8..128).prop_map(Spelling)
}

/// The request target and host as sent, in the plain spelling or a variant.
fn spell(r: &Req, s: Option<Spelling>) -> (String, String, String) {
    let mut target = String::new();
    for segment in &r.segments {
        let sep = if s.is_some_and(Spelling::backslashes) {
            "\\"
        } else {
            "/"
        };
        if s.is_some_and(Spelling::dot_segments) {
            let _ = write!(target, "{sep}.{sep}zz{sep}%2e%2E");
        }
        target.push_str(sep);
        match s {
            Some(s) if s.encode_everything() => {
                target.push_str(&encode_all(segment, s.upper_hex()));
            }
            _ => target.push_str(&encode(segment)),
        }
    }
    if target.is_empty() {
        target.push('/');
    } else if target.starts_with('\\') {
        // The request target itself starts with `/`; backslashes separate after that.
        target.replace_range(0..1, "/");
    }
    if !r.query.is_empty() {
        target.push('?');
        let parts: Vec<String> = r
            .query
            .iter()
            .map(|(n, v)| match s {
                Some(s) if s.encode_everything() => {
                    format!(
                        "{}={}",
                        encode_all(n, s.upper_hex()),
                        encode_all(v, s.upper_hex())
                    )
                }
                Some(s) if s.plus_for_space() => {
                    format!("{}={}", encode(n), encode(v).replace("%20", "+"))
                }
                _ => format!("{}={}", encode(n), encode(v)),
            })
            .collect();
        target.push_str(&parts.join("&"));
    }
    let host = if s.is_some_and(Spelling::host_case_and_dot) {
        format!("{}.", r.host.to_ascii_uppercase())
    } else {
        r.host.to_owned()
    };
    let header = if s.is_some_and(Spelling::header_case) {
        "X-AGENT"
    } else {
        "x-agent"
    };
    (host, target, header.to_owned())
}

/// The decision as a comparable value: allowed, denied by which deny rule, or not allowed.
fn decide(set: &RuleSet, r: &Req, s: Option<Spelling>) -> String {
    let (host, target, header) = spell(r, s);
    let host = Host::parse(&host).expect("generated hosts parse");
    let path = RequestPath::parse(&target).expect("generated paths parse");
    let headers: Vec<(&str, &[u8])> = r
        .agent
        .iter()
        .map(|a| (header.as_str(), a.as_bytes()))
        .collect();
    let verdict = set.check_http(HttpRequest {
        host: &host,
        port: 443,
        method: r.method,
        path: &path,
        headers: &headers,
        query: raw_query(&target),
    });
    match verdict {
        Verdict::Allow(rule) => format!("allow {}", rule.origin().field),
        Verdict::Denied { by, .. } => format!("denied {}", by.origin().field),
        Verdict::Deny(_) => "deny".to_owned(),
    }
}

/// Deny rules that match `r` by construction, in each of the forms a deny rule can take.
fn matching_deny(r: &Req, form: u8) -> Rules {
    let (_, target, _) = spell(r, None);
    let path = RequestPath::parse(&target).unwrap().to_string();
    match form % 4 {
        0 => Rules {
            deny: vec![format!("domain={}", r.host)],
            ..Rules::default()
        },
        1 => Rules {
            deny: vec![format!("domain={} method={} path={path}", r.host, r.method)],
            ..Rules::default()
        },
        2 => match r.query.first() {
            Some((name, value)) => Rules {
                deny_http: vec![HttpRule {
                    domains: vec![r.host.to_owned()],
                    query: BTreeMap::from([((*name).to_owned(), (*value).to_owned())]),
                    ..HttpRule::default()
                }],
                ..Rules::default()
            },
            None => matching_deny(r, 1),
        },
        _ => match r.agent {
            Some(agent) => Rules {
                deny_http: vec![HttpRule {
                    domains: vec![r.host.to_owned()],
                    methods: vec![r.method.to_owned()],
                    headers: BTreeMap::from([("X-Agent".to_owned(), agent.to_owned())]),
                    ..HttpRule::default()
                }],
                ..Rules::default()
            },
            None => matching_deny(r, 0),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_matching_deny_rule_always_wins(
        mut rules in rules(),
        r in request(),
        form in any::<u8>(),
        s in spelling(),
    ) {
        let extra = matching_deny(&r, form);
        rules.deny.extend(extra.deny);
        rules.deny_http.extend(extra.deny_http);
        let set = set(&rules);
        for spelled in [None, Some(s)] {
            let decision = decide(&set, &r, spelled);
            prop_assert!(decision.starts_with("denied"), "{decision} for {r:?} {spelled:?}");
        }
    }

    #[test]
    fn deny_rules_never_allow_more(rules in rules(), r in request()) {
        let allow_only = Rules { deny: Vec::new(), deny_http: Vec::new(), ..rules.clone() };
        let with_deny = decide(&set(&rules), &r, None);
        let without = decide(&set(&allow_only), &r, None);
        if with_deny.starts_with("allow") {
            prop_assert_eq!(with_deny, without);
        }
    }

    #[test]
    fn equivalent_spellings_are_decided_alike(rules in rules(), r in request(), s in spelling()) {
        let set = set(&rules);
        prop_assert_eq!(decide(&set, &r, None), decide(&set, &r, Some(s)), "{:?}", spell(&r, Some(s)));
    }
}
