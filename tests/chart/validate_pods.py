"""Validates the pods the webhook's planner makes against Kubernetes' own OpenAPI schemas (PyPI
kubernetes-validate, strict: unknown fields are errors), run by
tests/scripts/test-webhook-pod-schemas.sh.

    python validate_pods.py native  VERSION[,VERSION...] DIR
    python validate_pods.py legacy  VERSION DIR

DIR holds the `<group>--<case>.json` records webhook/tests/golden.rs writes with GOLDEN_PODS_DIR
(`{clusterMinor, verdict, pod}`: the case's pod after the webhook's patch). The planner gives
clusters from 1.29 (plan.rs NATIVE_SIDECAR_MINOR) a native sidecar (an init container with
restartPolicy Always) and older ones a regular sidecar container.

- native: every pod planned for 1.29+ is valid for each VERSION (1.29 through 1.35); at least one
  of them has a native sidecar, so the check is about it.
- legacy: every pod planned for an older cluster is valid for VERSION (1.20), and has no native
  sidecar; every native sidecar pod is refused by VERSION's schema, on the init container's
  restartPolicy and on nothing else (the field did not exist: the planner must not send it there).
"""

import json
import os
import sys

import kubernetes_validate
from kubernetes_validate.utils import ValidationError

NATIVE_SIDECAR_MINOR = 29
mode, versions, folder = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
records = []
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name)) as f:
        records.append((name, json.load(f)))
FAILURES = []


def check(cond, message):
    if not cond:
        FAILURES.append(message)


def native_sidecars(pod):
    return [c["name"] for c in pod.get("spec", {}).get("initContainers", []) if c.get("restartPolicy") == "Always"]


def errors(pod, version):
    """Every schema error of the pod for that version (kubernetes-validate stops at the first, so
    each one found is removed from a copy and the copy validated again)."""
    found = []
    pod = json.loads(json.dumps(pod))
    for _ in range(20):
        try:
            kubernetes_validate.validate(pod, version, strict=True)
            return found
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            found.append(f"{path}: {e.message}")
            # Unknown fields are reported on their parent object: drop the named ones and go on.
            parent = pod
            for p in e.path:
                parent = parent[p]
            unexpected = [k for k in list(parent) if isinstance(parent, dict) and f"'{k}'" in e.message]
            if not unexpected:
                return found
            for k in unexpected:
                del parent[k]
    return found


check(len(records) >= 30, f"expected the golden suite's pods in {folder}, found {len(records)}")
native = [(n, r) for n, r in records if r["clusterMinor"] >= NATIVE_SIDECAR_MINOR]
legacy = [(n, r) for n, r in records if r["clusterMinor"] < NATIVE_SIDECAR_MINOR]
with_native = [(n, r) for n, r in native if native_sidecars(r["pod"])]
if mode == "native":
    check(with_native, "no pod planned for 1.29+ has a native sidecar")
    for version in versions:
        for name, r in native:
            for e in errors(r["pod"], version):
                FAILURES.append(f"{name} (planned for 1.{r['clusterMinor']}) against {version}: {e}")
    summary = (f"{len(native)} pods planned for 1.29+ ({len(with_native)} with a native sidecar) valid "
               f"against {', '.join(versions)}")
elif mode == "legacy":
    (version,) = versions
    check(legacy, "no golden case is planned for a cluster before 1.29")
    for name, r in legacy:
        check(not native_sidecars(r["pod"]), f"{name}: a native sidecar planned for 1.{r['clusterMinor']}")
        for e in errors(r["pod"], version):
            FAILURES.append(f"{name} (planned for 1.{r['clusterMinor']}) against {version}: {e}")
    for name, r in with_native:
        found = errors(r["pod"], version)
        check(found and all("initContainers" in e and "'restartPolicy' was unexpected" in e for e in found),
              f"{name}: {version}'s schema must refuse the native sidecar's restartPolicy and nothing else: {found}")
    summary = (f"{len(legacy)} pods planned for older clusters valid against {version}; "
               f"{len(with_native)} native sidecar pods refused by it on restartPolicy only")
else:
    sys.exit(f"mode must be native or legacy, not {mode!r}")

print(f"validate_pods ({mode}, kubernetes-validate {kubernetes_validate.__version__}): {summary}; "
      f"{len(FAILURES)} failed")
for f in FAILURES:
    print("FAIL", f)
sys.exit(1 if FAILURES else 0)
