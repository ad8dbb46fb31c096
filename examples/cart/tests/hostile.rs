//! Hostile input at the edge (the real server on a free port, real
//! PostgreSQL): texts a read model cannot store, prices whose sums overflow,
//! and histories written before the cart's limits. The server answers 4xx
//! naming the field, appends nothing, never answers 5xx, and the read models
//! keep advancing for every other cart.

mod common;

use cart::events::CartEvent;
use cart::kafka::{InventoriesTranslator, PriceChangesTranslator};
use cart::limits::{MAX_DESCRIPTION_BYTES, MAX_IMAGE_BYTES};
use cart::slices::cart_items_db::CartItemsDbListener;
use common::*;
use dcb_core::EventStore;
use dcb_kafka::{KafkaMessage, Translator};
use serde_json::{json, Value};
use uuid::Uuid;

/// The largest price of the issue: two of them overflow a `Decimal` sum.
const HUGE: &str = "50000000000000000000000000000";

fn add_body(item: Uuid, product: Uuid, description: &str, image: &str, price: Value) -> Value {
    json!({"item_id": item, "product_id": product, "description": description,
           "image": image, "price": price})
}

/// Waits until `/{cart}/cartitemsfromdb` lists `item`.
async fn wait_listed_in_db(t: &TestApp, cart: Uuid, item: Uuid) -> Value {
    eventually("the item in /cartitemsfromdb", EVENTUALLY, || async {
        let (status, body) = t.get(&format!("/{cart}/cartitemsfromdb")).await;
        let listed = body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["item_id"] == json!(item)));
        if status == 200 && listed {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_text_is_a_400_naming_the_field_and_every_read_model_advances() {
    let t = start().await;
    let (cart, other, product) = (new_id(), new_id(), new_id());
    let cases = [
        (
            "description",
            add_body(new_id(), product, "a\u{0}b", "i.png", json!("1.00")),
        ),
        (
            "image",
            add_body(new_id(), product, "d", "\u{0}", json!("1.00")),
        ),
        (
            "description",
            add_body(
                new_id(),
                product,
                &"d".repeat(MAX_DESCRIPTION_BYTES + 1),
                "i",
                json!(1),
            ),
        ),
        (
            "image",
            add_body(
                new_id(),
                product,
                "d",
                &"i".repeat(MAX_IMAGE_BYTES + 1),
                json!(1),
            ),
        ),
    ];
    for (field, body) in cases {
        let (status, answer) = t.post(&format!("/additem/{cart}"), Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "InvalidText", "{answer}");
        assert_eq!(answer["field"], field, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    // The same bytes as the issue sent them: a JSON `\u0000` escape.
    let raw = format!(
        r#"{{"item_id":"{}","product_id":"{product}","description":"a\u0000b","image":"i","price":"1"}}"#,
        new_id()
    );
    let (status, answer) = t.post_raw(&format!("/additem/{cart}"), raw).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("description")),
        "{answer}"
    );
    assert_eq!(
        t.app.store().head().await.unwrap(),
        None,
        "nothing was appended"
    );

    // Another cart's item shows in the database read model.
    let item = new_id();
    let (status, answer) = t.add(other, item, product, "2.00").await;
    assert_eq!(status, 200, "{answer}");
    let view = wait_listed_in_db(&t, other, item).await;
    assert_eq!(view["total_price"], "2.00");
    let (status, answer) = t.get(&format!("/{cart}/cartitems")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("CartDoesNotExist"))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_that_could_overflow_a_sum_are_refused_and_nothing_answers_500() {
    let t = start().await;
    let (cart, product) = (new_id(), new_id());
    let mut adds = Vec::new();
    for _ in 0..2 {
        let body = add_body(new_id(), product, "d", "i", json!(HUGE));
        adds.push(t.post(&format!("/additem/{cart}"), Some(body)).await);
    }
    // What the issue saw: these answered 500 after two such adds.
    for path in [
        format!("/{cart}/cartitems"),
        format!("/{cart}/cartitemsfromdb"),
    ] {
        let (status, answer) = t.get(&path).await;
        assert!(status < 500, "GET {path} answered {status} {answer}");
    }
    let (status, answer) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert!(status < 500, "submitcart answered {status} {answer}");

    for (status, answer) in adds {
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "InvalidPrice", "{answer}");
        assert_eq!(answer["field"], "price", "{answer}");
    }
    let refused = [
        ("price", json!("1000000000.000001")),
        ("price", json!("0.0000001")),
        ("price", json!("-0.01")),
        ("price", json!(-1)),
    ];
    for (field, price) in refused {
        let body = add_body(new_id(), product, "d", "i", price.clone());
        let (status, answer) = t.post(&format!("/additem/{cart}"), Some(body)).await;
        assert_eq!(
            (status, answer["error"].as_str(), answer["field"].as_str()),
            (400, Some("InvalidPrice"), Some(field)),
            "price {price}: {answer}"
        );
    }
    // A number too large for a Decimal is malformed, not a panic.
    let raw = format!(
        r#"{{"item_id":"{}","product_id":"{product}","description":"d","image":"i","price":1e300}}"#,
        new_id()
    );
    let (status, answer) = t.post_raw(&format!("/additem/{cart}"), raw).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("MalformedBody"))
    );
    for (body, field) in [
        (json!({"old_price": HUGE, "new_price": "1"}), "old_price"),
        (
            json!({"old_price": "1", "new_price": "0.1234567"}),
            "new_price",
        ),
        (json!({"old_price": "-1", "new_price": "1"}), "old_price"),
    ] {
        let (status, answer) = t.post(&format!("/changeprice/{product}"), Some(body)).await;
        assert_eq!(
            (status, answer["error"].as_str(), answer["field"].as_str()),
            (400, Some("InvalidPrice"), Some(field)),
            "{answer}"
        );
    }
    assert_eq!(
        t.app.store().head().await.unwrap(),
        None,
        "nothing was appended"
    );

    // The largest accepted prices add up.
    let max = "1000000000";
    for _ in 0..3 {
        assert_eq!(t.add(cart, new_id(), product, max).await.0, 200);
    }
    let (status, live) = t.get(&format!("/{cart}/cartitems")).await;
    assert_eq!(
        (status, live["total_price"].as_str()),
        (200, Some("3000000000"))
    );
    let (status, answer) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{answer}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_history_whose_total_overflows_answers_409_never_500() {
    let t = start().await;
    let (cart, product) = (new_id(), new_id());
    let huge = HUGE.parse().unwrap();
    let item = |item_id| CartEvent::CartItemAdded {
        cart_id: cart,
        item_id,
        product_id: product,
        description: "legacy".to_owned(),
        image: "legacy.png".to_owned(),
        price: huge,
        fingerprint: "legacy".to_owned(),
    };
    t.append_raw(vec![
        CartEvent::CartCreated { cart_id: cart },
        item(new_id()),
        item(new_id()),
    ])
    .await;
    t.settle(CartItemsDbListener::ID).await;
    for path in [
        format!("/{cart}/cartitems"),
        format!("/{cart}/cartitemsfromdb"),
    ] {
        let (status, answer) = t.get(&path).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (409, Some("TotalOverflow")),
            "GET {path}: {answer}"
        );
    }
    let (status, answer) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("TotalOverflow")),
        "{answer}"
    );
    // The cart can still be repaired: clear it, then it submits fine.
    assert_eq!(t.post(&format!("/clearcart/{cart}"), None).await.0, 200);
    assert_eq!(t.add(cart, new_id(), product, "1.50").await.0, 200);
    let (status, answer) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{answer}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_event_with_a_nul_does_not_stop_the_database_read_model() {
    let t = start().await;
    let (legacy, other, product) = (new_id(), new_id(), new_id());
    let legacy_item = new_id();
    t.append_raw(vec![
        CartEvent::CartCreated { cart_id: legacy },
        CartEvent::CartItemAdded {
            cart_id: legacy,
            item_id: legacy_item,
            product_id: product,
            description: "a\u{0}b".to_owned(),
            image: "\u{0}".to_owned(),
            price: "1.00".parse().unwrap(),
            fingerprint: "legacy".to_owned(),
        },
    ])
    .await;
    let item = new_id();
    assert_eq!(t.add(other, item, product, "2.00").await.0, 200);
    wait_listed_in_db(&t, other, item).await;
    let view = wait_listed_in_db(&t, legacy, legacy_item).await;
    assert_eq!(view["items"][0]["description"], "a\u{FFFD}b");
    assert_eq!(view["items"][0]["image"], "\u{FFFD}");
    let (status, live) = t.get(&format!("/{legacy}/cartitems")).await;
    assert_eq!(status, 200);
    assert_eq!(
        live["items"][0]["description"], "a\u{0}b",
        "the log keeps it"
    );
    t.settle_all().await;
    t.stop().await;
}

fn message(payload: &[u8]) -> KafkaMessage<'_> {
    KafkaMessage::new("t", 0, 1, None, Some(payload))
}

#[test]
fn kafka_values_out_of_bounds_become_dead_records_with_a_reason() {
    let product = Uuid::from_u128(5);
    for inventory in ["-1", "1000000001", "9223372036854775807"] {
        let payload = format!(r#"{{"product_id":"{product}","inventory":{inventory}}}"#);
        let reason = InventoriesTranslator
            .translate(&message(payload.as_bytes()))
            .err()
            .unwrap_or_else(|| panic!("inventory {inventory} is refused"));
        assert!(reason.contains("inventory must be between"), "{reason}");
    }
    for (old, new, field) in [
        (HUGE, "1", "old_price"),
        ("1", "-2", "new_price"),
        ("1", "0.0000001", "new_price"),
    ] {
        let payload =
            format!(r#"{{"product_id":"{product}","old_price":"{old}","new_price":"{new}"}}"#);
        let reason = PriceChangesTranslator
            .translate(&message(payload.as_bytes()))
            .err()
            .unwrap_or_else(|| panic!("{old} -> {new} is refused"));
        assert!(reason.starts_with(field), "{reason}");
        assert!(!reason.contains('\0'));
    }
    let ok = format!(r#"{{"product_id":"{product}","inventory":1000000000}}"#);
    assert!(InventoriesTranslator
        .translate(&message(ok.as_bytes()))
        .is_ok());
}
