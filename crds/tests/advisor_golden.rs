//! Golden tests of the advisor on recorded audit files (`tests/golden/advisor/`):
//!
//! * `audit-run.jsonl`: `boundary run --mode audit --deny domain=pastebin.com` with no allow
//!   rule, curl and python3 in the jail against loopback servers (`--resolve` names), plain
//!   HTTP and a plain TCP connection;
//! * `enforce-run.jsonl`: the same agent in Enforce with `--allow 'domain=api.example.test
//!   method=GET' --preset npm`;
//! * `kubectl-logs.txt`: the audit run's lines as `kubectl logs --prefix --timestamps` of two
//!   sidecars prints them, with a sidecar log line and an event line between them;
//! * `audit-run.ocsf.jsonl`: the audit run's records in the OCSF shape.
//!
//! The same records in every form, and in any order, give the same bytes. Every policy reads
//! back as a policy file and allows every request it was made from. `UPDATE_GOLDEN=1`
//! rewrites the `.yaml` files.

use std::path::PathBuf;

use boundary_api::Mode;
use boundary_api::advisor::{self, Decision, Kind, Line, Observation, Options};
use boundary_api::rules::{Host, HttpRequest, RequestPath, RuleSet, Verdict};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/advisor")
}

fn read(name: &str) -> (Vec<Observation>, usize) {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    let mut out = Vec::new();
    let mut not_records = 0;
    for line in text.lines() {
        match advisor::parse_line(line) {
            Line::Record(o) => out.push(o),
            Line::Ignored => {}
            Line::NotARecord => not_records += 1,
        }
    }
    (out, not_records)
}

fn options(all: bool) -> Options {
    Options {
        name: "agent".into(),
        namespace: Some("agents".into()),
        pod_selector: [("app".to_owned(), "agent".to_owned())].into(),
        all,
        ..Options::default()
    }
}

fn golden(name: &str, actual: &str) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} is stale: UPDATE_GOLDEN=1 cargo nextest run -p boundary-api --test advisor_golden",
        path.display()
    );
}

/// The policy allows every observation it was made from.
fn allows_all(yaml: &str, allowed: &[Observation]) {
    let file = boundary_api::policy_file::parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let rules = file.policies[0].entry.compile().unwrap();
    let set = RuleSet::new(rules, Mode::Enforce);
    assert!(!allowed.is_empty());
    for o in allowed {
        let host = Host::parse(&o.host).unwrap();
        let verdict = match o.kind {
            Kind::Http => {
                let path = RequestPath::parse(o.path.as_deref().unwrap()).unwrap();
                set.check_http(HttpRequest::new(
                    &host,
                    o.port,
                    o.method.as_deref().unwrap(),
                    &path,
                ))
            }
            Kind::Tcp => set.check_tcp(&host, o.port),
            Kind::Tls if o.decision == Decision::Allow => set.check_passthrough(&host, o.port),
            // Refused before any request: an HTTP rule for the host is what it lacked.
            Kind::Tls if set.may_allow_http(&host, o.port) => continue,
            Kind::Tls => Verdict::Deny(Vec::new()),
        };
        assert!(
            matches!(verdict, Verdict::Allow(_)),
            "{o:?}: {verdict:?}\n{yaml}"
        );
    }
}

/// A fixed permutation (no randomness in tests): every third, then the rest reversed.
fn shuffled(list: &[Observation]) -> Vec<Observation> {
    let mut out: Vec<Observation> = list.iter().step_by(3).cloned().collect();
    out.extend(
        list.iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, o)| o.clone())
            .rev(),
    );
    out
}

fn check(input: &str, all: bool, output: &str) -> String {
    let (observations, _) = read(input);
    let suggestion = advisor::suggest(&observations, &options(all));
    golden(output, &suggestion.yaml);
    allows_all(&suggestion.yaml, &suggestion.allowed);
    let again = advisor::suggest(&shuffled(&observations), &options(all));
    assert_eq!(again.yaml, suggestion.yaml, "order changed the output");
    suggestion.yaml
}

#[test]
fn an_audit_run_gives_the_rules_it_lacked() {
    let yaml = check("audit-run.jsonl", false, "audit-run.yaml");
    // The deny rule's denial is a comment, the npm preset covers its host, the TCP
    // connection is a tcp rule, seven sibling hosts one wildcard, eight item paths one prefix.
    assert!(yaml.contains("denied by a deny rule (--deny[0]: domain=pastebin.com)"));
    assert!(yaml.contains("    - \"npm\"\n"));
    assert!(yaml.contains("- domain: \"db.example.test\"\n      ports: [15432]"));
    assert!(yaml.contains("domains: [\"*.cdn.example.test\"]"));
    assert!(yaml.contains("\"/v1/items/*\""));
}

#[test]
fn everything_seen_with_all() {
    check("audit-run.jsonl", true, "audit-run-all.yaml");
}

#[test]
fn an_enforce_run_gives_only_what_was_denied() {
    let yaml = check("enforce-run.jsonl", false, "enforce-run.yaml");
    assert!(
        !yaml.contains("\"npm\""),
        "allowed by the preset already:\n{yaml}"
    );
    assert!(!yaml.contains("methods: [\"GET\"]\n      paths: [\"/v1/items/*\""));
}

#[test]
fn kubectl_logs_and_ocsf_of_the_same_run_give_the_same_policy() {
    let (from_logs, not_records) = read("kubectl-logs.txt");
    assert_eq!(not_records, 1, "the sidecar's own log line");
    let (from_ocsf, not_records) = read("audit-run.ocsf.jsonl");
    assert_eq!(not_records, 0);
    let (from_json, _) = read("audit-run.jsonl");
    assert_eq!(from_logs.len(), from_json.len());
    assert_eq!(from_ocsf.len(), from_json.len());
    let expected = advisor::suggest(&from_json, &options(false)).yaml;
    assert_eq!(advisor::suggest(&from_logs, &options(false)).yaml, expected);
    assert_eq!(advisor::suggest(&from_ocsf, &options(false)).yaml, expected);
}
