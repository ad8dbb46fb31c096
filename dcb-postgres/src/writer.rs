//! The writer: group commit of queued appends.
//!
//! Every `append` queues here. The writer takes every request waiting (up to
//! the batch size) and commits them with one autocommit call of
//! `{schema}.append_batch_v2(...)`, which locks the head row, checks each
//! request's condition against the stored events and against the batch's
//! earlier accepted requests, checks event ids, inserts the accepted events
//! and their tags, moves the head, notifies, and returns one outcome per
//! request. One batch is in flight at a time: while it runs, new requests
//! queue, and the next batch takes them all, so batches grow with the load
//! and one commit (one WAL flush) serves many appends. Positions are gapless
//! and in commit order because every batch assigns them under the head
//! lock, whichever process runs it.
//!
//! What happens when a call fails (a refused value, a lost reply) is in
//! [`commit`].

pub(crate) mod batch;
pub(crate) mod commit;
mod session;

use std::panic::AssertUnwindSafe;

use dcb_core::{AppendCondition, EventRecord, StoreError};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use commit::{Committer, Outcome, Part};
use session::Session;

/// What a store's writer did since the store started: see
/// [`PgEventStore::writer_stats`](crate::PgEventStore::writer_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Batches committed (one call of the batch function each, splits and
    /// retries not counted).
    pub batches: u64,
    /// Append requests in them.
    pub requests: u64,
    /// Times a batch was split because the database refused one of its
    /// values.
    pub splits: u64,
    /// Requests the database refused (each failed alone, as
    /// `InvalidRequest`).
    pub refused: u64,
    /// Calls whose reply was lost (the connection failed after sending).
    pub lost_replies: u64,
    /// Requests of such calls found committed.
    pub resolved_committed: u64,
    /// Requests of such calls found not appended.
    pub resolved_not_appended: u64,
    /// Requests whose outcome could not be found out in time.
    pub unknown: u64,
}

impl WriterStats {
    pub(crate) fn read(counters: &commit::Counters) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriterStats {
            batches: counters.batches.load(Relaxed),
            requests: counters.requests.load(Relaxed),
            splits: counters.splits.load(Relaxed),
            refused: counters.refused.load(Relaxed),
            lost_replies: counters.lost_replies.load(Relaxed),
            resolved_committed: counters.resolved_committed.load(Relaxed),
            resolved_not_appended: counters.resolved_not_appended.load(Relaxed),
            unknown: counters.unknown.load(Relaxed),
        }
    }
}

/// What the store sends the writer.
pub(crate) enum Message {
    /// Append these events.
    Append(Request),
    /// Commit what came before, refuse what comes after, stop.
    Shutdown,
}

/// One `append` call waiting for its outcome.
pub(crate) struct Request {
    pub(crate) events: Vec<EventRecord>,
    pub(crate) condition: Option<AppendCondition>,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Serves the queue until it closes or a shutdown message arrives.
pub(crate) async fn run(
    committer: Committer,
    max_batch_size: usize,
    mut receiver: mpsc::Receiver<Message>,
) {
    let mut session: Option<Session> = None;
    let mut buffer = Vec::with_capacity(max_batch_size);
    loop {
        if receiver.recv_many(&mut buffer, max_batch_size).await == 0 {
            break;
        }
        let mut stop = false;
        let mut requests = Vec::with_capacity(buffer.len());
        for message in buffer.drain(..) {
            match message {
                Message::Append(request) if !stop => requests.push(request),
                Message::Append(request) => {
                    let _ = request.reply.send(Err(StoreError::ShutDown));
                }
                Message::Shutdown => stop = true,
            }
        }
        if !requests.is_empty() {
            commit_batch(&committer, &mut session, requests).await;
        }
        if stop {
            receiver.close();
            while let Some(message) = receiver.recv().await {
                if let Message::Append(request) = message {
                    let _ = request.reply.send(Err(StoreError::ShutDown));
                }
            }
            break;
        }
    }
    if let Some(session) = session.take() {
        session.close().await;
    }
    tracing::debug!(schema = %committer.schema, "event store writer stopped");
}

/// Commits one batch and answers its requests.
async fn commit_batch(
    committer: &Committer,
    session: &mut Option<Session>,
    requests: Vec<Request>,
) {
    let events: usize = requests.iter().map(|r| r.events.len()).sum();
    let span = tracing::debug_span!(
        "dcb.pg.append_batch",
        schema = %committer.schema,
        requests = requests.len(),
        events,
        accepted = tracing::field::Empty,
        head = tracing::field::Empty,
    );
    async {
        let parts: Vec<Part<'_>> = requests
            .iter()
            .map(|r| Part {
                events: &r.events,
                condition: r.condition.as_ref(),
            })
            .collect();
        // A panic must not take the writer down with it: its requests are
        // told, and the next batch starts on a fresh connection.
        let outcomes = match AssertUnwindSafe(committer.commit(session, &parts))
            .catch_unwind()
            .await
        {
            Ok(outcomes) => outcomes,
            Err(_) => {
                tracing::error!("an append batch panicked");
                *session = None;
                parts
                    .iter()
                    .map(|_| {
                        Err(StoreError::OutcomeUnknown {
                            source: "the store's writer panicked while committing this append \
                                     (see the logs)"
                                .into(),
                        })
                    })
                    .collect()
            }
        };
        drop(parts);
        crate::metrics::batch_committed(requests.len());
        let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
        tracing::Span::current().record("accepted", accepted);
        if let Some(last) = outcomes.iter().rev().find_map(|o| o.as_ref().ok()) {
            tracing::Span::current().record("head", last.last.get());
        }
        for (request, outcome) in requests.into_iter().zip(outcomes) {
            let _ = request.reply.send(outcome);
        }
    }
    .instrument(span)
    .await
}
