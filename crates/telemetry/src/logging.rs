use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::ValueEnum;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint}: {reason}")]
pub struct TracingError {
    endpoint: String,
    reason: String,
}

/// Whether spans are exported (`--otlp-endpoint`): only then does a job's span take its
/// parent from the task's trace context, or a chained job read it back, which costs a
/// parse and a few allocations per job that nothing would see otherwise.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Keeps the OTLP exporter alive; [`Telemetry::shutdown`] flushes the last spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), logs go to stderr,
/// and with `otlp_endpoint` (an OTLP/HTTP collector such as `http://127.0.0.1:4318`) every
/// span is also exported, so that one task is one trace across processes.
pub fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service_name: &str,
) -> Result<Telemetry, TracingError> {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // apalis logs its own "Worker <id> started" at info, a second start line beside ours
    // (which says more): quiet unless RUST_LOG asks for apalis by name.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("apalis"))
        && let Ok(quiet) = "apalis_core::worker::context=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into files or log collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.with_target(false).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let provider = match otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(endpoint, service_name)?),
        None => None,
    };
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("agentfleet")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn otlp_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TracingError> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    // The exporter's HTTP client is the workspace's reqwest, built without a crypto provider
    // (see Cargo.toml): it panics unless one is installed. Ring, as for Redis's TLS and the
    // providers; Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()
        .map_err(|e| TracingError {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The span of one job, a child of the task's trace when `traceparent` is given (the W3C
/// context created at enqueue), so that exported spans of every stage join one trace.
pub fn job_span(
    task_id: &str,
    role: &str,
    attempt: u32,
    traceparent: Option<&str>,
) -> tracing::Span {
    let trace_id = traceparent
        .and_then(|tp| tp.split('-').nth(1))
        .unwrap_or_default();
    let span =
        tracing::info_span!("job", task_id = %task_id, role = %role, attempt, trace_id = %trace_id);
    if let Some(tp) = traceparent.filter(|_| EXPORTING.load(Ordering::Relaxed)) {
        let carrier = std::collections::HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    span
}

/// The W3C `traceparent` of the current span, when spans are exported (so a chained job
/// continues the trace under this job's span); `None` otherwise.
pub fn current_traceparent() -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}
