//! Request paths and path patterns.
//!
//! A request path is normalised before any rule sees it:
//!
//! 1. the query is cut off (rules match the path only);
//! 2. `\` (raw or `%5C`) counts as a separator, as some servers treat it;
//! 3. the path is split into segments, and each segment is percent-decoded on its own: an encoded
//!    slash (`%2F`) stays *inside* its segment (npm's `/@scope%2fname` is one segment). A `*`
//!    segment of a rule matches it, a literal segment must spell it the same way;
//! 4. dot-segments are resolved after decoding (`.`, `..`, `%2e`, `%2E%2e`): `/api/../admin` and
//!    `/api/%2e%2e/admin` are `/admin` and never match `/api/*`;
//! 5. malformed percent-encoding is an error (the proxy answers 400), never a guess.
//!
//! Patterns follow Coder's semantics: `*` alone matches every path; a `*` segment matches exactly
//! one segment, except at the end where it matches one or more; anything else matches exactly
//! (`/api/users` does not match `/api/users/123` or `/api/users/`).

use std::borrow::Cow;
use std::fmt;

/// A normalised request path: decoded segments after dot-segment removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPath {
    segments: Vec<Vec<u8>>,
    /// `OPTIONS *` (asterisk-form): no path at all.
    asterisk: bool,
}

/// A request path that cannot be normalised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path at byte {0}")]
    BadPercent(usize),
    /// The request target is not a path (`/…`) or `*`.
    #[error("request path must start with '/'")]
    NotAbsolute,
}

impl RequestPath {
    /// Normalises the path part of a request target (`/a/b?q=1`, or `*`).
    pub fn parse(target: &str) -> Result<RequestPath, PathError> {
        if target == "*" {
            return Ok(RequestPath {
                segments: Vec::new(),
                asterisk: true,
            });
        }
        let path = target.split(['?', '#']).next().unwrap_or("");
        if !path.starts_with('/') && !path.starts_with('\\') {
            return Err(PathError::NotAbsolute);
        }
        let mut segments: Vec<Vec<u8>> = Vec::new();
        let mut offset = 1;
        // Split on raw separators first, then decode each segment.
        for raw in path[1..].split(['/', '\\']) {
            let decoded =
                percent_decode(raw.as_bytes()).map_err(|i| PathError::BadPercent(offset + i))?;
            offset += raw.len() + 1;
            // An encoded backslash separates like a raw one.
            for part in decoded.split(|b| *b == b'\\') {
                match part {
                    b"." => {}
                    b".." => {
                        segments.pop();
                    }
                    _ => segments.push(part.to_vec()),
                }
            }
        }
        // A trailing dot-segment leaves a directory: `/a/b/..` is `/a/`.
        let last = path.rsplit(['/', '\\']).next().unwrap_or("");
        if matches!(percent_decode(last.as_bytes()).as_deref(), Ok(b".." | b".")) {
            segments.push(Vec::new());
        }
        if segments.is_empty() {
            segments.push(Vec::new());
        }
        Ok(RequestPath {
            segments,
            asterisk: false,
        })
    }

    /// The decoded segments (`/` is `[""]`).
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().map(Vec::as_slice)
    }
}

impl fmt::Display for RequestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.asterisk {
            return f.write_str("*");
        }
        for segment in &self.segments {
            f.write_str("/")?;
            for &b in segment {
                // Characters that mean something in the rule grammar are escaped too, so a
                // displayed path can be pasted back as a rule.
                if b.is_ascii_graphic() && !b"%/?#*,".contains(&b) {
                    write!(f, "{}", char::from(b))?;
                } else {
                    write!(f, "%{b:02X}")?;
                }
            }
        }
        Ok(())
    }
}

fn percent_decode(raw: &[u8]) -> Result<Cow<'_, [u8]>, usize> {
    // Most segments have no `%`: they are returned as they are, not copied (every request's
    // path is parsed).
    let Some(first) = raw.iter().position(|b| *b == b'%') else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = |b: u8| char::from(b).to_digit(16);
            let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(i);
            };
            // Both digits are < 16, so the byte fits.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(0));
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

/// One segment of a path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Vec<u8>),
    Wildcard,
}

/// A compiled path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(Kind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// `*`: every path.
    Any,
    /// Segments; a trailing `*` matches one or more segments.
    Segments(Vec<Segment>),
    /// The older rule form's glob: `*` matches any run of characters.
    Glob(String),
}

/// A path pattern that cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPatternError {
    /// Byte offset into the pattern.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl PathPattern {
    /// Compiles a path pattern of the rule grammar (`/api/*/users`, `*`).
    pub fn parse(pattern: &str) -> Result<PathPattern, PathPatternError> {
        if pattern == "*" {
            return Ok(PathPattern(Kind::Any));
        }
        if !pattern.starts_with('/') {
            return Err(PathPatternError {
                offset: 0,
                message: format!("path {pattern:?} must start with '/' (or be `*` for every path)"),
            });
        }
        let mut segments = Vec::new();
        let mut offset = 1;
        for raw in pattern[1..].split('/') {
            if raw == "*" {
                segments.push(Segment::Wildcard);
            } else if let Some(pos) = raw.find('*') {
                return Err(PathPatternError {
                    offset: offset + pos,
                    message: format!("`*` must be a whole path segment, not part of {raw:?}"),
                });
            } else {
                let decoded = percent_decode(raw.as_bytes()).map_err(|i| PathPatternError {
                    offset: offset + i,
                    message: "malformed percent-encoding".into(),
                })?;
                if *decoded == *b"." || *decoded == *b".." {
                    return Err(PathPatternError {
                        offset,
                        message: "`.` and `..` segments cannot appear in a rule (requests are \
                                  normalised before matching)"
                            .into(),
                    });
                }
                segments.push(Segment::Literal(decoded.into_owned()));
            }
            offset += raw.len() + 1;
        }
        Ok(PathPattern(Kind::Segments(segments)))
    }

    /// Compiles the path part of the older `"METHOD host/path"` form (glob, `*` = any run).
    pub fn glob(pattern: &str) -> PathPattern {
        if pattern == "/*" || pattern == "*" {
            PathPattern(Kind::Any)
        } else {
            PathPattern(Kind::Glob(pattern.to_owned()))
        }
    }

    /// Whether the normalised `path` matches.
    pub fn matches(&self, path: &RequestPath) -> bool {
        match &self.0 {
            Kind::Any => true,
            _ if path.asterisk => false,
            Kind::Glob(glob) => {
                super::host::glob_match(glob.as_bytes(), path.to_string().as_bytes())
            }
            Kind::Segments(pattern) => {
                let seg_eq = |p: &Segment, s: &[u8]| match p {
                    Segment::Wildcard => true,
                    Segment::Literal(l) => l == s,
                };
                let actual = &path.segments;
                match pattern.split_last() {
                    Some((Segment::Wildcard, head)) => {
                        actual.len() > head.len()
                            && head.iter().zip(actual).all(|(p, s)| seg_eq(p, s))
                    }
                    _ => {
                        actual.len() == pattern.len()
                            && pattern.iter().zip(actual).all(|(p, s)| seg_eq(p, s))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> RequestPath {
        RequestPath::parse(s).unwrap()
    }

    fn pat(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn coder_path_table() {
        let rows: &[(&str, &[&str], &[&str])] = &[
            ("*", &["/", "/a/b/c"], &[]),
            (
                "/api/users",
                &["/api/users", "/api/users?x=1"],
                &["/api/users/123", "/api/users/", "/api"],
            ),
            (
                "/api/*",
                &["/api/users", "/api/posts", "/api/a/b"],
                &["/api", "/apix"],
            ),
            (
                "/api/*/users",
                &["/api/v1/users", "/api/v2/users"],
                &["/api/users", "/api/v1/v2/users"],
            ),
            ("/*/users", &["/api/users", "/v1/users"], &["/api/v1/users"]),
            (
                "/api/v1/*",
                &["/api/v1/users", "/api/v1/users/123/details"],
                &["/api/v1"],
            ),
            ("/", &["/", "/?q"], &["/a"]),
        ];
        for (pattern, yes, no) in rows {
            let p = pat(pattern);
            for s in *yes {
                assert!(p.matches(&path(s)), "{pattern} should match {s}");
            }
            for s in *no {
                assert!(!p.matches(&path(s)), "{pattern} should not match {s}");
            }
        }
    }

    #[test]
    fn dot_segments_are_resolved_before_matching() {
        let api = pat("/api/*");
        for sneaky in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/%2E%2e/admin",
            "/api/.%2e/admin",
            "/api\\..\\admin",
            "/api%5c..%5cadmin",
            "/api/x/../../admin",
        ] {
            assert_eq!(path(sneaky).to_string(), "/admin", "{sneaky}");
            assert!(
                !api.matches(&path(sneaky)),
                "{sneaky} must not match /api/*"
            );
        }
        // `/api/\..\admin` is `/api//../admin`: the `..` removes the empty segment.
        assert_eq!(path("/api/%5c..%5cadmin").to_string(), "/api/admin");
        assert_eq!(path("/api/x/../y").to_string(), "/api/y");
        assert_eq!(path("/a/./b/.").to_string(), "/a/b/");
        assert_eq!(path("/../../..").to_string(), "/");
        assert!(api.matches(&path("/api/x/../y")));
    }

    #[test]
    fn encoded_slashes_stay_inside_their_segment() {
        let p = path("/@types%2fnode");
        assert_eq!(
            p.segments().collect::<Vec<_>>(),
            [b"@types/node".as_slice()]
        );
        assert!(pat("/*").matches(&p));
        assert!(!pat("/@types/node").matches(&p));
        assert!(pat("/@types%2Fnode").matches(&p));
        assert!(pat("/caf%C3%A9").matches(&path("/caf%c3%a9")));
    }

    #[test]
    fn bad_input_is_an_error_not_a_guess() {
        assert_eq!(RequestPath::parse("/a%zz"), Err(PathError::BadPercent(2)));
        assert_eq!(RequestPath::parse("/a%2"), Err(PathError::BadPercent(2)));
        assert_eq!(RequestPath::parse("api"), Err(PathError::NotAbsolute));
        assert!(
            PathPattern::parse("/api/user*")
                .unwrap_err()
                .message
                .contains("whole path segment")
        );
        assert!(
            PathPattern::parse("api")
                .unwrap_err()
                .message
                .contains("must start with")
        );
        assert!(PathPattern::parse("/a/../b").is_err());
    }

    #[test]
    fn asterisk_form_matches_only_any() {
        let star = path("*");
        assert!(pat("*").matches(&star));
        assert!(!pat("/").matches(&star));
        assert!(!pat("/*").matches(&star));
    }

    #[test]
    fn older_form_globs() {
        let g = PathPattern::glob("/api/issues/*");
        assert!(g.matches(&path("/api/issues/1/comments")));
        assert!(!g.matches(&path("/api/pulls/1")));
        assert!(!g.matches(&path("/api/issues/../../admin")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any bytes, some written as they are and some percent-encoded (either case of hex),
        /// decode back to themselves; a segment without `%` is not copied.
        #[test]
        fn encoded_segments_decode_to_their_bytes(
            bytes in proptest::collection::vec((proptest::num::u8::ANY, 0..3u8), 0..12),
        ) {
            let mut raw = Vec::new();
            for (byte, how) in &bytes {
                match how {
                    0 if *byte != b'%' => raw.push(*byte),
                    1 => raw.extend_from_slice(format!("%{byte:02x}").as_bytes()),
                    _ => raw.extend_from_slice(format!("%{byte:02X}").as_bytes()),
                }
            }
            let decoded = percent_decode(&raw);
            let expected: Vec<u8> = bytes.iter().map(|(b, _)| *b).collect();
            proptest::prop_assert_eq!(decoded.as_deref(), Ok(expected.as_slice()));
            proptest::prop_assert_eq!(
                matches!(decoded, Ok(Cow::Borrowed(_))),
                !raw.contains(&b'%')
            );
        }
    }
}
