//! The admission layer's guard of jailed pods, through `Planner::admit` with the wire format the
//! apiserver sends: pod UPDATEs, the `ephemeralcontainers` subresource (1.20's
//! `EphemeralContainers` object and 1.22+'s Pod), unreadable objects, and CREATE with the
//! admins' settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use boundary_api::crd::{BoundaryPolicy, ClusterBoundaryPolicy};
use boundary_webhook::admit::{FixedPods, Planner, StaticView};
use boundary_webhook::guard::Jailing;
use boundary_webhook::inject::Settings;
use boundary_webhook::plan::Cluster;
use boundary_webhook::policy_index::ClusterPolicies;
use boundary_webhook::review::{self, AdmissionResponse, Admit};
use serde_json::{Value, json};

fn policy(name: &str, app: &str) -> BoundaryPolicy {
    serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
        "metadata": {"name": name, "namespace": "agents"},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "allow": ["domain=example.com"]}
    }))
    .unwrap()
}

fn planner(cluster_policies: Vec<ClusterBoundaryPolicy>, jailing: Jailing) -> Planner<StaticView> {
    let view = StaticView {
        nodes: Arc::default(),
        namespaces: BTreeMap::from([(
            "agents".into(),
            BTreeMap::from([("agentboundary.dev/inject".into(), "enabled".into())]),
        )]),
        policies: vec![policy("strict", "agent"), policy("lax", "other")].into(),
        cluster_policies: cluster_policies.into(),
        cluster: Cluster { minor: 20 },
    };
    Planner::new(view, Settings::default()).with_jailing(jailing)
}

fn jailed_pod(app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "agent", "namespace": "agents",
            "labels": {"app": app, "agentboundary.dev/jailed": "userns"},
            "annotations": {"agentboundary.dev/status": "{}", "agentboundary.dev/policy": "strict",
                            "agentboundary.dev/tier": "userns"}
        },
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}
    })
}

/// `request` in a review with its fields in the apiserver's order (that of its Go type: kind
/// and operation before the object), where `json!` sorts them.
fn in_apiserver_order(request: &Value) -> Vec<u8> {
    const ORDER: [&str; 15] = [
        "uid",
        "kind",
        "resource",
        "subResource",
        "requestKind",
        "requestResource",
        "requestSubResource",
        "name",
        "namespace",
        "operation",
        "userInfo",
        "object",
        "oldObject",
        "dryRun",
        "options",
    ];
    let fields = request.as_object().unwrap();
    assert!(
        fields.keys().all(|k| ORDER.contains(&k.as_str())),
        "{request}"
    );
    let request = ORDER
        .iter()
        .filter_map(|key| Some(format!("{}:{}", Value::from(*key), fields.get(*key)?)))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{{request}}}}}"#
    )
    .into_bytes()
}

/// The planner's answer to `request`, which must be the same whether the object comes after
/// the kind and operation (the apiserver's order: a Pod CREATE's Pod is read on the way) or
/// before them (read afterwards).
fn admit(planner: &Planner<StaticView>, request: &Value) -> AdmissionResponse {
    let body =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let sorted = review::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    let ordered = review::parse(&in_apiserver_order(request)).unwrap();
    let response = planner.admit(&sorted);
    assert_eq!(
        planner.admit(&ordered),
        response,
        "the answer depends on the order of the request's fields: {request}"
    );
    response
}

fn update(old: &Value, new: &Value, sub_resource: Option<&str>, kind: &str) -> Value {
    let mut request = json!({
        "uid": "u1", "kind": {"group": "", "version": "v1", "kind": kind},
        "operation": "UPDATE", "namespace": "agents", "name": "agent",
        "object": new, "oldObject": old
    });
    if let Some(sub) = sub_resource {
        request["subResource"] = json!(sub);
    }
    request
}

fn message(response: &AdmissionResponse) -> String {
    response
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

#[test]
fn relabelling_a_jailed_pod_onto_another_policy_is_refused() {
    let p = planner(Vec::new(), Jailing::default());
    let old = jailed_pod("agent");
    let response = admit(&p, &update(&old, &jailed_pod("other"), None, "Pod"));
    assert!(!response.allowed);
    let text = message(&response);
    assert!(
        text.contains("BoundaryPolicy strict") && text.contains("BoundaryPolicy lax"),
        "{text}"
    );
    // A label no policy looks at is fine.
    let mut new = old.clone();
    new["metadata"]["labels"]["team"] = json!("ml");
    assert!(admit(&p, &update(&old, &new, None, "Pod")).allowed);
    // So is an image change: the wrapped command stays.
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("agent:2");
    assert!(admit(&p, &update(&old, &new, None, "Pod")).allowed);
}

#[test]
fn the_injection_record_of_a_jailed_pod_cannot_be_removed() {
    let p = planner(Vec::new(), Jailing::default());
    let old = jailed_pod("agent");
    let mut new = old.clone();
    new["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("agentboundary.dev/status");
    let response = admit(&p, &update(&old, &new, None, "Pod"));
    assert!(!response.allowed);
    assert!(message(&response).contains("agentboundary.dev/status"));
}

#[test]
fn an_unjailed_pod_may_change_as_it_likes() {
    let p = planner(Vec::new(), Jailing::default());
    let old =
        json!({"metadata": {"name": "x", "labels": {"app": "agent"}}, "spec": {"containers": []}});
    let new =
        json!({"metadata": {"name": "x", "labels": {"app": "other"}}, "spec": {"containers": []}});
    assert!(admit(&p, &update(&old, &new, None, "Pod")).allowed);
}

#[test]
fn ephemeral_containers_are_refused_in_jailed_pods() {
    let p = planner(Vec::new(), Jailing::default());
    // Kubernetes 1.22+: the Pod itself.
    let old = jailed_pod("agent");
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox"}]);
    let response = admit(&p, &update(&old, &new, Some("ephemeralcontainers"), "Pod"));
    assert!(!response.allowed);
    assert!(
        message(&response).contains("debugger"),
        "{}",
        message(&response)
    );
    // Not jailed (1.22+ shape): allowed.
    let free = json!({"metadata": {"name": "x", "annotations": {}}, "spec": {"containers": []}});
    let mut added = free.clone();
    added["spec"]["ephemeralContainers"] = json!([{"name": "d", "image": "b"}]);
    assert!(
        admit(
            &p,
            &update(&free, &added, Some("ephemeralcontainers"), "Pod")
        )
        .allowed
    );
}

/// Kubernetes 1.16–1.21: an `EphemeralContainers` object with the pod's name only (no labels,
/// no annotations), so the webhook reads the pod.
fn legacy(pod: &str, list: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "EphemeralContainers",
           "metadata": {"name": pod, "namespace": "agents"}, "ephemeralContainers": list})
}

fn legacy_update(pod: &str) -> Value {
    let mut request = update(
        &legacy(pod, &json!([])),
        &legacy(pod, &json!([{"name": "shell", "image": "busybox"}])),
        Some("ephemeralcontainers"),
        "EphemeralContainers",
    );
    request["name"] = json!(pod);
    request
}

async fn admit_async(planner: &Planner<StaticView>, request: &Value) -> AdmissionResponse {
    let body =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let request = review::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    planner.admit_async(&request).await
}

#[tokio::test]
async fn before_1_22_the_pod_is_read_to_tell_whether_it_is_jailed() {
    let pods = FixedPods(BTreeMap::from([
        (
            ("agents".to_owned(), "jailed".to_owned()),
            BTreeMap::from([("agentboundary.dev/status".to_owned(), "{}".to_owned())]),
        ),
        (("agents".to_owned(), "free".to_owned()), BTreeMap::new()),
    ]));
    let p = planner(Vec::new(), Jailing::default()).with_pod_reader(Box::new(pods));
    let response = admit_async(&p, &legacy_update("jailed")).await;
    assert!(!response.allowed);
    assert!(
        message(&response).contains("shell"),
        "{}",
        message(&response)
    );
    assert!(admit_async(&p, &legacy_update("free")).await.allowed);
    // Without a way to read pods it cannot tell, and refuses.
    let blind = planner(Vec::new(), Jailing::default());
    let response = admit_async(&blind, &legacy_update("free")).await;
    assert!(!response.allowed);
    assert!(
        message(&response).contains("cannot tell"),
        "{}",
        message(&response)
    );
}

#[test]
fn unreadable_updates_of_jailed_pods_fail_closed() {
    let p = planner(Vec::new(), Jailing::default());
    let old = jailed_pod("agent");
    let response = admit(&p, &update(&old, &json!("not a pod"), None, "Pod"));
    assert!(!response.allowed);
    assert!(
        message(&response).contains("not readable"),
        "{}",
        message(&response)
    );
    let mut request = update(&old, &old, Some("ephemeralcontainers"), "Pod");
    request.as_object_mut().unwrap().remove("object");
    assert!(!admit(&p, &request).allowed);
}

#[test]
fn an_unreadable_pod_create_is_denied_with_what_is_wrong_in_any_field_order() {
    let p = planner(Vec::new(), Jailing::default());
    for object in [
        json!({"metadata": {"name": "p"}, "spec": {"containers": "none"}}),
        json!("not a pod"),
    ] {
        let response = admit(
            &p,
            &json!({
                "uid": "c1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "namespace": "agents", "object": object
            }),
        );
        assert!(!response.allowed);
        assert!(
            message(&response).contains("the object is not a readable Pod: invalid type"),
            "{}",
            message(&response)
        );
    }
}

#[test]
fn creates_follow_the_admins_settings() {
    let create = |labels: Value, sa: &str| {
        json!({
            "uid": "c1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "agents",
            "object": {"metadata": {"name": "p", "labels": labels},
                       "spec": {"serviceAccountName": sa, "containers": [{"name": "a", "image": "a:1", "command": ["a"]}]}}
        })
    };
    let opted_out = json!({"app": "agent", "agentboundary.dev/inject": "disabled"});
    let p = planner(Vec::new(), Jailing::default());
    let response = admit(&p, &create(opted_out.clone(), "ci"));
    assert!(!response.allowed);
    assert!(message(&response).contains("agents/ci"));
    let exempt = Jailing {
        opt_out_service_accounts: ["agents/ci".to_owned()].into(),
        ..Jailing::default()
    };
    let response = admit(
        &planner(Vec::new(), exempt.clone()),
        &create(opted_out.clone(), "ci"),
    );
    assert!(response.allowed && response.patch.is_none());
    // A ClusterBoundaryPolicy requiring jailing wins over the exemption.
    let required: ClusterBoundaryPolicy = serde_json::from_value(json!({
        "apiVersion": "agentboundary.dev/v1alpha1", "kind": "ClusterBoundaryPolicy",
        "metadata": {"name": "all-agents"},
        "spec": {"namespaceSelector": {}, "podSelector": {}, "requireJailing": true}
    }))
    .unwrap();
    let response = admit(&planner(vec![required], exempt), &create(opted_out, "ci"));
    assert!(response.allowed, "{}", message(&response));
    assert!(response.patch.is_some(), "jailed, not skipped");
}

#[test]
fn a_planned_create_names_its_pod_for_the_log_as_the_request_would() {
    // The server logs this name instead of scanning the object a second time for it.
    let p = planner(Vec::new(), Jailing::default());
    for metadata in [
        json!({"generateName": "agent-", "labels": {"app": "agent"}}),
        json!({"name": "agent-1", "labels": {"app": "agent"}}),
    ] {
        let request = json!({
            "uid": "c1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "agents",
            "object": {"metadata": metadata,
                       "spec": {"containers": [{"name": "a", "image": "a:1", "command": ["a"]}]}}
        });
        let response = admit(&p, &request);
        assert!(response.patch.is_some(), "jailed: {}", message(&response));
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        let parsed = review::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(
            response.object_name,
            Some(parsed.object_name()),
            "{metadata}"
        );
    }
}

#[test]
fn the_placeholder_nonce_is_derived_from_the_request_uid() {
    use boundary_api::credentials::{nonce_from, placeholder};
    let mut with_credential = policy("strict", "agent");
    with_credential.spec.credentials = vec![
        serde_json::from_value(json!({
            "name": "anthropic",
            "secretKeyRef": {"name": "anthropic", "key": "api-key"},
            "destinations": [{"domains": ["api.anthropic.com"]}],
            "inject": {"header": {"name": "x-api-key"}},
            "env": "ANTHROPIC_API_KEY"
        }))
        .unwrap(),
    ];
    let p = Planner::new(
        StaticView {
            nodes: Arc::default(),
            namespaces: BTreeMap::from([(
                "agents".into(),
                BTreeMap::from([("agentboundary.dev/inject".into(), "enabled".into())]),
            )]),
            policies: vec![with_credential].into(),
            cluster_policies: ClusterPolicies::default(),
            cluster: Cluster { minor: 33 },
        },
        Settings::default(),
    );
    let mut seen = Vec::new();
    for uid in [
        "7c1f0c1e-0000-4000-8000-000000000001",
        "7c1f0c1e-0000-4000-8000-000000000002",
    ] {
        let response = admit(
            &p,
            &json!({
                "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE", "namespace": "agents",
                "object": {"metadata": {"name": "p", "labels": {"app": "agent"}},
                           "spec": {"containers": [{"name": "agent", "image": "a:1", "command": ["claude"]}]}}
            }),
        );
        assert!(response.allowed, "{}", message(&response));
        let patch: Value = serde_json::from_slice(&response.patch.unwrap()).unwrap();
        let text = patch.to_string();
        let nonce = nonce_from(uid.as_bytes());
        assert!(
            text.contains(&format!(
                r#"{{"name":"BOUNDARY_PLACEHOLDER_NONCE","value":"{nonce}"}}"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"{{"name":"ANTHROPIC_API_KEY","value":"{}"}}"#,
                placeholder(&nonce, "anthropic")
            )),
            "{text}"
        );
        seen.push(nonce);
    }
    assert_ne!(seen[0], seen[1]);
}
