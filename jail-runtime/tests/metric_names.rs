//! Every sidecar metric the chart's alerts and Grafana dashboard use
//! (`charts/agent-boundary/templates/monitoring-prometheusrule.yaml`, `dashboards/*.json`) is on
//! the real `boundary sidecar`'s `/metrics`.

mod common;

use std::path::Path;

use boundary_test_kit::metric_names::{Exporter, unexported, used_by_chart};
use common::{Sidecar, compiled, http_get};

#[tokio::test]
async fn the_sidecar_exports_every_metric_the_chart_uses() {
    let sidecar = Sidecar::start(&compiled(&["domain=allowed.test"]), &[]).await;
    let (status, exposition) = http_get(sidecar.metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{exposition}");
    let used = used_by_chart(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let missing = unexported(&used, Exporter::Sidecar, &exposition);
    assert!(
        missing.is_empty(),
        "the chart uses sidecar metrics the sidecar does not export: {missing:?}\n{exposition}"
    );
}
