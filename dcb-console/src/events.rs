//! Reading the log for an operator: [`EventFilter`] (by type, tags,
//! position, correlation or causation id) and [`EventView`], an event as
//! the command prints it and the console shows it.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use dcb_core::{EventStore, Position, Query, QueryItem, ReadOptions, SequencedEvent, Tag};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::ops::Ops;
use crate::sql;

/// The most events one read returns.
pub const MAX_LIMIT: usize = 1000;

/// How many of the latest positions a search by correlation or causation id
/// walks: event metadata has no index, so the search is bounded.
pub const METADATA_SEARCH_WINDOW: u64 = 200_000;

/// Which events to read.
///
/// ```
/// use dcb_console::events::EventFilter;
/// use dcb_core::Tag;
/// let filter = EventFilter::new()
///     .event_type("CartItemAdded")
///     .tag(Tag::new("cart_id", 42))
///     .after(100)
///     .limit(20);
/// assert_eq!(filter.limit, 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// Any of these types (all types when empty).
    pub types: Vec<String>,
    /// All of these tags.
    pub tags: Vec<Tag>,
    /// Start past this position in the direction of travel (forwards: after
    /// it; backwards: before it).
    pub after: Option<u64>,
    /// At most this many (at most [`MAX_LIMIT`]).
    pub limit: usize,
    /// Newest first.
    pub backwards: bool,
    /// Only events with this correlation id (searches the last
    /// [`METADATA_SEARCH_WINDOW`] positions).
    pub correlation_id: Option<Uuid>,
    /// Only events with this causation id (same bound).
    pub causation_id: Option<Uuid>,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter {
            types: Vec::new(),
            tags: Vec::new(),
            after: None,
            limit: 100,
            backwards: false,
            correlation_id: None,
            causation_id: None,
        }
    }
}

impl EventFilter {
    /// The first 100 events of the log.
    pub fn new() -> Self {
        EventFilter::default()
    }

    /// Also events of `event_type`.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.types.push(event_type.into());
        self
    }

    /// Only events that also carry `tag`.
    pub fn tag(mut self, tag: Tag) -> Self {
        self.tags.push(tag);
        self
    }

    /// Past `position` in the direction of travel.
    pub fn after(mut self, position: u64) -> Self {
        self.after = Some(position);
        self
    }

    /// At most `n` events.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }

    /// Newest first.
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// The store query for the types and tags.
    pub fn query(&self) -> Query {
        if self.types.is_empty() && self.tags.is_empty() {
            return Query::all();
        }
        let mut item = QueryItem::new().tags(self.tags.iter().cloned());
        if !self.types.is_empty() {
            item = item.types(self.types.iter().cloned());
        }
        Query::from_items([item])
    }

    fn admits(&self, event: &EventView) -> bool {
        let type_ok = self.types.is_empty() || self.types.contains(&event.event_type);
        let tags_ok = self
            .tags
            .iter()
            .all(|t| event.tags.iter().any(|e| e == t.as_str()));
        let position_ok = match (self.after, self.backwards) {
            (None, _) => true,
            (Some(p), false) => event.position > p,
            (Some(p), true) => event.position < p,
        };
        type_ok && tags_ok && position_ok
    }
}

/// An event as an operator sees it: everything stored, the payload as JSON
/// when it is JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventView {
    /// Its position.
    pub position: u64,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Its type.
    pub event_type: String,
    /// Its tags, `key:value`.
    pub tags: Vec<String>,
    /// Its id.
    pub event_id: Uuid,
    /// The id shared by everything one request or message caused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the event or message that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The application's own metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_metadata: Option<serde_json::Value>,
    /// The payload, when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The payload, when it is text but not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    /// The payload in base64, when it is not text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl EventView {
    /// The view of a stored event.
    pub fn of(event: &SequencedEvent) -> EventView {
        let metadata = event.metadata();
        EventView::from_parts(
            event.position.0,
            event.recorded_at,
            event.event_type().as_str().to_owned(),
            event.tags().iter().map(|t| t.as_str().to_owned()).collect(),
            metadata.event_id,
            (
                metadata.correlation_id,
                metadata.causation_id,
                metadata.user.clone(),
            ),
            &event.record.payload,
        )
    }

    fn from_parts(
        position: u64,
        recorded_at: DateTime<Utc>,
        event_type: String,
        tags: Vec<String>,
        event_id: Uuid,
        (correlation_id, causation_id, user_metadata): (
            Option<Uuid>,
            Option<Uuid>,
            Option<serde_json::Value>,
        ),
        payload: &[u8],
    ) -> EventView {
        let mut view = EventView {
            position,
            recorded_at,
            event_type,
            tags,
            event_id,
            correlation_id,
            causation_id,
            user_metadata,
            payload: None,
            payload_text: None,
            payload_base64: None,
        };
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(json) => view.payload = Some(json),
            Err(_) => match std::str::from_utf8(payload) {
                Ok(text) => view.payload_text = Some(text.to_owned()),
                Err(_) => {
                    view.payload_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(payload))
                }
            },
        }
        view
    }

    fn from_row(row: &PgRow) -> Result<EventView, sqlx::Error> {
        let position: i64 = row.try_get("position")?;
        let metadata: serde_json::Value = row.try_get("metadata")?;
        let uuid_of = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<Uuid>().ok())
        };
        let payload: Vec<u8> = row.try_get("payload")?;
        Ok(EventView::from_parts(
            u64::try_from(position).unwrap_or(0),
            row.try_get("recorded_at")?,
            row.try_get("event_type")?,
            row.try_get("tags")?,
            row.try_get("event_id")?,
            (
                uuid_of("correlation_id"),
                uuid_of("causation_id"),
                metadata.get("user").cloned(),
            ),
            &payload,
        ))
    }

    /// The payload on one line, cut to about `max` characters.
    pub fn payload_line(&self, max: usize) -> String {
        let text = match (&self.payload, &self.payload_text, &self.payload_base64) {
            (Some(json), _, _) => json.to_string(),
            (_, Some(text), _) => text.replace(['\n', '\r'], " "),
            (_, _, Some(b64)) => format!("base64:{b64}"),
            _ => String::new(),
        };
        cut(&text, max)
    }

    /// The payload as a reader wants it: indented JSON, or the text, or
    /// base64.
    pub fn payload_pretty(&self) -> String {
        match (&self.payload, &self.payload_text, &self.payload_base64) {
            (Some(json), _, _) => serde_json::to_string_pretty(json).unwrap_or_default(),
            (_, Some(text), _) => text.clone(),
            (_, _, Some(b64)) => format!("(binary, base64)\n{b64}"),
            _ => String::new(),
        }
    }
}

/// `text` cut to `max` characters, with `…` when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Events read, with the head of the log when they were read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventPage {
    /// The head of the log.
    pub head: Option<u64>,
    /// The events, in the direction of travel.
    pub events: Vec<EventView>,
    /// Whether a search by correlation or causation id stopped at
    /// [`METADATA_SEARCH_WINDOW`] positions before the head.
    pub window_from: Option<u64>,
}

/// Reads the events `filter` selects.
///
/// # Errors
/// Store and database failures.
pub async fn read(ops: &Ops, filter: &EventFilter) -> Result<EventPage, crate::Error> {
    let limit = filter.limit.clamp(1, MAX_LIMIT);
    let metadata = match (filter.correlation_id, filter.causation_id) {
        (Some(id), _) => Some(("correlation_id", id)),
        (None, Some(id)) => Some(("causation_id", id)),
        (None, None) => None,
    };
    if let Some((key, id)) = metadata {
        return search_metadata(ops, filter, key, id, limit).await;
    }
    let options = if filter.backwards {
        ReadOptions::backwards()
    } else {
        ReadOptions::forwards()
    };
    let options = match filter.after {
        Some(p) => options.after(Position(p)),
        None => options,
    }
    .limit(limit);
    if filter.backwards && filter.after == Some(0) {
        // Nothing lies before the first position.
        let head = ops.store().head().await?;
        return Ok(EventPage {
            head: head.map(|p| p.0),
            events: Vec::new(),
            window_from: None,
        });
    }
    let result = ops.store().read(&filter.query(), options).await?;
    let head = result.head.map(|p| p.0);
    let events: Vec<SequencedEvent> = result.events.try_collect().await?;
    Ok(EventPage {
        head,
        events: events.iter().map(EventView::of).collect(),
        window_from: None,
    })
}

async fn search_metadata(
    ops: &Ops,
    filter: &EventFilter,
    key: &str,
    id: Uuid,
    limit: usize,
) -> Result<EventPage, crate::Error> {
    let head = ops.store().head().await?.map_or(0, |p| p.0);
    let from = head.saturating_sub(METADATA_SEARCH_WINDOW).max(1);
    let rows = sqlx::query(&sql::events_by_metadata(ops.schema()))
        .bind(key)
        .bind(id.to_string())
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(MAX_LIMIT * 10).unwrap_or(i64::MAX))
        .fetch_all(ops.pool())
        .await?;
    let mut events = rows
        .iter()
        .map(EventView::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    events.retain(|e| filter.admits(e));
    if filter.backwards {
        events.reverse();
    }
    events.truncate(limit);
    Ok(EventPage {
        head: Some(head),
        events,
        window_from: (from > 1).then_some(from),
    })
}

/// The event at `position`, if there is one.
///
/// # Errors
/// Store failures.
pub async fn at(ops: &Ops, position: u64) -> Result<Option<EventView>, crate::Error> {
    if position == 0 {
        return Ok(None);
    }
    let result = ops
        .store()
        .read(
            &Query::all(),
            ReadOptions::forwards().from(Position(position)).limit(1),
        )
        .await?;
    let events: Vec<SequencedEvent> = result.events.try_collect().await?;
    Ok(events
        .first()
        .filter(|e| e.position.0 == position)
        .map(EventView::of))
}

/// The event with id `id`, if there is one.
///
/// # Errors
/// Database failures.
pub async fn by_id(ops: &Ops, id: Uuid) -> Result<Option<EventView>, crate::Error> {
    let row = sqlx::query(&sql::event_by_id(ops.schema()))
        .bind(id)
        .fetch_optional(ops.pool())
        .await?;
    Ok(row.as_ref().map(EventView::from_row).transpose()?)
}

/// Events recorded in the last minute and the last five minutes (counted
/// among the latest 100,000 positions).
///
/// # Errors
/// Database failures.
pub async fn throughput(ops: &Ops, head: u64) -> Result<(u64, u64), crate::Error> {
    let from = head.saturating_sub(100_000);
    let (minute, five): (i64, i64) = sqlx::query_as(&sql::throughput(ops.schema()))
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .fetch_one(ops.pool())
        .await?;
    Ok((
        u64::try_from(minute).unwrap_or(0),
        u64::try_from(five).unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(payload: &[u8]) -> EventView {
        EventView::from_parts(
            7,
            Utc::now(),
            "T".into(),
            vec!["k:v".into()],
            Uuid::nil(),
            (None, None, None),
            payload,
        )
    }

    #[test]
    fn payloads_are_json_text_or_base64() {
        let json = view(br#"{"a":1}"#);
        assert_eq!(json.payload, Some(serde_json::json!({"a": 1})));
        assert_eq!(json.payload_pretty(), "{\n  \"a\": 1\n}");
        let text = view(b"plain\nwords");
        assert_eq!(text.payload_text.as_deref(), Some("plain\nwords"));
        assert_eq!(text.payload_line(80), "plain words");
        let binary = view(&[0xff, 0x00, 0x10]);
        assert_eq!(binary.payload_base64.as_deref(), Some("/wAQ"));
    }

    #[test]
    fn lines_are_cut_on_characters() {
        assert_eq!(cut("ééééé", 3), "ééé…");
        assert_eq!(cut("abc", 3), "abc");
    }

    #[test]
    fn a_filter_without_types_or_tags_reads_everything() {
        assert!(EventFilter::new().query().is_all());
        let tagged = EventFilter::new().tag(Tag::parse("cart_id:1").unwrap());
        assert!(!tagged.query().is_all());
        let e = view(b"{}");
        assert!(tagged.admits(&EventView {
            tags: vec!["cart_id:1".into()],
            ..e.clone()
        }));
        assert!(!tagged.admits(&e));
        assert!(!EventFilter::new().after(7).admits(&e));
        assert!(EventFilter::new().after(8).backwards().admits(&e));
    }
}
