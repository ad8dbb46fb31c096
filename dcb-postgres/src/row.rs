//! Converts between stored rows and [`SequencedEvent`]s.

use chrono::{DateTime, Utc};
use dcb_core::trace::TraceContext;
use dcb_core::{EventMetadata, EventRecord, EventType, SequencedEvent, StoreError, Tag};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::error::{backend, store_error};

/// The metadata column: everything but the event id (a column of its own).
/// Every field is optional, so rows written before a field existed still
/// decode.
#[derive(Deserialize, Default)]
struct StoredMetadata {
    #[serde(default)]
    correlation_id: Option<uuid::Uuid>,
    #[serde(default)]
    causation_id: Option<uuid::Uuid>,
    #[serde(default)]
    user: Option<serde_json::Value>,
    #[serde(default)]
    trace: Option<TraceContext>,
}

/// [`StoredMetadata`] as written, borrowed from the event's metadata.
#[derive(Serialize)]
struct StoredMetadataRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a TraceContext>,
}

/// The `metadata` column's JSON text for `metadata`.
pub(crate) fn metadata_json(metadata: &EventMetadata) -> String {
    let stored = StoredMetadataRef {
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        user: metadata.user.as_ref(),
        trace: metadata.trace.as_ref(),
    };
    serde_json::to_string(&stored).unwrap_or_else(|_| "{}".to_string())
}

/// The columns of [`crate::sql::EVENT_COLUMNS`] from column `at` on, as an
/// event; `None` when they are NULL (a first page that matched nothing).
pub(crate) fn to_event(row: &PgRow, at: usize) -> Result<Option<SequencedEvent>, StoreError> {
    let decode = |e| store_error("decode an event row", e);
    // The columns' types are the events table's, fixed by the migrations,
    // so the per-value comparison of declared types is skipped (it cost
    // more than decoding most values); a value that does not decode still
    // fails.
    let Some(position) = row
        .try_get_unchecked::<Option<i64>, _>(at)
        .map_err(decode)?
    else {
        return Ok(None);
    };
    let event_type: String = row.try_get_unchecked(at + 1).map_err(decode)?;
    let tags: Vec<String> = row.try_get_unchecked(at + 2).map_err(decode)?;
    let payload: Vec<u8> = row.try_get_unchecked(at + 3).map_err(decode)?;
    let metadata: sqlx::types::Json<StoredMetadata> =
        row.try_get_unchecked(at + 4).map_err(decode)?;
    let event_id: uuid::Uuid = row.try_get_unchecked(at + 5).map_err(decode)?;
    let recorded_at: DateTime<Utc> = row.try_get_unchecked(at + 6).map_err(decode)?;
    let tags = tags
        .into_iter()
        .map(Tag::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| backend("decode an event row", format!("position {position}: {e}")))?;
    let metadata = metadata.0;
    Ok(Some(SequencedEvent {
        position: crate::position::from_db_or_zero(position),
        recorded_at,
        record: EventRecord {
            event_type: EventType::new(event_type),
            tags,
            payload,
            metadata: EventMetadata {
                event_id,
                correlation_id: metadata.correlation_id,
                causation_id: metadata.causation_id,
                user: metadata.user,
                trace: metadata.trace,
            },
        },
    }))
}
