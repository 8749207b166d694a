//! Header and query conditions of structured HTTP rules (`headers: {Name: glob}`,
//! `query: {param: glob}`).
//!
//! Requests are read with the same care as paths, and every doubt falls on the safe side:
//!
//! * header names are matched case-insensitively; each field line is one occurrence;
//! * query parameters are split on `&` and percent-decoded, `+` read as a space, so
//!   `%73ervice=` is `service=`. Parameter names are matched exactly, and occurrences whose name
//!   differs only in ASCII case count too (some servers read names case-insensitively);
//! * `;` separates parameters for some servers and not for others: a condition is judged under
//!   both readings; an allow condition must hold under both, a deny condition under either;
//! * a header or parameter that appears several times: an allow condition holds only when every
//!   occurrence matches, a deny condition when any does;
//! * a query that cannot be decoded (bad percent-encoding, not UTF-8) never satisfies an allow
//!   condition and always satisfies a deny rule's query condition.
//!
//! Values are globs: `*` matches any run of characters (none included); everything else matches
//! itself, case-sensitively.

use super::host::glob_match;

/// A rule's compiled conditions; empty lists check nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Lower-case header names and value globs.
    headers: Vec<(String, String)>,
    /// Parameter names and value globs.
    query: Vec<(String, String)>,
}

/// A condition that cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionError {
    /// 1-based column in the name (or value) where the problem starts.
    pub column: usize,
    /// Whether the problem is in the value (the glob) rather than the name.
    pub in_value: bool,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Which side a rule is on: conditions are read strictly for allow rules and broadly for deny
/// rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// An allow rule: every doubt makes the condition fail.
    Allow,
    /// A deny rule: every doubt makes the condition hold.
    Deny,
}

/// A request's headers and query, as the engine sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestExtras<'a> {
    /// Header fields in order: names as sent, values as bytes (one entry per field line).
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The raw query, after `?` and before `#`; `None` when the target has none.
    pub query: Option<&'a str>,
}

impl Conditions {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty()
    }

    /// Whether there are header conditions.
    pub fn has_headers(&self) -> bool {
        !self.headers.is_empty()
    }

    /// Whether there are query conditions.
    pub fn has_query(&self) -> bool {
        !self.query.is_empty()
    }

    /// Adds a header condition; the name must be an HTTP token.
    pub fn add_header(&mut self, name: &str, glob: &str) -> Result<(), ConditionError> {
        if name.is_empty() {
            return Err(name_error(1, "empty header name".into()));
        }
        if let Some((at, c)) = name.char_indices().find(|&(_, c)| !is_tchar(c)) {
            return Err(name_error(
                name[..at].chars().count() + 1,
                format!(
                    "{c:?} cannot appear in a header name (letters, digits and \
                     !#$%&'*+-.^_`|~ only)"
                ),
            ));
        }
        check_glob(glob, |b| {
            b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
        })?;
        self.headers
            .push((name.to_ascii_lowercase(), glob.to_owned()));
        Ok(())
    }

    /// Adds a query condition; the name is the decoded parameter name.
    pub fn add_query(&mut self, name: &str, glob: &str) -> Result<(), ConditionError> {
        if name.is_empty() {
            return Err(name_error(1, "empty query parameter name".into()));
        }
        if let Some((at, c)) = name
            .char_indices()
            .find(|&(_, c)| c.is_control() || c == '&' || c == '=' || c == '#')
        {
            return Err(name_error(
                name[..at].chars().count() + 1,
                format!(
                    "{c:?} cannot appear in a query parameter name (give the decoded name, \
                     without `&`, `=` or `#`)"
                ),
            ));
        }
        check_glob(glob, |b| !b.is_ascii_control())?;
        self.query.push((name.to_owned(), glob.to_owned()));
        Ok(())
    }

    /// Whether the request satisfies every condition, read for `side`.
    pub fn hold(&self, side: Side, extras: RequestExtras<'_>) -> bool {
        self.headers_hold(side, extras.headers) && self.query_holds(side, extras.query)
    }

    /// Whether the header conditions hold (true when there are none).
    pub fn headers_hold(&self, side: Side, headers: &[(&str, &[u8])]) -> bool {
        self.headers
            .iter()
            .all(|(name, glob)| header_holds(side, name, glob, headers))
    }

    /// Whether the query conditions hold for a raw query (true when there are none).
    pub fn query_holds(&self, side: Side, raw: Option<&str>) -> bool {
        if self.query.is_empty() {
            return true;
        }
        let readings = [
            parse_query(raw.unwrap_or(""), false),
            parse_query(raw.unwrap_or(""), true),
        ];
        let holds_in = |params: &Result<Vec<(String, String)>, ()>| match params {
            Err(()) => side == Side::Deny,
            Ok(params) => self
                .query
                .iter()
                .all(|(name, glob)| param_holds(side, name, glob, params)),
        };
        match side {
            Side::Allow => readings.iter().all(holds_in),
            Side::Deny => readings.iter().any(holds_in),
        }
    }
}

fn name_error(column: usize, message: String) -> ConditionError {
    ConditionError {
        column,
        in_value: false,
        message,
    }
}

fn check_glob(glob: &str, allowed: impl Fn(u8) -> bool) -> Result<(), ConditionError> {
    match glob.bytes().position(|b| !allowed(b)) {
        Some(at) => Err(ConditionError {
            column: glob[..at].chars().count() + 1,
            in_value: true,
            message: "control characters cannot appear in a value pattern".into(),
        }),
        None => Ok(()),
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn header_holds(side: Side, name: &str, glob: &str, headers: &[(&str, &[u8])]) -> bool {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .peekable();
    let matches = |v: &[u8]| glob_match(glob.as_bytes(), v);
    match side {
        Side::Allow => values.peek().is_some() && values.all(matches),
        Side::Deny => values.any(matches),
    }
}

fn param_holds(side: Side, name: &str, glob: &str, params: &[(String, String)]) -> bool {
    let same_name = |n: &String| n.eq_ignore_ascii_case(name);
    let matches = |v: &String| glob_match(glob.as_bytes(), v.as_bytes());
    match side {
        // Present under its exact name, and every spelling of it matches.
        Side::Allow => {
            params.iter().any(|(n, _)| n == name)
                && params
                    .iter()
                    .filter(|(n, _)| same_name(n))
                    .all(|(_, v)| matches(v))
        }
        Side::Deny => params
            .iter()
            .filter(|(n, _)| same_name(n))
            .any(|(_, v)| matches(v)),
    }
}

/// Splits and decodes a raw query; `Err` when a part cannot be decoded.
fn parse_query(raw: &str, semicolons: bool) -> Result<Vec<(String, String)>, ()> {
    let raw = raw.split('#').next().unwrap_or("");
    raw.split(|c| c == '&' || (semicolons && c == ';'))
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((decode_component(name)?, decode_component(value)?))
        })
        .collect()
}

/// Percent-decodes a form component (`+` is a space); `Err` for malformed or non-UTF-8 input.
pub fn decode_component(raw: &str) -> Result<String, ()> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                    return Err(());
                };
                out.push(u8::try_from(hi * 16 + lo).map_err(|_| ())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ())
}

/// The raw query of a request target (`/a?b=1#f` → `b=1`), `None` without `?`.
pub fn raw_query(target: &str) -> Option<&str> {
    let before_fragment = target.split('#').next().unwrap_or("");
    before_fragment.split_once('?').map(|(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Conditions {
        let mut c = Conditions::default();
        for (n, g) in pairs {
            c.add_query(n, g).unwrap();
        }
        c
    }

    fn on_query(c: &Conditions, side: Side, q: &str) -> bool {
        c.hold(
            side,
            RequestExtras {
                headers: &[],
                query: Some(q),
            },
        )
    }

    #[test]
    fn query_values_are_decoded_and_repeats_are_read_for_the_side() {
        let c = query(&[("service", "git-upload-pack")]);
        // (query, allow holds, deny holds)
        let table: &[(&str, bool, bool)] = &[
            ("service=git-upload-pack", true, true),
            ("%73ervice=git%2Dupload%2dpack", true, true),
            ("service=git-receive-pack", false, false),
            ("x=1&service=git-upload-pack&y", true, true),
            (
                "service=git-upload-pack&service=git-receive-pack",
                false,
                true,
            ),
            (
                "service=git-upload-pack&SERVICE=git-receive-pack",
                false,
                true,
            ),
            ("SERVICE=git-upload-pack", false, true),
            ("service=git-upload-pack;service=x", false, true),
            ("service=git-upload-pack%zz", false, true),
            ("service=git-upload-pack&x=%ff", false, true),
            ("", false, false),
            ("servic=git-upload-pack", false, false),
        ];
        for (q, allow, deny) in table {
            assert_eq!(on_query(&c, Side::Allow, q), *allow, "allow {q:?}");
            assert_eq!(on_query(&c, Side::Deny, q), *deny, "deny {q:?}");
        }
        let spaced = query(&[("q", "a b*")]);
        assert!(on_query(&spaced, Side::Allow, "q=a+b%2Bc"));
        assert!(!spaced.hold(Side::Allow, RequestExtras::default()));
    }

    #[test]
    fn header_names_are_case_insensitive_and_repeats_are_read_for_the_side() {
        let mut c = Conditions::default();
        c.add_header("X-Agent", "claude*").unwrap();
        let with = |h: &[(&str, &[u8])], side| {
            c.hold(
                side,
                RequestExtras {
                    headers: h,
                    query: None,
                },
            )
        };
        assert!(with(&[("x-agent", b"claude-code")], Side::Allow));
        assert!(with(&[("X-AGENT", b"claude")], Side::Allow));
        assert!(!with(&[("x-agent", b"Claude")], Side::Allow));
        assert!(!with(&[], Side::Allow));
        assert!(!with(&[], Side::Deny));
        let two: &[(&str, &[u8])] = &[("x-agent", b"claude"), ("x-agent", b"curl")];
        assert!(!with(two, Side::Allow));
        assert!(with(two, Side::Deny));
        assert!(with(&[("x-agent", b"claude\xff")], Side::Allow));
    }

    #[test]
    fn bad_names_are_refused_with_their_column() {
        let mut c = Conditions::default();
        let e = c.add_header("X Agent", "*").unwrap_err();
        assert_eq!((e.column, e.in_value), (2, false));
        assert!(c.add_header("", "*").is_err());
        assert!(c.add_header("X-Ok", "a\nb").unwrap_err().in_value);
        assert_eq!(c.add_query("a&b", "*").unwrap_err().column, 2);
        assert!(c.add_query("", "*").is_err());
        assert!(c.is_empty());
    }

    #[test]
    fn raw_query_of_a_target() {
        assert_eq!(raw_query("/a?b=1#f"), Some("b=1"));
        assert_eq!(raw_query("/a?"), Some(""));
        assert_eq!(raw_query("/a#x?y"), None);
        assert_eq!(raw_query("/a"), None);
    }
}
