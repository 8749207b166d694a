//! Hosts and domain patterns.
//!
//! Hosts are normalised before matching: ASCII case folded, one trailing dot dropped, IDNA
//! (UTS #46) mapped to A-labels, IPv6 brackets removed, IP literals recognised. Patterns follow
//! Coder's rules-engine semantics:
//!
//! | pattern | matches |
//! |---|---|
//! | `*` | every host *name* (IP literals need an address rule) |
//! | `github.com` | exactly `github.com` |
//! | `*.github.com` | one or more labels before `github.com`, not `github.com` itself |
//! | `api.*.com` | exactly one label in place of the `*` |
//! | `10.0.0.5`, `10.0.0.0/8`, `fd00::/8` | that address or network (an extension) |
//!
//! A `*` must be a whole label and may not be the last label.

use std::fmt;
use std::net::IpAddr;

/// A normalised destination host: a DNS name in A-label form, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name: lowercase A-labels, no trailing dot.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

/// Why a host string is not a usable host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing to match.
    #[error("empty host")]
    Empty,
    /// IDNA mapping failed or the name has characters a DNS name cannot have.
    #[error("invalid host name {0:?}")]
    Invalid(String),
    /// A label longer than 63 octets or a name longer than 253.
    #[error("host name {0:?} is too long")]
    TooLong(String),
}

impl Host {
    /// Parses and normalises a host as it appears in a Host header, SNI, URL or DNS question
    /// (without port).
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(HostError::Empty);
        }
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Host::Ip(canonical_ip(ip)));
        }
        let without_dot = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if without_dot.is_empty() || without_dot.ends_with('.') {
            return Err(HostError::Invalid(raw.to_owned()));
        }
        let ascii =
            idna::domain_to_ascii(without_dot).map_err(|_| HostError::Invalid(raw.to_owned()))?;
        validate_name(&ascii).map_err(|e| match e {
            NameProblem::TooLong => HostError::TooLong(raw.to_owned()),
            NameProblem::Invalid => HostError::Invalid(raw.to_owned()),
        })?;
        Ok(Host::Name(ascii))
    }

    /// The DNS name, if this is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address: a rule for `10.0.0.5` covers
/// `::ffff:10.0.0.5` and a rule for an IPv6 network cannot be dodged by the mapped form.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

enum NameProblem {
    TooLong,
    Invalid,
}

fn validate_name(name: &str) -> Result<(), NameProblem> {
    if name.len() > 253 {
        return Err(NameProblem::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameProblem::Invalid);
        }
        if label.len() > 63 {
            return Err(NameProblem::TooLong);
        }
        // Underscores appear in real names (`_acme-challenge`, some internal hosts).
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(NameProblem::Invalid);
        }
    }
    Ok(())
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One label of a name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Label {
    Literal(String),
    Wildcard,
}

/// A compiled domain pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainPattern {
    /// `*`: every host name.
    AnyName,
    /// Labels; a leading `*` matches one or more labels, any other `*` exactly one.
    Labels(Vec<LabelPattern>),
    /// An IP address or network.
    Ip(IpNet),
    /// Coder's older rule form: `*` matches any run of characters (dots included).
    Glob(String),
}

/// A label of a [`DomainPattern::Labels`] pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPattern(Label);

/// A domain pattern that cannot be compiled: the message and the byte offset of the problem
/// inside the pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    /// Byte offset into the pattern.
    pub offset: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl PatternError {
    fn at(offset: usize, message: impl Into<String>) -> Self {
        PatternError {
            offset,
            message: message.into(),
        }
    }
}

impl DomainPattern {
    /// Compiles a domain pattern of the rule grammar.
    pub fn parse(pattern: &str) -> Result<DomainPattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::at(0, "empty domain"));
        }
        if pattern == "*" {
            return Ok(DomainPattern::AnyName);
        }
        if let Some(net) = parse_ip_pattern(pattern)? {
            return Ok(DomainPattern::Ip(net));
        }
        if pattern.contains(':') || pattern.contains('/') {
            return Err(PatternError::at(
                0,
                format!(
                    "{pattern:?} is not a domain: give the host name only (ports go in `port=` or \
                     `ports`, paths in `path=`)"
                ),
            ));
        }
        let body = pattern.strip_suffix('.').unwrap_or(pattern);
        let mut labels = Vec::new();
        let mut offset = 0;
        let parts: Vec<&str> = body.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(PatternError::at(offset, "empty label (two dots in a row?)"));
            }
            if *part == "*" {
                if i + 1 == parts.len() {
                    return Err(PatternError::at(
                        offset,
                        "a domain pattern cannot end with `*` (use `*.example.com`, or `*` alone \
                         for every domain)",
                    ));
                }
                labels.push(LabelPattern(Label::Wildcard));
            } else if part.contains('*') {
                return Err(PatternError::at(
                    offset + part.find('*').unwrap_or(0),
                    format!("`*` must be a whole label, not part of {part:?}"),
                ));
            } else if let Some(e) = hyphen_problem(part, offset) {
                return Err(e);
            } else {
                let ascii = idna::domain_to_ascii(part)
                    .map_err(|_| PatternError::at(offset, format!("invalid label {part:?}")))?;
                if ascii.is_empty() || ascii.contains('.') || validate_name(&ascii).is_err() {
                    return Err(PatternError::at(offset, format!("invalid label {part:?}")));
                }
                labels.push(LabelPattern(Label::Literal(ascii)));
            }
            offset += part.len() + 1;
        }
        Ok(DomainPattern::Labels(labels))
    }

    /// Compiles a host glob of Coder's older `"METHOD host/path"` rule form.
    pub fn glob(pattern: &str) -> Result<DomainPattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::at(0, "empty host"));
        }
        if pattern == "*" {
            return Ok(DomainPattern::AnyName);
        }
        if !pattern.contains('*') {
            return DomainPattern::parse(pattern);
        }
        let lower = pattern.to_ascii_lowercase();
        if let Some(pos) = lower
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b"-_.*".contains(&b)))
        {
            return Err(PatternError::at(
                pos,
                format!("invalid character in host pattern {pattern:?}"),
            ));
        }
        let body = lower.strip_suffix('.').unwrap_or(&lower);
        let mut offset = 0;
        for label in body.split('.') {
            if label.is_empty() {
                return Err(PatternError::at(offset, "empty label (two dots in a row?)"));
            }
            if let Some(e) = hyphen_problem(label, offset) {
                return Err(e);
            }
            offset += label.len() + 1;
        }
        Ok(DomainPattern::Glob(lower))
    }

    /// Whether `host` matches.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (DomainPattern::AnyName, Host::Name(_)) => true,
            (DomainPattern::Labels(pattern), Host::Name(name)) => labels_match(pattern, name),
            (DomainPattern::Glob(glob), Host::Name(name)) => {
                glob_match(glob.as_bytes(), name.as_bytes())
            }
            (DomainPattern::Ip(net), Host::Ip(ip)) => net.contains(*ip),
            _ => false,
        }
    }

    /// The labels of a name pattern, left to right, `None` for a `*` label (a leading one
    /// matches one or more labels, any other exactly one); `None` for `*` alone, addresses and
    /// globs. For the lint and the advisor, which reason about what a pattern can reach.
    pub fn labels(&self) -> Option<Vec<Option<&str>>> {
        match self {
            DomainPattern::Labels(labels) => Some(
                labels
                    .iter()
                    .map(|l| match &l.0 {
                        Label::Literal(s) => Some(s.as_str()),
                        Label::Wildcard => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// True for patterns that name one host exactly (no wildcard, no network).
    pub fn exact_name(&self) -> Option<String> {
        match self {
            DomainPattern::Labels(labels) => labels
                .iter()
                .map(|l| match &l.0 {
                    Label::Literal(s) => Some(s.as_str()),
                    Label::Wildcard => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|parts| parts.join(".")),
            _ => None,
        }
    }
}

impl fmt::Display for DomainPattern {
    /// The pattern as a rule writes it (names in A-label form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::AnyName => f.write_str("*"),
            DomainPattern::Glob(glob) => f.write_str(glob),
            DomainPattern::Ip(net) => {
                let max = if net.addr.is_ipv4() { 32 } else { 128 };
                if net.prefix == max {
                    write!(f, "{}", net.addr)
                } else {
                    write!(f, "{}/{}", net.addr, net.prefix)
                }
            }
            DomainPattern::Labels(labels) => {
                for (i, label) in labels.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    match &label.0 {
                        Label::Literal(s) => f.write_str(s)?,
                        Label::Wildcard => f.write_str("*")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A label that starts or ends with `-` cannot be a host name's (RFC 952, RFC 1123): it is a
/// typo, and a rule naming it would never match. `offset` is the label's in the pattern.
fn hyphen_problem(label: &str, offset: usize) -> Option<PatternError> {
    if label.starts_with('-') {
        Some(PatternError::at(
            offset,
            format!("label {label:?} cannot start with `-`: no host name does"),
        ))
    } else if label.ends_with('-') {
        Some(PatternError::at(
            offset + label.len() - 1,
            format!("label {label:?} cannot end with `-`: no host name does"),
        ))
    } else {
        None
    }
}

fn parse_ip_pattern(pattern: &str) -> Result<Option<IpNet>, PatternError> {
    let (addr, prefix) = match pattern.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (pattern, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(addr);
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Ok(None);
    };
    let ip = canonical_ip(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
            PatternError::at(
                addr.len() + 1,
                format!("invalid prefix length {p:?} (0 to {max})"),
            )
        })?,
    };
    Ok(Some(IpNet { addr: ip, prefix }))
}

fn labels_match(pattern: &[LabelPattern], name: &str) -> bool {
    // Label by label from the right, without collecting the name's labels: this runs for every
    // name rule a request is checked against.
    let label_eq = |p: &LabelPattern, h: &str| match &p.0 {
        Label::Wildcard => true,
        Label::Literal(l) => l == h,
    };
    let host_labels = name.bytes().filter(|b| *b == b'.').count() + 1;
    match pattern.split_first() {
        Some((first, rest)) if first.0 == Label::Wildcard => {
            // Leading `*`: one or more labels, then the rest label by label.
            host_labels > rest.len()
                && rest
                    .iter()
                    .rev()
                    .zip(name.rsplit('.'))
                    .all(|(p, h)| label_eq(p, h))
        }
        _ => {
            host_labels == pattern.len()
                && pattern
                    .iter()
                    .zip(name.split('.'))
                    .all(|(p, h)| label_eq(p, h))
        }
    }
}

/// `*` matches any run of bytes (including none).
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((bp, bt)) = backtrack {
            p = bp + 1;
            t = bt + 1;
            backtrack = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    fn pat(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap()
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(host("GitHub.COM."), Host::Name("github.com".into()));
        assert_eq!(host("ＧＩＴＨＵＢ.com"), Host::Name("github.com".into()));
        assert_eq!(host("bücher.de"), Host::Name("xn--bcher-kva.de".into()));
        assert_eq!(host("[::1]"), Host::Ip("::1".parse().unwrap()));
        assert_eq!(
            host("::ffff:10.0.0.5"),
            Host::Ip("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            host("_acme.example.com"),
            Host::Name("_acme.example.com".into())
        );
        for bad in [
            "",
            " ",
            "a..b",
            "a.b..",
            ".",
            "exa mple.com",
            "a/b",
            "x".repeat(64).as_str(),
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn coder_domain_table() {
        // The table of Coder's rules-engine documentation, row by row.
        let rows: &[(&str, &[&str], &[&str])] = &[
            ("*", &["github.com", "a.b.c"], &[]),
            (
                "github.com",
                &["github.com"],
                &["api.github.com", "v1.api.github.com", "github.io"],
            ),
            (
                "*.github.com",
                &["api.github.com", "v1.api.github.com"],
                &["github.com", "evilgithub.com"],
            ),
            (
                "api.*.com",
                &["api.github.com", "api.google.com"],
                &["api.v1.github.com", "api.com"],
            ),
            (
                "*.*.com",
                &["api.example.com", "api.v1.github.com"],
                &["example.com"],
            ),
        ];
        for (pattern, yes, no) in rows {
            let p = pat(pattern);
            for h in *yes {
                assert!(p.matches(&host(h)), "{pattern} should match {h}");
            }
            for h in *no {
                assert!(!p.matches(&host(h)), "{pattern} should not match {h}");
            }
        }
    }

    #[test]
    fn bypass_spellings_are_caught() {
        let p = pat("*.github.com");
        assert!(!p.matches(&host("evilgithub.com")));
        assert!(!p.matches(&host("github.com.evil.com")));
        assert!(p.matches(&host("API.GitHub.com.")));
        let exact = pat("github.com");
        assert!(exact.matches(&host("GITHUB.COM.")));
        assert!(!exact.matches(&host("github.com.evil.com")));
    }

    #[test]
    fn invalid_patterns_say_where_and_why() {
        let err = DomainPattern::parse("api.*").unwrap_err();
        assert!(
            err.message.contains("cannot end with `*`"),
            "{}",
            err.message
        );
        assert_eq!(err.offset, 4);
        let err = DomainPattern::parse("*github.com").unwrap_err();
        assert!(err.message.contains("whole label"));
        let err = DomainPattern::parse("a..b").unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(
            DomainPattern::parse("github.com:443")
                .unwrap_err()
                .message
                .contains("ports")
        );
        assert!(
            DomainPattern::parse("10.0.0.0/33")
                .unwrap_err()
                .message
                .contains("prefix")
        );
        assert!(DomainPattern::parse("").is_err());
    }

    #[test]
    fn ip_rules_match_addresses_only() {
        let net = pat("10.0.0.0/8");
        assert!(net.matches(&host("10.1.2.3")));
        assert!(net.matches(&host("::ffff:10.1.2.3")));
        assert!(!net.matches(&host("11.0.0.1")));
        assert!(pat("fd00::/8").matches(&host("[fd12::1]")));
        assert!(
            !pat("*").matches(&host("10.1.2.3")),
            "`*` covers names, not addresses"
        );
        assert!(!pat("10.0.0.5").matches(&host("10.0.0.6")));
        assert!(pat("0.0.0.0/0").matches(&host("1.2.3.4")));
    }

    #[test]
    fn globs_of_the_older_form() {
        let g = DomainPattern::glob("api.*").unwrap();
        assert!(g.matches(&host("api.github.com")));
        assert!(!g.matches(&host("www.github.com")));
        let g = DomainPattern::glob("*github.com").unwrap();
        assert!(g.matches(&host("evilgithub.com")));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
    }

    #[test]
    fn exact_names() {
        assert_eq!(
            pat("GitHub.com").exact_name().as_deref(),
            Some("github.com")
        );
        assert_eq!(pat("*.github.com").exact_name(), None);
    }

    /// What matching did before it stopped collecting the name's labels.
    fn labels_match_by_collecting(pattern: &[LabelPattern], name: &str) -> bool {
        let host: Vec<&str> = name.split('.').collect();
        let label_eq = |p: &LabelPattern, h: &str| match &p.0 {
            Label::Wildcard => true,
            Label::Literal(l) => l == h,
        };
        match pattern.split_first() {
            Some((first, rest)) if first.0 == Label::Wildcard => {
                host.len() > rest.len()
                    && rest
                        .iter()
                        .zip(&host[host.len() - rest.len()..])
                        .all(|(p, h)| label_eq(p, h))
            }
            _ => {
                host.len() == pattern.len()
                    && pattern.iter().zip(&host).all(|(p, h)| label_eq(p, h))
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn names_match_label_patterns_as_their_labels_read_one_by_one(
            pattern in proptest::collection::vec(proptest::option::weighted(0.8, "[ab]{0,2}"), 0..5),
            name in proptest::collection::vec("[ab]{0,2}", 1..6),
        ) {
            let pattern: Vec<LabelPattern> = pattern
                .into_iter()
                .map(|l| LabelPattern(l.map_or(Label::Wildcard, Label::Literal)))
                .collect();
            let name = name.join(".");
            proptest::prop_assert_eq!(
                labels_match(&pattern, &name),
                labels_match_by_collecting(&pattern, &name),
                "{:?} against {:?}", pattern, name
            );
        }
    }
}
