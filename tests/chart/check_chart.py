"""Rendering tests of the Helm chart (charts/agent-boundary), run by tests/scripts/test-chart.sh.

For each value combination of SCENARIOS the chart is linted (`helm lint --strict`) and rendered
(`helm template --include-crds`) for Kubernetes 1.20 and a recent version; the rendered objects
are checked against what the values ask for and against the code they configure:

- names and env vars the chart sets are read from the sources (crds/src/contract.rs, the
  `env = "..."` of every binary's flags, tests/scripts/build-images.sh), not repeated here;
- the two webhooks' selectors are evaluated on namespace/pod label combinations and must opt pods
  in exactly as the planner does (a pod's agentboundary.dev/inject label wins over its
  namespace's), never in the release namespace or kube-system;
- privileges: hostPath, privileged, root, hostNetwork only where a switch asks for them; RBAC per
  component without wildcards, Secrets written only by name (the webhook's in the operator's own
  namespace, the credentials Secret in each), read cluster-wide only by the operator (the Secrets
  policies' credentials reference);
- certificates: operator mode (Secret + caBundle patched by the operator, with its RBAC) or
  cert-manager mode (Certificate + inject-ca-from, operator without Secret/webhook rights).

Values that must be refused (typos, wrong types, out-of-range numbers) are checked to make helm
fail with a message naming the key. The rendered files are written to OUT for
tests/chart/validate.py (kubernetes-validate).

    python3 check_chart.py HELM REPO_ROOT OUT RECENT_K8S_VERSION [K8S_VERSION...]

The chart's only switch on the Kubernetes version is at 1.21 (the PodDisruptionBudget's API), so
the recent rendering stands for every version from 1.21: each further K8S_VERSION (those whose
schemas tests/chart/validate.py checks the recent renderings against) must render exactly like
RECENT (checked on the scenarios of VERSION_SCENARIOS, where most objects are), and the templates
must have no other switch on .Capabilities.KubeVersion.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import yaml

HELM, ROOT, OUT, RECENT = sys.argv[1:5]
SAME_AS_RECENT = sys.argv[5:]
VERSION_SCENARIOS = {"defaults", "cert-manager", "monitoring"}
CHART = os.path.join(ROOT, "charts", "agent-boundary")
OLD = "1.20.2"
FAILURES = []
CHECKS = 0


def check(cond, message):
    """Records one assertion."""
    global CHECKS
    CHECKS += 1
    if not cond:
        FAILURES.append(message)
    return cond


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# Facts from the sources


def contract():
    """`{module: {NAME: value}}` of crds/src/contract.rs (top-level names under "")."""
    out = {"": {}}
    module = ""
    depth = 0
    for line in read("crds", "src", "contract.rs").splitlines():
        m = re.match(r"\s*pub mod (\w+) \{", line)
        if m and depth == 0:
            module, depth = m.group(1), 1
            out.setdefault(module, {})
            continue
        if depth:
            depth += line.count("{") - line.count("}")
            if depth <= 0:
                module, depth = "", 0
                continue
        m = re.match(r'\s*(?:pub const )?([A-Z][A-Z0-9_]*)(?:: &str)? = "([^"]*)";', line)
        if m:
            out[module][m.group(1)] = m.group(2)
    return out


def env_flags(*dirs):
    """Every `env = "NAME"` (or `env = [path::]group::NAME` of the contract) of the clap flags
    under the given source folders."""
    names = set()
    for d in dirs:
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith(".rs"):
                    with open(os.path.join(base, f)) as fh:
                        text = fh.read()
                    names.update(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', text))
                    for group, name in re.findall(r"env\s*=\s*(?:\w+::)*(\w+)::([A-Z][A-Z0-9_]*)\b", text):
                        if name in C.get(group, {}):
                            names.add(C[group][name])
    return names


C = contract()
# The generated CRD files, in the order of their CRDs' names (boundarypolicies, clusterboundarypolicies).
CRD_FILES = ["boundarypolicy.yaml", "clusterboundarypolicy.yaml"]
INJECT = C["labels"]["INJECT"]
ENABLED, DISABLED, REQUIRED = C[""]["INJECT_ENABLED"], C[""]["INJECT_DISABLED"], C[""]["INJECT_REQUIRED"]
COMPONENT = C["labels"]["COMPONENT"]
POLICY_CONFIGMAP = C["objects"]["POLICY_CONFIGMAP"]
CREDENTIALS_SECRET = C["objects"]["CREDENTIALS_SECRET"]
CA_SUFFIX = C["objects"]["CA_SECRET_SUFFIX"]
# Every binary flattens the diagnostics flags of crds/telemetry.
WEBHOOK_ENV = env_flags("webhook/src", "crds/telemetry/src")
SHUTDOWN_DELAY_ENV = C["webhook_env"]["SHUTDOWN_DELAY_SECONDS"]
SHUTDOWN_GRACE_ENV = C["webhook_env"]["SHUTDOWN_GRACE_SECONDS"]
check({SHUTDOWN_DELAY_ENV, SHUTDOWN_GRACE_ENV} <= WEBHOOK_ENV, "the webhook's shutdown flags read the contract's env names")
OPERATOR_ENV = env_flags("operator/src", "crds/telemetry/src")
BOUNDARY_ENV = env_flags("jail-runtime/src", "crds/telemetry/src")
NODE_AGENT_ENV = env_flags("operator/src/node_agent", "operator/src/bin", "crds/telemetry/src")
check(set(C["node_agent_env"].values()) <= NODE_AGENT_ENV,
      "the node agent's flags read the contract's node_agent_env names")
# Set from the downward API; read by the binaries under these names.
POD_NAME_ENV, POD_NAMESPACE_ENV = C["env"]["POD_NAME"], C["env"]["POD_NAMESPACE"]
DOWNWARD = {POD_NAME_ENV, POD_NAMESPACE_ENV, "NODE_NAME"}
check(
    POD_NAME_ENV in OPERATOR_ENV and POD_NAMESPACE_ENV in OPERATOR_ENV,
    f"operator/src reads {POD_NAME_ENV} and {POD_NAMESPACE_ENV}",
)
check(len(WEBHOOK_ENV) > 5 and len(OPERATOR_ENV) > 5, "env flags found in webhook/ and operator/")

build_images = read("tests", "scripts", "build-images.sh")
m = re.search(r"^IMAGES=\((.*)\)", build_images, re.M)
IMAGES = dict(e.split(":") for e in m.group(1).split()) if m else {}
check(
    sorted(IMAGES) == ["boundary-operator", "boundary-webhook", "jail-runtime"],
    f"build-images.sh builds the three images: {IMAGES}",
)
# The node agent runs from the jail-runtime image, next to the `boundary` it probes with.
check(re.search(r"^declare -A EXTRA_BINARIES=\(\[jail-runtime\]=boundary-node-agent\)", build_images, re.M),
      "build-images.sh puts boundary-node-agent into the jail-runtime image")
dockerfile = read("charts", "images", "Dockerfile")
jail_stage = dockerfile.split("AS jail-runtime", 1)[-1].split("FROM ", 1)[0]
check("/usr/local/bin/boundary-node-agent" in jail_stage and "/usr/local/bin/boundary\n" in jail_stage,
      "charts/images/Dockerfile puts boundary and boundary-node-agent into the jail-runtime image")
m = re.search(r"REPO=\$\{BOUNDARY_IMAGE_REPO:-([^}]+)\}", build_images)
LOCAL_REPO = m.group(1) if m else None
# Images are tagged with the workspace version, which is the chart's appVersion (supply-chain.sh
# checks that): the chart's empty tags default to it.
check(re.search(r"^TAG=\$\{1:-\$VERSION\}", build_images, re.M),
      "build-images.sh tags the images with the workspace version by default")
LOCAL_TAG = yaml.safe_load(read("charts", "agent-boundary", "Chart.yaml"))["appVersion"]


def expected_image(v, key, image):
    """The image a scenario's values give `key` (jailRuntime, webhook, operator)."""
    named = v.get(f"{key}.image", f"{LOCAL_REPO}/{image}:{LOCAL_TAG}")
    registry = v.get("imageRegistry", "").rstrip("/")
    return f"{registry}/{named}" if registry else named

# ---------------------------------------------------------------------------------------------
# Rendering


def helm(*args):
    return subprocess.run([HELM, *args], capture_output=True, text=True)


def render(release, namespace, sets, kube):
    p = helm(
        "template", release, CHART, "--namespace", namespace, "--include-crds",
        "--kube-version", kube, *[a for s in sets for a in ("--set", s)],
    )
    if p.returncode != 0:
        return None, p.stdout + p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d], p.stdout


class Objects:
    def __init__(self, docs):
        self.docs = docs

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name):
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        check(len(found) == 1, f"exactly one {kind} {name} (found {len(found)})")
        return found[0] if found else {}

    def maybe(self, kind, name):
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    e = env_of(container).get(name)
    return None if e is None else e.get("value")


def selector_matches(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions) against a label map."""
    for k, v in (selector or {}).get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in (selector or {}).get("matchExpressions", []):
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def webhook_must_see(ns_labels, pod_labels, required_names):
    """webhook/src/guard.rs `requirement`: where the webhook decides (jail, refuse, skip) a pod
    CREATE. Required namespaces (label or name): every pod. Enabled namespaces: every pod (the
    pod's opt-out label is judged by the webhook). Elsewhere: pods labelled enabled."""
    if ns_labels.get(INJECT) == REQUIRED or ns_labels["kubernetes.io/metadata.name"] in required_names:
        return True
    if ns_labels.get(INJECT) == ENABLED:
        return True
    return pod_labels.get(INJECT) == ENABLED


def rules_of(obj):
    return obj.get("rules", []) if obj else []


# ---------------------------------------------------------------------------------------------
# The checks


def check_render(name, s, objs, kube):
    """Everything a rendering of scenario `s` for Kubernetes `kube` must satisfy."""
    ns, v = s["namespace"], s["values"]
    full = s["fullname"]
    where = f"[{name} @ {kube}]"
    webhook_name, operator_name, agent_name = f"{full}-webhook", f"{full}-operator", f"{full}-node-agent"
    uninstall_name = f"{operator_name}-uninstall"
    secret = f"{full}-webhook-tls"
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                      "CustomResourceDefinition"}

    for d in objs.docs:
        md = d["metadata"]
        if d["kind"] in cluster_scoped:
            check("namespace" not in md, f"{where} {d['kind']} {md['name']} is cluster-scoped")
        else:
            check(md.get("namespace") == ns, f"{where} {d['kind']} {md['name']} is in {ns}")
        if d["kind"] != "CustomResourceDefinition":
            check(md.get("labels", {}).get("app.kubernetes.io/instance") == s["release"],
                  f"{where} {d['kind']} {md['name']} carries the release label")

    # The CRDs are the generated ones, byte for byte the same objects as crds/*.yaml.
    crds = sorted(objs.all("CustomResourceDefinition"), key=lambda c: c["metadata"]["name"])
    check(crds == [yaml.safe_load(read("crds", f)) for f in CRD_FILES],
          f"{where} the chart's CRDs are {', '.join('crds/' + f for f in CRD_FILES)}")

    # --- webhook Deployment, Service, PDB
    dep = objs.get("Deployment", webhook_name)
    pod = dep.get("spec", {}).get("template", {})
    pod_labels = pod.get("metadata", {}).get("labels", {})
    check(selector_matches(dep["spec"]["selector"], pod_labels), f"{where} webhook selector matches its pods")
    replicas = v.get("webhook.replicas", 2)
    check(dep["spec"]["replicas"] == replicas, f"{where} webhook replicas {replicas}")
    spec = pod["spec"]
    (wc,) = spec["containers"]
    check(wc["image"] == expected_image(v, "webhook", "boundary-webhook"),
          f"{where} webhook image {wc['image']}")
    host_net = v.get("webhook.hostNetwork", False)
    check(spec.get("hostNetwork", False) == host_net, f"{where} webhook hostNetwork {host_net}")
    if host_net:
        check(spec.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{where} hostNetwork keeps cluster DNS")
        check(dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0,
              f"{where} hostNetwork: no surge pod competing for the node's ports")
    anti = spec.get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) if host_net else [
        t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    check(any(t["topologyKey"] == "kubernetes.io/hostname" and selector_matches(t["labelSelector"], pod_labels)
              for t in terms),
          f"{where} webhook pods repel each other per node ({'required' if host_net else 'preferred'})")
    ports = {p["name"]: p["containerPort"] for p in wc["ports"]}
    check(ports.get("https") == v.get("webhook.port", 8443), f"{where} webhook https port")
    check(env_value(wc, "BOUNDARY_WEBHOOK_HTTPS_ADDR") == f"0.0.0.0:{ports.get('https')}",
          f"{where} webhook listens where its port says")
    check(env_value(wc, "BOUNDARY_WEBHOOK_PLAIN_ADDR") == f"0.0.0.0:{ports.get('metrics')}",
          f"{where} webhook probe port")
    for probe in ("readinessProbe", "livenessProbe"):
        check(wc.get(probe, {}).get("httpGet", {}).get("port") == "metrics", f"{where} webhook {probe}")
    check(wc["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{where} webhook readiness is /readyz")
    for e in env_of(wc):
        check(e in WEBHOOK_ENV, f"{where} webhook env {e} is a flag of webhook/src")
    runtime_image = expected_image(v, "jailRuntime", "jail-runtime")
    check(env_value(wc, "BOUNDARY_WEBHOOK_IMAGE") == runtime_image, f"{where} injected image is the jail-runtime image")
    gate = v.get("webhook.enforcementReadinessGate", False)
    (op_c,) = objs.get("Deployment", operator_name)["spec"]["template"]["spec"]["containers"]
    check(op_c["image"] == expected_image(v, "operator", "boundary-operator"), f"{where} operator image {op_c['image']}")
    check(env_value(op_c, "BOUNDARY_REQUIRED_NAMESPACES") == ",".join(v.get("webhook.requiredNamespaces", [])),
          f"{where} the operator labels the required namespaces (1.20 has no namespace name label)")
    check(env_value(wc, "BOUNDARY_WEBHOOK_REQUIRED_NAMESPACES") == ",".join(v.get("webhook.requiredNamespaces", [])),
          f"{where} the webhook knows the required namespaces")
    check(env_value(wc, "BOUNDARY_WEBHOOK_OPT_OUT_SERVICE_ACCOUNTS") == ",".join(v.get("webhook.optOutServiceAccounts", [])),
          f"{where} the webhook knows the exempt service accounts")
    check(env_value(wc, "BOUNDARY_WEBHOOK_ENFORCEMENT_READINESS_GATE") == ("true" if gate else "false"),
          f"{where} the webhook adds the readiness gate exactly when enforcementReadinessGate is on")
    audit_format = v.get("webhook.sidecar.auditFormat", "json")
    check(env_value(wc, C["webhook_env"]["SIDECAR_AUDIT_FORMAT"]) == audit_format,
          f"{where} the webhook injects sidecars writing {audit_format} audit lines")
    workers = v.get("webhook.sidecar.workerThreads", 1)
    check(env_value(wc, C["webhook_env"]["SIDECAR_WORKER_THREADS"]) == str(workers),
          f"{where} the webhook injects sidecars with {workers} proxy threads")
    # The serving certificate: the Secret the operator / cert-manager writes, at the flag's path.
    vols = {vol["name"]: vol for vol in spec.get("volumes", [])}
    mounts = {m["name"]: m for m in wc.get("volumeMounts", [])}
    tls = [n for n, vol in vols.items() if vol.get("secret", {}).get("secretName") == secret]
    check(len(tls) == 1, f"{where} webhook mounts Secret {secret}")
    if tls:
        mount = mounts.get(tls[0], {}).get("mountPath", "")
        check(env_value(wc, "BOUNDARY_WEBHOOK_CERT_FILE") == f"{mount}/tls.crt"
              and env_value(wc, "BOUNDARY_WEBHOOK_KEY_FILE") == f"{mount}/tls.key",
              f"{where} webhook reads tls.crt/tls.key from the mounted Secret")

    # Shutdown without refused reviews: not ready at once, reviews answered for the delay, then
    # open requests finish (as long as the apiserver waits), all within the grace period.
    delay = v.get("webhook.shutdownDelaySeconds", 10)
    grace = int(env_value(wc, SHUTDOWN_GRACE_ENV) or 0)
    check(env_value(wc, SHUTDOWN_DELAY_ENV) == str(delay), f"{where} webhook shutdown delay {delay}")
    check(grace > v.get("webhook.timeoutSeconds", 5), f"{where} open requests may run as long as the apiserver waits: {grace}")
    termination = spec.get("terminationGracePeriodSeconds", 30)
    check(termination > delay + grace,
          f"{where} terminationGracePeriodSeconds {termination} > shutdown delay {delay} + grace {grace}")
    ready = wc["readinessProbe"]
    unready_after = ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)
    if delay >= 5:
        check(unready_after < delay, f"{where} the kubelet sees /readyz fail ({unready_after} s) within the delay {delay}")

    svc = objs.get("Service", webhook_name)
    check(selector_matches({"matchLabels": svc["spec"]["selector"]}, pod_labels), f"{where} Service selects the webhook pods")
    svc443 = [p for p in svc["spec"]["ports"] if p["port"] == 443]
    check(len(svc443) == 1 and svc443[0]["targetPort"] in ("https", ports.get("https")),
          f"{where} Service 443 -> the webhook's https port")

    pdbs = objs.all("PodDisruptionBudget")
    if replicas > 1:
        check(len(pdbs) == 1, f"{where} a PodDisruptionBudget with {replicas} replicas")
        if pdbs:
            pdb = pdbs[0]
            want = "policy/v1beta1" if kube.startswith("1.20") else "policy/v1"
            check(pdb["apiVersion"] == want, f"{where} PDB is {want} (got {pdb['apiVersion']})")
            check(selector_matches(pdb["spec"]["selector"], pod_labels), f"{where} PDB selects the webhook pods")
            check(pdb["spec"].get("minAvailable") == 1, f"{where} PDB keeps one webhook up")
    else:
        check(pdbs == [], f"{where} no PDB for a single webhook replica (it would block drains)")

    # --- MutatingWebhookConfiguration
    (mwc,) = objs.all("MutatingWebhookConfiguration") or [{}]
    hooks = mwc.get("webhooks", [])
    required_names = v.get("webhook.requiredNamespaces", [])
    names = [h["name"] for h in hooks]
    want = ["required.webhook.agentboundary.dev"] + (["required-names.webhook.agentboundary.dev"] if required_names else []) + [
        "namespaces.webhook.agentboundary.dev", "pods.webhook.agentboundary.dev", "guard.webhook.agentboundary.dev",
        "ephemeral.webhook.agentboundary.dev"]
    check(names == want, f"{where} webhooks {names}, expected {want}")
    creates = [h for h in hooks if not h["name"].startswith(("guard.", "ephemeral."))]
    for h in hooks:
        hn = h["name"]
        fixed = hn.startswith(("required", "guard.", "ephemeral."))
        expected = "Fail" if fixed else v.get("webhook.failurePolicy", "Fail")
        check(h["failurePolicy"] == expected, f"{where} {hn} failurePolicy {h['failurePolicy']}, expected {expected}")
        check(h["timeoutSeconds"] == v.get("webhook.timeoutSeconds", 5), f"{where} {hn} timeoutSeconds")
        check(h["sideEffects"] == "None" and "v1" in h["admissionReviewVersions"], f"{where} {hn} v1, no side effects")
        if h in creates:
            check(h["reinvocationPolicy"] == v.get("webhook.reinvocationPolicy", "IfNeeded"), f"{where} {hn} reinvocationPolicy")
            check(h["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods"], "scope": "Namespaced"}], f"{where} {hn} only Pod CREATE")
        elif hn.startswith("guard."):
            check(h["rules"] == [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods"], "scope": "Namespaced"}],
                  f"{where} {hn}: UPDATE of pods")
            check(h["objectSelector"] == {"matchExpressions": [{"key": "agentboundary.dev/jailed", "operator": "Exists"}]},
                  f"{where} {hn}: only jailed pods")
        else:
            check(h["rules"] == [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}],
                  f"{where} {hn}: ephemeral containers of every pod")
            check("objectSelector" not in h, f"{where} {hn}: no objectSelector (1.20's object has no labels)")
        cc = h["clientConfig"]
        check(cc.get("service") == {"name": webhook_name, "namespace": ns, "path": "/mutate", "port": 443},
              f"{where} {hn} calls the Service's /mutate")
        if v.get("certManager.enabled"):
            check("caBundle" not in cc, f"{where} {hn}: caBundle left to cert-manager's injector")
        else:
            check("caBundle" not in cc, f"{where} {hn}: caBundle left to the operator (helm upgrade keeps it)")
    # Who is mutated: every combination of namespace and pod labels.
    excluded = [ns, "kube-system"] + v.get("webhook.excludeNamespaces", [])
    states = [None, ENABLED, DISABLED, REQUIRED, "other"]
    for ns_name in ["agents", *required_names, *excluded]:
        for ns_state in states:
            for pod_state in states:
                ns_labels = {"kubernetes.io/metadata.name": ns_name}
                if ns_state:
                    ns_labels[INJECT] = ns_state
                plabels = {"app": "x"}
                if pod_state:
                    plabels[INJECT] = pod_state
                called = [h for h in creates
                          if selector_matches(h["namespaceSelector"], ns_labels)
                          and selector_matches(h.get("objectSelector"), plabels)]
                should = webhook_must_see(ns_labels, plabels, required_names) and ns_name not in excluded
                case = f"{where} namespace {ns_name} {INJECT}={ns_state}, pod {INJECT}={pod_state}"
                check(len(called) <= 1, f"{case}: called twice {[h['name'] for h in called]}")
                required = ns_state == REQUIRED or ns_name in required_names
                if should:
                    check(len(called) == 1, f"{case}: the pod must reach the webhook")
                    if required and called:
                        check(called[0]["failurePolicy"] == "Fail", f"{case}: a required namespace fails closed")
                elif ns_name in excluded:
                    check(called == [], f"{case}: excluded namespace reached the webhook")
                elif pod_state != ENABLED and ns_state != ENABLED:
                    # Pods that never opted in must not depend on the webhook being up.
                    check(called == [], f"{case}: a pod that did not opt in reached the webhook")
                guards = [h for h in hooks if h["name"].startswith(("guard.", "ephemeral."))
                          and selector_matches(h["namespaceSelector"], ns_labels)]
                check(len(guards) == (0 if ns_name in excluded else 2), f"{case}: guards of jailed pods")

    # --- certificates: operator or cert-manager
    (op_dep,) = [objs.get("Deployment", operator_name)]
    (oc,) = op_dep["spec"]["template"]["spec"]["containers"]
    ocr = objs.maybe("ClusterRole", operator_name)
    orole = objs.maybe("Role", operator_name)
    secret_rules = [r for r in rules_of(orole) if "secrets" in r["resources"]]
    mwc_rules = [r for r in rules_of(ocr) if "mutatingwebhookconfigurations" in r["resources"]]
    certs = objs.all("Certificate")
    annotations = mwc.get("metadata", {}).get("annotations", {})
    if v.get("certManager.enabled"):
        check(len(certs) == 1, f"{where} one cert-manager Certificate")
        cert = certs[0] if certs else {"spec": {}, "metadata": {"name": ""}}
        check(cert["spec"].get("secretName") == secret, f"{where} Certificate writes the webhook's Secret")
        check(f"{webhook_name}.{ns}.svc" in cert["spec"].get("dnsNames", []), f"{where} Certificate names the Service")
        check(annotations.get("cert-manager.io/inject-ca-from") == f"{ns}/{cert['metadata']['name']}",
              f"{where} cert-manager injects the caBundle from the Certificate")
        issuer = v.get("certManager.issuerRef.name")
        if issuer:
            check(objs.all("Issuer") == [], f"{where} no Issuer of our own with an issuerRef")
            check(cert["spec"]["issuerRef"] == {"name": issuer, "kind": v.get("certManager.issuerRef.kind", "Issuer"),
                                                "group": "cert-manager.io"}, f"{where} Certificate uses the given issuer")
        else:
            issuers = objs.all("Issuer")
            check(len(issuers) == 1 and issuers[0]["spec"] == {"selfSigned": {}}, f"{where} a self-signed Issuer")
            check(issuers and cert["spec"]["issuerRef"]["name"] == issuers[0]["metadata"]["name"]
                  and cert["spec"]["issuerRef"].get("kind") == "Issuer", f"{where} Certificate uses that Issuer")
        for e in ("BOUNDARY_WEBHOOK_SECRET", "BOUNDARY_WEBHOOK_CONFIGURATION", "BOUNDARY_WEBHOOK_DNS_NAMES"):
            check(e not in env_of(oc), f"{where} cert-manager mode: operator has no {e}")
        check(secret_rules == [] and mwc_rules == [], f"{where} cert-manager mode: operator may not touch Secrets or the webhook")
    else:
        check(certs == [] and objs.all("Issuer") == [], f"{where} no cert-manager objects")
        check("cert-manager.io/inject-ca-from" not in annotations, f"{where} no inject-ca-from annotation")
        check(env_value(oc, "BOUNDARY_WEBHOOK_SECRET") == secret, f"{where} operator writes the Secret the webhook mounts")
        check(env_value(oc, "BOUNDARY_WEBHOOK_CONFIGURATION") == mwc.get("metadata", {}).get("name"),
              f"{where} operator patches this webhook configuration")
        dns = (env_value(oc, "BOUNDARY_WEBHOOK_DNS_NAMES") or "").split(",")
        check(f"{webhook_name}.{ns}.svc" in dns, f"{where} serving certificate names {webhook_name}.{ns}.svc: {dns}")
        check(len(secret_rules) >= 1 and all(
            set(r.get("resourceNames", [])) == {secret, secret + CA_SUFFIX} or r["verbs"] == ["create"]
            for r in secret_rules), f"{where} operator's Secret rights: create, and its two Secrets by name")
        check(len(mwc_rules) == 1 and mwc_rules[0].get("resourceNames") == [mwc["metadata"]["name"]]
              and "patch" in mwc_rules[0]["verbs"], f"{where} operator may patch only its webhook configuration")

    # --- operator
    op_replicas = v.get("operator.replicas", 1)
    check(op_dep["spec"]["replicas"] == op_replicas, f"{where} operator replicas {op_replicas}")
    for e in env_of(oc):
        check(e in OPERATOR_ENV, f"{where} operator env {e} is a flag of operator/src")
    for e in (POD_NAME_ENV, POD_NAMESPACE_ENV):
        check(env_of(oc).get(e, {}).get("valueFrom") is not None, f"{where} operator {e} from the downward API")
    # ClusterBoundaryPolicies skip the namespaces the webhook never mutates (the operator adds its
    # own and kube-system itself).
    excluded_env = env_value(oc, C["env"]["EXCLUDED_NAMESPACES"])
    check(excluded_env == ",".join(v.get("webhook.excludeNamespaces", [])),
          f"{where} operator {C['env']['EXCLUDED_NAMESPACES']}={excluded_env!r}")
    leader = v.get("operator.leaderElection.enabled", True)
    lease_rules = [r for r in rules_of(orole) if "leases" in r["resources"]]
    if not leader and v.get("certManager.enabled"):
        check(orole is None, f"{where} operator needs no namespaced rights without Lease and Secrets")
    if leader:
        check(env_value(oc, "BOUNDARY_LEASE_NAMESPACE") == ns, f"{where} Lease in the release namespace")
        lease = env_value(oc, "BOUNDARY_LEASE_NAME")
        check(any(r.get("resourceNames") == [lease] and "update" in r["verbs"] for r in lease_rules),
              f"{where} operator may renew its Lease {lease}")
        check(all(r.get("resourceNames") or r["verbs"] == ["create"] for r in lease_rules),
              f"{where} Lease rights by name (except create)")
    else:
        check("BOUNDARY_LEASE_NAMESPACE" not in env_of(oc) and lease_rules == [],
              f"{where} no leader election: no Lease, no Lease rights")
        check(op_dep["spec"].get("strategy", {}).get("type") == "Recreate",
              f"{where} no leader election: never two operators during a rollout")
    metrics = {p["name"]: p["containerPort"] for p in oc["ports"]}.get("metrics")
    check(env_value(oc, "BOUNDARY_METRICS_ADDR") == f"0.0.0.0:{metrics}", f"{where} operator metrics port")
    check(oc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, f"{where} operator readiness")
    check(env_value(oc, "BOUNDARY_NODE_AGENT_NAMESPACE") == ns, f"{where} node-agent reports trusted only from {ns}")
    # Enforcement checks: the values reach the operator's flags.
    for key, env, default in (("intervalSeconds", "BOUNDARY_ENFORCEMENT_INTERVAL_SECONDS", 10),
                              ("timeoutMillis", "BOUNDARY_ENFORCEMENT_TIMEOUT_MILLIS", 2000),
                              ("concurrency", "BOUNDARY_ENFORCEMENT_CONCURRENCY", 32),
                              ("staleGraceSeconds", "BOUNDARY_ENFORCEMENT_STALE_GRACE_SECONDS", 180)):
        want = str(v.get(f"operator.enforcementChecks.{key}", default))
        check(env_value(oc, env) == want, f"{where} operator {env}={want} (got {env_value(oc, env)})")

    # --- node agent
    ds = objs.maybe("DaemonSet", agent_name)
    na = {k[len("nodeAgent."):]: val for k, val in v.items() if k.startswith("nodeAgent.")}
    if na.get("enabled", True):
        check(ds is not None, f"{where} node-agent DaemonSet")
        ds = ds or {"spec": {"template": {"metadata": {}, "spec": {"containers": [{}]}}}}
        tmpl = ds["spec"]["template"]
        labels = tmpl["metadata"].get("labels", {})
        check(labels.get(COMPONENT) == "node-agent", f"{where} node-agent pods carry {COMPONENT}=node-agent")
        sel = env_value(oc, "BOUNDARY_NODE_AGENT_SELECTOR") or ""
        sel_labels = dict(kv.split("=", 1) for kv in sel.split(",") if "=" in kv)
        check(sel_labels.get(COMPONENT) == "node-agent" and selector_matches({"matchLabels": sel_labels}, labels),
              f"{where} the operator's node-agent selector {sel!r} selects the node-agent pods")
        (ac,) = tmpl["spec"]["containers"]
        check(ac.get("command") == ["/usr/local/bin/boundary-node-agent"] and "args" not in ac
              and ac.get("image") == runtime_image,
              f"{where} node agent runs boundary-node-agent from the jail-runtime image")
        aenv = env_of(ac)
        for e in (POD_NAME_ENV, POD_NAMESPACE_ENV, "NODE_NAME"):
            check(aenv.get(e, {}).get("valueFrom") is not None, f"{where} node agent {e} from the downward API")
        for e in aenv:
            check(e in NODE_AGENT_ENV or e in DOWNWARD, f"{where} node-agent env {e} is a flag of boundary-node-agent")
        psc, csc = tmpl["spec"].get("securityContext", {}), ac.get("securityContext", {})
        userns, seccomp = na.get("enableUserNamespaces", False), na.get("installSeccompProfile", False)
        check(bool(csc.get("privileged")) == userns, f"{where} node agent privileged exactly when enableUserNamespaces")
        check(csc.get("readOnlyRootFilesystem") is True, f"{where} node agent read-only root filesystem")
        if userns:
            check(env_value(ac, "BOUNDARY_SET_MAX_USER_NAMESPACES") == str(na.get("maxUserNamespaces", 65536)),
                  f"{where} node agent sets user.max_user_namespaces")
        else:
            check("BOUNDARY_SET_MAX_USER_NAMESPACES" not in aenv, f"{where} sysctl switch off: no sysctl env")
            check(csc.get("allowPrivilegeEscalation") is False and csc.get("capabilities", {}).get("drop") == ["ALL"],
                  f"{where} unprivileged node agent: no capabilities, no escalation")
            # Root probing user namespaces needs CAP_SETFCAP to map uid 0 (Linux 5.12+); nothing else.
            check(csc.get("capabilities", {}).get("add", []) == (["SETFCAP"] if seccomp else []),
                  f"{where} node agent adds SETFCAP exactly when it runs as root for the seccomp profile")
        host_paths = [vol for vol in tmpl["spec"].get("volumes", []) if "hostPath" in vol]
        if seccomp:
            seccomp_dir = na.get("seccompDir", "/var/lib/kubelet/seccomp")
            check([h["hostPath"]["path"] for h in host_paths] == [seccomp_dir], f"{where} only kubelet's seccomp dir from the host")
            mount = [m for m in ac.get("volumeMounts", []) if host_paths and m["name"] == host_paths[0]["name"]]
            check(len(mount) == 1 and env_value(ac, "BOUNDARY_SECCOMP_DIR") == mount[0]["mountPath"]
                  and not mount[0].get("readOnly"), f"{where} node agent writes the profile into the mounted dir")
        else:
            check(host_paths == [], f"{where} no hostPath without installSeccompProfile")
            check("BOUNDARY_SECCOMP_DIR" not in aenv, f"{where} seccomp switch off: no seccomp env")
        root = userns or seccomp
        check((psc.get("runAsUser") == 0) == root and psc.get("runAsNonRoot") is (not root),
              f"{where} node agent runs as root exactly when a switch needs it")
        check(psc.get("seccompProfile", {}).get("type") == na.get("seccompProfileType", "Unconfined"),
              f"{where} node agent seccomp type")
        arole = objs.get("Role", agent_name)
        check(rules_of(arole) == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
              f"{where} node agent may only get and patch Pods of its namespace")
        check(objs.maybe("ClusterRole", agent_name) is None, f"{where} node agent has no cluster-wide rights")
    else:
        check(ds is None and objs.maybe("Role", agent_name) is None, f"{where} node agent disabled: none rendered")

    # --- privileges of every pod
    for kind in ("Deployment", "DaemonSet"):
        for d in objs.all(kind):
            ps = d["spec"]["template"]["spec"]
            n = d["metadata"]["name"]
            check(not ps.get("hostPID") and not ps.get("hostIPC"), f"{where} {n}: no hostPID/hostIPC")
            if n != webhook_name:
                check(not ps.get("hostNetwork"), f"{where} {n}: no hostNetwork")
            if n != agent_name:
                check(not any("hostPath" in vol for vol in ps.get("volumes", [])), f"{where} {n}: no hostPath")
                (c,) = ps["containers"]
                sc = c.get("securityContext", {})
                check(ps["securityContext"].get("runAsNonRoot") is True
                      and ps["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault"
                      and sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                      and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("privileged"),
                      f"{where} {n}: Pod Security 'restricted' settings")
            check(ps.get("serviceAccountName") == n, f"{where} {n} runs as its own ServiceAccount")
            check(objs.maybe("ServiceAccount", n) is not None, f"{where} ServiceAccount {n}")

    # --- RBAC
    for kind in ("ClusterRole", "Role"):
        for r in objs.all(kind):
            for rule in rules_of(r):
                check("*" not in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", []),
                      f"{where} {kind} {r['metadata']['name']}: no wildcards")
                if kind == "ClusterRole" and r["metadata"]["name"] not in (webhook_name, operator_name):
                    # The uninstall hook deletes each namespace's credentials Secret by name.
                    check("secrets" not in rule["resources"]
                          or (r["metadata"]["name"] == uninstall_name and rule["verbs"] == ["delete"]
                              and rule.get("resourceNames") == [CREDENTIALS_SECRET]),
                          f"{where} {kind} {r['metadata']['name']}: no Secrets cluster-wide")
                if kind == "ClusterRole":
                    check("pods" not in rule["resources"] or set(rule["verbs"]) <= {"get", "list", "watch"},
                          f"{where} {kind} {r['metadata']['name']}: pods read-only at most")
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for b in objs.all(kind):
            n = b["metadata"]["name"]
            check(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": n}
                  and objs.maybe(role_kind, n) is not None, f"{where} {kind} {n} binds its own {role_kind}")
            check(b["subjects"] == [{"kind": "ServiceAccount", "name": n, "namespace": ns}],
                  f"{where} {kind} {n} binds only ServiceAccount {n}")
    wcr = objs.get("ClusterRole", webhook_name)
    check(all(set(r["verbs"]) <= {"get", "list", "watch"} for r in rules_of(wcr)), f"{where} webhook is read-only")
    # Image pull secrets: read by name only (get), never listed or watched, and only with lookups.
    lookup = v.get("webhook.imageLookup.enabled", True) and v.get("webhook.imageLookup.pullSecrets", True)
    pull_rules = [r for r in rules_of(wcr) if {"secrets", "serviceaccounts"} & set(r["resources"])]
    want = [{"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["get"]}] if lookup else []
    check(pull_rules == want, f"{where} webhook reads pull secrets and service accounts by name only, and only "
          f"with imageLookup.pullSecrets: {pull_rules}")
    budget = int(env_value(wc, "BOUNDARY_WEBHOOK_REGISTRY_BUDGET_MS") or 0)
    check(env_value(wc, "BOUNDARY_WEBHOOK_REGISTRY_LOOKUP") == str(v.get("webhook.imageLookup.enabled", True)).lower()
          and env_value(wc, "BOUNDARY_WEBHOOK_REGISTRY_PULL_SECRETS")
          == str(v.get("webhook.imageLookup.pullSecrets", True)).lower()
          and 0 < budget < 1000 * v.get("webhook.timeoutSeconds", 5),
          f"{where} webhook image lookup env, budget {budget} ms under timeoutSeconds")
    check(env_value(wc, "BOUNDARY_WEBHOOK_REGISTRY_ECR") == str(v.get("webhook.imageLookup.ecr", True)).lower(),
          f"{where} webhook ECR lookups {v.get('webhook.imageLookup.ecr', True)}")
    wsa = objs.get("ServiceAccount", webhook_name)
    irsa = v.get("webhook.serviceAccountAnnotations.eks\\.amazonaws\\.com/role-arn")
    check(wsa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") == irsa,
          f"{where} webhook ServiceAccount annotations (IRSA role {irsa})")
    ca_map = v.get("webhook.imageLookup.caConfigMap", "")
    ca_volumes = [vol for vol in spec.get("volumes", []) if vol["name"] == "registry-ca"]
    check(ca_volumes == ([{"name": "registry-ca", "configMap": {"name": ca_map, "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]
                         if ca_map else [])
          and env_value(wc, "BOUNDARY_WEBHOOK_REGISTRY_CA_FILE") == ("/etc/agent-boundary/registry-ca/ca.crt" if ca_map else None)
          and any(m["name"] == "registry-ca" and m["mountPath"] == "/etc/agent-boundary/registry-ca"
                  for m in wc.get("volumeMounts", [])) == bool(ca_map),
          f"{where} registry CA ConfigMap {ca_map!r} mounted and named to the webhook")
    insecure = v.get("webhook.imageLookup.insecureRegistries", [])
    check(env_value(wc, "BOUNDARY_WEBHOOK_INSECURE_REGISTRIES") == (",".join(insecure) if insecure else None),
          f"{where} webhook insecure registries {insecure}")
    check(objs.maybe("Role", webhook_name) is None, f"{where} webhook has no namespaced rights")
    # Credentials: the operator reads Secrets everywhere (the ones policies reference; it watches
    # their metadata) and changes or deletes only the credentials Secret of each namespace.
    cred_rules = [r for r in rules_of(ocr) if "secrets" in r["resources"]]
    check(all(r["resources"] == ["secrets"] for r in cred_rules),
          f"{where} operator's Secret rules name Secrets alone: {cred_rules}")
    check(any(not r.get("resourceNames") and {"get", "list", "watch"} <= set(r["verbs"]) for r in cred_rules),
          f"{where} operator reads and watches the Secrets credentials reference: {cred_rules}")
    check(all(set(r["verbs"]) <= {"get", "list", "watch", "create"} or r.get("resourceNames") == [CREDENTIALS_SECRET]
              for r in cred_rules),
          f"{where} operator changes and deletes only Secrets named {CREDENTIALS_SECRET} cluster-wide: {cred_rules}")
    check(any(r.get("resourceNames") == [CREDENTIALS_SECRET] and {"patch", "delete"} <= set(r["verbs"])
              for r in cred_rules),
          f"{where} operator applies and deletes {CREDENTIALS_SECRET}: {cred_rules}")
    check(all(set(r["verbs"]) <= {"get"} for kind in ("ClusterRole", "Role")
              for role in objs.all(kind) if role["metadata"]["name"] not in (operator_name, uninstall_name)
              for r in rules_of(role) if "secrets" in r["resources"]),
          f"{where} no component but the operator (and its uninstall hook) does more than get Secrets")
    # The uninstall hook: what the operator wrote, deleted by name, never read.
    uninstall_secrets = sorted((kind, tuple(r.get("resourceNames", [])), tuple(r["verbs"]))
                               for kind in ("ClusterRole", "Role") for role in objs.all(kind)
                               if role["metadata"]["name"] == uninstall_name
                               for r in rules_of(role) if "secrets" in r["resources"])
    want_secrets = [("ClusterRole", (CREDENTIALS_SECRET,), ("delete",))]
    if not v.get("certManager.enabled", False):
        want_secrets.append(("Role", (secret, secret + CA_SUFFIX), ("delete",)))
    check(uninstall_secrets == sorted(want_secrets) if v.get("operator.cleanupOnUninstall", True) else not uninstall_secrets,
          f"{where} the uninstall hook deletes Secrets by name only: {uninstall_secrets}")
    cm_rules = [r for r in rules_of(ocr) if "configmaps" in r["resources"]]
    check(cm_rules and all(r.get("resourceNames") == [POLICY_CONFIGMAP] or set(r["verbs"]) <= {"list", "watch", "create"}
                           for r in cm_rules),
          f"{where} operator changes and deletes only ConfigMaps named {POLICY_CONFIGMAP}")
    check(any("nodes" in r["resources"] and "patch" in r["verbs"] for r in rules_of(ocr)), f"{where} operator labels nodes")
    check(any("boundarypolicies/status" in r["resources"] for r in rules_of(ocr)), f"{where} operator writes policy status")
    # ClusterBoundaryPolicy: the operator reads them and writes their status, and labels namespaces
    # (inject=required); nothing in the chart may write them: only cluster administrators do.
    check(any("clusterboundarypolicies" in r["resources"] and {"list", "watch"} <= set(r["verbs"])
              for r in rules_of(ocr)), f"{where} operator watches cluster policies")
    check(any(r["resources"] == ["clusterboundarypolicies/status"] and r["verbs"] == ["patch"] for r in rules_of(ocr)),
          f"{where} operator writes cluster policy status")
    check(any("namespaces" in r["resources"] and {"list", "watch", "patch"} <= set(r["verbs"]) for r in rules_of(ocr)),
          f"{where} operator watches and labels namespaces")
    for kind in ("ClusterRole", "Role"):
        for r in objs.all(kind):
            for rule in rules_of(r):
                if "clusterboundarypolicies" in rule["resources"] or "boundarypolicies" in rule["resources"]:
                    check(set(rule["verbs"]) <= {"get", "list", "watch"},
                          f"{where} {kind} {r['metadata']['name']} may not write policies: {rule}")
    aggregated = [r for r in objs.all("ClusterRole")
                  if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"]["labels"])]
    check([r["metadata"]["name"] for r in aggregated] == [f"{full}-view"]
          and sorted(k for k in aggregated[0]["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/"))
          == [f"rbac.authorization.k8s.io/aggregate-to-{r}" for r in ("admin", "edit", "view")]
          and rules_of(aggregated[0]) == [{"apiGroups": ["agentboundary.dev"],
                                           "resources": ["boundarypolicies", "clusterboundarypolicies"],
                                           "verbs": ["get", "list", "watch"]}],
          f"{where} only {full}-view is aggregated (to view, edit, admin; read-only): {[r['metadata'] for r in aggregated]}")
    # Jailed pods (policy status) everywhere and the node agents' reports: read, never write.
    check(any("pods" in r["resources"] and set(r["verbs"]) == {"list", "watch"} for r in rules_of(ocr)),
          f"{where} operator reads Pods")
    check(not any("pods" in r["resources"] and set(r["verbs"]) - {"list", "watch"}
                  for r in rules_of(ocr) + rules_of(orole)), f"{where} operator never writes Pods")
    # The readiness gate's pod condition: patch pods/status, only when the gate is on, nothing more.
    status_rules = [r for r in rules_of(ocr) + rules_of(orole) if "pods/status" in r["resources"]]
    gate = v.get("webhook.enforcementReadinessGate", False)
    check(status_rules == ([{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}] if gate else []),
          f"{where} operator may patch pods/status exactly when enforcementReadinessGate is on: {status_rules}")
    # The agents' service accounts are not the chart's; no component gets pod-writing rights for them.
    pod_rules = [r for r in rules_of(wcr) if any(res.startswith("pods") for res in r["resources"])]
    check(pod_rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
          f"{where} the webhook only gets pods (ephemeral container requests before 1.22): {pod_rules}")


def lint(sets):
    p = helm("lint", "--strict", CHART, *[a for s in sets for a in ("--set", s)])
    return p.returncode == 0, p.stdout + p.stderr


def as_sets(values):
    out = []
    for k, val in values.items():
        if isinstance(val, bool):
            out.append(f"{k}={'true' if val else 'false'}")
        elif isinstance(val, list):
            out.append(f"{k}={{{','.join(val)}}}")
        elif k.endswith(".image"):
            repo, tag = val.rsplit(":", 1)
            out.append(f"{k}.repository={repo}")
            out.append(f"{k}.tag={tag}")
        else:
            out.append(f"{k}={val}")
    return out


def scenario(release, namespace, **values):
    full = release if "agent-boundary" in release else f"{release}-agent-boundary"
    values = {k.replace("__", "."): val for k, val in values.items()}
    return {"release": release, "namespace": namespace, "fullname": full, "values": values}


SCENARIOS = {
    "defaults": scenario("agent-boundary", "agent-boundary"),
    "cert-manager": scenario("agent-boundary", "agent-boundary", certManager__enabled=True),
    "cert-manager-issuer": scenario("agent-boundary", "agent-boundary", certManager__enabled=True,
                                    certManager__issuerRef__name="corp-ca", certManager__issuerRef__kind="ClusterIssuer"),
    "host-network": scenario("agent-boundary", "agent-boundary", webhook__hostNetwork=True, webhook__port=10443),
    "node-agent-switches": scenario("agent-boundary", "agent-boundary", nodeAgent__enableUserNamespaces=True,
                                    nodeAgent__installSeccompProfile=True, nodeAgent__maxUserNamespaces=30000,
                                    nodeAgent__seccompDir="/var/lib/custom-kubelet/seccomp"),
    "user-namespaces-only": scenario("agent-boundary", "agent-boundary", nodeAgent__enableUserNamespaces=True),
    "seccomp-profile-only": scenario("agent-boundary", "agent-boundary", nodeAgent__installSeccompProfile=True),
    "fail-open": scenario("agent-boundary", "agent-boundary", webhook__failurePolicy="Ignore",
                          webhook__timeoutSeconds=2, webhook__reinvocationPolicy="Never"),
    "anonymous-image-lookup": scenario("agent-boundary", "agent-boundary", webhook__imageLookup__pullSecrets=False,
                                       webhook__imageLookup__budgetMilliseconds=2500,
                                       webhook__imageLookup__insecureRegistries=["registry.local:5000", "10.0.0.5"],
                                       webhook__imageLookup__ecr=False,
                                       webhook__imageLookup__caConfigMap="registry-ca"),
    "no-image-lookup": scenario("agent-boundary", "agent-boundary", webhook__imageLookup__enabled=False),
    "ecr-irsa": scenario("agent-boundary", "agent-boundary", **{
        "webhook__serviceAccountAnnotations__eks\\.amazonaws\\.com/role-arn": "arn:aws:iam::123456789012:role/webhook"}),
    "image-registry": scenario("agent-boundary", "agent-boundary", imageRegistry="mirror.example.com:5000/"),
    "no-uninstall-cleanup": scenario("agent-boundary", "agent-boundary", operator__cleanupOnUninstall=False),
    "custom-namespace": scenario("ab", "agents-system", webhook__excludeNamespaces=["monitoring", "ci"],
                                 jailRuntime__image="registry.example.com/ab/jail-runtime:1.2.3",
                                 webhook__image="registry.example.com/ab/boundary-webhook:1.2.3"),
    "required-and-exempt": scenario("agent-boundary", "agent-boundary", webhook__failurePolicy="Ignore",
                                    webhook__requiredNamespaces=["agents-prod", "ci"],
                                    webhook__optOutServiceAccounts=["ci/runner", "tools/builder"]),
    "long-shutdown-delay": scenario("agent-boundary", "agent-boundary", webhook__shutdownDelaySeconds=45,
                                    webhook__timeoutSeconds=30),
    "no-shutdown-delay": scenario("agent-boundary", "agent-boundary", webhook__shutdownDelaySeconds=0),
    "one-webhook-ha-operator": scenario("agent-boundary", "agent-boundary", webhook__replicas=1, operator__replicas=2),
    "no-leader-election-no-agent": scenario("agent-boundary", "agent-boundary", operator__leaderElection__enabled=False,
                                            nodeAgent__enabled=False),
    "enforcement-readiness-gate": scenario("agent-boundary", "agent-boundary", webhook__enforcementReadinessGate=True,
                                           operator__enforcementChecks__intervalSeconds=30,
                                           operator__enforcementChecks__timeoutMillis=500,
                                           operator__enforcementChecks__concurrency=8,
                                           operator__enforcementChecks__staleGraceSeconds=0),
    "enforcement-checks-off": scenario("agent-boundary", "agent-boundary",
                                       operator__enforcementChecks__intervalSeconds=0),
    "sidecar-audit-ocsf": scenario("agent-boundary", "agent-boundary", webhook__sidecar__auditFormat="ocsf"),
    "sidecar-workers": scenario("agent-boundary", "agent-boundary", webhook__sidecar__workerThreads=4),
    # Every monitoring object (tests/chart/monitoring.py checks them in detail): the common
    # checks here, and kubernetes-validate on the operator's metrics Service and the dashboards.
    "monitoring": scenario("agent-boundary", "agent-boundary", monitoring__serviceMonitor__enabled=True,
                           monitoring__podMonitor__enabled=True, monitoring__prometheusRule__enabled=True,
                           monitoring__dashboards__enabled=True),
    "cert-manager-no-leader-election": scenario("agent-boundary", "agent-boundary", certManager__enabled=True,
                                                operator__leaderElection__enabled=False),
}

# Values that must be refused, and a word the refusal must name.
REFUSED = [
    (["webhook.replica=3"], "replica"),
    (["webhok.replicas=3"], "webhok"),
    (["webhook.replicas=two"], "replicas"),
    (["webhook.failurePolicy=Fial"], "failurePolicy"),
    (["webhook.timeoutSeconds=60"], "timeoutSeconds"),
    (["webhook.timeoutSeconds=3", "webhook.imageLookup.budgetMilliseconds=3000"], "budgetMilliseconds"),
    (["webhook.reinvocationPolicy=Always"], "reinvocationPolicy"),
    (["webhook.shutdownDelaySeconds=-1"], "shutdownDelaySeconds"),
    (["webhook.shutdownDelaySeconds=ten"], "shutdownDelaySeconds"),
    (["webhook.hostNetwork=yes"], "hostNetwork"),
    (["nodeAgent.enableUserNamespace=true"], "enableUserNamespace"),
    (["nodeAgent.seccompProfileType=Localhost"], "seccompProfileType"),
    (["certManager.enable=true"], "enable"),
    (["jailRuntime.image.pullPolicy=Sometimes"], "pullPolicy"),
    (["operator.replicas=2", "operator.leaderElection.enabled=false"], "leaderElection"),
    (["webhook.enforcementReadinessGate=yes"], "enforcementReadinessGate"),
    (["webhook.sidecar.auditFormat=cef"], "auditFormat"),
    (["webhook.sidecar.workerThreads=-1"], "workerThreads"),
    (["webhook.sidecar.workerThreads=two"], "workerThreads"),
    (["webhook.requiredNamespaces={kube-system}"], "requiredNamespaces"),
    (["webhook.requiredNamespaces={agent-boundary}"], "requiredNamespaces"),
    (["webhook.optOutServiceAccounts={runner}"], "optOutServiceAccounts"),
    (["operator.enforcementChecks.interval=5"], "interval"),
    (["operator.enforcementChecks.timeoutMillis=0"], "timeoutMillis"),
    (["webhook.enforcementReadinessGate=true", "operator.enforcementChecks.intervalSeconds=0"],
     "intervalSeconds"),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, s in SCENARIOS.items():
        sets = as_sets(s["values"])
        ok, out = lint(sets)
        check(ok, f"[{name}] helm lint --strict failed:\n{out}")
        for kube, tag in ((OLD, "1.20"), (RECENT, "recent")):
            docs, text = render(s["release"], s["namespace"], sets, kube)
            if not check(docs is not None, f"[{name} @ {kube}] helm template failed:\n{text}"):
                continue
            with open(os.path.join(OUT, f"{name}-{tag}.yaml"), "w") as f:
                f.write(text)
            check_render(name, s, Objects(docs), kube)
            if kube == RECENT and name in VERSION_SCENARIOS:
                for other in SAME_AS_RECENT:
                    _, other_text = render(s["release"], s["namespace"], sets, other)
                    check(other_text == text, f"[{name}] renders for Kubernetes {other} as for {RECENT}")

    switches = []
    for base, _, names in os.walk(os.path.join(CHART, "templates")):
        for n in names:
            with open(os.path.join(base, n)) as f:
                switches += [f"{n}: {line.strip()}" for line in f if "Capabilities.KubeVersion" in line]
    check(len(switches) == 1 and '">=1.21-0"' in switches[0],
          f"the templates' only Kubernetes version switch is at 1.21 (the renderings for 1.21+ stand for "
          f"each other): {switches}")

    # The defaults match the local image build, so `helm install` works after build-images.sh.
    values = yaml.safe_load(read("charts", "agent-boundary", "values.yaml"))
    for key, image in (("jailRuntime", "jail-runtime"), ("webhook", "boundary-webhook"), ("operator", "boundary-operator")):
        check(values[key]["image"]["repository"] == f"{LOCAL_REPO}/{image}" and values[key]["image"]["tag"] == "",
              f"values.yaml {key}.image is what build-images.sh builds ({LOCAL_REPO}/{image}, the tag the appVersion)")

    for sets, word in REFUSED:
        docs, text = render("agent-boundary", "agent-boundary", sets, RECENT)
        check(docs is None and word in text, f"helm must refuse {sets} naming {word!r}; got:\n{text[-600:]}")
    schema = json.loads(read("charts", "agent-boundary", "values.schema.json"))
    check(schema.get("$schema") == "http://json-schema.org/draft-07/schema#", "values.schema.json is draft-07")

    # What `helm package` ships: the CRD as a regular file, the schema, and the same rendering.
    with tempfile.TemporaryDirectory() as tmp:
        p = helm("package", CHART, "--destination", tmp)
        if check(p.returncode == 0, f"helm package failed: {p.stdout}{p.stderr}"):
            (tgz,) = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".tgz")]
            with tarfile.open(tgz) as t:
                names = t.getnames()
                for f in CRD_FILES:
                    crd = t.extractfile(f"agent-boundary/crds/{f}")
                    check(crd is not None and crd.read().decode() == read("crds", f),
                          f"the packaged chart holds the generated crds/{f}")
            check("agent-boundary/values.schema.json" in names and "agent-boundary/templates/NOTES.txt" in names,
                  "the packaged chart holds values.schema.json and NOTES.txt")
            from_dir = helm("template", "x", CHART, "--include-crds").stdout
            from_tgz = helm("template", "x", tgz, "--include-crds").stdout
            check(from_dir == from_tgz and from_dir, "the packaged chart renders like the folder")

    # NOTES.txt tells the next step: the opt-in label and an example policy that exists. (helm
    # template does not print NOTES.txt; a copy of the chart renders it into a ConfigMap.)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "agent-boundary")
        shutil.copytree(CHART, copy)
        with open(os.path.join(copy, "templates", "zz-notes.yaml"), "w") as f:
            f.write('apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
                    'data:\n  notes: {{ include "agent-boundary/templates/NOTES.txt" . | quote }}\n')

        def notes(*sets):
            p = helm("template", "agent-boundary", copy, "-n", "agent-boundary", "--show-only",
                     "templates/zz-notes.yaml", *[a for s in sets for a in ("--set", s)])
            return yaml.safe_load(p.stdout)["data"]["notes"] if p.returncode == 0 else p.stderr

        text = notes()
        examples = re.findall(r"crds/examples/[\w.-]+\.yaml", text)
        check(examples and all(os.path.exists(os.path.join(ROOT, e)) for e in examples),
              f"NOTES.txt points at an example policy that exists: {examples}")
        check(f"{INJECT}={ENABLED}" in text, f"NOTES.txt names the opt-in label:\n{text}")
        check("without a jail" in notes("webhook.failurePolicy=Ignore").lower() and "without a jail" not in text.lower(),
              "NOTES.txt warns about failurePolicy Ignore, and only then")
        check("privileged" in notes("nodeAgent.enableUserNamespaces=true"), "NOTES.txt names the privileged node agent")

    helm_version = helm("version", "--short").stdout.strip()
    print(f"check_chart with helm {helm_version}: {len(SCENARIOS)} scenarios x 2 Kubernetes versions "
          f"(the recent one also as {', '.join(SAME_AS_RECENT) or 'no other'}), {len(REFUSED)} refused values, "
          f"{CHECKS} checks, {len(FAILURES)} failed")
    for f in FAILURES:
        print("FAIL", f)
    sys.exit(1 if FAILURES else 0)


main()
