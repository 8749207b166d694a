"""Compares the chart's renderings by two Helm versions, run by tests/scripts/test-chart.sh.

    python3 compare_renders.py OLDEST_DIR CURRENT_DIR

Each directory holds the files tests/chart/check_chart.py wrote (one per scenario and
Kubernetes version) with one Helm: the oldest the chart supports (3.6.2) and the current one
(Helm 4). They must hold the same files, and each file the same documents, byte for byte, but
for two differences, which are the exact ones allowed:

- the `# Source:` comment of the CRDs: Helm 3.6.2 writes `crds/<file>`, Helm 4
  `<chart>/crds/<file>` (a comment: no object differs);
- the order of custom resources (cert-manager's Issuer and Certificate, the Prometheus
  Operator's monitors and rules): Helm 4 puts kinds it does not know after every built-in kind;
  Helm 3.6.2, whose install order does not list MutatingWebhookConfiguration, may put them
  before it (cert-manager's objects).
  Helm installs in this order; nothing in the chart depends on it (cert-manager fills the
  caBundle whenever the Certificate is issued).

Every built-in object keeps its place.
"""

import os
import re
import sys

import yaml

OLDEST, CURRENT = sys.argv[1:3]
CRD_SOURCE = re.compile(r"^# Source: (?:[\w.-]+/)?crds/", re.M)
FAILURES = []


def documents(path):
    """The documents of a `helm template` output: (text with the CRD source normalised, object)."""
    with open(path) as f:
        text = f.read()
    out = []
    for part in re.split(r"^---\n", text, flags=re.M):
        obj = yaml.safe_load(part)
        if obj:
            out.append((CRD_SOURCE.sub("# Source: crds/", part), obj))
    return out


def is_hook(obj):
    return "helm.sh/hook" in (obj.get("metadata", {}).get("annotations") or {})


def is_builtin(obj):
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "" or group.endswith(".k8s.io") or group in {"apps", "policy", "batch", "autoscaling"}


files = sorted(f for f in os.listdir(OLDEST) if f.endswith(".yaml"))
if files != sorted(f for f in os.listdir(CURRENT) if f.endswith(".yaml")) or not files:
    FAILURES.append(f"the two Helms rendered different files: {files} and {sorted(os.listdir(CURRENT))}")
moved = 0
for name in files:
    old, new = documents(os.path.join(OLDEST, name)), documents(os.path.join(CURRENT, name))
    if sorted(t for t, _ in old) != sorted(t for t, _ in new):
        only_old = [t.splitlines()[:4] for t, _ in old if t not in {t for t, _ in new}]
        only_new = [t.splitlines()[:4] for t, _ in new if t not in {t for t, _ in old}]
        FAILURES.append(f"{name}: the documents differ: only with the oldest Helm {only_old}; "
                        f"only with the current one {only_new}")
        continue
    # Both Helms print the hooks (the uninstall clean-up) after the manifests, in one order.
    if [t for t, o in old if is_hook(o)] != [t for t, o in new if is_hook(o)]:
        FAILURES.append(f"{name}: the hooks are in another order")
    old, new = [d for d in old if not is_hook(d[1])], [d for d in new if not is_hook(d[1])]
    if [t for t, o in old if is_builtin(o)] != [t for t, o in new if is_builtin(o)]:
        FAILURES.append(f"{name}: the built-in objects are in another order")
    custom = [t for t, o in new if not is_builtin(o)]
    if custom and [t for t, _ in new[-len(custom):]] != custom:
        FAILURES.append(f"{name}: Helm 4 did not put the custom resources last (before the hooks)")
    moved += [t for t, _ in old] != [t for t, _ in new]

print(f"compare_renders: {len(files)} renderings, the same documents with both Helms "
      f"({moved} with custom resources in another place), {len(FAILURES)} failed")
for f in FAILURES:
    print("FAIL", f)
sys.exit(1 if FAILURES else 0)
