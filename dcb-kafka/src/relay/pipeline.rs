//! The relay's task: take the lease, then read, send, collect
//! acknowledgements in position order and checkpoint, until shutdown, a
//! failure or the loss of the lease.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_core::{Query, SequencedEvent};
use dcb_postgres::StandbyReader;

use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::reader::{first_read, InFlightRead, ReadHow, READS_IN_FLIGHT};
use super::{headers, producer, RelayConfig, Route};
use crate::sql::relays::RelayTable;
use crate::trace;
use crate::KafkaError;

/// What the relay task and its handle share.
pub(crate) struct Shared {
    pub(crate) id: String,
    /// Each with its key tag resolved.
    pub(crate) routes: Vec<Route>,
    /// The union of the routes' queries: what the relay reads.
    pub(crate) read_query: Query,
    pub(crate) cloud_events: Option<String>,
    pub(crate) config: RelayConfig,
    /// Where the relay reads the log: the store's standbys when it has
    /// some, else its primary.
    pub(crate) log: StandbyReader,
    pub(crate) table: RelayTable,
    pub(crate) producer: producer::Slot,
    /// The contiguous acknowledged position while this instance leads.
    pub(crate) acked: watch::Sender<u64>,
    /// Bumped on every `NOTIFY` of the store.
    pub(crate) wake: watch::Sender<u64>,
    /// Set once `start` found a broker with the first producer (which got
    /// it ready to send).
    pub(crate) connected: watch::Sender<bool>,
    pub(crate) leading: AtomicBool,
    pub(crate) published: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// At most this long (and a quarter of the lease) for getting a new
/// producer ready before the first send.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a leader stopped leading.
enum LeadEnd {
    Shutdown,
    Lost,
    Failed(KafkaError),
}

/// The lease as this instance knows it: valid until a conservative local
/// expiry (the renewal's request time plus the TTL, minus a margin for clock
/// drift), so a leader that cannot renew stops sending before another
/// instance may take over.
struct Lease {
    valid_until: Instant,
}

impl Lease {
    fn granted_at(sent: Instant, ttl: Duration) -> Self {
        Lease {
            valid_until: sent + ttl.mul_f64(0.8),
        }
    }

    fn extend(&mut self, sent: Instant, ttl: Duration) {
        self.valid_until = self.valid_until.max(sent + ttl.mul_f64(0.8));
    }

    fn is_valid(&self) -> bool {
        self.is_valid_at(Instant::now())
    }

    fn is_valid_at(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// One entry of the pipeline, in log order.
enum InFlight {
    /// The log is read up to here (positions without a matching event).
    Covered(u64),
    /// An event's messages, one per route it matched, numbered from
    /// `first` on (see [`producer::Deliveries`]).
    Event {
        position: u64,
        first: u64,
        messages: usize,
    },
}

/// What the answers in so far acknowledge, taken from the front of the
/// pipeline.
#[derive(Default)]
struct Taken {
    /// The log is acknowledged up to here (if it moved).
    acked: Option<u64>,
    /// Messages acknowledged.
    published: u64,
    /// The first failed message in log order: its route and error.
    failed: Option<(usize, rdkafka::error::KafkaError)>,
}

/// Takes the front entries of `pipeline` whose messages were all answered
/// (with the routes of their messages from `routes`), up to the first one
/// not yet answered or failed.
fn take_answered(
    pipeline: &mut VecDeque<InFlight>,
    routes: &mut VecDeque<usize>,
    sent_at: &mut VecDeque<Instant>,
    deliveries: &producer::Deliveries,
) -> Taken {
    let mut taken = Taken::default();
    while let Some(front) = pipeline.front() {
        match *front {
            InFlight::Covered(p) => taken.acked = Some(p),
            InFlight::Event {
                position,
                first,
                messages,
            } => {
                for (k, route) in routes.iter().take(messages).enumerate() {
                    let seq = first + k as u64;
                    match deliveries.get(seq) {
                        producer::Delivery::Pending => return taken,
                        producer::Delivery::Failed => {
                            taken.failed = Some((*route, deliveries.error(seq)));
                            return taken;
                        }
                        producer::Delivery::Delivered => {}
                    }
                }
                for k in 0..messages {
                    deliveries.reset(first + k as u64);
                }
                routes.drain(..messages);
                taken.acked = Some(position);
                taken.published += messages as u64;
            }
        }
        pipeline.pop_front();
        sent_at.pop_front();
    }
    taken
}

/// A checkpoint write: the position written, when the request was sent,
/// and whether the lease was still ours.
type Written = (u64, Instant, Result<bool, sqlx::Error>);

/// Something to put into the pipeline, in log order.
// Nearly every item is an event (`Covered` comes once per read): boxing the
// events to shrink the rare small variant would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(SequencedEvent),
    /// The log is read up to here (positions without a matching event).
    Covered(u64),
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut shutdown = shared.shutdown.clone();
    let mut failures_in_a_row = 0u32;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let sent = Instant::now();
        let acquired = shared
            .table
            .acquire(&shared.id, &config.instance_id, config.lease_ttl)
            .await;
        let wait = match acquired {
            Ok(Some(position)) => {
                tracing::info!(position, "relay leading");
                shared.leading.store(true, Ordering::SeqCst);
                let lease = Lease::granted_at(sent, config.lease_ttl);
                let end = lead(&shared, position, lease, &mut failures_in_a_row).await;
                shared.leading.store(false, Ordering::SeqCst);
                match end {
                    LeadEnd::Shutdown => break,
                    LeadEnd::Lost => {
                        tracing::warn!("relay lease lost; standing by");
                        config.lease_ttl / 3
                    }
                    LeadEnd::Failed(error) => {
                        failures_in_a_row = failures_in_a_row.saturating_add(1);
                        shared.failures.fetch_add(1, Ordering::Relaxed);
                        let delay = config.backoff.delay(failures_in_a_row);
                        tracing::warn!(%error, attempt = failures_in_a_row, ?delay,
                            "relay stopped on a failure; starting again from the last \
                             contiguous acknowledgement");
                        delay
                    }
                }
            }
            Ok(None) => config.lease_ttl / 3,
            Err(error) => {
                tracing::warn!(%error, "cannot take the relay's lease");
                config.backoff.delay(2)
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Err(error) = shared.table.release(&shared.id, &config.instance_id).await {
        tracing::debug!(%error, "cannot release the relay's lease");
    }
    tracing::info!("relay stopped");
}

/// Publishes from `start` on while the lease holds.
async fn lead(
    shared: &Arc<Shared>,
    start: u64,
    mut lease: Lease,
    failures_in_a_row: &mut u32,
) -> LeadEnd {
    let config = &shared.config;
    let owner = config.instance_id.as_str();
    let producer = shared.producer.current();
    let mut shutdown = shared.shutdown.clone();
    let mut wake = shared.wake.subscribe();
    // Sends wait until the producer is ready; reads do not, so the log is
    // read ahead meanwhile (up to a window's worth).
    let mut warming = Some(get_ready(shared, &producer));

    // The pipeline: what was sent, in log order, with the route of each of
    // its messages.
    let deliveries = producer.context().deliveries().clone();
    let mut pipeline: VecDeque<InFlight> = VecDeque::new();
    let mut routes: VecDeque<usize> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut sent_at: VecDeque<Instant> = VecDeque::new();
    let mut buffer: VecDeque<Item> = VecDeque::new();
    let mut scratch = Vec::new();
    let mut read_from = start;
    let mut how = ReadHow::Scan;
    let mut acked = start;
    let mut written = start;
    let mut last_write = Instant::now();
    let mut backlog = true;
    // Reads in flight, oldest first, each with the position it reads after.
    let mut reading: VecDeque<InFlightRead> = VecDeque::new();
    let mut read_failures = 0u32;
    // The last read stopped at its limit: more of the log waits.
    let mut full_reads = false;
    let mut read_again_at: Option<Instant> = None;
    let mut writing: Option<BoxFuture<'static, Written>> = None;
    let mut renew_at = Instant::now() + config.lease_ttl / 3;
    let mut poll_at = Instant::now() + config.poll_interval;
    let mut draining: Option<Instant> = None;
    shared.acked.send_replace(start);

    let end = loop {
        // Read ahead while less than two reads' worth waits, before sending
        // what the last read brought: the next read then runs (on a task of
        // its own) while this one's events are handed to the producer.
        let read_ahead = if warming.is_some() {
            config.max_in_flight.max(2 * config.batch_size)
        } else {
            2 * config.batch_size
        };
        if draining.is_none()
            && reading.is_empty()
            && backlog
            && buffer.len() < read_ahead
            && read_again_at.is_none_or(|at| Instant::now() >= at)
        {
            backlog = false;
            read_again_at = None;
            reading.push_back(start_read(shared, how, read_from));
        }
        // While draining a backlog by scanning, read the next range of the
        // log too (positions are gapless, so it starts where a full read
        // of this one ends); its events are kept only if the read before
        // it did end there.
        if draining.is_none()
            && how == ReadHow::Scan
            && full_reads
            && (1..READS_IN_FLIGHT).contains(&reading.len())
            && buffer.len() < read_ahead
        {
            let after = reading.back().map_or(read_from, |r| r.after) + config.batch_size as u64;
            reading.push_back(start_read(shared, how, after));
        }
        // Send what was read, in order, while there is room.
        if draining.is_none() && warming.is_none() {
            // One clock reading per 256 sends: handing an event over takes
            // about a microsecond, so it is never more than a millisecond
            // or so old, far inside the lease's margin.
            let mut now = Instant::now();
            let mut sends = 0u32;
            while pipeline.len() < config.max_in_flight {
                let Some(item) = buffer.pop_front() else {
                    break;
                };
                let entry = match item {
                    Item::Covered(p) => InFlight::Covered(p),
                    Item::Event(event) => {
                        sends = sends.wrapping_add(1);
                        if sends % 256 == 0 {
                            now = Instant::now();
                        }
                        if !lease.is_valid_at(now) {
                            break;
                        }
                        match send(
                            shared,
                            &producer,
                            &event,
                            &mut scratch,
                            &mut next_seq,
                            &mut routes,
                        ) {
                            Ok(entry) => entry,
                            Err(error) => {
                                return stop(shared, owner, acked, written, LeadEnd::Failed(error))
                                    .await;
                            }
                        }
                    }
                };
                pipeline.push_back(entry);
                sent_at.push_back(now);
            }
            if !lease.is_valid() {
                break LeadEnd::Lost;
            }
        }
        // Take every answer already in.
        let taken = take_answered(&mut pipeline, &mut routes, &mut sent_at, &deliveries);
        if let Some(to) = taken.acked {
            acked = to;
            shared.acked.send_replace(acked);
        }
        if taken.published > 0 {
            shared
                .published
                .fetch_add(taken.published, Ordering::Relaxed);
            *failures_in_a_row = 0;
        }
        if let Some((route, source)) = taken.failed {
            break LeadEnd::Failed(KafkaError::Delivery {
                topic: shared.routes[route].topic.clone(),
                source,
            });
        }
        // Write the checkpoint when enough was acknowledged (or on the timer
        // below).
        if writing.is_none()
            && acked > written
            && (acked - written >= config.checkpoint_every as u64
                || last_write.elapsed() >= config.checkpoint_interval
                || draining.is_some())
        {
            writing = Some(write(shared.clone(), acked).boxed());
        }
        if let Some(deadline) = draining {
            if (pipeline.is_empty() || Instant::now() >= deadline)
                && writing.is_none()
                && acked == written
            {
                break LeadEnd::Shutdown;
            }
        }
        let oldest = sent_at.front().copied();
        let write_due =
            (acked > written && writing.is_none()).then(|| last_write + config.checkpoint_interval);
        tokio::select! {
            biased;
            _ = deliveries.answered.notified(), if !pipeline.is_empty() => {}
            Some(()) = maybe(&mut warming) => warming = None,
            Some(done) = maybe(&mut writing) => {
                writing = None;
                let (to, sent, result) = done;
                match result {
                    Ok(true) => {
                        written = to;
                        last_write = Instant::now();
                        lease.extend(sent, config.lease_ttl);
                        renew_at = sent + config.lease_ttl / 3;
                    }
                    Ok(false) => break LeadEnd::Lost,
                    Err(error) => {
                        tracing::warn!(%error, "cannot write the relay's checkpoint; trying again");
                        last_write = Instant::now();
                    }
                }
            }
            (after, result) = first_read(&mut reading) => {
                reading.pop_front();
                match result {
                    // Read after a position this read did not end at: a
                    // read behind it fell short of its range.
                    Ok(_) if after != read_from => full_reads = false,
                    Ok(batch) => {
                        read_failures = 0;
                        how = how.next(&batch, read_from);
                        full_reads = batch.full;
                        // A NOTIFY during the read may be for events past
                        // what it saw.
                        backlog = backlog || batch.full;
                        let advanced = batch.covered > read_from;
                        read_from = read_from.max(batch.covered);
                        buffer.extend(batch.events.into_iter().map(Item::Event));
                        if advanced {
                            buffer.push_back(Item::Covered(read_from));
                        }
                    }
                    Err(error) => {
                        read_failures = read_failures.saturating_add(1);
                        let delay = config.backoff.delay(read_failures);
                        tracing::warn!(%error, ?delay, "cannot read the log; trying again");
                        reading.clear();
                        full_reads = false;
                        backlog = true;
                        read_again_at = Some(Instant::now() + delay);
                    }
                }
            }
            _ = sleep_until(oldest.map(|at| at + config.send_timeout)) => {
                break LeadEnd::Failed(KafkaError::TimedOut(format!(
                    "a message was not acknowledged within {:?}", config.send_timeout
                )));
            }
            _ = tokio::time::sleep_until(renew_at) => {
                let sent = Instant::now();
                renew_at = sent + config.lease_ttl / 3;
                let renewed = tokio::time::timeout(
                    config.lease_ttl / 3,
                    shared.table.renew(&shared.id, owner, config.lease_ttl),
                ).await;
                match renewed {
                    Ok(Ok(true)) => lease.extend(sent, config.lease_ttl),
                    Ok(Ok(false)) => break LeadEnd::Lost,
                    Ok(Err(error)) => tracing::warn!(%error, "cannot renew the relay's lease"),
                    Err(_) => tracing::warn!("renewing the relay's lease timed out"),
                }
            }
            _ = sleep_until(write_due) => {}
            _ = sleep_until(read_again_at.filter(|at| *at > Instant::now())) => {}
            _ = wake.changed() => backlog = true,
            _ = tokio::time::sleep_until(poll_at) => {
                poll_at = Instant::now() + config.poll_interval;
                backlog = true;
            }
            _ = shutdown.changed(), if draining.is_none() => {
                draining = Some(Instant::now() + config.send_timeout);
            }
            _ = sleep_until(draining.filter(|at| *at > Instant::now())), if !pipeline.is_empty() => {}
        }
    };
    stop(shared, owner, acked, written, end).await
}

/// Ends a lead. After a failure or the loss of the lease, no message still
/// held by the producer may land once publishing starts again from a
/// checkpoint, so the producer is replaced (its queue purged); the
/// checkpoint is written where the acknowledgements reached.
async fn stop(shared: &Shared, owner: &str, acked: u64, written: u64, end: LeadEnd) -> LeadEnd {
    if !matches!(end, LeadEnd::Shutdown) {
        shared.producer.replace();
    }
    if let LeadEnd::Failed(error) = &end {
        let text = error.to_string();
        if let Err(e) = shared.table.record_error(&shared.id, owner, &text).await {
            tracing::debug!(error = %e, "cannot record the relay's failure");
        }
    }
    if acked > written && !matches!(end, LeadEnd::Lost) {
        match shared
            .table
            .advance(&shared.id, owner, shared.config.lease_ttl, acked)
            .await
        {
            Ok(true) => {}
            Ok(false) => return LeadEnd::Lost,
            Err(error) => tracing::warn!(%error, "cannot write the relay's checkpoint"),
        }
    }
    end
}

/// Hands `event` to the producer for each route it matches.
fn send(
    shared: &Shared,
    producer: &producer::RelayProducer,
    event: &SequencedEvent,
    scratch: &mut Vec<u8>,
    next_seq: &mut u64,
    routes: &mut VecDeque<usize>,
) -> Result<InFlight, KafkaError> {
    let first = *next_seq;
    let mut messages = 0;
    for (index, route) in shared.routes.iter().enumerate() {
        if !route
            .query
            .matches(event.record.event_type.as_str(), &event.record.tags)
        {
            continue;
        }
        let key = headers::key(route.key_tag.as_deref(), event);
        // The send span continues the trace the event was appended in, and
        // the message carries the send span's context onwards.
        let span = trace::send_span(&route.topic, key, Some(event.record.metadata.event_id));
        dcb_core::trace::continue_from(&span, event.record.metadata.trace.as_ref());
        let context = dcb_core::trace::context_of(&span);
        let _sending = span.enter();
        let mut owned = OwnedHeaders::new_with_capacity(11);
        let mut add = |key, value: &[u8]| {
            owned = std::mem::take(&mut owned).insert(Header {
                key,
                value: Some(value),
            });
        };
        headers::each_header(shared.cloud_events.as_deref(), event, scratch, &mut add);
        trace::each_header(context.as_ref(), &mut add);
        let mut record: BaseRecord<'_, str, [u8], usize> =
            BaseRecord::with_opaque_to(&route.topic, *next_seq as usize)
                .payload(event.record.payload.as_slice())
                .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Err((source, _)) = producer.send(record) {
            return Err(KafkaError::Delivery {
                topic: route.topic.clone(),
                source,
            });
        }
        *next_seq += 1;
        routes.push_back(index);
        messages += 1;
    }
    Ok(InFlight::Event {
        position: event.position.0,
        first,
        messages,
    })
}

/// Waits until `producer` is ready to send: the first producer is got
/// ready by `start`'s check of the brokers; one that replaced it after a
/// failure by [`producer::warm_up`] here, within a bound (it then sends
/// anyway, and its messages wait in its queue).
fn get_ready(shared: &Shared, producer: &Arc<producer::RelayProducer>) -> BoxFuture<'static, ()> {
    let mut connected = shared.connected.subscribe();
    if !*connected.borrow_and_update() {
        return async move {
            let _ = connected.wait_for(|c| *c).await;
        }
        .boxed();
    }
    let producer = producer.clone();
    let topic = shared.routes[0].topic.clone();
    let timeout = (shared.config.lease_ttl / 4).min(WARM_UP_TIMEOUT);
    async move {
        if let Err(error) = producer::warm_up(&producer, &topic, timeout).await {
            tracing::debug!(%error, "the producer's warm-up found no broker");
        }
    }
    .boxed()
}

/// Starts a read of the relay's query after `after`.
fn start_read(shared: &Shared, how: ReadHow, after: u64) -> InFlightRead {
    InFlightRead::start(
        shared.log.clone(),
        shared.read_query.clone(),
        how,
        after,
        shared.config.batch_size,
    )
}

/// Writes the checkpoint `to`; (to, when the request was sent, whether the
/// lease was still ours).
async fn write(shared: Arc<Shared>, to: u64) -> Written {
    let sent = Instant::now();
    let config = &shared.config;
    let result = shared
        .table
        .advance(&shared.id, &config.instance_id, config.lease_ttl, to)
        .await;
    (to, sent, result)
}

/// Polls the future in `slot` if there is one; pending forever otherwise.
async fn maybe<T>(slot: &mut Option<BoxFuture<'static, T>>) -> Option<T> {
    match slot {
        Some(f) => Some(f.await),
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Listens on the store's channel and wakes the relay on every notification
/// (and after reconnecting, since notifications may have been missed).
/// Polling covers the time it is down.
pub(crate) async fn notifier(shared: Arc<Shared>, pool: sqlx::PgPool, channel: String) {
    let mut shutdown = shared.shutdown.clone();
    let wake = |shared: &Shared| shared.wake.send_modify(|n| *n = n.wrapping_add(1));
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, %channel, "LISTEN failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        wake(&shared);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => wake(&shared),
                    Ok(None) => wake(&shared),
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                        wake(&shared);
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries for events 1..=n (event `e` with `per` messages numbered
    /// from `(e - 1) * per`, one per route), a `Covered(n + 5)` after them.
    fn sent(n: u64, per: usize) -> (VecDeque<InFlight>, VecDeque<usize>, VecDeque<Instant>) {
        let mut pipeline = VecDeque::new();
        let mut routes = VecDeque::new();
        for e in 1..=n {
            pipeline.push_back(InFlight::Event {
                position: e,
                first: (e - 1) * per as u64,
                messages: per,
            });
            routes.extend(0..per);
        }
        pipeline.push_back(InFlight::Covered(n + 5));
        let sent_at = pipeline.iter().map(|_| Instant::now()).collect();
        (pipeline, routes, sent_at)
    }

    #[test]
    fn answers_acknowledge_the_log_only_up_to_the_first_message_not_answered() {
        let deliveries = producer::Deliveries::new(16);
        let (mut pipeline, mut routes, mut sent_at) = sent(3, 2);
        // Event 2's messages (2, 3) and event 3's first (4) are answered,
        // event 1's second (1) is not: nothing is acknowledged yet.
        for seq in [0, 2, 3, 4] {
            deliveries.answer(seq, None);
        }
        let taken = take_answered(&mut pipeline, &mut routes, &mut sent_at, &deliveries);
        assert_eq!((taken.acked, taken.published), (None, 0));
        assert_eq!(pipeline.len(), 4);
        // Message 1 answered: events 1 and 2 are; event 3 waits for message 5.
        deliveries.answer(1, None);
        let taken = take_answered(&mut pipeline, &mut routes, &mut sent_at, &deliveries);
        assert_eq!((taken.acked, taken.published), (Some(2), 4));
        assert_eq!((pipeline.len(), routes.len(), sent_at.len()), (2, 2, 2));
        // The slots taken are free again for the messages 16 further on.
        assert_eq!(deliveries.get(16), producer::Delivery::Pending);
        assert_eq!(deliveries.get(4), producer::Delivery::Delivered);
        deliveries.answer(5, None);
        let taken = take_answered(&mut pipeline, &mut routes, &mut sent_at, &deliveries);
        assert_eq!((taken.acked, taken.published), (Some(8), 2));
        assert!(pipeline.is_empty() && routes.is_empty() && sent_at.is_empty());
    }

    #[test]
    fn the_first_failure_in_log_order_stops_with_its_route() {
        let deliveries = producer::Deliveries::new(16);
        let (mut pipeline, mut routes, mut sent_at) = sent(3, 2);
        deliveries.answer(0, None);
        deliveries.answer(1, None);
        deliveries.answer(3, Some(rdkafka::error::KafkaError::Canceled));
        deliveries.answer(2, None);
        deliveries.answer(4, Some(rdkafka::error::KafkaError::Canceled));
        let taken = take_answered(&mut pipeline, &mut routes, &mut sent_at, &deliveries);
        assert_eq!((taken.acked, taken.published), (Some(1), 2));
        let (route, _) = taken.failed.expect("message 3 failed");
        assert_eq!(route, 1, "message 3 is event 2's second route");
    }
}
