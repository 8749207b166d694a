//! Diagnostics (not the audit trail) go to standard error: plain text for people, JSON in
//! clusters (`--log-format json` or `BOUNDARY_LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

/// Sets up the global subscriber once; `json` forces JSON output.
pub fn init(level: &str, json: bool) {
    let level = match level.to_ascii_lowercase().as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => level.to_ascii_lowercase(),
        _ => "warn".to_owned(),
    };
    let filter = EnvFilter::try_from_env("BOUNDARY_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("boundary={level},warn")));
    let json = json || std::env::var("BOUNDARY_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.without_time().try_init()
    };
}
