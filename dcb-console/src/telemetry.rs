//! Traces: dcb's spans exported through OpenTelemetry, and W3C trace
//! context carried from an HTTP request to the events it appends, the
//! listeners and jobs that handle them, the Kafka messages they publish and
//! the decisions another service makes on those messages.
//!
//! The framework's spans are `tracing` spans, named and attributed after
//! the OpenTelemetry semantic conventions v[`SEMCONV_VERSION`] (messaging
//! for listeners, jobs and Kafka; the span name and kind travel in the
//! `otel.name`/`otel.kind` fields that `tracing-opentelemetry` reads):
//!
//! | span | OpenTelemetry name | kind | where |
//! |---|---|---|---|
//! | `dcb.decide` | `dcb.decide` | internal | the decision maker |
//! | `dcb.append` | `dcb.append` | client | `PgEventStore::append` |
//! | `dcb.listener.handle` | `handle {listener}` | consumer | each event a listener handles |
//! | `dcb.job` | `run {queue}` | consumer | each attempt at a job |
//! | `dcb.kafka.send` | `send {topic}` | producer | the relay and `Publisher::send` |
//! | `dcb.kafka.translate` | `process {topic}` | consumer | each message a translator decides on |
//!
//! How the context travels: an append stores the context of its span in
//! each event's metadata ([`dcb_core::EventMetadata::trace`]); a listener's
//! `handle` span is a child of it; a job enqueued there stores the current
//! context with the job (`jobs.trace`), and its `run` span is a child of
//! that; the relay's and the publisher's `send` spans write `traceparent`
//! and `tracestate` Kafka headers; a translator's `process` span is a child
//! of those headers. [`OpenTelemetryPropagator`] is the glue, installed by
//! [`init`] or [`install_propagator`].
//!
//! One call wires an application ([`init`]); tests and applications with
//! their own subscriber use [`layer`] and [`install_propagator`]:
//!
//! ```
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing_subscriber::layer::SubscriberExt;
//! let exporter = InMemorySpanExporter::default();
//! let provider = SdkTracerProvider::builder()
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//! let subscriber = tracing_subscriber::registry().with(dcb_console::telemetry::layer(&provider));
//! dcb_console::telemetry::install_propagator();
//! tracing::subscriber::with_default(subscriber, || {
//!     let span = tracing::info_span!("request");
//!     let context = dcb_core::trace::context_of(&span).expect("traced");
//!     assert!(context.trace_id().is_some());
//! });
//! ```

#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use dcb_core::trace::{TraceContext, TracePropagator};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The version of the OpenTelemetry semantic conventions dcb's span names
/// and attributes follow (the messaging conventions are still marked
/// *development* there; dcb moves to a newer version deliberately).
pub const SEMCONV_VERSION: &str = "1.36.0";

/// The name of the tracer dcb's spans are recorded with.
pub const TRACER_NAME: &str = "dcb";

/// The W3C header names, as in HTTP and Kafka.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// [`TracePropagator`] for OpenTelemetry through `tracing-opentelemetry`:
/// reads a span's OpenTelemetry context as W3C text, and makes W3C text the
/// parent of a span.
#[derive(Debug, Default)]
pub struct OpenTelemetryPropagator {
    w3c: TraceContextPropagator,
}

impl OpenTelemetryPropagator {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The OpenTelemetry context `context` describes (invalid text gives
    /// an empty context).
    pub fn extract(&self, context: &TraceContext) -> opentelemetry::Context {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert(TRACEPARENT.to_owned(), context.traceparent.clone());
        if let Some(state) = &context.tracestate {
            carrier.insert(TRACESTATE.to_owned(), state.clone());
        }
        self.w3c.extract(&carrier)
    }

    /// The W3C text of an OpenTelemetry context, when it has a valid span.
    pub fn inject(&self, context: &opentelemetry::Context) -> Option<TraceContext> {
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
        self.w3c.inject_context(context, &mut carrier);
        let traceparent = carrier.remove(TRACEPARENT)?;
        Some(TraceContext {
            traceparent,
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        })
    }
}

impl TracePropagator for OpenTelemetryPropagator {
    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext> {
        self.inject(&span.context())
    }

    fn set_parent(&self, span: &tracing::Span, parent: &TraceContext) {
        let context = self.extract(parent);
        if context.span().span_context().is_valid() {
            if let Err(error) = span.set_parent(context) {
                tracing::debug!(%error, "cannot continue a trace");
            }
        }
    }
}

/// Installs [`OpenTelemetryPropagator`] as the process's propagator (see
/// [`dcb_core::trace`]); `false` when one was installed before.
pub fn install_propagator() -> bool {
    dcb_core::trace::install_propagator(OpenTelemetryPropagator::new())
}

/// The `tracing` layer that records spans with `provider` (dcb's tracer).
pub fn layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME))
}

/// What [`init`] set up; keep it until the process ends: dropping it
/// exports the spans still buffered and stops the exporter.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint was configured).
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("cannot flush the trace exporter: {error}");
            }
        }
    }
}

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber was set before.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Sets up tracing for an application in one call: logs to stderr filtered
/// by `RUST_LOG` (or `default_filter`), and, when built with the `otlp`
/// feature and `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans exported over OTLP
/// (HTTP/protobuf) under `service_name` (`OTEL_SERVICE_NAME` wins), with the
/// W3C propagator installed so that traces continue through events, jobs
/// and Kafka messages. Spans of level INFO and above are exported, plus what
/// `OTEL_TRACES_FILTER` (an `EnvFilter`) adds.
///
/// # Errors
/// [`TelemetryError`] when a subscriber is already installed or the
/// exporter cannot be built.
pub fn init(service_name: &str, default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer().with_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
    );
    let provider = exporter_provider(service_name)?;
    let traces = provider.as_ref().map(|provider| {
        let filter = std::env::var("OTEL_TRACES_FILTER")
            .ok()
            .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
        layer(provider).with_filter(filter)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    if provider.is_some() {
        install_propagator();
    }
    Ok(Telemetry { provider })
}

#[cfg(feature = "otlp")]
fn exporter_provider(service_name: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|e| !e.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

#[cfg(not(feature = "otlp"))]
fn exporter_provider(_service_name: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok() {
        eprintln!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no OTLP exporter \
             (build with the `otlp` feature): traces are not exported"
        );
    }
    Ok(None)
}

/// The span of an HTTP request (OpenTelemetry HTTP server conventions:
/// `{method} {route}`, kind server), a child of the caller's `traceparent`
/// when it sent one. For `tower_http::trace::TraceLayer::make_span_with`.
pub fn http_span<B>(request: &Request<B>) -> tracing::Span {
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "http.request",
        "otel.name" = %format_args!("{method} {}", route.unwrap_or_default()),
        "otel.kind" = "server",
        "otel.status_code" = tracing::field::Empty,
        "http.request.method" = method,
        "http.route" = route,
        "url.path" = request.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
    );
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(parent) = header(TRACEPARENT) {
        let mut context = TraceContext::new(parent);
        context.tracestate = header(TRACESTATE);
        dcb_core::trace::continue_from(&span, Some(&context));
    }
    span
}

/// Records the status of an HTTP response on its span (a 5xx marks it
/// failed). For `tower_http::trace::TraceLayer::on_response`.
pub fn http_response<B>(response: &Response<B>, _latency: Duration, span: &tracing::Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}
