//! Helpers of the work-queue tests (`mod queue_support;`): waiting for a
//! job's state and reading the events a job recorded.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use dcb_core::{EventStore, Query, QueryItem, ReadOptions, SequencedEvent, Tag};
use dcb_postgres::queue::{JobId, JobInfo, JobState, QueueAdmin};
use dcb_tests::read::read_all;

/// How long a job may take to reach a state before the test fails: generous,
/// so a loaded machine only makes a test slower, never red.
pub const WAIT: Duration = Duration::from_secs(60);

/// Waits (up to [`WAIT`]) until job `id` is in `state`, and returns it.
pub async fn wait_for_state(admin: &QueueAdmin, id: JobId, state: JobState) -> JobInfo {
    let until = Instant::now() + WAIT;
    loop {
        let job = admin.job(id).await.expect("read job").expect("job exists");
        if job.state == state {
            return job;
        }
        assert!(
            Instant::now() < until,
            "job never reached {state} within {WAIT:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The events of type `event_type` tagged with job `id`.
pub async fn job_events(
    store: &impl EventStore,
    event_type: &'static str,
    id: JobId,
) -> Vec<SequencedEvent> {
    let query = Query::from_items([QueryItem::new()
        .types([event_type])
        .tags([Tag::new("job", id)])]);
    let (_, events) = read_all(store, &query, ReadOptions::forwards()).await;
    events
}
