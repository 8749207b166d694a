//! `boundary run --credential`: a credential the in-process proxy puts into requests, whose real
//! value stays in the supervisor's environment while the jailed command sees a placeholder.
//!
//! A spec is `key=value` words: `domain=HOST` (repeatable or comma-separated, wildcards as in
//! rules), `env=VAR` (where the real value is now, and where the jailed command finds the
//! placeholder), and one of `header=NAME [format=...]` (default format `{value}`; a format may
//! contain spaces, e.g. `format=Bearer {value}`), `basic=USER`, or the bare word `sigv4` (the
//! real keys in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`).
//! Optional: `name=` (default: from `env`, e.g. `GITHUB_TOKEN` → `github-token`; `aws` for
//! sigv4), `path=`, `method=`, `port=` (comma-separated) to narrow the destinations.

use std::collections::HashMap;
use std::ffi::OsString;

use boundary_api::Port;
use boundary_api::credentials::{
    AwsIdentity, AwsKeys, AwsSigV4Injection, BasicAuthInjection, Credential, CredentialDestination,
    CredentialValue, HeaderInjection, Injection, aws_keys,
};

/// The credentials of `--credential`, their values and what the jailed command's environment
/// gets instead.
#[derive(Debug, Default)]
pub struct Standalone {
    /// As `spec.credentials[]` entries.
    pub credentials: Vec<Credential>,
    /// The real values, by credential name.
    pub values: HashMap<String, CredentialValue>,
    /// The placeholder nonce of this run.
    pub nonce: String,
    /// Environment variables set in the jail: the placeholders.
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables removed in the jail (real values without a placeholder).
    pub env_remove: Vec<OsString>,
}

const KEYS: [&str; 9] = [
    "domain", "env", "header", "format", "basic", "name", "path", "method", "port",
];

/// Parses one `--credential` spec (no environment read).
pub fn parse(spec: &str) -> Result<Credential, String> {
    let fail = |why: String| {
        format!(
            "--credential {spec:?}: {why}. Form: 'domain=HOST env=VAR header=NAME \
             [format=Bearer {{value}}]', 'domain=HOST env=VAR basic=USER' or 'domain=HOST sigv4'"
        )
    };
    let (fields, sigv4) = words(spec).map_err(fail)?;
    let all = |key: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()))
            .map(str::to_owned)
            .collect()
    };
    let one = |key: &str| -> Result<Option<String>, String> {
        let mut found = fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone());
        let first = found.next();
        if found.next().is_some() {
            return Err(format!("{key}= is given twice"));
        }
        Ok(first)
    };
    let get = |key: &str| match one(key) {
        Ok(v) => Ok(v),
        Err(why) => Err(fail(why)),
    };
    let domains = all("domain");
    if domains.is_empty() {
        return Err(fail("domain=HOST is missing".into()));
    }
    let (env, header, format, basic) = (get("env")?, get("header")?, get("format")?, get("basic")?);
    let kinds = usize::from(header.is_some()) + usize::from(basic.is_some()) + usize::from(sigv4);
    if kinds != 1 {
        return Err(fail(
            "give exactly one of header=NAME, basic=USER and sigv4".into(),
        ));
    }
    if format.is_some() && header.is_none() {
        return Err(fail("format= goes with header=NAME".into()));
    }
    if sigv4 && env.is_some() {
        return Err(fail(
            "sigv4 reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: no env=".into(),
        ));
    }
    if !sigv4 && env.is_none() {
        return Err(fail(
            "env=VAR is missing: the variable holding the real value".into(),
        ));
    }
    let name = match (get("name")?, &env) {
        (Some(n), _) => n,
        (None, Some(var)) => var.to_ascii_lowercase().replace('_', "-"),
        (None, None) => "aws".to_owned(),
    };
    let mut ports = Vec::new();
    for p in all("port") {
        match p.parse::<u16>().ok().and_then(Port::new) {
            Some(port) => ports.push(port),
            None => return Err(fail(format!("port={p} is not a port (1 to 65535)"))),
        }
    }
    let inject = injection(header, format, basic);
    let credential = Credential {
        name,
        // Validation wants a source for header and basic; the value comes from `env`.
        secret_key_ref: (!sigv4).then(|| boundary_api::credentials::SecretKeyRef {
            name: "--credential".into(),
            key: env.clone().unwrap_or_default(),
        }),
        destinations: vec![CredentialDestination {
            domains,
            methods: all("method"),
            paths: all("path"),
            ports,
        }],
        inject,
        env,
    };
    if let Err(problems) = credential.apply() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(fail(text.join("; ")));
    }
    Ok(credential)
}

/// The `key=value` words of a spec, and whether the bare `sigv4` is there.
fn words(spec: &str) -> Result<(Vec<(String, String)>, bool), String> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut sigv4 = false;
    for word in spec.split_whitespace() {
        match word.split_once('=') {
            Some((key, value)) if KEYS.contains(&key) => {
                fields.push((key.to_owned(), value.to_owned()));
            }
            _ if word == "sigv4" => sigv4 = true,
            // A value with spaces (a header format) goes on.
            _ => match fields.last_mut() {
                Some((key, value)) if key == "format" => {
                    value.push(' ');
                    value.push_str(word);
                }
                _ => return Err(format!("{word:?} is not a key=value word this form knows")),
            },
        }
    }
    Ok((fields, sigv4))
}

/// How the credential goes in: a header, basic auth, or (neither) `SigV4`.
fn injection(header: Option<String>, format: Option<String>, basic: Option<String>) -> Injection {
    if let Some(name) = header {
        Injection {
            header: Some(HeaderInjection { name, format }),
            ..Injection::default()
        }
    } else if let Some(username) = basic {
        Injection {
            basic_auth: Some(BasicAuthInjection { username }),
            ..Injection::default()
        }
    } else {
        Injection {
            aws_sig_v4: Some(AwsSigV4Injection {
                identity: Some(AwsIdentity::Sidecar),
                secret_name: None,
            }),
            ..Injection::default()
        }
    }
}

/// Resolves parsed credentials against the supervisor's environment (`lookup`), with a nonce
/// made from `seed` (random bytes).
pub fn resolve(
    credentials: Vec<Credential>,
    lookup: &dyn Fn(&str) -> Option<String>,
    seed: &[u8],
) -> Result<Standalone, String> {
    let nonce = boundary_api::credentials::nonce_from(seed);
    let mut out = Standalone {
        nonce: nonce.clone(),
        ..Standalone::default()
    };
    for c in &credentials {
        if out.values.contains_key(&c.name) {
            return Err(format!(
                "--credential: two credentials are named {:?}: give one of them name=...",
                c.name
            ));
        }
        let need = |var: &str| {
            lookup(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "--credential {}: {var} is not set in boundary run's environment: set it to \
                     the real value (the jailed command sees a placeholder in its place)",
                    c.name
                )
            })
        };
        let value = if c.inject.aws_sig_v4.is_some() {
            let session_token = lookup(aws_keys::SESSION_TOKEN).filter(|v| !v.is_empty());
            if session_token.is_some() {
                out.env_remove.push(aws_keys::SESSION_TOKEN.into());
            }
            CredentialValue::Aws(AwsKeys {
                access_key_id: need(aws_keys::ACCESS_KEY_ID)?,
                secret_access_key: need(aws_keys::SECRET_ACCESS_KEY)?,
                session_token,
            })
        } else {
            CredentialValue::Value(need(c.env.as_deref().unwrap_or_default())?)
        };
        out.values.insert(c.name.clone(), value);
        out.env.extend(
            c.placeholder_env(&nonce)
                .into_iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
    }
    out.credentials = credentials;
    Ok(out)
}

/// 16 bytes from the kernel's random pool, for the nonce (no fallback: a guessable placeholder
/// would not be one).
pub fn random_seed() -> Result<[u8; 16], String> {
    let mut seed = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| format!("--credential: reading /dev/urandom for the placeholders: {e}"))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_basic_and_sigv4_specs_parse() {
        let c = parse(
            "domain=api.github.com env=GITHUB_TOKEN header=Authorization format=Bearer {value}",
        )
        .unwrap();
        assert_eq!(c.name, "github-token");
        let h = c.inject.header.as_ref().unwrap();
        assert_eq!(h.name, "Authorization");
        assert_eq!(h.format.as_deref(), Some("Bearer {value}"));
        assert_eq!(c.destinations[0].domains, ["api.github.com"]);

        let c = parse("domain=git.example.com,*.example.org env=GIT_PASSWORD basic=x-access-token path=/repo/* name=git")
            .unwrap();
        assert_eq!(c.name, "git");
        assert_eq!(c.destinations[0].domains.len(), 2);
        assert_eq!(c.destinations[0].paths, ["/repo/*"]);
        assert_eq!(c.inject.basic_auth.unwrap().username, "x-access-token");

        let c = parse("domain=*.amazonaws.com sigv4").unwrap();
        assert_eq!(c.name, "aws");
        assert!(c.inject.aws_sig_v4.is_some());
    }

    #[test]
    fn bad_specs_say_what_is_wrong_and_show_the_form() {
        for (spec, why) in [
            ("env=X header=A", "domain=HOST is missing"),
            ("domain=a.com header=A", "env=VAR is missing"),
            ("domain=a.com env=X header=A basic=u", "exactly one of"),
            (
                "domain=a.com env=X basic=u format={value}",
                "format= goes with header",
            ),
            (
                "domain=a.com env=X header=A colour=blue",
                "\"colour=blue\" is not",
            ),
            (
                "domain=a.com env=X header=A format=Bearer",
                "{value} exactly once",
            ),
            ("domain=a.com env=X header=A port=99999", "port=99999"),
        ] {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
            assert!(e.contains("Form: 'domain=HOST env=VAR header=NAME"), "{e}");
        }
    }

    #[test]
    fn values_come_from_the_environment_and_the_jail_gets_placeholders() {
        let creds = vec![
            parse("domain=a.com env=A_TOKEN header=x-a").unwrap(),
            parse("domain=*.amazonaws.com sigv4").unwrap(),
        ];
        let env: HashMap<&str, &str> = [
            ("A_TOKEN", "real-a-value"),
            ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
            ("AWS_SECRET_ACCESS_KEY", "secretreal"),
            ("AWS_SESSION_TOKEN", "tokenreal"),
        ]
        .into_iter()
        .collect();
        let lookup = |k: &str| env.get(k).map(|v| (*v).to_owned());
        let s = resolve(creds.clone(), &lookup, b"seed").unwrap();
        assert!(boundary_api::credentials::is_nonce(&s.nonce));
        let names: Vec<&str> = s.env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            ["A_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        );
        for (_, v) in &s.env {
            assert!(v.to_str().unwrap().starts_with("boundary-ph-"));
        }
        assert_eq!(s.env_remove, [OsString::from("AWS_SESSION_TOKEN")]);
        assert_eq!(
            s.values["a-token"],
            CredentialValue::Value("real-a-value".into())
        );

        let missing = |k: &str| (k != "A_TOKEN").then(|| "x".to_owned());
        let e = resolve(creds, &missing, b"seed").unwrap_err();
        assert!(
            e.contains("A_TOKEN is not set in boundary run's environment"),
            "{e}"
        );
    }
}
