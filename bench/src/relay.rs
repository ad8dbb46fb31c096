//! The `relay` workload: the Kafka event relay draining a preloaded log to
//! the broker, and the append → consumed latency at a steady append rate.
//! Needs `KAFKA_BROKERS`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcb_core::{EventStore, Query};
use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use dcb_kafka::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use dcb_kafka::{EventRelay, KafkaConfig, Publisher};
use dcb_postgres::listener::{RunnerConfig, RunnerHandle};

use crate::append::preload;
use crate::cli::Args;
use crate::db::{Db, PgEventStore};
use crate::listener::{latency_row, send_pings, throughput_row};
use crate::ping::{self, Ping, PING};
use crate::report::Row;

const WORKLOAD: &str = "relay";
/// At most this many events are relayed by the throughput variant.
pub const RELAY_EVENTS: u64 = 100_000;
/// Appends per second of the latency variant.
pub const LATENCY_RATE: u32 = 1_000;
/// Events per batch of the relay's runner.
pub const BATCH: usize = 500;
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

async fn start_relay(
    store: &PgEventStore,
    brokers: &str,
    query: Query,
    topic: &str,
) -> Result<RunnerHandle, String> {
    // librdkafka's default linger.ms (5) would add 5 ms to every send of a
    // relay that awaits each acknowledgement before the next send.
    let publisher = Publisher::connect(&KafkaConfig::new(brokers).option("linger.ms", "0"))
        .await
        .map_err(|e| format!("kafka publisher: {e}"))?;
    EventRelay::new(RELAY_ID, query, topic, publisher)
        .runner_config(RunnerConfig::default().batch_size(BATCH))
        .start(store)
        .await
        .map_err(|e| format!("start the relay: {e}"))
}

/// Runs every variant of the workload.
///
/// # Errors
/// No broker, or the first failure of any variant.
pub async fn run(db: &Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    let brokers = brokers().ok_or_else(|| NO_BROKERS.to_string())?;
    let events = RELAY_EVENTS.min(args.preload);
    if events > 0 {
        let store = db.open_store("relay_log", 4).await?;
        let result = throughput(db, &store, &brokers, events).await;
        db.close_store(store).await?;
        rows.push(result?);
    } else {
        say("relay: --preload 0, skipping the throughput row");
    }
    let store = db.open_store("relay_live", 8).await?;
    let result = latency(db, &store, &brokers, Duration::from_secs_f64(args.seconds)).await;
    db.close_store(store).await?;
    rows.push(result?);
    Ok(())
}

async fn throughput(
    db: &Db,
    store: &PgEventStore,
    brokers: &str,
    events: u64,
) -> Result<Row, String> {
    say(&format!("relay: loading {events} events..."));
    preload(store, events).await?;
    db.settle_schema(store.schema()).await?;
    let topic = topic_name(db, "log");
    create_topic(brokers, &topic).await?;
    say(&format!("relay: publishing {events} events to {topic}"));
    let t0 = Instant::now();
    let relay = start_relay(
        store,
        brokers,
        Query::types(["CartCreated", "ItemAdded"]),
        &topic,
    )
    .await?;
    let waited = relay
        .wait_until_timeout(
            RELAY_ID,
            dcb_core::Position(events),
            Duration::from_secs(600),
        )
        .await
        .map_err(|e| format!("relay: {e}"));
    let elapsed = t0.elapsed();
    relay.shutdown().await;
    waited?;
    let r = throughput_row(WORKLOAD, "drain_log", 1, events, elapsed);
    say(&format!(
        "  {:.0} events/s ({:.1} s)",
        r.ops_per_s,
        elapsed.as_secs_f64()
    ));
    Ok(r)
}

async fn latency(
    db: &Db,
    store: &PgEventStore,
    brokers: &str,
    window: Duration,
) -> Result<Row, String> {
    let topic = topic_name(db, "live");
    create_topic(brokers, &topic).await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-bench"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
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
    let relay = start_relay(store, brokers, Query::types([PING]), &topic).await?;
    say(&format!(
        "relay: append→consumed latency at {LATENCY_RATE} appends/s"
    ));
    let sent = send_pings(store, LATENCY_RATE, window).await;
    // Wait for the relay to publish everything and the consumer to read it.
    let drained = async {
        let (from, to, total) = sent?;
        let head = store
            .head()
            .await
            .map_err(|e| format!("head: {e}"))?
            .map_or(0, |p| p.0);
        relay
            .wait_until_timeout(RELAY_ID, dcb_core::Position(head), Duration::from_secs(120))
            .await
            .map_err(|e| format!("relay: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while (seen.lock().unwrap_or_else(|e| e.into_inner()).len() as u64) < total
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, String>((from, to))
    }
    .await;
    relay.shutdown().await;
    reader.abort();
    let (from, to) = drained?;
    let expected = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(sent, _)| (from..to).contains(sent))
        .map(|(_, l)| *l)
        .collect::<Vec<_>>();
    let r = latency_row(WORKLOAD, "live_latency", 1, expected, window);
    say(&format!(
        "  {:.0} events/s consumed, p50 {:.2} ms, p99 {:.2} ms",
        r.ops_per_s,
        r.p50_ms.unwrap_or(0.0),
        r.p99_ms.unwrap_or(0.0)
    ));
    Ok(r)
}
