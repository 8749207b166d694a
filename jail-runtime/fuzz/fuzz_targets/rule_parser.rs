//! Rule strings (Coder's grammar, both forms), header and query conditions, and request
//! matching: no panic, errors carry a column inside the rule (or condition name), every
//! suggestion the engine makes parses, and a rule that allows a request denies it when used as a
//! deny rule (conditions are read strictly for allow and broadly for deny).
//!
//! Input: line 1 a rule string; line 2 `METHOD host target` (the target may carry a query); then
//! lines `h Name: value` (a request header), `H Name=glob` (a header condition) and
//! `Q name=glob` (a query condition) of a structured rule for the request's host.
#![no_main]

use boundary_api::Mode;
use boundary_api::policy::HttpRule;
use boundary_api::rules::{self, Host, HttpRequest, RequestPath, RuleSet, RuleSource, raw_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let rule = lines.next().unwrap_or_default();
    let request = lines.next().unwrap_or("GET example.com /");
    let (mut header_lines, mut conditions) = (Vec::new(), HttpRule::default());
    for line in lines {
        if let Some(h) = line.strip_prefix("h ") {
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            header_lines.push((name, value.trim().as_bytes()));
        } else if let Some(c) = line.strip_prefix("H ") {
            let (name, glob) = c.split_once('=').unwrap_or((c, "*"));
            conditions.headers.insert(name.to_owned(), glob.to_owned());
        } else if let Some(c) = line.strip_prefix("Q ") {
            let (name, glob) = c.split_once('=').unwrap_or((c, "*"));
            conditions.query.insert(name.to_owned(), glob.to_owned());
        }
    }
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
    let target = path;
    let (Ok(host), Ok(path)) = (Host::parse(host), RequestPath::parse(target)) else {
        return;
    };
    let req = HttpRequest {
        host: &host,
        port: 443,
        method,
        path: &path,
        headers: &header_lines,
        query: raw_query(target),
    };
    check_conditions(conditions, req);
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

/// A structured rule with the input's conditions for the request's host: problems name the
/// condition with a column inside it, and what it allows it denies as a deny rule.
fn check_conditions(mut rule: HttpRule, req: HttpRequest<'_>) {
    if rule.headers.is_empty() && rule.query.is_empty() {
        return;
    }
    rule.domains = vec![req.host.to_string()];
    // Over headers and query alike: a header and a query parameter may share a name (a map by
    // name kept only one of them, and a header's column was checked against the query's length).
    let longest = rule
        .headers
        .iter()
        .chain(&rule.query)
        .map(|(n, g)| n.chars().count().max(g.chars().count()))
        .max()
        .unwrap_or(0);
    let allow_rules = [rule.clone()];
    let allowing = match rules::compile(RuleSource {
        field_prefix: "spec.",
        http: &allow_rules,
        ..RuleSource::default()
    }) {
        Ok(compiled) => RuleSet::new(compiled, Mode::Enforce),
        Err(rules::CompileErrors(problems)) => {
            for p in problems {
                let column = p.column.unwrap_or(1);
                assert!(column >= 1 && column <= longest + 1, "{p}");
            }
            return;
        }
    };
    let everything = vec![
        "domain=*".to_owned(),
        "domain=0.0.0.0/0".to_owned(),
        "domain=::/0".to_owned(),
    ];
    let denying = RuleSet::new(
        rules::compile(RuleSource {
            field_prefix: "spec.",
            deny_http: &allow_rules,
            allow: &everything,
            ..RuleSource::default()
        })
        .expect("conditions that compile for an allow rule compile for a deny rule"),
        Mode::Enforce,
    );
    if allowing.check_http(req).is_allow() {
        assert!(
            denying.check_http(req).deny_rule().is_some(),
            "conditions hold for allow but not for deny: {rule:?}"
        );
    }
    // A connection the proxy cannot look into is denied by a deny rule with conditions.
    assert!(!denying.check_tcp(req.host, req.port).is_allow());
}
