//! Observability of the running cart: one HTTP AddItem is one trace, from
//! the request through the decision and its append to the transactional
//! listener that handles the appended events; `GET /metrics` shows the
//! store, its listeners and the framework's own metrics.
//!
//! Spans are captured in memory (`dcb_console::telemetry::testing`). Needs
//! PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod common;

use std::collections::HashMap;

use cart::slices::cart_items_db::CartItemsDbListener;
use common::*;
use dcb_console::telemetry::testing::{self, attribute, describe, SpanData};
use dcb_core::{EventStore, Query, ReadOptions, Tag};
use opentelemetry::trace::SpanKind;

fn named<'s>(spans: &'s [SpanData], name: &str) -> Vec<&'s SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn only<'s>(spans: &'s [SpanData], name: &str) -> &'s SpanData {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "one span named {name:?} expected in the trace:\n{}",
        describe(spans)
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_add_item_is_one_trace_from_the_request_to_the_transactional_listener() {
    let captured = testing::capture();
    let t = start().await;
    let (cart, item, product) = (new_id(), new_id(), new_id());
    let (trace_id, traceparent) = testing::new_traceparent();
    let caller_span = traceparent.split('-').nth(2).unwrap().to_owned();

    let response = t
        .client
        .post(format!("{}/additem/{cart}", t.base))
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({
            "item_id": item, "product_id": product,
            "description": "a thing", "image": "thing.png", "price": "2.50"
        }))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    t.settle(CartItemsDbListener::ID).await;

    // The events carry the trace in their metadata.
    let (_, events) = t
        .app
        .store()
        .read(
            &Query::tags([Tag::new("cart_id", cart)]),
            ReadOptions::forwards(),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "CartCreated and CartItemAdded");
    for event in &events {
        let trace = event.metadata().trace.as_ref().expect("a trace context");
        assert_eq!(trace.trace_id(), Some(trace_id.as_str()));
    }

    // The listener's handle spans end before its checkpoint commits, so
    // they are all there once it settled; the wait covers the exporter.
    let handle = format!("handle {}", CartItemsDbListener::ID);
    let spans = captured
        .wait_for(&trace_id, EVENTUALLY, |spans| {
            named(spans, &handle).len() == 2 && !named(spans, "dcb.append").is_empty()
        })
        .await
        .unwrap_or_else(|seen| {
            panic!(
                "the trace never showed the listener handling both events:\n{}",
                describe(&seen)
            )
        });

    // request → decision → append → each event handled by the
    // transactional listener, parent by parent.
    let request = only(&spans, "POST /additem/{cart_id}");
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(request.parent_span_id.to_string(), caller_span);
    assert_eq!(
        attribute(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    let decide = only(&spans, "dcb.decide");
    assert_eq!(decide.parent_span_id, request.span_context.span_id());
    assert_eq!(
        attribute(decide, "dcb.outcome").as_deref(),
        Some("appended")
    );
    let append = only(&spans, "dcb.append");
    assert_eq!(append.parent_span_id, decide.span_context.span_id());
    assert_eq!(append.span_kind, SpanKind::Client);
    assert_eq!(attribute(append, "dcb.events").as_deref(), Some("2"));
    let positions: Vec<String> = events.iter().map(|e| e.position.0.to_string()).collect();
    for span in named(&spans, &handle) {
        assert_eq!(
            span.parent_span_id,
            append.span_context.span_id(),
            "a listener's span is a child of the append that wrote its event:\n{}",
            describe(&spans)
        );
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert_eq!(attribute(span, "messaging.system").as_deref(), Some("dcb"));
        assert_eq!(
            attribute(span, "messaging.consumer.group.name").as_deref(),
            Some(CartItemsDbListener::ID)
        );
        let position = attribute(span, "dcb.position").unwrap();
        assert!(
            positions.contains(&position),
            "{position} not in {positions:?}"
        );
    }
    // The stored context names the append span as the parent.
    let stored = events[0].metadata().trace.as_ref().unwrap();
    assert_eq!(
        stored.span_id(),
        Some(append.span_context.span_id().to_string().as_str())
    );
    t.stop().await;
}

/// `name{labels} value` lines of a Prometheus text page.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_serves_its_metrics() {
    let t = start().await;
    let (cart, item, product) = (new_id(), new_id(), new_id());
    assert_eq!(t.add(cart, item, product, "1.00").await.0, 200);
    t.settle_all().await;
    let head = t.app.store().head().await.unwrap().unwrap().0 as f64;

    let response = t
        .client
        .get(format!("{}/metrics", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let samples = samples(&text);
    assert_eq!(samples.get("dcb_head_position"), Some(&head), "{text}");
    for listener in [
        CartItemsDbListener::ID,
        cart::slices::carts_with_products::CartsWithProductsListener::ID,
        cart::slices::inventories::InventoriesListener::ID,
        cart::slices::archive_item::ARCHIVE_AUTOMATION_ID,
    ] {
        let lag = format!("dcb_listener_lag_events{{listener=\"{listener}\"}}");
        assert_eq!(
            samples.get(&lag),
            Some(&0.0),
            "{lag} after settling:\n{text}"
        );
        let parked = format!("dcb_listener_parked_events{{listener=\"{listener}\"}}");
        assert_eq!(samples.get(&parked), Some(&0.0), "{text}");
    }
    assert!(
        samples
            .get("dcb_append_duration_seconds_count")
            .is_some_and(|n| *n >= 1.0),
        "{text}"
    );
    assert!(
        samples.contains_key("dcb_decision_conflicts_total"),
        "{text}"
    );
    t.stop().await;
}
