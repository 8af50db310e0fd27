//! Telemetry shared by every binary: `tracing` logs (text, or JSON carrying
//! the OpenTelemetry trace and span ids so logs and traces join), OTLP trace
//! export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the SDK honours
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`), W3C `traceparent` propagation through Redis
//! records, and the Prometheus `/metrics` endpoint.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (log collectors).
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line, with `trace_id` and `span_id`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format must be auto, text or json, got {other:?}"
            )),
        }
    }
}

/// Owns the tracer provider; call [`Telemetry::shutdown`] before exiting so
/// the last spans are exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush and stop the exporter (blocking work, off the async threads).
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = p.shutdown() {
                    eprintln!("telemetry: span export shutdown: {e}");
                }
            })
            .await;
        }
    }
}

/// Install logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP
/// trace export. `service` is the default service name (OTEL_SERVICE_NAME
/// wins). Must run inside the Tokio runtime (the exporter uses tonic).
pub fn init(service: &str, format: LogFormat, default_filter: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonWithTrace(
                Format::default().json().with_current_span(true),
            ))
            .fmt_fields(JsonFields::new())
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed()
    };
    let provider = otlp_provider(service);
    // RUST_LOG filters log lines only: spans are exported at INFO whatever
    // the log level, or a quiet `RUST_LOG=warn` would silently drop traces.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service.to_string()))
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(
            fmt_layer
                .with_filter(library_throttle())
                .with_filter(filter),
        )
        .with(otel_layer)
        .try_init();
    Telemetry { provider }
}

/// The redis crate logs every reconnect attempt of its cluster client: with
/// a Redis Cluster down that is ~70 WARN and ERROR lines a second from one
/// idle process, each naming a node, enough to fill a disk overnight. Its
/// lines reach the log in bursts of at most [`LIBRARY_BURST`] per target and
/// level every [`LIBRARY_EVERY`] (one reconnect attempt's lines, every node
/// named); TTG's own retry loops say what is wrong at their back-off pace.
/// Other targets pass untouched.
///
/// A burst, not one line: the crate logs through `log`, whose bridge asks
/// the filter twice per line (and gives every line of a level one call
/// site), so "one line" would let none through.
fn library_throttle<S>() -> impl tracing_subscriber::layer::Filter<S> {
    use std::sync::Mutex;
    use std::time::Instant;
    let last: Mutex<HashMap<(String, tracing::Level), Instant>> = Mutex::new(HashMap::new());
    // Dynamic (asked at every event, never cached per call site): the
    // answer depends on time.
    tracing_subscriber::filter::dynamic_filter_fn(move |meta, _cx| {
        if !meta.is_event() || !meta.target().starts_with("redis") {
            return true;
        }
        let now = Instant::now();
        let Ok(mut opened) = last.lock() else {
            return true;
        };
        let key = (meta.target().to_string(), *meta.level());
        match opened.get(&key) {
            Some(t) if now.duration_since(*t) < LIBRARY_BURST => true,
            Some(t) if now.duration_since(*t) < LIBRARY_EVERY => false,
            _ => {
                if opened.len() > 1_000 {
                    opened.clear();
                }
                opened.insert(key, now);
                true
            }
        }
    })
}

/// See [`library_throttle`].
pub const LIBRARY_BURST: std::time::Duration = std::time::Duration::from_millis(1);

/// See [`library_throttle`].
pub const LIBRARY_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn otlp_provider(service: &str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let endpoint = endpoint.or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("telemetry: cannot export to {endpoint}: {e}; spans are not exported");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG) (the SDK's default
    // config reads them); parent-based always-on otherwise.
    Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build(),
    )
}

/// JSON log lines with the current OpenTelemetry trace and span ids.
struct JsonWithTrace(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|span| {
            tracing::dispatcher::get_default(|d| {
                tracing_opentelemetry::get_otel_context(&span.id(), d)
            })
        });
        let sc = ids.as_ref().map(|cx| cx.span().span_context().clone());
        match (sc, line.strip_prefix('{')) {
            (Some(sc), Some(rest)) if sc.is_valid() => {
                write!(
                    writer,
                    "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                    sc.trace_id(),
                    sc.span_id()
                )
            }
            _ => writer.write_str(&line),
        }
    }
}

/// W3C `traceparent` of the current span ("" when tracing is off).
pub fn current_traceparent() -> String {
    traceparent_of(&tracing::Span::current().context())
}

/// W3C `traceparent` of a context ("" when it has no valid span).
pub fn traceparent_of(cx: &Context) -> String {
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The remote context a `traceparent` describes, to parent spans on.
pub fn context_from_traceparent(tp: &str) -> Option<Context> {
    if tp.is_empty() {
        return None;
    }
    let carrier: HashMap<String, String> = [("traceparent".to_string(), tp.to_string())].into();
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The span context a `traceparent` names, to link to.
pub fn span_context_from_traceparent(tp: &str) -> Option<SpanContext> {
    context_from_traceparent(tp).map(|cx| cx.span().span_context().clone())
}

/// Make `span` a child of the trace `tp` names (no-op when `tp` is empty).
pub fn set_parent(span: &tracing::Span, tp: &str) {
    if let Some(cx) = context_from_traceparent(tp) {
        let _ = span.set_parent(cx);
    }
}

/// Mark `span` failed with `message` (OpenTelemetry status Error).
pub fn set_error(span: &tracing::Span, message: &str) {
    span.set_status(opentelemetry::trace::Status::error(message.to_string()));
}

/// Serve Prometheus text on `http://addr/metrics`. Latency metrics are
/// histograms with buckets from 0.5 ms to 60 s.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), MetricsError> {
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .and_then(|b| b.install())
        .map_err(|source| MetricsError { addr, source })
}

/// The metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: metrics_exporter_prometheus::BuildError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_from_traceparent(tp).expect("valid");
        assert_eq!(traceparent_of(&cx), tp);
        assert!(context_from_traceparent("").is_none());
        assert!(context_from_traceparent("garbage").is_none());
    }
}
