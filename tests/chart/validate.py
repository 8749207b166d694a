"""Validates rendered manifests offline against Kubernetes' own OpenAPI schemas (PyPI
kubernetes-validate, strict: unknown fields are errors), run by tests/scripts/test-chart.sh.

    python validate.py KUBERNETES_VERSION FILE...

Every object must have a schema for that version (an API the version does not serve, such as
policy/v1 PodDisruptionBudget on 1.20, is an error), except the custom resources listed in
CUSTOM: kubernetes-validate knows only built-in kinds. The CustomResourceDefinition itself is
validated (as an apiextensions.k8s.io/v1 object); the BoundaryPolicy schema inside it is checked
by the apiserver in the cluster tests.
"""

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

version, files = sys.argv[1], sys.argv[2:]
ok = skipped = 0
errors = []
for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        what = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM:
            skipped += 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            ok += 1
        except ValidationError as e:
            errors.append(f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except SchemaNotFoundError as e:
            errors.append(f"{what}: {e.message}")
print(f"kubernetes-validate {kubernetes_validate.__version__} against {version}: {ok} objects valid, "
      f"{skipped} custom resources skipped ({', '.join(sorted({k for _, k in CUSTOM}))}), {len(errors)} invalid")
for e in errors:
    print("INVALID", e)
sys.exit(1 if errors or ok == 0 else 0)
