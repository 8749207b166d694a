//! The JSON line of an event, written straight into the line: byte for byte what
//! `tracing-subscriber`'s JSON format writes with `flatten_event(true)` (its defaults otherwise),
//! apart from the timestamp. That format sends each field through serde's serializer and an
//! adaptor that checks every piece for UTF-8 again, which is half of its cost per event.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// Formats each event as one JSON object: `timestamp`, `level`, the event's fields (its message
/// as `message`), `target`, then the current span (`span`) and every entered span from the root
/// (`spans`), each with its fields and `name`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut line: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A record of the `log` crate carries its own target, file and line.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        line.write_str("{\"timestamp\":\"")?;
        // RFC 3339 digits, `-`, `:`, `.`, `T`, `Z`: nothing to escape.
        SystemTime.format_time(&mut line)?;
        line.write_str("\",\"level\":\"")?;
        line.write_str(meta.level().as_str())?;
        line.write_char('"')?;
        let mut fields = Fields {
            line: &mut line,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        line.write_str(",\"target\":")?;
        string(&mut line, meta.target())?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = &current {
            line.write_str(",\"span\":")?;
            span_object::<S, N>(&mut line, span)?;
            // As `tracing-subscriber` does: the list follows the current span even where the
            // event named another parent.
            line.write_str(",\"spans\":[")?;
            if let Some(leaf) = ctx.lookup_current() {
                for (i, span) in leaf.scope().from_root().enumerate() {
                    if i > 0 {
                        line.write_char(',')?;
                    }
                    span_object::<S, N>(&mut line, &span)?;
                }
            }
            line.write_char(']')?;
        }
        line.write_str("}\n")
    }
}

/// A span's fields, which the field formatter stored as a JSON object, then its name. Spans are
/// few and long-lived, so they take the same road as in `tracing-subscriber`: parse, write.
fn span_object<S, N>(line: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    let extensions = span.extensions();
    let stored = extensions
        .get::<FormattedFields<N>>()
        .map_or("", |fields| fields.fields.as_str());
    line.write_char('{')?;
    match serde_json::from_str::<serde_json::Value>(stored) {
        Ok(serde_json::Value::Object(fields)) => {
            for (name, value) in &fields {
                string(line, name)?;
                write!(line, ":{value},")?;
            }
        }
        Ok(value) => {
            write!(
                line,
                "\"field\":{value},\"field_error\":\"field was no a valid object\","
            )?;
        }
        Err(e) => {
            line.write_str("\"field_error\":")?;
            string(line, &e.to_string())?;
            line.write_char(',')?;
        }
    }
    line.write_str("\"name\":")?;
    string(line, span.metadata().name())?;
    line.write_char('}')
}

/// Writes each field as `,"name":value`, as `serde_json` writes the value.
struct Fields<'a, 'w> {
    line: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.line.write_char(',')?;
                string(self.line, field.name())?;
                self.line.write_char(':')?;
                value(self.line)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |line| {
            line.write_char('"')?;
            write!(Escaped(line), "{value:?}")?;
            line.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |line| string(line, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |line| {
            line.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |line| write!(line, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |line| write!(line, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's digits for a finite number; `null` for NaN and the infinities.
        self.entry(field, |line| match serde_json::Number::from_f64(value) {
            Some(number) => write!(line, "{number}"),
            None => line.write_str("null"),
        });
    }
}

/// `text` as a JSON string.
fn string(line: &mut Writer<'_>, text: &str) -> fmt::Result {
    line.write_char('"')?;
    Escaped(line).write_str(text)?;
    line.write_char('"')
}

/// Escapes what it is given as `serde_json` does inside a string: `"`, `\` and the control
/// characters; everything else is written in runs as it comes.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut run = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // Only ASCII bytes are escaped, so `i` is a character boundary.
            self.0.write_str(&text[run..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            run = i + 1;
        }
        self.0.write_str(&text[run..])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;
    use crate::tests::Captured;

    /// What `emit` logs through these lines and through `tracing-subscriber`'s own JSON format,
    /// each line's timestamp checked for its shape, then left out.
    fn both(emit: impl Fn()) -> (String, String) {
        let ours = Captured::default();
        let theirs = Captured::default();
        let builder = || {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
        };
        tracing::subscriber::with_default(
            builder()
                .with_writer(ours.clone())
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .finish(),
            &emit,
        );
        tracing::subscriber::with_default(
            builder()
                .with_writer(theirs.clone())
                .json()
                .flatten_event(true)
                .finish(),
            &emit,
        );
        let text = |captured: &Captured| {
            captured
                .text()
                .lines()
                .map(without_timestamp)
                .collect::<Vec<_>>()
                .join("\n")
        };
        (text(&ours), text(&theirs))
    }

    fn without_timestamp(line: &str) -> String {
        let rest = line
            .strip_prefix("{\"timestamp\":\"")
            .unwrap_or_else(|| panic!("no timestamp first: {line}"));
        let (stamp, rest) = rest.split_once('"').unwrap();
        let shape: String = stamp
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000000Z", "{line}");
        format!("{{\"timestamp\":\"…\"{rest}")
    }

    /// A value whose `Debug` writes its text as it is, unescaped.
    struct Raw(String);

    impl fmt::Debug for Raw {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    #[derive(Debug)]
    struct Failure(String);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Failure {}

    #[test]
    fn a_review_line_is_the_line_tracing_subscriber_writes() {
        let warnings = vec![
            "agentboundary.dev: container \"agent\" runs as root\tand \\ more".to_owned(),
            "ünïcode, \u{1}, \u{7f}".to_owned(),
        ];
        let audit = std::collections::BTreeMap::from([("decision", "jailed"), ("tier", "userns")]);
        let (ours, theirs) = both(|| {
            tracing::info!(
                uid = %"705ab4f5",
                namespace = "agents",
                dry_run = false,
                allowed = true,
                warnings = ?warnings,
                duration_ms = 0.25,
                count = 3_u64,
                delta = -4_i64,
                audit = ?audit,
                "review"
            );
        });
        assert_eq!(ours, theirs);
        assert!(
            ours.contains(r#""level":"INFO","message":"review","uid":"705ab4f5""#),
            "{ours}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(parsed["duration_ms"], 0.25);
        assert_eq!(parsed["target"], module_path!());
    }

    #[test]
    fn spans_are_written_as_tracing_subscriber_writes_them() {
        let (ours, theirs) = both(|| {
            tracing::info!("no span");
            let outer = tracing::info_span!("reconcile", object = "ns/a\"b", n = 2);
            let entered_outer = outer.enter();
            let inner = tracing::debug_span!("step", late = tracing::field::Empty);
            let entered_inner = inner.enter();
            tracing::warn!(x = 1, "inside two");
            inner.record("late", "set\nlater");
            tracing::warn!("after a record");
            let detached = tracing::info_span!("detached");
            tracing::error!(parent: &detached, "named parent");
            tracing::error!(parent: None, "no parent");
            let empty = tracing::trace_span!("empty");
            drop(entered_inner);
            drop(entered_outer);
            tracing::info!(parent: &empty, "named parent, none entered");
        });
        assert_eq!(ours, theirs);
        assert_eq!(ours.lines().count(), 6, "{ours}");
        assert!(ours.contains(r#""spans":[]"#), "{ours}");
    }

    /// Text heavy in what JSON escapes: control characters, quotes, backslashes.
    fn text() -> impl Strategy<Value = String> {
        let char = prop_oneof![
            3 => any::<char>(),
            2 => (0_u8..0x20).prop_map(char::from),
            1 => prop::sample::select(vec!['"', '\\', '\u{7f}', '/', '\u{2028}']),
        ];
        proptest::collection::vec(char, 0..24).prop_map(String::from_iter)
    }

    #[test]
    fn a_record_of_the_log_crate_is_written_as_tracing_subscriber_writes_it() {
        let (ours, theirs) = both(|| {
            tracing_log::format_trace(
                &log::Record::builder()
                    .args(format_args!("from \"log\""))
                    .level(log::Level::Warn)
                    .target("some::module")
                    .file(Some("module.rs"))
                    .line(Some(7))
                    .build(),
            )
            .unwrap();
        });
        assert_eq!(ours, theirs);
        assert!(ours.contains(r#""target":"some::module""#), "{ours}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any values of every kind a field can take, in and out of spans.
        #[test]
        fn any_event_is_written_as_tracing_subscriber_writes_it(
            message in text(),
            text in text(),
            raw in text(),
            error in text(),
            float in any::<f64>(),
            signed in any::<i64>(),
            unsigned in any::<u64>(),
            wide in any::<i128>(),
            flag in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..8),
            depth in 0..3_u8,
        ) {
            let (ours, theirs) = both(|| {
                let outer = (depth > 0).then(|| tracing::info_span!("outer", text = %text, float));
                let _outer = outer.as_ref().map(tracing::Span::enter);
                let inner = (depth > 1).then(|| tracing::info_span!("inner", raw = ?Raw(raw.clone())));
                let _inner = inner.as_ref().map(tracing::Span::enter);
                tracing::info!(
                    text = %text,
                    shown = text.as_str(),
                    raw = ?Raw(raw.clone()),
                    error = &Failure(error.clone()) as &dyn std::error::Error,
                    float,
                    signed,
                    unsigned,
                    wide,
                    flag,
                    bytes = bytes.as_slice(),
                    "{message}"
                );
            });
            prop_assert_eq!(ours.clone(), theirs);
            let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
            prop_assert_eq!(parsed["shown"].as_str(), Some(text.as_str()));
        }
    }
}
