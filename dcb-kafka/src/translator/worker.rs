//! The consuming loop: messages of one partition with different keys are
//! decided concurrently, each key's messages one after the other; a
//! partition's offset is stored up to its lowest unfinished message.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dcb_core::DecisionMaker;
use dcb_postgres::PgEventStore;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::broker_health::{is_all_brokers_down, BrokerHealth, ErrorLog, RESET_CHECK_IDLE};
use super::decide::{DynTranslator, Outcome};
use super::runner::Counters;
use crate::error::is_database_unavailable;
use crate::message::{DeadKind, KafkaMessage};
use crate::{sql, Backoff};

/// What every message's task needs.
pub(super) struct Context {
    pub(super) maker: DecisionMaker<PgEventStore>,
    pub(super) pool: sqlx::PgPool,
    pub(super) schema: String,
    pub(super) group_id: String,
    pub(super) backoff: Backoff,
    pub(super) dead_after: u32,
    pub(super) counters: Arc<Counters>,
    /// Decisions take it shared; a decision the database refused before is
    /// tried again holding it alone, so that its next attempt shares no
    /// append batch with this runner's other decisions: the store may send
    /// concurrent appends to the database together, and a refusal caused by
    /// a neighbour's data must not count against an innocent message.
    pub(super) isolation: tokio::sync::RwLock<()>,
}

/// The messages decided one after the other: one key of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Lane {
    topic: String,
    partition: i32,
    key: Option<Vec<u8>>,
}

impl Lane {
    fn of(message: &OwnedMessage) -> Self {
        Lane {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            key: message.key().map(<[u8]>::to_vec),
        }
    }
}

/// The offsets of one partition held by this instance.
#[derive(Default)]
struct PartitionOffsets {
    /// Received and not finished.
    unfinished: BTreeSet<i64>,
    /// The highest offset received.
    highest: Option<i64>,
    /// The last offset stored as processed (everything up to it finished).
    stored: Option<i64>,
}

impl PartitionOffsets {
    fn received(&mut self, offset: i64) {
        if self.highest.is_some_and(|h| offset <= h) {
            // Read again from an earlier offset (a seek, a rewind, a
            // rebalance): what was stored or held beyond it no longer says
            // anything (those messages come again).
            self.stored = None;
            self.unfinished.retain(|o| *o < offset);
        }
        self.highest = Some(offset);
        self.unfinished.insert(offset);
    }

    /// Marks `offset` finished; the offset to store as processed, if it
    /// moved.
    fn finished(&mut self, offset: i64) -> Option<i64> {
        self.unfinished.remove(&offset);
        let through = match self.unfinished.first() {
            Some(lowest) => lowest - 1,
            None => self.highest?,
        };
        if through < 0 || self.stored.is_some_and(|s| s >= through) {
            return None;
        }
        self.stored = Some(through);
        Some(through)
    }
}

/// A message's task ended: (the message, whether it finished; false when
/// shutdown interrupted its retries).
type Done = (OwnedMessage, bool);

pub(super) struct Worker {
    consumer: Arc<StreamConsumer>,
    health: BrokerHealth,
    translators: HashMap<String, Arc<dyn DynTranslator>>,
    context: Arc<Context>,
    max_in_flight: usize,
    shutdown: watch::Receiver<bool>,
    /// Messages waiting behind a busy lane; a lane is busy while it has an
    /// entry here.
    lanes: HashMap<Lane, VecDeque<OwnedMessage>>,
    offsets: HashMap<(String, i32), PartitionOffsets>,
    running: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Messages received and not finished.
    held: usize,
}

impl Worker {
    pub(super) fn new(
        consumer: Arc<StreamConsumer>,
        health: BrokerHealth,
        translators: HashMap<String, Arc<dyn DynTranslator>>,
        context: Arc<Context>,
        max_in_flight: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Worker {
            consumer,
            health,
            translators,
            context,
            max_in_flight,
            shutdown,
            lanes: HashMap::new(),
            offsets: HashMap::new(),
            running: FuturesUnordered::new(),
            held: 0,
        }
    }

    pub(super) async fn run(mut self) {
        let consumer = self.consumer.clone();
        let mut errors = ErrorLog::default();
        let mut idle_at = Instant::now() + RESET_CHECK_IDLE;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = self.shutdown.changed() => break,
                Some((message, finished)) = self.running.next(), if !self.running.is_empty() => {
                    self.done(message, finished);
                }
                received = consumer.recv(), if self.held < self.max_in_flight => {
                    idle_at = Instant::now() + RESET_CHECK_IDLE;
                    match received {
                        Ok(message) => self.dispatch(message.detach()),
                        Err(error) => {
                            // Errors are events (librdkafka queues one per
                            // failed connection attempt while the brokers are
                            // away), not a state to wait out: the next ones,
                            // and the rebalance behind them, are read at once.
                            errors.seen(&error);
                            if is_all_brokers_down(&error)
                                && !self.health.wait_out_outage(&mut self.shutdown).await
                            {
                                break;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(idle_at), if self.held == 0 => {
                    self.health.check_reset_logs().await;
                    self.health.check_orphaned_partitions().await;
                    idle_at = Instant::now() + RESET_CHECK_IDLE;
                }
            }
        }
        // Let the messages being decided finish (a task waiting out a
        // failure stops at once); those behind them come again after a
        // restart, their offsets not stored.
        while let Some((message, finished)) = self.running.next().await {
            if finished {
                self.finish(&message);
            }
        }
        let c = consumer.clone();
        match tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await {
            Ok(Ok(())) => tracing::debug!("offsets committed at shutdown"),
            Ok(Err(error)) => tracing::debug!(%error, "nothing committed at shutdown"),
            Err(error) => tracing::warn!(%error, "commit task failed"),
        }
        consumer.unsubscribe();
        tracing::info!("translator group stopped");
    }

    /// A message arrived: decide it now, or queue it behind its key.
    fn dispatch(&mut self, message: OwnedMessage) {
        self.held += 1;
        self.offsets
            .entry((message.topic().to_owned(), message.partition()))
            .or_default()
            .received(message.offset());
        let lane = Lane::of(&message);
        match self.lanes.get_mut(&lane) {
            Some(waiting) => waiting.push_back(message),
            None => {
                self.lanes.insert(lane, VecDeque::new());
                self.start(message);
            }
        }
    }

    fn start(&mut self, message: OwnedMessage) {
        let translator = self.translators.get(message.topic()).cloned();
        let context = self.context.clone();
        let shutdown = self.shutdown.clone();
        let span =
            crate::trace::process_span(&KafkaMessage::from_rdkafka(&message), &context.group_id);
        self.running.push(
            async move {
                let finished = match translator {
                    Some(t) => process(&context, t.as_ref(), &message, shutdown).await,
                    None => {
                        tracing::warn!("message from a topic without translator; skipped");
                        context.counters.messages.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                };
                (message, finished)
            }
            .instrument(span)
            .boxed(),
        );
    }

    /// A message's task ended: store its partition's offset if it moved, and
    /// start the next message of its key.
    fn done(&mut self, message: OwnedMessage, finished: bool) {
        if !finished {
            // Shutting down mid-retry: the offset stays, the message comes
            // again; the loop is about to end.
            return;
        }
        self.finish(&message);
        let lane = Lane::of(&message);
        let next = self.lanes.get_mut(&lane).and_then(VecDeque::pop_front);
        match next {
            Some(next) => self.start(next),
            None => {
                self.lanes.remove(&lane);
            }
        }
    }

    fn finish(&mut self, message: &OwnedMessage) {
        self.held = self.held.saturating_sub(1);
        let Some(offsets) = self
            .offsets
            .get_mut(&(message.topic().to_owned(), message.partition()))
        else {
            return;
        };
        if let Some(through) = offsets.finished(message.offset()) {
            if let Err(error) =
                self.consumer
                    .store_offset(message.topic(), message.partition(), through)
            {
                // E.g. the partition was revoked meanwhile: the new owner
                // redelivers and the decision is deduped.
                tracing::debug!(%error, "cannot store the offset");
            }
        }
    }
}

/// Decides on one message, waiting out outages and retrying refusals a
/// bounded number of times; false when shutdown interrupted the retries.
async fn process(
    context: &Context,
    translator: &dyn DynTranslator,
    message: &OwnedMessage,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let message = KafkaMessage::from_rdkafka(message);
    let counters = &context.counters;
    let mut attempt = 0u32;
    let mut refused = 0u32;
    loop {
        attempt += 1;
        // A translator or decision that panics on this message would do so
        // every time: the message is dead, not the runner.
        let _isolated;
        let _shared;
        if refused > 0 {
            _isolated = context.isolation.write().await;
        } else {
            _shared = context.isolation.read().await;
        }
        let outcome = std::panic::AssertUnwindSafe(translator.handle(&context.maker, &message))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                Outcome::Dead(DeadKind::Failed, format!("the translator panicked: {text}"))
            });
        let reason = match outcome {
            Outcome::Decided { appended, replayed } => {
                let counter = if replayed {
                    tracing::debug!("redelivered message: decision already made");
                    &counters.duplicates
                } else if appended == 0 {
                    &counters.unchanged
                } else {
                    tracing::debug!(appended, "decided");
                    &counters.decided
                };
                counter.fetch_add(1, Ordering::Relaxed);
                counters.messages.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Outcome::Retry(reason) if refused + 1 >= context.dead_after => {
                match record_dead(
                    context,
                    &message,
                    DeadKind::Failed,
                    &format!("refused {} times: {reason}", refused + 1),
                )
                .await
                {
                    Ok(()) => return true,
                    Err(e) => e,
                }
            }
            Outcome::Retry(reason) => {
                refused += 1;
                reason
            }
            Outcome::Dead(kind, reason) => {
                match record_dead(context, &message, kind, &reason).await {
                    Ok(()) => return true,
                    Err(e) => e,
                }
            }
            Outcome::Wait(reason) => reason,
        };
        counters.retries.fetch_add(1, Ordering::Relaxed);
        let delay = context.backoff.delay(attempt);
        tracing::warn!(attempt, ?delay, %reason, "decision failed; retrying");
        tokio::select! {
            _ = shutdown.changed() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Records the message as dead; the reason to try again when that fails.
async fn record_dead(
    context: &Context,
    message: &KafkaMessage<'_>,
    kind: DeadKind,
    reason: &str,
) -> Result<(), String> {
    match sql::dead_records::insert(
        &context.pool,
        &context.schema,
        &context.group_id,
        message,
        kind,
        reason,
    )
    .await
    {
        Ok(()) => {
            tracing::warn!(%kind, reason = %sql::storable_text(reason), "message recorded as dead; moving on");
            context.counters.dead.fetch_add(1, Ordering::Relaxed);
            context.counters.messages.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            let what = if is_database_unavailable(&e) {
                "the database is away"
            } else {
                "the database refused it"
            };
            Err(format!("cannot record a dead message ({what}): {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionOffsets;

    #[test]
    fn offsets_are_stored_up_to_the_lowest_unfinished_message() {
        let mut p = PartitionOffsets::default();
        for o in 10..15 {
            p.received(o);
        }
        assert_eq!(p.finished(12), Some(9), "10 and 11 still unfinished");
        assert_eq!(p.finished(11), None, "10 still unfinished: stays at 9");
        assert_eq!(p.finished(10), Some(12));
        assert_eq!(p.finished(14), None, "13 unfinished");
        assert_eq!(p.finished(13), Some(14));
        // Read again from an earlier offset (a rewind): stored from there.
        p.received(3);
        assert_eq!(p.finished(3), Some(3));
    }
}
