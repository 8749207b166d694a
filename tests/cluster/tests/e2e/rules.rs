//! End to end, the rules of issue 14 in a real pod: a namespaced policy's deny rules (`deny`,
//! `denyHttp` with a header condition) beat its allow rules, a query condition tells a clone from
//! a push, a preset is published and enforced, and the private-address guard refuses names that
//! resolve to cloud metadata or into the cluster unless the policy pins them; and what was denied
//! reaches the policy's `status.deniedDestinations`.

use super::*;

/// Resolves (through the pod's `hostAliases`) to the cloud metadata address.
const METADATA: &str = "metadata.e2e.test";
/// Resolves to the allowed Service's cluster IP, but is not pinned by the policy.
const UNPINNED: &str = "unpinned.e2e.test";

/// The decision records of the sidecar's audit for `host` and `path`.
fn records<'a>(audit: &'a [Value], host: &str, path: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|r| r["host"] == host && r["path"] == path)
        .collect()
}

#[tokio::test]
async fn deny_rules_conditions_presets_and_the_address_guard_hold_in_a_pod() -> anyhow::Result<()> {
    let _lock = exclusive()?;
    let world = world("e2e-rules").await?;
    let result = async {
        let ns = &world.ns;
        policy_with(
            ns,
            json!({
                "allow": [format!("domain={ALLOWED}"), format!("domain={METADATA}"),
                          format!("domain={UNPINNED}")],
                "deny": [format!("domain={ALLOWED} path=/secret")],
                "denyHttp": [{"domains": [ALLOWED], "paths": ["/admin/*"],
                              "headers": {"X-Mode": "write"}}],
                "http": [{"domains": [DENIED], "paths": ["/info/refs"],
                          "query": {"service": "git-upload-pack"}}],
                "presets": ["github-read-only"],
            }),
        )
        .await?;
        // The guard's cases: the names resolve (hostAliases) to a private address the policy
        // neither pins nor names.
        let allowed_ip = world.host_aliases[0]["ip"].clone();
        let mut aliases = world.host_aliases.as_array().cloned().unwrap_or_default();
        aliases.push(json!({"ip": "169.254.169.254", "hostnames": [METADATA]}));
        aliases.push(json!({"ip": allowed_ip, "hostnames": [UNPINNED]}));
        let urls = [
            format!("https://{ALLOWED}/ok"),
            format!("https://{ALLOWED}/secret"),
            format!("https://{ALLOWED}/admin/users"),
            format!("https://{DENIED}/info/refs?service=git-upload-pack"),
            format!("https://{DENIED}/info/refs?service=git-receive-pack"),
            format!("https://{METADATA}/latest/meta-data/"),
            format!("https://{UNPINNED}/ok"),
        ];
        let mut args = vec![
            json!("fetch"),
            json!("--header-from-env"),
            json!("X-Mode=MODE"),
        ];
        args.extend(urls.iter().map(|u| json!(u)));
        let pod = agent_pod(
            &world,
            "agent",
            &json!({
                "hostAliases": aliases,
                "containers": [{
                    "name": "agent", "image": image("e2e-tools"), "imagePullPolicy": "IfNotPresent",
                    "command": ["/usr/local/bin/e2e-tools"], "args": args,
                    "env": [{"name": "MODE", "value": "write"}],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
            }),
        )?;
        ns.create_pod(&pod).await?;
        let pods: Api<Pod> = ns.api();
        logs_show(
            &pods,
            "agent",
            "agent",
            &[
                &format!("fetch https://{ALLOWED}/ok -> 200"),
                &format!("fetch https://{ALLOWED}/secret -> 403"),
                &format!("fetch https://{ALLOWED}/admin/users -> 403"),
                &format!("fetch https://{DENIED}/info/refs?service=git-upload-pack -> 200"),
                &format!("fetch https://{DENIED}/info/refs?service=git-receive-pack -> 403"),
                &format!("fetch https://{METADATA}/latest/meta-data/ -> "),
                &format!("fetch https://{UNPINNED}/ok -> "),
            ],
        )
        .await?;
        let agent = logs(&pods, "agent", "agent").await?;
        for host in [METADATA, UNPINNED] {
            let line = agent
                .lines()
                .find(|l| l.starts_with(&format!("fetch https://{host}/")))
                .unwrap_or_default();
            assert!(!line.contains("-> 200"), "{host} was reached: {line}");
        }
        let text = logs(&pods, "agent", contract::containers::SIDECAR).await?;
        let audit: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r.get("decision").is_some())
            .collect();
        let show = || tail(&text, 30);

        let secret = records(&audit, ALLOWED, "/secret");
        assert!(
            secret.iter().any(|r| r["decision"] == "deny"
                && r["denied_by"] == "deny-rule"
                && r["rule"]
                    .as_str()
                    .is_some_and(|t| t.contains("spec.deny[0]"))),
            "no deny-rule record naming spec.deny[0] for /secret:\n{}",
            show()
        );
        let admin = records(&audit, ALLOWED, "/admin/users");
        assert!(
            admin.iter().any(|r| r["decision"] == "deny"
                && r["rule"]
                    .as_str()
                    .is_some_and(|t| t.contains("spec.denyHttp[0]"))),
            "no record naming spec.denyHttp[0] (its header condition) for /admin/users:\n{}",
            show()
        );
        for host in [METADATA, UNPINNED] {
            let record = audit
                .iter()
                .find(|r| r["host"] == host && r["denied_by"] == "private-address-guard")
                .with_context(|| format!("no guard record for {host}:\n{}", show()))?;
            assert_eq!(record["decision"], "deny", "{record}");
            eprintln!("guard: {record}");
        }
        let metadata_reason = audit
            .iter()
            .find(|r| r["host"] == METADATA && r["denied_by"] == "private-address-guard")
            .and_then(|r| r["reason"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            metadata_reason.contains("169.254.169.254"),
            "the reason names the address: {metadata_reason}"
        );

        // The preset reached the compiled policy the sidecar enforces.
        let configmaps: Api<ConfigMap> = ns.api();
        let file = configmaps
            .get(objects::POLICY_CONFIGMAP)
            .await?
            .data
            .and_then(|d| d.get("policy.json").cloned())
            .unwrap_or_default();
        assert!(file.contains("github-read-only"), "{file}");

        // What was denied reaches the policy's status (the advisor's input), by destination,
        // with what refused it and never a query.
        let denied = denied_destinations_when(ns, "the denials", |denied| {
            let has = |host: &str, prefix: Option<&str>, by: Option<&str>| {
                denied.iter().any(|d| {
                    d.host == host
                        && (prefix.is_none() || d.path_prefix.as_deref() == prefix)
                        && d.denied_by.as_deref() == by
                        && d.decision == "deny"
                        && d.count >= 1
                })
            };
            has(ALLOWED, Some("/secret"), Some("deny-rule"))
                && has(DENIED, Some("/info/refs"), None)
                && has(METADATA, None, Some("private-address-guard"))
        })
        .await?;
        let text = serde_json::to_string(&denied)?;
        assert!(!text.contains("receive-pack"), "no query kept: {text}");
        assert!(
            denied.iter().all(|d| d.container.is_empty()),
            "per policy, not per container: {text}"
        );
        eprintln!("deniedDestinations: {text}");
        anyhow::Ok(())
    }
    .await;
    dump_on_error(&world.ns, result).await
}
