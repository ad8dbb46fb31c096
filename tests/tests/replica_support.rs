//! Shared pieces of the standby and failover tests: a listener that records
//! what it is given, and the checks of a log against what appenders were
//! told. Included with `#[path]`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dcb_core::{BoxError, Listener, Query, Sequenced};
use sqlx::PgPool;
use uuid::Uuid;

#[path = "listener_support.rs"]
mod listener_support;

pub use listener_support::{tick, ticks_only, TestEvent};

/// What a [`Recorder`] saw: `(position, event id)` in the order handed.
pub type Seen = Arc<Mutex<Vec<(u64, Uuid)>>>;

/// An at-least-once listener that records `(position, event id)` of every
/// event it is handed, in the order it is handed them.
pub struct Recorder {
    pub id: String,
    pub seen: Seen,
}

impl Recorder {
    pub fn new(id: &str) -> (Self, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Recorder {
                id: id.to_owned(),
                seen: seen.clone(),
            },
            seen,
        )
    }
}

#[async_trait]
impl Listener for Recorder {
    type Event = TestEvent;

    fn id(&self) -> &str {
        &self.id
    }

    fn query(&self) -> Query {
        ticks_only()
    }

    async fn handle(&self, event: Sequenced<TestEvent>) -> Result<(), BoxError> {
        self.seen
            .lock()
            .unwrap()
            .push((event.position.0, event.event_id()));
        Ok(())
    }
}

/// The log on `pool`: `(position, event id)` in position order.
pub async fn log(pool: &PgPool) -> Vec<(u64, Uuid)> {
    let rows: Vec<(i64, Uuid)> =
        sqlx::query_as("SELECT position, event_id FROM dcb.events ORDER BY position")
            .fetch_all(pool)
            .await
            .expect("read the log");
    rows.into_iter().map(|(p, id)| (p as u64, id)).collect()
}

/// Asserts that `log` holds positions 1..=n without a gap, that every
/// acknowledged event is in it at the position its append was told, and
/// returns where each event id is.
pub fn assert_gapless_with(
    log: &[(u64, Uuid)],
    acknowledged: &[(u64, Uuid)],
) -> HashMap<Uuid, u64> {
    for (i, (position, _)) in log.iter().enumerate() {
        assert_eq!(
            *position,
            i as u64 + 1,
            "the log has a gap or a duplicate position before {position}"
        );
    }
    let at: HashMap<Uuid, u64> = log.iter().map(|(p, id)| (*id, *p)).collect();
    assert_eq!(at.len(), log.len(), "an event id is in the log twice");
    for (position, id) in acknowledged {
        assert_eq!(
            at.get(id),
            Some(position),
            "acknowledged event {id} at {position} is not where its append was told"
        );
    }
    at
}

/// Asserts that `seen` is `log` exactly (every event once, in position
/// order), with a short message saying what differs.
pub fn assert_seen_once_in_order(seen: &[(u64, Uuid)], log: &[(u64, Uuid)]) {
    if seen == log {
        return;
    }
    let logged: std::collections::HashSet<_> = log.iter().collect();
    let mut counts: HashMap<&(u64, Uuid), usize> = HashMap::new();
    for event in seen {
        *counts.entry(event).or_default() += 1;
    }
    let missing: Vec<u64> = log
        .iter()
        .filter(|e| !counts.contains_key(e))
        .map(|(p, _)| *p)
        .collect();
    let twice: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(e, _)| e.0)
        .collect();
    let foreign = seen.iter().filter(|e| !logged.contains(e)).count();
    let disorder = seen.windows(2).position(|w| w[1].0 <= w[0].0);
    panic!(
        "the listener must see every event of the log once, in order: {} of {} events seen; \
         {} missing (first: {:?}), {} seen more than once (first: {:?}), {foreign} not in the \
         log, first out-of-order delivery at index {disorder:?}",
        seen.len(),
        log.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)],
    );
}
