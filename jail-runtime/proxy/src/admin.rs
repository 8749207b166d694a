//! The sidecar's admin port (`BOUNDARY_METRICS_ADDR`): `/metrics` (Prometheus text
//! format 0.0.4), `/healthz` and `/readyz`, and `/status` (the policy hash and the
//! jails, read by the operator).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::jails::Jails;
use crate::{Proxy, metrics};

const TEXT: &str = "text/plain; version=0.0.4";

impl Proxy {
    /// Serves `/metrics`, `/healthz`, `/readyz` and `/status` forever.
    pub async fn run_metrics(self, listener: TcpListener, jails: Option<Arc<Jails>>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let proxy = self.clone();
            let jails = jails.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = answer(&proxy, jails.as_deref(), req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

fn answer(proxy: &Proxy, jails: Option<&Jails>, path: &str) -> Response<Full<Bytes>> {
    let (status, body, kind) = match path {
        "/metrics" => (
            200,
            proxy.metrics().render(proxy.audit_dropped()),
            metrics::CONTENT_TYPE,
        ),
        "/healthz" | "/readyz" => (200, "ok\n".to_owned(), TEXT),
        "/status" => (
            200,
            crate::jails::status_json(proxy, jails),
            "application/json",
        ),
        _ => (404, "not found\n".to_owned(), TEXT),
    };
    Response::builder()
        .status(status)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
