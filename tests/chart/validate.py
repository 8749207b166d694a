"""Validates rendered manifests offline against Kubernetes' own OpenAPI schemas (PyPI
kubernetes-validate, strict: unknown fields are errors), run by tests/scripts/test-chart.sh.

    python validate.py KUBERNETES_VERSION[,KUBERNETES_VERSION...] FILE...

Objects rendered the same in several files (the CRDs in every scenario, ...) are validated once
per version.

Every object must have a schema for that version (an API the version does not serve, such as
policy/v1 PodDisruptionBudget on 1.20, is an error), except the custom resources listed in
CUSTOM: kubernetes-validate knows only built-in kinds. The CustomResourceDefinition itself is
validated (as an apiextensions.k8s.io/v1 object); the BoundaryPolicy schema inside it is checked
by the apiserver in the cluster tests.
"""

import json
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# Custom resources the chart may render, and why they are not validated here.
CUSTOM = {
    ("cert-manager.io/v1", "Issuer"): "cert-manager CRD (not built in)",
    ("cert-manager.io/v1", "Certificate"): "cert-manager CRD (not built in)",
    ("agentboundary.dev/v1alpha1", "BoundaryPolicy"): "this project's CRD",
    # Checked as rendered by tests/chart/monitoring.py, the rules by promtool.
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD (not built in)",
    ("monitoring.coreos.com/v1", "PodMonitor"): "Prometheus Operator CRD (not built in)",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator CRD (not built in)",
}

versions, files = sys.argv[1].split(","), sys.argv[2:]
objects = {}  # canonical JSON -> (where it was first seen, object)
skipped = 0
for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM:
            skipped += 1
            continue
        what = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        objects.setdefault(json.dumps(doc, sort_keys=True), (what, doc))
failed = False
for version in versions:
    errors = []
    for what, doc in objects.values():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except ValidationError as e:
            errors.append(f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except SchemaNotFoundError as e:
            errors.append(f"{what}: {e.message}")
    print(f"kubernetes-validate {kubernetes_validate.__version__} against {version}: "
          f"{len(objects) - len(errors)} distinct objects valid, {skipped} custom resources skipped "
          f"({', '.join(sorted({k for _, k in CUSTOM}))}), {len(errors)} invalid")
    for e in errors:
        print("INVALID", e)
    failed |= bool(errors)
sys.exit(1 if failed or not objects else 0)
