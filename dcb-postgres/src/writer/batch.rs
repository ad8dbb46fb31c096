//! A batch's arguments: the requests of one group commit encoded as the
//! arrays `{schema}.append_batch_v2(...)` takes (see its migration step for
//! their meaning), and the call itself.

use std::collections::HashMap;

use dcb_core::{AppendCondition, EventRecord};

use crate::position::opt_to_db;
use crate::row::metadata_json;
use crate::sql;

/// A batch's arguments of `append_batch_v2`, as arrays (see migration step 4
/// for their meaning). Requests, events and items are numbered from 1.
#[derive(Default)]
pub(crate) struct Batch {
    /// Per probe (one per condition item and type of it): its request.
    pub(crate) c_request: Vec<i32>,
    /// Per probe: its request's `after` (0: none).
    pub(crate) c_after: Vec<i64>,
    /// Per probe: its item's first tag, the one `event_tags` is probed with.
    pub(crate) c_probe: Vec<Option<String>>,
    /// Per probe: one type of its item, or none for any type.
    pub(crate) c_type: Vec<Option<String>>,
    /// Per probe: all its item's tags (array literal) when it has more than
    /// one.
    pub(crate) c_tags: Vec<Option<String>>,
    r_after: Vec<i64>,
    r_last: Vec<i32>,
    e_request: Vec<i32>,
    e_type: Vec<String>,
    e_tags: Vec<String>,
    e_payload: Vec<Vec<u8>>,
    e_metadata: Vec<String>,
    e_id: Vec<uuid::Uuid>,
    d_request: Vec<i32>,
    d_event: Vec<i32>,
    u_request: Vec<i32>,
    u_event: Vec<i32>,
    u_other: Vec<i32>,
}

fn number(index: usize) -> i32 {
    i32::try_from(index + 1).unwrap_or(i32::MAX)
}

impl Batch {
    /// Encodes requests given as (events, condition), in order.
    pub(crate) fn from_parts(requests: &[(&[EventRecord], Option<&AppendCondition>)]) -> Batch {
        let mut batch = Batch::default();
        // Which requests (0-based) carry each event id, and which events
        // (0-based ordinals) carry each tag and type: the in-batch checks
        // below look up candidates instead of scanning every earlier event.
        let mut by_id: HashMap<uuid::Uuid, Vec<usize>> = HashMap::new();
        let mut by_tag: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut events: Vec<(usize, &EventRecord)> = Vec::new();
        for (index, (request_events, condition)) in requests.iter().enumerate() {
            let first = events.len();
            let after = opt_to_db(condition.and_then(|c| c.after));
            batch.r_after.push(after);
            if let Some(condition) = condition {
                let mut seen = Vec::new();
                for item in condition.fail_if_events_match.items() {
                    if seen.contains(&item) {
                        continue;
                    }
                    seen.push(item);
                    batch.push_item(index, after, item);
                }
                // The earlier events of this batch this condition matches:
                // per earlier request, its last one (the highest position).
                let mut last_match: HashMap<usize, usize> = HashMap::new();
                for item in &seen {
                    let candidates: Box<dyn Iterator<Item = usize>> =
                        if let Some(tag) = item.tags.first() {
                            Box::new(by_tag.get(tag.as_str()).into_iter().flatten().copied())
                        } else if !item.types.is_empty() {
                            Box::new(
                                item.types
                                    .iter()
                                    .filter_map(|t| by_type.get(t.as_str()))
                                    .flatten()
                                    .copied(),
                            )
                        } else {
                            Box::new(0..first)
                        };
                    for ordinal in candidates {
                        let (owner, event) = events[ordinal];
                        if item.matches(event.event_type.as_str(), &event.tags) {
                            let last = last_match.entry(owner).or_insert(ordinal);
                            *last = (*last).max(ordinal);
                        }
                    }
                }
                let mut matched: Vec<usize> = last_match.into_values().collect();
                matched.sort_unstable();
                for ordinal in matched {
                    batch.d_request.push(number(index));
                    batch.d_event.push(number(ordinal));
                }
            }
            for event in request_events.iter() {
                let ordinal = events.len();
                let id = event.metadata.event_id;
                let earlier = by_id.entry(id).or_default();
                for other in earlier.iter() {
                    batch.u_request.push(number(index));
                    batch.u_event.push(number(ordinal));
                    batch.u_other.push(number(*other));
                }
                earlier.push(index);
                batch.e_request.push(number(index));
                batch.e_type.push(event.event_type.as_str().to_string());
                batch
                    .e_tags
                    .push(sql::array_literal(event.tags.iter().map(|t| t.as_str())));
                batch.e_payload.push(event.payload.clone());
                batch.e_metadata.push(metadata_json(&event.metadata));
                batch.e_id.push(id);
                events.push((index, event));
            }
            // Indexed only after the request's own condition was resolved:
            // a condition is checked against earlier requests only.
            for (ordinal, (_, event)) in events.iter().enumerate().skip(first) {
                by_type
                    .entry(event.event_type.as_str())
                    .or_default()
                    .push(ordinal);
                let mut seen: Vec<&str> = Vec::new();
                for tag in &event.tags {
                    if !seen.contains(&tag.as_str()) {
                        seen.push(tag.as_str());
                        by_tag.entry(tag.as_str()).or_default().push(ordinal);
                    }
                }
            }
            batch
                .r_last
                .push(i32::try_from(events.len()).unwrap_or(i32::MAX));
        }
        batch
    }

    fn push_item(&mut self, request: usize, after: i64, item: &dcb_core::QueryItem) {
        for probe in sql::probes(item) {
            self.c_request.push(number(request));
            self.c_after.push(after);
            self.c_probe.push(probe.tag);
            self.c_type.push(probe.event_type);
            self.c_tags.push(probe.all_tags);
        }
    }
}

/// Calls `{schema}.append_batch_v2` with `batch`: one row per request,
/// `(outcome, first_position, last_position, duplicate)` with outcome 0
/// (appended), 1 (condition failed) or 2 (duplicate event id). Without
/// `check_ids`, an event id already stored fails the whole call with a
/// unique violation instead of outcome 2.
pub(crate) async fn call_batch(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    channel: &str,
    batch: &Batch,
    check_ids: bool,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT outcome, first_position, last_position, duplicate FROM {schema}.append_batch_v2(\
         $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    ))
    .bind(&batch.c_request)
    .bind(&batch.c_after)
    .bind(&batch.c_probe)
    .bind(&batch.c_type)
    .bind(&batch.c_tags)
    .bind(&batch.r_after)
    .bind(&batch.r_last)
    .bind(&batch.e_request)
    .bind(&batch.e_type)
    .bind(&batch.e_tags)
    .bind(&batch.e_payload)
    .bind(&batch.e_metadata)
    .bind(&batch.e_id)
    .bind(&batch.d_request)
    .bind(&batch.d_event)
    .bind(&batch.u_request)
    .bind(&batch.u_event)
    .bind(&batch.u_other)
    .bind(channel)
    .bind(check_ids)
    .fetch_all(conn)
    .await
}
