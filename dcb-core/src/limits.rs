//! What a store can keep: limits on the texts of events and queries, checked
//! by every backend before anything is sent, so that one caller's value that
//! the database would refuse fails that caller only, with a message naming
//! the field, and never the batch of appends or reads it would have shared.
//!
//! The limits are PostgreSQL's, applied to every backend alike so that a test
//! against the in-memory store fails the same way production would:
//! - no NUL character in any text (PostgreSQL's `text` cannot hold one, and
//!   `jsonb` refuses the `\u0000` escape);
//! - tags and event types short enough for a B-tree index row (an index
//!   entry must fit in about a third of a page, ~2.7 KB).

use crate::event::EventRecord;
use crate::query::Query;
use crate::store::StoreError;
use crate::tag::{EventType, Tag};
use crate::trace::{TraceContext, MAX_TRACEPARENT_BYTES, MAX_TRACESTATE_BYTES};

/// The longest tag, `key:value`, in bytes.
pub const MAX_TAG_BYTES: usize = 1024;
/// The longest event type name, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// The most tags one event may carry.
pub const MAX_TAGS_PER_EVENT: usize = 256;

/// Checks that every text of `record` can be stored.
///
/// # Errors
/// [`StoreError::InvalidRequest`] naming the field and the limit.
///
/// ```
/// use dcb_core::{limits, EventRecord, Tag};
/// let ok = EventRecord::new("Opened", [Tag::new("account", "a1")], b"{}".to_vec());
/// assert!(limits::check_record(&ok).is_ok());
/// let bad = EventRecord::new("Opened", [Tag::new("account", "a\0b")], b"{}".to_vec());
/// let error = limits::check_record(&bad).unwrap_err().to_string();
/// assert!(error.contains("NUL"), "{error}");
/// ```
pub fn check_record(record: &EventRecord) -> Result<(), StoreError> {
    check_type(&record.event_type, "event type")?;
    if record.tags.len() > MAX_TAGS_PER_EVENT {
        return Err(invalid(format!(
            "event of type {:?} carries {} tags; at most {MAX_TAGS_PER_EVENT} are allowed",
            record.event_type.as_str(),
            record.tags.len()
        )));
    }
    for tag in &record.tags {
        check_tag(tag, "tag")?;
    }
    if let Some(user) = &record.metadata.user {
        if let Some(path) = nul_in_json(user, "metadata.user") {
            return Err(invalid(format!(
                "{path} of an event of type {:?} contains a NUL character, which the store \
                 cannot keep",
                record.event_type.as_str()
            )));
        }
    }
    if let Some(trace) = &record.metadata.trace {
        check_trace(trace, record.event_type.as_str())?;
    }
    Ok(())
}

/// A trace context is W3C text: printable ASCII of bounded length.
fn check_trace(trace: &TraceContext, event_type: &str) -> Result<(), StoreError> {
    let fields = [
        (
            "traceparent",
            Some(&trace.traceparent),
            MAX_TRACEPARENT_BYTES,
        ),
        (
            "tracestate",
            trace.tracestate.as_ref(),
            MAX_TRACESTATE_BYTES,
        ),
    ];
    for (name, value, max) in fields {
        let Some(value) = value else { continue };
        if value.len() > max || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(invalid(format!(
                "metadata.trace.{name} of an event of type {event_type:?} is not a W3C trace \
                 context value (printable ASCII, at most {max} bytes)"
            )));
        }
    }
    Ok(())
}

/// Checks every record of an append.
///
/// # Errors
/// See [`check_record`]; the message says which event of the append.
pub fn check_records(records: &[EventRecord]) -> Result<(), StoreError> {
    for (index, record) in records.iter().enumerate() {
        check_record(record).map_err(|e| match e {
            StoreError::InvalidRequest(message) if records.len() > 1 => {
                StoreError::InvalidRequest(format!("event {} of the append: {message}", index + 1))
            }
            other => other,
        })?;
    }
    Ok(())
}

/// Checks the types and tags of a query (of a read or an append condition).
///
/// # Errors
/// [`StoreError::InvalidRequest`] naming the value.
pub fn check_query(query: &Query) -> Result<(), StoreError> {
    for item in query.items() {
        for event_type in &item.types {
            check_type(event_type, "query type")?;
        }
        for tag in &item.tags {
            check_tag(tag, "query tag")?;
        }
    }
    Ok(())
}

fn check_type(event_type: &EventType, what: &str) -> Result<(), StoreError> {
    let name = event_type.as_str();
    if name.is_empty() {
        return Err(invalid(format!("the {what} is empty")));
    }
    if name.len() > MAX_EVENT_TYPE_BYTES {
        return Err(invalid(format!(
            "the {what} {:?}... is {} bytes long; at most {MAX_EVENT_TYPE_BYTES} are allowed",
            preview(name),
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(invalid(format!(
            "the {what} {:?} contains a NUL character, which the store cannot keep",
            preview(name)
        )));
    }
    Ok(())
}

fn check_tag(tag: &Tag, what: &str) -> Result<(), StoreError> {
    let text = tag.as_str();
    if text.len() > MAX_TAG_BYTES {
        return Err(invalid(format!(
            "the {what} {:?}... is {} bytes long; at most {MAX_TAG_BYTES} are allowed",
            preview(text),
            text.len()
        )));
    }
    if text.contains('\0') {
        return Err(invalid(format!(
            "the {what} {:?} contains a NUL character, which the store cannot keep",
            preview(text)
        )));
    }
    Ok(())
}

/// The JSON path of the first string or key holding a NUL, if any.
fn nul_in_json(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in_json(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(format!("a key of {path}"))
            } else {
                nul_in_json(v, &format!("{path}.{k}"))
            }
        }),
        _ => None,
    }
}

/// The first characters of `text`, for messages about oversized values.
fn preview(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn invalid(message: String) -> StoreError {
    StoreError::InvalidRequest(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::QueryItem;

    fn record(event_type: &str, tags: Vec<Tag>) -> EventRecord {
        EventRecord::new(EventType::new(event_type), tags, b"{}".to_vec())
    }

    #[test]
    fn refuses_what_postgres_cannot_store_and_names_it() {
        let nul_tag = record("A", vec![Tag::new("k", "a\0b")]);
        assert!(check_record(&nul_tag).is_err());
        let long_tag = record("A", vec![Tag::new("k", "x".repeat(MAX_TAG_BYTES))]);
        let message = check_record(&long_tag).unwrap_err().to_string();
        assert!(message.contains("bytes long"), "{message}");
        assert!(check_record(&record("", vec![])).is_err());
        assert!(check_record(&record("A\0", vec![])).is_err());
        assert!(check_record(&record(&"T".repeat(300), vec![])).is_err());
        let many = record(
            "A",
            (0..=MAX_TAGS_PER_EVENT).map(|i| Tag::new("k", i)).collect(),
        );
        assert!(check_record(&many).is_err());

        let mut meta = record("A", vec![]);
        meta.metadata.user = Some(serde_json::json!({"who": {"names": ["ok", "b\u{0}d"]}}));
        let message = check_record(&meta).unwrap_err().to_string();
        assert!(message.contains("metadata.user.who.names[1]"), "{message}");
        let mut key = record("A", vec![]);
        key.metadata.user = Some(serde_json::json!({"a\u{0}": 1}));
        assert!(check_record(&key).is_err());

        let fine = record("A", vec![Tag::new("k", "é ✓ \u{1}"), Tag::new("x", "")]);
        assert!(check_record(&fine).is_ok());

        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut traced = record("A", vec![]);
        traced.metadata.trace = Some(TraceContext::new(parent).with_tracestate("k=v"));
        assert!(check_record(&traced).is_ok());
        let mut nul = record("A", vec![]);
        nul.metadata.trace = Some(TraceContext::new(parent).with_tracestate("k=\0"));
        let message = check_record(&nul).unwrap_err().to_string();
        assert!(message.contains("metadata.trace.tracestate"), "{message}");
        let mut long = record("A", vec![]);
        long.metadata.trace = Some(TraceContext::new("0".repeat(MAX_TRACEPARENT_BYTES + 1)));
        assert!(check_record(&long).is_err());
    }

    #[test]
    fn names_the_event_of_an_append() {
        let records = vec![record("A", vec![]), record("B\0", vec![])];
        let message = check_records(&records).unwrap_err().to_string();
        assert!(message.contains("event 2 of the append"), "{message}");
    }

    #[test]
    fn checks_queries() {
        let bad = Query::from_items([QueryItem::new().tags([Tag::new("k", "\0")])]);
        assert!(check_query(&bad).is_err());
        assert!(check_query(&Query::types(["A\0"])).is_err());
        assert!(check_query(&Query::all()).is_ok());
    }
}
