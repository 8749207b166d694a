//! Header and query conditions and structured deny rules (`denyHttp`) with a real client (curl)
//! through the sidecar's explicit proxy, to real servers on loopback, over plain HTTP and
//! intercepted HTTPS (HTTP/1.1 and HTTP/2): a read-only git (`info/refs?service=git-upload-pack`
//! yes, `git-receive-pack` no, whatever its spelling), a header condition, repeated headers and
//! parameters, and a deny rule of the compiled policy file beating an allow rule.

mod common;

use std::sync::atomic::Ordering;

use common::{Sidecar, TestCa, TestServer};

const RECEIVE_DENY: &str = "git spec.denyHttp[0]: domains=git.test query=service:git-receive-pack";
const PUSH_DENY: &str = "git spec.deny[0]: domain=git.test method=POST path=/*/git-receive-pack";
const EXFIL_DENY: &str = "git spec.denyHttp[1]: domains=open.test headers=X-Exfil:*";

/// The compiled policy file as the operator publishes it for one `BoundaryPolicy`.
fn policy() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "namespace": "agents",
        "policies": [{
            "name": "git",
            "podSelector": {},
            "mode": "Enforce",
            "deny": ["domain=git.test method=POST path=/*/git-receive-pack"],
            "denyHttp": [
                {"domains": ["git.test"], "query": {"service": "git-receive-pack"}},
                {"domains": ["open.test"], "headers": {"X-Exfil": "*"}}
            ],
            "allow": ["domain=open.test"],
            "http": [
                {"domains": ["git.test"], "methods": ["GET"], "paths": ["/*/info/refs"],
                 "query": {"service": "git-upload-pack"}},
                {"domains": ["git.test"], "methods": ["POST"], "paths": ["/*/git-upload-pack"]},
                {"domains": ["api.test"], "headers": {"X-Agent": "claude*"}}
            ]
        }]
    })
}

struct Setup {
    http: TestServer,
    https: TestServer,
    sidecar: Sidecar,
    _ca: TestCa,
}

impl Setup {
    async fn start() -> Setup {
        let ca = TestCa::new();
        let names = ["git.test", "api.test", "open.test"];
        let http = TestServer::start(None).await;
        let https = TestServer::start(Some(ca.server_config(&names, common::Alpn::Http1))).await;
        let sidecar = Sidecar::for_upstream(&policy(), &names, Some(&ca), &[]).await;
        Setup {
            http,
            https,
            sidecar,
            _ca: ca,
        }
    }

    /// curl through the explicit proxy: `(status, body)`; `args` go before the URL.
    async fn curl(&self, args: &[&str], url: &str) -> (u16, String) {
        let mut all = self.sidecar.curl_through();
        all.extend(["-m", "10"].iter().chain(args).map(ToString::to_string));
        all.push(url.to_owned());
        let out = common::curl(&all, "%{http_code} %{http_version}").await;
        let status = out
            .written
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status from curl {args:?} {url}: {out:?}"));
        (status, format!("{}\n[{}]", out.body, out.written))
    }

    fn https(&self, host: &str, target: &str) -> String {
        format!("https://{host}:{}{target}", self.https.port())
    }

    fn http(&self, host: &str, target: &str) -> String {
        format!("http://{host}:{}{target}", self.http.port())
    }
}

fn assert_denied_by(status: u16, body: &str, rule: &str) {
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(rule), "the 403 names {rule}:\n{body}");
    assert!(
        body.contains("no allow rule can let this request through")
            && !body.contains("To allow it"),
        "no allow rule is suggested for a deny rule:\n{body}"
    );
}

#[tokio::test]
async fn a_read_only_git_by_query_conditions_whatever_the_spelling() {
    let s = Setup::start().await;
    let refs = "/repo.git/info/refs";
    for http2 in [false, true] {
        let version: &[&str] = if http2 { &["--http2"] } else { &["--http1.1"] };
        let (status, body) = s
            .curl(
                version,
                &s.https("git.test", &format!("{refs}?service=git-upload-pack")),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("hello GET git.test"), "{body}");
        if http2 {
            assert!(body.contains("[200 2]"), "HTTP/2 to the proxy: {body}");
        }
        for query in [
            "service=git-receive-pack",
            "%73ervice=git%2dreceive%2Dpack",
            "service=git+receive-pack&service=git-receive-pack",
            "service=git-upload-pack&service=git-receive-pack",
            "x=1;service=git-receive-pack",
        ] {
            let (status, body) = s
                .curl(version, &s.https("git.test", &format!("{refs}?{query}")))
                .await;
            assert_denied_by(status, &body, RECEIVE_DENY);
        }
    }
    // A malformed query never satisfies the allow rule and satisfies the deny rule.
    let (status, body) = s
        .curl(
            &[],
            &s.https("git.test", &format!("{refs}?service=git-upload-pack%zz")),
        )
        .await;
    assert_denied_by(status, &body, RECEIVE_DENY);
    // The upload-pack allow rule's repeated parameter: every occurrence must match.
    let (status, body) = s
        .curl(
            &[],
            &s.https(
                "git.test",
                &format!("{refs}?service=git-upload-pack&SERVICE=x"),
            ),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("query not allowed"), "{body}");
    // Fetching is allowed, pushing is denied by the Coder-grammar deny rule.
    let (status, body) = s
        .curl(
            &["-X", "POST", "--data", "0000"],
            &s.https("git.test", "/repo.git/git-upload-pack"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = s.https.requests.load(Ordering::SeqCst);
    let (status, body) = s
        .curl(
            &["-X", "POST", "--data", "0000"],
            &s.https("git.test", "/repo.git/git-receive-pack"),
        )
        .await;
    assert_denied_by(status, &body, PUSH_DENY);
    assert_eq!(
        s.https.requests.load(Ordering::SeqCst),
        before,
        "never sent"
    );

    let records = s.sidecar.audit().await;
    let receive = records
        .iter()
        .find(|r| r["rule"] == RECEIVE_DENY)
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(receive["decision"], "deny");
    assert_eq!(receive["denied_by"], "deny-rule");
    assert_eq!(receive["path"], "/repo.git/info/refs");
}

#[tokio::test]
async fn header_conditions_allow_and_deny_over_http_and_https() {
    let s = Setup::start().await;
    for (url, version) in [
        (s.http("api.test", "/x"), "--http1.1"),
        (s.https("api.test", "/x"), "--http1.1"),
        (s.https("api.test", "/x"), "--http2"),
    ] {
        let (status, body) = s.curl(&[version, "-H", "X-Agent: claude-code"], &url).await;
        assert_eq!(status, 200, "{url} {version}: {body}");
        let (status, body) = s.curl(&[version, "-H", "x-agent: CLAUDE"], &url).await;
        assert_eq!(status, 403, "values are case-sensitive: {body}");
        assert!(body.contains("headers not allowed"), "{body}");
        let (status, body) = s.curl(&[version], &url).await;
        assert_eq!(status, 403, "a missing header: {body}");
        let (status, body) = s
            .curl(
                &[version, "-H", "X-Agent: claude", "-H", "X-Agent: curl"],
                &url,
            )
            .await;
        assert_eq!(status, 403, "every occurrence must match: {body}");
    }
    // A structured deny rule with a header condition beats the allow rule of the same policy.
    let url = s.http("open.test", "/y");
    let (status, body) = s.curl(&[], &url).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.curl(&["-H", "x-exfil: 1"], &url).await;
    assert_denied_by(status, &body, EXFIL_DENY);
    assert!(
        body.contains("It overrides the allow rule git spec.allow[0]: domain=open.test"),
        "{body}"
    );
    let (status, body) = s
        .curl(
            &["--http2", "-H", "X-Exfil: 1"],
            &s.https("open.test", "/y"),
        )
        .await;
    assert_denied_by(status, &body, EXFIL_DENY);
    let records = s.sidecar.audit().await;
    let exfil = records
        .iter()
        .find(|r| r["rule"] == EXFIL_DENY && r["scheme"] == "http")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(exfil["denied_by"], "deny-rule");
    assert_eq!(exfil["status"], 403);
}
