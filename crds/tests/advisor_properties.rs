//! Properties of the advisor on generated audit records (the fuzz target `advisor` checks the
//! same on arbitrary bytes): whatever the records, the output parses as a policy file,
//! compiles, allows every request it was made from, and does not depend on their order.

use boundary_api::Mode;
use boundary_api::advisor::{self, Decision, Kind, Line, Options};
use boundary_api::rules::{Host, HttpRequest, RequestPath, RuleSet, Verdict};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = String> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]);
    let host = (
        prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "x-1", "_srv"]),
        prop::sample::select(vec![
            "example.com",
            "cdn.example.com",
            "com",
            "co.uk",
            "s3.amazonaws.com",
            "pastebin.com",
            "github.io",
            "test",
        ]),
    )
        .prop_map(|(l, p)| format!("{l}.{p}"));
    let host = prop_oneof![
        4 => host,
        1 => prop::sample::select(vec!["10.0.0.5", "::1", "192.168.1.1"]).prop_map(str::to_owned),
    ];
    let segment = prop::sample::select(vec![
        "v1", "items", "1", "2", "3", "4", "5", "6", "7", "x", "", "*", "%2A", "a%20b", "..", ".",
        "%41",
    ]);
    let path = prop::collection::vec(segment, 0..5).prop_map(|s| format!("/{}", s.join("/")));
    let decision = prop::sample::select(vec!["allow", "deny", "would-deny"]);
    let denied_by = prop::sample::select(vec!["", "", "", "deny-rule", "private-address-guard"]);
    let scheme = prop::sample::select(vec!["https", "https", "http", "tcp", "tls"]);
    let port = prop::sample::select(vec![80_u16, 443, 8443, 5432]);
    let second = 0_u32..60;
    (
        method, host, path, decision, denied_by, scheme, port, second,
    )
        .prop_map(
            |(method, host, path, decision, denied_by, scheme, port, second)| {
                let mut r = serde_json::json!({
                    "time": format!("2026-01-01T00:00:{second:02}.5Z"), "session": "s",
                    "scheme": scheme, "host": host, "port": port, "decision": decision,
                    "mode": "Audit", "bytes_in": 0, "bytes_out": 0, "duration_ms": 0,
                });
                if scheme.starts_with("http") {
                    r["method"] = method.into();
                    r["path"] = path.into();
                }
                if !denied_by.is_empty() {
                    r["denied_by"] = denied_by.into();
                    r["rule"] = "spec.deny[0]: domain=x".into();
                }
                r.to_string()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn the_output_is_a_policy_that_allows_what_it_was_made_from(
        lines in prop::collection::vec(record(), 1..40),
        all in any::<bool>(),
        collapse in 1_usize..4,
    ) {
        let observations: Vec<_> = lines
            .iter()
            .filter_map(|l| match advisor::parse_line(l) {
                Line::Record(o) => Some(o),
                _ => None,
            })
            .collect();
        let options = Options { all, collapse, ..Options::default() };
        let suggestion = advisor::suggest(&observations, &options);
        let yaml = &suggestion.yaml;
        let file = boundary_api::policy_file::parse(yaml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        let rules = file.policies[0]
            .entry
            .compile()
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        let set = RuleSet::new(rules, Mode::Enforce);
        for o in &suggestion.allowed {
            let host = Host::parse(&o.host).unwrap();
            let verdict = match o.kind {
                Kind::Http => {
                    let path = RequestPath::parse(o.path.as_deref().unwrap()).unwrap();
                    set.check_http(HttpRequest::new(&host, o.port, o.method.as_deref().unwrap(), &path))
                }
                Kind::Tcp => set.check_tcp(&host, o.port),
                Kind::Tls if o.decision == Decision::Allow => set.check_passthrough(&host, o.port),
                // Refused before any request: an HTTP rule for the host is what it lacked.
                Kind::Tls if set.may_allow_http(&host, o.port) => continue,
                Kind::Tls => Verdict::Deny(Vec::new()),
            };
            prop_assert!(matches!(verdict, Verdict::Allow(_)), "{:?}: {:?}\n{}", o, verdict, yaml);
        }
        let mut reversed = observations.clone();
        reversed.reverse();
        prop_assert_eq!(&advisor::suggest(&reversed, &options).yaml, yaml);
    }
}
