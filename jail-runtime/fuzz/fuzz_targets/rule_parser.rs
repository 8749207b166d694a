//! Rule strings (Coder's grammar, both forms) and request matching: no panic, errors carry a
//! column inside the rule, and every suggestion the engine makes parses.
#![no_main]

use boundary_api::Mode;
use boundary_api::rules::{self, Host, HttpRequest, RequestPath, RuleSet, RuleSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rule, request) = text.split_once('\n').unwrap_or((text, "GET example.com /"));
    match rules::parse_rule(rule) {
        Ok(_) => {}
        Err(e) => assert!(
            e.column >= 1 && e.column <= rule.chars().count() + 1,
            "column {} for {rule:?}",
            e.column
        ),
    }
    let allow = vec![rule.to_owned()];
    let Ok(compiled) = rules::compile(RuleSource {
        field_prefix: "--",
        allow: &allow,
        ..RuleSource::default()
    }) else {
        return;
    };
    let set = RuleSet::new(compiled, Mode::Enforce);
    let mut parts = request.splitn(3, ' ');
    let (method, host, path) = (
        parts.next().unwrap_or("GET"),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("/"),
    );
    let (Ok(host), Ok(path)) = (Host::parse(host), RequestPath::parse(path)) else {
        return;
    };
    let req = HttpRequest {
        host: &host,
        port: 443,
        method,
        path: &path,
    };
    let allowed = set.check_http(req).is_allow();
    // The same string as a deny rule matches at least what it allows (a deny rule's `*` also
    // covers IP literals), beats an allow-everything rule, and also refuses TCP and passthrough
    // to that host and port.
    let deny = vec![rule.to_owned()];
    let everything = vec![
        "domain=*".to_owned(),
        "domain=0.0.0.0/0".to_owned(),
        "domain=::/0".to_owned(),
    ];
    let denying = RuleSet::new(
        rules::compile(RuleSource {
            field_prefix: "--",
            deny: &deny,
            allow: &everything,
            ..RuleSource::default()
        })
        .expect("a rule that compiles as an allow rule compiles as a deny rule"),
        Mode::Enforce,
    );
    let verdict = denying.check_http(req);
    if allowed {
        assert!(
            verdict.deny_rule().is_some(),
            "{rule:?} allows but does not deny {request:?}"
        );
    }
    if verdict.deny_rule().is_some() {
        assert!(!denying.check_tcp(&host, 443).is_allow());
        assert!(!denying.check_passthrough(&host, 443).is_allow());
    }
    for suggestion in rules::suggest(req) {
        let allow = vec![suggestion.clone()];
        let compiled = rules::compile(RuleSource {
            field_prefix: "--",
            allow: &allow,
            ..RuleSource::default()
        })
        .unwrap_or_else(|e| panic!("suggestion {suggestion:?} does not parse: {e}"));
        // A suggested rule allows the request it was made for.
        if method.bytes().all(|b| b.is_ascii_uppercase()) && !method.is_empty() {
            assert!(
                RuleSet::new(compiled, Mode::Enforce)
                    .check_http(req)
                    .is_allow(),
                "{suggestion:?} does not allow its request"
            );
        }
    }
});
