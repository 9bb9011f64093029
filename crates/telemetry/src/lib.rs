//! Logging and tracing for every imagestore binary.
//!
//! Logs go to stderr, as text or JSON, filtered by `RUST_LOG` or the configured
//! filter. When an OTLP endpoint is configured (or `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set), spans are also exported through OpenTelemetry.

pub mod metrics;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// The `[log]` section of every binary's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// text or json.
    pub format: LogFormat,
    /// A tracing filter such as "info" or "imagestore=debug"; RUST_LOG wins.
    pub filter: String,
    /// An OTLP/gRPC endpoint such as "http://127.0.0.1:4317"; empty reads
    /// OTEL_EXPORTER_OTLP_ENDPOINT, and if that is unset nothing is exported.
    pub otlp_endpoint: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

/// Flushes exported spans when dropped.
#[must_use = "dropping the guard at once stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Calling it twice (tests) keeps the first.
pub fn init(service: &'static str, config: &LogConfig) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let endpoint = if config.otlp_endpoint.is_empty() {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default()
    } else {
        config.otlp_endpoint.clone()
    };
    let provider = (!endpoint.is_empty())
        .then(|| otlp_provider(service, &endpoint))
        .flatten();
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let (text, json) = match config.format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init();
    TelemetryGuard { provider }
}

/// For a command-line client: nothing unless `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set, then its spans (only: a client's output is its own) are exported, so
/// that a command is one trace with the servers' work on it.
pub fn init_client(service: &'static str) -> TelemetryGuard {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let provider = (!endpoint.is_empty())
        .then(|| otlp_provider(service, &endpoint))
        .flatten();
    if let Some(p) = &provider {
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(tracing_opentelemetry::layer().with_tracer(p.tracer(service)))
            .try_init();
    }
    TelemetryGuard { provider }
}

fn otlp_provider(service: &'static str, endpoint: &str) -> Option<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build();
    match exporter {
        Ok(exporter) => Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build(),
        ),
        Err(e) => {
            eprintln!("imagestore: OpenTelemetry export to {endpoint} disabled: {e}");
            None
        }
    }
}
