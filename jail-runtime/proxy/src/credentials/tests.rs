use std::sync::Arc;

use boundary_api::credentials::{
    BasicAuthInjection, Credential as Spec, CredentialDestination, HeaderInjection,
    Injection as Inj, SecretKeyRef,
};
use bytes::Bytes;
use http::HeaderValue;

use super::scan::{Found, Needles, Scanner};
use super::*;

const NONCE: &str = "abcdefghijklmnop";
const GH_VALUE: &str = "ghp_realtokenvalue123";
const AN_VALUE: &str = "sk-ant-realvalue-456";

fn spec(name: &str, domain: &str, inject: Inj) -> Spec {
    Spec {
        name: name.into(),
        secret_key_ref: Some(SecretKeyRef {
            name: name.into(),
            key: "token".into(),
        }),
        destinations: vec![CredentialDestination {
            domains: vec![domain.into()],
            ..Default::default()
        }],
        inject,
        env: Some("TOKEN".into()),
    }
}

fn header(name: &str, format: Option<&str>) -> Inj {
    Inj {
        header: Some(HeaderInjection {
            name: name.into(),
            format: format.map(Into::into),
        }),
        ..Default::default()
    }
}

fn set() -> CredentialSet {
    let specs = vec![
        spec(
            "github",
            "api.github.com",
            header("Authorization", Some("Bearer {value}")),
        ),
        spec("anthropic", "api.anthropic.com", header("x-api-key", None)),
        spec(
            "git",
            "git.example.com",
            Inj {
                basic_auth: Some(BasicAuthInjection {
                    username: "x-access-token".into(),
                }),
                ..Default::default()
            },
        ),
    ];
    CredentialSet::new([(Some("agent"), specs.as_slice())], Some(NONCE))
}

fn values() -> Values {
    [
        ("agent.github", GH_VALUE),
        ("agent.anthropic", AN_VALUE),
        ("agent.git", "gitpassword-789"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), CredentialValue::Value(v.to_owned())))
    .collect()
}

fn ph(name: &str) -> String {
    api::placeholder(NONCE, name)
}

struct Req {
    host: Host,
    path: RequestPath,
    path_and_query: String,
    headers: HeaderMap,
    intercepted: bool,
    allowed: bool,
}

fn req(host: &str, pq: &str, headers: &[(&str, &str)]) -> Req {
    Req {
        host: Host::parse(host).unwrap(),
        path: RequestPath::parse(pq.split('?').next().unwrap()).unwrap(),
        path_and_query: pq.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect(),
        intercepted: true,
        allowed: true,
    }
}

impl Req {
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            host: &self.host,
            port: 443,
            method: "GET",
            path: &self.path,
            path_and_query: &self.path_and_query,
            headers: &self.headers,
            intercepted: self.intercepted,
            allowed: self.allowed,
        }
    }
}

fn leak_of(set: &CredentialSet, values: &Values, r: &Req) -> Option<(String, String)> {
    match decide(set, values, &r.facts()) {
        Outcome::Leak(l) => Some((l.credential, l.place)),
        _ => None,
    }
}

#[test]
fn a_bound_request_gets_the_value_in_its_header_and_wherever_the_placeholder_was() {
    let (set, values) = (set(), values());
    let r = req(
        "api.github.com",
        &format!("/repos?access_token={}&x=1", ph("github")),
        &[
            ("authorization", &format!("token {}", ph("github"))),
            ("x-custom", &format!("a {} b", ph("github"))),
        ],
    );
    let Outcome::Inject(injections) = decide(&set, &values, &r.facts()) else {
        panic!("not injected");
    };
    assert_eq!(injections.len(), 1);
    let mut headers = r.headers.clone();
    let mut pq = r.path_and_query.clone();
    assert!(
        inject(&mut headers, &mut pq, &injections)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        headers["authorization"],
        format!("Bearer {GH_VALUE}").as_str()
    );
    assert_eq!(headers["x-custom"], format!("a {GH_VALUE} b").as_str());
    assert_eq!(pq, format!("/repos?access_token={GH_VALUE}&x=1"));
}

#[test]
fn basic_auth_is_user_and_value_in_base64_and_values_are_percent_encoded_in_urls() {
    let mut values = values();
    values.insert(
        "agent.git".into(),
        CredentialValue::Value("pa ss/wd&123".into()),
    );
    let set = set();
    let r = req("git.example.com", &format!("/x?t={}", ph("git")), &[]);
    let Outcome::Inject(injections) = decide(&set, &values, &r.facts()) else {
        panic!("not injected");
    };
    let mut headers = r.headers.clone();
    let mut pq = r.path_and_query.clone();
    inject(&mut headers, &mut pq, &injections).unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode("x-access-token:pa ss/wd&123");
    assert_eq!(
        headers["authorization"],
        format!("Basic {expected}").as_str()
    );
    assert_eq!(pq, "/x?t=pa%20ss%2Fwd%26123");
}

#[test]
fn placeholders_and_values_going_elsewhere_are_leaks_named_by_credential_and_place() {
    let (set, values) = (set(), values());
    let cases = [
        (
            req(
                "gist.example.com",
                "/",
                &[("authorization", &format!("Bearer {}", ph("github")))],
            ),
            ("github", "header authorization"),
        ),
        (
            req("gist.example.com", &format!("/?q={}", ph("anthropic")), &[]),
            ("anthropic", "query"),
        ),
        (
            req("gist.example.com", &format!("/a/{}/b", ph("github")), &[]),
            ("github", "path"),
        ),
        (
            // Percent-encoded in the query.
            req(
                "gist.example.com",
                "/?q=boundary%2Dph%2Dabcdefghijklmnop%2Dgithub",
                &[],
            ),
            ("github", "query"),
        ),
        (
            // Another pod's placeholder.
            req(
                "gist.example.com",
                "/",
                &[("x-a", "boundary-ph-zzzzzzzzzzzzzzzz-github")],
            ),
            (UNKNOWN_PLACEHOLDER, "header x-a"),
        ),
        (
            // A real value, in the decoded Basic credentials.
            req(
                "gist.example.com",
                "/",
                &[(
                    "authorization",
                    &format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("u:{AN_VALUE}"))
                    ),
                )],
            ),
            ("anthropic", "header authorization"),
        ),
        (
            // A placeholder in Basic credentials (curl -u, git).
            req(
                "gist.example.com",
                "/",
                &[(
                    "authorization",
                    &format!(
                        "basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("u:{}", ph("git")))
                    ),
                )],
            ),
            ("git", "header authorization"),
        ),
        (
            // To a bound host, but another credential's placeholder.
            req(
                "api.github.com",
                "/",
                &[
                    ("authorization", &ph("github")),
                    ("x-api-key", &ph("anthropic")),
                ],
            ),
            ("anthropic", "header x-api-key"),
        ),
        (
            // In the host name (a wildcard rule allows it).
            req(&format!("{}.example.com", ph("github")), "/", &[]),
            ("github", "header host"),
        ),
        (
            // To a bound host, another credential's real value.
            req("api.github.com", &format!("/?k={AN_VALUE}"), &[]),
            ("anthropic", "query"),
        ),
    ];
    for (r, (credential, place)) in cases {
        assert_eq!(
            leak_of(&set, &values, &r),
            Some((credential.to_owned(), place.to_owned())),
            "{} {:?}",
            r.path_and_query,
            r.headers
        );
    }
}

#[test]
fn plain_http_and_would_deny_requests_are_never_bound() {
    let (set, values) = (set(), values());
    let mut r = req(
        "api.github.com",
        "/",
        &[("authorization", &format!("Bearer {}", ph("github")))],
    );
    r.intercepted = false;
    let Outcome::Leak(leak) = decide(&set, &values, &r.facts()) else {
        panic!("plain http is a leak");
    };
    assert!(leak.plain_http);
    assert!(
        leak.reason("api.github.com", 80)
            .contains("over plain http"),
        "{}",
        leak.reason("h", 80)
    );
    r.intercepted = true;
    r.allowed = false;
    assert!(matches!(
        decide(&set, &values, &r.facts()),
        Outcome::Leak(_)
    ));
}

#[test]
fn a_bound_credential_without_a_value_refuses_and_says_where_the_value_should_come_from() {
    let set = set();
    let mut values = values();
    values.remove("agent.github");
    let r = req("api.github.com", "/", &[]);
    let Outcome::NoValue {
        credential,
        message,
    } = decide(&set, &values, &r.facts())
    else {
        panic!("fails closed");
    };
    assert_eq!(credential, "github");
    assert!(
        message.contains("credential github has no value: Secret \"github\" key \"token\""),
        "{message}"
    );
}

#[test]
fn requests_without_needles_are_left_alone() {
    let (set, values) = (set(), values());
    let r = req(
        "other.example.com",
        "/a?b=c",
        &[("x-a", "boundary-p"), ("x-b", "sk-ant")],
    );
    assert!(matches!(
        decide(&set, &values, &r.facts()),
        Outcome::Nothing
    ));
    let empty = CredentialSet::default();
    let r = req("other.example.com", &format!("/{}", ph("github")), &[]);
    assert!(matches!(
        decide(&empty, &values, &r.facts()),
        Outcome::Nothing
    ));
}

#[test]
fn a_longer_name_is_not_taken_for_a_shorter_one() {
    // "git" is a prefix of "github": github's placeholder is not git's.
    let (set, values) = (set(), values());
    let r = req("git.example.com", &format!("/?t={}", ph("github")), &[]);
    assert_eq!(
        leak_of(&set, &values, &r),
        Some(("github".into(), "query".into()))
    );
}

#[test]
fn audit_text_is_redacted() {
    let (set, values) = (set(), values());
    let text = format!("/a/{}/b/{GH_VALUE}", ph("github"));
    let redacted = set.redact(&text, &values);
    assert_eq!(redacted, "/a/boundary-ph-…-github/b/<redacted>");
    assert!(!redacted.contains(NONCE));
    assert_eq!(
        redact_placeholders(&redacted),
        redacted,
        "redacting twice changes nothing"
    );
}

fn needles() -> Arc<Needles> {
    let set = set();
    Arc::new(body_needles(&set, &values(), &[]).unwrap())
}

/// Feeds `chunks`, returns what was passed on or the credential found.
fn feed(chunks: &[&[u8]]) -> Result<Vec<u8>, Found> {
    let mut scanner = Scanner::new(needles());
    let mut out = Vec::new();
    for c in chunks {
        for piece in scanner.push(&Bytes::copy_from_slice(c))? {
            out.extend_from_slice(&piece);
        }
    }
    out.extend_from_slice(&scanner.finish());
    Ok(out)
}

#[test]
fn a_needle_split_across_chunks_is_found_and_never_passed_on() {
    let body = format!("{{\"text\": \"{}\"}}", ph("github"));
    let bytes = body.as_bytes();
    let at = body.find("boundary-ph").unwrap();
    for split in at + 1..at + PLACEHOLDER_PREFIX.len() {
        let mut scanner = Scanner::new(needles());
        let mut passed = Vec::new();
        for piece in scanner
            .push(&Bytes::copy_from_slice(&bytes[..split]))
            .unwrap()
        {
            passed.extend_from_slice(&piece);
        }
        assert!(
            passed.len() <= at,
            "the start of a possible needle is held back"
        );
        assert_eq!(passed, bytes[..passed.len()]);
        assert_eq!(
            scanner.push(&Bytes::copy_from_slice(&bytes[split..])),
            Err(Found("github".into()))
        );
    }
    // A real value split in two.
    let v = format!("prefix {AN_VALUE} suffix");
    let (a, b) = v.as_bytes().split_at(12);
    assert_eq!(feed(&[a, b]), Err(Found("anthropic".into())));
}

#[test]
fn many_one_byte_chunks_are_scanned_and_passed_on_whole() {
    let clean =
        "a body with boundary-p and sk-ant- and ghp_ but no needle at all, repeated ".repeat(20);
    let chunks: Vec<&[u8]> = clean.as_bytes().chunks(1).collect();
    assert_eq!(
        feed(&chunks).unwrap(),
        clean.as_bytes(),
        "no false positive, nothing lost"
    );
    let leaking = format!("{clean}{GH_VALUE}{clean}");
    let chunks: Vec<&[u8]> = leaking.as_bytes().chunks(1).collect();
    assert_eq!(feed(&chunks), Err(Found("github".into())));
    let chunks: Vec<&[u8]> = leaking.as_bytes().chunks(7).collect();
    assert_eq!(feed(&chunks), Err(Found("github".into())));
}

#[test]
fn the_scanner_holds_back_less_than_the_longest_needle() {
    let mut scanner = Scanner::new(needles());
    let longest = GH_VALUE
        .len()
        .max(AN_VALUE.len())
        .max(PLACEHOLDER_PREFIX.len());
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    for _ in 0..8 {
        let passed: usize = scanner.push(&big).unwrap().iter().map(Bytes::len).sum();
        assert!(passed >= big.len() - longest);
        assert!(scanner.held() < longest);
    }
}

#[test]
fn bound_requests_scan_for_other_values_only() {
    let (set, values) = (set(), values());
    let needles = body_needles(&set, &values, &["github"]).unwrap();
    let mut scanner = Scanner::new(Arc::new(needles));
    assert!(scanner.push(&Bytes::from(ph("github"))).is_ok());
    assert!(scanner.push(&Bytes::from(GH_VALUE)).is_ok());
    assert_eq!(
        scanner.push(&Bytes::from(AN_VALUE)),
        Err(Found("anthropic".into()))
    );
    assert!(body_needles(&CredentialSet::default(), &values, &[]).is_none());
}
