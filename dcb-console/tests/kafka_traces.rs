//! One trace across Kafka: a decision in one service appends an event under
//! a caller's trace; the relay publishes it with `traceparent` and
//! `tracestate` headers of its `send` span; a translator of another service
//! (another schema) continues that trace in its `process` span, and the
//! decision it makes there appends an event that carries the same trace.
//!
//! Spans are captured in memory (`dcb_console::telemetry::testing`). Needs
//! PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`) and a broker
//! (`KAFKA_BROKERS`; `scripts/tansu.sh start`).

use std::time::{Duration, Instant};

use dcb_console::telemetry::testing::{self, attribute, describe, SpanData};
use dcb_core::trace::TraceContext;
use dcb_core::{Decision, DecisionMaker, Event, EventStore, Query, ReadOptions, SequencedEvent};
use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use dcb_kafka::rdkafka::message::Headers;
use dcb_kafka::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use dcb_kafka::{
    EventRelay, KafkaConfig, KafkaMessage, RelayConfig, Route, Translator, TranslatorRunner,
    HEADER_TRACEPARENT,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use opentelemetry::trace::SpanKind;
use tracing::Instrument;

const WAIT: Duration = Duration::from_secs(60);

fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "this test needs a Kafka broker: set KAFKA_BROKERS or run scripts/tansu.sh start \
             (export KAFKA_BROKERS=\"$(scripts/tansu.sh start)\")"
        ),
    }
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic")
    {
        result.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// The `traceparent` header of the first message of `topic`.
fn first_traceparent(brokers: &str, topic: &str) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            let headers = message.headers().expect("headers");
            return headers
                .iter()
                .find(|h| h.key == HEADER_TRACEPARENT)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .expect("a traceparent header");
        }
    }
    panic!("no message on {topic} within {WAIT:?}");
}

#[derive(Event, Debug, Clone, PartialEq)]
enum ShopEvent {
    OrderPlaced {
        #[id]
        order: String,
    },
}

#[derive(Event, Debug, Clone, PartialEq)]
enum BillingEvent {
    Charged {
        #[id]
        order: String,
    },
}

struct PlaceOrder(String);

impl Decision for PlaceOrder {
    type Event = ShopEvent;
    type StateQuery = ();
    type Error = std::convert::Infallible;

    fn state_query(&self) {}

    fn process(&self, _: &()) -> Result<Vec<ShopEvent>, Self::Error> {
        Ok(vec![ShopEvent::OrderPlaced {
            order: self.0.clone(),
        }])
    }
}

struct Charge(String);

impl Decision for Charge {
    type Event = BillingEvent;
    type StateQuery = ();
    type Error = std::convert::Infallible;

    fn state_query(&self) {}

    fn process(&self, _: &()) -> Result<Vec<BillingEvent>, Self::Error> {
        Ok(vec![BillingEvent::Charged {
            order: self.0.clone(),
        }])
    }
}

/// Billing's translator: an `OrderPlaced` message becomes a charge.
struct Orders {
    topic: String,
}

impl Translator for Orders {
    type Decision = Charge;

    fn topic(&self) -> &str {
        &self.topic
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Charge, String> {
        let order = message.key_str().ok_or("a message without a key")?;
        Ok(Charge(order.to_owned()))
    }
}

fn one<'s>(spans: &'s [SpanData], what: &str, pick: impl Fn(&SpanData) -> bool) -> &'s SpanData {
    let found: Vec<_> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "one {what} expected in the trace:\n{}",
        describe(spans)
    );
    found[0]
}

async fn charges(store: &PgEventStore) -> Vec<SequencedEvent> {
    let (_, events) = store
        .read(&Query::of::<BillingEvent>(), ReadOptions::forwards())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_event_carries_its_trace_to_a_translator_of_another_service() {
    let captured = testing::capture();
    let brokers = brokers();
    let topic = format!("dcb-trace-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
    create_topic(&brokers, &topic).await;
    let db = TestDatabase::create().await;
    let shop = db.store().await;
    let billing = PgEventStore::builder()
        .schema("billing")
        .build(db.pool().clone())
        .await
        .unwrap();

    let relay = EventRelay::new("orders", KafkaConfig::new(&brokers))
        .route(Route::new(Query::of::<ShopEvent>(), &topic))
        .key_tag("order")
        .config(RelayConfig::default().poll_interval(Duration::from_millis(200)))
        .start(&shop)
        .await
        .unwrap();
    let translators = TranslatorRunner::new(
        KafkaConfig::new(&brokers).option("auto.offset.reset", "earliest"),
        format!("{topic}-billing"),
        billing.clone(),
    )
    .add(Orders {
        topic: topic.clone(),
    })
    .start()
    .await
    .unwrap();

    // The shop decides under a caller's trace (a request span continuing a
    // made-up upstream caller).
    let (trace_id, traceparent) = testing::new_traceparent();
    let request = tracing::info_span!("request");
    dcb_core::trace::continue_from(
        &request,
        Some(&TraceContext::new(&traceparent).with_tracestate("shop=1")),
    );
    DecisionMaker::new(shop.clone())
        .make(PlaceOrder("o-1".into()))
        .instrument(request)
        .await
        .unwrap();

    let until = Instant::now() + WAIT;
    let charged = loop {
        let charged = charges(&billing).await;
        if !charged.is_empty() {
            break charged;
        }
        assert!(Instant::now() < until, "billing never charged the order");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(charged.len(), 1);
    let billing_trace = charged[0].metadata().trace.as_ref().expect("a trace");
    assert_eq!(billing_trace.trace_id(), Some(trace_id.as_str()));
    assert_eq!(
        billing_trace.tracestate.as_deref(),
        Some("shop=1"),
        "the trace state travels with the trace"
    );

    let send_name = format!("send {topic}");
    let process_name = format!("process {topic}");
    let spans = captured
        .wait_for(&trace_id, WAIT, |spans| {
            spans.iter().filter(|s| s.name == "dcb.append").count() == 2
                && spans.iter().any(|s| s.name == process_name)
        })
        .await
        .unwrap_or_else(|seen| panic!("the trace never reached billing:\n{}", describe(&seen)));

    let schema_is = |schema: &'static str| {
        move |s: &SpanData| {
            s.name == "dcb.append" && attribute(s, "dcb.schema").as_deref() == Some(schema)
        }
    };
    let shop_append = one(&spans, "append in the shop", schema_is("dcb"));
    let send = one(&spans, "relay send", |s| s.name == send_name);
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(
        send.parent_span_id,
        shop_append.span_context.span_id(),
        "the relay's send continues the trace stored with the event"
    );
    assert_eq!(
        attribute(send, "messaging.system").as_deref(),
        Some("kafka")
    );
    assert_eq!(
        attribute(send, "messaging.destination.name").as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(
        attribute(send, "messaging.kafka.message.key").as_deref(),
        Some("o-1")
    );
    let process = one(&spans, "translator process", |s| s.name == process_name);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        process.parent_span_id,
        send.span_context.span_id(),
        "the translator continues the trace of the message's headers"
    );
    assert_eq!(
        attribute(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    let decide = one(&spans, "decision in billing", |s| {
        s.name == "dcb.decide" && s.parent_span_id == process.span_context.span_id()
    });
    let billing_append = one(&spans, "append in billing", schema_is("billing"));
    assert_eq!(billing_append.parent_span_id, decide.span_context.span_id());
    assert_eq!(
        billing_trace.span_id(),
        Some(billing_append.span_context.span_id().to_string().as_str())
    );

    // The header on the wire names the send span.
    let header = TraceContext::new(first_traceparent(&brokers, &topic));
    assert_eq!(header.trace_id(), Some(trace_id.as_str()));
    assert_eq!(
        header.span_id(),
        Some(send.span_context.span_id().to_string().as_str())
    );

    translators.shutdown().await;
    relay.shutdown().await;
    billing.shutdown().await;
    shop.shutdown().await;
    db.cleanup().await;
}
