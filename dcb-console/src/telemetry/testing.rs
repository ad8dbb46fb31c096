//! Spans captured in memory, for tests of traces (feature `testing`):
//! OpenTelemetry's in-memory exporter behind dcb's layer.
//!
//! ```
//! # tokio_test_block_on(async {
//! use std::time::Duration;
//! use dcb_console::telemetry::testing;
//! let spans = testing::capture();
//! let (trace_id, traceparent) = testing::new_traceparent();
//! let span = tracing::info_span!("request");
//! dcb_core::trace::continue_from(&span, Some(&dcb_core::trace::TraceContext::new(traceparent)));
//! drop(span);
//! let seen = spans
//!     .wait_for(&trace_id, Duration::from_secs(5), |s| !s.is_empty())
//!     .await
//!     .unwrap();
//! assert_eq!(seen[0].name, "request");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Runtime::new().unwrap().block_on(f)
//! # }
//! ```

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceId;
pub use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The spans finished in this process since [`capture`] was first called.
#[derive(Clone, Debug)]
pub struct CapturedSpans {
    exporter: InMemorySpanExporter,
}

static CAPTURED: OnceLock<(CapturedSpans, SdkTracerProvider)> = OnceLock::new();

/// Starts capturing (the first call installs a global subscriber that
/// records spans of level INFO and above, and the W3C propagator), and
/// returns the captured spans. Every later call returns the same capture.
///
/// # Panics
/// When another global subscriber was installed first.
pub fn capture() -> CapturedSpans {
    CAPTURED
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            tracing_subscriber::registry()
                .with(
                    super::layer(&provider)
                        .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
                )
                .try_init()
                .expect("no other global tracing subscriber is installed");
            super::install_propagator();
            (CapturedSpans { exporter }, provider)
        })
        .0
        .clone()
}

/// A fresh trace id and a `traceparent` (sampled) of a made-up caller span
/// in it.
pub fn new_traceparent() -> (String, String) {
    // Never zero: an all-zero id is invalid.
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let span_id = format!("{:016x}", fastrand::u64(1..));
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, traceparent)
}

impl CapturedSpans {
    /// Every span finished so far.
    pub fn all(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap_or_default()
    }

    /// The finished spans of trace `trace_id` (32 hex digits).
    pub fn of_trace(&self, trace_id: &str) -> Vec<SpanData> {
        let Ok(id) = TraceId::from_hex(trace_id) else {
            return Vec::new();
        };
        self.all()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == id)
            .collect()
    }

    /// Waits (at most `bound`) until the spans of `trace_id` satisfy
    /// `done`; returns them, or those seen last when time ran out.
    ///
    /// # Errors
    /// The spans seen last, when `done` never held.
    pub async fn wait_for(
        &self,
        trace_id: &str,
        bound: Duration,
        done: impl Fn(&[SpanData]) -> bool,
    ) -> Result<Vec<SpanData>, Vec<SpanData>> {
        let until = Instant::now() + bound;
        loop {
            let spans = self.of_trace(trace_id);
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= until {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of attribute `key` of `span`, as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// A one-line description of each span (name, ids, parent), for failure
/// messages.
pub fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} [{:?}] span {} parent {}",
                s.name,
                s.span_kind,
                s.span_context.span_id(),
                s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
