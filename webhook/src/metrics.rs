//! Prometheus metrics of the webhook server, exposed as text on the plain listener's `/metrics`.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The label value of each variant, in exposition order.
macro_rules! label_values {
    ($type:ty, $table:ident) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                let name = $table
                    .iter()
                    .find(|(value, _)| value == self)
                    .map_or("unknown", |(_, name)| name);
                encoder.write_str(name)
            }
        }
    };
}

label_values!(ReviewResult, RESULTS);
label_values!(BodyRejection, REJECTIONS);
label_values!(ConnectionFailure, CONNECTION_FAILURES);

/// Result of a certificate reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReloadResult {
    Ok,
    Error,
}

const RELOAD_RESULTS: [(ReloadResult, &str); 2] =
    [(ReloadResult::Ok, "ok"), (ReloadResult::Error, "error")];

label_values!(ReloadResult, RELOAD_RESULTS);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReviewLabels {
    result: ReviewResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// The planner row (tier) a pod was jailed with: a name from the static tables
/// (`crate::tables`), so the series stay few.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TierLabels {
    tier: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    reason: BodyRejection,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    reason: ConnectionFailure,
}

/// Upper bounds of the review duration buckets, in seconds (0.5 ms to 10 s: the apiserver gives
/// a webhook at most 30 s, 10 s by default).
const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Prefix of every metric name.
pub const PREFIX: &str = "agent_boundary_webhook";

/// All counters of the webhook server, in their registry.
#[derive(Debug)]
pub struct Metrics {
    reviews: Family<ReviewLabels, Counter>,
    review_duration: Histogram,
    jailed: Family<TierLabels, Counter>,
    in_flight: Gauge,
    cert_expiry: Gauge,
    cert_reloads: Family<ReloadLabels, Counter>,
    bodies_rejected: Family<RejectionLabels, Counter>,
    connection_failures: Family<FailureLabels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reviews = Family::<ReviewLabels, Counter>::default();
        let review_duration = Histogram::new(BUCKETS_SECONDS);
        let jailed = Family::<TierLabels, Counter>::default();
        let in_flight = Gauge::default();
        let cert_expiry = Gauge::default();
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        let bodies_rejected = Family::<RejectionLabels, Counter>::default();
        let connection_failures = Family::<FailureLabels, Counter>::default();
        // Every label value is shown from the start, at 0, so a rate over it has a baseline.
        for (result, _) in RESULTS {
            let _ = reviews.get_or_create(&ReviewLabels { result });
        }
        for row in crate::tables::BUILTIN
            .iter()
            .chain(crate::tables::CODER_BOUNDARY)
        {
            let tier = row.name.to_owned();
            let _ = jailed.get_or_create(&TierLabels { tier });
        }
        for (result, _) in RELOAD_RESULTS {
            let _ = cert_reloads.get_or_create(&ReloadLabels { result });
        }
        for (reason, _) in REJECTIONS {
            let _ = bodies_rejected.get_or_create(&RejectionLabels { reason });
        }
        for (reason, _) in CONNECTION_FAILURES {
            let _ = connection_failures.get_or_create(&FailureLabels { reason });
        }
        // The registry appends the final full stop of each help text.
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "reviews",
            "Admission reviews answered, by result",
            reviews.clone(),
        );
        registry.register(
            "review_duration_seconds",
            "Time from the start of a review request to its response",
            review_duration.clone(),
        );
        registry.register(
            "jailed",
            "Pods admitted with a jail, by the planner row (tier) applied",
            jailed.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Review requests being handled now",
            in_flight.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads after the files changed, by result",
            cert_reloads.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Unix time the serving certificate in use expires (0: unreadable)",
            cert_expiry.clone(),
        );
        registry.register(
            "bodies_rejected",
            "Request bodies refused before review, by reason",
            bodies_rejected.clone(),
        );
        registry.register(
            "connection_failures",
            "Connections closed before they carried a request, by reason",
            connection_failures.clone(),
        );
        Metrics {
            reviews,
            review_duration,
            jailed,
            in_flight,
            cert_expiry,
            cert_reloads,
            bodies_rejected,
            connection_failures,
            registry,
        }
    }
}

impl Metrics {
    /// Counts a finished review and its duration.
    pub fn review(&self, result: ReviewResult, duration: Duration) {
        self.reviews.get_or_create(&ReviewLabels { result }).inc();
        self.review_duration.observe(duration.as_secs_f64());
    }

    /// Counts a pod admitted with a jail of the planner row `tier`.
    pub fn jailed(&self, tier: &str) {
        self.jailed
            .get_or_create(&TierLabels {
                tier: tier.to_owned(),
            })
            .inc();
    }

    /// A review request started (+1) or ended (-1).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// Counts a certificate reload attempt on a changed pair of files.
    pub fn cert_reload(&self, ok: bool) {
        let result = if ok {
            ReloadResult::Ok
        } else {
            ReloadResult::Error
        };
        self.cert_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The serving certificate in use expires at `unix_seconds`.
    pub fn certificate_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    /// Counts a body refused before it reached the decider.
    pub fn body_rejected(&self, reason: BodyRejection) {
        self.bodies_rejected
            .get_or_create(&RejectionLabels { reason })
            .inc();
    }

    /// Counts a connection closed before it carried a request.
    pub fn connection_failed(&self, failure: ConnectionFailure) {
        self.connection_failures
            .get_or_create(&FailureLabels { reason: failure })
            .inc();
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
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
        m.jailed("userns");
        m.jailed("userns");
        m.jailed("landlock");
        m.cert_reload(false);
        m.certificate_expiry(1_925_078_400);
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
            "agent_boundary_webhook_jailed_total{tier=\"userns\"} 2",
            "agent_boundary_webhook_jailed_total{tier=\"landlock\"} 1",
            "agent_boundary_webhook_jailed_total{tier=\"privileged-netns\"} 0",
            "agent_boundary_webhook_certificate_expiry_seconds 1925078400",
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
