use super::*;
use crate::policy::{HttpRule, Port, TcpRule, TlsMode};
use crate::rules::{RuleSource, compile};

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// `code field pattern` of each warning of a policy `p` with these allow and deny rules.
fn warnings(allow: &[&str], deny: &[&str]) -> Vec<String> {
    let allow = strings(allow);
    let deny = strings(deny);
    let rules = compile(RuleSource {
        policy: Some("p"),
        field_prefix: "spec.",
        allow: &allow,
        deny: &deny,
        ..RuleSource::default()
    })
    .unwrap();
    lint(&rules, &[])
        .iter()
        .map(|w| format!("{} {} {}", w.code, w.field, w.pattern))
        .collect()
}

fn one(rule: &str) -> Vec<String> {
    warnings(&[rule], &[])
}

#[test]
fn the_data_parses_and_every_entry_is_a_valid_pattern_with_a_known_category() {
    let data = data();
    assert!(data.version >= 1);
    assert!(data.destinations.len() > 40, "{}", data.destinations.len());
    assert!(data.public_suffixes.contains("com") && data.public_suffixes.contains("co.uk"));
    let categories = [
        "paste-site",
        "request-bin",
        "tunnel",
        "object-store",
        "code-host-upload",
        "chat-webhook",
    ];
    let mut seen = BTreeSet::new();
    for d in &data.destinations {
        assert!(seen.insert(&d.domain), "{} twice", d.domain);
        DomainPattern::parse(&d.domain).unwrap_or_else(|e| panic!("{}: {}", d.domain, e.message));
        assert!(categories.contains(&d.category.as_str()), "{}", d.category);
        assert!(!d.why.is_empty());
        for p in &d.paths {
            PathPattern::parse(p).unwrap_or_else(|e| panic!("{}: {}", d.domain, e.message));
        }
    }
    for suffix in &data.public_suffixes {
        assert!(Host::parse(suffix).is_ok(), "{suffix}");
    }
}

#[test]
fn rules_that_open_a_channel_warn_with_code_place_and_pattern() {
    let table: &[(&str, &[&str])] = &[
        // Anyone can publish there.
        (
            "domain=pastebin.com",
            &["publish-anywhere spec.allow[0] pastebin.com"],
        ),
        (
            "domain=pastebin.com method=GET",
            &["publish-anywhere spec.allow[0] pastebin.com"],
        ),
        (
            "domain=webhook.site path=/abc",
            &["publish-anywhere spec.allow[0] webhook.site"],
        ),
        (
            "domain=abc.ngrok-free.app",
            &["publish-anywhere spec.allow[0] abc.ngrok-free.app"],
        ),
        (
            "domain=*.s3.amazonaws.com",
            &["publish-anywhere spec.allow[0] *.s3.amazonaws.com"],
        ),
        (
            "domain=s3.eu-west-1.amazonaws.com method=PUT",
            &["publish-anywhere spec.allow[0] s3.eu-west-1.amazonaws.com"],
        ),
        (
            "domain=*.blob.core.windows.net",
            &["publish-anywhere spec.allow[0] *.blob.core.windows.net"],
        ),
        (
            "domain=storage.googleapis.com",
            &["publish-anywhere spec.allow[0] storage.googleapis.com"],
        ),
        (
            "domain=*.amazonaws.com",
            &["publish-anywhere spec.allow[0] *.amazonaws.com"],
        ),
        (
            "domain=gist.github.com",
            &["publish-anywhere spec.allow[0] gist.github.com"],
        ),
        (
            "domain=api.github.com",
            &["publish-anywhere spec.allow[0] api.github.com"],
        ),
        (
            "domain=api.github.com method=POST path=/gists",
            &["publish-anywhere spec.allow[0] api.github.com"],
        ),
        (
            "domain=discord.com method=POST path=/api/webhooks/*",
            &["publish-anywhere spec.allow[0] discord.com"],
        ),
        (
            "domain=hooks.slack.com",
            &["publish-anywhere spec.allow[0] hooks.slack.com"],
        ),
        (
            "domain=api.telegram.org method=GET",
            &["publish-anywhere spec.allow[0] api.telegram.org"],
        ),
        // Every host.
        ("domain=*", &["any-host spec.allow[0] *"]),
        ("method=GET", &["any-host spec.allow[0] *"]),
        ("domain=0.0.0.0/0", &["any-host spec.allow[0] 0.0.0.0/0"]),
        // A wildcard right under a public suffix.
        ("domain=*.com", &["wildcard-tld spec.allow[0] *.com"]),
        (
            "domain=*.co.uk method=GET",
            &["wildcard-tld spec.allow[0] *.co.uk"],
        ),
        ("domain=api.*.io", &["wildcard-tld spec.allow[0] api.*.io"]),
        (
            "domain=*.github.io",
            &["wildcard-tld spec.allow[0] *.github.io"],
        ),
        ("GET *.com/*", &["wildcard-tld spec.allow[0] *.com"]),
        // Writes to a broad wildcard.
        (
            "domain=*.example.com",
            &["broad-write spec.allow[0] *.example.com"],
        ),
        (
            "domain=*.example.com method=POST",
            &["broad-write spec.allow[0] *.example.com"],
        ),
        (
            "domain=api.*.example.com method=DELETE path=*",
            &["broad-write spec.allow[0] api.*.example.com"],
        ),
    ];
    for (rule, expected) in table {
        assert_eq!(one(rule), *expected, "{rule}");
    }
}

#[test]
fn ordinary_rules_do_not_warn() {
    for rule in [
        "domain=api.github.com method=GET,HEAD",
        "domain=api.github.com method=POST path=/repos/*",
        "domain=*.github.com method=GET,HEAD",
        "domain=*.github.com method=GET",
        "domain=registry.npmjs.org",
        "domain=registry.npmjs.org method=GET,HEAD",
        "domain=*.example.com method=GET,HEAD,OPTIONS",
        "domain=*.example.com method=POST path=/api/v1/*",
        "domain=github.com",
        "domain=discord.com method=GET",
        "domain=discord.com method=POST path=/api/v9/channels/*",
        "domain=mybucket.s3.amazonaws.com method=GET",
        "domain=10.0.0.0/8",
        "domain=example.com",
        "domain=storage.googleapis.com method=GET",
    ] {
        assert_eq!(one(rule), Vec::<String>::new(), "{rule}");
    }
}

#[test]
fn a_deny_rule_that_covers_the_rule_silences_it_and_a_narrower_one_does_not() {
    assert!(warnings(&["domain=pastebin.com"], &["domain=pastebin.com"]).is_empty());
    assert!(warnings(&["domain=*.s3.amazonaws.com"], &["domain=*.amazonaws.com"]).is_empty());
    assert!(warnings(&["domain=x.ngrok.io"], &["domain=*.ngrok.io"]).is_empty());
    assert!(
        warnings(
            &["domain=pastebin.com port=443"],
            &["domain=pastebin.com port=443,80"]
        )
        .is_empty()
    );
    // Narrower: a method, a path, fewer ports, another host.
    for deny in [
        "domain=pastebin.com method=POST",
        "domain=pastebin.com path=/api/*",
        "domain=pastebin.com port=443",
        "domain=*.pastebin.com",
        "domain=paste.ee",
    ] {
        assert_eq!(
            warnings(&["domain=pastebin.com"], &[deny]),
            ["publish-anywhere spec.allow[0] pastebin.com"],
            "{deny}"
        );
    }
}

#[test]
fn structured_tcp_and_preset_rules_name_their_place() {
    let http = vec![HttpRule {
        domains: strings(&["api.example.com", "*.example.net", "paste.ee"]),
        ..HttpRule::default()
    }];
    let tcp = vec![TcpRule {
        domain: "*.example.org".into(),
        ports: vec![Port::new(22).unwrap()],
    }];
    let passthrough = HttpRule {
        domains: strings(&["*.pinned.example"]),
        tls: TlsMode::Passthrough,
        ..HttpRule::default()
    };
    let http = [http, vec![passthrough]].concat();
    let presets = strings(&["npm", "github"]);
    let rules = compile(RuleSource {
        policy: Some("agents"),
        cluster: true,
        field_prefix: "spec.",
        presets: &presets,
        http: &http,
        tcp: &tcp,
        ..RuleSource::default()
    })
    .unwrap();
    let found: Vec<String> = lint(&rules, &[]).iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(
        found[0].starts_with(
            "ClusterBoundaryPolicy agents: spec.presets[1] (github): domain=api.github.com: \
         publish-anywhere api.github.com: POST /gists"
        ),
        "{}",
        found[0]
    );
    assert!(
        found[1].starts_with(
            "ClusterBoundaryPolicy agents: spec.http[0].domains[1]: broad-write *.example.net: \
         allows writes"
        ),
        "{}",
        found[1]
    );
    assert!(
        found[2].starts_with(
            "ClusterBoundaryPolicy agents: spec.http[0].domains[2]: publish-anywhere paste.ee"
        ),
        "{}",
        found[2]
    );
    assert!(
        found[3].starts_with(
            "ClusterBoundaryPolicy agents: spec.http[1].domains[0]: broad-write *.pinned.example: \
         relays uninspected"
        ),
        "{}",
        found[3]
    );
    assert!(
        found[4].starts_with(
            "ClusterBoundaryPolicy agents: spec.tcp[0].domain: broad-write *.example.org"
        ),
        "{}",
        found[4]
    );
}

/// The shipped presets: only `github` (read and write by design) opens a channel, through the
/// REST API's gists; the read-only ones and the tool presets do not.
#[test]
fn only_the_github_presets_gists_warn_among_the_shipped_presets() {
    for preset in crate::presets::PRESETS {
        let names = vec![preset.name.to_owned()];
        let rules = compile(RuleSource {
            field_prefix: "spec.",
            presets: &names,
            ..RuleSource::default()
        })
        .unwrap();
        let found: Vec<String> = lint(&rules, &[])
            .iter()
            .map(|w| format!("{} {}", w.code, w.pattern))
            .collect();
        let expected: &[&str] = if preset.name == "github" {
            &["publish-anywhere api.github.com"]
        } else {
            &[]
        };
        assert_eq!(found, expected, "{}", preset.name);
    }
}

#[test]
fn ignored_codes_are_left_out_and_unknown_words_returned() {
    let (codes, unknown) = parse_ignore(" publish-anywhere,broad-write , nope,,publish-anywhere");
    assert_eq!(codes, [Code::PublishAnywhere, Code::BroadWrite]);
    assert_eq!(unknown, ["nope"]);
    let allow = strings(&["domain=pastebin.com", "domain=*"]);
    let rules = compile(RuleSource {
        field_prefix: "--",
        allow: &allow,
        ..RuleSource::default()
    })
    .unwrap();
    let left: Vec<Code> = lint(&rules, &codes).iter().map(|w| w.code).collect();
    assert_eq!(left, [Code::AnyHost]);
}

#[test]
fn a_policy_entry_is_linted_and_one_that_does_not_compile_has_no_warning() {
    let mut entry = PolicyEntry {
        name: "web".into(),
        allow: strings(&["domain=termbin.com"]),
        ..PolicyEntry::default()
    };
    let found = lint_entry(&entry, &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "spec.allow[0]");
    assert_eq!(found[0].category.as_deref(), Some("paste-site"));
    entry.allow.push("domain=".into());
    assert!(lint_entry(&entry, &[]).is_empty());
}

#[test]
fn risky_hosts_are_found_with_their_subdomains() {
    assert_eq!(
        risky_host("pastebin.com").map(|d| d.category.as_str()),
        Some("paste-site")
    );
    assert_eq!(
        risky_host("my-bucket.s3.us-east-1.amazonaws.com").map(|d| d.domain.as_str()),
        Some("s3.*.amazonaws.com")
    );
    assert!(risky_host("api.github.com").is_some());
    assert!(risky_host("registry.npmjs.org").is_none());
    assert!(risky_host("com").is_none());
}
