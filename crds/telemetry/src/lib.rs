//! Diagnostics (not audit trails) of the three binaries: one pair of flags, `--log-level` and
//! `--log-format`, and one set-up writing to standard error. Kube-free, so the static `boundary`
//! binary links it too.
#![forbid(unsafe_code)]

mod json;

use std::io::IsTerminal as _;

use boundary_api::contract::log_env;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How diagnostics are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line (clusters).
    Json,
}

/// The diagnostics flags, flattened into every binary's command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Diagnostics filter: error, warn, info, debug, trace, off, or tracing directives such as
    /// `info,boundary_webhook=debug`. Default: info (`boundary run`: warn).
    #[arg(long = "log-level", alias = "log", value_name = "FILTER", env = log_env::LEVEL)]
    pub level: Option<String>,
    /// Diagnostics format on standard error: text or json. Default: text (`boundary-webhook`,
    /// `boundary sidecar` and `boundary node-agent`: json).
    #[arg(long = "log-format", value_name = "FORMAT", env = log_env::FORMAT, value_enum)]
    pub format: Option<LogFormat>,
}

impl LogArgs {
    /// These settings, with `level` and `format` where none was given.
    #[must_use]
    pub fn or_defaults(&self, level: &str, format: LogFormat) -> LogArgs {
        LogArgs {
            level: Some(self.level.clone().unwrap_or_else(|| level.to_owned())),
            format: Some(self.format.unwrap_or(format)),
        }
    }
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter does not parse.
    #[error(
        "--log-level ({env}) {filter:?}: {message}; expected a level (error, warn, info, debug, \
         trace, off) or tracing directives such as info,boundary=debug",
        env = log_env::LEVEL
    )]
    Filter {
        /// The filter as given.
        filter: String,
        /// What the parser said.
        message: String,
    },
}

/// The filter of `level`. A bare level word is built without the directive parser, whose
/// regular expressions cost start-up time that short `boundary run` commands notice.
pub fn filter(level: &str) -> Result<EnvFilter, LogError> {
    let word = match level.trim().to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        "off" => Some(LevelFilter::OFF),
        _ => None,
    };
    if let Some(word) = word {
        return Ok(EnvFilter::default().add_directive(word.into()));
    }
    if level.trim().is_empty() {
        return Err(LogError::Filter {
            filter: level.to_owned(),
            message: "empty".to_owned(),
        });
    }
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| LogError::Filter {
            filter: level.to_owned(),
            message: e.to_string(),
        })
}

/// The subscriber `args` describe, writing to `writer`; `terminal`: a person reads it live
/// (colours, and no timestamps, which the terminal's context makes noise).
pub fn subscriber<W>(
    args: &LogArgs,
    writer: W,
    terminal: bool,
) -> Result<Box<dyn Subscriber + Send + Sync>, LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter(args.level.as_deref().unwrap_or("info"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    Ok(match args.format.unwrap_or(LogFormat::Text) {
        LogFormat::Json => Box::new(
            builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(json::JsonLines)
                .finish(),
        ),
        LogFormat::Text if terminal => Box::new(
            builder
                .with_ansi(true)
                .with_target(false)
                .without_time()
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.with_ansi(false).with_target(false).finish()),
    })
}

/// Sets up the process's diagnostics on standard error (colours only on a terminal: `kubectl
/// logs` shows escape codes as they are). A second call keeps the first set-up.
pub fn init(args: &LogArgs) -> Result<(), LogError> {
    let subscriber = subscriber(args, std::io::stderr, std::io::stderr().is_terminal())?;
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    /// Everything written, shared with the test.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    fn logged(args: &LogArgs, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let subscriber = subscriber(args, out.clone(), false).unwrap();
        tracing::subscriber::with_default(subscriber, emit);
        out.text()
    }

    fn args(level: &str, format: LogFormat) -> LogArgs {
        LogArgs {
            level: Some(level.to_owned()),
            format: Some(format),
        }
    }

    #[test]
    fn json_lines_carry_level_message_and_fields() {
        let text = logged(&args("info", LogFormat::Json), || {
            tracing::info!(port = 8443, "serving");
            tracing::debug!("not shown at info");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        for part in [
            r#""level":"INFO""#,
            r#""message":"serving""#,
            r#""port":8443"#,
        ] {
            assert!(line.contains(part), "{part} not in {line}");
        }
    }

    #[test]
    fn text_lines_have_no_escape_codes_off_a_terminal() {
        let text = logged(&args("WARN", LogFormat::Text), || {
            tracing::warn!(port = 53, "pod-local port ignored");
            tracing::info!("not shown at warn");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("WARN") && text.contains("port=53"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }

    #[test]
    fn directives_select_targets() {
        let text = logged(&args("warn,chatty=debug", LogFormat::Text), || {
            tracing::debug!(target: "chatty", "from chatty");
            tracing::debug!(target: "quiet", "from quiet");
        });
        assert!(text.contains("from chatty"), "{text}");
        assert!(!text.contains("from quiet"), "{text}");
    }

    #[test]
    fn a_bad_filter_is_an_error_that_names_the_flag() {
        for bad in ["verbose=[", "", "info,=="] {
            let e = filter(bad).unwrap_err().to_string();
            assert!(
                e.contains("--log-level") && e.contains(log_env::LEVEL),
                "{e}"
            );
        }
    }

    #[test]
    fn flags_env_names_and_defaults() {
        let cli =
            Cli::try_parse_from(["x", "--log-level", "debug", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log.level.as_deref(), Some("debug"));
        assert_eq!(cli.log.format, Some(LogFormat::Json));
        // The operator's old flag still works.
        let cli = Cli::try_parse_from(["x", "--log", "trace"]).unwrap();
        assert_eq!(cli.log.level.as_deref(), Some("trace"));
        assert!(Cli::try_parse_from(["x", "--log-format", "yaml"]).is_err());
        let command = <Cli as clap::CommandFactory>::command();
        let env = |long: &str| {
            command
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(str::to_owned)
        };
        assert_eq!(env("log-level").as_deref(), Some(log_env::LEVEL));
        assert_eq!(env("log-format").as_deref(), Some(log_env::FORMAT));
        let filled = LogArgs::default().or_defaults("warn", LogFormat::Json);
        assert_eq!(filled.level.as_deref(), Some("warn"));
        assert_eq!(filled.format, Some(LogFormat::Json));
        let kept = args("debug", LogFormat::Text).or_defaults("warn", LogFormat::Json);
        assert_eq!(kept.level.as_deref(), Some("debug"));
        assert_eq!(kept.format, Some(LogFormat::Text));
    }
}
