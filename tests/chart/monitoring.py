"""The chart's monitoring objects (values `monitoring.*`), run by tests/scripts/test-chart.sh.

The Prometheus Operator's CRDs are not installed in the test cluster, so these objects are checked
as rendered, here:

- off by default: no ServiceMonitor, PodMonitor, PrometheusRule, dashboard ConfigMap nor operator
  metrics Service;
- on: the ServiceMonitors select the webhook's and the operator's Services by their labels and
  scrape a port those Services name; the PodMonitor selects pods by the label the webhook puts on
  jailed pods and scrapes the container port the webhook names (both read from the sources);
  the `up{job=...}` of the rules are the jobs of those Services; each alert has a severity, a
  summary, a description and a runbook_url whose anchor is a heading of charts/README.md; extra
  labels and thresholds from the values land where they should;
- the dashboards are JSON with a PromQL expression in every panel, in a ConfigMap with the label
  Grafana's sidecar looks for.

It writes, for promtool (run by test-chart.sh): OUT/rules.yaml (the PrometheusRule's groups with
the default values), OUT/rules-without-annotations.yaml (the same for tests/chart/rules-test.yaml) and
OUT/dashboard-queries.yaml (every dashboard expression as a recording rule, Grafana's
variables replaced by values, so that `promtool check rules` parses each one).

    python3 monitoring.py HELM REPO_ROOT OUT
"""

import json
import os
import re
import subprocess
import sys

import yaml

HELM, ROOT, OUT = sys.argv[1:4]
CHART = os.path.join(ROOT, "charts", "agent-boundary")
RELEASE, NAMESPACE = "ab", "boundary-system"
FULLNAME = "ab-agent-boundary"
ALL_ON = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
]
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
FAILURES = []


def check(cond, message):
    if not cond:
        FAILURES.append(message)
    return cond


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def render(sets, string_sets=()):
    args = [HELM, "template", RELEASE, CHART, "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    for s in string_sets:
        args += ["--set-string", s]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d], p.stdout


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def selected(selector, labels):
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op = expr["key"], expr["operator"]
        if op == "Exists" and key not in labels:
            return False
        if op == "In" and labels.get(key) not in expr["values"]:
            return False
    return True


def anchors(markdown):
    """GitHub's anchors of the headings of a Markdown text."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#+\s+(.*)$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def grafana_to_promql(expr):
    """A dashboard expression with Grafana's variables replaced by values PromQL accepts."""
    for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"),
                       ("${namespace}", ".*"), ("$namespace", ".*")):
        expr = expr.replace(var, value)
    check("$" not in expr, f"dashboard expression with an unknown variable: {expr}")
    return expr


def main():
    os.makedirs(OUT, exist_ok=True)

    # Off by default.
    docs, text = render([])
    if check(docs is not None, f"helm template (defaults) failed: {text}"):
        kinds = {d["kind"] for d in docs}
        check(not kinds & MONITORING_KINDS, f"monitoring objects rendered by default: {kinds & MONITORING_KINDS}")
        check(not any(d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"] for d in docs),
              "a dashboard ConfigMap is rendered by default")
        check(not any(d["kind"] == "Service" and d["metadata"]["name"] == f"{FULLNAME}-operator" for d in docs),
              "the operator's metrics Service is rendered by default")

    docs, text = render(
        ALL_ON + ["monitoring.prometheusRule.thresholds.denialsPerSecond=3",
                  "monitoring.dashboards.namespace=grafana"],
        ["monitoring.serviceMonitor.labels.release=kps", "monitoring.podMonitor.labels.release=kps",
         "monitoring.prometheusRule.labels.release=kps",
         "monitoring.dashboards.annotations.grafana_folder=Agent Boundary"],
    )
    if not check(docs is not None, f"helm template (monitoring on) failed: {text}"):
        return
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}

    # ServiceMonitors: one per component, each selecting exactly its Service, on a named port.
    monitors = of_kind(docs, "ServiceMonitor")
    jobs = set()
    check(len(monitors) == 2, f"{len(monitors)} ServiceMonitors, expected 2 (webhook, operator)")
    for sm in monitors:
        name = sm["metadata"]["name"]
        check(sm["metadata"]["labels"].get("release") == "kps", f"ServiceMonitor {name}: labels from values missing")
        check(sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}, f"ServiceMonitor {name}: namespaceSelector")
        hits = [s for s in services.values() if selected(sm["spec"]["selector"], s["metadata"]["labels"])]
        if not check(len(hits) == 1, f"ServiceMonitor {name} selects {[h['metadata']['name'] for h in hits]}, not one Service"):
            continue
        svc = hits[0]
        ports = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            check(ep["port"] in ports, f"ServiceMonitor {name} scrapes port {ep['port']}, Service has {ports}")
            check(ep["path"] == "/metrics", f"ServiceMonitor {name}: path {ep['path']}")
        # Prometheus Operator's default job label is the Service's name.
        jobs.add(svc["metadata"]["name"])
        # The Service's metrics port reaches the container port named `metrics`.
        deploy = [d for d in of_kind(docs, "Deployment") if selected({"matchLabels": svc["spec"]["selector"]},
                                                                     d["spec"]["template"]["metadata"]["labels"])]
        if check(len(deploy) == 1, f"Service {svc['metadata']['name']} selects {len(deploy)} Deployments"):
            cports = {p.get("name") for c in deploy[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                if p["name"] == "metrics":
                    check(p["targetPort"] in cports, f"Service {svc['metadata']['name']}: targetPort {p['targetPort']} not in {cports}")
    check(jobs == {f"{FULLNAME}-webhook", f"{FULLNAME}-operator"}, f"scrape jobs {jobs}")

    # PodMonitor: the label the webhook sets on jailed pods, the port name the webhook gives.
    contract = read("crds", "src", "contract.rs")
    jailed_label = re.search(r'JAILED = "([^"]+)"', contract).group(1)
    port_name = re.search(r'ports: Some\(vec!\[ContainerPort \{\s*name: Some\("([^"]+)"', read("webhook", "src", "inject.rs")).group(1)
    pms = of_kind(docs, "PodMonitor")
    if check(len(pms) == 1, f"{len(pms)} PodMonitors"):
        pm = pms[0]
        check(pm["metadata"]["labels"].get("release") == "kps", "PodMonitor: labels from values missing")
        check(pm["spec"]["namespaceSelector"] == {"any": True}, "PodMonitor: jailed pods are in every namespace")
        check(selected(pm["spec"]["selector"], {jailed_label: "userns"}), f"PodMonitor does not select pods labelled {jailed_label}")
        check(not selected(pm["spec"]["selector"], {"app": "agent"}), "PodMonitor selects pods that are not jailed")
        check([e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == [port_name],
              f"PodMonitor ports {pm['spec']['podMetricsEndpoints']}, the sidecar's is {port_name}")

    # PrometheusRule.
    rules = of_kind(docs, "PrometheusRule")
    runbook = anchors(read("charts", "README.md"))
    if check(len(rules) == 1, f"{len(rules)} PrometheusRules"):
        pr = rules[0]
        check(pr["metadata"]["labels"].get("release") == "kps", "PrometheusRule: labels from values missing")
        alerts = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        check(len(alerts) >= 12, f"only {len(alerts)} alerts")
        for r in alerts:
            name = r.get("alert", "?")
            check(r["labels"].get("severity") in ("critical", "warning", "info"), f"{name}: severity {r['labels']}")
            for key in ("summary", "description", "runbook_url"):
                check(r.get("annotations", {}).get(key), f"{name}: no {key}")
            url = r["annotations"].get("runbook_url", "")
            check(url.split("#")[-1] == name.lower() and name.lower() in runbook,
                  f"{name}: runbook_url {url} has no heading `{name}` in charts/README.md")
            for m in re.finditer(r'up\{job="([^"]+)"', r["expr"]):
                check(m.group(1) in jobs, f"{name}: up{{job={m.group(1)!r}}} is not a scraped job {jobs}")
        spike = [r for r in alerts if r["alert"] == "AgentBoundaryDenialSpike"]
        check(spike and spike[0]["expr"].rstrip().endswith("> 3"), "denialsPerSecond from values not in the rule")


    # For promtool: the groups as rendered with the default thresholds, and a copy without
    # annotations for `promtool test rules` (its tests then compare labels only; the annotations'
    # templates are parsed by `promtool check rules` on the full file).
    defaults, text = render(ALL_ON)
    if check(defaults is not None, f"helm template (monitoring on, defaults) failed: {text}"):
        groups = of_kind(defaults, "PrometheusRule")[0]["spec"]["groups"]
        with open(os.path.join(OUT, "rules.yaml"), "w") as f:
            yaml.safe_dump({"groups": groups}, f, sort_keys=False)
        for g in groups:
            for r in g["rules"]:
                r.pop("annotations", None)
        with open(os.path.join(OUT, "rules-without-annotations.yaml"), "w") as f:
            yaml.safe_dump({"groups": groups}, f, sort_keys=False)

    # Dashboards.
    cms = [d for d in of_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    files = sorted(f for f in os.listdir(os.path.join(CHART, "dashboards")) if f.endswith(".json"))
    check(len(cms) == len(files) >= 1, f"{len(cms)} dashboard ConfigMaps for {files}")
    queries = []
    for cm in cms:
        name = cm["metadata"]["name"]
        check(cm["metadata"]["namespace"] == "grafana", f"{name}: namespace from values not used")
        check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"{name}: no grafana_dashboard label")
        check(cm["metadata"].get("annotations", {}).get("grafana_folder") == "Agent Boundary", f"{name}: annotations")
        for key, body in cm["data"].items():
            try:
                dash = json.loads(body)
            except ValueError as e:
                check(False, f"{name}/{key} is not JSON: {e}")
                continue
            check(dash.get("uid") and dash.get("title"), f"{key}: no uid or title")
            ids = [p["id"] for p in dash["panels"]]
            check(len(ids) == len(set(ids)), f"{key}: panel ids repeat")
            for p in dash["panels"]:
                if p["type"] == "row":
                    continue
                exprs = [t.get("expr", "") for t in p.get("targets", [])]
                check(exprs and all(exprs), f"{key}: panel {p['title']!r} has a target without an expression")
                for i, e in enumerate(exprs):
                    queries.append({"record": f"dashboard:panel_{p['id']}_{i}", "expr": grafana_to_promql(e)})
    with open(os.path.join(OUT, "dashboard-queries.yaml"), "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}, f, sort_keys=False)

    # Values that must be refused.
    for sets, word in ((["monitoring.serviceMonitor.interval=30"], "interval"),
                       (["monitoring.prometheusRule.thresholds.webhookErrorRatio=2"], "webhookErrorRatio"),
                       (["monitoring.prometheusRule.thresholds.notEnforcingFor=soon"], "notEnforcingFor"),
                       (["monitoring.podMonitor.enable=true"], "enable"),
                       (["monitoring.dashboards.namespace=Not_A_Namespace"], "namespace")):
        docs, err = render(sets)
        check(docs is None and word in err, f"{sets} not refused naming {word}: {err[:300] if docs is None else 'rendered'}")

    if FAILURES:
        for f in FAILURES:
            print(f"monitoring: {f}", file=sys.stderr)
        sys.exit(1)
    print(f"monitoring: rendered objects checked; {len(queries)} dashboard queries", file=sys.stderr)


main()
