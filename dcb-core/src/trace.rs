//! Trace context carried by events: the W3C `traceparent` / `tracestate` of
//! the operation that appended an event, stored in its metadata
//! ([`EventMetadata::trace`](crate::EventMetadata::trace)), so that whatever
//! handles the event later (a listener, a job, a Kafka consumer in another
//! service) continues the same trace.
//!
//! This crate knows no tracing backend. A [`TracePropagator`], installed once
//! per process with [`install_propagator`], turns a [`tracing::Span`] into a
//! [`TraceContext`] and back; `dcb-console`'s `telemetry` module installs one
//! for OpenTelemetry. Without one, every function here does nothing and costs
//! one atomic load: no event gets a trace context, no span gets a parent.
//!
//! Where the framework uses it:
//! - appends (both stores) stamp each record that has no trace context with
//!   the context of the append's span ([`stamp`]);
//! - listeners, jobs and Kafka consumers make the stored or received context
//!   the parent of the span that handles it ([`continue_from`]).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::event::EventRecord;

/// The longest `traceparent` kept (the W3C format is 55 characters; later
/// versions may append fields).
pub const MAX_TRACEPARENT_BYTES: usize = 256;
/// The longest `tracestate` kept (the W3C limit for propagating it).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A W3C trace context (<https://www.w3.org/TR/trace-context/>) as text, the
/// way it travels in HTTP and Kafka headers.
///
/// ```
/// use dcb_core::trace::TraceContext;
/// let context = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(context.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
/// assert_eq!(context.span_id(), Some("00f067aa0ba902b7"));
/// assert!(TraceContext::new("not a traceparent").trace_id().is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`, e.g.
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub traceparent: String,
    /// Vendor-specific trace state, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A context with a `traceparent` and no `tracestate`.
    pub fn new(traceparent: impl Into<String>) -> Self {
        TraceContext {
            traceparent: traceparent.into(),
            tracestate: None,
        }
    }

    /// Sets the `tracestate`.
    pub fn with_tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.tracestate = Some(tracestate.into());
        self
    }

    /// The trace id (32 lower-case hex digits) when the `traceparent` is
    /// well formed.
    pub fn trace_id(&self) -> Option<&str> {
        self.fields().map(|(trace, _)| trace)
    }

    /// The parent span id (16 lower-case hex digits) when the `traceparent`
    /// is well formed.
    pub fn span_id(&self) -> Option<&str> {
        self.fields().map(|(_, span)| span)
    }

    fn fields(&self) -> Option<(&str, &str)> {
        let mut parts = self.traceparent.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        (hex(version, 2)
            && version != "ff"
            && hex(trace, 32)
            && trace.bytes().any(|b| b != b'0')
            && hex(span, 16)
            && span.bytes().any(|b| b != b'0')
            && hex(flags, 2)
            && (version != "00" || parts.next().is_none()))
        .then_some((trace, span))
    }
}

/// Turns spans into trace contexts and back, for one tracing backend.
///
/// Implemented by `dcb-console`'s OpenTelemetry glue; an application with
/// another backend can implement it itself.
pub trait TracePropagator: Send + Sync + 'static {
    /// The context of `span` as it would be sent onwards (its trace id, its
    /// own span id as the parent id), or `None` when the span is not traced.
    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext>;

    /// Makes the span described by `parent` the parent of `span`. Called
    /// before `span` is first entered. An invalid context is ignored (the
    /// span starts a trace of its own).
    fn set_parent(&self, span: &tracing::Span, parent: &TraceContext);
}

static PROPAGATOR: OnceLock<Box<dyn TracePropagator>> = OnceLock::new();

/// Installs the process's propagator. The first one stays: returns `false`
/// (and drops `propagator`) when one was installed before.
pub fn install_propagator(propagator: impl TracePropagator) -> bool {
    PROPAGATOR.set(Box::new(propagator)).is_ok()
}

/// Whether a propagator is installed.
pub fn is_enabled() -> bool {
    PROPAGATOR.get().is_some()
}

/// The context of `span`, when a propagator is installed and the span is
/// traced.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let propagator = PROPAGATOR.get()?;
    if span.is_disabled() {
        return None;
    }
    propagator.context_of(span)
}

/// The context of the current span (see [`context_of`]).
pub fn current() -> Option<TraceContext> {
    // Checked first: without a propagator, not even the current span is
    // looked up.
    PROPAGATOR.get()?;
    context_of(&tracing::Span::current())
}

/// Makes `parent` (when there is one, and a propagator is installed) the
/// parent of `span`, which must not have been entered yet.
pub fn continue_from(span: &tracing::Span, parent: Option<&TraceContext>) {
    if let (Some(propagator), Some(parent)) = (PROPAGATOR.get(), parent) {
        if !span.is_disabled() {
            propagator.set_parent(span, parent);
        }
    }
}

/// Gives every record without a trace context the context of `span` (the
/// append's). Does nothing, and allocates nothing, without a propagator or
/// when `span` is not traced.
pub fn stamp(records: &mut [EventRecord], span: &tracing::Span) {
    if PROPAGATOR.get().is_none() || records.iter().all(|r| r.metadata.trace.is_some()) {
        return;
    }
    let Some(context) = context_of(span) else {
        return;
    };
    for record in records {
        if record.metadata.trace.is_none() {
            record.metadata.trace = Some(context.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn traceparent_fields_are_checked() {
        let ok = TraceContext::new("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(ok.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        ] {
            assert_eq!(TraceContext::new(bad).trace_id(), None, "{bad:?}");
        }
        // A later version may carry more fields.
        let later = TraceContext::new("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x");
        assert!(later.trace_id().is_some());
    }

    #[test]
    fn serde_skips_a_missing_tracestate() {
        let context = TraceContext::new("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let json = serde_json::to_string(&context).unwrap();
        assert_eq!(
            json,
            r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#
        );
        let back: TraceContext = serde_json::from_str(&json).unwrap();
        assert_eq!(back, context);
    }
}
