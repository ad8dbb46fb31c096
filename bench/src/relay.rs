//! The `relay` workload (needs `KAFKA_BROKERS`): Kafka in and out of the log.
//!
//! - `raw_producer`: rdkafka's producer alone sending the messages the relay
//!   would send for the preloaded log (same payloads, keys and headers, the
//!   relay's producer settings: `acks=all`, idempotence, gapless guarantee,
//!   the same window of messages in flight); the baseline of...
//! - `drain_log`: the relay publishing the preloaded log (ratio to the raw
//!   producer);
//! - `kafka_roundtrip_1000`: produce → consumed through the broker alone at
//!   1,000 messages/s, the baseline of...
//! - `live_1000`, `live_5000`: append → consumed latency with the relay
//!   running, at a steady 1,000 and 5,000 appends/s;
//! - `publish_burn_down`, `publish_latency`: the work-queue publish processor
//!   (one message per job, the success event after the acknowledgement):
//!   jobs/s through a backlog, and submit → acknowledged latency at a steady
//!   rate;
//! - `translator_one_at_a_time`, `translator`, `translator_replay`:
//!   messages/s into decisions (with dedupe) from one translator instance,
//!   one message at a time and with keys in parallel, and the same messages
//!   again from a new group: every one a duplicate, no event appended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcb_core::{
    Codec, CodecError, Decision, Event, EventMetadata, EventRecord, EventSchema, EventStore,
    EventType, JsonCodec, Position, Query, ReadOptions, Tag,
};
use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use dcb_kafka::rdkafka::message::{Header, OwnedHeaders};
use dcb_kafka::rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
};
use dcb_kafka::rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use dcb_kafka::{
    Delivered, EventRelay, KafkaConfig, KafkaMessage, OutgoingMessage, PublishJob,
    PublishProcessor, Publisher, RelayConfig, RelayHandle, Route, Translator, TranslatorRunner,
};
use dcb_postgres::queue::{JobContext, JobError, NewJob};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::append::preload;
use crate::cart::CART_TAG;
use crate::cli::Args;
use crate::db::{Db, PgEventStore};
use crate::listener::{latency_row, send_pings, throughput_row};
use crate::ping::{self, Ping, PING};
use crate::report::Row;

const WORKLOAD: &str = "relay";
/// At most this many events are relayed by the drain (and sent by the raw
/// producer).
pub const RELAY_EVENTS: u64 = 100_000;
/// Rounds of raw producer and relay drain (each row is the median).
pub const DRAIN_ROUNDS: usize = 3;
/// Appends per second of the live variants.
pub const LATENCY_RATES: [u32; 2] = [1_000, 5_000];
/// Jobs of the publish processor's burn-down.
pub const PUBLISH_JOBS: u64 = 10_000;
/// Jobs run at once by the publish processor's workers.
pub const PUBLISH_CONCURRENCY: usize = 64;
/// Jobs per second of the publish latency variant.
pub const PUBLISH_RATE: u32 = 500;
/// Messages the translator decides on.
pub const TRANSLATOR_MESSAGES: u64 = 20_000;
/// Messages of the one-at-a-time baseline.
pub const TRANSLATOR_SEQUENTIAL_MESSAGES: u64 = 3_000;
/// Distinct keys among them (one partition).
pub const TRANSLATOR_KEYS: u64 = 1_000;
const RELAY_ID: &str = "bench-relay";

fn say(line: &str) {
    eprintln!("[dcb-bench] {line}");
}

/// The brokers from `KAFKA_BROKERS`, if set.
pub fn brokers() -> Option<String> {
    KafkaConfig::from_env().map(|c| c.brokers().to_string())
}

/// What to tell a user without `KAFKA_BROKERS`.
pub const NO_BROKERS: &str = "the relay workload needs a Kafka broker: set KAFKA_BROKERS \
     (scripts/tansu.sh start starts one and prints its address)";

async fn create_topic(brokers: &str, topic: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("kafka admin client: {e}"))?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| format!("create topic {topic}: {e}"))?;
    for r in results {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok(())
}

fn topic_name(db: &Db, variant: &str) -> String {
    format!("dcb-bench-{}-{variant}", db.run_id())
}

/// Runs every variant of the workload.
///
/// # Errors
/// No broker, or the first failure of any variant.
pub async fn run(db: &Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    let brokers = brokers().ok_or_else(|| NO_BROKERS.to_string())?;
    let window = Duration::from_secs_f64(args.seconds);
    let events = RELAY_EVENTS.min(args.preload);
    if events > 0 {
        let store = db.open_store("relay_log", 4).await?;
        let result = drain(db, &store, &brokers, events).await;
        db.close_store(store).await?;
        rows.extend(result?);
    } else {
        say("relay: --preload 0, skipping the drain rows");
    }
    rows.push(kafka_roundtrip(db, &brokers, LATENCY_RATES[0], window).await?);
    for rate in LATENCY_RATES {
        let store = db.open_store(&format!("relay_live_{rate}"), 8).await?;
        let result = live(db, &store, &brokers, rate, window).await;
        db.close_store(store).await?;
        rows.push(result?);
    }
    let store = db.open_store("relay_publish", 8).await?;
    let result = publish(db, &store, &brokers, window).await;
    db.close_store(store).await?;
    rows.extend(result?);
    let store = db.open_store("relay_translate", 8).await?;
    let result = translate(db, &store, &brokers).await;
    db.close_store(store).await?;
    rows.extend(result?);
    Ok(())
}

fn the_route(topic: &str) -> Route {
    Route::new(Query::types(["CartCreated", "ItemAdded"]), topic).key_tag(CART_TAG)
}

/// The relay's producer settings that matter for throughput and
/// guarantees (see `dcb_kafka::EventRelay`), its 1 ms linger included.
fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "1");
    config
}

/// A producer with the relay's settings, one future per message.
fn raw_producer(brokers: &str) -> Result<FutureProducer, String> {
    producer_config(brokers)
        .create()
        .map_err(|e| format!("kafka producer: {e}"))
}

/// The drain baseline's delivery reports, counted the way the relay takes
/// its own (a callback, no future per message), so that the ratio measures
/// the relay's reading and bookkeeping, not a cheaper use of librdkafka.
#[derive(Default)]
struct Counted {
    done: AtomicU64,
    failed: Mutex<Option<String>>,
    answered: tokio::sync::Notify,
}

#[derive(Clone, Default)]
struct CountingContext(Arc<Counted>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            *self.0.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        self.0.done.fetch_add(1, Ordering::Release);
        self.0.answered.notify_one();
    }
}

impl CountingContext {
    /// Waits until at most `pending` of `sent` messages are unanswered.
    async fn wait(&self, sent: u64, pending: u64) -> Result<(), String> {
        loop {
            if let Some(e) = self
                .0
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return Err(format!("raw producer: {e}"));
            }
            if sent - self.0.done.load(Ordering::Acquire) <= pending {
                return Ok(());
            }
            self.0.answered.notified().await;
        }
    }
}

/// (1) The raw producer, then (2) the relay, over the same preloaded log.
async fn drain(
    db: &Db,
    store: &PgEventStore,
    brokers: &str,
    events: u64,
) -> Result<Vec<Row>, String> {
    say(&format!("relay: loading {events} events..."));
    preload(store, events).await?;
    db.settle_schema(store.schema()).await?;

    // The raw producer sends the relay's messages for these events, built
    // beforehand (not timed).
    let relay_shape = EventRelay::new(RELAY_ID, KafkaConfig::new(brokers));
    let route = the_route("raw");
    let (_, log) = store
        .read(
            &Query::types(["CartCreated", "ItemAdded"]),
            ReadOptions::forwards(),
        )
        .await
        .map_err(|e| format!("read the log: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("read the log: {e}"))?;
    let messages: Vec<OutgoingMessage> = log
        .iter()
        .map(|e| relay_shape.message_for(&route, e))
        .collect();
    drop(log);
    // Rounds of raw producer, then relay, interleaved: on a shared machine
    // a single pair is at the mercy of whatever else runs in that second;
    // each row is the median of its rounds.
    let mut raw_rates = Vec::new();
    let mut drain_times = Vec::new();
    for round in 1..=DRAIN_ROUNDS {
        let raw_topic = topic_name(db, &format!("raw{round}"));
        create_topic(brokers, &raw_topic).await?;
        let elapsed = send_raw(brokers, &raw_topic, &messages).await?;
        let rate = messages.len() as f64 / elapsed.as_secs_f64();
        say(&format!(
            "  round {round}: raw producer {rate:.0} messages/s"
        ));
        raw_rates.push(rate);

        let topic = topic_name(db, &format!("log{round}"));
        create_topic(brokers, &topic).await?;
        let t0 = Instant::now();
        let relay = EventRelay::new(format!("{RELAY_ID}-{round}"), KafkaConfig::new(brokers))
            .route(the_route(&topic))
            .start(store)
            .await
            .map_err(|e| format!("start the relay: {e}"))?;
        let waited = relay
            .wait_until(Position(events), Duration::from_secs(600))
            .await
            .map_err(|e| format!("relay: {e}"));
        let elapsed = t0.elapsed();
        relay.shutdown().await;
        waited?;
        say(&format!(
            "  round {round}: relay {:.0} events/s ({:.2} s)",
            events as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        ));
        drain_times.push(elapsed);
    }
    raw_rates.sort_by(f64::total_cmp);
    drain_times.sort();
    let raw_rate = raw_rates[raw_rates.len() / 2];
    let raw = throughput_row(
        WORKLOAD,
        "raw_producer",
        1,
        messages.len() as u64,
        Duration::from_secs_f64(messages.len() as f64 / raw_rate),
    );
    let mut r = throughput_row(
        WORKLOAD,
        "drain_log",
        1,
        events,
        drain_times[drain_times.len() / 2],
    );
    r.compare_with(raw.ops_per_s);
    say(&format!(
        "  medians: raw producer {:.0} messages/s, relay {:.0} events/s, {:.2} of the raw producer",
        raw.ops_per_s,
        r.ops_per_s,
        r.ratio.unwrap_or(0.0)
    ));
    Ok(vec![raw, r])
}

/// Sends `messages` with the raw producer, at most the relay's window in
/// flight; the time from the first send to the last acknowledgement.
async fn send_raw(
    brokers: &str,
    topic: &str,
    messages: &[OutgoingMessage],
) -> Result<Duration, String> {
    let window = RelayConfig::default().max_in_flight as u64;
    let context = CountingContext::default();
    let producer: Arc<ThreadedProducer<CountingContext>> = Arc::new(
        producer_config(brokers)
            .create_with_context(context.clone())
            .map_err(|e| format!("kafka producer: {e}"))?,
    );
    let t0 = Instant::now();
    warm_up(&producer, topic).await?;
    let mut sent = 0u64;
    for m in messages {
        if sent >= window {
            context.wait(sent, window - 1).await?;
        }
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_slice()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(topic).headers(headers);
        if let Some(k) = &m.key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &m.payload {
            record = record.payload(p.as_slice());
        }
        producer
            .send(record)
            .map_err(|(e, _)| format!("raw producer: {e}"))?;
        sent += 1;
    }
    context.wait(sent, 0).await?;
    Ok(t0.elapsed())
}

/// What the relay does before its first send (see its producer module):
/// two metadata requests, which connect the producer to the broker and make
/// it ask for its producer id at once rather than on librdkafka's 500 ms
/// timer; the baseline pays them too, inside its timed window, as the
/// relay does.
async fn warm_up(
    producer: &Arc<ThreadedProducer<CountingContext>>,
    topic: &str,
) -> Result<(), String> {
    use dcb_kafka::rdkafka::producer::Producer;
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        for _ in 0..2 {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(|e| format!("raw producer: metadata of {topic}: {e}"))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("raw producer: {e}"))?
}

fn ack(
    delivered: Option<
        Result<
            dcb_kafka::rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    >,
) -> Result<(), String> {
    match delivered {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err((e, _)))) => Err(format!("raw producer: {e}")),
        Some(Err(_)) => Err("raw producer: delivery canceled".into()),
    }
}

/// (when each ping was sent, how long it took to arrive).
type Seen = Arc<Mutex<Vec<(u64, Duration)>>>;

/// A consumer of `topic` from its start that records the latency of every
/// ping it reads.
fn ping_reader(brokers: &str, topic: &str) -> Result<(tokio::task::JoinHandle<()>, Seen), String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-bench"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| format!("assign: {e}"))?;
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assign: {e}"))?;
    let seen: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        if let Some(Ok(p)) = m.payload().map(serde_json::from_slice::<Ping>) {
                            let latency = ping::since(p.sent_us);
                            seen.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((p.sent_us, latency));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "bench consumer"),
                }
            }
        })
    };
    Ok((reader, seen))
}

async fn wait_seen(seen: &Mutex<Vec<(u64, Duration)>>, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.lock().unwrap_or_else(|e| e.into_inner()).len() as u64) < total
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn in_window(seen: &Mutex<Vec<(u64, Duration)>>, from: u64, to: u64) -> Vec<Duration> {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(sent, _)| (from..to).contains(sent))
        .map(|(_, l)| *l)
        .collect()
}

/// (3a) The baseline of the live rows: produce → consumed through the broker
/// alone (the relay's producer settings, the same consumer), at `rate`
/// messages/s.
async fn kafka_roundtrip(
    db: &Db,
    brokers: &str,
    rate: u32,
    window: Duration,
) -> Result<Row, String> {
    let topic = topic_name(db, "roundtrip");
    create_topic(brokers, &topic).await?;
    let (reader, seen) = ping_reader(brokers, &topic)?;
    let producer = raw_producer(brokers)?;
    say(&format!(
        "relay: produce→consumed latency at {rate} messages/s (broker alone)"
    ));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let from = ping::now_us() + crate::runner::WARMUP.as_micros() as u64;
    let to = from + window.as_micros() as u64;
    let end = Instant::now() + crate::runner::WARMUP + window;
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0u64;
    while Instant::now() < end {
        tokio::select! {
            _ = ticker.tick() => {
                sent += 1;
                let payload = serde_json::to_vec(&Ping::now(sent)).map_err(|e| e.to_string())?;
                let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).payload(payload.as_slice());
                in_flight.push(producer.send_result(record).map_err(|(e, _)| format!("produce: {e}"))?);
            }
            Some(d) = in_flight.next(), if !in_flight.is_empty() => ack(Some(d))?,
        }
    }
    while let Some(d) = in_flight.next().await {
        ack(Some(d))?;
    }
    wait_seen(&seen, sent).await;
    reader.abort();
    let r = latency_row(
        WORKLOAD,
        &format!("kafka_roundtrip_{rate}"),
        1,
        in_window(&seen, from, to),
        window,
    );
    say(&format!(
        "  p50 {:.2} ms, p99 {:.2} ms",
        r.p50_ms.unwrap_or(0.0),
        r.p99_ms.unwrap_or(0.0)
    ));
    Ok(r)
}

/// (3) Append → consumed latency at a steady `rate` appends/s.
async fn live(
    db: &Db,
    store: &PgEventStore,
    brokers: &str,
    rate: u32,
    window: Duration,
) -> Result<Row, String> {
    let topic = topic_name(db, &format!("live{rate}"));
    create_topic(brokers, &topic).await?;
    let (reader, seen) = ping_reader(brokers, &topic)?;
    let relay: RelayHandle = EventRelay::new(RELAY_ID, KafkaConfig::new(brokers))
        .route(Route::new(Query::types([PING]), &topic))
        .start(store)
        .await
        .map_err(|e| format!("start the relay: {e}"))?;
    say(&format!(
        "relay: append→consumed latency at {rate} appends/s"
    ));
    let sent = send_pings(store, rate, window).await;
    let drained = async {
        let (from, to, total) = sent?;
        let head = store
            .head()
            .await
            .map_err(|e| format!("head: {e}"))?
            .unwrap_or_default();
        relay
            .wait_until(head, Duration::from_secs(120))
            .await
            .map_err(|e| format!("relay: {e}"))?;
        wait_seen(&seen, total).await;
        Ok::<_, String>((from, to))
    }
    .await;
    relay.shutdown().await;
    reader.abort();
    let (from, to) = drained?;
    let r = latency_row(
        WORKLOAD,
        &format!("live_{rate}"),
        1,
        in_window(&seen, from, to),
        window,
    );
    say(&format!(
        "  {:.0} events/s consumed, p50 {:.2} ms, p99 {:.2} ms",
        r.ops_per_s,
        r.p50_ms.unwrap_or(0.0),
        r.p99_ms.unwrap_or(0.0)
    ));
    Ok(r)
}

/// Publishes each ping job to a topic, records a `BenchPublished` event
/// once acknowledged, and the submit → acknowledged latency.
struct PublishPing {
    topic: String,
    acknowledged: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<(u64, Duration)>>>,
}

impl PublishJob for PublishPing {
    const KIND: &'static str = "bench_publish";
    type Payload = Ping;

    fn message(&self, ping: &Ping, _: &JobContext) -> Result<OutgoingMessage, JobError> {
        OutgoingMessage::new(&self.topic)
            .key(ping.seq.to_string())
            .json(ping)
            .map_err(JobError::permanent)
    }

    fn published(
        &self,
        ping: &Ping,
        _: &Delivered,
        _: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ping.sent_us, ping::since(ping.sent_us)));
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
        Ok(vec![EventRecord {
            event_type: EventType::from("BenchPublished"),
            tags: vec![Tag::new("ping", ping.seq)],
            payload: b"{}".to_vec(),
            metadata: EventMetadata::new(),
        }])
    }
}

/// (4) The publish processor: a backlog of jobs burnt down, then jobs at a
/// steady rate.
async fn publish(
    db: &Db,
    store: &PgEventStore,
    brokers: &str,
    window: Duration,
) -> Result<Vec<Row>, String> {
    let queue = store.queue();
    queue
        .migrate()
        .await
        .map_err(|e| format!("migrate the queue: {e}"))?;
    let topic = topic_name(db, "publish");
    create_topic(brokers, &topic).await?;
    let publisher = Arc::new(
        Publisher::connect(&KafkaConfig::new(brokers))
            .await
            .map_err(|e| format!("kafka publisher: {e}"))?,
    );
    let acknowledged = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let job = || PublishPing {
        topic: topic.clone(),
        acknowledged: acknowledged.clone(),
        seen: seen.clone(),
    };

    say(&format!("relay: enqueueing {PUBLISH_JOBS} publish jobs"));
    let mut seq = 0u64;
    while seq < PUBLISH_JOBS {
        let n = (PUBLISH_JOBS - seq).min(2_000);
        let batch: Vec<NewJob> = (0..n)
            .map(|i| NewJob::new(PublishPing::KIND, &Ping::now(seq + i)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        queue
            .enqueue_many(store.pool(), &batch)
            .await
            .map_err(|e| format!("enqueue_many: {e}"))?;
        seq += n;
    }
    say(&format!(
        "relay: publish processor burning down {PUBLISH_JOBS} jobs, {PUBLISH_CONCURRENCY} at once"
    ));
    let t0 = Instant::now();
    let workers = store
        .workers()
        .register(PublishProcessor::new(publisher.clone(), job()))
        .concurrency(PUBLISH_CONCURRENCY)
        .start()
        .await
        .map_err(|e| format!("start the workers: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while acknowledged.load(Ordering::Relaxed) < PUBLISH_JOBS {
        if Instant::now() > deadline {
            workers.shutdown(Duration::from_secs(5)).await;
            return Err("the publish burn-down did not finish within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let burn = throughput_row(
        WORKLOAD,
        "publish_burn_down",
        PUBLISH_CONCURRENCY,
        PUBLISH_JOBS,
        t0.elapsed(),
    );
    say(&format!("  {:.0} jobs/s", burn.ops_per_s));

    say(&format!(
        "relay: publish processor submit→acknowledged at {PUBLISH_RATE} jobs/s"
    ));
    seen.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let before = acknowledged.load(Ordering::Relaxed);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / PUBLISH_RATE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let from = ping::now_us() + crate::runner::WARMUP.as_micros() as u64;
    let to = from + window.as_micros() as u64;
    let end = Instant::now() + crate::runner::WARMUP + window;
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        ticker.tick().await;
        seq += 1;
        sent += 1;
        let queue = queue.clone();
        let job = NewJob::new(PublishPing::KIND, &Ping::now(seq)).map_err(|e| e.to_string())?;
        tasks.spawn(async move { queue.enqueue(queue.pool(), &job).await.map(|_| ()) });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| e.to_string())?
                .map_err(|e| format!("enqueue: {e}"))?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())?
            .map_err(|e| format!("enqueue: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.load(Ordering::Relaxed) < before + sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.shutdown(Duration::from_secs(10)).await;
    let latency = latency_row(
        WORKLOAD,
        "publish_latency",
        PUBLISH_CONCURRENCY,
        in_window(&seen, from, to),
        window,
    );
    say(&format!(
        "  p50 {:.2} ms, p99 {:.2} ms",
        latency.p50_ms.unwrap_or(0.0),
        latency.p99_ms.unwrap_or(0.0)
    ));
    Ok(vec![burn, latency])
}

/// The translator's event: an account was credited.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Credited {
    account: String,
    amount: u64,
}

impl Event for Credited {
    const SCHEMA: &'static [EventSchema] = &[EventSchema {
        event_type: "Credited",
        tag_keys: &["account"],
    }];
    fn event_type(&self) -> EventType {
        EventType::from_static("Credited")
    }
    fn tags(&self) -> Vec<Tag> {
        vec![Tag::new("account", &self.account)]
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        JsonCodec::encode(self)
    }
    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            "Credited" => JsonCodec::decode(payload),
            other => Err(CodecError::UnknownType(other.to_string())),
        }
    }
}

struct Credit(Credited);

impl Decision for Credit {
    type Event = Credited;
    type StateQuery = ();
    type Error = std::convert::Infallible;
    fn state_query(&self) {}
    fn process(&self, _: &()) -> Result<Vec<Credited>, Self::Error> {
        Ok(vec![Credited {
            account: self.0.account.clone(),
            amount: self.0.amount,
        }])
    }
}

struct Credits {
    topic: String,
}

impl Translator for Credits {
    type Decision = Credit;
    fn topic(&self) -> &str {
        &self.topic
    }
    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Credit, String> {
        Ok(Credit(message.json()?))
    }
}

async fn credited(store: &PgEventStore) -> Result<u64, String> {
    let (_, events) = store
        .read(&Query::types(["Credited"]), ReadOptions::forwards())
        .await
        .map_err(|e| format!("read: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(events.len() as u64)
}

/// One translator group over `topic` until it finished `messages`.
async fn translate_once(
    store: &PgEventStore,
    brokers: &str,
    topic: &str,
    group: &str,
    messages: u64,
    max_in_flight: Option<usize>,
) -> Result<(Duration, dcb_kafka::TranslatorStats), String> {
    let t0 = Instant::now();
    let mut runner =
        TranslatorRunner::new(KafkaConfig::new(brokers), group, store.clone()).add(Credits {
            topic: topic.to_owned(),
        });
    if let Some(n) = max_in_flight {
        runner = runner.max_in_flight(n);
    }
    let runner = runner
        .start()
        .await
        .map_err(|e| format!("start the translator: {e}"))?;
    let stats = runner
        .wait_for_messages(messages, Duration::from_secs(600))
        .await;
    let elapsed = t0.elapsed();
    runner.shutdown().await;
    if stats.messages < messages {
        return Err(format!(
            "the translator finished {} of {messages} messages: {stats:?}",
            stats.messages
        ));
    }
    Ok((elapsed, stats))
}

/// Produces `messages` credits over [`TRANSLATOR_KEYS`] keys to `topic`.
async fn produce_credits(brokers: &str, topic: &str, messages: u64) -> Result<(), String> {
    let producer = raw_producer(brokers)?;
    let mut in_flight = FuturesUnordered::new();
    for i in 0..messages {
        let account = format!("acc-{}", i % TRANSLATOR_KEYS);
        let payload = serde_json::to_vec(&Credited {
            account: account.clone(),
            amount: i + 1,
        })
        .map_err(|e| e.to_string())?;
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .key(account.as_str())
            .payload(payload.as_slice());
        in_flight.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| format!("produce: {e}"))?,
        );
        while in_flight.len() >= 10_000 {
            ack(in_flight.next().await)?;
        }
    }
    while let Some(d) = in_flight.next().await {
        ack(Some(d))?;
    }
    Ok(())
}

/// (5) Messages into decisions from one translator instance, one message at
/// a time (the baseline) and with keys in parallel (the default), then a
/// replay.
async fn translate(db: &Db, store: &PgEventStore, brokers: &str) -> Result<Vec<Row>, String> {
    let topic = topic_name(db, "credits");
    create_topic(brokers, &topic).await?;
    say(&format!(
        "relay: producing {TRANSLATOR_MESSAGES} messages over {TRANSLATOR_KEYS} keys to {topic}"
    ));
    produce_credits(brokers, &topic, TRANSLATOR_MESSAGES).await?;

    let sequential_topic = topic_name(db, "credits-one-at-a-time");
    create_topic(brokers, &sequential_topic).await?;
    produce_credits(brokers, &sequential_topic, TRANSLATOR_SEQUENTIAL_MESSAGES).await?;
    say("relay: translating into decisions one message at a time (max_in_flight 1)");
    let group = topic_name(db, "credits-one-at-a-time-group");
    let (elapsed, _) = translate_once(
        store,
        brokers,
        &sequential_topic,
        &group,
        TRANSLATOR_SEQUENTIAL_MESSAGES,
        Some(1),
    )
    .await?;
    let sequential = throughput_row(
        WORKLOAD,
        "translator_one_at_a_time",
        1,
        TRANSLATOR_SEQUENTIAL_MESSAGES,
        elapsed,
    );
    say(&format!("  {:.0} messages/s", sequential.ops_per_s));
    let before = credited(store).await?;

    say("relay: translating into decisions, keys in parallel (one instance)");
    let group = topic_name(db, "credits-group");
    let (elapsed, stats) =
        translate_once(store, brokers, &topic, &group, TRANSLATOR_MESSAGES, None).await?;
    let appended = credited(store).await? - before;
    let mut first = throughput_row(WORKLOAD, "translator", 1, TRANSLATOR_MESSAGES, elapsed);
    first.compare_with(sequential.ops_per_s);
    first.events_per_s = Some(appended as f64 / elapsed.as_secs_f64());
    say(&format!(
        "  {:.0} messages/s, {} decided, {} events appended",
        first.ops_per_s, stats.decided, appended
    ));

    say("relay: replaying them from a new group");
    let group = topic_name(db, "credits-replay");
    let (elapsed, stats) =
        translate_once(store, brokers, &topic, &group, TRANSLATOR_MESSAGES, None).await?;
    let again = credited(store).await? - appended - before;
    let mut replay = throughput_row(
        WORKLOAD,
        "translator_replay",
        1,
        TRANSLATOR_MESSAGES,
        elapsed,
    );
    replay.events_per_s = Some(again as f64 / elapsed.as_secs_f64());
    say(&format!(
        "  {:.0} messages/s, {} recognised as duplicates, {again} events appended (duplicates on replay)",
        replay.ops_per_s, stats.duplicates
    ));
    if again != 0 {
        return Err(format!("the replay appended {again} events"));
    }
    Ok(vec![sequential, first, replay])
}
