//! Trace context in Kafka headers, and the spans of sending and processing
//! messages, named and attributed after the OpenTelemetry messaging
//! semantic conventions (v1.36.0; the `otel.*` fields carry the span name
//! and kind to a `tracing` → OpenTelemetry bridge).
//!
//! The relay and the publishers write the W3C `traceparent` and
//! `tracestate` headers of their `send` span; translators make the context
//! of those headers the parent of their `process` span, so the decision a
//! message leads to (and the events it appends) joins the sender's trace.
//! Nothing here does anything without a propagator installed (see
//! [`dcb_core::trace`]).

use dcb_core::trace::{TraceContext, MAX_TRACEPARENT_BYTES, MAX_TRACESTATE_BYTES};

use crate::KafkaMessage;

/// The W3C header carrying the trace id and the sender's span id.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor-specific trace state.
pub const HEADER_TRACESTATE: &str = "tracestate";

/// The trace context in `message`'s headers, when its `traceparent` is well
/// formed (an invalid `tracestate` is dropped, a malformed `traceparent`
/// ignored: a message's headers never fail its processing).
///
/// ```
/// use dcb_kafka::{trace_context, KafkaMessage};
/// let parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let message = KafkaMessage::new("t", 0, 1, None, None).with_header("traceparent", parent);
/// let context = trace_context(&message).unwrap();
/// assert_eq!(context.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
/// let bad = KafkaMessage::new("t", 0, 1, None, None).with_header("traceparent", b"junk");
/// assert!(trace_context(&bad).is_none());
/// ```
pub fn trace_context(message: &KafkaMessage<'_>) -> Option<TraceContext> {
    context_from(
        message.header(HEADER_TRACEPARENT),
        message.header(HEADER_TRACESTATE),
    )
}

pub(crate) fn context_from(parent: Option<&[u8]>, state: Option<&[u8]>) -> Option<TraceContext> {
    let parent = parent.filter(|p| p.len() <= MAX_TRACEPARENT_BYTES)?;
    let context = TraceContext::new(std::str::from_utf8(parent).ok()?);
    context.trace_id()?;
    let state = state
        .filter(|s| s.len() <= MAX_TRACESTATE_BYTES && s.iter().all(|b| (0x20..0x7f).contains(b)))
        .and_then(|s| std::str::from_utf8(s).ok());
    Some(match state {
        Some(state) if !state.is_empty() => context.with_tracestate(state),
        _ => context,
    })
}

/// Calls `header` with the trace headers of `context`.
pub(crate) fn each_header(
    context: Option<&TraceContext>,
    mut header: impl FnMut(&'static str, &[u8]),
) {
    if let Some(context) = context {
        header(HEADER_TRACEPARENT, context.traceparent.as_bytes());
        if let Some(state) = &context.tracestate {
            header(HEADER_TRACESTATE, state.as_bytes());
        }
    }
}

/// A `send {topic}` span (PRODUCER): one message handed to the producer.
pub(crate) fn send_span(
    topic: &str,
    key: Option<&str>,
    message_id: Option<uuid::Uuid>,
) -> tracing::Span {
    let span = tracing::info_span!(
        "dcb.kafka.send",
        "otel.name" = %format_args!("send {topic}"),
        "otel.kind" = "producer",
        "otel.status_code" = tracing::field::Empty,
        "messaging.system" = "kafka",
        "messaging.operation.type" = "send",
        "messaging.operation.name" = "send",
        "messaging.destination.name" = topic,
        "messaging.kafka.message.key" = tracing::field::Empty,
        "messaging.message.id" = tracing::field::Empty,
        "messaging.destination.partition.id" = tracing::field::Empty,
        "messaging.kafka.offset" = tracing::field::Empty,
    );
    if !span.is_disabled() {
        if let Some(key) = key {
            span.record("messaging.kafka.message.key", key);
        }
        if let Some(id) = message_id {
            span.record("messaging.message.id", tracing::field::display(id));
        }
    }
    span
}

/// Records where a sent message landed, or that it failed, on its span.
pub(crate) fn record_delivery(
    span: &tracing::Span,
    delivery: Result<(i32, i64), &crate::KafkaError>,
) {
    if span.is_disabled() {
        return;
    }
    match delivery {
        Ok((partition, offset)) => {
            span.record("messaging.destination.partition.id", partition.to_string());
            span.record("messaging.kafka.offset", offset);
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// A `process {topic}` span (CONSUMER): one message decided on by a
/// translator, a child of the trace in the message's headers.
pub(crate) fn process_span(message: &KafkaMessage<'_>, group: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "dcb.kafka.translate",
        "otel.name" = %format_args!("process {}", message.topic),
        "otel.kind" = "consumer",
        "messaging.system" = "kafka",
        "messaging.operation.type" = "process",
        "messaging.operation.name" = "process",
        "messaging.destination.name" = message.topic,
        "messaging.destination.partition.id" = %message.partition,
        "messaging.kafka.offset" = message.offset,
        "messaging.consumer.group.name" = group,
        "messaging.kafka.message.key" = tracing::field::Empty,
        topic = message.topic,
        partition = message.partition,
        offset = message.offset,
    );
    if !span.is_disabled() {
        if let Some(key) = message.key_str() {
            span.record("messaging.kafka.message.key", key);
        }
        dcb_core::trace::continue_from(&span, trace_context(message).as_ref());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_are_validated() {
        let context = context_from(Some(PARENT), Some(b"a=1,b=2")).unwrap();
        assert_eq!(context.tracestate.as_deref(), Some("a=1,b=2"));
        // A bad tracestate is dropped, the parent kept.
        let context = context_from(Some(PARENT), Some(b"a=\0")).unwrap();
        assert_eq!(context.tracestate, None);
        assert!(context_from(Some(b"00-xyz"), None).is_none());
        assert!(context_from(Some(&[0xff, 0xfe]), None).is_none());
        assert!(context_from(None, Some(b"a=1")).is_none());
    }

    #[test]
    fn writes_both_headers() {
        let context =
            TraceContext::new(std::str::from_utf8(PARENT).unwrap()).with_tracestate("k=v");
        let mut seen = Vec::new();
        each_header(Some(&context), |k, v| seen.push((k, v.to_vec())));
        assert_eq!(
            seen,
            vec![
                (HEADER_TRACEPARENT, PARENT.to_vec()),
                (HEADER_TRACESTATE, b"k=v".to_vec())
            ]
        );
        each_header(None, |_, _| panic!("no context, no header"));
    }
}
