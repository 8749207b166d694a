//! Prometheus metrics of the webhook server, exposed as text on the plain listener's `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewResult {
    /// Admitted with a patch.
    Patched,
    /// Admitted unchanged.
    Allowed,
    /// Denied.
    Denied,
    /// The body was not an `AdmissionReview` (HTTP 400).
    BadRequest,
    /// The decider panicked (HTTP 500).
    Error,
}

const RESULTS: [(ReviewResult, &str); 5] = [
    (ReviewResult::Patched, "patched"),
    (ReviewResult::Allowed, "allowed"),
    (ReviewResult::Denied, "denied"),
    (ReviewResult::BadRequest, "bad_request"),
    (ReviewResult::Error, "error"),
];

/// Why a request body was refused before it reached the decider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRejection {
    /// Larger than the limit (HTTP 413).
    TooLarge,
    /// Not received within the body read timeout (HTTP 408).
    Timeout,
    /// The client broke the body off (HTTP 400).
    ReadError,
    /// Not `application/json` (HTTP 415).
    ContentType,
}

const REJECTIONS: [(BodyRejection, &str); 4] = [
    (BodyRejection::TooLarge, "too_large"),
    (BodyRejection::Timeout, "timeout"),
    (BodyRejection::ReadError, "read_error"),
    (BodyRejection::ContentType, "content_type"),
];

/// Why a connection was closed before it carried a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionFailure {
    /// The client took longer than the TLS handshake timeout.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (for example the client does not trust the certificate).
    TlsHandshake,
    /// The client took longer than the header read timeout to send a request head.
    HeaderTimeout,
}

const CONNECTION_FAILURES: [(ConnectionFailure, &str); 3] = [
    (
        ConnectionFailure::TlsHandshakeTimeout,
        "tls_handshake_timeout",
    ),
    (ConnectionFailure::TlsHandshake, "tls_handshake_error"),
    (ConnectionFailure::HeaderTimeout, "header_timeout"),
];

/// Upper bounds of the review duration buckets, in microseconds (0.5 ms to 10 s: the apiserver
/// gives a webhook at most 30 s, 10 s by default).
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A histogram of durations with fixed buckets.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match BUCKETS_US.get(i) {
                Some(bound) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"{}\"}} {cumulative}",
                        seconds(*bound)
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            seconds(self.sum_us.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Microseconds as decimal seconds, exactly (no float rounding in the exposition).
fn seconds(us: u64) -> String {
    let fraction = format!("{:06}", us % 1_000_000);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{}", us / 1_000_000)
    } else {
        format!("{}.{fraction}", us / 1_000_000)
    }
}

fn index<T: PartialEq + Copy, const N: usize>(table: &[(T, &str); N], value: T) -> usize {
    table.iter().position(|(v, _)| *v == value).unwrap_or(0)
}

/// All counters of the webhook server.
#[derive(Debug, Default)]
pub struct Metrics {
    reviews: [AtomicU64; RESULTS.len()],
    review_duration: Histogram,
    in_flight: AtomicI64,
    cert_reloads_ok: AtomicU64,
    cert_reloads_failed: AtomicU64,
    bodies_rejected: [AtomicU64; REJECTIONS.len()],
    connection_failures: [AtomicU64; CONNECTION_FAILURES.len()],
}

impl Metrics {
    /// Counts a finished review and its duration.
    pub fn review(&self, result: ReviewResult, duration: Duration) {
        self.reviews[index(&RESULTS, result)].fetch_add(1, Ordering::Relaxed);
        self.review_duration.observe(duration);
    }

    /// A review request started (+1) or ended (-1).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts a certificate reload attempt on a changed pair of files.
    pub fn cert_reload(&self, ok: bool) {
        if ok {
            &self.cert_reloads_ok
        } else {
            &self.cert_reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a body refused before it reached the decider.
    pub fn body_rejected(&self, reason: BodyRejection) {
        self.bodies_rejected[index(&REJECTIONS, reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed before it carried a request.
    pub fn connection_failed(&self, failure: ConnectionFailure) {
        self.connection_failures[index(&CONNECTION_FAILURES, failure)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP agent_boundary_webhook_reviews_total Admission reviews answered, by result.\n# TYPE agent_boundary_webhook_reviews_total counter\n");
        for (i, (_, result)) in RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "agent_boundary_webhook_reviews_total{{result=\"{result}\"}} {}",
                load(&self.reviews[i])
            );
        }
        out.push_str("# HELP agent_boundary_webhook_review_duration_seconds Time from the start of a review request to its response.\n# TYPE agent_boundary_webhook_review_duration_seconds histogram\n");
        self.review_duration
            .render(&mut out, "agent_boundary_webhook_review_duration_seconds");
        out.push_str("# HELP agent_boundary_webhook_in_flight_requests Review requests being handled now.\n# TYPE agent_boundary_webhook_in_flight_requests gauge\n");
        let _ = writeln!(
            out,
            "agent_boundary_webhook_in_flight_requests {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP agent_boundary_webhook_certificate_reloads_total Serving certificate reloads after the files changed, by result.\n# TYPE agent_boundary_webhook_certificate_reloads_total counter\n");
        let _ = writeln!(
            out,
            "agent_boundary_webhook_certificate_reloads_total{{result=\"ok\"}} {}",
            load(&self.cert_reloads_ok)
        );
        let _ = writeln!(
            out,
            "agent_boundary_webhook_certificate_reloads_total{{result=\"error\"}} {}",
            load(&self.cert_reloads_failed)
        );
        out.push_str("# HELP agent_boundary_webhook_bodies_rejected_total Request bodies refused before review, by reason.\n# TYPE agent_boundary_webhook_bodies_rejected_total counter\n");
        for (i, (_, reason)) in REJECTIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "agent_boundary_webhook_bodies_rejected_total{{reason=\"{reason}\"}} {}",
                load(&self.bodies_rejected[i])
            );
        }
        out.push_str("# HELP agent_boundary_webhook_connection_failures_total Connections closed before they carried a request, by reason.\n# TYPE agent_boundary_webhook_connection_failures_total counter\n");
        for (i, (_, reason)) in CONNECTION_FAILURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "agent_boundary_webhook_connection_failures_total{{reason=\"{reason}\"}} {}",
                load(&self.connection_failures[i])
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.review(ReviewResult::Patched, Duration::from_micros(700));
        m.review(ReviewResult::Patched, Duration::from_millis(3));
        m.review(ReviewResult::BadRequest, Duration::from_secs(20));
        m.in_flight(2);
        m.in_flight(-1);
        m.cert_reload(false);
        m.body_rejected(BodyRejection::TooLarge);
        m.connection_failed(ConnectionFailure::TlsHandshakeTimeout);
        let text = m.render();
        for line in [
            "agent_boundary_webhook_reviews_total{result=\"patched\"} 2",
            "agent_boundary_webhook_reviews_total{result=\"bad_request\"} 1",
            "agent_boundary_webhook_reviews_total{result=\"denied\"} 0",
            "agent_boundary_webhook_review_duration_seconds_bucket{le=\"0.0005\"} 0",
            "agent_boundary_webhook_review_duration_seconds_bucket{le=\"0.001\"} 1",
            "agent_boundary_webhook_review_duration_seconds_bucket{le=\"0.005\"} 2",
            "agent_boundary_webhook_review_duration_seconds_bucket{le=\"10\"} 2",
            "agent_boundary_webhook_review_duration_seconds_bucket{le=\"+Inf\"} 3",
            "agent_boundary_webhook_review_duration_seconds_sum 20.0037",
            "agent_boundary_webhook_review_duration_seconds_count 3",
            "agent_boundary_webhook_in_flight_requests 1",
            "agent_boundary_webhook_certificate_reloads_total{result=\"error\"} 1",
            "agent_boundary_webhook_certificate_reloads_total{result=\"ok\"} 0",
            "agent_boundary_webhook_bodies_rejected_total{reason=\"too_large\"} 1",
            "agent_boundary_webhook_connection_failures_total{reason=\"tls_handshake_timeout\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
