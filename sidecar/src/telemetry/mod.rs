//! Metric families, logging and OpenTelemetry trace setup.
//!
//! Logs go to standard error through a filter that the admin port can change at run
//! time. Spans go to an OTLP collector only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; without it no exporter, thread or
//! OpenTelemetry layer exists.

pub mod exposition;
pub mod metrics;
pub mod traces;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, filter, reload};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Filter used when `RUST_LOG` is unset.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Time the exporter gets at exit to send the spans still queued.
const TRACE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to the log filter installed by [`init`], shared with the admin server.
static LOG_FILTER: OnceLock<LogFilter> = OnceLock::new();

/// The log filter that can be replaced while the process runs.
#[derive(Clone, Debug)]
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogFilter {
    /// Returns the filter installed by [`init`], `None` before it ran.
    pub fn installed() -> Option<&'static LogFilter> {
        LOG_FILTER.get()
    }

    /// Returns the current filter in `RUST_LOG` syntax.
    pub fn current(&self) -> String {
        self.handle
            .with_current(ToString::to_string)
            .unwrap_or_default()
    }

    /// Replaces the filter with `directives` in `RUST_LOG` syntax, such as `debug` or
    /// `info,agent_sidecar::proxy=debug`. Returns the previous filter.
    pub fn set(&self, directives: &str) -> Result<String, String> {
        let filter = EnvFilter::builder()
            .parse(directives)
            .map_err(|e| format!("invalid log filter {directives:?}: {e}"))?;
        let previous = self.current();
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot replace the log filter: {e}"))?;
        Ok(previous)
    }
}

/// Telemetry state installed by [`init`]. [`Telemetry::shutdown`] sends the queued spans
/// at exit.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued and stops the exporter. Blocks for up to
    /// [`TRACE_SHUTDOWN_TIMEOUT`]; call it outside the async runtime.
    pub fn shutdown(self) {
        let Some(provider) = self.tracer_provider else {
            return;
        };
        if let Err(error) = provider.shutdown_with_timeout(TRACE_SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %error, "failed to send the remaining spans at exit");
        }
    }
}

/// Installs the global tracing subscriber: logs to standard error in `format`, filtered
/// by `RUST_LOG` (`info` when unset), and the OTLP span exporter when the environment
/// configures one. Call it once, before any async runtime starts, because the exporter
/// builds a blocking HTTP client.
pub fn init(format: LogFormat) -> Telemetry {
    let initial =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let (log_filter, handle) = reload::Layer::new(initial);
    let log_layer = log_layer(format).with_filter(log_filter);

    let (tracer_provider, trace_error) = match traces::exporter_configured() {
        true => match traces::build_provider() {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
        false => (None, None),
    };
    // The trace layer receives this crate's spans at debug and above, whatever the log
    // filter is, and no events, so log lines never become span events.
    let trace_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agent-sidecar"))
            .with_filter(filter::filter_fn(|metadata| {
                metadata.is_span()
                    && *metadata.level() <= Level::DEBUG
                    && metadata.target().starts_with("agent_sidecar")
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(log_layer)
        .with(trace_layer)
        .try_init();
    // A second initialization (tests, embedding) keeps the first subscriber and its
    // filter handle.
    if installed.is_ok() {
        let _ = LOG_FILTER.set(LogFilter { handle });
        traces::set_enabled(tracer_provider.is_some());
    }
    if let Some(error) = trace_error {
        tracing::warn!(error = %error, "OpenTelemetry exporter not started; spans are not exported");
    }
    if tracer_provider.is_some() {
        tracing::info!("exporting spans over OTLP/HTTP");
    }
    Telemetry { tracer_provider }
}

fn log_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; files and log collectors get
        // plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}
