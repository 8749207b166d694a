//! The advisor: any bytes as audit lines (each line also tried with a `kubectl logs` prefix and
//! as the `host`/`path`/`method` of a record), then `suggest` over what was read, in both modes
//! and with a small collapse threshold. No panic; the output always parses as a policy file,
//! compiles, and allows every request it was made from.
#![no_main]

use boundary_api::Mode;
use boundary_api::advisor::{self, Decision, Kind, Line, Options};
use boundary_api::rules::{Host, HttpRequest, RequestPath, RuleSet, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut observations = Vec::new();
    for line in text.lines() {
        let mut fields = line.splitn(3, ' ');
        let (method, host, path) = (
            fields.next().unwrap_or(""),
            fields.next().unwrap_or(""),
            fields.next().unwrap_or("/"),
        );
        let record = serde_json::json!({
            "time": "2026-01-01T00:00:00Z", "scheme": if method == "TCP" { "tcp" } else { "https" },
            "method": method, "host": host, "port": 443, "path": path, "decision": "would-deny",
        })
        .to_string();
        for candidate in [line.to_owned(), format!("[pod/a/boundary] {line}"), record] {
            if let Line::Record(o) = advisor::parse_line(&candidate) {
                observations.push(o);
            }
        }
    }
    for all in [false, true] {
        let options = Options {
            all,
            collapse: 2,
            ..Options::default()
        };
        let suggestion = advisor::suggest(&observations, &options);
        let file = boundary_api::policy_file::parse(&suggestion.yaml)
            .unwrap_or_else(|e| panic!("{e}\n{}", suggestion.yaml));
        let rules = file.policies[0]
            .entry
            .compile()
            .unwrap_or_else(|e| panic!("{e}\n{}", suggestion.yaml));
        let set = RuleSet::new(rules, Mode::Enforce);
        for o in &suggestion.allowed {
            let host = Host::parse(&o.host).expect("a host the advisor read");
            let verdict = match o.kind {
                Kind::Http => {
                    let path = RequestPath::parse(o.path.as_deref().unwrap_or("/")).unwrap();
                    set.check_http(HttpRequest::new(
                        &host,
                        o.port,
                        o.method.as_deref().unwrap_or("GET"),
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
                "{o:?} not allowed by\n{}",
                suggestion.yaml
            );
        }
    }
});
