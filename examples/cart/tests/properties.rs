//! Property tests (proptest) against the real server on a free port and real
//! PostgreSQL: arbitrary strings, bytes and JSON into every route's path id
//! and every command's body.
//!
//! For every case: never a 5xx, never a panic (the server would answer 500),
//! and an error answer is JSON `{"error", "message"}`. Meanwhile a neighbour
//! adds and removes its own items, and every one of its commands succeeds.
//! After the run: every event in the log is within the cart's limits (so
//! nothing accepted can stop a read model), every listener has caught up
//! with the head, and a fresh good AddItem shows in `/cartitemsfromdb`.
//!
//! `PROPTEST_CASES` changes the number of cases (default [`CASES`]).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cart::events::CartEvent;
use cart::limits::{self, MAX_DESCRIPTION_BYTES, MAX_IMAGE_BYTES};
use common::*;
use dcb_core::{Event, EventStore, ReadOptions};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Cases per run: each is one HTTP request, so a few hundred take seconds.
const CASES: u32 = 1000;

/// The carts and products the cases aim at, so that some of them meet
/// existing carts (and their rules) instead of always a fresh id.
const KNOWN: [Uuid; 4] = [
    Uuid::from_u128(0x0a11_0000_0000_4000_8000_0000_0000_0001),
    Uuid::from_u128(0x0a11_0000_0000_4000_8000_0000_0000_0002),
    Uuid::from_u128(0x0a11_0000_0000_4000_8000_0000_0000_0003),
    Uuid::from_u128(0x0a11_0000_0000_4000_8000_0000_0000_0004),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    AddItem,
    RemoveItem,
    ClearCart,
    SubmitCart,
    ChangePrice,
    CartItems,
    CartItemsFromDb,
    CartsWithProducts,
    Inventories,
}

impl Route {
    fn path(self, id: &str) -> String {
        match self {
            Route::AddItem => format!("/additem/{id}"),
            Route::RemoveItem => format!("/removeitem/{id}"),
            Route::ClearCart => format!("/clearcart/{id}"),
            Route::SubmitCart => format!("/submitcart/{id}"),
            Route::ChangePrice => format!("/changeprice/{id}"),
            Route::CartItems => format!("/{id}/cartitems"),
            Route::CartItemsFromDb => format!("/{id}/cartitemsfromdb"),
            Route::CartsWithProducts => format!("/cartswithproducts/{id}"),
            Route::Inventories => format!("/inventories/{id}"),
        }
    }

    fn is_command(self) -> bool {
        matches!(
            self,
            Route::AddItem
                | Route::RemoveItem
                | Route::ClearCart
                | Route::SubmitCart
                | Route::ChangePrice
        )
    }
}

/// One request of a case.
#[derive(Clone, Debug)]
struct Case {
    route: Route,
    /// The path id, percent-encoded.
    id: String,
    body: Vec<u8>,
}

/// Every byte outside the unreserved set as `%XX`, so any string (or
/// byte string, valid UTF-8 or not) reaches the server as the path id.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(*b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn known() -> impl Strategy<Value = Uuid> {
    proptest::sample::select(KNOWN.to_vec())
}

fn uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![1 => known(), 1 => any::<u128>().prop_map(Uuid::from_u128)]
}

/// Texts with what hurts: NUL, control and non-BMP characters, lengths
/// around the limits.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        8 => any::<String>(),
        2 => vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect()),
        1 => Just("a\u{0}b".to_owned()),
        1 => Just("\u{0}".to_owned()),
        1 => Just(String::new()),
        1 => (MAX_DESCRIPTION_BYTES - 2..MAX_DESCRIPTION_BYTES + 3).prop_map(|n| "d".repeat(n)),
        1 => (MAX_IMAGE_BYTES - 2..MAX_IMAGE_BYTES + 3).prop_map(|n| "é".repeat(n / 2)),
        1 => (16_000usize..17_000).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// A path id: known and random UUIDs, their near misses, any text, any
/// bytes.
fn path_id() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => uuid().prop_map(|u| u.to_string().into_bytes()),
        1 => uuid().prop_map(|u| u.simple().to_string().into_bytes()),
        1 => uuid().prop_map(|u| u.to_string().to_uppercase().into_bytes()),
        1 => uuid().prop_map(|u| format!("{{{u}}}").into_bytes()),
        1 => uuid().prop_map(|u| format!("urn:uuid:{u}").into_bytes()),
        1 => uuid().prop_map(|u| format!("{u}\u{0}").into_bytes()),
        2 => text().prop_map(String::into_bytes),
        2 => vec(any::<u8>(), 0..48),
    ]
    .prop_map(|bytes| percent_encode(&bytes))
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::from),
        uuid().prop_map(|u| Value::from(u.to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((field_name(), inner), 0..6).prop_map(|fields| {
                Value::Object(fields.into_iter().collect::<Map<String, Value>>())
            }),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "cart_id", "item_id", "product_id", "description", "image", "price",
            "old_price", "new_price",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Prices: mostly in bounds, then decimals of every size and scale,
/// numbers, and nonsense.
fn price() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => (0i64..100_000_000, 0u32..=4).prop_map(|(m, scale)| {
            Value::from(rust_decimal::Decimal::new(m, scale).to_string())
        }),
        2 => (any::<i64>(), 0u32..12).prop_map(|(m, scale)| {
            Value::from(rust_decimal::Decimal::new(m, scale).to_string())
        }),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => any::<i64>().prop_map(Value::from),
        1 => proptest::sample::select(vec![
            "50000000000000000000000000000", "79228162514264337593543950335",
            "79228162514264337593543950336", "-0", "1e30", "1E-7", "NaN", "Infinity",
            "0x10", " 1", "1 ", "+1", "1_000", "", ".", "-.5", "1000000000.000001",
        ])
        .prop_map(Value::from),
        1 => json_value(),
    ]
}

/// A field: usually a plausible value, sometimes anything, sometimes absent.
fn field(
    plausible: impl Strategy<Value = Value> + 'static,
) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        30 => plausible.prop_map(Some),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

fn uuid_value() -> impl Strategy<Value = Value> {
    uuid().prop_map(|u| Value::from(u.to_string()))
}

fn object(fields: Vec<(&'static str, Option<Value>)>, extra: Option<(String, Value)>) -> Value {
    let mut map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect();
    if let Some((k, v)) = extra {
        map.insert(k, v);
    }
    Value::Object(map)
}

/// A body close to what `route` takes, with any field bent.
fn near_valid(route: Route) -> BoxedStrategy<Value> {
    let extra = proptest::option::weighted(0.1, (field_name(), json_value()));
    match route {
        Route::AddItem => (
            field(uuid_value()),
            field(uuid_value()),
            field(text().prop_map(Value::from)),
            field(text().prop_map(Value::from)),
            field(price()),
            proptest::option::weighted(0.1, uuid_value()),
            extra,
        )
            .prop_map(|(item, product, description, image, price, cart, extra)| {
                object(
                    vec![
                        ("item_id", item),
                        ("product_id", product),
                        ("description", description),
                        ("image", image),
                        ("price", price),
                        ("cart_id", cart),
                    ],
                    extra,
                )
            })
            .boxed(),
        Route::RemoveItem => (
            field(uuid_value()),
            proptest::option::weighted(0.1, uuid_value()),
            extra,
        )
            .prop_map(|(item, cart, extra)| {
                object(vec![("item_id", item), ("cart_id", cart)], extra)
            })
            .boxed(),
        Route::ChangePrice => (
            field(price()),
            field(price()),
            proptest::option::weighted(0.1, uuid_value()),
            extra,
        )
            .prop_map(|(old, new, product, extra)| {
                object(
                    vec![
                        ("old_price", old),
                        ("new_price", new),
                        ("product_id", product),
                    ],
                    extra,
                )
            })
            .boxed(),
        _ => (proptest::option::weighted(0.1, uuid_value()), extra)
            .prop_map(|(cart, extra)| object(vec![("cart_id", cart)], extra))
            .boxed(),
    }
}

/// A body: a near-valid one (whole, or cut short), any JSON, any bytes.
fn body(route: Route) -> BoxedStrategy<Vec<u8>> {
    let serialized = near_valid(route).prop_map(|v| v.to_string().into_bytes());
    prop_oneof![
        10 => serialized.clone(),
        1 => (serialized, any::<prop::sample::Index>()).prop_map(|(bytes, cut)| {
            let at = cut.index(bytes.len().max(1));
            bytes[..at].to_vec()
        }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => vec(any::<u8>(), 0..256),
        1 => Just(Vec::new()),
        1 => (16 * 1024 - 4..16 * 1024 + 4usize).prop_map(|n| vec![b' '; n]),
    ]
    .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    proptest::sample::select(vec![
        Route::AddItem,
        Route::AddItem,
        Route::AddItem,
        Route::RemoveItem,
        Route::ClearCart,
        Route::SubmitCart,
        Route::ChangePrice,
        Route::ChangePrice,
        Route::CartItems,
        Route::CartItemsFromDb,
        Route::CartsWithProducts,
        Route::Inventories,
    ])
    .prop_flat_map(|route| {
        (path_id(), body(route)).prop_map(move |(id, body)| Case { route, id, body })
    })
}

/// A client with its own cart and product: adds an item and removes it,
/// over and over, until told to stop; every answer must be a 200.
async fn neighbour(t: Arc<TestApp>, stop: Arc<AtomicBool>) -> usize {
    let (cart, product) = (new_id(), new_id());
    let mut commands = 0;
    while !stop.load(Ordering::Relaxed) {
        let item = new_id();
        let (status, answer) = t.add(cart, item, product, "1.25").await;
        assert_eq!(status, 200, "the neighbour's AddItem failed: {answer}");
        let (status, answer) = t
            .post(
                &format!("/removeitem/{cart}"),
                Some(json!({ "item_id": item })),
            )
            .await;
        assert_eq!(status, 200, "the neighbour's RemoveItem failed: {answer}");
        commands += 2;
    }
    commands
}

#[test]
fn arbitrary_input_on_every_route_never_answers_5xx_and_read_models_keep_advancing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let t = Arc::new(runtime.block_on(start()));
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = runtime.spawn(neighbour(t.clone(), stop.clone()));

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // (route, status, error code) → count.
    let seen: std::cell::RefCell<BTreeMap<(Route, u16, String), usize>> = Default::default();
    let result = runner.run(&case(), |case| {
        let path = case.route.path(&case.id);
        let (status, answer) = runtime.block_on(async {
            if case.route.is_command() {
                t.post_raw(&path, case.body.clone()).await
            } else {
                t.get(&path).await
            }
        });
        let code = answer["error"].as_str().unwrap_or("ok").to_owned();
        *seen
            .borrow_mut()
            .entry((case.route, status, code))
            .or_default() += 1;
        let shown = String::from_utf8_lossy(&case.body[..case.body.len().min(200)]).into_owned();
        prop_assert!(status < 500, "{path} {shown:?} answered {status}: {answer}");
        if status >= 400 {
            prop_assert!(
                answer["error"].is_string() && answer["message"].is_string(),
                "{path} {shown:?} answered {status} without an error code: {answer}"
            );
        }
        Ok::<(), TestCaseError>(())
    });
    stop.store(true, Ordering::Relaxed);
    let neighbour_commands = runtime.block_on(neighbour).expect("the neighbour");
    if let Err(failure) = result {
        panic!("{failure}");
    }

    runtime.block_on(async {
        // Nothing accepted is outside the limits (so no read model can choke
        // on it).
        let (_, events) = t
            .app
            .store()
            .read(&dcb_core::Query::all(), ReadOptions::forwards())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut appended: BTreeMap<String, usize> = BTreeMap::new();
        for event in &events {
            let decoded = event.decode::<CartEvent>().expect("every event decodes");
            *appended
                .entry(decoded.event.event_type().to_string())
                .or_default() += 1;
            match &decoded.event {
                CartEvent::CartItemAdded {
                    description,
                    image,
                    price,
                    ..
                } => {
                    limits::check_text("description", description, MAX_DESCRIPTION_BYTES)
                        .and(limits::check_text("image", image, MAX_IMAGE_BYTES))
                        .and(limits::check_price("price", *price))
                        .unwrap_or_else(|e| panic!("accepted out of bounds: {e}"));
                }
                CartEvent::PriceChanged {
                    old_price,
                    new_price,
                    ..
                } => {
                    limits::check_price("old_price", *old_price)
                        .and(limits::check_price("new_price", *new_price))
                        .unwrap_or_else(|e| panic!("accepted out of bounds: {e}"));
                }
                _ => {}
            }
        }
        // Every read model caught up with all of it.
        t.settle_all().await;
        // And still takes new work.
        let (cart, item, product) = (new_id(), new_id(), new_id());
        let (status, answer) = t.add(cart, item, product, "3.50").await;
        assert_eq!(status, 200, "{answer}");
        eventually("a fresh item in /cartitemsfromdb", EVENTUALLY, || async {
            let (status, body) = t.get(&format!("/{cart}/cartitemsfromdb")).await;
            if status == 200 && body["items"][0]["item_id"] == json!(item) {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        })
        .await;
        let (status, rows) = t.get(&format!("/cartswithproducts/{product}")).await;
        assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(1)));

        let by_answer = |routes: fn(Route) -> bool| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for ((route, status, code), n) in seen.borrow().iter() {
                if routes(*route) {
                    *counts.entry(format!("{status} {code}")).or_default() += n;
                }
            }
            counts
        };
        println!(
            "SUMMARY properties: {cases} cases; commands by answer {:?}; reads by answer {:?}; \
             events in the log {:?}; neighbour commands {neighbour_commands} (all 200); every \
             listener caught up with the head ({} events)",
            by_answer(Route::is_command),
            by_answer(|r| !r.is_command()),
            appended,
            events.len(),
        );
    });
    let t = Arc::into_inner(t).expect("the neighbour is done");
    runtime.block_on(t.stop());
}
