//! The audit trail as OCSF 1.3.0 events (`--audit-format ocsf`), for SIEMs that read the Open
//! Cybersecurity Schema Framework. Pure: one JSON line of the project's own format in, one OCSF
//! event out, so both formats hold exactly the same (already redacted) facts.
//!
//! | record | OCSF class | activity |
//! |---|---|---|
//! | decision, `method` and scheme `http`/`https`/`pod-local` | HTTP Activity (4002) | from the method (PATCH and others: 99 Other, named) |
//! | decision, `tcp`/`tls`/`pod-local` connection, CONNECT refusal | Network Activity (4001), outbound | 1 Open (relayed), 5 Refuse (denied) |
//! | `inbound` | Network Activity (4001), inbound | 1 Open, 5 Refuse (nothing listened) |
//! | `unreachable-sidecar` | Network Activity (4001), outbound | 5 Refuse |
//! | `credential-leak` | HTTP Activity (4002) | from the method |
//! | `sidecar-restart` | Application Lifecycle (6002) | 5 Restart |
//! | `audit-dropped`, `policy-missing`, `policy-restored`, `unreachable-sidecar-summary`, others | Base Event (0) | 99 Other, `activity_name` = the kind |
//!
//! Decisions carry the `security_control` profile (`action_id`, `disposition_id`). Whatever OCSF
//! has no attribute for goes verbatim, under the JSON format's names, into `unmapped`
//! (`decision`, `rule`, `denied_by`, `reason`, `mode`, `tier`, `container`, `pod`, `namespace`,
//! `credential`, `leak`, `scheme`, `kind`, ...). The query string is in neither format. OCSF 1.3.0
//! requires `http_response` in HTTP Activity: a request no status was sent for has `code` 0. Its
//! `http_method` enumerates 8 methods: PATCH and others are named by `activity_name` (`Patch`)
//! and `unmapped.method` instead.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value, json};

/// The OCSF schema version of the events.
pub const SCHEMA_VERSION: &str = "1.3.0";
/// The product and vendor name in `metadata.product`.
pub const PRODUCT: &str = "Agent Boundary";

/// OCSF classes used here: `(class_uid, class_name, category_uid, category_name)`.
const HTTP_ACTIVITY: Class = (4002, "HTTP Activity", 4, "Network Activity");
const NETWORK_ACTIVITY: Class = (4001, "Network Activity", 4, "Network Activity");
const APPLICATION_LIFECYCLE: Class = (6002, "Application Lifecycle", 6, "Application Activity");
const BASE_EVENT: Class = (0, "Base Event", 0, "Uncategorized");
type Class = (u32, &'static str, u32, &'static str);

/// `severity_id`: Informational.
const INFORMATIONAL: u8 = 1;
/// `severity_id`: Medium.
const MEDIUM: u8 = 3;

/// One audit line (the JSON format's object) as an OCSF event.
pub fn convert(record: Value) -> Value {
    let Value::Object(fields) = record else {
        return base_event("unknown", INFORMATIONAL, Fields::new(Map::new()));
    };
    let fields = Fields::new(fields);
    if let Some(kind) = fields.str("kind") {
        let kind = kind.to_owned();
        return event(&kind, fields);
    }
    if fields.str("event") == Some("audit-dropped") {
        return base_event("audit-dropped", MEDIUM, fields);
    }
    if fields.has("decision") && fields.has("scheme") {
        return decision(fields);
    }
    base_event("unknown", INFORMATIONAL, fields)
}

/// A record's fields: what is taken out for an OCSF attribute is gone, the rest is `unmapped`.
struct Fields(Map<String, Value>);

impl Fields {
    fn new(map: Map<String, Value>) -> Fields {
        Fields(map)
    }
    /// The HTTP method (`default` when absent) and its activity; taken out only when OCSF
    /// 1.3.0's `http_method` can carry it, else it stays in `unmapped`.
    fn take_method(&mut self, default: &str) -> (String, (u32, String)) {
        let method = self.str("method").unwrap_or(default).to_owned();
        if OCSF_METHODS.contains(&method.as_str()) {
            self.0.remove("method");
        }
        let activity = http_activity(&method);
        (method, activity)
    }
    fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| !v.is_null())
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }
    /// Removes `key`, returning it when it is a string.
    fn take_str(&mut self, key: &str) -> Option<String> {
        match self.0.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }
    /// Removes `key`, returning it when it is an unsigned number.
    fn take_u64(&mut self, key: &str) -> Option<u64> {
        self.0.remove(key).and_then(|v| v.as_u64())
    }
}

/// What every event has: class, activity, time, severity, metadata; then `unmapped`.
fn skeleton(
    (class_uid, class_name, category_uid, category_name): Class,
    (activity_id, activity_name): (u32, &str),
    severity_id: u8,
    fields: &mut Fields,
    profiles: &[&str],
) -> Map<String, Value> {
    let time = fields
        .take_str("time")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(jiff::Timestamp::now)
        .as_millisecond();
    let mut metadata = json!({
        "version": SCHEMA_VERSION,
        "product": {
            "name": PRODUCT,
            "vendor_name": PRODUCT,
            "version": env!("CARGO_PKG_VERSION"),
        },
        "log_name": "audit",
    });
    if let Some(session) = fields.take_str("session") {
        metadata["uid"] = Value::String(session);
    }
    if !profiles.is_empty() {
        metadata["profiles"] = json!(profiles);
    }
    let mut event = Map::new();
    event.insert("class_uid".into(), json!(class_uid));
    event.insert("class_name".into(), json!(class_name));
    event.insert("category_uid".into(), json!(category_uid));
    event.insert("category_name".into(), json!(category_name));
    event.insert("activity_id".into(), json!(activity_id));
    event.insert("activity_name".into(), json!(activity_name));
    event.insert(
        "type_uid".into(),
        json!(u64::from(class_uid) * 100 + u64::from(activity_id)),
    );
    event.insert(
        "type_name".into(),
        json!(format!("{class_name}: {activity_name}")),
    );
    event.insert("time".into(), json!(time));
    event.insert("severity_id".into(), json!(severity_id));
    event.insert("severity".into(), json!(severity_name(severity_id)));
    event.insert("metadata".into(), metadata);
    event
}

fn severity_name(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        _ => "Other",
    }
}

/// `action_id`/`disposition_id` (`security_control` profile) and `status_id`.
fn outcome(event: &mut Map<String, Value>, blocked: bool, failed: bool) {
    let (action, disposition) = if blocked {
        ((2, "Denied"), (2, "Blocked"))
    } else {
        ((1, "Allowed"), (1, "Allowed"))
    };
    event.insert("action_id".into(), json!(action.0));
    event.insert("action".into(), json!(action.1));
    event.insert("disposition_id".into(), json!(disposition.0));
    event.insert("disposition".into(), json!(disposition.1));
    let status = if failed {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    event.insert("status_id".into(), json!(status.0));
    event.insert("status".into(), json!(status.1));
}

/// The rest of the record, verbatim.
fn finish(mut event: Map<String, Value>, fields: Fields) -> Value {
    let unmapped: Map<String, Value> = fields.0.into_iter().filter(|(_, v)| !v.is_null()).collect();
    if !unmapped.is_empty() {
        event.insert("unmapped".into(), Value::Object(unmapped));
    }
    Value::Object(event)
}

/// `activity_id` and name of an HTTP method (HTTP Activity's enumeration).
pub fn http_activity(method: &str) -> (u32, String) {
    let id = match method {
        "CONNECT" => 1,
        "DELETE" => 2,
        "GET" => 3,
        "HEAD" => 4,
        "OPTIONS" => 5,
        "POST" => 6,
        "PUT" => 7,
        "TRACE" => 8,
        _ => 99,
    };
    let mut name = method.to_ascii_lowercase();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    (id, name)
}

/// Whether `name` is an OCSF `hostname_t` (dot-separated labels of letters, digits and inner
/// hyphens): names that are not (`_srv.example`, IPv6) go to `name` or `ip` instead.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// A `network_endpoint`: `hostname` when the host is one, `ip` when it is an address, else
/// `name`; `port`.
fn endpoint(host: &str, port: Option<u64>) -> Value {
    let mut ep = Map::new();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = bare.parse::<IpAddr>().ok();
    if let Some(ip) = ip {
        ep.insert("ip".into(), json!(ip.to_string()));
    }
    if is_hostname(host) {
        ep.insert("hostname".into(), json!(host));
    } else if ip.is_none() {
        ep.insert("name".into(), json!(host));
    }
    if let Some(port) = port {
        ep.insert("port".into(), json!(port));
    }
    Value::Object(ep)
}

/// The methods OCSF 1.3.0's `http_method` enumerates (the others, PATCH among them, have no
/// `http_method`: `activity_name` and `unmapped.method` name them).
const OCSF_METHODS: [&str; 8] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "TRACE",
];

/// `http_request`: method and URL (scheme, host, port, path; never the query).
fn http_request(
    method: &str,
    scheme: Option<&str>,
    host: &str,
    port: Option<u64>,
    path: Option<String>,
) -> Value {
    let mut url = Map::new();
    if let Some(scheme) = scheme {
        url.insert("scheme".into(), json!(scheme));
    }
    if is_hostname(host) {
        url.insert("hostname".into(), json!(host));
    }
    if let Some(port) = port {
        url.insert("port".into(), json!(port));
    }
    if let Some(path) = path {
        url.insert("path".into(), json!(path));
    }
    let mut request = Map::new();
    if OCSF_METHODS.contains(&method) {
        request.insert("http_method".into(), json!(method));
    }
    request.insert("url".into(), Value::Object(url));
    Value::Object(request)
}

fn traffic_and_duration(event: &mut Map<String, Value>, fields: &mut Fields) {
    let bytes_in = fields.take_u64("bytes_in");
    let bytes_out = fields.take_u64("bytes_out");
    if bytes_in.is_some() || bytes_out.is_some() {
        event.insert(
            "traffic".into(),
            json!({"bytes_in": bytes_in.unwrap_or(0), "bytes_out": bytes_out.unwrap_or(0)}),
        );
    }
    if let Some(ms) = fields.take_u64("duration_ms") {
        event.insert("duration".into(), json!(ms));
    }
}

/// A decision record (`audit::Record`).
fn decision(mut fields: Fields) -> Value {
    let decision = fields.str("decision").unwrap_or("deny").to_owned();
    let denied = decision == "deny";
    let flagged = decision != "allow";
    // An allowed connection with a reason failed on its way (upstream unreachable, guard).
    let failed = denied || (!flagged && fields.has("reason"));
    let severity = if flagged { MEDIUM } else { INFORMATIONAL };
    let scheme = fields.str("scheme").unwrap_or_default().to_owned();
    let host = fields.take_str("host").unwrap_or_default();
    let port = fields.take_u64("port");
    let http = fields.has("method") && matches!(scheme.as_str(), "http" | "https" | "pod-local");
    let mut event = if http {
        let (method, (id, name)) = fields.take_method("");
        let mut event = skeleton(
            HTTP_ACTIVITY,
            (id, &name),
            severity,
            &mut fields,
            &["security_control"],
        );
        // A pod-local request is plain HTTP to the pod's loopback (the explicit proxy).
        let url_scheme = if scheme == "pod-local" {
            "http"
        } else {
            scheme.as_str()
        };
        let path = fields.take_str("path");
        event.insert(
            "http_request".into(),
            http_request(&method, Some(url_scheme), &host, port, path),
        );
        let code = fields.take_u64("status").unwrap_or(0);
        event.insert("http_response".into(), json!({"code": code}));
        event
    } else {
        let activity = if denied { (5, "Refuse") } else { (1, "Open") };
        let mut event = skeleton(
            NETWORK_ACTIVITY,
            activity,
            severity,
            &mut fields,
            &["security_control"],
        );
        event.insert(
            "connection_info".into(),
            json!({"protocol_name": "tcp", "direction_id": 2, "direction": "Outbound"}),
        );
        event
    };
    event.insert("dst_endpoint".into(), endpoint(&host, port));
    traffic_and_duration(&mut event, &mut fields);
    outcome(&mut event, denied, failed);
    finish(event, fields)
}

/// An event record (`audit::EventRecord`): `kind` says which.
fn event(kind: &str, mut fields: Fields) -> Value {
    match kind {
        "inbound" => inbound(fields),
        "unreachable-sidecar" => {
            let mut event = skeleton(
                NETWORK_ACTIVITY,
                (5, "Refuse"),
                MEDIUM,
                &mut fields,
                &["security_control"],
            );
            event.insert(
                "connection_info".into(),
                json!({"protocol_name": "tcp", "direction_id": 2, "direction": "Outbound"}),
            );
            let host = fields.take_str("host").unwrap_or_default();
            let port = fields.take_u64("port");
            event.insert("dst_endpoint".into(), endpoint(&host, port));
            outcome(&mut event, true, true);
            finish(event, fields)
        }
        "credential-leak" => {
            let (method, (id, name)) = fields.take_method("OTHER");
            let mut event = skeleton(
                HTTP_ACTIVITY,
                (id, &name),
                MEDIUM,
                &mut fields,
                &["security_control"],
            );
            let host = fields.take_str("host").unwrap_or_default();
            let port = fields.take_u64("port");
            let path = fields.take_str("path");
            event.insert(
                "http_request".into(),
                http_request(&method, None, &host, port, path),
            );
            // Found in the body after the upstream answered: the proxy cut the exchange short.
            event.insert("http_response".into(), json!({"code": 0}));
            event.insert("dst_endpoint".into(), endpoint(&host, port));
            outcome(&mut event, true, true);
            finish(event, fields)
        }
        "sidecar-restart" => {
            // A new CA breaks the HTTPS of jails still running: worth a look.
            let severity = if fields.str("ca") == Some("new") {
                MEDIUM
            } else {
                INFORMATIONAL
            };
            let mut event = skeleton(
                APPLICATION_LIFECYCLE,
                (5, "Restart"),
                severity,
                &mut fields,
                &[],
            );
            event.insert(
                "app".into(),
                json!({"name": PRODUCT, "vendor_name": PRODUCT, "version": env!("CARGO_PKG_VERSION")}),
            );
            event.insert("status_id".into(), json!(1));
            event.insert("status".into(), json!("Success"));
            finish(event, fields)
        }
        "policy-missing" | "unreachable-sidecar-summary" => {
            let kind = kind.to_owned();
            base_event(&kind, MEDIUM, fields)
        }
        other => {
            let kind = other.to_owned();
            base_event(&kind, INFORMATIONAL, fields)
        }
    }
}

/// An `inbound` event: a connection into the jail (`boundary run --inbound-port`).
fn inbound(mut fields: Fields) -> Value {
    let refused = fields.0.get("refused").and_then(Value::as_bool) == Some(true);
    let activity = if refused { (5, "Refuse") } else { (1, "Open") };
    let mut event = skeleton(
        NETWORK_ACTIVITY,
        activity,
        INFORMATIONAL,
        &mut fields,
        &["security_control"],
    );
    event.insert(
        "connection_info".into(),
        json!({"protocol_name": "tcp", "direction_id": 1, "direction": "Inbound"}),
    );
    if let Some(peer) = fields
        .str("peer")
        .and_then(|p| p.parse::<SocketAddr>().ok())
    {
        event.insert(
            "src_endpoint".into(),
            json!({"ip": peer.ip().to_string(), "port": peer.port()}),
        );
    }
    // The server in the jail, on its loopback (see `boundary run --inbound-port`).
    event.insert(
        "dst_endpoint".into(),
        json!({"ip": "127.0.0.1", "port": fields.take_u64("port").unwrap_or(0)}),
    );
    traffic_and_duration(&mut event, &mut fields);
    outcome(&mut event, false, refused);
    finish(event, fields)
}

/// A Base Event (class 0): activity 99 Other, named by the record's kind.
fn base_event(kind: &str, severity: u8, mut fields: Fields) -> Value {
    let event = skeleton(BASE_EVENT, (99, kind), severity, &mut fields, &[]);
    // The kind stays in `unmapped` too (`kind`, or `event` for `audit-dropped`).
    finish(event, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(extra: &Value) -> Value {
        let mut base = json!({
            "time": "2026-01-02T03:04:05.678Z",
            "session": "0123456789abcdef",
            "pod": "agent-0",
            "namespace": "team",
            "container": "agent",
            "scheme": "https",
            "host": "api.github.com",
            "port": 443,
            "decision": "allow",
            "mode": "enforce",
            "bytes_in": 10,
            "bytes_out": 20,
            "duration_ms": 7,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    #[test]
    fn http_methods_map_to_activities() {
        let table = [
            ("CONNECT", 1, "Connect"),
            ("DELETE", 2, "Delete"),
            ("GET", 3, "Get"),
            ("HEAD", 4, "Head"),
            ("OPTIONS", 5, "Options"),
            ("POST", 6, "Post"),
            ("PUT", 7, "Put"),
            ("TRACE", 8, "Trace"),
            ("PATCH", 99, "Patch"),
            ("PROPFIND", 99, "Propfind"),
        ];
        for (method, id, name) in table {
            assert_eq!(http_activity(method), (id, name.to_owned()), "{method}");
            let e = convert(record(
                &json!({"method": method, "path": "/x", "status": 200}),
            ));
            assert_eq!(e["activity_id"], id, "{method}");
            assert_eq!(e["type_uid"], 400_200 + id, "{method}");
            assert_eq!(e["activity_name"], name, "{method}");
            if id == 99 {
                // Not in OCSF 1.3.0's enumeration: named in `unmapped` instead.
                assert!(e["http_request"].get("http_method").is_none(), "{method}");
                assert_eq!(e["unmapped"]["method"], method);
            } else {
                assert_eq!(e["http_request"]["http_method"], method);
                assert!(e["unmapped"].get("method").is_none(), "{method}");
            }
        }
    }

    #[test]
    fn decisions_map_to_action_disposition_severity_and_status() {
        // (decision, with a reason, action, disposition, severity, status)
        let table = [
            ("allow", false, 1, 1, 1, 1),
            ("allow", true, 1, 1, 1, 2),
            ("would-deny", true, 1, 1, 3, 1),
            ("deny", true, 2, 2, 3, 2),
        ];
        for (decision, reason, action, disposition, severity, status) in table {
            let reason = if reason {
                json!("because")
            } else {
                Value::Null
            };
            for extra in [
                json!({"decision": decision, "reason": reason, "method": "GET", "status": 403}),
                json!({"decision": decision, "reason": reason, "scheme": "tcp"}),
            ] {
                let e = convert(record(&extra));
                assert_eq!(e["action_id"], action, "{extra}");
                assert_eq!(e["disposition_id"], disposition, "{extra}");
                assert_eq!(e["severity_id"], severity, "{extra}");
                assert_eq!(e["status_id"], status, "{extra}");
                assert_eq!(e["unmapped"]["decision"], decision, "{extra}");
                assert_eq!(e["metadata"]["profiles"], json!(["security_control"]));
            }
        }
    }

    #[test]
    fn an_http_request_is_http_activity_without_its_query() {
        let e = convert(record(&json!({
            "method": "POST", "path": "/repos/acme/x", "status": 201,
            "rule": "domain=api.github.com", "credential": "github", "tier": "userns",
        })));
        assert_eq!(e["class_uid"], 4002);
        assert_eq!(e["category_uid"], 4);
        assert_eq!(e["time"], 1_767_323_045_678_i64);
        assert_eq!(
            e["http_request"],
            json!({"http_method": "POST", "url": {"scheme": "https", "hostname": "api.github.com", "port": 443, "path": "/repos/acme/x"}})
        );
        assert_eq!(e["http_response"], json!({"code": 201}));
        assert_eq!(
            e["dst_endpoint"],
            json!({"hostname": "api.github.com", "port": 443})
        );
        assert_eq!(e["traffic"], json!({"bytes_in": 10, "bytes_out": 20}));
        assert_eq!(e["duration"], 7);
        assert_eq!(e["metadata"]["uid"], "0123456789abcdef");
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert_eq!(e["metadata"]["product"]["name"], "Agent Boundary");
        assert_eq!(
            e["unmapped"],
            json!({"decision": "allow", "rule": "domain=api.github.com", "credential": "github",
                   "tier": "userns", "mode": "enforce", "scheme": "https", "container": "agent",
                   "pod": "agent-0", "namespace": "team"})
        );
        assert!(!e.to_string().contains('?'));
    }

    #[test]
    fn no_status_sent_is_code_zero() {
        let e = convert(record(&json!({"method": "GET", "path": "/"})));
        assert_eq!(e["http_response"], json!({"code": 0}));
    }

    #[test]
    fn connections_are_network_activity() {
        // (scheme, method, decision, activity)
        let table = [
            ("tcp", None, "allow", 1),
            ("tls", None, "allow", 1),
            ("tls", None, "deny", 5),
            ("tcp", Some("CONNECT"), "deny", 5),
            ("pod-local", None, "would-deny", 1),
        ];
        for (scheme, method, decision, activity) in table {
            let e = convert(record(
                &json!({"scheme": scheme, "method": method, "decision": decision, "status": method.map(|_| 403)}),
            ));
            assert_eq!(e["class_uid"], 4001, "{scheme} {method:?}");
            assert_eq!(e["activity_id"], activity, "{scheme} {method:?}");
            assert_eq!(e["type_uid"], 400_100 + activity);
            assert_eq!(e["connection_info"]["direction_id"], 2);
            assert_eq!(e["connection_info"]["protocol_name"], "tcp");
            assert_eq!(e["unmapped"]["scheme"], scheme);
            assert_eq!(e["unmapped"]["method"], json!(method));
        }
    }

    #[test]
    fn endpoints_name_hosts_and_addresses_as_ocsf_types_allow() {
        let table = [
            (
                "api.github.com",
                json!({"hostname": "api.github.com", "port": 1}),
            ),
            (
                "10.0.0.1",
                json!({"hostname": "10.0.0.1", "ip": "10.0.0.1", "port": 1}),
            ),
            ("[::1]", json!({"ip": "::1", "port": 1})),
            ("_srv.example", json!({"name": "_srv.example", "port": 1})),
            ("unknown", json!({"hostname": "unknown", "port": 1})),
        ];
        for (host, want) in table {
            assert_eq!(endpoint(host, Some(1)), want, "{host}");
        }
        assert!(!is_hostname("a..b"));
        assert!(!is_hostname("-a.b"));
        assert!(!is_hostname(""));
    }

    #[test]
    fn events_map_to_their_classes() {
        let base = |kind: &str, extra: Value| {
            let mut v = json!({"time": "2026-01-02T03:04:05Z", "session": "s", "kind": kind});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            convert(v)
        };
        // (kind, fields, class, activity, severity)
        let table = [
            (
                "inbound",
                json!({"peer": "10.1.2.3:4567", "port": 8080, "bytes_in": 1, "bytes_out": 2, "duration_ms": 3}),
                4001,
                1,
                1,
            ),
            (
                "inbound",
                json!({"peer": "10.1.2.3:4567", "port": 8080, "refused": true, "bytes_in": 0, "bytes_out": 0, "duration_ms": 0}),
                4001,
                5,
                1,
            ),
            (
                "unreachable-sidecar",
                json!({"decision": "deny", "host": "example.com", "port": 443, "reason": "r"}),
                4001,
                5,
                3,
            ),
            (
                "credential-leak",
                json!({"decision": "deny", "host": "example.com", "port": 443, "method": "PUT", "path": "/p", "leak": {"credential": "c", "where": "body"}}),
                4002,
                7,
                3,
            ),
            (
                "sidecar-restart",
                json!({"ca": "new", "jails": []}),
                6002,
                5,
                3,
            ),
            (
                "sidecar-restart",
                json!({"ca": "reused", "jails": []}),
                6002,
                5,
                1,
            ),
            (
                "policy-missing",
                json!({"file": "/f", "kept": "deny-all"}),
                0,
                99,
                3,
            ),
            ("policy-restored", json!({"file": "/f"}), 0, 99, 1),
            (
                "unreachable-sidecar-summary",
                json!({"refused": 3}),
                0,
                99,
                3,
            ),
        ];
        for (kind, extra, class, activity, severity) in table {
            let e = base(kind, extra.clone());
            assert_eq!(e["class_uid"], class, "{kind} {extra}");
            assert_eq!(e["activity_id"], activity, "{kind} {extra}");
            assert_eq!(e["type_uid"], class * 100 + activity, "{kind}");
            assert_eq!(e["severity_id"], severity, "{kind} {extra}");
            assert_eq!(e["unmapped"]["kind"], kind);
        }
        let inbound = base("inbound", json!({"peer": "10.1.2.3:4567", "port": 8080}));
        assert_eq!(
            inbound["src_endpoint"],
            json!({"ip": "10.1.2.3", "port": 4567})
        );
        assert_eq!(inbound["connection_info"]["direction_id"], 1);
        let leak = base(
            "credential-leak",
            json!({"host": "h.test", "port": 443, "method": "PUT", "leak": {"credential": "c", "where": "body"}}),
        );
        assert_eq!(
            leak["unmapped"]["leak"],
            json!({"credential": "c", "where": "body"})
        );
        assert_eq!(leak["action_id"], 2);
        let missing = base("policy-missing", json!({}));
        assert_eq!(missing["activity_name"], "policy-missing");
    }

    #[test]
    fn the_drop_report_is_a_base_event() {
        let e = convert(
            json!({"event": "audit-dropped", "dropped_total": 4, "time": "2026-01-02T03:04:05Z"}),
        );
        assert_eq!(e["class_uid"], 0);
        assert_eq!(e["activity_name"], "audit-dropped");
        assert_eq!(
            e["unmapped"],
            json!({"event": "audit-dropped", "dropped_total": 4})
        );
        assert_eq!(e["severity_id"], 3);
    }
}
