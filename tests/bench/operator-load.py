#!/usr/bin/env python3
"""Load and clock of tests/bench/operator.sh (a benchmark, not a test).

Scale-up (the default): creates NODES Node objects (a mix of OS families) and POLICIES
BoundaryPolicy objects (spread over NAMESPACES namespaces, created first and not timed) through
the apiserver, from WORKERS threads with a keep-alive HTTPS connection each, so that the creation
runs as fast as the apiserver allows and the figure measures the operator rather than the client.
Before the first create it opens two watches, on Nodes and on BoundaryPolicies, and stops the
clock when every node carries the operator's OS label and every policy has Ready=True: watches
instead of repeated lists, which at 10,000 nodes would load the apiserver the operator is
measured on.

Install (`--preload`, then `--converge`): the operator installed on a cluster that already has
its nodes, a node agent Pod on each (with its probe report, as the DaemonSet's would have) and
the policies. `--preload` creates them all while no operator runs; `--converge`, started with the
operator, clocks until every node carries `probed=true` and every policy is Ready.

Prints one JSON object: seconds from the first create to the last one, to convergence, and the
labelled nodes and ready policies at the end.

Usage: operator-load.py [--preload | --converge] NODES POLICIES NAMESPACES
       (env: API_SERVER, API_TOKEN, API_CA, WORKERS, TIMEOUT_SECONDS, AGENT_NAMESPACE)
"""

import http.client
import json
import os
import queue
import ssl
import sys
import threading
import time
import urllib.parse

OS_LABEL = "agentboundary.dev/os"
PROBED_LABEL = "agentboundary.dev/probed"
PROBE_REPORT = "agentboundary.dev/probe-report"
AGENT_SELECTOR = ("app.kubernetes.io/component", "node-agent")
IMAGES = ["Amazon Linux 2", "Amazon Linux 2023.6.20250203", "Bottlerocket OS 1.19.2 (aws-k8s-1.29)",
          "Ubuntu 22.04.4 LTS"]


class Api:
    """The apiserver of API_SERVER with the bearer token API_TOKEN, trusting API_CA."""

    def __init__(self):
        url = urllib.parse.urlsplit(os.environ["API_SERVER"])
        self.host, self.port = url.hostname, url.port or 443
        self.headers = {"Authorization": f"Bearer {os.environ['API_TOKEN']}",
                        "Content-Type": "application/json", "Accept": "application/json"}
        self.tls = ssl.create_default_context(cafile=os.environ["API_CA"])

    def connect(self, timeout=60):
        return http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=timeout)

    def request(self, conn, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=self.headers)
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, text


def node(i):
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"bench-{i:05d}", "labels": {"kubernetes.io/os": "linux"}},
            "status": {"nodeInfo": {"osImage": IMAGES[i % len(IMAGES)], "kernelVersion": "6.1.141",
                                    "operatingSystem": "linux", "architecture": "amd64", "bootID": "",
                                    "containerRuntimeVersion": "containerd://1.7.0", "kubeProxyVersion": "",
                                    "kubeletVersion": "v1.20.2", "machineID": "", "systemUUID": ""}}}


def agent(i, namespace):
    """The node agent Pod of node `i` as the DaemonSet makes it, its probe reported (it never runs:
    this cluster has no kubelet)."""
    report = {"tiers": {"landlock": {"works": True}, "userns": {"works": True}},
              "facts": {"landlockAbi": 4, "maxUserNamespaces": 63000}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"node-agent-{i:05d}", "namespace": namespace,
                         "labels": {AGENT_SELECTOR[0]: AGENT_SELECTOR[1]},
                         "annotations": {PROBE_REPORT: json.dumps(report)}},
            "spec": {"nodeName": f"bench-{i:05d}", "automountServiceAccountToken": False,
                     "containers": [{"name": "agent", "image": "boundary:bench"}]}}


def policy(p, namespaces):
    ns = f"bench-{p % namespaces:03d}"
    return ns, {"apiVersion": "agentboundary.dev/v1alpha1", "kind": "BoundaryPolicy",
                "metadata": {"name": f"policy-{p:04d}", "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"team": f"t{p}"}},
                         "allow": [f"domain=api{p}.example.com",
                                   f"method=GET domain=*.svc{p}.example.com path=/v1/*"]}}


def create_all(api, items, workers):
    """POSTs every (path, body) of `items` from `workers` threads; fails on any refusal."""
    work = queue.Queue()
    for item in items:
        work.put(item)
    errors = []

    def worker():
        conn = api.connect()
        while not errors:
            try:
                path, body = work.get_nowait()
            except queue.Empty:
                break
            for attempt in range(5):
                try:
                    status, text = api.request(conn, "POST", path, body)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = api.connect()
                    continue
                if status == 429 or status >= 500:  # the apiserver's in-flight limit: retry
                    time.sleep(0.05 * (attempt + 1))
                    continue
                break
            else:
                status, text = 0, b"no answer after 5 attempts"
            if status not in (200, 201):
                errors.append(f"POST {path}: {status} {text[:300]!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"creating objects failed: {errors[0]}")


class Watch(threading.Thread):
    """Counts the objects of a collection for which `done(object)` holds, from a watch opened at
    the resourceVersion of an initial list; records when the count first reaches `want`."""

    def __init__(self, api, path, done, want, reached):
        super().__init__(daemon=True)
        self.api, self.path, self.done, self.want, self.reached = api, path, done, want, reached
        self.state = {}
        self.count = 0
        self.at = None
        conn = api.connect()
        status, text = api.request(conn, "GET", path)
        if status != 200:
            sys.exit(f"GET {path}: {status} {text[:300]!r}")
        listed = json.loads(text)
        conn.close()
        for obj in listed.get("items") or []:
            self.apply(obj)
        self.version = listed["metadata"]["resourceVersion"]

    def apply(self, obj, deleted=False):
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        now = not deleted and self.done(obj)
        self.count += int(now) - int(self.state.get(key, False))
        self.state[key] = now
        if self.at is None and self.count >= self.want:
            self.at = time.monotonic()
            self.reached.release()

    def run(self):
        while True:
            conn = self.api.connect(timeout=None)
            query = urllib.parse.urlencode({"watch": "1", "resourceVersion": self.version,
                                            "allowWatchBookmarks": "true", "timeoutSeconds": "900"})
            conn.request("GET", f"{self.path}?{query}", headers=self.api.headers)
            resp = conn.getresponse()
            if resp.status != 200:
                sys.exit(f"watch {self.path}: {resp.status} {resp.read()[:300]!r}")
            for line in resp:
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    sys.exit(f"watch {self.path}: {obj}")
                self.version = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self.apply(obj, deleted=event["type"] == "DELETED")
            conn.close()


def labelled(obj):
    return OS_LABEL in (obj["metadata"].get("labels") or {})


def ready(obj):
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def interleaved(first, second):
    """`first` and `second` mixed evenly, so both kinds are done about together."""
    out, a, b = [], 0, 0
    while a < len(first) or b < len(second):
        if b < len(second) and (a >= len(first) or b * len(first) <= a * len(second)):
            out.append(second[b])
            b += 1
        else:
            out.append(first[a])
            a += 1
    return out


def policy_items(policies, namespaces):
    items = []
    for p in range(policies):
        ns, body = policy(p, namespaces)
        items.append((f"/apis/agentboundary.dev/v1alpha1/namespaces/{ns}/boundarypolicies", body))
    return items


def create_namespaces(api, names, workers):
    create_all(api, [("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": n}}) for n in names], workers)


def wait_for(watches, start, timeout, nodes, policies, created=None):
    """Prints the result once every watch reached its count (or at the timeout)."""
    deadline = start + timeout
    for _ in watches:
        if not reached.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    converged = all(w.at is not None for w in watches)
    result = {"create_seconds": (created or start) - start,
              "converged_seconds": max(w.at for w in watches) - start if converged else None,
              "labelled_nodes": watches[0].count, "ready_policies": watches[1].count}
    print(json.dumps(result))
    if not converged:
        sys.exit(f"not converged after {timeout:.0f} s (labelled nodes {watches[0].count}/{nodes}, "
                 f"ready policies {watches[1].count}/{policies})")


reached = threading.Semaphore(0)


def main():
    mode = sys.argv[1] if sys.argv[1].startswith("--") else "--scale-up"
    nodes, policies, namespaces = (int(a) for a in sys.argv[-3:])
    workers = int(os.environ.get("WORKERS", "16"))
    timeout = float(os.environ.get("TIMEOUT_SECONDS", "600"))
    agent_ns = os.environ.get("AGENT_NAMESPACE", "agent-boundary")
    api = Api()
    if mode == "--preload":
        create_namespaces(api, [f"bench-{n:03d}" for n in range(namespaces)], workers)
        # Pods need their ServiceAccount (admission); the agents mount no token.
        create_all(api, [(f"/api/v1/namespaces/{agent_ns}/serviceaccounts",
                          {"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": "default"}})], 1)
        start = time.monotonic()
        create_all(api, [("/api/v1/nodes", node(i)) for i in range(nodes)], workers)
        create_all(api, interleaved([(f"/api/v1/namespaces/{agent_ns}/pods", agent(i, agent_ns))
                                     for i in range(nodes)], policy_items(policies, namespaces)),
                   workers)
        print(json.dumps({"create_seconds": time.monotonic() - start}))
        return
    if mode == "--converge":
        start = time.monotonic()
        probed = lambda obj: (obj["metadata"].get("labels") or {}).get(PROBED_LABEL) == "true"
        watches = [Watch(api, "/api/v1/nodes", probed, nodes, reached),
                   Watch(api, "/apis/agentboundary.dev/v1alpha1/boundarypolicies", ready, policies,
                         reached)]
        for w in watches:
            w.start()
        wait_for(watches, start, timeout, nodes, policies)
        return
    create_namespaces(api, [f"bench-{n:03d}" for n in range(namespaces)], workers)
    watches = [Watch(api, "/api/v1/nodes", labelled, nodes, reached),
               Watch(api, "/apis/agentboundary.dev/v1alpha1/boundarypolicies", ready, policies, reached)]
    for w in watches:
        w.start()
    # Nodes and policies at once, as a cluster scaling up while policies are applied.
    items = interleaved([("/api/v1/nodes", node(i)) for i in range(nodes)],
                        policy_items(policies, namespaces))
    start = time.monotonic()
    create_all(api, items, workers)
    wait_for(watches, start, timeout, nodes, policies, created=time.monotonic())


if __name__ == "__main__":
    main()
