//! The fault tests' checker itself (`faults/mod.rs`), on logs and answers
//! made up here: every rule broken in a log is reported, and a rejection the
//! log does not justify is reported. Without these, a checker that reports
//! nothing would let every fault test pass. No service needed.

mod faults;

use std::time::{Duration, Instant};

use cart::events::{CartEvent, OrderedProduct};
use faults::{fold, unjustified_rejections, Kind, Logged, Record};
use serde_json::{json, Value};
use uuid::Uuid;

const CART: Uuid = Uuid::from_u128(1);
const PRODUCT: Uuid = Uuid::from_u128(2);

fn item(n: u128) -> Uuid {
    Uuid::from_u128(100 + n)
}

fn log(events: Vec<CartEvent>) -> Vec<Logged> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Logged {
            position: i as i64 + 1,
            event_id: Uuid::from_u128(1000 + i as u128),
            event,
        })
        .collect()
}

fn created() -> CartEvent {
    CartEvent::CartCreated { cart_id: CART }
}

fn added(n: u128, price: &str) -> CartEvent {
    CartEvent::CartItemAdded {
        cart_id: CART,
        item_id: item(n),
        product_id: PRODUCT,
        description: "d".to_owned(),
        image: "i".to_owned(),
        price: price.parse().unwrap(),
        fingerprint: "fp".to_owned(),
    }
}

fn removed(n: u128) -> CartEvent {
    CartEvent::CartItemRemoved {
        cart_id: CART,
        item_id: item(n),
    }
}

fn submitted(lines: &[(u128, &str)], total: &str) -> CartEvent {
    CartEvent::CartSubmitted {
        cart_id: CART,
        ordered_products: lines
            .iter()
            .map(|(n, price)| OrderedProduct {
                item_id: item(*n),
                product_id: PRODUCT,
                price: price.parse().unwrap(),
            })
            .collect(),
        total_price: total.parse().unwrap(),
    }
}

fn violations(events: Vec<CartEvent>) -> Vec<String> {
    fold(&log(events)).violations
}

#[test]
fn a_log_that_keeps_every_rule_has_no_violation() {
    let clean = vec![
        created(),
        added(1, "1.00"),
        added(2, "2.00"),
        added(3, "0.50"),
        removed(2),
        added(4, "4.00"),
        CartEvent::CartCleared { cart_id: CART },
        added(2, "2.00"),
        added(5, "5.00"),
        submitted(&[(2, "2.00"), (5, "5.00")], "7.00"),
        CartEvent::CartPublished { cart_id: CART },
    ];
    assert_eq!(violations(clean), Vec::<String>::new());
}

#[test]
fn every_broken_rule_in_the_log_is_reported() {
    let cases: Vec<(&str, Vec<CartEvent>)> = vec![
        (
            "a second CartCreated",
            vec![created(), added(1, "1"), created()],
        ),
        ("an event of a cart never created", vec![added(1, "1")]),
        (
            "an item added twice",
            vec![created(), added(1, "1"), added(1, "1")],
        ),
        (
            "a fourth item",
            vec![
                created(),
                added(1, "1"),
                added(2, "1"),
                added(3, "1"),
                added(4, "1"),
            ],
        ),
        (
            "the removal of an item not in the cart",
            vec![created(), added(1, "1"), removed(2)],
        ),
        (
            "the removal of an item not in the cart",
            vec![created(), added(1, "1"), removed(1), removed(1)],
        ),
        (
            "an event after CartSubmitted",
            vec![
                created(),
                added(1, "1"),
                submitted(&[(1, "1")], "1"),
                added(2, "1"),
            ],
        ),
        (
            "an empty cart submitted",
            vec![created(), submitted(&[], "0")],
        ),
        (
            "ordered products differ",
            vec![
                created(),
                added(1, "1"),
                added(2, "2"),
                submitted(&[(2, "2"), (1, "1")], "3"),
            ],
        ),
        (
            "a total that is not the sum",
            vec![created(), added(1, "1"), submitted(&[(1, "1")], "2")],
        ),
        (
            "CartPublished of",
            vec![created(), CartEvent::CartPublished { cart_id: CART }],
        ),
        (
            "the archiving of an item not in the cart",
            vec![
                created(),
                CartEvent::PriceChanged {
                    product_id: PRODUCT,
                    old_price: "1".parse().unwrap(),
                    new_price: "2".parse().unwrap(),
                },
                CartEvent::ItemArchived {
                    cart_id: CART,
                    item_id: item(1),
                    product_id: PRODUCT,
                    price_changed_event: Uuid::from_u128(1001),
                },
            ],
        ),
        (
            "an item added after the price change archived",
            vec![
                created(),
                CartEvent::PriceChanged {
                    product_id: PRODUCT,
                    old_price: "1".parse().unwrap(),
                    new_price: "2".parse().unwrap(),
                },
                added(1, "2"),
                CartEvent::ItemArchived {
                    cart_id: CART,
                    item_id: item(1),
                    product_id: PRODUCT,
                    price_changed_event: Uuid::from_u128(1001),
                },
            ],
        ),
    ];
    for (expected, events) in cases {
        let found = violations(events);
        assert!(
            found.iter().any(|v| v.contains(expected)),
            "{expected:?} not reported: {found:#?}"
        );
    }
}

/// A record of `kind` on the cart, sent at `sent` ms and answered 1 ms
/// later, after the accepted commands up to `seen_from`.
fn record(
    kind: Kind,
    item: Option<Uuid>,
    answer: (u16, Value),
    seen_from: i64,
    sent: u64,
) -> Record {
    let zero = Instant::now();
    Record {
        kind,
        cart: CART,
        item,
        status: answer.0,
        body: answer.1,
        seen_from,
        sent: zero + Duration::from_millis(sent),
        answered: zero + Duration::from_millis(sent + 1),
    }
}

fn rejected(code: &str) -> (u16, Value) {
    let status = if code == "CartDoesNotExist" { 404 } else { 409 };
    (status, json!({"error": code, "message": "..."}))
}

fn accepted(position: i64) -> (u16, Value) {
    (200, json!({"position": position}))
}

#[test]
fn rejections_the_log_justifies_pass() {
    // 1 created, 2-4 three items, 5 one removed, 6 submitted.
    let history = log(vec![
        created(),
        added(1, "1"),
        added(2, "1"),
        added(3, "1"),
        removed(3),
        submitted(&[(1, "1"), (2, "1")], "2"),
    ]);
    let records = vec![
        record(Kind::Add, Some(item(3)), accepted(4), 0, 0),
        // Sent after the third add was answered: the cart was full until 5.
        record(Kind::Add, Some(item(9)), rejected("CartFull"), 4, 10),
        record(Kind::Remove, Some(item(3)), accepted(5), 4, 20),
        record(
            Kind::Remove,
            Some(item(7)),
            rejected("ItemNotInCart"),
            5,
            30,
        ),
        record(Kind::Submit, None, accepted(6), 5, 40),
        record(Kind::Submit, None, rejected("CannotSubmitCartTwice"), 6, 50),
        record(
            Kind::Add,
            Some(item(8)),
            rejected("CartCannotBeAltered"),
            6,
            60,
        ),
    ];
    assert_eq!(
        unjustified_rejections(&history, &records),
        Vec::<String>::new()
    );
}

#[test]
fn a_rejection_no_readable_state_justifies_is_reported() {
    let history = log(vec![
        created(),
        added(1, "1"),
        added(2, "1"),
        added(3, "1"),
        removed(3),
        added(4, "1"),
    ]);
    let cases = vec![
        // Sent after the removal at 5 was answered: the cart had 2 items.
        (
            vec![
                record(Kind::Remove, Some(item(3)), accepted(5), 4, 0),
                record(Kind::Add, Some(item(9)), rejected("CartFull"), 5, 10),
                // Sent after the CartFull answer: the add at 6 came later.
                record(Kind::Add, Some(item(4)), accepted(6), 5, 20),
            ],
            "rejected (CartFull)",
        ),
        // The item is in the log although the add was rejected.
        (
            vec![record(Kind::Add, Some(item(4)), rejected("CartFull"), 0, 0)],
            "answered CartFull but in the log",
        ),
        // "Nothing was appended", but it was.
        (
            vec![record(
                Kind::Add,
                Some(item(4)),
                (
                    503,
                    json!({"error": "DatabaseUnavailable", "message": "..."}),
                ),
                0,
                0,
            )],
            "answered DatabaseUnavailable but in the log",
        ),
        // The cart existed all along.
        (
            vec![
                record(Kind::Add, Some(item(1)), accepted(2), 0, 0),
                record(Kind::Clear, None, rejected("CartDoesNotExist"), 2, 10),
            ],
            "rejected (CartDoesNotExist)",
        ),
        // Never submitted.
        (
            vec![record(
                Kind::Submit,
                None,
                rejected("CannotSubmitCartTwice"),
                0,
                0,
            )],
            "rejected (CannotSubmitCartTwice)",
        ),
    ];
    for (records, expected) in cases {
        let found = unjustified_rejections(&history, &records);
        assert!(
            found.iter().any(|v| v.contains(expected)),
            "{expected:?} not reported: {found:#?}"
        );
    }
}
