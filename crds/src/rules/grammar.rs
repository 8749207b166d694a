//! Coder's rule string grammar.
//!
//! ```text
//! rule    = pair *( WS pair )                 ; key=value pairs, any order
//! pair    = "domain=" list | "method=" list | "path=" list | "port=" list
//! list    = value *( "," value )
//! ```
//! A key that is left out matches every value. `port=` and comma lists for `domain=` are
//! extensions; everything Coder accepts means the same here. Coder's older form is accepted too:
//! `"pattern"` or `"METHOD[,METHOD] pattern"`, where pattern is `host[/path]` and `*` matches any
//! run of characters.
//!
//! Errors carry the 1-based column (in characters) where the problem starts.

use super::host::DomainPattern;
use super::path::PathPattern;

/// A parsed rule string: each list is `None` when its key is absent (matches everything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRule {
    /// `domain=` patterns.
    pub domains: Option<Vec<DomainPattern>>,
    /// `method=` tokens, upper-cased; `None` for any method (also `method=*`).
    pub methods: Option<Vec<String>>,
    /// `path=` patterns.
    pub paths: Option<Vec<PathPattern>>,
    /// `port=` numbers.
    pub ports: Option<Vec<u16>>,
}

/// A rule string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct GrammarError {
    /// 1-based column, in characters, where the problem starts.
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

const KEYS: [&str; 4] = ["domain", "method", "path", "port"];

/// Parses one rule string.
pub fn parse_rule(text: &str) -> Result<ParsedRule, GrammarError> {
    let err = |byte: usize, message: String| GrammarError {
        column: text[..byte.min(text.len())].chars().count() + 1,
        message,
    };
    let tokens = tokens(text);
    let Some(&(_, first)) = tokens.first() else {
        return Err(err(0, "empty rule".into()));
    };
    if !first.contains('=') {
        return parse_older_form(text, &tokens).map_err(|(at, m)| err(at, m));
    }
    let mut rule = ParsedRule {
        domains: None,
        methods: None,
        paths: None,
        ports: None,
    };
    for (start, token) in tokens {
        let Some((key, value)) = token.split_once('=') else {
            return Err(err(
                start,
                format!("expected key=value, found {token:?} (keys: domain, method, path, port)"),
            ));
        };
        let value_at = start + key.len() + 1;
        if !KEYS.contains(&key) {
            let hint = KEYS
                .iter()
                .find(|k| close(k, key))
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(err(
                start,
                format!("unknown key `{key}`{hint}: keys are domain, method, path and port"),
            ));
        }
        if value.is_empty() {
            return Err(err(value_at, format!("`{key}=` needs a value")));
        }
        let items = split_list(value, value_at)
            .map_err(|at| err(at, format!("empty item in the `{key}` list (stray comma?)")))?;
        apply_pair(&mut rule, key, &items)
            .map_err(|(at, message)| err(at.unwrap_or(start), message))?;
    }
    // `method=*` means any method: the same as leaving it out.
    if rule
        .methods
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m == "*"))
    {
        rule.methods = None;
    }
    Ok(rule)
}

/// Adds `key`'s list to `rule`: a key given twice means either value, as in Coder
/// (`method=GET method=POST` is `method=GET,POST`). Errors carry the byte offset.
fn apply_pair(
    rule: &mut ParsedRule,
    key: &str,
    items: &[(usize, &str)],
) -> Result<(), (Option<usize>, String)> {
    match key {
        "domain" => {
            let domains = items
                .iter()
                .map(|&(at, item)| {
                    DomainPattern::parse(item).map_err(|e| (Some(at + e.offset), e.message))
                })
                .collect::<Result<Vec<_>, _>>()?;
            extend_unique(&mut rule.domains, domains);
        }
        "method" => {
            let methods = parse_methods(items).map_err(|(at, m)| (Some(at), m))?;
            extend_unique(&mut rule.methods, methods);
        }
        "path" => {
            let paths = items
                .iter()
                .map(|&(at, item)| parse_path(item).map_err(|(o, m)| (Some(at + o), m)))
                .collect::<Result<Vec<_>, _>>()?;
            extend_unique(&mut rule.paths, paths);
        }
        _ => {
            let ports = items
                .iter()
                .map(|&(at, item)| {
                    parse_port(item)
                        .ok_or_else(|| (Some(at), format!("invalid port {item:?} (1 to 65535)")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            extend_unique(&mut rule.ports, ports);
        }
    }
    Ok(())
}

fn extend_unique<T: PartialEq>(list: &mut Option<Vec<T>>, items: Vec<T>) {
    let list = list.get_or_insert_with(Vec::new);
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// A `path=` item; without a leading `/` it is read from the root, as Coder does
/// (`path=api/v1` is `/api/v1`). Errors carry the byte offset in `item`.
fn parse_path(item: &str) -> Result<PathPattern, (usize, String)> {
    if item == "*" || item.starts_with('/') {
        return PathPattern::parse(item).map_err(|e| (e.offset, e.message));
    }
    PathPattern::parse(&format!("/{item}")).map_err(|e| (e.offset.saturating_sub(1), e.message))
}

/// Parses a port number, 1 to 65535.
pub fn parse_port(item: &str) -> Option<u16> {
    item.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Whitespace-separated tokens with their byte offsets.
fn tokens(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// Comma-separated items with their byte offsets; `Err(offset)` for an empty item.
fn split_list(value: &str, at: usize) -> Result<Vec<(usize, &str)>, usize> {
    let mut out = Vec::new();
    let mut offset = at;
    for item in value.split(',') {
        if item.is_empty() {
            return Err(offset);
        }
        out.push((offset, item));
        offset += item.len() + 1;
    }
    Ok(out)
}

/// HTTP method tokens (RFC 9110 `tchar`), upper-cased so `method=get` means GET.
fn parse_methods(items: &[(usize, &str)]) -> Result<Vec<String>, (usize, String)> {
    let mut methods = Vec::new();
    for &(at, item) in items {
        if item == "*" {
            methods.push("*".to_owned());
            continue;
        }
        if let Some(pos) = item.bytes().position(|b| !is_tchar(b)) {
            return Err((at + pos, format!("invalid HTTP method {item:?}")));
        }
        let upper = item.to_ascii_uppercase();
        if !methods.contains(&upper) {
            methods.push(upper);
        }
    }
    Ok(methods)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One edit away (for "did you mean").
fn close(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let mismatches = a.iter().zip(b).filter(|(x, y)| x != y).count();
    (a.len() == b.len() && mismatches <= 1)
        || (a.len() != b.len() && {
            let (long, short) = if a.len() > b.len() { (a, b) } else { (b, a) };
            (0..long.len()).any(|skip| {
                long.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, c)| c)
                    .eq(short.iter())
            })
        })
}

/// `"pattern"` or `"METHOD[,METHOD] pattern"`; pattern = `host[/path]` with glob `*`.
fn parse_older_form(text: &str, tokens: &[(usize, &str)]) -> Result<ParsedRule, (usize, String)> {
    let (methods, (at, pattern)) = match tokens {
        [one] => (None, *one),
        [(m_at, m), two] => {
            let items = split_list(m, *m_at)
                .map_err(|at| (at, "empty method (stray comma?)".to_owned()))?;
            let methods = parse_methods(&items)?;
            (Some(methods), *two)
        }
        _ => {
            return Err((
                0,
                format!(
                    "{text:?} is neither `key=value` pairs nor the older \"METHOD,METHOD host/path\" \
                     form; example: domain=github.com method=GET path=/api/*"
                ),
            ));
        }
    };
    let (host, path) = match pattern.find('/') {
        Some(slash) => (&pattern[..slash], Some(&pattern[slash..])),
        None => (pattern, None),
    };
    let domain = DomainPattern::glob(host).map_err(|e| (at + e.offset, e.message))?;
    let methods = methods.filter(|m| !m.iter().any(|m| m == "*"));
    Ok(ParsedRule {
        domains: Some(vec![domain]),
        methods,
        paths: path.map(|p| vec![PathPattern::glob(p)]),
        ports: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::host::Host;
    use crate::rules::path::RequestPath;

    fn ok(text: &str) -> ParsedRule {
        parse_rule(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn fails(text: &str) -> GrammarError {
        parse_rule(text).expect_err(text)
    }

    #[test]
    fn coder_examples_parse() {
        let r = ok("domain=github.com");
        assert_eq!(r.domains.unwrap().len(), 1);
        assert!(r.methods.is_none() && r.paths.is_none());
        let r = ok("method=GET,POST domain=api.example.com");
        assert_eq!(r.methods.unwrap(), ["GET", "POST"]);
        let r = ok("domain=api.example.com path=/users,/posts");
        assert_eq!(r.paths.unwrap().len(), 2);
        let r = ok("method=GET domain=github.com path=/api/*");
        assert!(r.paths.unwrap()[0].matches(&RequestPath::parse("/api/x").unwrap()));
        assert!(ok("method=* domain=*").methods.is_none());
        assert_eq!(ok("  domain=a.com\tmethod=get  ").methods.unwrap(), ["GET"]);
        assert_eq!(
            ok("domain=a.com,b.com port=443,8443").ports.unwrap(),
            [443, 8443]
        );
        assert!(
            ok("path=/x").domains.is_none(),
            "an omitted key matches everything"
        );
    }

    #[test]
    fn the_older_form_parses() {
        let r = ok("github.com");
        assert!(r.domains.as_ref().unwrap()[0].matches(&Host::parse("github.com").unwrap()));
        let r = ok("GET,HEAD github.com/api/issues/*");
        assert_eq!(r.methods.unwrap(), ["GET", "HEAD"]);
        assert!(r.paths.unwrap()[0].matches(&RequestPath::parse("/api/issues/7").unwrap()));
        let r = ok("api.*");
        assert!(r.domains.unwrap()[0].matches(&Host::parse("api.example.org").unwrap()));
        assert!(ok("* github.com").methods.is_none());
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = fails("domain=github.com metod=GET");
        assert_eq!(e.column, 19);
        assert!(e.message.contains("did you mean `method`"), "{}", e.message);
        let e = fails("domain=api.*");
        assert_eq!(e.column, 12);
        assert!(e.message.contains("cannot end with `*`"));
        let e = fails("domain=a.com path=/api/user*");
        assert_eq!(e.column, 28);
        let e = fails("method=GET,,POST");
        assert_eq!(e.column, 12);
        assert_eq!(fails("domain=").column, 8);
        assert_eq!(fails("").message, "empty rule");
        assert!(
            fails("port=0 domain=a.com")
                .message
                .contains("invalid port")
        );
        assert!(fails("port=70000").message.contains("invalid port"));
        assert!(fails("method=G(ET").message.contains("invalid HTTP method"));
        assert!(fails("a b c").message.contains("neither"));
        // Columns count characters, not bytes.
        let e = fails("domain=bücher.de metod=GET");
        assert_eq!(e.column, 18);
    }

    #[test]
    fn coder_drop_in_forms() {
        // A key given twice means either value, as in Coder.
        let r = ok("method=GET method=POST path=/a path=/b,/a domain=a.com domain=b.com");
        assert_eq!(r.methods.unwrap(), ["GET", "POST"]);
        let paths = r.paths.unwrap();
        assert_eq!(paths.len(), 2);
        assert!(paths[1].matches(&RequestPath::parse("/b").unwrap()));
        assert_eq!(r.domains.unwrap().len(), 2);
        assert!(ok("method=GET method=*").methods.is_none());
        assert_eq!(ok("port=443 port=8443,443").ports.unwrap(), [443, 8443]);
        // Any RFC 9110 method token.
        assert_eq!(
            ok("method=PURGE,M-SEARCH,propfind").methods.unwrap(),
            ["PURGE", "M-SEARCH", "PROPFIND"]
        );
        // A path without its leading slash is read from the root.
        let r = ok("domain=a.com path=api/v1,api/*");
        let paths = r.paths.unwrap();
        assert!(paths[0].matches(&RequestPath::parse("/api/v1").unwrap()));
        assert!(paths[1].matches(&RequestPath::parse("/api/x/y").unwrap()));
        assert_eq!(fails("path=api/user*").column, 14);
    }

    #[test]
    fn host_names_that_cannot_exist_are_refused_at_their_column() {
        for (text, column) in [
            ("domain=-a.com", 8),
            ("domain=a-.com", 9),
            ("domain=x.-a.com", 10),
            ("domain=a..b", 10),
            ("domain=.a.com", 8),
            ("domain=ok.com,b-.com", 16),
            ("GET -api.*.com/x", 5),
            ("GET api-.*", 8),
            ("api..*", 5),
        ] {
            let e = fails(text);
            assert_eq!(e.column, column, "{text}: {}", e.message);
        }
        assert!(
            fails("domain=-a.com")
                .message
                .contains("cannot start with `-`")
        );
        assert!(
            fails("domain=a-.com")
                .message
                .contains("cannot end with `-`")
        );
        ok("domain=a-b.c--d.com");
        ok("domain=xn--bcher-kva.de");
        ok("*-api.example.com");
    }

    #[test]
    fn edit_distance_hint() {
        assert!(close("domain", "domian") || close("domain", "doman"));
        assert!(close("path", "paths"));
        assert!(!close("path", "port"));
    }
}
