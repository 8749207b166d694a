use super::*;

fn record(decision: &str, method: &str, host: &str, port: u16, path: &str) -> String {
    serde_json::json!({
        "time": "2026-01-02T03:04:05.000Z", "session": "s", "scheme": "https",
        "method": method, "host": host, "port": port, "path": path, "decision": decision,
        "mode": "Audit", "bytes_in": 0, "bytes_out": 0, "duration_ms": 0
    })
    .to_string()
}

fn observations(lines: &[String]) -> Vec<Observation> {
    lines
        .iter()
        .filter_map(|l| match parse_line(l) {
            Line::Record(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// The policy's rules, read back as `boundary run --policy` reads the file.
fn read_back(yaml: &str) -> RuleSet {
    let file = crate::policy_file::parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let rules = file.policies[0]
        .entry
        .compile()
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    RuleSet::new(rules, Mode::Enforce)
}

fn assert_allows_all(s: &Suggestion) {
    let set = read_back(&s.yaml);
    for o in &s.allowed {
        assert_eq!(
            verdict(&set, o),
            BaseVerdict::Allowed,
            "{o:?} not allowed by\n{}",
            s.yaml
        );
    }
}

#[test]
fn lines_of_every_shape_are_read_and_the_rest_told_apart() {
    let own = record(
        "would-deny",
        "post",
        "API.Example.com",
        443,
        "/v1/x?token=1",
    );
    let Line::Record(o) = parse_line(&own) else {
        panic!()
    };
    assert_eq!(
        (o.host.as_str(), o.method.as_deref(), o.path.as_deref()),
        ("api.example.com", Some("POST"), Some("/v1/x"))
    );
    assert_eq!(o.decision, Decision::WouldDeny);
    // kubectl logs --prefix --timestamps.
    let prefixed = format!("[pod/agent-0/boundary] 2026-01-02T03:04:05.123456789Z {own}");
    assert_eq!(parse_line(&prefixed), Line::Record(o.clone()));
    assert_eq!(
        parse_line(&format!("2026-01-02T03:04:05Z {own}")),
        Line::Record(o)
    );
    // Events, blanks, logs, garbage.
    assert_eq!(
        parse_line(r#"{"kind":"inbound","port":8080}"#),
        Line::Ignored
    );
    assert_eq!(parse_line("   "), Line::Ignored);
    assert_eq!(parse_line("2026-01-02 INFO started"), Line::NotARecord);
    assert_eq!(
        parse_line(r#"{"level":"INFO","msg":"x"}"#),
        Line::NotARecord
    );
    assert_eq!(parse_line("{not json"), Line::NotARecord);
    assert_eq!(parse_line(r#"junk {"decision":"allow"}"#), Line::NotARecord);
    let bad_port = own.replace("\"port\":443", "\"port\":70000");
    assert_eq!(parse_line(&bad_port), Line::NotARecord);
    // OCSF.
    let ocsf = serde_json::json!({
        "class_uid": 4002, "time": 1_767_323_045_000_i64,
        "http_request": {"http_method": "GET", "url": {"scheme": "https", "hostname": "a.example", "port": 8443, "path": "/p"}},
        "dst_endpoint": {"hostname": "a.example", "port": 8443},
        "unmapped": {"decision": "deny", "denied_by": "deny-rule", "rule": "spec.deny[0]: domain=a.example", "mode": "Enforce"}
    });
    let Line::Record(o) = parse_line(&ocsf.to_string()) else {
        panic!()
    };
    assert_eq!(o.first.as_deref(), Some("2026-01-02T03:04:05.000Z"));
    assert_eq!((o.port, o.denied_by), (8443, Some(DeniedBy::DenyRule)));
    let tcp = serde_json::json!({
        "class_uid": 4001, "connection_info": {"protocol_name": "tcp", "direction_id": 2},
        "dst_endpoint": {"hostname": "db.example", "port": 5432},
        "unmapped": {"decision": "would-deny", "mode": "Audit"}
    });
    let Line::Record(o) = parse_line(&tcp.to_string()) else {
        panic!()
    };
    assert_eq!((o.kind, o.port), (Kind::Tcp, 5432));
    // A method OCSF 1.3.0 does not enumerate: only in `unmapped.method`, as the writer puts it.
    let patch = serde_json::json!({
        "class_uid": 4002, "activity_id": 99, "activity_name": "Patch",
        "http_request": {"url": {"scheme": "https", "hostname": "a.example", "port": 443, "path": "/p"}},
        "dst_endpoint": {"hostname": "a.example", "port": 443},
        "unmapped": {"decision": "would-deny", "method": "PATCH", "mode": "Audit"}
    });
    let Line::Record(o) = parse_line(&patch.to_string()) else {
        panic!("PATCH in OCSF is a record")
    };
    assert_eq!(o.method.as_deref(), Some("PATCH"));
    // Events are about the proxy, not a destination, in either format.
    let unreachable = serde_json::json!({
        "class_uid": 4001, "activity_id": 5,
        "dst_endpoint": {"hostname": "a.example", "port": 443},
        "unmapped": {"kind": "unreachable-sidecar", "decision": "deny"}
    });
    assert_eq!(parse_line(&unreachable.to_string()), Line::Ignored);
    let dropped = serde_json::json!({"class_uid": 0, "unmapped": {"event": "audit-dropped", "dropped_total": 3}});
    assert_eq!(parse_line(&dropped.to_string()), Line::Ignored);
    assert_eq!(
        parse_line(r#"{"event":"audit-dropped","dropped_total":3,"time":"t"}"#),
        Line::Ignored
    );
}

#[test]
fn epoch_milliseconds_become_rfc3339() {
    assert_eq!(input::rfc3339_from_millis(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        input::rfc3339_from_millis(951_782_400_123),
        "2000-02-29T00:00:00.123Z"
    );
    assert_eq!(
        input::rfc3339_from_millis(1_767_323_045_000),
        "2026-01-02T03:04:05.000Z"
    );
}

#[test]
fn the_same_records_in_any_order_give_the_same_bytes_and_allow_them_all() {
    let mut lines = Vec::new();
    for i in 0..8 {
        lines.push(record(
            "would-deny",
            "GET",
            "api.example.com",
            443,
            &format!("/v1/items/{i}"),
        ));
    }
    lines.push(record(
        "would-deny",
        "POST",
        "api.example.com",
        443,
        "/v1/login",
    ));
    lines.push(record(
        "would-deny",
        "GET",
        "api.example.com",
        443,
        "/health",
    ));
    lines.push(record("allow", "GET", "cdn.example.com", 443, "/a.js"));
    let obs = observations(&lines);
    let first = suggest(&obs, &Options::default());
    let mut reversed = obs.clone();
    reversed.reverse();
    assert_eq!(suggest(&reversed, &Options::default()).yaml, first.yaml);
    assert_allows_all(&first);
    assert!(
        first.yaml.contains("paths: [\"/health\", \"/v1/items/*\"]"),
        "{}",
        first.yaml
    );
    assert!(first.yaml.contains("methods: [\"POST\"]"), "{}", first.yaml);
    // Only what was denied: the allowed request is not there.
    assert!(!first.yaml.contains("cdn.example.com"), "{}", first.yaml);
    let all = suggest(
        &obs,
        &Options {
            all: true,
            ..Options::default()
        },
    );
    assert!(all.yaml.contains("cdn.example.com"), "{}", all.yaml);
    assert_allows_all(&all);
}

#[test]
fn sibling_hosts_collapse_but_not_under_a_public_suffix_nor_risky_ones() {
    let mut lines = Vec::new();
    for i in 0..7 {
        lines.push(record(
            "deny",
            "GET",
            &format!("n{i}.cdn.example.com"),
            443,
            "/x",
        ));
        lines.push(record("deny", "GET", &format!("site{i}.com"), 443, "/x"));
        lines.push(record(
            "deny",
            "PUT",
            &format!("b{i}.s3.amazonaws.com"),
            443,
            "/k",
        ));
    }
    let s = suggest(&observations(&lines), &Options::default());
    assert!(
        s.yaml.contains("domains: [\"*.cdn.example.com\"]"),
        "{}",
        s.yaml
    );
    assert!(s.yaml.contains("domains: [\"site3.com\"]"), "{}", s.yaml);
    assert!(
        s.yaml.contains("domains: [\"b3.s3.amazonaws.com\"]"),
        "{}",
        s.yaml
    );
    assert!(!s.yaml.contains("*.s3.amazonaws.com"), "{}", s.yaml);
    assert!(
        s.yaml.contains("# WARNING publish-anywhere: S3"),
        "{}",
        s.yaml
    );
    assert_eq!(s.warnings.len(), 7, "{:#?}", s.warnings);
    assert_allows_all(&s);
}

#[test]
fn presets_cover_their_hosts_and_deny_rules_and_the_guard_are_not_suggested() {
    let mut lines = vec![
        record("would-deny", "GET", "registry.npmjs.org", 443, "/left-pad"),
        record(
            "would-deny",
            "GET",
            "registry.npmjs.org",
            443,
            "/-/left-pad-1.0.tgz",
        ),
        // npm publish: outside the npm preset, so the preset is not used.
        record("would-deny", "GET", "pypi.org", 443, "/simple/requests/"),
        record("would-deny", "PUT", "pypi.org", 443, "/upload"),
    ];
    let mut denied: serde_json::Value =
        serde_json::from_str(&record("deny", "POST", "paste.ee", 443, "/api")).unwrap();
    denied["denied_by"] = "deny-rule".into();
    denied["rule"] = "spec.deny[0]: domain=paste.ee".into();
    lines.push(denied.to_string());
    let mut guarded: serde_json::Value =
        serde_json::from_str(&record("deny", "GET", "db.internal", 8080, "/")).unwrap();
    guarded["denied_by"] = "private-address-guard".into();
    lines.push(guarded.to_string());
    let s = suggest(&observations(&lines), &Options::default());
    assert!(
        s.yaml.contains("  presets:\n    # 2 requests, 2 denied"),
        "{}",
        s.yaml
    );
    assert!(s.yaml.contains("    - \"npm\"\n"), "{}", s.yaml);
    assert!(!s.yaml.contains("registry.npmjs.org"), "{}", s.yaml);
    assert!(s.yaml.contains("domains: [\"pypi.org\"]"), "{}", s.yaml);
    assert!(!s.yaml.contains("\"pypi\""), "{}", s.yaml);
    assert!(
        s.yaml.contains(
            "# - POST paste.ee:443/api: denied by a deny rule (spec.deny[0]: domain=paste.ee); \
             not suggested"
        ),
        "{}",
        s.yaml
    );
    assert!(!s.yaml.contains("domains: [\"paste.ee\"]"), "{}", s.yaml);
    assert!(
        s.yaml.contains("resolve: [{host: \"db.internal\""),
        "{}",
        s.yaml
    );
    assert!(!s.yaml.contains("domains: [\"db.internal\"]"), "{}", s.yaml);
    assert_allows_all(&s);
}

#[test]
fn a_status_is_read_and_the_old_spec_kept_with_the_new_rules_appended() {
    let object: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        r#"
apiVersion: agentboundary.dev/v1alpha1
kind: BoundaryPolicy
metadata: {name: agent, namespace: team}
spec:
  podSelector: {matchLabels: {app: agent}}
  mode: Audit
  deny: ["domain=evil.example"]
  allow: ["domain=api.example.com method=GET"]
  http:
    - domains: [old.example.com]
status:
  deniedDestinations:
    - {host: api.example.com, port: 443, method: POST, pathPrefix: /v1/jobs, decision: would-deny, count: 4, firstSeen: "2026-01-01T00:00:00Z", lastSeen: "2026-01-02T00:00:00Z"}
    - {host: evil.example, port: 443, method: GET, pathPrefix: /, decision: would-deny, count: 2, firstSeen: "2026-01-01T00:00:00Z", lastSeen: "2026-01-01T00:00:00Z"}
    - {host: db.example.com, port: 5432, decision: deny, count: 1, firstSeen: "2026-01-01T00:00:00Z", lastSeen: "2026-01-01T00:00:00Z"}
    - {host: "", port: 1, decision: deny}
"#,
    )
    .unwrap();
    let status: serde_json::Value = serde_json::to_value(object.get("status").unwrap()).unwrap();
    let (obs, bad) = input::denied_destinations(&status);
    assert_eq!((obs.len(), bad), (3, 1));
    let text = serde_yaml_ng::to_string(&object).unwrap();
    let entry = crate::policy_file::parse(&text).unwrap().policies[0]
        .entry
        .clone();
    let spec = object.get("spec").unwrap().as_mapping().unwrap().clone();
    let s = suggest(
        &obs,
        &Options {
            name: "agent".into(),
            base: Some(Base { spec, entry }),
            ..Options::default()
        },
    );
    let y = &s.yaml;
    assert!(y.contains("    matchLabels:\n      app: agent\n"), "{y}");
    assert!(y.contains("  deny:\n    - domain=evil.example\n"), "{y}");
    assert!(
        y.contains("  allow:\n    - domain=api.example.com method=GET\n"),
        "{y}"
    );
    assert!(
        y.contains("  http:\n    - domains:\n      - old.example.com\n"),
        "{y}"
    );
    assert!(
        y.contains("    - domains: [\"api.example.com\"]\n      methods: [\"POST\"]\n      paths: [\"/v1/jobs/*\"]"),
        "{y}"
    );
    assert!(
        y.contains("domain: \"db.example.com\"\n      ports: [5432]"),
        "{y}"
    );
    assert!(
        y.contains("# - GET evil.example:443/: denied by a deny rule"),
        "{y}"
    );
    let set = read_back(y);
    let host = Host::parse("api.example.com").unwrap();
    let path = RequestPath::parse("/v1/jobs/7/run").unwrap();
    assert!(
        set.check_http(HttpRequest::new(&host, 443, "POST", &path))
            .is_allow()
    );
}

#[test]
fn odd_paths_never_make_an_invalid_policy() {
    let lines = vec![
        record("deny", "GET", "a.example", 443, "/x/*/y"),
        record("deny", "GET", "a.example", 443, "/%2A/q"),
        record("deny", "GET", "a.example", 443, "/%41b"),
        record("deny", "GET", "a.example", 443, "/"),
        record("deny", "GET", "a.example", 443, "/a//b/"),
        record("deny", "GET", "b.example", 443, "/*"),
    ];
    let obs = observations(&lines);
    assert_eq!(obs.len(), lines.len());
    let s = suggest(&obs, &Options::default());
    assert_allows_all(&s);
    assert_eq!(
        parse_line(&record("deny", "GET", "a.example", 443, "/%zz/q")),
        Line::NotARecord
    );
}

#[test]
fn a_host_no_rule_can_name_is_left_out_with_a_comment() {
    // Found by the advisor fuzz target: a record for host `t-` made `domains: ["t-"]`, which
    // no policy accepts (no such host can exist).
    let lines = [
        record("would-deny", "GET", "t-", 443, "/"),
        record("would-deny", "GET", "ok.example", 443, "/a"),
    ];
    let s = suggest(&observations(&lines), &Options::default());
    assert!(!s.yaml.contains("\"t-\"]"), "{}", s.yaml);
    assert!(
        s.yaml.contains("# - t-: no rule can name this host"),
        "{}",
        s.yaml
    );
    assert!(s.allowed.iter().all(|o| o.host != "t-"));
    assert_allows_all(&s);
}
