//! The metric names the chart's alerts and dashboard use, checked against what the components
//! export: each component's tests scrape its real `/metrics` and call [`unexported`].
//!
//! Names are found by their prefixes (`agent_boundary_…`, `boundary_operator_…`) in the chart's
//! rules template and dashboards; a histogram is used through its `_bucket`/`_sum`/`_count`
//! series, which the exposition lists as samples. `up{job=…}` is Prometheus's own series: its jobs
//! are checked by the chart test against the Services the `ServiceMonitor`s scrape.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The component that exports a metric, told by the name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// `agent_boundary_webhook_…`: the admission webhook.
    Webhook,
    /// `boundary_operator_…`: the operator.
    Operator,
    /// Any other `agent_boundary_…`: the `boundary` sidecar (the policy proxy).
    Sidecar,
}

impl Exporter {
    /// Who exports `name`, or `None` for a name of no component (e.g. `up`).
    pub fn of(name: &str) -> Option<Exporter> {
        if name.starts_with("agent_boundary_webhook_") {
            Some(Exporter::Webhook)
        } else if name.starts_with("boundary_operator_") {
            Some(Exporter::Operator)
        } else if name.starts_with("agent_boundary_") {
            Some(Exporter::Sidecar)
        } else {
            None
        }
    }
}

/// Every component metric name in `text` (a query, or YAML or JSON holding queries): identifiers
/// with a component prefix. A prefix inside a longer identifier (`xagent_boundary_a`) is not one.
pub fn referenced(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_name_char(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_name_char(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        if Exporter::of(word).is_some() {
            names.insert(word.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The names a Prometheus text exposition offers: every sample's name, and for each declared
/// histogram its `_bucket`, `_sum` and `_count` (also when no series exists yet).
pub fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                names.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The names of `exporter` in `referenced` that `exposition` lacks (empty: all there).
pub fn unexported(
    referenced: &BTreeSet<String>,
    exporter: Exporter,
    exposition: &str,
) -> Vec<String> {
    let offered = exported(exposition);
    referenced
        .iter()
        .filter(|name| Exporter::of(name) == Some(exporter) && !offered.contains(*name))
        .cloned()
        .collect()
}

/// The chart's files that name metrics: the rules template and every dashboard.
pub fn chart_files(repo: &Path) -> Vec<PathBuf> {
    let chart = repo.join("charts/agent-boundary");
    let mut files = vec![chart.join("templates/monitoring-prometheusrule.yaml")];
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(chart.join("dashboards"))
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    dashboards.sort();
    files.extend(dashboards);
    files
}

/// Every component metric name the chart's rules and dashboards use (`repo`: the workspace
/// root). Panics when a file cannot be read: the check would otherwise pass on nothing.
pub fn used_by_chart(repo: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in chart_files(repo) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        names.extend(referenced(&text));
    }
    assert!(
        names.len() > 10,
        "the chart names only {names:?}: are the rules and dashboards where chart_files looks?"
    );
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# HELP agent_boundary_webhook_reviews Admission reviews answered, by result.
# TYPE agent_boundary_webhook_reviews_total counter
agent_boundary_webhook_reviews_total{result=\"patched\"} 2
# HELP agent_boundary_webhook_review_duration_seconds Time.
# TYPE agent_boundary_webhook_review_duration_seconds histogram
# HELP agent_boundary_webhook_in_flight_requests Now.
# TYPE agent_boundary_webhook_in_flight_requests gauge
agent_boundary_webhook_in_flight_requests 1
# EOF
";

    #[test]
    fn names_are_found_in_promql_with_their_prefixes_only() {
        let text = r#"expr: >-
            sum(rate(agent_boundary_webhook_reviews_total{result=~"error"}[5m]))
            / histogram_quantile(0.99, sum by (le) (rate(agent_boundary_webhook_review_duration_seconds_bucket[5m])))
            and absent(up{job="x-webhook"} == 1) and boundary_operator_leader
            "expr": "sum(rate(agent_boundary_decisions_total{namespace=~\"$namespace\"}[$__rate_interval]))"
            xagent_boundary_not_a_name notboundary_operator_either"#;
        assert_eq!(
            referenced(text).into_iter().collect::<Vec<_>>(),
            [
                "agent_boundary_decisions_total",
                "agent_boundary_webhook_review_duration_seconds_bucket",
                "agent_boundary_webhook_reviews_total",
                "boundary_operator_leader",
            ]
        );
    }

    #[test]
    fn histograms_offer_their_series_and_samples_their_names() {
        let offered = exported(EXPOSITION);
        for name in [
            "agent_boundary_webhook_reviews_total",
            "agent_boundary_webhook_review_duration_seconds_bucket",
            "agent_boundary_webhook_review_duration_seconds_count",
            "agent_boundary_webhook_in_flight_requests",
        ] {
            assert!(offered.contains(name), "{name} not in {offered:?}");
        }
        assert!(!offered.contains("EOF"), "{offered:?}");
    }

    #[test]
    fn a_name_nobody_exports_is_reported_for_its_component_only() {
        let used = referenced(
            "agent_boundary_webhook_reviews_total agent_boundary_webhook_reviews_totl \
             agent_boundary_webhook_review_duration_seconds_bucket \
             agent_boundary_webhook_review_duration_seconds_p99 \
             agent_boundary_decisions_total boundary_operator_leader",
        );
        assert_eq!(
            unexported(&used, Exporter::Webhook, EXPOSITION),
            [
                "agent_boundary_webhook_review_duration_seconds_p99",
                "agent_boundary_webhook_reviews_totl",
            ]
        );
        // The sidecar's and the operator's names are checked against their own expositions.
        assert_eq!(
            unexported(&used, Exporter::Sidecar, EXPOSITION),
            ["agent_boundary_decisions_total"]
        );
        assert_eq!(
            unexported(&used, Exporter::Operator, ""),
            ["boundary_operator_leader"]
        );
    }

    #[test]
    fn the_chart_names_metrics_of_every_component() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let used = used_by_chart(&repo);
        for exporter in [Exporter::Webhook, Exporter::Operator, Exporter::Sidecar] {
            assert!(
                used.iter().any(|n| Exporter::of(n) == Some(exporter)),
                "no {exporter:?} metric in {used:?}"
            );
        }
    }
}
