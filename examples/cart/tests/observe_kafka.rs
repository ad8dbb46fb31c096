//! One trace from an HTTP request to a decision in another service: a
//! submitted cart's event is handled by the listener that enqueues its
//! publication, the job's attempt publishes it to Kafka with the trace in
//! the message's headers, and a translator of another service (another
//! schema) decides on it in the same trace.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`) and a
//! broker (`KAFKA_BROKERS`; `export KAFKA_BROKERS="$(scripts/tansu.sh start)"`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cart::app::Config;
use cart::slices::publish_cart::EnqueuePublication;
use common::*;
use dcb_console::telemetry::testing::{self, describe, SpanData};
use dcb_core::{Decision, Event, EventStore, Query, ReadOptions, Tag};
use dcb_kafka::{KafkaConfig, KafkaMessage, Translator, TranslatorRunner};
use dcb_postgres::PgEventStore;
use opentelemetry::trace::SpanId;

#[derive(Event, Debug, Clone, PartialEq)]
enum ShippingEvent {
    ShipmentPlanned {
        #[id]
        cart_id: String,
    },
}

struct PlanShipment(String);

impl Decision for PlanShipment {
    type Event = ShippingEvent;
    type StateQuery = ();
    type Error = std::convert::Infallible;

    fn state_query(&self) {}

    fn process(&self, _: &()) -> Result<Vec<ShippingEvent>, Self::Error> {
        Ok(vec![ShippingEvent::ShipmentPlanned {
            cart_id: self.0.clone(),
        }])
    }
}

/// The shipping service's view of `published-carts`.
struct PublishedCarts;

impl Translator for PublishedCarts {
    type Decision = PlanShipment;

    fn topic(&self) -> &str {
        "published-carts"
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<PlanShipment, String> {
        Ok(PlanShipment(
            message.key_str().ok_or("a cart without a key")?.to_owned(),
        ))
    }
}

fn one<'s>(spans: &'s [SpanData], what: &str, pick: impl Fn(&SpanData) -> bool) -> &'s SpanData {
    let found: Vec<_> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} expected:\n{}", describe(spans));
    found[0]
}

/// Whether `ancestor` is `span`'s parent, grandparent... within `spans`.
fn descends(spans: &[SpanData], span: &SpanData, ancestor: SpanId) -> bool {
    let mut parent = span.parent_span_id;
    while parent != SpanId::INVALID {
        if parent == ancestor {
            return true;
        }
        match spans.iter().find(|s| s.span_context.span_id() == parent) {
            Some(s) => parent = s.parent_span_id,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_cart_is_one_trace_through_its_publication_job_to_another_service() {
    let captured = testing::capture();
    let brokers = brokers();
    ensure_topics(&brokers).await;
    let kafka = KafkaConfig::new(&brokers).option("auto.offset.reset", "earliest");
    let db = dcb_postgres::testing::TestDatabase::create().await;
    let mut config = Config::new(db.url());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.kafka = Some(kafka.clone());
    config.kafka_group = format!("cart-trace-{}", new_id());
    let app = cart::app::App::start(config).await.expect("the app starts");
    let t = TestApp {
        base: format!("http://{}", app.addr()),
        app,
        db,
        client: reqwest::Client::new(),
    };
    let shipping = PgEventStore::builder()
        .schema("shipping")
        .build(t.db.pool().clone())
        .await
        .unwrap();
    let translators =
        TranslatorRunner::new(kafka, format!("shipping-{}", new_id()), shipping.clone())
            .add(PublishedCarts)
            .start()
            .await
            .unwrap();

    let (cart, item, product) = (new_id(), new_id(), new_id());
    assert_eq!(t.add(cart, item, product, "3.00").await.0, 200);
    let (trace_id, traceparent) = testing::new_traceparent();
    let response = t
        .client
        .post(format!("{}/submitcart/{cart}", t.base))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Shipping decides on the published cart, in the request's trace.
    let mine = Query::tags([Tag::new("cart_id", cart)]);
    let until = Instant::now() + EVENTUALLY;
    let planned = loop {
        let (_, planned) = shipping
            .read(&mine, ReadOptions::forwards())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        if !planned.is_empty() {
            break planned;
        }
        assert!(
            Instant::now() < until,
            "shipping never planned the submitted cart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let trace = planned[0].metadata().trace.as_ref().expect("a trace");
    assert_eq!(trace.trace_id(), Some(trace_id.as_str()));

    let spans = captured
        .wait_for(&trace_id, EVENTUALLY, |spans| {
            spans.iter().filter(|s| s.name == "dcb.append").count() >= 2
                && spans.iter().any(|s| s.name == "process published-carts")
        })
        .await
        .unwrap_or_else(|seen| panic!("an incomplete trace:\n{}", describe(&seen)));
    let request = one(&spans, "request", |s| {
        s.name == "POST /submitcart/{cart_id}"
    });
    let enqueue = one(&spans, "enqueuer's handle span", |s| {
        s.name == format!("handle {}", EnqueuePublication::ID)
    });
    assert!(
        descends(&spans, enqueue, request.span_context.span_id()),
        "the listener continues the request's trace:\n{}",
        describe(&spans)
    );
    let job = one(&spans, "job attempt", |s| s.name == "run default");
    assert_eq!(
        job.parent_span_id,
        enqueue.span_context.span_id(),
        "the job continues the span that enqueued it:\n{}",
        describe(&spans)
    );
    let send = one(&spans, "publisher's send", |s| {
        s.name == "send published-carts"
    });
    assert!(descends(&spans, send, job.span_context.span_id()));
    let process = one(&spans, "shipping's process", |s| {
        s.name == "process published-carts"
    });
    assert_eq!(
        process.parent_span_id,
        send.span_context.span_id(),
        "shipping continues the trace of the message's headers"
    );
    let decide = one(&spans, "shipping's decision", |s| {
        s.name == "dcb.decide" && s.parent_span_id == process.span_context.span_id()
    });
    assert!(spans
        .iter()
        .any(|s| s.name == "dcb.append" && s.parent_span_id == decide.span_context.span_id()));

    translators.shutdown().await;
    shipping.shutdown().await;
    t.stop().await;
}
