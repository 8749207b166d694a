//! Reading what the agent did: audit lines (this project's JSON, OCSF), `kubectl logs` output
//! (with `--prefix` and `--timestamps`), and a policy's `status.deniedDestinations`.

use serde_json::Value;

use crate::rules::Host;

/// What kind of traffic a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An HTTP request (plain or intercepted TLS).
    Http,
    /// A TLS connection seen by its server name only (passthrough, or refused before any
    /// request).
    Tls,
    /// A plain TCP connection.
    Tcp,
}

/// The proxy's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Allowed by a rule.
    Allow,
    /// Denied.
    Deny,
    /// Let through in Audit mode, but no rule allows it.
    WouldDeny,
}

/// What refused it, beside the lack of an allow rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeniedBy {
    /// A deny rule.
    DenyRule,
    /// The private-address guard.
    PrivateAddressGuard,
}

/// One request or connection (or, from a policy's status, several alike: `count`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Observation {
    /// What kind.
    pub kind: Kind,
    /// The normalised host (a name in A-labels, or an address).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The method (upper case), for HTTP.
    pub method: Option<String>,
    /// The path without the query, for HTTP.
    pub path: Option<String>,
    /// `path` is a prefix (from `status.deniedDestinations`): requests under it were seen.
    pub path_is_prefix: bool,
    /// The decision.
    pub decision: Decision,
    /// What refused it.
    pub denied_by: Option<DeniedBy>,
    /// The rule named by the record (the allow rule, or the deny rule that refused it).
    pub rule: Option<String>,
    /// How many.
    pub count: u64,
    /// First time seen (RFC 3339), when known.
    pub first: Option<String>,
    /// Last time seen (RFC 3339), when known.
    pub last: Option<String>,
}

/// What a line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A decision record.
    Record(Observation),
    /// Nothing to read: blank, or an event line (`kind`: inbound, sidecar-restart, ...).
    Ignored,
    /// Not an audit record (a log line, garbage, a record with a missing or invalid field).
    NotARecord,
}

/// Reads one line of an audit file or of `kubectl logs` (prefixes `[pod/NAME/CONTAINER] ` and
/// `--timestamps` times are skipped).
pub fn parse_line(line: &str) -> Line {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Line::Ignored;
    }
    let Some(start) = trimmed.find('{') else {
        return Line::NotARecord;
    };
    if !prefix_is_kubectls(&trimmed[..start]) {
        return Line::NotARecord;
    }
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&trimmed[start..]) else {
        return Line::NotARecord;
    };
    let value = Value::Object(object);
    // Events (`kind`: inbound, sidecar-restart, unreachable-sidecar, ...; `event`:
    // audit-dropped) are about the proxy, not a destination; OCSF keeps those names in
    // `unmapped`.
    let event = |v: &Value| v.get("kind").is_some() || v.get("event").is_some();
    if event(&value) || value.get("unmapped").is_some_and(event) {
        return Line::Ignored;
    }
    let parsed = if value.get("class_uid").is_some() {
        ocsf(&value)
    } else {
        own(&value)
    };
    parsed.map_or(Line::NotARecord, Line::Record)
}

/// `[pod/NAME/CONTAINER]` and RFC 3339 times, in any order, or nothing.
fn prefix_is_kubectls(prefix: &str) -> bool {
    prefix.split_whitespace().all(|word| {
        (word.starts_with('[') && word.ends_with(']'))
            || (word.len() >= 20
                && word.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && word.as_bytes()[4] == b'-'
                && word.contains('T'))
    })
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn decision(word: &str) -> Option<Decision> {
    match word {
        "allow" => Some(Decision::Allow),
        "deny" => Some(Decision::Deny),
        "would-deny" => Some(Decision::WouldDeny),
        _ => None,
    }
}

fn denied_by(word: Option<&str>) -> Option<DeniedBy> {
    match word {
        Some("deny-rule") => Some(DeniedBy::DenyRule),
        Some("private-address-guard") => Some(DeniedBy::PrivateAddressGuard),
        _ => None,
    }
}

/// The host normalised, `None` when it is not one.
fn host(raw: &str) -> Option<String> {
    match Host::parse(raw).ok()? {
        Host::Name(n) => Some(n),
        Host::Ip(ip) => Some(ip.to_string()),
    }
}

fn port(value: Option<&Value>) -> Option<u16> {
    value
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// An HTTP method token, upper-cased.
fn method(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 32
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'+-.^_`|~".contains(&b));
    ok.then(|| raw.to_ascii_uppercase())
}

/// The path without query or fragment; must start with `/` and be a request path.
fn path(raw: &str) -> Option<String> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    // The proxy records normalised paths; normalised again (dot-segments, encoding) as the
    // rule engine matches them. One it cannot read is not a record.
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    crate::rules::RequestPath::parse(path)
        .ok()
        .map(|p| p.to_string())
}

/// This project's JSON record (`boundary_proxy::audit::Record`).
fn own(value: &Value) -> Option<Observation> {
    let decision = decision(text(value, "decision")?)?;
    let kind = match text(value, "scheme")? {
        "http" | "https" => Kind::Http,
        "tls" => Kind::Tls,
        "tcp" => Kind::Tcp,
        _ => return None,
    };
    let (method, path) = if kind == Kind::Http {
        (
            Some(method(text(value, "method")?)?),
            Some(path(text(value, "path")?)?),
        )
    } else {
        (None, None)
    };
    let time = text(value, "time").map(normalise_time);
    Some(Observation {
        kind,
        host: host(text(value, "host")?)?,
        port: port(value.get("port"))?,
        method,
        path,
        path_is_prefix: false,
        decision,
        denied_by: denied_by(text(value, "denied_by")),
        rule: text(value, "rule").map(str::to_owned),
        count: 1,
        first: time.clone(),
        last: time,
    })
}

/// An OCSF 1.3.0 record: HTTP Activity (4002) or Network Activity (4001).
fn ocsf(value: &Value) -> Option<Observation> {
    let unmapped = value.get("unmapped")?;
    let decision = decision(text(unmapped, "decision")?)?;
    let endpoint = value.get("dst_endpoint");
    let endpoint_host = endpoint.and_then(|e| text(e, "hostname").or_else(|| text(e, "ip")));
    let time = value
        .get("time")
        .and_then(Value::as_i64)
        .map(rfc3339_from_millis);
    let (kind, host_raw, port_value, method, path) = match value.get("class_uid")?.as_u64()? {
        4002 => {
            let request = value.get("http_request")?;
            let url = request.get("url")?;
            (
                Kind::Http,
                text(url, "hostname").or(endpoint_host)?,
                url.get("port").or_else(|| endpoint?.get("port")),
                // OCSF 1.3.0 enumerates eight methods; the writer names the others (PATCH,
                // ...) in `unmapped.method` only.
                Some(method(
                    text(request, "http_method").or_else(|| text(unmapped, "method"))?,
                )?),
                Some(path(text(url, "path")?)?),
            )
        }
        4001 => (Kind::Tcp, endpoint_host?, endpoint?.get("port"), None, None),
        _ => return None,
    };
    Some(Observation {
        kind,
        host: host(host_raw)?,
        port: port(port_value)?,
        method,
        path,
        path_is_prefix: false,
        decision,
        denied_by: denied_by(text(unmapped, "denied_by")),
        rule: text(unmapped, "rule").map(str::to_owned),
        count: 1,
        first: time.clone(),
        last: time,
    })
}

/// `status.deniedDestinations` of a `BoundaryPolicy` (as `kubectl get bp -o json|yaml`
/// prints it): one observation per entry; entries that do not read are counted in the second
/// value.
pub fn denied_destinations(status: &Value) -> (Vec<Observation>, usize) {
    let Some(list) = status.get("deniedDestinations").and_then(Value::as_array) else {
        return (Vec::new(), 0);
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for entry in list {
        match destination(entry) {
            Some(o) => out.push(o),
            None => bad += 1,
        }
    }
    (out, bad)
}

fn destination(entry: &Value) -> Option<Observation> {
    let method = match text(entry, "method") {
        Some(m) => Some(method(m)?),
        None => None,
    };
    let path = match (&method, text(entry, "pathPrefix")) {
        (Some(_), Some(p)) => Some(path(p)?),
        (Some(_), None) => Some("/".to_owned()),
        (None, _) => None,
    };
    Some(Observation {
        kind: if method.is_some() {
            Kind::Http
        } else {
            Kind::Tcp
        },
        host: host(text(entry, "host")?)?,
        port: port(entry.get("port"))?,
        method,
        path_is_prefix: path.is_some(),
        path,
        decision: decision(text(entry, "decision")?)?,
        denied_by: None,
        rule: None,
        count: entry
            .get("count")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1),
        first: text(entry, "firstSeen").map(normalise_time),
        last: text(entry, "lastSeen").map(normalise_time),
    })
}

/// A UTC RFC 3339 time with exactly three fraction digits (`…:05.1Z` → `…:05.100Z`), so times
/// of any writer compare as text; other times are kept as they are.
pub fn normalise_time(time: &str) -> String {
    let Some(body) = time.strip_suffix('Z').or_else(|| time.strip_suffix('z')) else {
        return time.to_owned();
    };
    let (seconds, fraction) = body.split_once('.').unwrap_or((body, ""));
    if seconds.len() != 19 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return time.to_owned();
    }
    let mut millis: String = fraction.chars().take(3).collect();
    while millis.len() < 3 {
        millis.push('0');
    }
    format!("{seconds}.{millis}Z")
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds (`1970-01-01T00:00:00.000Z`).
pub fn rfc3339_from_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
