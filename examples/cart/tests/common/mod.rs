//! Shared set-up of the integration tests: a fresh database per test and the
//! real server on a free port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use cart::app::{App, Config, SharedPublisher};
use dcb_core::Position;
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

impl TestApp {
    pub async fn stop(self) {
        self.app.shutdown().await;
        self.db.cleanup().await;
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
            .wait_until_timeout(id, head, Duration::from_secs(30))
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
