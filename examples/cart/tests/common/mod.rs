//! Shared set-up of the integration tests: a fresh database per test and the
//! real server on a free port.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cart::app::{App, Config, SharedPublisher};
use cart::events::CartEvent;
use dcb_core::{Event, EventStore, Position};
use dcb_postgres::testing::TestDatabase;
use serde_json::{json, Value};
use uuid::Uuid;

pub struct TestApp {
    pub app: App,
    pub db: TestDatabase,
    pub client: reqwest::Client,
    pub base: String,
}

pub async fn start() -> TestApp {
    start_with(None, Duration::from_secs(3600)).await
}

pub async fn start_with(publisher: Option<SharedPublisher>, deadline: Duration) -> TestApp {
    let db = TestDatabase::create().await;
    let mut config = Config::new(db.url());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.publisher = publisher;
    config.publish_deadline = deadline;
    let app = App::start(config).await.expect("the app starts");
    let base = format!("http://{}", app.addr());
    TestApp {
        app,
        db,
        client: reqwest::Client::new(),
        base,
    }
}

/// How long a state may take to show (generous: the machine may be busy).
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Some`, at most `bound`; panics naming
/// `what` (and the last value seen, from `probe`'s `Err`) otherwise.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + bound;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {bound:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl TestApp {
    pub async fn stop(self) {
        self.app.shutdown().await;
        self.db.cleanup().await;
    }

    /// Stops the server, its listeners and its workers, and keeps the
    /// database: for checks that nothing more happened once nothing runs.
    /// Call [`TestDatabase::cleanup`] after.
    pub async fn shut_down_keep_database(self) -> TestDatabase {
        self.app.shutdown().await;
        self.db
    }

    /// Appends `events` straight to the store, bypassing every command (a
    /// history written before the cart's limits, or by another program).
    pub async fn append_raw(&self, events: Vec<CartEvent>) -> Position {
        let records = events
            .iter()
            .map(|e| e.to_record().expect("the event encodes"))
            .collect();
        let appended = self
            .app
            .store()
            .append(records, None)
            .await
            .expect("the store takes the events");
        appended.last
    }

    /// Waits until every listener of the app has handled everything up to
    /// the head.
    pub async fn settle_all(&self) {
        for id in [
            cart::slices::cart_items_db::CartItemsDbListener::ID,
            cart::slices::carts_with_products::CartsWithProductsListener::ID,
            cart::slices::inventories::InventoriesListener::ID,
            cart::slices::archive_item::ARCHIVE_AUTOMATION_ID,
        ] {
            self.settle(id).await;
        }
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.expect("request sent")).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        answer(request.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        answer(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request sent"),
        )
        .await
    }

    /// Adds an item; returns the answer.
    pub async fn add(&self, cart: Uuid, item: Uuid, product: Uuid, price: &str) -> (u16, Value) {
        self.post(
            &format!("/additem/{cart}"),
            Some(json!({
                "item_id": item, "product_id": product,
                "description": "a thing", "image": "thing.png", "price": price
            })),
        )
        .await
    }

    /// Waits until listener `id` has handled everything up to the head.
    pub async fn settle(&self, id: &str) {
        let head = dcb_core::EventStore::head(self.app.store())
            .await
            .expect("head")
            .unwrap_or(Position(0));
        self.app
            .listeners()
            .wait_until_timeout(id, head, EVENTUALLY)
            .await
            .expect("the listener catches up");
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub fn new_id() -> Uuid {
    Uuid::new_v4()
}

/// The `position` of a command's answer.
pub fn position(answer: &Value) -> Position {
    Position(answer["position"].as_u64().expect("a position"))
}

/// The broker of `KAFKA_BROKERS`; panics with how to start one.
pub fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!("set KAFKA_BROKERS or run scripts/tansu.sh start"),
    }
}

/// Creates the example's topics (tansu does not create them on first use).
pub async fn ensure_topics(brokers: &str) {
    use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use dcb_kafka::rdkafka::client::DefaultClientContext;
    use dcb_kafka::rdkafka::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
    let topics: Vec<NewTopic<'_>> = ["inventories", "price-changes", "published-carts"]
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    // "Already exists" is fine; anything else shows up when producing.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await;
}
