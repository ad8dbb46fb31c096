//! Test helper for `pg_crash`: appends batches to the store at
//! `DATABASE_URL` forever, from several tasks, and prints one line per
//! successful append: `OK <batch> <size> <first> <last> <event ids, comma
//! separated>`. The test kills it at a random moment.
//!
//! Each batch's events carry `batch:<uuid>` and `size:<n>` tags, so a checker
//! can tell whether a batch is complete. Some appends carry conditions that
//! may fail (they print `CONFLICT <batch>`).

use std::io::Write;

use dcb_core::{AppendCondition, EventMetadata, EventRecord, EventStore, Query, StoreError, Tag};
use dcb_postgres::PgEventStore;

const TASKS: usize = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the database to append to");
    let store = PgEventStore::connect(&url).await.expect("connect");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(
            async move { append_forever(store, task).await },
        ));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn append_forever(store: PgEventStore, task: usize) {
    loop {
        let batch = uuid::Uuid::new_v4();
        let size = 1 + fastrand::usize(0..5);
        let slot = Tag::new("slot", fastrand::u8(0..4));
        let events: Vec<EventRecord> = (0..size)
            .map(|i| EventRecord {
                event_type: "Chunk".into(),
                tags: vec![
                    Tag::new("batch", batch),
                    Tag::new("size", size),
                    slot.clone(),
                    Tag::new("task", task),
                ],
                payload: format!("{{\"index\":{i}}}").into_bytes(),
                metadata: EventMetadata::new(),
            })
            .collect();
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.metadata.event_id.to_string())
            .collect();
        let condition = match fastrand::u8(0..3) {
            0 => None,
            // Always holds: the batch is new.
            1 => Some(AppendCondition::never_matched(Query::tags([Tag::new(
                "batch", batch,
            )]))),
            // Fails when another task wrote the slot since we looked.
            _ => {
                let head = match store.head().await {
                    Ok(head) => head,
                    Err(e) => {
                        eprintln!("head failed: {e}");
                        continue;
                    }
                };
                tokio::task::yield_now().await;
                Some(AppendCondition::not_after(
                    Query::tags([slot.clone()]),
                    head,
                ))
            }
        };
        match store.append(events, condition).await {
            Ok(appended) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "OK {batch} {size} {} {} {}",
                    appended.first,
                    appended.last,
                    ids.join(",")
                );
                let _ = out.flush();
            }
            Err(StoreError::ConditionFailed { .. }) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "CONFLICT {batch}");
                let _ = out.flush();
            }
            Err(e) => eprintln!("append failed: {e}"),
        }
    }
}
