//! Every operator metric the chart's alerts and Grafana dashboard use
//! (`charts/agent-boundary/templates/monitoring-prometheusrule.yaml`, `dashboards/*.json`) is
//! served on the operator's real `/metrics` endpoint. Without an apiserver no controller runs, so
//! the test records what each controller records once (the per-namespace policy gauges exist
//! only for namespaces with policies); the endpoint and the registry are the operator's own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use boundary_operator::metrics::{Certificate, Controller, Metrics, PolicyCounts, serve};
use boundary_operator::shutdown::Shutdown;
use boundary_test_kit::metric_names::{Exporter, unexported, used_by_chart};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn get_metrics(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test]
async fn the_operator_serves_every_metric_the_chart_uses() {
    let metrics = Metrics::default();
    let (stop, shutdown) = Shutdown::new();
    let addr = serve(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        Arc::new(AtomicBool::new(true)),
        shutdown,
    )
    .await
    .unwrap();
    // What the controllers record in a cluster with one policy namespace.
    metrics.set_leader(true);
    drop(metrics.measure(Controller::Policy));
    metrics.certificate_issued(Certificate::Serving);
    metrics.set_certificate_expiry(2_000_000_000, 2_100_000_000);
    metrics.sidecars_checked(1, 0);
    metrics.set_enforcement("agents", 1, 0);
    metrics.set_policies(
        "agents",
        PolicyCounts {
            total: 1,
            ..PolicyCounts::default()
        },
    );
    let exposition = get_metrics(addr).await;
    let used = used_by_chart(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let missing = unexported(&used, Exporter::Operator, &exposition);
    assert!(
        missing.is_empty(),
        "the chart uses operator metrics the operator does not export: {missing:?}\n{exposition}"
    );
    drop(stop);
}
