//! Presets: named rule sets maintained with the project (`spec.presets`, `boundary run
//! --preset NAME`), so a policy can say `claude-code` instead of listing Anthropic's hosts.
//!
//! A preset is data: deny and allow rules in the same forms a policy uses. [`crate::rules`]
//! compiles them where the preset is named, with an origin that names the preset
//! (`spec.presets[0] (github-read-only): domain=github.com ...`). `boundary presets show NAME`
//! prints an expansion; the README lists them all (a test keeps it in sync).
//!
//! Each preset is minimal: the hosts the tool needs for its work, read-only where the tool
//! allows, and no telemetry. What a preset leaves out on purpose is in its `left_out` notes.
//! Presets name hosts, not ports: the proxy checks ports only where a rule lists them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::policy::HttpRule;

/// The version of the presets' data. It goes up whenever any preset's rules change (a host
/// added or removed, a method or path narrowed); the README's preset section says what changed.
/// A pod gets the expansion of the `boundary` binary that enforces its policy (the sidecar's
/// image), so after an upgrade the same preset name can allow a little more or less.
pub const VERSION: u32 = 1;

/// A structured HTTP rule of a preset (the `http`/`denyHttp` fields), as static data.
#[derive(Clone, Copy, Debug)]
pub struct PresetHttpRule {
    /// Host patterns.
    pub domains: &'static [&'static str],
    /// Methods; empty: any.
    pub methods: &'static [&'static str],
    /// Path patterns; empty: any.
    pub paths: &'static [&'static str],
    /// Query conditions: parameter name, value glob.
    pub query: &'static [(&'static str, &'static str)],
}

impl PresetHttpRule {
    /// The rule as a policy would write it.
    pub fn to_rule(&self) -> HttpRule {
        HttpRule {
            domains: owned(self.domains),
            methods: owned(self.methods),
            paths: owned(self.paths),
            query: self
                .query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ..HttpRule::default()
        }
    }
}

/// A named rule set.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// The name used in `spec.presets` and `--preset`.
    pub name: &'static str,
    /// What it is for, one line.
    pub summary: &'static str,
    /// Deny rules in Coder's grammar.
    pub deny: &'static [&'static str],
    /// Structured deny rules.
    pub deny_http: &'static [PresetHttpRule],
    /// Allow rules in Coder's grammar.
    pub allow: &'static [&'static str],
    /// Structured allow rules.
    pub http: &'static [PresetHttpRule],
    /// What the preset deliberately does not allow, and why.
    pub left_out: &'static [&'static str],
}

/// The rules of a preset, owned, in the shapes [`crate::rules::RuleSource`] takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresetRules {
    /// Deny rules in Coder's grammar.
    pub deny: Vec<String>,
    /// Structured deny rules.
    pub deny_http: Vec<HttpRule>,
    /// Allow rules in Coder's grammar.
    pub allow: Vec<String>,
    /// Structured allow rules.
    pub http: Vec<HttpRule>,
}

impl Preset {
    /// Its rules, owned.
    pub fn rules(&self) -> PresetRules {
        PresetRules {
            deny: owned(self.deny),
            deny_http: self.deny_http.iter().map(PresetHttpRule::to_rule).collect(),
            allow: owned(self.allow),
            http: self.http.iter().map(PresetHttpRule::to_rule).collect(),
        }
    }

    /// The expansion as `boundary presets show` prints it: comments, then the YAML fields of a
    /// policy's `spec` that say the same (they can be pasted into a `BoundaryPolicy`).
    pub fn show(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {} (presets version {VERSION})", self.name);
        let _ = writeln!(out, "# {}", self.summary);
        for note in self.left_out {
            let _ = writeln!(out, "# Left out: {note}");
        }
        write_list(&mut out, "deny", self.deny);
        write_http(&mut out, "denyHttp", self.deny_http);
        write_list(&mut out, "allow", self.allow);
        write_http(&mut out, "http", self.http);
        out
    }
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A YAML (and JSON) string: every rule is quoted, so `*` and `:` never change its meaning.
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn write_list(out: &mut String, field: &str, items: &[&str]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{field}:");
    for item in items {
        let _ = writeln!(out, "  - {}", quoted(item));
    }
}

fn write_http(out: &mut String, field: &str, rules: &[PresetHttpRule]) {
    if rules.is_empty() {
        return;
    }
    let inline = |items: &[&str]| {
        let quoted: Vec<String> = items.iter().map(|s| quoted(s)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let _ = writeln!(out, "{field}:");
    for rule in rules {
        let _ = writeln!(out, "  - domains: {}", inline(rule.domains));
        if !rule.methods.is_empty() {
            let _ = writeln!(out, "    methods: {}", inline(rule.methods));
        }
        if !rule.paths.is_empty() {
            let _ = writeln!(out, "    paths: {}", inline(rule.paths));
        }
        if !rule.query.is_empty() {
            let pairs: Vec<String> = rule
                .query
                .iter()
                .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
                .collect();
            let _ = writeln!(out, "    query: {{{}}}", pairs.join(", "));
        }
    }
}

/// Every preset, in the order `boundary presets list` prints them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "claude-code",
        summary: "Claude Code: Anthropic's API, and refreshing a Claude account's login.",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=api.anthropic.com",
            "domain=console.anthropic.com method=POST path=/v1/oauth/token",
        ],
        http: &[],
        left_out: &[
            "telemetry and error reports (statsig.anthropic.com, *.sentry.io): a channel out \
             that the agent does not need; set CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
            "the browser login (claude.ai): log in outside the jail; the token is refreshed here",
            "auto-updates, plugins and MCP servers: add their hosts (or the npm preset) yourself",
        ],
    },
    Preset {
        name: "codex",
        summary: "OpenAI Codex CLI: the OpenAI API (API key) or ChatGPT's backend (ChatGPT login).",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=api.openai.com",
            "domain=chatgpt.com path=/backend-api/*",
            "domain=auth.openai.com method=POST path=/oauth/token",
        ],
        http: &[],
        left_out: &[
            "the rest of chatgpt.com (the web app) and telemetry: the agent does not need them",
            "the browser login (auth.openai.com/oauth/authorize): log in outside the jail; the \
             token is refreshed here",
        ],
    },
    Preset {
        name: "github-read-only",
        summary: "GitHub, reading only: REST API reads, git clone and fetch over HTTPS; never \
                  a push.",
        deny: &["domain=github.com path=/*/*/git-receive-pack"],
        deny_http: &[PresetHttpRule {
            domains: &["github.com"],
            methods: &[],
            paths: &["/*/*/info/refs"],
            query: &[("service", "git-receive-pack")],
        }],
        allow: &[
            "domain=api.github.com method=GET,HEAD",
            "domain=github.com method=POST path=/*/*/git-upload-pack",
        ],
        http: &[PresetHttpRule {
            domains: &["github.com"],
            methods: &["GET"],
            paths: &["/*/*/info/refs"],
            query: &[("service", "git-upload-pack")],
        }],
        left_out: &[
            "GraphQL (POST api.github.com/graphql): one endpoint for reads and writes",
            "git push (info/refs?service=git-receive-pack and git-receive-pack), denied even \
             when another rule allows github.com",
            "Git LFS, release downloads, raw.githubusercontent.com and the web pages: add them \
             when needed",
            "git over ssh (port 22): the proxy cannot see a push inside it",
        ],
    },
    Preset {
        name: "github",
        summary: "GitHub, reading and writing: the web, the REST and GraphQL APIs, git over \
                  HTTPS (push too), uploads and downloads.",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=github.com",
            "domain=api.github.com",
            "domain=uploads.github.com",
            "domain=codeload.github.com method=GET,HEAD",
            "domain=raw.githubusercontent.com method=GET,HEAD",
            "domain=objects.githubusercontent.com method=GET,HEAD",
        ],
        http: &[],
        left_out: &[
            "git over ssh (port 22): use HTTPS, or add a tcp rule",
            "GitHub Container Registry (ghcr.io), Pages and Codespaces",
        ],
    },
    Preset {
        name: "npm",
        summary: "npm's registry, reading only: package metadata and tarballs.",
        deny: &[],
        deny_http: &[],
        allow: &["domain=registry.npmjs.org method=GET,HEAD"],
        http: &[],
        left_out: &[
            "npm publish (PUT) and npm audit (POST: it sends the dependency list); set \
             audit=false or npm prints a warning",
        ],
    },
    Preset {
        name: "pypi",
        summary: "The Python Package Index, reading only: the simple index, JSON API and files.",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=pypi.org method=GET,HEAD",
            "domain=files.pythonhosted.org method=GET,HEAD",
        ],
        http: &[],
        left_out: &["uploads (upload.pypi.org)"],
    },
    Preset {
        name: "crates",
        summary: "crates.io, reading only: the sparse index, crate downloads and the API's reads.",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=index.crates.io method=GET,HEAD",
            "domain=static.crates.io method=GET,HEAD",
            "domain=crates.io method=GET,HEAD",
        ],
        http: &[],
        left_out: &[
            "cargo publish, yank and owner changes (PUT and DELETE on crates.io)",
            "the git index (github.com/rust-lang/crates.io-index): cargo uses the sparse index",
        ],
    },
    Preset {
        name: "go-modules",
        summary: "Go modules, reading only: the module proxy and the checksum database.",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=proxy.golang.org method=GET,HEAD",
            "domain=sum.golang.org method=GET,HEAD",
        ],
        http: &[],
        left_out: &[
            "direct fetches from version control (GOPROXY=direct, GOPRIVATE modules): add \
             their hosts",
        ],
    },
    Preset {
        name: "debian",
        summary: "Debian's archive, reading only: packages and security updates (apt over \
                  HTTP or HTTPS).",
        deny: &[],
        deny_http: &[],
        allow: &[
            "domain=deb.debian.org method=GET,HEAD",
            "domain=security.debian.org method=GET,HEAD",
        ],
        http: &[],
        left_out: &["other mirrors, snapshot.debian.org and backports hosts: add them"],
    },
];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Every preset's name, comma-separated (for messages).
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The README's preset section: every preset's [`Preset::show`] in a YAML block.
pub fn markdown() -> String {
    let mut out = String::new();
    for preset in PRESETS {
        let _ = writeln!(out, "`{}`:\n\n```yaml\n{}```\n", preset.name, preset.show());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lower_case() {
        let mut seen = std::collections::BTreeSet::new();
        for p in PRESETS {
            assert!(seen.insert(p.name), "{} twice", p.name);
            assert!(
                p.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                p.name
            );
        }
        assert_eq!(find("npm").map(|p| p.name), Some("npm"));
        assert!(find("NPM").is_none() && find("nope").is_none());
    }

    /// The printed expansion is the preset: read back as a policy's `spec` fields, it gives
    /// the same rules (so users can paste it into a `BoundaryPolicy`).
    #[cfg(feature = "kube")]
    #[test]
    fn show_prints_yaml_that_reads_back_as_the_presets_rules() {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            deny: Vec<String>,
            #[serde(default)]
            deny_http: Vec<HttpRule>,
            #[serde(default)]
            allow: Vec<String>,
            #[serde(default)]
            http: Vec<HttpRule>,
        }
        for p in PRESETS {
            let shown = p.show();
            assert!(shown.starts_with(&format!("# {} (presets version {VERSION})", p.name)));
            let read: Fields = serde_yaml_ng::from_str(&shown)
                .unwrap_or_else(|e| panic!("{}: {e}\n{shown}", p.name));
            let rules = p.rules();
            assert_eq!(read.deny, rules.deny, "{}", p.name);
            assert_eq!(read.deny_http, rules.deny_http, "{}", p.name);
            assert_eq!(read.allow, rules.allow, "{}", p.name);
            assert_eq!(read.http, rules.http, "{}", p.name);
        }
    }

    /// Every preset's expansion, compiled by the rule engine, one rule a line.
    fn compiled_expansion(names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let compiled = crate::rules::compile(crate::rules::RuleSource {
            field_prefix: "spec.",
            presets: &names,
            ..crate::rules::RuleSource::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        for rule in &compiled {
            let kind = if rule.is_deny() { "deny " } else { "allow" };
            let _ = writeln!(out, "{kind} {}", rule.origin());
        }
        out
    }

    #[test]
    fn every_preset_compiles_to_these_rules() {
        let all: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        pretty_assertions::assert_eq!(compiled_expansion(&all), GOLDEN);
    }

    /// The expansions, reviewed by hand: a change here is a change users see (bump [`VERSION`]).
    const GOLDEN: &str = "\
allow spec.presets[0] (claude-code): domain=api.anthropic.com
allow spec.presets[0] (claude-code): domain=console.anthropic.com method=POST path=/v1/oauth/token
allow spec.presets[1] (codex): domain=api.openai.com
allow spec.presets[1] (codex): domain=chatgpt.com path=/backend-api/*
allow spec.presets[1] (codex): domain=auth.openai.com method=POST path=/oauth/token
deny  spec.presets[2] (github-read-only): domain=github.com path=/*/*/git-receive-pack
deny  spec.presets[2] (github-read-only): domains=github.com paths=/*/*/info/refs query=service:git-receive-pack
allow spec.presets[2] (github-read-only): domain=api.github.com method=GET,HEAD
allow spec.presets[2] (github-read-only): domain=github.com method=POST path=/*/*/git-upload-pack
allow spec.presets[2] (github-read-only): domains=github.com methods=GET paths=/*/*/info/refs query=service:git-upload-pack
allow spec.presets[3] (github): domain=github.com
allow spec.presets[3] (github): domain=api.github.com
allow spec.presets[3] (github): domain=uploads.github.com
allow spec.presets[3] (github): domain=codeload.github.com method=GET,HEAD
allow spec.presets[3] (github): domain=raw.githubusercontent.com method=GET,HEAD
allow spec.presets[3] (github): domain=objects.githubusercontent.com method=GET,HEAD
allow spec.presets[4] (npm): domain=registry.npmjs.org method=GET,HEAD
allow spec.presets[5] (pypi): domain=pypi.org method=GET,HEAD
allow spec.presets[5] (pypi): domain=files.pythonhosted.org method=GET,HEAD
allow spec.presets[6] (crates): domain=index.crates.io method=GET,HEAD
allow spec.presets[6] (crates): domain=static.crates.io method=GET,HEAD
allow spec.presets[6] (crates): domain=crates.io method=GET,HEAD
allow spec.presets[7] (go-modules): domain=proxy.golang.org method=GET,HEAD
allow spec.presets[7] (go-modules): domain=sum.golang.org method=GET,HEAD
allow spec.presets[8] (debian): domain=deb.debian.org method=GET,HEAD
allow spec.presets[8] (debian): domain=security.debian.org method=GET,HEAD
";

    #[test]
    fn an_unknown_preset_is_a_problem_at_its_place_naming_the_known_ones() {
        let named = vec!["npm".to_owned(), "githb".to_owned(), "pypi".to_owned()];
        let crate::rules::CompileErrors(problems) =
            crate::rules::compile(crate::rules::RuleSource {
                policy: Some("agents"),
                field_prefix: "spec.",
                presets: &named,
                ..crate::rules::RuleSource::default()
            })
            .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            format!(
                "agents: spec.presets[1]: unknown preset \"githb\"; the presets are: {} \
                 (`boundary presets list`)",
                names()
            )
        );
        assert!(names().contains("github-read-only, github, npm"));
        // Flags name their own place.
        let crate::rules::CompileErrors(problems) =
            crate::rules::compile(crate::rules::RuleSource {
                field_prefix: "--",
                presets: &["Npm".to_owned()],
                ..crate::rules::RuleSource::default()
            })
            .unwrap_err();
        assert_eq!(problems[0].field, "--preset[0]");
    }

    #[test]
    fn a_presets_deny_rule_beats_every_allow_and_names_the_preset() {
        use crate::policy::Mode;
        use crate::rules::{Host, HttpRequest, RequestPath, RuleSet, Verdict, raw_query};
        let compiled = crate::rules::compile(crate::rules::RuleSource {
            policy: Some("admins"),
            cluster: true,
            field_prefix: "spec.",
            presets: &["github-read-only".to_owned()],
            allow: &["domain=github.com".to_owned()],
            ..crate::rules::RuleSource::default()
        })
        .unwrap();
        let set = RuleSet::new(compiled, Mode::Enforce);
        let host = Host::parse("github.com").unwrap();
        let decide = |method: &str, target: &str| {
            let path = RequestPath::parse(target).unwrap();
            let verdict = set.check_http(HttpRequest {
                query: raw_query(target),
                ..HttpRequest::new(&host, 443, method, &path)
            });
            match verdict {
                Verdict::Allow(rule) => format!("allow {}", rule.origin()),
                Verdict::Denied { by, .. } => format!("denied {}", by.origin()),
                Verdict::Deny(_) => "deny".to_owned(),
            }
        };
        assert_eq!(
            decide("POST", "/o/r.git/git-receive-pack"),
            "denied ClusterBoundaryPolicy admins spec.presets[0] (github-read-only): \
             domain=github.com path=/*/*/git-receive-pack"
        );
        assert_eq!(
            decide("POST", "/o/r.git/git-upload-pack"),
            "allow ClusterBoundaryPolicy admins spec.presets[0] (github-read-only): \
             domain=github.com method=POST path=/*/*/git-upload-pack"
        );
        // Dot-segments cannot sneak a push past the deny rule.
        assert!(decide("POST", "/o/r/x/../git-receive-pack").starts_with("denied"));
        // The push's first request is refused already; the clone's is allowed, by the preset.
        assert_eq!(
            decide("GET", "/o/r.git/info/refs?service=git-receive-pack"),
            "denied ClusterBoundaryPolicy admins spec.presets[0] (github-read-only): \
             domains=github.com paths=/*/*/info/refs query=service:git-receive-pack"
        );
        assert_eq!(
            decide("GET", "/o/r.git/info/refs?service=git-upload-pack"),
            "allow ClusterBoundaryPolicy admins spec.presets[0] (github-read-only): \
             domains=github.com methods=GET paths=/*/*/info/refs query=service:git-upload-pack"
        );
    }

    /// The README's preset section is [`markdown`]: it cannot drift from the data. Run with
    /// `BLESS_README=1` to rewrite it after changing a preset.
    #[test]
    fn the_readme_lists_every_preset_as_presets_show_prints_it() {
        const BEGIN: &str = "<!-- presets:begin -->\n";
        const END: &str = "<!-- presets:end -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme
            .find(BEGIN)
            .expect("the README's presets:begin marker")
            + BEGIN.len();
        let end = readme.find(END).expect("the README's presets:end marker");
        let expected = markdown();
        if std::env::var_os("BLESS_README").is_some() {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        pretty_assertions::assert_eq!(
            &readme[start..end],
            expected,
            "README.md's preset section is stale: run BLESS_README=1 cargo nextest run -p \
             boundary-api presets"
        );
    }
}
