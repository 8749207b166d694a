//! Diagnostics (not the audit trail) go to standard error: plain text for people, JSON in
//! clusters (`--log-format json` or `BOUNDARY_LOG_FORMAT=json`). Colours only on a terminal:
//! `kubectl logs` shows escape codes as they are.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Sets up the global subscriber once; `json` forces JSON output.
pub fn init(level: &str, json: bool) {
    let level = match level.to_ascii_lowercase().as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => level.to_ascii_lowercase(),
        _ => "warn".to_owned(),
    };
    // EnvFilter parses directives with regular expressions: only when someone asks for them.
    let filter = match std::env::var("BOUNDARY_LOG") {
        Ok(directives) => EnvFilter::new(directives),
        Err(_) => EnvFilter::default().add_directive(
            match level.as_str() {
                "error" => LevelFilter::ERROR,
                "info" => LevelFilter::INFO,
                "debug" => LevelFilter::DEBUG,
                "trace" => LevelFilter::TRACE,
                _ => LevelFilter::WARN,
            }
            .into(),
        ),
    };
    let json = json || std::env::var("BOUNDARY_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.without_time().try_init()
    };
}
