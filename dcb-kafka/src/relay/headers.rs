//! What the relay publishes for one event: key, value and headers.

use dcb_core::SequencedEvent;

use super::Route;
use crate::OutgoingMessage;

/// The header carrying the event id (UUID, text).
pub const HEADER_EVENT_ID: &str = "dcb-event-id";
/// The header carrying the event type.
pub const HEADER_EVENT_TYPE: &str = "dcb-event-type";
/// The header carrying the event's position (decimal).
pub const HEADER_POSITION: &str = "dcb-position";
/// The header carrying the event's tags (a JSON array of `key:value`).
pub const HEADER_TAGS: &str = "dcb-tags";
/// CloudEvents (Kafka binary mode): the spec version, `1.0`.
pub const HEADER_CE_SPECVERSION: &str = "ce_specversion";
/// CloudEvents: the event id (the dcb event id).
pub const HEADER_CE_ID: &str = "ce_id";
/// CloudEvents: the event type (the dcb event type).
pub const HEADER_CE_TYPE: &str = "ce_type";
/// CloudEvents: the source given to [`EventRelay::cloud_events`](crate::EventRelay::cloud_events).
pub const HEADER_CE_SOURCE: &str = "ce_source";
/// CloudEvents: when the store recorded the event (RFC 3339, UTC).
pub const HEADER_CE_TIME: &str = "ce_time";

/// The message key of `event` on a route keyed by `key_tag`.
pub(crate) fn key<'e>(key_tag: Option<&str>, event: &'e SequencedEvent) -> Option<&'e str> {
    let key_tag = key_tag?;
    event
        .record
        .tags
        .iter()
        .find(|t| t.key() == key_tag)
        .map(|t| t.value())
}

/// Calls `header` with each header of `event`, in order (`scratch` is
/// working space, reused from one event to the next).
pub(crate) fn each_header(
    cloud_events: Option<&str>,
    event: &SequencedEvent,
    scratch: &mut Vec<u8>,
    mut header: impl FnMut(&'static str, &[u8]),
) {
    let mut id = uuid::Uuid::encode_buffer();
    let id = event
        .record
        .metadata
        .event_id
        .hyphenated()
        .encode_lower(&mut id);
    let event_type = event.record.event_type.as_str();
    header(HEADER_EVENT_ID, id.as_bytes());
    header(HEADER_EVENT_TYPE, event_type.as_bytes());
    let mut position = [0u8; 20];
    let digits = {
        use std::io::Write;
        let mut rest = &mut position[..];
        let _ = write!(rest, "{}", event.position.0);
        20 - rest.len()
    };
    header(HEADER_POSITION, &position[..digits]);
    scratch.clear();
    let tags = event.record.tags.iter().map(|t| t.as_str());
    let written =
        serde::Serializer::collect_seq(&mut serde_json::Serializer::new(&mut *scratch), tags);
    if written.is_err() {
        scratch.clear();
        scratch.extend_from_slice(b"[]");
    }
    header(HEADER_TAGS, scratch);
    if let Some(source) = cloud_events {
        header(HEADER_CE_SPECVERSION, b"1.0");
        header(HEADER_CE_ID, id.as_bytes());
        header(HEADER_CE_TYPE, event_type.as_bytes());
        header(HEADER_CE_SOURCE, source.as_bytes());
        let time = event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        header(HEADER_CE_TIME, time.as_bytes());
    }
}

/// The whole message, as an [`OutgoingMessage`] (with the trace context the
/// event was appended in: the relay itself sends that of its send span).
pub(crate) fn outgoing(
    route: &Route,
    default_key_tag: Option<&str>,
    cloud_events: Option<&str>,
    event: &SequencedEvent,
) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(&route.topic).payload(event.record.payload.clone());
    if let Some(k) = key(route.key_tag.as_deref().or(default_key_tag), event) {
        message = message.key(k);
    }
    let mut add = |name: &str, value: &[u8]| {
        message.headers.push((name.to_owned(), value.to_vec()));
    };
    each_header(cloud_events, event, &mut Vec::new(), &mut add);
    crate::trace::each_header(event.record.metadata.trace.as_ref(), &mut add);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::{EventMetadata, EventRecord, EventType, Position, Query, Tag};

    fn event() -> SequencedEvent {
        SequencedEvent {
            position: Position(7),
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, 5_000).unwrap(),
            record: EventRecord {
                event_type: EventType::new("ItemAdded"),
                tags: vec![Tag::new("cart_id", "c1"), Tag::new("sku", "a:b")],
                payload: b"{}".to_vec(),
                metadata: EventMetadata::new(),
            },
        }
    }

    fn header(m: &OutgoingMessage, name: &str) -> Option<String> {
        m.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
    }

    #[test]
    fn key_payload_and_dcb_headers() {
        let e = event();
        let route = Route::new(Query::all(), "t");
        let m = outgoing(&route, Some("cart_id"), None, &e);
        assert_eq!(m.topic, "t");
        assert_eq!(m.key.as_deref(), Some(&b"c1"[..]));
        assert_eq!(m.payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(header(&m, HEADER_POSITION).as_deref(), Some("7"));
        assert_eq!(header(&m, HEADER_EVENT_TYPE).as_deref(), Some("ItemAdded"));
        assert_eq!(
            header(&m, HEADER_TAGS).as_deref(),
            Some(r#"["cart_id:c1","sku:a:b"]"#)
        );
        assert_eq!(
            header(&m, HEADER_EVENT_ID),
            Some(e.record.metadata.event_id.to_string())
        );
        assert_eq!(m.headers.len(), 4, "no CloudEvents headers unless asked");
        // The route's own key tag wins; a missing tag means no key.
        let m = outgoing(&route.clone().key_tag("sku"), Some("cart_id"), None, &e);
        assert_eq!(m.key.as_deref(), Some(&b"a:b"[..]));
        assert_eq!(outgoing(&route, Some("none"), None, &e).key, None);
    }

    #[test]
    fn cloud_events_binary_mode_headers() {
        let e = event();
        let m = outgoing(&Route::new(Query::all(), "t"), None, Some("urn:test"), &e);
        assert_eq!(header(&m, HEADER_CE_SPECVERSION).as_deref(), Some("1.0"));
        assert_eq!(
            header(&m, HEADER_CE_ID),
            Some(e.record.metadata.event_id.to_string())
        );
        assert_eq!(header(&m, HEADER_CE_TYPE).as_deref(), Some("ItemAdded"));
        assert_eq!(header(&m, HEADER_CE_SOURCE).as_deref(), Some("urn:test"));
        assert_eq!(
            header(&m, HEADER_CE_TIME).as_deref(),
            Some("2023-11-14T22:13:20.000005Z")
        );
    }
}
