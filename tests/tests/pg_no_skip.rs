//! A reader tailing the log never skips an event: 32 writers over several
//! store instances append with random delays between reading and appending
//! while a reader follows the log from 0 with `read(all, after(last))`. It
//! must see every committed position exactly once, in order, no gaps.

use std::time::{Duration, Instant};

use dcb_core::{
    AppendCondition, EventMetadata, EventRecord, EventStore, Position, Query, ReadOptions, Tag,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use dcb_tests::instances::instances;
use futures::TryStreamExt;

const STORES: usize = 4;
const WRITERS: usize = 32;
const APPENDS_PER_WRITER: usize = 40;

fn event(writer: usize, n: usize) -> EventRecord {
    EventRecord {
        event_type: "Ticked".into(),
        tags: vec![Tag::new("writer", writer)],
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        metadata: EventMetadata::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_committed_event_once_in_order() {
    let db = TestDatabase::create().await;
    let stores = instances(&db, STORES, 8).await;
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = stores[writer % STORES].clone();
        writers.push(tokio::spawn(async move {
            let own = Query::tags([Tag::new("writer", writer)]);
            let mut committed = 0u64;
            for n in 0..APPENDS_PER_WRITER {
                let head = store.head().await.unwrap();
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
                let size = 1 + fastrand::usize(0..3);
                let events = (0..size).map(|i| event(writer, n * 10 + i)).collect();
                // Half conditional (on the writer's own boundary, which only
                // it appends to, so they pass), half unconditional.
                let condition = (n % 2 == 0).then(|| AppendCondition::not_after(own.clone(), head));
                let appended = store.append(events, condition).await.unwrap();
                committed += appended.len() as u64;
            }
            committed
        }));
    }

    // The reader: its own store instance, tailing from the start until it
    // has seen everything the writers committed (told once they are done).
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<u64>);
    let reader_store = PgEventStore::connect(db.url()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut last: Option<Position> = None;
        let mut seen = 0u64;
        let mut reads = 0u64;
        loop {
            let result = reader_store
                .read(
                    &Query::all(),
                    ReadOptions::forwards().after_opt(last).limit(500),
                )
                .await
                .unwrap();
            reads += 1;
            let events: Vec<_> = result.events.try_collect().await.unwrap();
            for e in &events {
                let expected = last.map_or(1, |p| p.0 + 1);
                assert_eq!(
                    e.position.0, expected,
                    "the reader skipped or repeated a position"
                );
                last = Some(e.position);
                seen += 1;
            }
            if let Some(total) = *done_rx.borrow() {
                if seen >= total {
                    break;
                }
            }
            if events.is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        reader_store.shutdown().await;
        (seen, reads, last)
    });

    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    done_tx.send_replace(Some(committed));
    let (seen, reads, last) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader caught up")
        .unwrap();
    eprintln!(
        "{WRITERS} writers over {STORES} stores committed {committed} events; the reader saw \
         {seen} in {reads} reads, {:?}",
        started.elapsed()
    );
    assert_eq!(seen, committed);
    assert_eq!(last, Some(Position(committed)));
    assert_eq!(stores[0].head().await.unwrap(), Some(Position(committed)));
    for store in &stores {
        store.shutdown().await;
    }
    db.cleanup().await;
}
