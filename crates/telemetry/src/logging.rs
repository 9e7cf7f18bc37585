//! Tracing configured the way the Lambda runtime's advanced logging controls ask.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for CloudWatch Logs Insights.
    Json,
    /// Human-readable lines, for local runs and Lambda's text log format.
    Text,
}

/// The log format and filter, decided once at start from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    format: LogFormat,
    filter: String,
}

impl LogSettings {
    /// Reads `AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL` and `RUST_LOG`.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Self::from_env_values(
            var("AWS_LAMBDA_LOG_FORMAT").as_deref(),
            var("AWS_LAMBDA_LOG_LEVEL").as_deref(),
            var("RUST_LOG").as_deref(),
        )
    }

    /// Decides the settings from the values of `AWS_LAMBDA_LOG_FORMAT`,
    /// `AWS_LAMBDA_LOG_LEVEL` and `RUST_LOG`.
    ///
    /// `JSON` (any case) selects JSON lines, anything else text. The Lambda log level wins
    /// over `RUST_LOG` because it is what the function's console setting controls; an
    /// unknown level or unparsable `RUST_LOG` falls through to the next source, then `info`.
    pub fn from_env_values(
        format: Option<&str>,
        level: Option<&str>,
        rust_log: Option<&str>,
    ) -> Self {
        let format = match format {
            Some(f) if f.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        let filter = level
            .and_then(lambda_level_filter)
            .map(str::to_owned)
            .or_else(|| {
                rust_log
                    .map(str::trim)
                    .filter(|d| !d.is_empty() && EnvFilter::try_new(d).is_ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
        Self { format, filter }
    }

    /// The chosen format.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The chosen filter, as `EnvFilter` directives.
    pub fn filter(&self) -> &str {
        &self.filter
    }
}

/// Maps a Lambda log level to a tracing level; tracing has no FATAL, so it means error.
fn lambda_level_filter(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARN" => Some("warn"),
        "ERROR" | "FATAL" => Some("error"),
        _ => None,
    }
}

/// Installs the global subscriber from the Lambda environment variables, writing to stdout.
///
/// Safe to call more than once: later calls leave the first subscriber in place.
pub fn init_tracing() {
    init_tracing_with(&LogSettings::from_env());
}

/// Installs the global subscriber with explicit settings, writing to stdout.
///
/// Safe to call more than once: later calls leave the first subscriber in place.
pub fn init_tracing_with(settings: &LogSettings) {
    // The only failure is "already initialised", which is what a second call should do.
    let _ = subscriber(settings, std::io::stdout).try_init();
}

/// As [`init_tracing_with`], writing to `writer` instead of stdout: what a test uses to
/// read every line the functions log (the secret-leak check).
pub fn init_tracing_to<W>(settings: &LogSettings, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = subscriber(settings, writer).try_init();
}

/// Crates whose debug output includes SQL text, held at info.
const QUIET_STATEMENT_LOGGERS: &str = "tokio_postgres=info";

fn subscriber<W>(settings: &LogSettings, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Capped whatever the level asked for: tokio-postgres logs statement text at debug,
    // and some statements (CREATE SUBSCRIPTION … CONNECTION) carry a password.
    let filter = filter.add_directive(QUIET_STATEMENT_LOGGERS.parse().unwrap_or_default());
    // CloudWatch shows ANSI escapes as literal bytes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .with_target(true);
    match settings.format {
        LogFormat::Json => Box::new(builder.json().with_current_span(true).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::secret::tests::{assert_no_part_of_value, VALUE};
    use crate::Secret;

    fn settings(format: LogFormat, filter: &str) -> LogSettings {
        LogSettings {
            format,
            filter: filter.to_owned(),
        }
    }

    #[test]
    fn format_is_json_only_when_asked() {
        let cases = [
            (Some("JSON"), LogFormat::Json),
            (Some("json"), LogFormat::Json),
            (Some("Text"), LogFormat::Text),
            (Some(""), LogFormat::Text),
            (Some("yaml"), LogFormat::Text),
            (None, LogFormat::Text),
        ];
        for (format, expected) in cases {
            let got = LogSettings::from_env_values(format, None, None);
            assert_eq!(got.format(), expected, "{format:?}");
        }
    }

    #[test]
    fn level_comes_from_lambda_then_rust_log_then_info() {
        let cases = [
            (Some("TRACE"), None, "trace"),
            (Some("debug"), None, "debug"),
            (Some("Info"), None, "info"),
            (Some("WARN"), None, "warn"),
            (Some("ERROR"), None, "error"),
            (Some("FATAL"), None, "error"),
            (Some("fatal"), Some("debug"), "error"),
            (Some("WARN"), Some("trace"), "warn"),
            (Some("LOUD"), Some("switchyard=debug"), "switchyard=debug"),
            (None, Some("switchyard=debug,info"), "switchyard=debug,info"),
            (None, Some("  "), "info"),
            (None, Some("=[=nonsense"), "info"),
            (Some(""), None, "info"),
            (None, None, "info"),
        ];
        for (level, rust_log, expected) in cases {
            let got = LogSettings::from_env_values(None, level, rust_log);
            assert_eq!(got.filter(), expected, "{level:?} {rust_log:?}");
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn contents(&self) -> String {
            let bytes = self.0.lock().expect("buffer lock").clone();
            String::from_utf8(bytes).expect("utf-8 log output")
        }
    }

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(settings: &LogSettings, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing::subscriber::with_default(subscriber(settings, move || writer.clone()), emit);
        buffer.contents()
    }

    #[test]
    fn json_lines_carry_target_and_span_but_not_secrets() {
        let secret = Secret::new(VALUE);
        let output = capture(&settings(LogFormat::Json, "info"), || {
            let span = tracing::info_span!("connect", cell = "local-a", password = %secret);
            let _entered = span.enter();
            tracing::info!(password = ?secret, token = %secret, "connecting");
        });

        assert_no_part_of_value(&output);
        let line: serde_json::Value =
            serde_json::from_str(output.trim()).expect("one JSON object per line");
        assert_eq!(line["fields"]["message"], "connecting");
        assert_eq!(line["fields"]["password"], "Secret([redacted])");
        assert_eq!(line["fields"]["token"], "[redacted]");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["span"]["name"], "connect");
        assert_eq!(line["span"]["cell"], "local-a");
    }

    #[test]
    fn text_lines_have_no_ansi_and_respect_the_filter() {
        let output = capture(&settings(LogFormat::Text, "warn"), || {
            tracing::info!("hidden by the filter");
            tracing::warn!(token = %Secret::new(VALUE), "shown");
        });
        assert!(!output.contains("hidden"), "{output}");
        assert!(output.contains("shown"), "{output}");
        assert!(!output.contains('\u{1b}'), "{output:?}");
        assert_no_part_of_value(&output);
    }

    #[test]
    fn statement_text_from_the_postgres_driver_is_never_logged_even_at_trace() {
        let output = capture(&settings(LogFormat::Text, "trace"), || {
            tracing::debug!(target: "tokio_postgres::query", statement = "CREATE SUBSCRIPTION s CONNECTION 'password=hunter2'", "executing");
            tracing::debug!(target: "switchyard_probe", "ours at debug");
        });
        assert!(!output.contains("hunter2"), "{output}");
        assert!(
            output.contains("ours at debug"),
            "the rest still logs at the asked level: {output}"
        );
    }

    #[test]
    fn init_twice_does_not_panic() {
        let settings = settings(LogFormat::Text, "info");
        init_tracing_with(&settings);
        init_tracing_with(&settings);
    }
}
